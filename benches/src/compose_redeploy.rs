//! Run with `cargo build --release -p hubhook-benches && target/release/compose_redeploy`
//!
//! The compose bench: how long from a push to the new page being served when Compose runs
//! the site, through the compose handler (`compose pull`, record, `up -d --no-deps`, the
//! HTTP gate), against the same `compose pull web` and `compose up -d --no-deps web`
//! typed by hand, in the same run, on the same project. The image is pushed to a real
//! registry (Debian's docker-registry on 127.0.0.1) under the tag the file names, and its
//! local copy removed before each deploy, so each one really pulls. The service runs with
//! `init: true` so the old container stops on SIGTERM. Medians over the rounds.

use std::process::Command;
use std::time::Instant;

use hubhook_core::{Context, DeliveryId, Handler, HubMessage};
use hubhook_handlers::{ComposeHandler, Health};
use hubhook_testkit::{docker, free_port, images, wait_for_page, Registry, TempDir, BASE};

const LIVE: &str = "live";

fn main() {
    let rounds: usize = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    images();
    let registry = Registry::start();
    let dir = TempDir::new("compose-bench");
    let port = free_port();
    let project = format!("hubhook-test-bench-{}", std::process::id());
    dir.write(
        "docker-compose.yml",
        &format!(
            "version: \"3.7\"\nservices:\n  web:\n    image: {}:{LIVE}\n    init: true\n    ports: [\"127.0.0.1:{port}:80\"]\n",
            registry.repo()
        ),
    );
    let handler = ComposeHandler::new("site", &registry.repo(), dir.path(), ["web"])
        .expect("handler")
        .project(&project)
        .health(Health::Http(format!("http://127.0.0.1:{port}/")))
        .inspect()
        .expect("compose config");
    let argv = handler.compose_argv().to_vec();
    let compose = |args: &[&str]| {
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["-p", &project])
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("compose");
        assert!(
            out.status.success(),
            "compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let push = |version: &str| {
        registry.push_as(version, LIVE);
        let (ok, out) = docker(&["image", "rm", &format!("{}:{LIVE}", registry.repo())]);
        assert!(ok, "{out}");
    };
    push("v1");
    compose(&["up", "-d"]);
    wait_for_page(port, "v1", Instant::now());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let (mut hubhook, mut by_hand) = (Vec::new(), Vec::new());
    let mut version = "v1";
    for round in 0..rounds {
        version = if version == "v1" { "v2" } else { "v1" };
        push(version);
        let started = Instant::now();
        let msg = HubMessage::new(&registry.repo(), LIVE).expect("message");
        runtime
            .block_on(handler.handle(&msg, &Context::new(DeliveryId::generate())))
            .expect("deploy");
        hubhook.push(wait_for_page(port, version, started));

        version = if version == "v1" { "v2" } else { "v1" };
        push(version);
        let started = Instant::now();
        compose(&["pull", "web"]);
        compose(&["up", "-d", "--no-deps", "web"]);
        by_hand.push(wait_for_page(port, version, started));
        eprintln!(
            "round {}: hubhook {} ms, by hand {} ms",
            round + 1,
            hubhook[round],
            by_hand[round]
        );
    }
    compose(&["down", "--timeout", "1"]);
    println!(
        "compose push-to-page, medians over {rounds} rounds ({} via {}):",
        BASE,
        argv.join(" ")
    );
    println!("  hubhook compose handler: {} ms", median(&mut hubhook));
    println!(
        "  compose pull + up -d by hand: {} ms",
        median(&mut by_hand)
    );
}

fn median(values: &mut [u128]) -> u128 {
    values.sort_unstable();
    values[values.len() / 2]
}
