//! No key, query string or Authorization value ever reaches a log line.

use std::io::Write;
use std::sync::{Arc, Mutex};

use hubhook_core::message::EXAMPLE_PAYLOAD;

use crate::support::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// current_thread (the default): every task of the listener runs on this thread, so the
// thread-local subscriber below sees all of their events.
#[tokio::test]
async fn keys_never_reach_the_log() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    const WRONG: &str = "wrong-secret-9876543210zyx";
    for transport in TRANSPORTS {
        let (service, mut rx) = recording_service();
        let server = TestServer::start(service, transport).await;
        let body = EXAMPLE_PAYLOAD.as_bytes();
        let requests: Vec<(String, Vec<String>, &[u8], u16)> = vec![
            (format!("/hubhook?apikey={KEY}"), vec![], body, 202),
            (format!("/hubhook?apikey={WRONG}"), vec![], body, 401),
            (
                "/hubhook".into(),
                vec![format!("Authorization: Bearer {OTHER_KEY}")],
                body,
                202,
            ),
            (
                "/hubhook".into(),
                vec![format!("Authorization: Bearer {WRONG}")],
                body,
                401,
            ),
            (format!("/hubhook?apikey={KEY}"), vec![], b"{broken", 400),
            (
                format!("/hubhook?apikey={KEY}"),
                vec!["Content-Type: text/plain".into()],
                body,
                415,
            ),
            (format!("/nowhere?apikey={KEY}"), vec![], body, 404),
            (
                format!("/hubhook?x=1&apikey={OTHER_KEY}"),
                vec![],
                &[b' '; 5000],
                413,
            ),
        ];
        for (target, headers, body, want) in requests {
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            let r = server.post(&target, &headers, body).await;
            assert_eq!(r.status, want, "{transport:?} {target}");
        }
        next(&mut rx).await;
        next(&mut rx).await;
        server.stop().await;
    }

    let log = String::from_utf8(captured.0.lock().expect("log buffer").clone()).expect("utf8");
    // The log is not empty: the test would prove nothing otherwise.
    assert!(log.contains("accepted a delivery"), "{log}");
    assert!(
        log.contains("refused a request without a valid key"),
        "{log}"
    );
    assert!(log.contains("refused a payload"), "{log}");
    for secret in [KEY, OTHER_KEY, WRONG, "apikey", "Bearer", "x=1"] {
        assert!(
            !log.contains(secret),
            "{secret:?} leaked into the log:\n{log}"
        );
    }
}
