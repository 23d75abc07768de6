//! Transport behaviour: HTTP/2, header timeouts, the connection cap, TLS files.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hubhook_core::message::EXAMPLE_PAYLOAD;
use hubhook_core::{HubhookService, TlsConfig};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;

use crate::support::*;

async fn h2_post(server: &TestServer, alpn: &[&[u8]]) -> (u16, String) {
    let io = server.connect_alpn(alpn).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let scheme = if server.transport == Transport::Tls {
        "https"
    } else {
        "http"
    };
    let request = http::Request::post(format!("{scheme}://localhost/hubhook?apikey={KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(EXAMPLE_PAYLOAD.as_bytes())))
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 response");
    assert_eq!(response.version(), http::Version::HTTP_2);
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http2_over_tls_by_alpn_and_in_the_clear() {
    for transport in TRANSPORTS {
        let (service, mut rx) = recording_service();
        let server = TestServer::start(service, transport).await;
        let (status, body) = h2_post(&server, &[b"h2"]).await;
        assert_eq!(status, 202, "{transport:?}: {body}");
        let (_, delivery) = next(&mut rx).await;
        assert!(body.contains(&delivery));
        server.stop().await;
    }
}

#[tokio::test]
async fn a_stalled_request_head_is_cut_off() {
    for transport in TRANSPORTS {
        let (service, _rx) = recording_service();
        let server = TestServer::start_with(service, transport, |b| {
            b.header_timeout(Duration::from_millis(300))
        })
        .await;
        // Half a head, then nothing.
        let mut io = server.connect().await;
        io.write_all(b"POST /hubhook HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        assert!(
            closes_within(&mut io, Duration::from_secs(10)).await,
            "{transport:?}: the header timeout closes the connection"
        );
        // Not a single byte.
        let mut io = server.connect().await;
        assert!(
            closes_within(&mut io, Duration::from_secs(10)).await,
            "{transport:?}: a silent connection is closed too"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn a_silent_client_cannot_hold_a_tls_handshake_open() {
    let (service, _rx) = recording_service();
    let server = TestServer::start_with(service, Transport::Tls, |b| {
        b.header_timeout(Duration::from_millis(300))
    })
    .await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    assert!(closes_within(&mut tcp, Duration::from_secs(10)).await);
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let (service, mut rx) = recording_service();
    let server = TestServer::start_with(service, Transport::Plain, |b| b.max_connections(1)).await;
    // The first connection holds the only slot, mid-request; an answered /healthz on it
    // shows the server has taken it.
    let mut first = server.connect().await;
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let health = read_response(&mut first).await.expect("an answer");
    assert_eq!(health.status, 200);
    first
        .write_all(b"POST /hubhook HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // The second is accepted by the kernel but not served...
    let mut second = server.connect().await;
    second
        .write_all(&post_bytes(
            &format!("/hubhook?apikey={KEY}"),
            &[],
            EXAMPLE_PAYLOAD.as_bytes(),
        ))
        .await
        .expect("write");
    // A negative window: only time can show that no answer comes.
    let early = tokio::time::timeout(Duration::from_millis(500), read_response(&mut second)).await;
    assert!(early.is_err(), "no answer while the cap is reached");
    // ...until the first goes away.
    drop(first);
    let r = tokio::time::timeout(Duration::from_secs(10), read_response(&mut second))
        .await
        .expect("served once a slot is free")
        .expect("a response");
    assert_eq!(r.status, 202);
    next(&mut rx).await;
    server.stop().await;
}

#[test]
fn tls_files_are_checked_with_the_path_in_the_error() {
    let temp = hubhook_testkit::TempDir::new("tls-files");
    let dir = temp.path();
    let cert = TestCert::new();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, &cert.cert_pem).expect("write cert");
    std::fs::write(&key_path, &cert.key_pem).expect("write key");
    TlsConfig::from_pem_files(&cert_path, &key_path).expect("good pair loads");

    let missing = dir.join("missing.pem");
    let e = TlsConfig::from_pem_files(&missing, &key_path).expect_err("missing cert");
    assert!(e.is_tls() && !e.is_tls_key(), "{e}");
    assert_eq!(e.path(), Some(missing.as_path()));
    assert!(
        std::error::Error::source(&e).is_some(),
        "the I/O error is kept as the cause"
    );
    assert!(e.to_string().contains("missing.pem"), "{e}");

    let e = TlsConfig::from_pem_files(&cert_path, &cert_path).expect_err("a cert is no key");
    assert!(e.is_tls_key(), "{e}");
    assert_eq!(e.path(), Some(cert_path.as_path()));

    let other = TestCert::new();
    std::fs::write(&key_path, &other.key_pem).expect("write other key");
    let e = TlsConfig::from_pem_files(&cert_path, &key_path).expect_err("mismatched pair");
    assert!(e.to_string().contains("does not fit the key"), "{e}");
}

#[test]
fn building_refuses_unsafe_settings() {
    let e = HubhookService::builder().build().expect_err("no key");
    assert!(
        e.is_config() && e.to_string().starts_with("no API key"),
        "{e}"
    );
    assert!(HubhookService::builder()
        .allow_unauthenticated(true)
        .build()
        .is_ok());
    for path in ["hubhook", "/healthz", "/metrics", "/a?b"] {
        let e = HubhookService::builder()
            .api_key(KEY)
            .path(path)
            .build()
            .expect_err(path);
        assert!(
            e.is_config() && e.to_string().starts_with("invalid hook path"),
            "{path}: {e}"
        );
    }
    let (a, _) = Recorder::new("same");
    let (b, _) = Recorder::new("same");
    let e = HubhookService::builder()
        .api_key(KEY)
        .handler(a)
        .handler(b)
        .build();
    let e = e.expect_err("two handlers named same");
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("\"same\""), "{e}");
}

#[tokio::test]
async fn binding_a_taken_port_names_the_address() {
    let (service, _rx) = recording_service();
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = taken.local_addr().expect("addr");
    let e = hubhook_core::Listener::builder(service)
        .addr(addr)
        .bind()
        .await
        .expect_err("port in use");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    for transport in TRANSPORTS {
        let (service, mut rx) = recording_service();
        let server = TestServer::start_with(service, transport, |b| {
            b.idle_timeout(Duration::from_millis(300))
        })
        .await;
        let mut io = server.connect().await;
        io.write_all(&post_bytes(
            &format!("/hubhook?apikey={KEY}"),
            &[],
            EXAMPLE_PAYLOAD.as_bytes(),
        ))
        .await
        .expect("write");
        let r = read_response(&mut io).await.expect("response");
        assert_eq!(r.status, 202);
        assert_eq!(r.header("connection"), None, "kept alive after the answer");
        next(&mut rx).await;
        assert!(
            closes_within(&mut io, Duration::from_secs(10)).await,
            "{transport:?}: the idle connection is closed"
        );
        server.stop().await;
    }
}

/// One peer holding many idle HTTP/2 connections cannot take every slot: past its
/// per-address share they are closed, and another peer's webhook goes through at once.
#[tokio::test]
async fn one_peer_cannot_hold_every_connection() {
    let (service, mut rx) = recording_service();
    let server = TestServer::start(service, Transport::Plain).await;
    let mut held = Vec::new();
    for _ in 0..600 {
        let Ok(mut tcp) = tokio::net::TcpStream::connect(server.addr).await else {
            break;
        };
        // An h2c connection: the preface and an empty SETTINGS frame, then nothing.
        let _ = tcp
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await;
        held.push(tcp);
    }
    assert_eq!(held.len(), 600);
    // Another peer: 127.0.0.2 is loopback too.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let started = std::time::Instant::now();
    let mut io = tokio::time::timeout(Duration::from_secs(1), socket.connect(server.addr))
        .await
        .expect("connected within 1 s")
        .expect("connect");
    io.write_all(&post_bytes(
        &format!("/hubhook?apikey={KEY}"),
        &["Content-Type: application/json"],
        EXAMPLE_PAYLOAD.as_bytes(),
    ))
    .await
    .expect("write");
    let r = tokio::time::timeout(Duration::from_secs(1), read_response(&mut io))
        .await
        .expect("answered within 1 s")
        .expect("a response");
    assert_eq!(r.status, 202, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    next(&mut rx).await;
    drop(held);
    server.stop().await;
}

/// Traffic that is not a webhook does not keep a connection: a trickle of `/healthz`
/// requests on one keep-alive connection is closed after the idle timeout.
#[tokio::test]
async fn a_trickle_of_health_checks_does_not_hold_a_connection() {
    use tokio::io::AsyncReadExt;
    let (service, _rx) = recording_service();
    let server = TestServer::start_with(service, Transport::Plain, |b| {
        b.idle_timeout(Duration::from_millis(500))
    })
    .await;
    let mut io = server.connect().await;
    let started = std::time::Instant::now();
    let closed = loop {
        if io
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .is_err()
        {
            break started.elapsed();
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(2), io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("no answer to /healthz"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still open after 5 s"
        );
        // The trickle's pace, not a wait: one health check every 100 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        closed >= Duration::from_millis(400),
        "closed after {closed:?}"
    );
    server.stop().await;
}
