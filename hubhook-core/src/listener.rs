//! `Listener`: accepts TCP (and TLS) connections and serves a [`HubhookService`] on them.
//!
//! Each connection is served by hyper's automatic HTTP/1.1 + HTTP/2 builder. Limits that
//! protect the process live here: a cap on open connections (accepting pauses at the cap,
//! the kernel's backlog holds the rest), a timeout for the TLS handshake and for the
//! request head (hyper only enforces the latter when given a timer, so it is given one),
//! an idle timeout, and graceful shutdown.
//!
//! hyper's header timeout starts with the first byte of a request, so a client that
//! connects and sends nothing, or keeps a connection open between requests, is not bounded
//! by it. Each connection therefore counts its own traffic and is closed
//! gracefully when it has been silent for the header timeout before its first byte, or
//! for the idle timeout after.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Kind;
#[cfg(feature = "tls")]
use crate::TlsConfig;
use crate::{Error, HubhookService};

/// Serves a [`HubhookService`] over HTTP or HTTPS, HTTP/1.1 and HTTP/2.
///
/// ```no_run
/// use hubhook_core::{HubhookService, Listener};
/// # use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome};
/// # struct Deploy;
/// # #[async_trait] impl Handler for Deploy {
/// #     fn name(&self) -> &str { "deploy" }
/// #     async fn handle(&self, _: &HubMessage, _: &Context) -> Result<Outcome, HandlerError> { Ok(Outcome::default()) }
/// # }
/// # async fn run() -> Result<(), hubhook_core::Error> {
/// let service = HubhookService::builder().api_key("secret").handler(Deploy).build()?;
/// let listener = Listener::builder(service)
///     .addr("127.0.0.1:0".parse().unwrap())
///     .bind()
///     .await?;
/// println!("listening on {}", listener.local_addr());
/// listener.serve_with_shutdown(async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    local_addr: SocketAddr,
    service: HubhookService,
    settings: Settings,
    shutdown: CancellationToken,
}

#[derive(Debug, Clone)]
struct Settings {
    #[cfg(feature = "tls")]
    tls: Option<TlsConfig>,
    header_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    max_per_ip: usize,
    grace: Duration,
}

/// Builds a [`Listener`]. Start from [`Listener::builder`].
#[derive(Debug)]
#[must_use]
pub struct ListenerBuilder {
    service: HubhookService,
    addr: SocketAddr,
    settings: Settings,
}

/// Asks a running [`Listener`] to shut down gracefully. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Starts the shutdown; [`Listener::serve`] returns once it is complete.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

impl ListenerBuilder {
    /// The address to listen on; default `127.0.0.1:8080`. Port 0 picks a free port; read
    /// it back with [`Listener::local_addr`].
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Serves HTTPS with this certificate instead of plain HTTP. HTTP/2 is offered by ALPN.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.settings.tls = Some(tls);
        self
    }

    /// How long a client may take to complete the TLS handshake and to send a request's
    /// headers; default 10 s. The connection is closed when it runs out.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.settings.header_timeout = timeout;
        self
    }

    /// How long a connection may go without a webhook before it is closed, whatever else
    /// it sends (HTTP/2 pings, `/healthz` or `/metrics` requests); default 60 s. A request
    /// in flight (a slow body has the read timeout) keeps it open.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.settings.idle_timeout = timeout;
        self
    }

    /// The most connections served at once; default 512. Further clients wait in the
    /// kernel's accept queue.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.settings.max_connections = connections.max(1);
        self
    }

    /// The most connections one IP address may hold at once; default 64, so one client
    /// cannot hold every slot of [`max_connections`](Self::max_connections). Past it, a
    /// new connection from that address is closed at once. (Behind a proxy every
    /// connection comes from the proxy: raise it, or count on the proxy's own limits.)
    pub fn max_connections_per_ip(mut self, connections: usize) -> Self {
        self.settings.max_per_ip = connections.max(1);
        self
    }

    /// How long shutdown waits, first for open requests and then for running handlers,
    /// before cancelling them; default 30 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.settings.grace = grace;
        self
    }

    /// Binds the socket. Listening starts now (the port is reserved), serving starts with
    /// [`Listener::serve`].
    pub async fn bind(self) -> Result<Listener, Error> {
        let tcp = TcpListener::bind(self.addr)
            .await
            .map_err(|source| Error::new(Kind::Bind(self.addr)).with(source))?;
        let local_addr = tcp.local_addr()?;
        Ok(Listener {
            tcp,
            local_addr,
            service: self.service,
            settings: self.settings,
            shutdown: CancellationToken::new(),
        })
    }
}

impl Listener {
    /// A builder serving `service`.
    pub fn builder(service: HubhookService) -> ListenerBuilder {
        ListenerBuilder {
            service,
            addr: DEFAULT_ADDR,
            settings: Settings {
                #[cfg(feature = "tls")]
                tls: None,
                header_timeout: DEFAULT_HEADER_TIMEOUT,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                max_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
                grace: DEFAULT_SHUTDOWN_GRACE,
            },
        }
    }

    /// The address actually bound (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether connections are served with TLS.
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.settings.tls.is_some();
        #[cfg(not(feature = "tls"))]
        return false;
    }

    /// A handle that shuts this listener down from elsewhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn serve_with_shutdown(self, signal: impl Future<Output = ()>) -> Result<(), Error> {
        let handle = self.shutdown_handle();
        let serve = self.serve();
        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => return result,
            () = signal => handle.shutdown(),
        }
        serve.await
    }

    /// Serves until a [`ShutdownHandle`] asks it to stop. Shutdown then goes: stop
    /// accepting; requests under way are answered, and webhooks on connections still open
    /// get 503 with `Retry-After`; running handlers get the grace period, then are
    /// cancelled; then the connections close.
    pub async fn serve(self) -> Result<(), Error> {
        let Listener {
            tcp,
            service,
            settings,
            shutdown,
            ..
        } = self;
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_timeout)
            .max_buf_size(64 * 1024);
        http.http2()
            .timer(TokioTimer::new())
            // A registry sends one webhook at a time; 16 streams bound what one
            // connection can ask for at once (each may hold a body up to max_body).
            .max_concurrent_streams(16)
            .max_header_list_size(64 * 1024);
        // No HTTP/2 keep-alive pings: their traffic would keep idle connections "active";
        // the idle timeout below closes silent connections of both versions instead.
        let http = Arc::new(http);
        let connections = TaskTracker::new();
        // Every request in flight, on any connection: shutdown waits for these before it
        // closes the handlers' queues.
        let requests = TaskTracker::new();
        // Cancelled once the handlers are done: then open connections close.
        let close = CancellationToken::new();
        // Cancelled when connections have had their time to close: the rest are dropped.
        let kill = CancellationToken::new();
        let limit = Arc::new(Semaphore::new(settings.max_connections));
        let peers = Arc::new(Peers::default());

        loop {
            let permit = tokio::select! {
                permit = limit.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = shutdown.cancelled() => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = tcp.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let Some(peer_slot) = peers.enter(peer.ip(), settings.max_per_ip) else {
                tracing::debug!(%peer, "closing a connection past the per-address limit");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = Connection {
                http: http.clone(),
                service: service.clone(),
                settings: settings.clone(),
                requests: requests.clone(),
                close: close.clone(),
                kill: kill.clone(),
            };
            connections.spawn(async move {
                conn.serve(stream, peer).await;
                drop(peer_slot);
                drop(permit);
            });
        }

        // Open connections stay open while the handlers finish, so a client that reuses
        // one (nginx's upstream keep-alive, for one) is told "503, try again later" instead
        // of finding the connection gone.
        drop(tcp);
        service.begin_shutdown();
        connections.close();
        requests.close();
        tracing::info!(
            open = connections.len(),
            "shutting down: no longer accepting; webhooks on open connections get 503"
        );
        if tokio::time::timeout(settings.grace, requests.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = requests.len(),
                "requests still under way after the grace period"
            );
        }
        service.shutdown(settings.grace).await;
        close.cancel();
        if tokio::time::timeout(CLOSE_WAIT, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = connections.len(),
                "connections still open after shutdown; dropping them"
            );
            kill.cancel();
            // Each drops its connection (and any request still in it) at once.
            let _ = tokio::time::timeout(CLOSE_WAIT, connections.wait()).await;
        }
        tracing::info!("shut down");
        Ok(())
    }
}

/// The address a [`Listener`] binds by default: loopback, port 8080.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8080,
));
/// How long a client may take to send a request's head, by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay open without a webhook, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections open at once, by default; accepting pauses at the cap.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Connections one IP address may hold at once, by default.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;
/// How long running handlers get to finish at shutdown, by default.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Open connections per peer address.
#[derive(Debug, Default)]
struct Peers(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection's place in its peer's count, given back when dropped.
struct PeerSlot(Arc<Peers>, std::net::IpAddr);

impl Peers {
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<PeerSlot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PeerSlot(self.clone(), ip))
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = (self.0).0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.1) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// What one connection task needs.
struct Connection {
    http: Arc<auto::Builder<TokioExecutor>>,
    service: HubhookService,
    settings: Settings,
    /// Counts this connection's requests among all those in flight.
    requests: TaskTracker,
    /// Cancelled when the listener has finished its shutdown: the connection closes.
    close: CancellationToken,
    /// Cancelled when the connection has had its time to close: it is dropped.
    kill: CancellationToken,
}

impl Connection {
    async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.settings.tls {
            let handshake = tls.acceptor().accept(stream);
            match tokio::time::timeout(self.settings.header_timeout, handshake).await {
                // An ACME validation only looks at the certificate: nothing to serve.
                Ok(Ok(stream))
                    if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) =>
                {
                    tracing::debug!(%peer, "answered an ACME TLS-ALPN-01 validation");
                }
                Ok(Ok(stream)) => self.serve_io(stream, peer).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
            return;
        }
        self.serve_io(stream, peer).await;
    }

    async fn serve_io<I>(self, io: I, peer: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = self.service.clone();
        let requests = self.requests.clone();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counter = in_flight.clone();
        let started = Instant::now();
        // When a webhook last came or went: only that keeps a connection from being idle.
        let webhook = Arc::new(AtomicU64::new(0));
        let seen = webhook.clone();
        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let service = service.clone();
            let guard = (InFlight::enter(&counter), requests.token());
            let hook = service.is_hook_path(req.uri().path());
            let seen = seen.clone();
            let mark = move || {
                if hook {
                    let millis = started.elapsed().as_millis().max(1) as u64;
                    seen.store(millis, Ordering::Relaxed);
                }
            };
            mark();
            async move {
                let response = service.respond(req).await;
                mark();
                drop(guard);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let last_webhook = move || match webhook.load(Ordering::Relaxed) {
            0 => started,
            millis => started + Duration::from_millis(millis),
        };
        let activity = Arc::new(AtomicU64::new(0));
        let io = TokioIo::new(Tracked {
            inner: io,
            started,
            activity: activity.clone(),
        });
        let last_activity = || match activity.load(Ordering::Relaxed) {
            0 => None,
            millis => Some(started + Duration::from_millis(millis)),
        };
        let conn = self.http.serve_connection(io, svc);
        tokio::pin!(conn);
        let mut closing = false;
        let result = loop {
            let (header, idle) = (self.settings.header_timeout, self.settings.idle_timeout);
            let deadline = match (closing, last_activity()) {
                (true, _) => Instant::now() + QUIET,
                // Before the first byte the header timeout applies; wake no later than the
                // idle timeout too, so a first request that arrives meanwhile starts that clock.
                (false, None) => started + header.min(idle),
                (false, Some(_)) => last_webhook() + idle,
            };
            tokio::select! {
                result = conn.as_mut() => break result,
                () = tokio::time::sleep_until(deadline) => {
                    let silent = match (closing, last_activity()) {
                        (true, last) => last.unwrap_or(started).elapsed() >= QUIET,
                        (false, None) => started.elapsed() >= header,
                        // Bytes are no sign of use: pings and health checks cost nothing
                        // to send, and would hold a slot for ever.
                        (false, Some(_)) => {
                            in_flight.load(Ordering::Acquire) == 0
                                && last_webhook().elapsed() >= idle
                        }
                    };
                    if closing {
                        // hyper keeps an HTTP/1 connection that is between requests open
                        // after graceful_shutdown until the next request arrives (hyper
                        // #2730); close it ourselves once nothing is in flight or moving.
                        if silent && in_flight.load(Ordering::Acquire) == 0 {
                            break Ok(());
                        }
                    } else if silent {
                        tracing::debug!(%peer, "closing a connection with no webhook for the idle timeout");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
                () = self.kill.cancelled() => break Ok(()),
                () = self.close.cancelled(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        if let Err(e) = result {
            // Client resets and header timeouts end up here; they are the client's business.
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// How long the last step of a shutdown waits for connections to close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How long a closing connection must be silent, with no request in flight, before it is
/// dropped.
const QUIET: Duration = Duration::from_millis(100);

/// Counts a request as in flight on its connection until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An IO stream that notes when bytes last moved, in milliseconds since `started`
/// (at least 1, so 0 can mean "nothing yet").
struct Tracked<I> {
    inner: I,
    started: Instant,
    activity: Arc<AtomicU64>,
}

impl<I> Tracked<I> {
    fn touch(&self) {
        let millis = self.started.elapsed().as_millis().max(1) as u64;
        self.activity.store(millis, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
