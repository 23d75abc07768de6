//! Run with `cargo build --release -p hubhook-server -p hubhook-benches && target/release/redeploy`
//!
//! The redeploy bench: how long from a webhook to the new page being served, through a
//! real `hubhook serve` with the docker handler, split into pull, swap and health (the
//! handler's own figures), against the same job done as plain docker commands (`docker
//! pull`, `docker rm -f`, `docker run`, as the old reload.sh did). Both pull from a real
//! registry (Debian's docker-registry on 127.0.0.1) images imported from busybox-static;
//! the local copy is removed before every deploy so each one really pulls. Also reported:
//! the page's longest gap during each deploy, from a poller that asks for it every 20 ms
//! (the first failed answer to the next good one). The plain baseline takes hubhook's
//! stop-first steps by hand: `docker stop --time 1`, `docker rm`, `docker run`. Both run
//! the image with `--init`, so the old container stops on SIGTERM (busybox httpd as PID 1
//! would ignore it). Medians over the rounds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "redeploy-bench-key-0123456789abcdef";
use hubhook_testkit::{
    container_name, docker, free_port, quick_page, wait_for_page, Containers, Registry, TempDir,
};

fn main() {
    let mut hubhook = PathBuf::from("target/release/hubhook");
    let mut rounds = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--hubhook" => hubhook = args.next().expect("--hubhook PATH").into(),
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--rounds N")
            }
            other => panic!("unknown argument {other:?} (use --hubhook PATH, --rounds N)"),
        }
    }
    assert!(
        hubhook.exists(),
        "{} missing: cargo build --release -p hubhook-server",
        hubhook.display()
    );
    assert!(docker(&["info"]).0, "no Docker engine (docker info fails)");

    let work = TempDir::new("redeploy");
    let work = work.path();
    // The test images (busybox httpd serving "site v1", "site v2") in a real registry.
    let registry = Registry::start();
    let repo = registry.repo();
    for tag in ["v1", "v2"] {
        registry.push_keeping(tag);
    }

    // hubhook, with the docker handler.
    let (hook_port, hook_page) = (free_port(), free_port());
    let hook_container = container_name("bench-hook");
    let config = work.join("hubhook.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{hook_port}\"\ndata_dir = \"data\"\n\
             [[hook]]\npath = \"/registry\"\nprovider = \"registry\"\nregistry = \"{}\"\napi_keys = [\"{KEY}\"]\n\
             [[handler]]\nname = \"site\"\ntype = \"docker\"\nimage = \"{repo}\"\ncontainer = \"{hook_container}\"\n\
             tag = \"v*\"\nrun_args = [\"--init\", \"-p\", \"127.0.0.1:{hook_page}:80\"]\nstop_timeout = \"1s\"\n\
             health = \"http://127.0.0.1:{hook_page}/\"\n",
            registry.host
        ),
    )
    .expect("config");
    let mut server = Command::new(&hubhook)
        .args(["serve", "--config", config.to_str().expect("utf8")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hubhook");
    let log = collect(server.stderr.take().expect("stderr"));
    let _server = Kill(server);
    wait_until(
        || TcpStream::connect(("127.0.0.1", hook_port)).is_ok(),
        "hubhook to listen",
    );

    // The plain-docker baseline.
    let plain_page = free_port();
    let plain_container = container_name("bench-plain");
    let _containers = Containers(vec![hook_container.clone(), plain_container.clone()]);

    // First deploys (v1) are not measured: they have no old container to swap.
    hook_deploy(hook_port, &repo, "v1", hook_page, &log);
    plain_deploy(&repo, "v1", &plain_container, plain_page);

    let mut hook_rows = Vec::new();
    let mut plain_rows = Vec::new();
    for round in 0..rounds {
        let tag = if round % 2 == 0 { "v2" } else { "v1" };
        // Alternate which goes first, so neither always runs on a warmer machine.
        if round % 2 == 0 {
            hook_rows.push(hook_deploy(hook_port, &repo, tag, hook_page, &log));
            plain_rows.push(plain_deploy(&repo, tag, &plain_container, plain_page));
        } else {
            plain_rows.push(plain_deploy(&repo, tag, &plain_container, plain_page));
            hook_rows.push(hook_deploy(hook_port, &repo, tag, hook_page, &log));
        }
        let (h, p) = (&hook_rows[round], &plain_rows[round]);
        println!(
            "round {}: {tag}: hubhook {:>5} ms (pull {} / swap {} / health {}, down {} ms) | docker {:>5} ms (pull {} / swap {} / run+serve {}, down {} ms)",
            round + 1, h.total, h.pull, h.swap, h.health, h.down, p.total, p.pull, p.swap, p.health, p.down
        );
    }
    let median = |rows: &[Row], f: fn(&Row) -> u128| {
        let mut v: Vec<u128> = rows.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    println!("\nmedians over {rounds} rounds (ms)        total   pull   swap  health/run   down");
    for (label, rows) in [
        ("hubhook (webhook -> new page)", &hook_rows),
        ("plain docker commands", &plain_rows),
    ] {
        println!(
            "{label:<38} {:>6} {:>6} {:>6} {:>11} {:>6}",
            median(rows, |r| r.total),
            median(rows, |r| r.pull),
            median(rows, |r| r.swap),
            median(rows, |r| r.health),
            median(rows, |r| r.down)
        );
    }
    let longest = |rows: &[Row]| rows.iter().map(|r| r.down).max().unwrap_or(0);
    let (hook_gap, plain_gap) = (longest(&hook_rows), longest(&plain_rows));
    println!(
        "longest gap over the rounds: hubhook {hook_gap} ms, by hand {plain_gap} ms; \
         target hubhook <= by hand + 300 ms: {}",
        if hook_gap <= plain_gap + 300 {
            "MET"
        } else {
            "NOT MET"
        }
    );
}

/// One deploy's figures, in milliseconds.
struct Row {
    total: u128,
    pull: u128,
    swap: u128,
    health: u128,
    down: u128,
}

fn hook_deploy(port: u16, repo: &str, tag: &str, page_port: u16, log: &Arc<Mutex<String>>) -> Row {
    let _ = docker(&["image", "rm", &format!("{repo}:{tag}")]);
    let seen = log.lock().expect("log").len();
    let gaps = Gaps::watch(page_port);
    // The registry's own notification of the push (a Docker Hub payload never names a
    // registry host).
    static EVENTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let id = EVENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (host, path) = repo.split_once('/').expect("a registry repository");
    let body = format!(
        r#"{{"events":[{{"id":"bench-{id}","action":"push","target":{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","repository":"{path}","tag":"{tag}"}},"request":{{"host":"{host}"}},"actor":{{"name":"bench"}}}}]}}"#
    );
    let started = Instant::now();
    let status = post(port, "/registry", &body);
    assert_eq!(status, 202, "the webhook was not accepted");
    let total = wait_for_page(page_port, tag, started);
    let down = gaps.longest();
    // The handler's own split, from its log line.
    let needle = format!("deployed {repo}:{tag}");
    let mut line = String::new();
    wait_until(
        || {
            let text = log.lock().expect("log");
            match text[seen..].lines().find(|l| l.contains(&needle)) {
                Some(l) => {
                    line = l.to_owned();
                    true
                }
                None => {
                    assert!(
                        !text[seen..].contains("handler failed"),
                        "deploy failed:\n{}",
                        &text[seen..]
                    );
                    false
                }
            }
        },
        "the handler's outcome",
    );
    let number = |what: &str| -> u128 {
        line.split(&format!("{what} "))
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {what} figure in {line:?}"))
    };
    Row {
        total,
        pull: number("pull"),
        swap: number("swap"),
        health: number("health"),
        down,
    }
}

fn plain_deploy(repo: &str, tag: &str, container: &str, page_port: u16) -> Row {
    let image = format!("{repo}:{tag}");
    let _ = docker(&["image", "rm", &image]);
    let gaps = Gaps::watch(page_port);
    let started = Instant::now();
    must(&["pull", "--quiet", &image]);
    let pulled = started.elapsed().as_millis();
    let _ = docker(&["stop", "--time", "1", container]);
    let _ = docker(&["rm", container]);
    let swapped = started.elapsed().as_millis();
    let publish = format!("127.0.0.1:{page_port}:80");
    must(&[
        "run", "--detach", "--init", "--name", container, "-p", &publish, &image,
    ]);
    let total = wait_for_page(page_port, tag, started);
    Row {
        total,
        pull: pulled,
        swap: swapped - pulled,
        health: total - swapped,
        down: gaps.longest(),
    }
}

/// A poller that asks for the page every 20 ms on its own thread while a deploy runs, and
/// the longest time from a failed answer to the next good one.
struct Gaps {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u128>,
}

impl Gaps {
    fn watch(port: u16) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut longest, mut down_since) = (0u128, None::<Instant>);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match quick_page(port) {
                    Some(_) => {
                        if let Some(since) = down_since.take() {
                            longest = longest.max(since.elapsed().as_millis());
                        }
                    }
                    None => {
                        down_since.get_or_insert_with(Instant::now);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            longest
        });
        Self { stop, thread }
    }

    /// Stops the poller (the page serves again by now) and returns the longest gap, ms.
    fn longest(self) -> u128 {
        // One more good answer closes a gap still open.
        std::thread::sleep(Duration::from_millis(40));
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

fn post(port: u16, target: &str, body: &str) -> u16 {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to hubhook");
    write!(
        tcp,
        "POST {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send webhook");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("read answer");
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn must(args: &[&str]) {
    let (ok, err) = docker(args);
    assert!(ok, "docker {args:?} failed: {err}");
}

fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut text = sink.lock().expect("log");
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

/// Kills the server when the bench ends, however it ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
