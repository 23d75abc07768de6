//! The server's one error type: what went wrong in words, with the cause kept as a
//! source. `main` prints it once, as `error: …`, and exits 1.

use hubhook_core::journal::JournalError;

use crate::config::ConfigError;

/// Anything that stops a command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The configuration file; its message names the file, the line and the key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The library refused its settings or could not serve (a bind, TLS).
    #[error(transparent)]
    Core(#[from] hubhook_core::Error),
    /// The journal could not be opened, read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A file or socket.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Anything else, already in words.
    #[error("{0}")]
    Other(String),
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::Other(message)
    }
}
