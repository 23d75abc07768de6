//! The compose handler on the real engine, with Debian's `docker-compose` (or the
//! `docker compose` plugin where it exists), pulling from a real registry.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hubhook_core::{
    Context, DeliveryId, Handler, HandlerError, Hook, HubMessage, HubhookService, Provider, Route,
};
use hubhook_handlers::{ComposeHandler, Health};

use hubhook_testkit::*;

use crate::support::shut_down_in_the_gate;

/// The tag the compose file names: pushes of v1, v2, v3 are pushed under it.
const LIVE: &str = "live";

/// A Compose project for one test: `web` runs the registry's `site:live` with a label and
/// a network alias (and an init, so that busybox httpd stops on SIGTERM instead of
/// making every recreate wait out Compose's 10 s stop timeout), `probe` runs beside it on the same network. Taken down by name (its
/// project name has the test prefix) when the test ends.
struct Project {
    dir: TempDir,
    name: String,
    port: u16,
    // Dropped after the project is down: the images go last.
    registry: Registry,
}

impl Project {
    fn new(test: &str) -> Self {
        let registry = Registry::start();
        let dir = TempDir::new(test);
        let port = free_port();
        let name = format!("hubhook-test-{test}-{}", std::process::id());
        dir.write(
            "docker-compose.yml",
            &format!(
                "version: \"3.7\"\n\
                 services:\n\
                 \x20 web:\n\
                 \x20   image: {repo}:{LIVE}\n\
                 \x20   init: true\n\
                 \x20   ports: [\"127.0.0.1:{port}:80\"]\n\
                 \x20   labels: {{ com.example.site: \"hubhook-test\" }}\n\
                 \x20   networks:\n\
                 \x20     back:\n\
                 \x20       aliases: [site-alias]\n\
                 \x20 probe:\n\
                 \x20   image: {BASE}:v1\n\
                 \x20   networks: [back]\n\
                 networks:\n\
                 \x20 back: {{}}\n",
                repo = registry.repo()
            ),
        );
        Self {
            dir,
            name,
            port,
            registry,
        }
    }

    fn handler(&self) -> ComposeHandler {
        ComposeHandler::new("site", &self.registry.repo(), self.dir.path(), ["web"])
            .expect("handler")
            .project(&self.name)
            .health(Health::Http(format!("http://127.0.0.1:{}/", self.port)))
            .health_timeout(Duration::from_secs(5))
            .inspect()
            .expect("compose config accepts the project")
    }

    /// Runs compose (as the handler would find it) with `args` in the project.
    fn compose(&self, args: &[&str]) -> String {
        let handler = self.handler();
        let argv = handler.compose_argv();
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["-p", &self.name])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run compose");
        assert!(
            out.status.success(),
            "compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The id of `service`'s container.
    fn id(&self, service: &str) -> String {
        self.compose(&["ps", "-q", service]).trim().to_owned()
    }

    /// v1 pushed as `live`, the project up, and the local copy of the tag gone so that
    /// deploys really pull.
    fn up_with_v1(&self) {
        self.registry.push_as("v1", LIVE);
        self.compose(&["up", "-d"]);
        assert_eq!(page(self.port).as_deref(), Some("site v1"));
    }

    fn push(&self, version: &str) -> HubMessage {
        let digest = self.registry.push_as(version, LIVE);
        let _ = docker(&["image", "rm", &format!("{}:{LIVE}", self.registry.repo())]);
        HubMessage::new(&self.registry.repo(), LIVE)
            .expect("message")
            .with_digest(&digest)
            .expect("digest")
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let argv = ComposeHandler::new("x", "x/x", ".", ["x"])
            .expect("handler")
            .compose_argv()
            .to_vec();
        let _ = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["-p", &self.name, "down", "--volumes", "--timeout", "1"])
            .current_dir(self.dir.path())
            .output();
    }
}

async fn deploy(handler: &ComposeHandler, msg: &HubMessage) -> Result<String, HandlerError> {
    handler
        .handle(msg, &Context::new(DeliveryId::generate()))
        .await
        .map(|o| o.summary)
}

#[tokio::test]
async fn v1_to_v2_through_compose_keeps_what_the_file_says() {
    if !available("v1_to_v2_through_compose") {
        return;
    }
    images();
    let p = Project::new("compose-v2");
    p.up_with_v1();
    let handler = p.handler();
    assert_eq!(handler.deployed_tag(), LIVE, "the tag the file names");
    let (web, probe) = (p.id("web"), p.id("probe"));

    let done = deploy(&handler, &p.push("v2")).await.expect("v2 deploys");
    assert!(done.starts_with("deployed "), "{done}");
    assert_eq!(page(p.port).as_deref(), Some("site v2"), "the page changed");
    let new_web = p.id("web");
    assert_ne!(new_web, web, "web was recreated");
    assert_eq!(p.id("probe"), probe, "the other service is untouched");

    // Compose kept its labels, and the alias on its network.
    let (_, labels) = docker(&["inspect", "--format", "{{json .Config.Labels}}", &new_web]);
    assert!(
        labels.contains("\"com.example.site\":\"hubhook-test\""),
        "{labels}"
    );
    assert!(
        labels.contains(&format!("\"com.docker.compose.project\":\"{}\"", p.name)),
        "{labels}"
    );
    let (ok, through_alias) = docker(&[
        "exec",
        &probe,
        "/bin/busybox",
        "wget",
        "-q",
        "-O",
        "-",
        "http://site-alias/",
    ]);
    assert!(ok, "{through_alias}");
    assert_eq!(through_alias.trim(), "site v2", "reached by its alias");

    // A later plain `up -d` finds the service as its file wants it: no recreate.
    p.compose(&["up", "-d"]);
    assert_eq!(
        p.id("web"),
        new_web,
        "compose up -d did not recreate it again"
    );
    assert_eq!(p.id("probe"), probe);
}

#[tokio::test]
async fn a_stopped_leftover_is_not_taken_for_the_running_version() {
    if !available("a_stopped_leftover_is_not_taken") {
        return;
    }
    images();
    let p = Project::new("compose-leftover");
    p.up_with_v1();
    let handler = p.handler();
    let done = deploy(&handler, &p.push("v2")).await.expect("v2 deploys");
    assert!(done.starts_with("deployed "), "{done}");
    // A stopped container of `web` beside the one serving, newer than it and of another
    // image (v3, which exits at once): a second replica that never started, as a scale
    // change leaves. It has the serving one's Compose labels.
    let leftover = format!("{}-leftover", p.name);
    let (_, labels) = docker(&[
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        &p.id("web"),
    ]);
    let labels: std::collections::BTreeMap<String, String> =
        serde_json::from_str(labels.trim()).expect("labels");
    let mut create = vec!["create".to_owned(), "--name".to_owned(), leftover.clone()];
    for (key, value) in &labels {
        let value = match key.as_str() {
            "com.docker.compose.container-number" => "2",
            _ => value,
        };
        create.extend(["--label".to_owned(), format!("{key}={value}")]);
    }
    create.push(format!("{BASE}:v3"));
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    let (made, out) = docker(&create);
    assert!(made, "{out}");
    let _cleanup = Containers(vec![leftover]);
    // A broken v3 rolls back to v2, the version that ran, not to the leftover's image.
    let err = deploy(&handler, &p.push("v3"))
        .await
        .expect_err("v3 fails")
        .to_string();
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(page(p.port).as_deref(), Some("site v2"), "v2 serves again");
}

#[tokio::test]
async fn a_broken_v3_is_rolled_back_and_a_missing_tag_changes_nothing() {
    if !available("a_broken_v3_is_rolled_back") {
        return;
    }
    images();
    let p = Project::new("compose-v3");
    p.up_with_v1();
    let handler = p.handler();
    deploy(&handler, &p.push("v2")).await.expect("v2 deploys");
    let v2 = p.id("web");

    // v3 exits at once: the gate fails, v2 serves again.
    let err = deploy(&handler, &p.push("v3"))
        .await
        .expect_err("v3 fails its gate");
    let text = err.to_string();
    assert!(text.contains("gate failed"), "{text}");
    assert!(text.contains("rolled back"), "{text}");
    assert_eq!(page(p.port).as_deref(), Some("site v2"), "v2 serves again");
    // And a later `up -d` keeps v2: the tag points at it again.
    p.compose(&["up", "-d"]);
    assert_eq!(page(p.port).as_deref(), Some("site v2"));

    // v4 runs but never serves: the HTTP gate fails, v2 serves again.
    let err = deploy(&handler, &p.push("v4"))
        .await
        .expect_err("v4 fails its gate");
    assert!(err.to_string().contains("rolled back"), "{err}");
    assert_eq!(page(p.port).as_deref(), Some("site v2"));

    // A project whose file names a tag the registry does not have: the pull fails and
    // the running container is untouched.
    let running = p.id("web");
    let missing = ComposeHandler::new("site", &p.registry.repo(), p.dir.path(), ["web"])
        .expect("handler")
        .project(&p.name)
        .files(["missing.yml"]);
    p.dir.write(
        "missing.yml",
        &format!(
            "version: \"3.7\"\nservices:\n  web:\n    image: {}:never-pushed\n",
            p.registry.repo()
        ),
    );
    let missing = missing.inspect().expect("the file is valid");
    let msg = HubMessage::new(&p.registry.repo(), "never-pushed").expect("message");
    let err = deploy(&missing, &msg).await.expect_err("pull fails");
    assert!(
        err.to_string().contains("pull failed, nothing changed"),
        "{err}"
    );
    assert_eq!(p.id("web"), running, "nothing changed");
    assert_eq!(page(p.port).as_deref(), Some("site v2"));
    let _ = v2;
}

// Two workers: the test's own waiting below blocks its thread while the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_in_the_gate_rolls_back_and_leaves_the_push_owed() {
    if !available("a_shutdown_in_the_gate_rolls_back") {
        return;
    }
    images();
    let p = Project::new("compose-cancel");
    p.up_with_v1();
    // v4 runs but never serves: its gate waits (here up to 60 s) until the shutdown.
    let handler = p.handler().health_timeout(Duration::from_secs(60));
    // The shutdown comes once v4 is up and in its gate (the page no longer answers v1).
    let result = shut_down_in_the_gate(&handler, p.push("v4"), || {
        (quick_page(p.port).as_deref() != Some("site v1")).then_some(())
    })
    .await;
    assert!(
        matches!(result, Err(HandlerError::Cancelled)),
        "owed again, not failed: {result:?}"
    );
    assert_eq!(page(p.port).as_deref(), Some("site v1"), "v1 serves again");
}

/// A compose command that records its argv, then runs the real one.
fn recording_compose(dir: &TempDir, real: &[String]) -> PathBuf {
    let log = dir.path().join("calls");
    dir.write_script(
        "compose",
        &format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec {} \"$@\"\n",
            log.display(),
            real.join(" ")
        ),
    )
}

#[tokio::test]
async fn payload_values_never_reach_compose() {
    let dir = TempDir::new("compose-inject");
    dir.write(
        "docker-compose.yml",
        "version: \"3.7\"\nservices:\n  web:\n    image: acme/site:live\n",
    );
    let real = ComposeHandler::new("x", "x/x", ".", ["x"])
        .expect("handler")
        .compose_argv()
        .to_vec();
    let wrapper = recording_compose(&dir, &real);
    let handler = ComposeHandler::new("site", "acme/site", dir.path(), ["web"])
        .expect("handler")
        .compose_command([wrapper.display().to_string()])
        .expect("argv");
    let calls = dir.path().join("calls");
    let service = HubhookService::builder()
        .allow_unauthenticated(true)
        .route(Route::new(handler.clone()))
        .build()
        .expect("service");
    for value in [
        "live; touch pwned",
        "$(id)",
        "`id`",
        "--privileged",
        "live\nrm -rf /",
    ] {
        for body in [
            serde_json::json!({"push_data": {"tag": value}, "repository": {"repo_name": "acme/site"}}),
            serde_json::json!({"push_data": {"tag": "live"}, "repository": {"repo_name": format!("acme/{value}")}}),
        ] {
            let request = http::Request::post("/hubhook")
                .body(Full::new(Bytes::from(body.to_string())))
                .expect("request");
            assert_eq!(service.respond(request).await.status(), 400, "{value:?}");
        }
        assert!(HubMessage::new("acme/site", value).is_err(), "{value:?}");
    }
    // Valid values that are not this handler's: refused before any command too.
    for (repo, tag) in [("acme/site", "v2"), ("evil/site", "live")] {
        let msg = HubMessage::new(repo, tag).expect("message");
        let err = deploy(&handler, &msg).await.expect_err("refused");
        assert!(matches!(err, HandlerError::Rejected(_)), "{err}");
    }
    assert!(service.shutdown(Duration::from_secs(5)).await);
    assert!(!dir.path().join("pwned").exists());
    assert!(
        !calls.exists(),
        "compose was never called: {:?}",
        std::fs::read_to_string(&calls)
    );
}

#[tokio::test]
async fn a_burst_of_pushes_ends_in_at_most_two_compose_runs() {
    if !available("a_burst_of_pushes_compose") {
        return;
    }
    images();
    let p = Project::new("compose-burst");
    p.up_with_v1();
    let real = p.handler().compose_argv().to_vec();
    let tools = TempDir::new("compose-burst-tools");
    let wrapper = recording_compose(&tools, &real);
    let handler = ComposeHandler::new("site", &p.registry.repo(), p.dir.path(), ["web"])
        .expect("handler")
        .project(&p.name)
        .compose_command([wrapper.display().to_string()])
        .expect("argv")
        .health(Health::Http(format!("http://127.0.0.1:{}/", p.port)))
        .inspect()
        .expect("inspect");
    let _ = std::fs::remove_file(tools.path().join("calls"));
    // The registry's own notification: a Docker Hub payload never names a registry.
    let service = HubhookService::builder()
        .hook(
            Hook::new("/registry", Provider::Registry)
                .registry(&p.registry.host)
                .allow_unauthenticated(true),
        )
        .route(Route::new(handler))
        .build()
        .expect("service");
    // v2 then v1 then v2 … pushed under `live`; the last one pushed is v2.
    let mut last = String::new();
    for (i, version) in ["v2", "v1", "v2", "v1", "v2"].into_iter().enumerate() {
        last = p.registry.push_as(version, LIVE);
        let body = serde_json::json!({"events": [{
            "id": format!("burst-{i}"), "action": "push",
            "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "repository": BASE, "tag": LIVE, "digest": last},
            "request": {"host": p.registry.host},
        }]});
        let request = http::Request::post("/registry")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        assert_eq!(service.respond(request).await.status(), 202);
    }
    assert!(
        service.shutdown(Duration::from_secs(120)).await,
        "the runs end"
    );
    let calls = std::fs::read_to_string(tools.path().join("calls")).unwrap_or_default();
    let ups = calls.lines().filter(|l| l.contains(" up -d")).count();
    assert!(
        (1..=2).contains(&ups),
        "compose up ran {ups} times:\n{calls}"
    );
    assert_eq!(
        page(p.port).as_deref(),
        Some("site v2"),
        "the newest push runs"
    );
    let (_, running) = docker(&["inspect", "--format", "{{.Image}}", &p.id("web")]);
    let (_, newest) = docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        &format!("{}@{last}", p.registry.repo()),
    ]);
    assert_eq!(
        running.trim(),
        newest.trim(),
        "the last run deployed the newest push"
    );
}
