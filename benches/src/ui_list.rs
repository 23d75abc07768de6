//! Run with `cargo build --release -p hubhook-server -p hubhook-benches && target/release/ui_list`
//!
//! The web page's figure: how long `GET /` takes (the newest 100 deliveries with each
//! handler's badge, and the chart over the whole retention window) with 10,000 deliveries
//! in the journal. The deliveries are real: posted to a release `hubhook serve` (two log
//! handlers, so 20,000 runs are journaled) and settled before the page is timed. In the
//! same run, on the same connection type, the page's static stylesheet is timed as the
//! floor of the HTTP exchange itself. Medians of `--rounds` (default 50) requests, each on
//! a fresh connection, read to the end. `--shell` makes the second handler a shell
//! command that fails every third push with a full 4 KiB output tail, as deploys that
//! print a lot would.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hubhook_core::journal::{Filter, History};
use hubhook_core::DeliveryStatus;
use hubhook_testkit::{eventually, exchange, TempDir};

const KEY: &str = "ui-bench-key-0123456789abcdefghij";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| {
        args.iter()
            .skip_while(|a| *a != name)
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let (deliveries, rounds) = (arg("--deliveries", 10_000), arg("--rounds", 50));
    let second = if args.iter().any(|a| a == "--shell") {
        "type = \"shell\"\ncommand = [\"/bin/sh\", \"-c\", \"head -c 6000 /dev/zero | tr '\\\\0' x; case $HUBHOOK_TAG in *[369]) exit 1;; esac\"]\nmax_concurrency = 4\nmax_queued = 100000\n"
    } else {
        "type = \"log\"\n"
    };
    let exe = std::env::current_exe().expect("this binary");
    let hubhook = exe.with_file_name("hubhook");
    assert!(
        hubhook.exists(),
        "{} is missing: cargo build --release -p hubhook-server",
        hubhook.display()
    );
    let dir = TempDir::new("ui-bench");
    dir.write(
        "hubhook.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\
             [journal]\nkeep_deliveries = {}\n\
             [[handler]]\nname = \"deploy\"\ntype = \"log\"\n\
             [[handler]]\nname = \"audit\"\n{second}\
             [ui]\nlisten = \"127.0.0.1:0\"\n\
             [auth]\napi_keys = [\"{KEY}\"]\n",
            deliveries * 2
        ),
    );
    let mut server = Command::new(&hubhook)
        .args(["serve", "--config", "hubhook.toml"])
        .current_dir(dir.path())
        // The startup lines, not one line per logged push.
        .env("HUBHOOK_LOG", "hubhook=info,warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hubhook serve");
    let mut lines = BufReader::new(server.stderr.take().expect("stderr")).lines();
    let (mut hook, mut page) = (None, None);
    while hook.is_none() || page.is_none() {
        let line = lines.next().expect("a startup line").expect("text");
        let addr = |after: &str| -> Option<SocketAddr> {
            let rest = line.split(after).nth(1)?;
            rest.split(['/', ' ']).next()?.parse().ok()
        };
        hook = hook.or_else(|| addr("listening on http://"));
        page = page.or_else(|| addr("web page of deliveries on http://"));
    }
    std::thread::spawn(move || for _ in lines {});
    let (hook, page) = (hook.expect("hook"), page.expect("page"));

    // The journal: `deliveries` pushes of 50 repositories, from 4 connections at a time.
    let start = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in (t..deliveries).step_by(4) {
                    let body = format!(
                        r#"{{"push_data":{{"tag":"v{i}"}},"repository":{{"repo_name":"acme/app{}"}}}}"#,
                        i % 50
                    );
                    let (status, _, _) = exchange(
                        hook,
                        "POST",
                        &format!("/hubhook?apikey={KEY}"),
                        &["Content-Type: application/json"],
                        body.as_bytes(),
                    );
                    assert_eq!(status, 202);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a poster");
    }
    let journal = dir.path().join("data/journal.sqlite");
    eventually(Duration::from_secs(300), "every delivery settled", || {
        let history = History::open(&journal).ok()?;
        let pending = history
            .list(&Filter::new().status(DeliveryStatus::Pending).limit(1))
            .ok()?;
        (pending.is_empty() && history.timings(0).ok()?.len() >= deliveries).then_some(())
    });
    println!(
        "journal: {deliveries} deliveries, {} runs, posted and settled in {:.1} s",
        deliveries * 2,
        start.elapsed().as_secs_f64()
    );

    let form = "Content-Type: application/x-www-form-urlencoded";
    let login = format!("password={KEY}");
    let (status, headers, _) = exchange(page, "POST", "/login", &[form], login.as_bytes());
    assert_eq!(status, 303);
    let cookie = headers
        .iter()
        .find(|(name, _)| name == "set-cookie")
        .and_then(|(_, value)| value.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let cookie = format!("Cookie: {cookie}");
    let (_, _, body) = exchange(page, "GET", "/", &[&cookie], b"");
    assert!(body.contains("100 newest deliveries"), "the list rendered");
    let some = body
        .split("href=\"/deliveries/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a delivery link")
        .to_owned();

    let targets = [
        ("GET / (100 rows + chart of 10,000)", "/".to_owned()),
        (
            "GET /?status=ok&repo=acme/app7",
            "/?status=ok&repo=acme%2Fapp7".to_owned(),
        ),
        ("GET /deliveries/ID", format!("/deliveries/{some}")),
        ("GET /assets/ui.css (floor)", "/assets/ui.css".to_owned()),
    ];
    println!(
        "{:<40} {:>10} {:>10} {:>10}",
        "request", "median", "p90", "bytes"
    );
    for (name, target) in &targets {
        let mut times = Vec::with_capacity(rounds);
        let mut bytes = 0;
        for _ in 0..rounds {
            let at = Instant::now();
            let (status, _, body) = exchange(page, "GET", target, &[&cookie], b"");
            times.push(at.elapsed());
            assert_eq!(status, 200, "{name}");
            bytes = body.len();
        }
        times.sort();
        println!(
            "{name:<40} {:>7.2} ms {:>7.2} ms {bytes:>10}",
            ms(times[times.len() / 2]),
            ms(times[times.len() * 9 / 10]),
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
