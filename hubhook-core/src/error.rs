//! The crate's error type: one opaque [`Error`], hyper-style. What kind of failure it is
//! is asked with the `is_*` predicates; the cause, when there is one, is its
//! [`source`](std::error::Error::source); its `Display` says what happened and what to do.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What can go wrong building a service or a listener, or running one.
pub struct Error {
    kind: Kind,
    source: Option<Cause>,
}

#[derive(Debug)]
pub(crate) enum Kind {
    /// No API key, and unauthenticated hooks were not allowed.
    NoApiKey,
    /// An API key is empty or only white space: `?apikey=` would authenticate.
    EmptyApiKey,
    /// A hook path breaks `Hook::check_path`, or two hooks share one.
    InvalidPath(String, &'static str),
    /// Two handlers have the same name.
    DuplicateHandler(String),
    /// The listening socket could not be bound.
    Bind(SocketAddr),
    /// A TLS file, or the pair, could not be used: which one, the file, what is wrong.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Tls(TlsPart, PathBuf, String),
    /// The journal could not be read or written.
    Journal,
    /// An I/O error while serving.
    Io,
    /// A notification destination is not usable: the reason.
    #[cfg_attr(not(feature = "notify"), allow(dead_code))]
    InvalidNotify(String),
    /// An outbound connection to this origin failed.
    Connect(String),
    /// The TLS handshake with this origin failed.
    Handshake(String),
    /// The HTTP exchange with this origin failed.
    Http(String),
}

/// Which part of a TLS configuration an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(crate) enum TlsPart {
    Certificate,
    Key,
    Configuration,
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Self { kind, source: None }
    }

    pub(crate) fn with(mut self, source: impl Into<Cause>) -> Self {
        self.source = Some(source.into());
        self
    }

    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn tls(part: TlsPart, path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::new(Kind::Tls(part, path.into(), reason.into()))
    }

    /// The builder refused its settings: no key, an empty key, a bad or repeated hook
    /// path, two handlers with one name.
    pub fn is_config(&self) -> bool {
        matches!(
            self.kind,
            Kind::NoApiKey
                | Kind::EmptyApiKey
                | Kind::InvalidPath(..)
                | Kind::DuplicateHandler(_)
                | Kind::InvalidNotify(_)
        )
    }

    /// The listening address could not be bound (taken, or not this machine's).
    pub fn is_bind(&self) -> bool {
        matches!(self.kind, Kind::Bind(_))
    }

    /// A TLS certificate or key could not be read or used ([`path`](Self::path) names the
    /// file), or an outbound TLS handshake failed ([`client`](crate::client)).
    pub fn is_tls(&self) -> bool {
        matches!(self.kind, Kind::Tls(..) | Kind::Handshake(_))
    }

    /// A TLS error about the private key (not the certificate or the pair).
    pub fn is_tls_key(&self) -> bool {
        matches!(self.kind, Kind::Tls(TlsPart::Key, ..))
    }

    /// The journal could not be read or written.
    pub fn is_journal(&self) -> bool {
        matches!(self.kind, Kind::Journal)
    }

    /// An I/O error while serving.
    pub fn is_io(&self) -> bool {
        matches!(self.kind, Kind::Io)
    }

    /// An outbound connection ([`client`](crate::client)) could not be made; the
    /// [`source`](std::error::Error::source) is the `io::Error`.
    pub fn is_connect(&self) -> bool {
        matches!(self.kind, Kind::Connect(_))
    }

    /// An outbound HTTP exchange ([`client`](crate::client)) failed after connecting: a
    /// broken or oversized answer, a closed connection.
    pub fn is_http(&self) -> bool {
        matches!(self.kind, Kind::Http(_))
    }

    /// The file the error is about, when it is about one (a TLS certificate or key).
    pub fn path(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Tls(_, path, _) if !path.as_os_str().is_empty() => Some(path),
            _ => None,
        }
    }

    /// This TLS error, now about `cert` or `key` (whichever it concerns).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn at_files(self, cert: &Path, key: &Path) -> Self {
        match self.kind {
            Kind::Tls(part, _, reason) => {
                let path = if part == TlsPart::Key { key } else { cert };
                Self {
                    kind: Kind::Tls(part, path.to_owned(), reason),
                    source: self.source,
                }
            }
            _ => self,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::NoApiKey => f.write_str(
                "no API key configured; add one, or allow unauthenticated hooks explicitly",
            ),
            Kind::EmptyApiKey => f.write_str(
                "an API key is empty or only white space; give a real key (`hubhook keygen` makes one)",
            ),
            Kind::InvalidPath(path, problem) => write!(f, "invalid hook path {path:?}: {problem}"),
            Kind::DuplicateHandler(name) => write!(
                f,
                "two handlers are named {name:?}; handler names must be unique"
            ),
            Kind::Bind(addr) => match &self.source {
                Some(cause) => write!(f, "cannot listen on {addr}: {cause}"),
                None => write!(f, "cannot listen on {addr}"),
            },
            Kind::Tls(part, path, reason) => {
                let what = match part {
                    TlsPart::Certificate => "certificate",
                    TlsPart::Key => "key",
                    TlsPart::Configuration => "configuration",
                };
                write!(f, "TLS {what} {}: {reason}", path.display())
            }
            Kind::Journal => match &self.source {
                Some(cause) => write!(f, "journal: {cause}"),
                None => f.write_str("journal failed"),
            },
            Kind::Io => match &self.source {
                Some(cause) => write!(f, "{cause}"),
                None => f.write_str("I/O error"),
            },
            Kind::InvalidNotify(reason) => write!(f, "notification: {reason}"),
            Kind::Connect(origin) => with_cause(f, format_args!("cannot connect to {origin}"), &self.source),
            Kind::Handshake(origin) => with_cause(f, format_args!("TLS with {origin} failed"), &self.source),
            Kind::Http(origin) => {
                with_cause(f, format_args!("HTTP exchange with {origin} failed"), &self.source)
            }
        }
    }
}

/// `what: cause`, or `what` alone.
fn with_cause(
    f: &mut fmt::Formatter<'_>,
    what: fmt::Arguments<'_>,
    cause: &Option<Cause>,
) -> fmt::Result {
    match cause {
        Some(cause) => write!(f, "{what}: {cause}"),
        None => write!(f, "{what}"),
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::new(Kind::Io).with(e)
    }
}
