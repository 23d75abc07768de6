//! The Docker Hub callback client against real HTTPS receivers on 127.0.0.1, with a test CA.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hubhook_core::callback::{CallbackBody, CallbackError, CallbackState, Callbacks};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::support::closes_within;

const TOKEN: &str = "2141b5bi5i5b02bec211i4eeih0242eg11000a";
const HOOK_PATH: &str = "/u/svendowideit/testhook/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/";

fn hook_url(host: &str, port: u16) -> String {
    format!("https://{host}:{port}{HOOK_PATH}")
}

/// The kit's test CA with its PEM in a temp file (removed on drop).
struct TestCa {
    pem_path: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let ca = hubhook_testkit::TestCa::new();
        let pem_path = std::env::temp_dir().join(format!(
            "hubhook-callback-ca-{}-{}.pem",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&pem_path, &ca.pem).expect("write CA PEM");
        Self {
            pem_path,
            server: ca.server,
        }
    }

    /// Callbacks that trust this CA and allow `localhost:port`.
    fn callbacks(&self, port: u16) -> Callbacks {
        Callbacks::new()
            .allow([format!("localhost:{port}")])
            .add_roots_pem_file(&self.pem_path)
            .expect("the CA file loads")
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pem_path);
    }
}

/// One request as the receiver saw it.
#[derive(Debug)]
struct Seen {
    method: http::Method,
    path: String,
    header: http::HeaderMap,
    body: Bytes,
}

/// An HTTPS receiver on 127.0.0.1 that answers every request with `status` (and `location`).
struct Receiver {
    port: u16,
    connections: Arc<AtomicUsize>,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(ca: &TestCa, status: u16, location: Option<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server.clone());
        let (tx, seen) = mpsc::unbounded_channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (acceptor, tx, location) = (acceptor.clone(), tx.clone(), location.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let (tx, location) = (tx.clone(), location.clone());
                        answer(req, tx, status, location)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            port,
            connections,
            seen,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The one request received so far; fails if there was none or more than one.
    fn only_request(&mut self) -> Seen {
        let seen = self.seen.try_recv().expect("the receiver got a request");
        assert!(self.seen.try_recv().is_err(), "exactly one request");
        assert_eq!(self.connections(), 1, "exactly one connection");
        seen
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: http::Request<hyper::body::Incoming>,
    tx: mpsc::UnboundedSender<Seen>,
    status: u16,
    location: Option<String>,
) -> Result<http::Response<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let _ = tx.send(Seen {
        method: parts.method,
        path: parts.uri.to_string(),
        header: parts.headers,
        body,
    });
    let mut response = http::Response::builder().status(status);
    if let Some(location) = location {
        response = response.header(http::header::LOCATION, location);
    }
    Ok(response.body(Full::new(Bytes::from_static(b"{}")))?)
}

/// A plain TCP listener that must not be contacted, on 127.0.0.1 port 0.
async fn untouchable() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (listener, port)
}

async fn sees_no_connection(listener: &TcpListener) -> bool {
    tokio::time::timeout(Duration::from_millis(300), listener.accept())
        .await
        .is_err()
}

fn body() -> CallbackBody {
    CallbackBody::new(
        CallbackState::Success,
        "x".repeat(387),
        format!("hubhook {}", "c".repeat(120)),
        "https://ci.example.com/runs/42",
    )
}

fn header<'a>(seen: &'a Seen, name: &str) -> &'a str {
    seen.header
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header in {seen:?}"))
}

#[tokio::test]
async fn a_callback_posts_exactly_the_documented_json_to_the_hook_path() {
    let ca = TestCa::new();
    let mut receiver = Receiver::start(&ca, 200, None).await;
    let callbacks = ca.callbacks(receiver.port);
    let status = callbacks
        .send(&hook_url("localhost", receiver.port), &body())
        .await
        .expect("callback succeeds");
    assert_eq!(status, 200);

    let seen = receiver.only_request();
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.path, HOOK_PATH);
    assert_eq!(header(&seen, "content-type"), "application/json");
    assert_eq!(
        header(&seen, "user-agent"),
        concat!("hubhook/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        header(&seen, "host"),
        format!("localhost:{}", receiver.port)
    );
    assert_eq!(header(&seen, "content-length"), seen.body.len().to_string());
    let value: serde_json::Value = serde_json::from_slice(&seen.body).expect("JSON body");
    assert_eq!(
        value,
        json!({
            "state": "success",
            "description": "x".repeat(255),
            "context": format!("hubhook {}", "c".repeat(92)),
            "target_url": "https://ci.example.com/runs/42",
        })
    );
}

#[tokio::test]
async fn descriptions_are_cut_by_characters_not_bytes() {
    let body = CallbackBody::new(CallbackState::Failure, "x".repeat(300), "c".repeat(300), "");
    assert_eq!(body.description, "x".repeat(255));
    assert_eq!(body.context, "c".repeat(100));
    let body = CallbackBody::new(CallbackState::Error, "é".repeat(300), "€".repeat(101), "");
    assert_eq!(body.description, "é".repeat(255), "255 chars, 510 bytes");
    assert_eq!(body.context, "€".repeat(100));
    let short = CallbackBody::new(CallbackState::Success, "ok é", "ctx", "u");
    assert_eq!(
        (short.description.as_str(), short.context.as_str()),
        ("ok é", "ctx")
    );
    for (state, name) in [
        (CallbackState::Success, "success"),
        (CallbackState::Failure, "failure"),
        (CallbackState::Error, "error"),
    ] {
        assert_eq!(
            serde_json::to_value(state).expect("serializes"),
            json!(name)
        );
    }

    // On the wire, a body whose fields were set by hand is cut too.
    let ca = TestCa::new();
    let mut receiver = Receiver::start(&ca, 204, None).await;
    let mut by_hand = CallbackBody::new(CallbackState::Error, "", "", "");
    by_hand.description = format!("a{}", "€".repeat(300));
    by_hand.context = "ü".repeat(150);
    let status = ca
        .callbacks(receiver.port)
        .send(&hook_url("localhost", receiver.port), &by_hand)
        .await
        .expect("callback succeeds");
    assert_eq!(status, 204);
    let seen = receiver.only_request();
    let value: serde_json::Value = serde_json::from_slice(&seen.body).expect("JSON body");
    assert_eq!(
        value,
        json!({
            "state": "error",
            "description": format!("a{}", "€".repeat(254)),
            "context": "ü".repeat(100),
            "target_url": "",
        })
    );
}

#[tokio::test]
async fn hosts_outside_the_allowlist_are_never_contacted() {
    let ca = TestCa::new();
    let (listener, port) = untouchable().await;
    let e = ca
        .callbacks(port)
        .send(&hook_url("127.0.0.1", port), &body())
        .await
        .expect_err("127.0.0.1 is not localhost");
    assert!(
        matches!(&e, CallbackError::NotAllowed { host } if *host == format!("127.0.0.1:{port}")),
        "{e:?}"
    );
    assert!(e.to_string().contains("127.0.0.1"), "{e}");
    assert!(!e.to_string().contains(TOKEN), "{e}");
    // Look-alikes and the wrong port are refused as well.
    for allow in [
        format!("calhost:{port}"),
        format!("localhost.localdomain:{port}"),
        format!("localhost:{}", port.wrapping_add(1)),
        "localhost".to_owned(),
        "*".to_owned(),
    ] {
        let e = ca
            .callbacks(port)
            .allow([allow.clone()])
            .send(&hook_url("localhost", port), &body())
            .await
            .expect_err("not allowed");
        assert!(
            matches!(e, CallbackError::NotAllowed { .. }),
            "{allow}: {e:?}"
        );
    }
    assert!(
        sees_no_connection(&listener).await,
        "a refused host is never contacted"
    );
}

#[tokio::test]
async fn the_allowlist_ignores_case_and_a_bare_host_means_port_443() {
    let ca = TestCa::new();
    let mut receiver = Receiver::start(&ca, 200, None).await;
    let upper = ca
        .callbacks(receiver.port)
        .allow([format!("LocalHost:{}", receiver.port)]);
    let status = upper
        .send(&hook_url("LOCALHOST", receiver.port), &body())
        .await
        .expect("host names compare case-insensitively");
    assert_eq!(status, 200);
    receiver.only_request();

    let defaults = Callbacks::new();
    let e = defaults
        .send(&hook_url("registry.hub.docker.com", 8443), &body())
        .await
        .expect_err("the default allows port 443 only");
    assert!(
        matches!(&e, CallbackError::NotAllowed { host } if host == "registry.hub.docker.com:8443"),
        "{e:?}"
    );
    assert!(format!("{defaults:?}").contains("registry.hub.docker.com"));
}

#[tokio::test]
async fn only_https_urls_without_credentials_are_used() {
    let ca = TestCa::new();
    let (listener, port) = untouchable().await;
    let callbacks = ca.callbacks(port);
    let http = format!("http://localhost:{port}{HOOK_PATH}");
    let e = callbacks.send(&http, &body()).await.expect_err("http");
    assert!(
        matches!(&e, CallbackError::NotHttps { origin } if *origin == format!("http://localhost:{port}")),
        "{e:?}"
    );
    for url in [
        format!("https://user@localhost:{port}{HOOK_PATH}"),
        format!("https://user:secret@localhost:{port}{HOOK_PATH}"),
        format!("https://localhost:{port}@localhost:{port}{HOOK_PATH}"),
    ] {
        let e = callbacks.send(&url, &body()).await.expect_err("userinfo");
        assert!(matches!(e, CallbackError::UserInfo { .. }), "{url}: {e:?}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }
    for url in ["not a url", "https:///no-host", "localhost/path"] {
        let e = callbacks.send(url, &body()).await.expect_err(url);
        assert!(
            matches!(
                e,
                CallbackError::InvalidUrl { .. } | CallbackError::NotHttps { .. }
            ),
            "{url}: {e:?}"
        );
    }
    assert!(!e.to_string().contains(TOKEN), "{e}");
    assert!(sees_no_connection(&listener).await);
}

#[tokio::test]
async fn redirects_are_reported_and_never_followed() {
    let ca = TestCa::new();
    let (second, second_port) = untouchable().await;
    let location = format!("https://localhost:{second_port}/elsewhere?token=secret");
    let mut receiver = Receiver::start(&ca, 302, Some(location)).await;
    // Even with the target on the allowlist, the redirect is not followed.
    let callbacks = ca.callbacks(receiver.port).allow([
        format!("localhost:{}", receiver.port),
        format!("localhost:{second_port}"),
    ]);
    let e = callbacks
        .send(&hook_url("localhost", receiver.port), &body())
        .await
        .expect_err("302");
    let expected = format!("https://localhost:{second_port}");
    assert!(
        matches!(&e, CallbackError::Redirect { status: 302, location: Some(l), .. } if *l == expected),
        "{e:?}"
    );
    for hidden in ["secret", "elsewhere", TOKEN] {
        assert!(!e.to_string().contains(hidden), "{e}");
        assert!(!format!("{e:?}").contains(hidden), "{e:?}");
    }
    receiver.only_request();
    assert!(
        sees_no_connection(&second).await,
        "the Location is not contacted"
    );
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out() {
    let ca = TestCa::new();
    let (listener, port) = untouchable().await;
    let callbacks = ca.callbacks(port).timeout(Duration::from_millis(300));
    let (url, body) = (hook_url("localhost", port), body());
    let started = Instant::now();
    let (result, accepted) = tokio::join!(callbacks.send(&url, &body), listener.accept());
    let elapsed = started.elapsed();
    let e = result.expect_err("no answer");
    assert!(
        matches!(&e, CallbackError::Timeout { timeout, origin }
            if *timeout == Duration::from_millis(300) && *origin == format!("https://localhost:{port}")),
        "{e:?}"
    );
    assert!(e.to_string().contains("localhost"), "{e}");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    // The abandoned connection is closed, not left open.
    let (mut tcp, _) = accepted.expect("the client connected");
    assert!(closes_within(&mut tcp, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn an_untrusted_certificate_fails_the_handshake_naming_the_host() {
    let ca = TestCa::new();
    let mut receiver = Receiver::start(&ca, 200, None).await;
    // Trusts another CA only (not the system roots' business: they don't know this one either).
    let other = TestCa::new();
    let e = other
        .callbacks(receiver.port)
        .send(&hook_url("localhost", receiver.port), &body())
        .await
        .expect_err("untrusted certificate");
    let CallbackError::Tls { origin, source } = &e else {
        panic!("expected a TLS error, got {e:?}");
    };
    assert_eq!(*origin, format!("https://localhost:{}", receiver.port));
    let rustls_error = source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    assert!(
        matches!(rustls_error, Some(rustls::Error::InvalidCertificate(_))),
        "{source:?}"
    );
    assert!(e.to_string().contains("localhost"), "{e}");
    assert!(receiver.seen.try_recv().is_err(), "no request was sent");
}

#[tokio::test]
async fn a_server_error_is_reported_with_its_status() {
    let ca = TestCa::new();
    let mut receiver = Receiver::start(&ca, 500, None).await;
    let e = ca
        .callbacks(receiver.port)
        .send(&hook_url("localhost", receiver.port), &body())
        .await
        .expect_err("500");
    assert!(
        matches!(&e, CallbackError::Status { status: 500, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("localhost"), "{e}");
    assert!(!e.to_string().contains(TOKEN), "{e}");
    receiver.only_request();
}

#[test]
fn extra_roots_are_checked_with_the_file_in_the_error() {
    let missing = std::env::temp_dir().join("hubhook-callback-missing-ca.pem");
    let e = Callbacks::new()
        .add_roots_pem_file(&missing)
        .expect_err("missing file");
    assert!(
        matches!(&e, CallbackError::Roots { path, .. } if *path == missing),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("hubhook-callback-missing-ca.pem"),
        "{e}"
    );

    let empty =
        std::env::temp_dir().join(format!("hubhook-callback-empty-{}.pem", std::process::id()));
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let e = Callbacks::new()
        .add_roots_pem_file(&empty)
        .expect_err("no certificate");
    assert!(matches!(e, CallbackError::Roots { .. }), "{e:?}");
    let _ = std::fs::remove_file(&empty);
}

#[test]
fn debug_output_never_shows_the_token() {
    let body = CallbackBody::new(
        CallbackState::Success,
        "deployed",
        "hubhook",
        format!("https://ci.example.com/runs/{TOKEN}?key=secret"),
    );
    let debug = format!("{body:?}");
    assert!(debug.contains("https://ci.example.com"), "{debug}");
    assert!(
        !debug.contains(TOKEN) && !debug.contains("secret"),
        "{debug}"
    );
}

#[tokio::test]
async fn the_service_calls_back_once_every_handler_has_settled() {
    use crate::support::{next, Recorder, TestServer, Transport, KEY};

    let ca = TestCa::new();
    let mut receiver = Receiver::start(&ca, 200, None).await;
    let (recorder, mut ran) = Recorder::new("recorder");
    let service = hubhook_core::HubhookService::builder()
        .api_key(KEY)
        .handler(recorder)
        .callbacks(ca.callbacks(receiver.port))
        .build()
        .expect("service builds");
    let server = TestServer::start(service, Transport::Plain).await;
    let mut payload: serde_json::Value =
        serde_json::from_str(hubhook_core::message::EXAMPLE_PAYLOAD).expect("example is JSON");
    payload["callback_url"] = json!(hook_url("localhost", receiver.port));
    let r = server
        .post(
            &format!("/hubhook?apikey={KEY}"),
            &[],
            payload.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    next(&mut ran).await;

    let seen = tokio::time::timeout(Duration::from_secs(10), receiver.seen.recv())
        .await
        .expect("the callback arrives within 10 s")
        .expect("receiver running");
    assert_eq!(seen.path, HOOK_PATH);
    let value: serde_json::Value = serde_json::from_slice(&seen.body).expect("JSON body");
    assert_eq!(value["state"], "success", "{value}");
    assert_eq!(value["context"], "hubhook", "{value}");
    assert!(
        value["description"]
            .as_str()
            .is_some_and(|d| d.contains("recorder")),
        "{value}"
    );
    server.stop().await;
    assert!(
        receiver.seen.try_recv().is_err(),
        "one callback per delivery"
    );
}
