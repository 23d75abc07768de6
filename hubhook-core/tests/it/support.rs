//! Test helpers: a real listener on 127.0.0.1 port 0 (plain or TLS with a certificate made
//! here), a raw HTTP/1.1 client that can send anything, and handlers that report back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hubhook_core::{
    async_trait, Context, Handler, HandlerError, HubMessage, HubhookService, Listener,
    ListenerBuilder, Outcome, ShutdownHandle, TlsConfig,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};

pub const KEY: &str = "test-key-0123456789abcdef";
pub const OTHER_KEY: &str = "rotated-key-fedcba9876543210";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
}

pub const TRANSPORTS: [Transport; 2] = [Transport::Plain, Transport::Tls];

/// A self-signed certificate for localhost and 127.0.0.1, made once per test.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    pub fn new() -> Self {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("rcgen makes a certificate");
        Self {
            cert_pem: certified.cert.pem(),
            key_pem: certified.key_pair.serialize_pem(),
            der: certified.cert.der().clone(),
        }
    }

    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.der.clone())
            .expect("test cert is a valid root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A running listener; shut down (and awaited) by [`TestServer::stop`], or on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub transport: Transport,
    cert: Option<TestCert>,
    handle: ShutdownHandle,
    task: Option<tokio::task::JoinHandle<Result<(), hubhook_core::Error>>>,
}

impl TestServer {
    pub async fn start(service: HubhookService, transport: Transport) -> Self {
        Self::start_with(service, transport, |b| b).await
    }

    pub async fn start_with(
        service: HubhookService,
        transport: Transport,
        configure: impl FnOnce(ListenerBuilder) -> ListenerBuilder,
    ) -> Self {
        let mut builder = Listener::builder(service).addr("127.0.0.1:0".parse().expect("addr"));
        let mut cert = None;
        if transport == Transport::Tls {
            let c = TestCert::new();
            let tls = TlsConfig::from_pem(c.cert_pem.as_bytes(), c.key_pem.as_bytes())
                .expect("TLS config from the test certificate");
            builder = builder.tls(tls);
            cert = Some(c);
        }
        let listener = configure(builder).bind().await.expect("bind 127.0.0.1:0");
        assert_ne!(
            listener.local_addr().port(),
            0,
            "the bound port is reported"
        );
        let mut server = Self::from_listener(listener);
        server.transport = transport;
        server.cert = cert;
        server
    }

    /// Serves a listener the test built itself (plain HTTP).
    pub fn from_listener(listener: Listener) -> Self {
        Self {
            addr: listener.local_addr(),
            transport: Transport::Plain,
            cert: None,
            handle: listener.shutdown_handle(),
            task: Some(tokio::spawn(listener.serve())),
        }
    }

    /// A fresh connection, TLS-wrapped when the server speaks TLS (ALPN http/1.1).
    pub async fn connect(&self) -> Box<dyn Io> {
        self.connect_alpn(&[b"http/1.1"]).await
    }

    pub async fn connect_alpn(&self, alpn: &[&[u8]]) -> Box<dyn Io> {
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        match &self.cert {
            None => Box::new(tcp),
            Some(cert) => {
                let connector = tokio_rustls::TlsConnector::from(cert.client_config(alpn));
                let name = ServerName::try_from("localhost").expect("server name");
                Box::new(connector.connect(name, tcp).await.expect("TLS handshake"))
            }
        }
    }

    /// Sends `raw` on a new connection and reads one response.
    pub async fn send(&self, raw: &[u8]) -> RawResponse {
        let mut io = self.connect().await;
        io.write_all(raw).await.expect("write request");
        read_response(&mut io).await.expect("a response")
    }

    /// Posts `body` to `target` with the given extra header lines.
    pub async fn post(&self, target: &str, headers: &[&str], body: &[u8]) -> RawResponse {
        self.send(&post_bytes(target, headers, body)).await
    }

    /// `GET /metrics` until its text contains `line` (a run's outcome is counted just after
    /// the handler reports), up to a second; returns the last text, checked by the caller.
    pub async fn metrics_with(&self, line: &str) -> String {
        let fetch = || async {
            let r = self.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert_eq!(r.status, 200);
            assert!(r
                .header("content-type")
                .unwrap_or("")
                .starts_with("text/plain; version=0.0.4"));
            r.body
        };
        let found = hubhook_testkit::within_async(Duration::from_secs(1), || async {
            let text = fetch().await;
            text.contains(line).then_some(text)
        })
        .await;
        match found {
            Some(text) => text,
            None => fetch().await,
        }
    }

    /// Shuts down and waits for `serve` to return.
    pub async fn stop(mut self) {
        self.handle.shutdown();
        if let Some(task) = self.task.take() {
            task.await.expect("serve task").expect("serve returns Ok");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

pub fn post_bytes(target: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        raw.push_str(h);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    raw
}

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{:?} is not JSON: {e}", self.body))
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body. `None` if the connection
/// closed before a complete head arrived.
pub async fn read_response(io: &mut (impl AsyncRead + Unpin + ?Sized)) -> Option<RawResponse> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Whether the peer closes `io` (EOF or reset) within `limit`.
pub async fn closes_within(io: &mut (impl AsyncRead + Unpin + ?Sized), limit: Duration) -> bool {
    let mut sink = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// A handler that reports every message it gets on a channel.
pub struct Recorder {
    name: String,
    tx: mpsc::UnboundedSender<(HubMessage, String)>,
}

impl Recorder {
    pub fn new(name: &str) -> (Self, mpsc::UnboundedReceiver<(HubMessage, String)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                name: name.to_owned(),
                tx,
            },
            rx,
        )
    }
}

#[async_trait]
impl Handler for Recorder {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        let _ = self.tx.send((msg.clone(), ctx.delivery().to_string()));
        Ok(Outcome::new("recorded"))
    }
}

/// A handler that waits until the test lets it go (one permit per run), then reports.
pub struct Gate {
    pub release: Arc<Semaphore>,
    pub started: mpsc::UnboundedSender<String>,
    pub finished: mpsc::UnboundedSender<Result<(), String>>,
}

#[async_trait]
impl Handler for Gate {
    fn name(&self) -> &str {
        "gate"
    }

    async fn handle(&self, _msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        let _ = self.started.send(ctx.delivery().to_string());
        let result = tokio::select! {
            permit = self.release.acquire() => {
                permit.expect("semaphore open").forget();
                Ok(Outcome::new("released"))
            }
            () = ctx.cancelled() => Err(HandlerError::Cancelled),
        };
        let _ = self
            .finished
            .send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        result
    }
}

/// A service whose one handler is a [`Gate`], with the channels to drive it.
pub struct Gated {
    pub service: HubhookService,
    pub release: Arc<Semaphore>,
    pub started: mpsc::UnboundedReceiver<String>,
    pub finished: mpsc::UnboundedReceiver<Result<(), String>>,
}

impl Gated {
    pub fn new(max_pending: usize) -> Self {
        let release = Arc::new(Semaphore::new(0));
        let (started, started_rx) = mpsc::unbounded_channel();
        let (finished, finished_rx) = mpsc::unbounded_channel();
        let service = HubhookService::builder()
            .api_key(KEY)
            .max_pending(max_pending)
            .handler(Gate {
                release: release.clone(),
                started,
                finished,
            })
            .build()
            .expect("service builds");
        Self {
            service,
            release,
            started: started_rx,
            finished: finished_rx,
        }
    }
}

/// The documented example with another tag.
pub fn payload_with_tag(tag: &str) -> Vec<u8> {
    let mut value: serde_json::Value =
        serde_json::from_str(hubhook_core::message::EXAMPLE_PAYLOAD).expect("example is JSON");
    value["push_data"]["tag"] = serde_json::Value::String(tag.to_owned());
    value.to_string().into_bytes()
}

/// A service with [`KEY`] and [`OTHER_KEY`] and a recorder named "recorder".
pub fn recording_service() -> (
    HubhookService,
    mpsc::UnboundedReceiver<(HubMessage, String)>,
) {
    let (recorder, rx) = Recorder::new("recorder");
    let service = HubhookService::builder()
        .api_key(KEY)
        .api_key(OTHER_KEY)
        .max_body(4096)
        .handler(recorder)
        .build()
        .expect("service builds");
    (service, rx)
}

pub async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("handler reported within 10 s")
        .expect("channel open")
}
