//! The `hubhook` binary's integration tests: one test binary, the real executable.

// Helpers are `pub` for the sibling modules; this binary has no outside users.
#![allow(unreachable_pub, missing_debug_implementations)]

mod acme;
mod callback;
mod check;
mod docs;
mod e2e;
mod environment;
mod journal;
mod notify;
mod plugins;
mod send;
mod serve;
mod support;
mod swaps;
mod ui;
