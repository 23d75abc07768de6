//! hubhook-core's integration tests: one binary, real sockets on 127.0.0.1.

// Helpers are `pub` for the sibling modules; this binary has no outside users.
#![allow(unreachable_pub, missing_debug_implementations)]

#[cfg(feature = "callback")]
mod callback;
mod connection;
mod contract;
mod dispatch;
mod logs;
#[cfg(feature = "notify")]
mod notify;
mod properties;
mod providers;
mod queues;
mod support;
