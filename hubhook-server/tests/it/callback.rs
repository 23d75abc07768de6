//! Docker Hub's legacy callback through the real binary: a local HTTPS receiver allowed in
//! the config gets exactly the documented JSON; a host outside the allowlist is never
//! contacted; both results are in the journal; the URL's token never reaches the log.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::support::*;

const TOKEN: &str = "2141b5bi5i5b02bec211i4eeih0242eg11000a";

/// One request as the receiver read it: the request line and the body.
type Seen = (String, String, Vec<u8>);

/// An HTTPS receiver on 127.0.0.1 that answers 200 and reports each request.
fn https_receiver(tls: Arc<rustls::ServerConfig>) -> (u16, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { break };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
            let conn = rustls::ServerConnection::new(tls.clone()).expect("connection");
            let mut stream = BufReader::new(rustls::StreamOwned::new(conn, tcp));
            let mut line = String::new();
            if stream.read_line(&mut line).is_err() {
                continue;
            }
            let mut content_type = String::new();
            let mut length = 0;
            loop {
                let mut header = String::new();
                if stream.read_line(&mut header).is_err() || header.trim().is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap_or(("", ""));
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            let _ = stream.read_exact(&mut body);
            let stream = stream.get_mut();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = stream.flush();
            stream.conn.send_close_notify();
            let _ = stream.flush();
            let _ = tx.send((line.trim().to_owned(), content_type, body));
        }
    });
    (port, rx)
}

#[test]
fn callbacks_go_to_allowed_hosts_only_with_the_documented_json() {
    let dir = TempDir::new("callback");
    let ca = hubhook_testkit::TestCa::new();
    dir.write("ca.pem", &ca.pem);
    let (port, seen) = https_receiver(ca.server.clone());
    // A listener the callback must never reach: not on the allowlist.
    let outsider = TcpListener::bind("127.0.0.1:0").expect("bind");
    outsider.set_nonblocking(true).expect("nonblocking");
    let outsider_port = outsider.local_addr().expect("addr").port();
    config(
        &dir,
        &format!(
            "journal = true\n[callback]\nenabled = true\nallow = [\"localhost:{port}\"]\n\
             ca_file = \"ca.pem\"\ntarget_url = \"https://blog.example.com/\"\ntimeout = \"5s\"\n\
             [[handler]]\nname = \"audit\"\ntype = \"log\"\n"
        ),
    );
    let mut server = Server::start(&["--config", "hubhook.toml"], dir.path(), &[]);
    server.wait_for_stderr("listening on");
    let post = |callback_url: &str| {
        let mut payload: serde_json::Value =
            serde_json::from_str(hubhook_core::message::EXAMPLE_PAYLOAD).expect("JSON");
        payload["callback_url"] = callback_url.into();
        let (status, body) = request(
            server.addr,
            "POST",
            &format!("/hubhook?apikey={KEY}"),
            &[],
            payload.to_string().as_bytes(),
        );
        assert_eq!(status, 202, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        body["delivery"].as_str().expect("delivery").to_owned()
    };

    let allowed = post(&format!(
        "https://localhost:{port}/u/svendowideit/testhook/hook/{TOKEN}/"
    ));
    let (line, content_type, body) = seen
        .recv_timeout(Duration::from_secs(20))
        .expect("the callback arrives");
    assert_eq!(
        line,
        format!("POST /u/svendowideit/testhook/hook/{TOKEN}/ HTTP/1.1")
    );
    assert_eq!(content_type, "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(
        json,
        serde_json::json!({
            "state": "success",
            "description": "audit: ok",
            "context": "hubhook",
            "target_url": "https://blog.example.com/"
        })
    );

    let refused = post(&format!(
        "https://127.0.0.1:{outsider_port}/u/svendowideit/testhook/hook/{TOKEN}/"
    ));
    // Both deliveries are finished and their callbacks recorded.
    let show = |id: &str| {
        let out = hubhook(
            &["deliveries", "--config", "hubhook.toml", "show", id],
            dir.path(),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = eventually(
        Duration::from_secs(10),
        "the refused callback is recorded",
        || Some(show(&refused)).filter(|s| s.contains("callback")),
    );
    assert!(
        shown.contains("callback") && shown.contains("not on the allowlist"),
        "{shown}"
    );
    // No pause needed: a connection hubhook had made would have been in the outsider's
    // accept queue before the refusal was recorded.
    assert!(
        outsider.accept().is_err(),
        "a host outside the allowlist was contacted"
    );
    let shown = show(&allowed);
    assert!(
        shown.contains("callback") && shown.contains("answered 200"),
        "{shown}"
    );
    assert!(seen.try_recv().is_err(), "one callback per delivery");
    let log = server.stderr();
    assert!(server.terminate().success());
    assert!(
        !log.contains(TOKEN),
        "the callback token reached the log:\n{log}"
    );
}
