//! The journal through the real binary: SIGKILL at random moments loses nothing answered
//! 2xx, and a journal that cannot be used stops the start with a clear error.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::*;

/// Posts deliveries with distinct tags (`{round}-{n}`) until `until`, returns the ids
/// answered 202. Distinct tags: deliveries of one tag would coalesce, and a superseded
/// one rightly never runs.
fn flood(addr: std::net::SocketAddr, round: u64, until: Instant) -> Vec<String> {
    let mut accepted = Vec::new();
    let mut n = 0u32;
    while Instant::now() < until {
        n += 1;
        let body = format!(
            r#"{{"push_data":{{"tag":"t{round}-{n}"}},"repository":{{"repo_name":"acme/site"}}}}"#
        );
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
            // No `journal` key: the default configuration journals.
            "[[handler]]\nname = \"mark\"\ntype = \"shell\"\nmax_concurrency = 16\ncommand = [\"sh\", \"-c\", \"sleep 0.2; touch {}/$HUBHOOK_DELIVERY\"]\n",
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
            flood(
                addr,
                kill_after,
                Instant::now() + Duration::from_millis(kill_after),
            )
        });
        // The moment of the crash, not a wait for something: SIGKILL lands mid-flood,
        // with runs in flight, at a different point in each round.
        std::thread::sleep(Duration::from_millis(kill_after));
        drop(server);
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
    let missing = || {
        let done: HashSet<String> = std::fs::read_dir(&marks)
            .expect("marks")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        answered.iter().filter(|id| !done.contains(*id)).count()
    };
    eventually(
        Duration::from_secs(60),
        || {
            format!(
                "every delivery answered 202 runs; {} of {} never ran:\n{}",
                missing(),
                answered.len(),
                server.stderr()
            )
        },
        || (missing() == 0).then_some(()),
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
    // Found by the same preflight as `check`, with the file, line and key.
    assert!(
        stderr.contains("a.toml:3: data_dir: ./occupied/data cannot be created"),
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

/// The payload of a push of acme/site:latest by `pusher`.
fn push(pusher: &str) -> String {
    format!(
        r#"{{"push_data":{{"tag":"latest","pusher":"{pusher}"}},"repository":{{"repo_name":"acme/site"}}}}"#
    )
}

fn delivery_of(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).expect("JSON answer");
    value["delivery"]
        .as_str()
        .expect("a delivery id")
        .to_owned()
}

fn deliveries(dir: &TempDir, args: &[&str]) -> String {
    let mut all = vec!["deliveries", "--config", "hubhook.toml"];
    all.extend_from_slice(args);
    let out = hubhook(&all, dir.path());
    assert!(
        out.status.success(),
        "hubhook {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lines of the handler's log: "start PUSHER" and "end PUSHER".
fn runs(dir: &TempDir) -> Vec<String> {
    std::fs::read_to_string(dir.path().join("runs.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits (up to 30 s) for at least `lines` lines in the handler's log.
fn wait_for_runs(dir: &TempDir, lines: usize) -> Vec<String> {
    eventually(
        Duration::from_secs(30),
        || format!("{lines} lines in runs.log: {:?}", runs(dir)),
        || {
            let seen = runs(dir);
            (seen.len() >= lines).then_some(seen)
        },
    )
}

/// Waits until the server's queues are empty and nothing runs: after that, no run can
/// start without a new webhook.
fn wait_until_idle(server: &Server) {
    eventually(
        Duration::from_secs(30),
        "the queues empty and no run in progress",
        || {
            let (status, text) = request(server.addr, "GET", "/metrics", &[], b"");
            let idle = status == 200
                && text
                    .lines()
                    .filter(|l| l.starts_with("hubhook_queue_depth{"))
                    .all(|l| l.ends_with(" 0"))
                && text
                    .lines()
                    .filter(|l| l.starts_with("hubhook_queue_running{"))
                    .all(|l| l.ends_with(" 0"));
            idle.then_some(())
        },
    );
}

#[test]
fn a_burst_of_one_tag_runs_twice_and_the_history_and_replay_work_while_serving() {
    let dir = TempDir::new("burst");
    let log = dir.path().join("runs.log");
    // Each run holds until the test releases it, so the whole burst arrives while the
    // first run is still going, however slow the machine.
    let release = dir.path().join("release");
    config(
        &dir,
        &format!(
            "journal = true\n[[handler]]\nname = \"deploy\"\ntype = \"shell\"\n\
             command = [\"sh\", \"-c\", \"echo start $HUBHOOK_PUSHER >> {log}; while [ ! -e {release} ]; do sleep 0.05; done; echo end $HUBHOOK_PUSHER >> {log}\"]\n",
            log = log.display(),
            release = release.display()
        ),
    );
    let mut server = Server::start(&["--config", "hubhook.toml"], dir.path(), &[]);
    server.wait_for_stderr("listening on");
    let addr = server.addr;
    let target = format!("/hubhook?apikey={KEY}");

    // 1,000 pushes of acme/site:latest from 8 connections at once.
    let started = Instant::now();
    let senders: Vec<_> = (0..8)
        .map(|t| {
            let target = target.clone();
            std::thread::spawn(move || {
                (0..125)
                    .map(|i| {
                        let pusher = format!("p{t}-{i}");
                        let (status, body) =
                            request(addr, "POST", &target, &[], push(&pusher).as_bytes());
                        assert_eq!(status, 202, "{body}");
                        (delivery_of(&body), pusher)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut accepted: Vec<(String, String)> = senders
        .into_iter()
        .flat_map(|s| s.join().expect("sender"))
        .collect();
    let burst = started.elapsed();
    assert_eq!(accepted.len(), 1000);
    // Delivery ids sort by arrival: the last is the newest message.
    accepted.sort();
    let (newest, newest_pusher) = accepted.last().cloned().expect("a delivery");

    std::fs::write(&release, "").expect("release the runs");
    let seen = wait_for_runs(&dir, 4);
    // Not a pause: once the queue is empty, every run the burst caused has happened.
    wait_until_idle(&server);
    let seen_after = runs(&dir);
    assert_eq!(
        seen_after.len(),
        4,
        "two runs, no more: {seen_after:?} (first look: {seen:?})"
    );
    assert_eq!(
        seen_after[2],
        format!("start {newest_pusher}"),
        "the second run has the newest message: {seen_after:?}"
    );
    println!("burst of 1000 in {burst:?}; runs: {seen_after:?}");

    // The history, read while the server runs.
    // The runs are over; their statuses reach the journal with the next commits.
    let count = |status: &str| {
        deliveries(&dir, &["list", "--status", status, "--limit", "5000"])
            .lines()
            .skip(1)
            .count()
    };
    eventually(
        Duration::from_secs(10),
        || {
            format!(
                "998 superseded and 2 ok in the journal, not {} and {}",
                count("superseded"),
                count("ok")
            )
        },
        || (count("superseded") == 998 && count("ok") == 2).then_some(()),
    );
    let ok = deliveries(&dir, &["list", "--status", "ok", "--repo", "acme/site"]);
    assert_eq!(ok.lines().skip(1).count(), 2, "{ok}");
    assert!(ok.contains(&newest), "{ok}");
    assert_eq!(
        deliveries(&dir, &["list", "--repo", "other/repo"])
            .lines()
            .count(),
        1,
        "only the header"
    );
    let shown = deliveries(&dir, &["show", &newest]);
    assert!(shown.contains(&format!("delivery  {newest}")), "{shown}");
    assert!(shown.contains("status    ok"), "{shown}");
    assert!(shown.contains("image     acme/site:latest"), "{shown}");
    assert!(
        shown.contains(&format!("pusher    {newest_pusher}")),
        "{shown}"
    );
    assert!(shown.contains("deploy           #1  ok"), "{shown}");

    // Replay through the running server: a new delivery, the same message, a third run.
    let (oldest, oldest_pusher) = accepted[0].clone();
    let replayed = deliveries(&dir, &["replay", &oldest]);
    assert!(
        replayed.starts_with(&format!("replaying {oldest} as delivery ")),
        "{replayed}"
    );
    let seen = wait_for_runs(&dir, 6);
    assert_eq!(seen[4], format!("start {oldest_pusher}"), "{seen:?}");
    assert!(server.terminate().success());

    // With no server, a replay is journaled for the next start.
    let later = deliveries(&dir, &["replay", &newest]);
    assert!(
        later.contains("it runs when `hubhook serve` starts"),
        "{later}"
    );
    assert!(runs(&dir).len() == 6, "nothing ran without a server");
    let server = Server::start(&["--config", "hubhook.toml"], dir.path(), &[]);
    let seen = wait_for_runs(&dir, 8);
    assert_eq!(
        seen.get(6),
        Some(&format!("start {newest_pusher}")),
        "{seen:?}"
    );
    assert!(server.terminate().success());

    // Errors name the problem.
    let out = hubhook(
        &[
            "deliveries",
            "--config",
            "hubhook.toml",
            "show",
            "01M8BMH9NK2RAM9EHZY2W4ZYHC",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("no delivery 01M8BMH9NK2RAM9EHZY2W4ZYHC in the journal"));
    let out = hubhook(&["deliveries", "--data-dir", "nowhere", "list"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no journal here"));
}

#[test]
fn journal_false_warns_that_a_restart_loses_work() {
    let dir = TempDir::new("nojournal");
    config(&dir, "journal = false\n[[handler]]\ntype = \"log\"\n");
    let mut server = Server::start(&["--config", "hubhook.toml"], dir.path(), &[]);
    let line = server.wait_for_stderr("journal = false");
    assert!(line.contains("a restart or a crash loses"), "{line}");
    assert!(server.terminate().success());
    assert!(
        !dir.path().join("data/journal.sqlite").exists(),
        "journal = false keeps no journal"
    );
}

/// A recovered run that takes 30 s, with room for one delivery in its queue: the server
/// answers `/healthz` at once (recovery waits for room in the background), and SIGTERM
/// during the run stops it gracefully, with both deliveries still owed.
#[test]
fn recovery_runs_in_the_background_and_sigterm_still_stops_gracefully() {
    let dir = TempDir::new("slowrecovery");
    let starts = dir.path().join("starts");
    let handler = |extra: &str| {
        format!(
            "shutdown_grace = \"1s\"\n[[handler]]\nname = \"slow\"\ntype = \"shell\"\n{extra}command = [\"sh\", \"-c\", \"echo $HUBHOOK_TAG >> {}; sleep 30\"]\n",
            starts.display()
        )
    };
    let started = |n: usize| {
        eventually(Duration::from_secs(20), format!("{n} runs start"), || {
            let lines = std::fs::read_to_string(&starts).unwrap_or_default();
            (lines.lines().count() >= n).then_some(lines)
        })
    };
    config(&dir, &handler(""));
    let server = Server::start(&["--config", "hubhook.toml"], dir.path(), &[]);
    for tag in ["one", "two"] {
        assert_eq!(post_push(server.addr, tag), 202);
    }
    started(2);
    drop(server); // SIGKILL while both run

    // Room for one delivery: the second waits for the first run's 30 s.
    config(&dir, &handler("max_queued = 1\n"));
    let spawned = Instant::now();
    let server = Server::start(&["--config", "hubhook.toml"], dir.path(), &[]);
    let (status, _) = request(server.addr, "GET", "/healthz", &[], b"");
    let ready = spawned.elapsed();
    assert_eq!(status, 200);
    assert!(
        ready < Duration::from_secs(1),
        "/healthz answered {ready:?} after the start"
    );
    started(3);
    let stopping = Instant::now();
    let exit = server.terminate();
    assert!(exit.success(), "a graceful stop exits 0: {exit:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "stopped in {:?}",
        stopping.elapsed()
    );
    let pending = deliveries(&dir, &["list", "--status", "pending"]);
    assert_eq!(
        pending.lines().count(),
        3,
        "a header and both deliveries:\n{pending}"
    );
}
