//! The crate's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What can go wrong building or running a listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No API key was given and unauthenticated hooks were not allowed.
    #[error("no API key configured; add one, or allow unauthenticated hooks explicitly")]
    NoApiKey,
    /// An API key is empty or only white space: `?apikey=` with nothing after it would
    /// authenticate. (A minimum length is the server's policy, not the library's.)
    #[error(
        "an API key is empty or only white space; give a real key (`hubhook keygen` makes one)"
    )]
    EmptyApiKey,
    /// A hook path breaks [`Hook::check_path`](crate::Hook::check_path), or two hooks
    /// share one: the path and which rule it breaks.
    #[error("invalid hook path {0:?}: {1}")]
    InvalidPath(String, &'static str),
    /// Two handlers have the same name.
    #[error("two handlers are named {0:?}; handler names must be unique")]
    DuplicateHandler(String),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A TLS certificate or key file could not be read or used.
    #[error("TLS {what} {path}: {reason}")]
    Tls {
        /// `"certificate"` or `"key"`, or `"configuration"` for the pair.
        what: &'static str,
        /// The file involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The journal could not be read or written.
    #[error("journal: {0}")]
    Journal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An I/O error while serving.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
