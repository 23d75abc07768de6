//! The one outbound HTTP/1.1 client: every request hubhook itself sends (Docker Hub's
//! callback, `hubhook send`, the docker handlers' health probe) goes through [`Client`].
//!
//! Each request has a connection of its own: hubhook sends a few requests a minute to a
//! few hosts, never a stream, so there is no pool to go stale. The client connects,
//! speaks TLS when asked (with the rustls configuration its caller built: the roots and
//! verification are the caller's policy), sends the request as given, and reads the
//! response head and at most [`read_body`](Client::read_body) bytes of the body; the
//! connection is closed when `send` returns. Redirects are answers like any other: the
//! client never follows one. Where a request may go (an allowlist), and how long the whole
//! exchange may take, are the caller's to decide before and around `send`.
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hubhook_core::client::Client;
//!
//! # async fn probe() -> Result<(), hubhook_core::Error> {
//! let request = http::Request::get("/healthz")
//!     .header(http::header::HOST, "127.0.0.1:8000")
//!     .body(Full::new(Bytes::new()))
//!     .expect("a valid request");
//! let answer = Client::new().send("127.0.0.1", 8000, false, request).await?;
//! assert!(answer.status().is_success());
//! # Ok(()) }
//! ```

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::{Error, Kind};

/// The `User-Agent` hubhook's requests carry.
pub const USER_AGENT: &str = concat!("hubhook/", env!("CARGO_PKG_VERSION"));
/// How long connecting may take, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response head read, by default (hyper's smallest buffer is 8 KiB).
pub const DEFAULT_MAX_HEAD: usize = 64 * 1024;

/// Sends one request over a connection of its own; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Client {
    #[cfg(feature = "tls")]
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    max_head: usize,
    max_body: usize,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A plain-HTTP client: [`DEFAULT_CONNECT_TIMEOUT`], [`DEFAULT_MAX_HEAD`], no body read.
    pub fn new() -> Self {
        Self {
            #[cfg(feature = "tls")]
            tls: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_head: DEFAULT_MAX_HEAD,
            max_body: 0,
        }
    }

    /// Speaks TLS with `config` when [`send`](Self::send) is asked for https; its roots
    /// and verifier are the caller's policy.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// How long connecting (TCP only) may take.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The largest response head read; at least 8 KiB.
    #[must_use]
    pub fn max_head(mut self, bytes: usize) -> Self {
        self.max_head = bytes.max(8 * 1024);
        self
    }

    /// Reads at most `bytes` of the response body (default 0: the body is not read); a
    /// longer body is an error.
    #[must_use]
    pub fn read_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Sends `request` (its `Host` header and target as the caller set them) to
    /// `host:port`, over TLS when `https`; the answer, with the body read up to the limit.
    ///
    /// Errors are [`Error::is_connect`], [`Error::is_tls`] or [`Error::is_http`], each
    /// with its cause as the [`source`](std::error::Error::source).
    pub async fn send(
        &self,
        host: &str,
        port: u16,
        https: bool,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, Error> {
        let origin = match (https, host.contains(':')) {
            (true, false) => format!("https://{host}:{port}"),
            (true, true) => format!("https://[{host}]:{port}"),
            (false, false) => format!("http://{host}:{port}"),
            (false, true) => format!("http://[{host}]:{port}"),
        };
        self.exchange(host, port, https, request)
            .await
            .map_err(|failure| failure.into_error(origin))
    }

    /// [`send`](Self::send), with the cause kept as it is for callers inside the crate.
    pub(crate) async fn exchange(
        &self,
        host: &str,
        port: u16,
        https: bool,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, Failure> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| {
                Failure::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.connect_timeout),
                ))
            })?
            .map_err(Failure::Connect)?;
        if !https {
            return self.over(TokioIo::new(tcp), request).await;
        }
        #[cfg(feature = "tls")]
        {
            let config = self.tls.clone().ok_or(Failure::NoTls)?;
            let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| Failure::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(Failure::Tls)?;
            self.over(TokioIo::new(stream), request).await
        }
        #[cfg(not(feature = "tls"))]
        {
            drop(tcp);
            Err(Failure::NoTls)
        }
    }

    /// The HTTP/1.1 exchange over an open connection, closed when this returns.
    async fn over<I>(
        &self,
        io: TokioIo<I>,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, Failure>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(self.max_head.max(8 * 1024))
            .handshake(io)
            .await
            .map_err(Failure::Http)?;
        // Aborted on return, or with this future when the caller's timeout fires.
        let _conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let response = sender.send_request(request).await.map_err(Failure::Http)?;
        let (head, body) = response.into_parts();
        let body = match self.max_body {
            0 => Bytes::new(),
            max => Limited::new(body, max)
                .collect()
                .await
                .map_err(|e| Failure::Body(e.to_string()))?
                .to_bytes(),
        };
        Ok(Response::from_parts(head, body))
    }
}

/// The system's roots plus `roots`; HTTP/1.1 only.
#[cfg(any(feature = "callback", feature = "notify"))]
pub(crate) async fn system_roots(
    mut roots: rustls::RootCertStore,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    // Reading the system's certificates is file I/O: keep it off the runtime's threads.
    let native = tokio::task::spawn_blocking(rustls_native_certs::load_native_certs)
        .await
        .map_err(|e| format!("loading the system's certificates failed: {e}"))?;
    roots.add_parsable_certificates(native.certs);
    if roots.is_empty() {
        return Err("no trusted root certificates: the system has none \
                    and none were added with add_roots_pem_file"
            .to_owned());
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// Why an exchange failed, with the cause as it came.
#[derive(Debug)]
pub(crate) enum Failure {
    Connect(io::Error),
    /// https was asked for and this client has no TLS configuration.
    NoTls,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Tls(io::Error),
    Http(hyper::Error),
    Body(String),
}

impl Failure {
    fn into_error(self, origin: String) -> Error {
        match self {
            Self::Connect(e) => Error::new(Kind::Connect(origin)).with(e),
            Self::NoTls => {
                Error::new(Kind::Handshake(origin)).with("this client has no TLS configuration")
            }
            Self::Tls(e) => Error::new(Kind::Handshake(origin)).with(e),
            Self::Http(e) => Error::new(Kind::Http(origin)).with(e),
            Self::Body(e) => Error::new(Kind::Http(origin)).with(e),
        }
    }
}

/// Aborts the connection task, and so closes the socket, when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
