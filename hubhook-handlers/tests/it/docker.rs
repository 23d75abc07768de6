//! The docker handler on the real engine, pulling from a real registry.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hubhook_core::{
    Context, DeliveryId, Handler, HandlerError, Hook, HubMessage, HubhookService, Provider, Route,
};
use hubhook_handlers::{BlueGreen, DockerHandler, Health};

use hubhook_testkit::*;

use crate::support::shut_down_in_the_gate;

fn push_of(registry: &Registry, tag: &str) -> HubMessage {
    HubMessage::new(&registry.repo(), tag).expect("valid message")
}

async fn deploy(handler: &DockerHandler, msg: &HubMessage) -> Result<String, HandlerError> {
    handler
        .handle(msg, &Context::new(DeliveryId::generate()))
        .await
        .map(|o| o.summary)
}

fn site(registry: &Registry, container: &str, port: u16) -> DockerHandler {
    DockerHandler::container("deploy", &registry.repo(), container)
        .expect("handler")
        .tag("v*")
        .run_args(["-p".to_owned(), format!("127.0.0.1:{port}:80")])
        .stop_timeout(Duration::from_secs(1))
        .health(Health::Http(format!("http://127.0.0.1:{port}/")))
        .health_timeout(Duration::from_secs(5))
}

/// One test's site: a registry holding some test tags, a container name removed when the
/// test ends, and a free port for its page.
struct Site {
    // Declared first, dropped first: the containers go before the registry's images.
    _cleanup: Containers,
    registry: Registry,
    name: String,
    port: u16,
}

impl Site {
    fn new(test: &str, tags: &[&str]) -> Self {
        let registry = Registry::start();
        for tag in tags {
            registry.push(tag);
        }
        let name = container_name(test);
        Self {
            _cleanup: Containers(vec![name.clone()]),
            registry,
            name,
            port: free_port(),
        }
    }

    /// The site's docker handler, with an HTTP health gate on its page.
    fn handler(&self) -> DockerHandler {
        site(&self.registry, &self.name, self.port)
    }

    /// Deploys v1 with `handler`; the new container's id.
    async fn v1_running(&self, handler: &DockerHandler) -> Option<String> {
        deploy(handler, &push_of(&self.registry, "v1"))
            .await
            .expect("v1 deploys");
        container_id(&self.name)
    }
}

#[tokio::test]
async fn redeploys_v1_then_v2_and_ignores_other_tags() {
    if !available("redeploys_v1_then_v2") {
        return;
    }
    let s = Site::new("swap", &["v1", "v2"]);
    let (registry, name, port) = (&s.registry, &s.name, s.port);
    let handler = s.handler().cleanup(true);

    let first = deploy(&handler, &push_of(registry, "v1"))
        .await
        .expect("first deploy");
    assert!(
        first.starts_with(&format!(
            "deployed {}:v1 to container {name}",
            registry.repo()
        )),
        "{first}"
    );
    assert_eq!(page(port).as_deref(), Some("site v1"));

    let second = deploy(&handler, &push_of(registry, "v2"))
        .await
        .expect("redeploy");
    assert!(second.contains(":v2 to container"), "{second}");
    assert_eq!(page(port).as_deref(), Some("site v2"), "the page changed");
    assert!(
        container_id(&format!("{name}-hubhook-old")).is_none(),
        "the old container is gone"
    );
    let (_, images) = docker(&["image", "ls", "--format", "{{.Tag}}", &registry.repo()]);
    assert!(
        !images.lines().any(|t| t == "v1"),
        "cleanup removed the old image: {images}"
    );

    // A tag outside the pattern changes nothing.
    let id = container_id(name);
    let err = deploy(&handler, &push_of(registry, "latest"))
        .await
        .expect_err("not deployed");
    assert!(matches!(err, HandlerError::Rejected(_)), "{err}");
    assert!(
        err.to_string()
            .contains("does not match the configured pattern v*"),
        "{err}"
    );
    assert_eq!(container_id(name), id, "same container");
    assert_eq!(page(port).as_deref(), Some("site v2"));
}

#[tokio::test]
async fn a_broken_image_is_rolled_back() {
    if !available("a_broken_image_is_rolled_back") {
        return;
    }
    let s = Site::new("rollback", &["v1", "v3", "v4"]);
    let (registry, name, port) = (&s.registry, &s.name, s.port);
    let handler = s.handler();
    let v1 = s.v1_running(&handler).await;

    // v3 exits at once.
    let err = deploy(&handler, &push_of(registry, "v3"))
        .await
        .expect_err("v3 fails")
        .to_string();
    assert!(
        err.contains(":v3 failed: health gate failed: the container is exited (exit code 1)"),
        "{err}"
    );
    assert!(
        err.ends_with("rollback done: the previous container runs again"),
        "{err}"
    );
    assert_eq!(
        page(port).as_deref(),
        Some("site v1"),
        "the previous version still serves"
    );
    assert_eq!(container_id(name), v1, "it is the same container as before");

    // v4 runs but never answers HTTP: the health gate times out.
    let err = deploy(&handler, &push_of(registry, "v4"))
        .await
        .expect_err("v4 fails")
        .to_string();
    assert!(
        err.contains("health gate failed: not healthy within 5s (http://127.0.0.1:"),
        "{err}"
    );
    assert!(
        err.ends_with("rollback done: the previous container runs again"),
        "{err}"
    );
    assert_eq!(page(port).as_deref(), Some("site v1"));
    assert!(container_id(&format!("{name}-hubhook-old")).is_none());
}

// Two workers: the test's own waiting below blocks its thread while the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_in_the_gate_rolls_back_and_leaves_the_push_owed() {
    if !available("a_shutdown_in_the_gate_rolls_back_and_leaves_the_push_owed") {
        return;
    }
    let s = Site::new("cancel", &["v1", "v4"]);
    // v4 runs but never serves: its gate waits (here up to 60 s) until the shutdown.
    let handler = s.handler().health_timeout(Duration::from_secs(60));
    let v1 = s.v1_running(&handler).await;
    // The shutdown comes once v4 runs as the candidate, in its gate.
    let candidate = format!("{}-hubhook-new", s.name);
    let result = shut_down_in_the_gate(&handler, push_of(&s.registry, "v4"), || {
        container_id(&candidate).map(|_| ())
    })
    .await;
    assert!(
        matches!(result, Err(HandlerError::Cancelled)),
        "owed again, not failed: {result:?}"
    );
    assert_eq!(page(s.port).as_deref(), Some("site v1"), "v1 serves again");
    assert_eq!(container_id(&s.name), v1, "the same container as before");
    assert!(container_id(&candidate).is_none(), "the candidate is gone");
}

#[tokio::test]
async fn a_failed_pull_touches_nothing() {
    if !available("a_failed_pull_touches_nothing") {
        return;
    }
    let s = Site::new("pull", &["v1"]);
    let (registry, name, port) = (&s.registry, &s.name, s.port);
    let handler = s.handler();
    let id = s.v1_running(&handler).await;

    let err = deploy(&handler, &push_of(registry, "v9"))
        .await
        .expect_err("v9 is not in the registry")
        .to_string();
    assert!(
        err.starts_with(&format!(
            "pull of {}:v9 failed, nothing changed: image or tag not found: ",
            registry.repo()
        )),
        "{err}"
    );
    assert_eq!(container_id(name), id, "the running container is untouched");
    assert_eq!(page(port).as_deref(), Some("site v1"));
}

#[tokio::test]
async fn a_taken_port_is_reported_and_rolled_back() {
    if !available("a_taken_port_is_reported_and_rolled_back") {
        return;
    }
    let s = Site::new("port", &["v1", "v2"]);
    let (registry, name, port) = (&s.registry, &s.name, s.port);
    s.v1_running(&s.handler()).await;
    // A second configuration whose extra port is held by someone else.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr").port();
    let handler = site(registry, name, port).run_args([
        "-p".to_owned(),
        format!("127.0.0.1:{port}:80"),
        "-p".to_owned(),
        format!("127.0.0.1:{busy}:8080"),
    ]);
    let err = deploy(&handler, &push_of(registry, "v2"))
        .await
        .expect_err("port taken")
        .to_string();
    assert!(
        err.contains("docker run failed: port already in use: "),
        "{err}"
    );
    assert!(
        err.ends_with("rollback done: the previous container runs again"),
        "{err}"
    );
    assert_eq!(page(port).as_deref(), Some("site v1"));
}

#[tokio::test]
async fn missing_binary_and_unreachable_daemon_are_named() {
    let msg = HubMessage::new("acme/site", "latest").expect("message");
    let handler = DockerHandler::container("deploy", "acme/site", "hubhook-test-none")
        .expect("handler")
        .docker_binary("/nonexistent/docker");
    let err = deploy(&handler, &msg)
        .await
        .expect_err("no binary")
        .to_string();
    assert!(
        err.contains("docker binary missing: cannot run /nonexistent/docker"),
        "{err}"
    );

    if Command::new("docker").arg("--version").output().is_err() {
        return;
    }
    let handler = DockerHandler::container("deploy", "acme/site", "hubhook-test-none")
        .expect("handler")
        .docker_host("unix:///nonexistent/docker.sock");
    let err = deploy(&handler, &msg)
        .await
        .expect_err("no daemon")
        .to_string();
    assert!(err.contains("docker daemon unreachable: "), "{err}");
}

use std::process::Command;

/// A `docker` that records its argv, then runs the real one.
fn recording_docker(dir: &TempDir) -> std::path::PathBuf {
    let log = dir.path().join("calls");
    dir.write_script(
        "docker",
        &format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec docker \"$@\"\n",
            log.display()
        ),
    )
}

#[tokio::test]
async fn payload_values_never_reach_docker() {
    let dir = TempDir::new("inject");
    let wrapper = recording_docker(&dir);
    let calls = dir.path().join("calls");
    let make = || {
        DockerHandler::container("deploy", "acme/site", "hubhook-test-inject")
            .expect("handler")
            .tag("*")
            .docker_binary(&wrapper)
    };
    let service = HubhookService::builder()
        .allow_unauthenticated(true)
        .route(Route::new(make()))
        .build()
        .expect("service");
    let marker = dir.path().join("pwned");
    let hostile = [
        format!("latest; touch {}", marker.display()),
        "$(id)".to_owned(),
        "`id`".to_owned(),
        "--privileged".to_owned(),
        "-v/:/host".to_owned(),
        "latest\nrm -rf /".to_owned(),
        "v".repeat(300),
    ];
    for value in &hostile {
        for body in [
            serde_json::json!({"push_data": {"tag": value}, "repository": {"repo_name": "acme/site"}}),
            serde_json::json!({"push_data": {"tag": "latest"}, "repository": {"repo_name": value}}),
            serde_json::json!({"push_data": {"tag": "latest"}, "repository": {"repo_name": format!("acme/{value}")}}),
        ] {
            let request = http::Request::post("/hubhook")
                .body(Full::new(Bytes::from(body.to_string())))
                .expect("request");
            let response = service.respond(request).await;
            assert_eq!(
                response.status(),
                400,
                "{value:?} must be refused at the door"
            );
        }
        // And a library user cannot build such a message by hand: the type refuses it.
        assert!(
            HubMessage::new("acme/site", value).is_err(),
            "{value:?} as a tag"
        );
    }
    // Another repository than the configured one is refused as well.
    let err = deploy(
        &make(),
        &HubMessage::new("evil/site", "latest").expect("message"),
    )
    .await
    .expect_err("other repo");
    assert!(
        err.to_string()
            .contains("is not the configured image acme/site"),
        "{err}"
    );
    assert!(service.shutdown(Duration::from_secs(5)).await);
    assert!(!marker.exists(), "nothing was executed");
    assert!(
        !calls.exists(),
        "docker was never called: {:?}",
        std::fs::read_to_string(&calls)
    );
}

#[tokio::test]
async fn a_swarm_service_moves_to_v2_and_a_broken_image_fails() {
    if !available("a_swarm_service_moves_to_v2") {
        return;
    }
    let registry = Registry::start();
    for tag in ["v1", "v2", "v3"] {
        registry.push(tag);
    }
    let _swarm = Swarm::join();
    let service = container_name("svc");
    let _services = Services(vec![service.clone()]);
    let port = free_port();
    // The routing mesh may not route here: publish in host mode.
    let (ok, out) = docker(&[
        "service",
        "create",
        "--detach=false",
        "--quiet",
        "--name",
        &service,
        // busybox httpd as PID 1 ignores SIGTERM: do not wait 10 s for each old task.
        "--stop-grace-period",
        "1s",
        "--publish",
        &format!("mode=host,published={port},target=80"),
        &format!("{}:v1", registry.repo()),
    ]);
    assert!(ok, "service create: {out}");
    assert_eq!(page(port).as_deref(), Some("site v1"));

    let handler = DockerHandler::service("deploy", &registry.repo(), &service)
        .expect("handler")
        .tag("v*");
    let done = deploy(&handler, &push_of(&registry, "v2"))
        .await
        .expect("v2 rolls out");
    assert!(
        done.starts_with(&format!("service {service} runs {}:v2", registry.repo())),
        "{done}"
    );
    assert_eq!(
        page(port).as_deref(),
        Some("site v2"),
        "the service serves v2"
    );

    // A tag the registry does not have: resolved first, so the service is not touched.
    let version = || {
        let (_, v) = docker(&[
            "service",
            "inspect",
            "--format",
            "{{.Version.Index}}",
            &service,
        ]);
        v.trim().to_owned()
    };
    let before = version();
    let polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = {
        let polling = polling.clone();
        std::thread::spawn(move || {
            let mut down = 0;
            while polling.load(std::sync::atomic::Ordering::Relaxed) {
                if page(port).as_deref() != Some("site v2") {
                    down += 1;
                }
                // The probe's sampling interval, not a wait for anything.
                std::thread::sleep(Duration::from_millis(20));
            }
            down
        })
    };
    let err = deploy(&handler, &push_of(&registry, "v9"))
        .await
        .expect_err("v9 is not in the registry")
        .to_string();
    polling.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(err.contains("image or tag not found"), "{err}");
    assert!(err.contains("nothing changed"), "{err}");
    assert_eq!(version(), before, "the service spec is unchanged");
    assert_eq!(poller.join().expect("poller"), 0, "the page stayed up");

    let err = deploy(&handler, &push_of(&registry, "v3"))
        .await
        .expect_err("v3 fails")
        .to_string();
    assert!(err.contains(&format!("{}:v3", registry.repo())), "{err}");
    assert!(
        err.contains("rollback"),
        "Swarm's rollback is reported: {err}"
    );
    assert_eq!(
        page(port).as_deref(),
        Some("site v2"),
        "v2 still serves after the rollback"
    );
}

#[tokio::test]
async fn a_digest_must_be_what_the_tag_points_to() {
    if !available("a_digest_must_be_what_the_tag_points_to") {
        return;
    }
    let s = Site::new("digest", &["v2"]);
    let (registry, name, port) = (&s.registry, &s.name, s.port);
    registry.push_keeping("v1");
    let (_, v1_digest) = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        &format!("{}:v1", registry.repo()),
    ]);
    let v1_digest = v1_digest.trim().rsplit('@').next().unwrap_or("").to_owned();
    assert!(v1_digest.starts_with("sha256:"), "{v1_digest}");
    let handler = s.handler();

    // An allowed tag with the digest of another build: refused, nothing runs.
    let lying = push_of(registry, "v2")
        .with_digest(&v1_digest)
        .expect("a digest");
    let err = deploy(&handler, &lying).await.expect_err("refused");
    assert!(matches!(err, HandlerError::Rejected(_)), "{err}");
    assert!(
        err.to_string()
            .contains("does not point to the pushed digest"),
        "{err}"
    );
    assert!(container_id(name).is_none(), "nothing was started");

    // The tag's own digest deploys, by digest.
    let honest = push_of(registry, "v1")
        .with_digest(&v1_digest)
        .expect("a digest");
    let done = deploy(&handler, &honest).await.expect("deploys");
    assert!(done.contains(&format!("@{v1_digest}")), "{done}");
    assert_eq!(page(port).as_deref(), Some("site v1"));
}

#[tokio::test]
async fn a_timeout_in_the_middle_of_a_swap_does_not_leave_the_site_down() {
    if !available("a_timeout_in_the_middle_of_a_swap") {
        return;
    }
    let s = Site::new("midswap", &["v1", "v2"]);
    let (registry, name, port) = (&s.registry, &s.name, s.port);
    // busybox httpd as PID 1 ignores SIGTERM, so `docker stop` takes its whole 8 s; the
    // run's timeout (1 s) and the cleanup window after it (5 s) end while it is stopping.
    let handler = s.handler().stop_timeout(Duration::from_secs(8));
    s.v1_running(&handler).await;
    // The registry's own notification (a Docker Hub payload never names a registry).
    let service = HubhookService::builder()
        .hook(
            Hook::new("/registry", Provider::Registry)
                .registry(&registry.host)
                .allow_unauthenticated(true),
        )
        .route(Route::new(handler).timeout(Duration::from_secs(1)))
        .build()
        .expect("service");
    let body = serde_json::json!({"events": [{
        "id": "midswap-v2", "action": "push",
        "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                   "repository": hubhook_testkit::BASE, "tag": "v2"},
        "request": {"host": registry.host},
    }]});
    let request = http::Request::post("/registry")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    assert_eq!(service.respond(request).await.status(), 202);
    // The dispatcher gives up on the run (1 s timeout + 5 s to clean up) long before
    // `docker stop` returns; the swap goes on in its own task.
    let started = std::time::Instant::now();
    service.shutdown(Duration::from_secs(30)).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the run was abandoned mid-swap"
    );
    let serving = hubhook_testkit::eventually_async(
        Duration::from_secs(30),
        "one container serving, no -hubhook-old left",
        || async {
            if container_id(&format!("{name}-hubhook-old")).is_some() {
                return None;
            }
            page(port)
        },
    )
    .await;
    // The task either finished the deploy (v2) or, cancelled in its gate, put the old
    // container back (v1); both leave one container serving and no half-swap behind.
    assert!(
        matches!(serving.as_str(), "site v1" | "site v2"),
        "a version serves after the timeout: {serving:?}"
    );
    assert!(container_id(name).is_some());
    assert!(container_id(&format!("{name}-hubhook-old")).is_none());
}

/// `docker` for a test: the real one, except `docker stop`, which hangs (a hung daemon).
fn hanging_stop(dir: &TempDir) -> std::path::PathBuf {
    dir.write_script(
        "docker",
        "#!/bin/sh\nif [ \"$1\" = stop ]; then exec sleep 3600; fi\nexec docker \"$@\"\n",
    )
}

#[tokio::test]
async fn a_hung_stop_ends_in_a_timeout_and_a_later_delivery_deploys() {
    if !available("a_hung_stop_ends_in_a_timeout") {
        return;
    }
    let s = Site::new("hung", &["v1", "v2"]);
    let (registry, name, port) = (&s.registry, &s.name, s.port);
    s.v1_running(&s.handler()).await;
    let dir = TempDir::new("hung-docker");
    let step = Duration::from_secs(2);
    let hung = s
        .handler()
        .docker_binary(hanging_stop(&dir))
        .step_timeout(step);
    let started = std::time::Instant::now();
    let err = deploy(&hung, &push_of(registry, "v2"))
        .await
        .expect_err("docker stop hangs");
    let took = started.elapsed();
    assert!(
        matches!(err, HandlerError::Timeout(_)),
        "a timeout outcome: {err}"
    );
    // The stop's limit is stop_timeout (1 s) + step_timeout (2 s); the rest is the
    // other steps of a deploy on a real engine.
    assert!(took < Duration::from_secs(15), "ended after {took:?}");
    assert_eq!(page(port).as_deref(), Some("site v1"), "v1 still serves");
    assert!(container_id(&format!("{name}-hubhook-old")).is_none());

    let done = deploy(&s.handler(), &push_of(registry, "v2"))
        .await
        .expect("a later delivery deploys");
    assert!(done.contains(":v2 to container"), "{done}");
    assert_eq!(page(port).as_deref(), Some("site v2"));
}

#[tokio::test]
async fn an_unrelated_container_whose_id_starts_with_the_name_is_untouched() {
    if !available("an_unrelated_container_whose_id_starts_with_the_name") {
        return;
    }
    let s = Site::new("prefix", &["v1"]);
    let other = container_name("prefix-other");
    let (ok, id) = docker(&["run", "--detach", "--name", &other, &format!("{BASE}:v4")]);
    assert!(ok, "{id}");
    let id = id.trim().to_owned();
    // A name that is, for the daemon, a prefix of that container's id, and no name.
    let prefix = id[..3].to_owned();
    let _cleanup = Containers(vec![other.clone(), prefix.clone()]);
    assert!(
        container_id(&prefix).as_deref() == Some(id.as_str()),
        "docker resolves {prefix} as the id prefix"
    );
    let handler = site(&s.registry, &prefix, s.port);
    let done = deploy(&handler, &push_of(&s.registry, "v1"))
        .await
        .expect("first deploy");
    assert!(done.contains(&format!("to container {prefix}")), "{done}");
    assert_eq!(page(s.port).as_deref(), Some("site v1"));
    let (_, running) = docker(&["inspect", "--format", "{{.Name}} {{.State.Status}}", &id]);
    assert_eq!(
        running.trim(),
        format!("/{other} running"),
        "the unrelated container is untouched"
    );
    let filter = format!("name=^/{prefix}$");
    let (_, named) = docker(&[
        "ps",
        "--all",
        "--no-trunc",
        "--filter",
        &filter,
        "--format",
        "{{.ID}}",
    ]);
    let named = named.trim();
    assert!(
        !named.is_empty() && named != id,
        "a new container took the name: {named:?}"
    );
}

/// The reconciler on the states a swap passes through, built by hand on the engine.
#[tokio::test]
async fn the_reconciler_keeps_the_last_container_that_passed() {
    if !available("the_reconciler_keeps_the_last_container_that_passed") {
        return;
    }
    let s = Site::new("reconcile", &["v1", "v2"]);
    let (name, port) = (&s.name, s.port);
    let handler = s.handler();
    let (old, new) = (format!("{name}-hubhook-old"), format!("{name}-hubhook-new"));
    let run_v2_as = |container: &str| {
        let (ok, out) = docker(&[
            "run",
            "--detach",
            "--name",
            container,
            "-p",
            &format!("127.0.0.1:{port}:80"),
            &format!("{BASE}:v2"),
        ]);
        assert!(ok, "{out}");
    };
    let must = |args: &[&str]| {
        let (ok, out) = docker(args);
        assert!(ok, "docker {args:?}: {out}");
    };
    let names = || [name.as_str(), &old, &new].map(|n| container_id(n).is_some());

    // Killed after the rename, or after the stop: only -old, maybe stopped.
    s.v1_running(&handler).await;
    must(&["rename", name, &old]);
    must(&["stop", "--time", "0", &old]);
    let done = handler
        .reconcile()
        .await
        .expect("reconcile")
        .expect("a repair");
    assert!(done.contains(&format!("restored {old}")), "{done}");
    assert_eq!(names(), [true, false, false]);
    assert_eq!(page(port).as_deref(), Some("site v1"));

    // Killed during the gate: -old (stopped) and -new, which never passed.
    must(&["rename", name, &old]);
    must(&["stop", "--time", "0", &old]);
    run_v2_as(&new);
    let done = handler
        .reconcile()
        .await
        .expect("reconcile")
        .expect("a repair");
    assert!(done.contains(&format!("removed {new}")), "{done}");
    assert_eq!(names(), [true, false, false]);
    assert_eq!(
        page(port).as_deref(),
        Some("site v1"),
        "the last container that passed"
    );

    // Killed after the commit: NAME (passed) beside -old.
    must(&["rename", name, &old]);
    must(&["stop", "--time", "0", &old]);
    run_v2_as(name);
    let done = handler
        .reconcile()
        .await
        .expect("reconcile")
        .expect("a repair");
    assert!(done.contains(&format!("removed {old}")), "{done}");
    assert_eq!(names(), [true, false, false]);
    assert_eq!(page(port).as_deref(), Some("site v2"));

    // Nothing to do.
    assert_eq!(handler.reconcile().await.expect("reconcile"), None);
}

/// Debian's nginx, started for one test on a free port, proxying to the upstream file that
/// a blue-green handler switches. Stopped on drop.
struct Nginx {
    nginx: hubhook_testkit::Nginx,
    upstream: std::path::PathBuf,
    port: u16,
    _dir: TempDir,
}

impl Nginx {
    fn start(first: u16) -> Self {
        let dir = TempDir::new("nginx");
        let upstream = dir.write("site.upstream", &format!("server 127.0.0.1:{first};\n"));
        let nginx = hubhook_testkit::Nginx::start(&dir, |port| {
            format!(
                "  upstream site {{ include {}; }}\n  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://site; }} }}",
                upstream.display()
            )
        });
        Self {
            port: nginx.port,
            nginx,
            upstream,
            _dir: dir,
        }
    }

    fn reload(&self) -> Vec<String> {
        [
            "nginx",
            "-c",
            self.nginx.conf.to_str().expect("utf8"),
            "-s",
            "reload",
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

/// Polls `port` every 20 ms on a fresh connection until told to stop; returns the answers
/// that were not a page (errors, non-200) and how many requests were made.
fn poll_page(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<String>, usize)> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut failed, mut made) = (Vec::new(), 0);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            made += 1;
            let answer = (|| -> std::io::Result<String> {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
                tcp.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
                let mut text = String::new();
                tcp.read_to_string(&mut text)?;
                Ok(text)
            })();
            match answer {
                Ok(text) if text.starts_with("HTTP/1.1 200") && text.contains("site v") => {}
                Ok(text) => failed.push(text.lines().next().unwrap_or("").to_owned()),
                Err(e) => failed.push(e.to_string()),
            }
            // The probe's sampling interval, not a wait for anything.
            std::thread::sleep(Duration::from_millis(20));
        }
        (failed, made)
    })
}

#[tokio::test]
async fn blue_green_behind_nginx_never_fails_a_request() {
    if !available("blue_green_behind_nginx") {
        return;
    }
    let s = Site::new("bluegreen", &["v1", "v2", "v3", "v4"]);
    let (registry, name) = (&s.registry, &s.name);
    let (a, b) = (free_port(), free_port());
    let nginx = Nginx::start(a);
    let bg = BlueGreen::new(
        [&format!("127.0.0.1:{a}:80"), &format!("127.0.0.1:{b}:80")],
        &nginx.upstream,
    )
    .expect("ports")
    .reload(nginx.reload());
    let handler = DockerHandler::container("deploy", &registry.repo(), name)
        .expect("handler")
        .tag("v*")
        .blue_green(bg)
        .stop_timeout(Duration::from_secs(1))
        .health(Health::Http("http://127.0.0.1/".into()))
        .health_timeout(Duration::from_secs(3));
    deploy(&handler, &push_of(registry, "v1"))
        .await
        .expect("v1");
    assert_eq!(page(nginx.port).as_deref(), Some("site v1"));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = poll_page(nginx.port, stop.clone());
    // 20 redeploys, broken images among them: v3 exits, v4 never answers.
    let tags = ["v2", "v3", "v1", "v4", "v2", "v1", "v3", "v2", "v1", "v4"];
    let (mut deployed, mut refused) = (0, 0);
    for tag in tags.iter().chain(tags.iter()) {
        match deploy(&handler, &push_of(registry, tag)).await {
            Ok(done) => {
                assert!(matches!(*tag, "v1" | "v2"), "{tag} deployed: {done}");
                deployed += 1;
                assert_eq!(page(nginx.port), Some(format!("site {tag}")));
            }
            Err(e) => {
                assert!(matches!(*tag, "v3" | "v4"), "{tag} failed: {e}");
                assert!(e.to_string().contains("health gate failed"), "{e}");
                refused += 1;
            }
        }
        assert!(container_id(&format!("{name}-hubhook-new")).is_none());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (failed, made) = poller.join().expect("poller");
    println!("blue-green: {made} requests through nginx over 20 redeploys ({deployed} deployed, {refused} refused), {} failed", failed.len());
    assert_eq!((deployed, refused), (12, 8));
    assert!(
        failed.is_empty(),
        "requests that failed through nginx: {failed:?}"
    );
}

/// The blue-green reconciler: a `-new` that nginx does not point to goes; one it points to
/// passed, and takes the name.
#[tokio::test]
async fn the_blue_green_reconciler_follows_the_upstream_file() {
    if !available("the_blue_green_reconciler") {
        return;
    }
    let s = Site::new("bgreconcile", &["v1", "v2"]);
    let (registry, name) = (&s.registry, &s.name);
    let (a, b) = (free_port(), free_port());
    let nginx = Nginx::start(a);
    let bg = BlueGreen::new(
        [&format!("127.0.0.1:{a}:80"), &format!("127.0.0.1:{b}:80")],
        &nginx.upstream,
    )
    .expect("ports")
    .reload(nginx.reload());
    let handler = DockerHandler::container("deploy", &registry.repo(), name)
        .expect("handler")
        .tag("v*")
        .blue_green(bg)
        .health(Health::Http("http://127.0.0.1/".into()));
    deploy(&handler, &push_of(registry, "v1"))
        .await
        .expect("v1 on slot 0");
    let new = format!("{name}-hubhook-new");
    let run_new = |slot: usize, port: u16| {
        let (ok, out) = docker(&[
            "run",
            "--detach",
            "--name",
            &new,
            "--label",
            &format!("hubhook.slot={slot}"),
            "-p",
            &format!("127.0.0.1:{port}:80"),
            &format!("{BASE}:v2"),
        ]);
        assert!(ok, "{out}");
    };
    // Killed in the gate: nginx still points to slot 0.
    run_new(1, b);
    let done = handler
        .reconcile()
        .await
        .expect("reconcile")
        .expect("a repair");
    assert!(done.contains("which nginx does not point to"), "{done}");
    assert!(container_id(&new).is_none());
    assert_eq!(page(nginx.port).as_deref(), Some("site v1"));

    // Killed after the switch was written: the new one passed and takes the name.
    run_new(1, b);
    // It had passed its gate: it answers on its own port before the switch.
    assert_eq!(page(b).as_deref(), Some("site v2"));
    std::fs::write(&nginx.upstream, format!("server 127.0.0.1:{b};\n")).expect("switch");
    let done = handler
        .reconcile()
        .await
        .expect("reconcile")
        .expect("a repair");
    assert!(done.contains("nginx points to it"), "{done}");
    assert!(container_id(&new).is_none());
    assert!(container_id(name).is_some());
    assert_eq!(
        page(nginx.port).as_deref(),
        Some("site v2"),
        "reloaded onto the new one"
    );
}
