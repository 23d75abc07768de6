//! hubhook-handlers' integration tests: real child processes (and, for docker, the real engine).

// Helpers are `pub` for the sibling modules; this binary has no outside users.
#![allow(unreachable_pub, missing_debug_implementations)]

mod compose;
mod docker;
mod shell;
mod support;
