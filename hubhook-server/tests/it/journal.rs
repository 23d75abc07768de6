//! The journal through the real binary: SIGKILL at random moments loses nothing answered
//! 2xx, and a journal that cannot be used stops the start with a clear error.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::*;

/// Posts deliveries with distinct tags until `stop`, returns the ids answered 202.
fn flood(addr: std::net::SocketAddr, until: Instant) -> Vec<String> {
    let mut accepted = Vec::new();
    let mut n = 0u32;
    while Instant::now() < until {
        n += 1;
        let body =
            format!(r#"{{"push_data":{{"tag":"t{n}"}},"repository":{{"repo_name":"acme/site"}}}}"#);
        let Ok(mut tcp) = std::net::TcpStream::connect(addr) else {
            break;
        };
        use std::io::{Read, Write};
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
        let raw = format!(
            "POST /hubhook?apikey={KEY} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if tcp.write_all(raw.as_bytes()).is_err() {
            break;
        }
        let mut answer = String::new();
        if tcp.read_to_string(&mut answer).is_err() {
            break;
        }
        if answer.starts_with("HTTP/1.1 202") {
            if let Some(id) = answer
                .split("\"delivery\":\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
            {
                accepted.push(id.to_owned());
            }
        }
    }
    accepted
}

#[test]
fn sigkill_loses_nothing_that_was_answered_202() {
    let dir = TempDir::new("crash");
    let marks = dir.path().join("marks");
    std::fs::create_dir_all(&marks).expect("marks dir");
    let config = config(
        &dir,
        &format!(
            "journal = true\n[[handler]]\nname = \"mark\"\ntype = \"shell\"\ncommand = [\"sh\", \"-c\", \"sleep 0.2; touch {}/$HUBHOOK_DELIVERY\"]\n",
            marks.display()
        ),
    );
    let config = config.to_str().expect("utf8");
    let mut answered: Vec<String> = Vec::new();
    // Several kill moments: 300 ms, 700 ms, 1.1 s into a flood.
    for kill_after in [300u64, 700, 1100] {
        let server = Server::start(&["--config", config], dir.path(), &[]);
        let addr = server.addr;
        let flooding = std::thread::spawn(move || {
            flood(addr, Instant::now() + Duration::from_millis(kill_after))
        });
        std::thread::sleep(Duration::from_millis(kill_after));
        drop(server); // SIGKILL, mid-flood, with runs in flight
        answered.extend(flooding.join().expect("flood"));
    }
    assert!(
        answered.len() > 20,
        "the flood got {} answers",
        answered.len()
    );
    // A last start runs what the kills left unfinished; then every answered delivery has
    // had its handler run at least once.
    let mut server = Server::start(&["--config", config], dir.path(), &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let done: HashSet<String> = std::fs::read_dir(&marks)
            .expect("marks")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        let missing: Vec<&String> = answered.iter().filter(|id| !done.contains(*id)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.len();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        missing,
        0,
        "{missing} of {} deliveries answered 202 never ran:\n{}",
        answered.len(),
        server.stderr()
    );
    let _ = server.wait_for_stderr("listening on");
    assert!(server.terminate().success());
}

#[test]
fn an_unusable_journal_stops_the_start_clearly() {
    let dir = TempDir::new("badjournal");
    // The data dir is a file: it cannot be created.
    dir.write("occupied", "a file\n");
    dir.write("a.toml", &format!("listen = \"127.0.0.1:0\"\njournal = true\ndata_dir = \"occupied/data\"\n[auth]\napi_keys = [\"{KEY}\"]\n"));
    let out = hubhook(&["serve", "--config", "a.toml"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot create the data dir") && stderr.contains("occupied/data"),
        "{stderr}"
    );

    // A corrupt database file.
    std::fs::create_dir_all(dir.path().join("corrupt")).expect("dir");
    dir.write("corrupt/journal.sqlite", &"x".repeat(8192));
    dir.write(
        "b.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\njournal = true\ndata_dir = \"corrupt\"\n[auth]\napi_keys = [\"{KEY}\"]\n"
        ),
    );
    let out = hubhook(&["serve", "--config", "b.toml"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("journal.sqlite") && stderr.contains("not a database"),
        "{stderr}"
    );

    // Held by another running hubhook.
    dir.write(
        "c.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\njournal = true\ndata_dir = \"shared\"\n[auth]\napi_keys = [\"{KEY}\"]\n"
        ),
    );
    let mut first = Server::start(&["--config", "c.toml"], dir.path(), &[]);
    first.wait_for_stderr("listening on");
    let out = hubhook(&["serve", "--config", "c.toml"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("locked") && stderr.contains("another hubhook"),
        "{stderr}"
    );
    assert!(first.terminate().success());
}
