//! `[[notify]]` through `hubhook serve`: each try is journaled and shown, and the token in
//! the webhook URL is in no line hubhook writes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use hubhook_testkit::{eventually, TempDir};

use crate::support::*;

const TOKEN: &str = "XOXB-1234-notify-token-never-logged";

/// A plain-HTTP receiver answering its script's statuses in turn (then 200); each
/// request's line and body on the channel.
fn receiver(script: Vec<u16>) -> (u16, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut script = script.into_iter();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut length = 0;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let status = script.next().unwrap_or(200);
            let _ = reader.get_mut().write_all(
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            let _ = tx.send((line.trim().to_owned(), body));
        }
    });
    (port, rx)
}

#[test]
fn each_try_is_journaled_and_the_token_is_never_written() {
    let dir = TempDir::new("notify");
    let (port, seen) = receiver(vec![500, 500, 200]);
    config(
        &dir,
        &format!(
            "[[handler]]\nname = \"deploy\"\ntype = \"shell\"\n\
             command = [\"/bin/sh\", \"-c\", \"echo '<b>it broke</b>'; exit 3\"]\n\
             [[notify]]\nname = \"ops\"\nurl = \"slack+http://127.0.0.1:{port}/services/T0/B0/{TOKEN}\"\n\
             retry_backoff = \"50ms\"\n"
        ),
    );
    let mut server = Server::start(&["--config", "hubhook.toml"], dir.path(), &[]);
    let body = r#"{"push_data":{"tag":"v2"},"repository":{"repo_name":"acme/site"}}"#;
    let (status, answer) = request(
        server.addr,
        "POST",
        &format!("/hubhook?apikey={KEY}"),
        &[],
        body.as_bytes(),
    );
    assert_eq!(status, 202, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    let id = answer["delivery"].as_str().expect("delivery").to_owned();

    let mut bodies = Vec::new();
    for _ in 0..3 {
        let (line, body) = seen
            .recv_timeout(Duration::from_secs(20))
            .expect("a try arrives");
        assert_eq!(line, format!("POST /services/T0/B0/{TOKEN} HTTP/1.1"));
        bodies.push(body);
    }
    let text: serde_json::Value = serde_json::from_slice(&bodies[2]).expect("JSON");
    let text = text["text"].as_str().expect("text");
    assert!(
        text.starts_with("hubhook: deploy failed acme/site:v2 in "),
        "{text}"
    );
    assert!(text.contains("<b>it broke</b>"), "the output tail: {text}");

    // Three tries of notify:ops, recorded and shown with the delivery; the delivery's
    // own status stays the handler's.
    let shown = eventually(Duration::from_secs(10), "three tries are recorded", || {
        let out = hubhook(
            &["deliveries", "--config", "hubhook.toml", "show", &id],
            dir.path(),
        );
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        (shown.matches("notify:ops").count() >= 3).then_some(shown)
    });
    assert_eq!(shown.matches("notify:ops").count(), 3, "{shown}");
    assert!(
        shown.contains("answered 500") && shown.contains("answered 200"),
        "{shown}"
    );
    assert!(!shown.contains(TOKEN), "{shown}");
    let listed = hubhook(
        &["deliveries", "--config", "hubhook.toml", "list"],
        dir.path(),
    );
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("failed"), "{listed}");

    server.wait_for_stderr("notify:ops");
    let (stderr, stdout) = (server.stderr(), server.stdout());
    assert!(server.terminate().success());
    assert!(
        stderr.contains("notify:ops"),
        "the tries are logged: {stderr}"
    );
    assert!(
        !stderr.contains(TOKEN),
        "the token leaked to stderr: {stderr}"
    );
    assert!(
        !stdout.contains(TOKEN),
        "the token leaked to stdout: {stdout}"
    );
}
