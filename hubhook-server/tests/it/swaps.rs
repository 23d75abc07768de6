//! hubhook itself interrupted in the middle of a swap, on the real engine: SIGKILL or
//! SIGTERM after each step (rename, stop, run) and during the health gate, then a restart.
//! Within `health_timeout` of the restart the page is served, and once things settle
//! exactly one container has the name and no `-hubhook-old` or `-hubhook-new` is left;
//! a broken new image leaves the old version serving.

use std::path::PathBuf;
use std::time::Duration;

use hubhook_testkit::{available, container_name, free_port, quick_page, Containers, Registry};

use crate::support::*;

/// How long the test's handler gives a new container to pass its gate.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// After the running container was renamed `-hubhook-old`.
    Rename,
    /// After it was stopped.
    Stop,
    /// After the new container was started.
    Run,
    /// While the new container is in its health gate.
    Gate,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Interrupt {
    Kill,
    Term,
}

/// One site: a registry with the test tags, a container name, a page port, and a `docker`
/// that can pause after a chosen step so the test knows where hubhook stands.
struct Scene {
    // Dropped first: the containers go before the registry's images.
    _cleanup: Containers,
    registry: Registry,
    dir: TempDir,
    name: String,
    port: u16,
    pause: PathBuf,
    paused: PathBuf,
}

impl Scene {
    fn new(test: &str) -> Self {
        let registry = Registry::start();
        for tag in ["v1", "v2", "v4", "v5"] {
            registry.push(tag);
        }
        let dir = TempDir::new(test);
        let name = container_name(test);
        let (pause, paused) = (dir.path().join("pause-after"), dir.path().join("paused"));
        // The real docker; after the step named in `pause-after` (once), it says so and
        // sleeps, holding hubhook in that state until the test interrupts it.
        let wrapper = dir.write_script(
            "docker",
            &format!(
                "#!/bin/sh\nstep=$(cat '{pause}' 2>/dev/null)\ndocker \"$@\"\nrc=$?\n\
                 if [ -n \"$step\" ] && [ \"$1\" = \"$step\" ]; then rm -f '{pause}'; touch '{paused}'; sleep 30; fi\n\
                 exit $rc\n",
                pause = pause.display(),
                paused = paused.display(),
            ),
        );
        let port = free_port();
        dir.write(
            "hubhook.toml",
            &format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nshutdown_grace = \"20s\"\n\
                 [[hook]]\npath = \"/registry\"\nprovider = \"registry\"\nregistry = \"{}\"\napi_keys = [\"{KEY}\"]\n\
                 [[handler]]\nname = \"site\"\ntype = \"docker\"\nimage = \"{}\"\ncontainer = \"{name}\"\n\
                 tag = \"v*\"\ndocker = \"{}\"\nrun_args = [\"-p\", \"127.0.0.1:{port}:80\"]\n\
                 stop_timeout = \"1s\"\nstep_timeout = \"5s\"\nhealth = \"http://127.0.0.1:{port}/\"\n\
                 health_timeout = \"{}s\"\n",
                registry.host,
                registry.repo(),
                wrapper.display(),
                HEALTH_TIMEOUT.as_secs(),
            ),
        );
        Self {
            _cleanup: Containers(vec![name.clone()]),
            registry,
            dir,
            name,
            port,
            pause,
            paused,
        }
    }

    fn start(&self) -> Server {
        Server::start(&["--config", "hubhook.toml"], self.dir.path(), &[])
    }

    /// The registry's notification of a push of `tag`, as the registry sends it.
    fn push(&self, server: &Server, tag: &str) {
        static EVENTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let id = EVENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = format!(
            r#"{{"events":[{{"id":"{}-{id}","action":"push","target":{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","repository":"hubhook-test/site","tag":"{tag}"}},"request":{{"host":"{}"}}}}]}}"#,
            self.name, self.registry.host
        );
        let (status, answer) = request(
            server.addr,
            "POST",
            "/registry",
            &[
                &format!("Authorization: Bearer {KEY}"),
                "Content-Type: application/vnd.docker.distribution.events.v1+json",
            ],
            body.as_bytes(),
        );
        assert_eq!(status, 202, "{answer}");
    }

    fn exists(&self, suffix: &str) -> bool {
        hubhook_testkit::container_id(&format!("{}{suffix}", self.name)).is_some()
    }

    /// The page, within `limit`.
    fn page_within(&self, limit: Duration, server: &Server) -> String {
        eventually(
            limit,
            || {
                format!(
                    "a page within {limit:?} of the restart:\n{}",
                    server.stderr()
                )
            },
            || quick_page(self.port),
        )
    }

    /// Waits until exactly the container `NAME` is left, no `-hubhook-old` or `-new`, and
    /// returns its page.
    fn settled(&self, server: &Server) -> String {
        eventually(
            Duration::from_secs(60),
            || format!("{} settles:\n{}", self.name, server.stderr()),
            || {
                let clean =
                    self.exists("") && !self.exists("-hubhook-old") && !self.exists("-hubhook-new");
                clean.then(|| quick_page(self.port)).flatten()
            },
        )
    }

    /// Deploys v1, pushes `tag`, interrupts hubhook at `step` with `how`, restarts it and
    /// checks the invariant; returns the page once settled.
    fn interrupt(&self, step: Step, how: Interrupt, tag: &str) -> String {
        let server = self.start();
        self.push(&server, "v1");
        eventually(
            Duration::from_secs(60),
            || format!("v1 served:\n{}", server.stderr()),
            || (self.settled(&server) == "site v1").then_some(()),
        );
        let _ = std::fs::remove_file(&self.paused);
        let verb = match step {
            Step::Rename => Some("rename"),
            Step::Stop => Some("stop"),
            Step::Run => Some("run"),
            Step::Gate => None,
        };
        if let Some(verb) = verb {
            std::fs::write(&self.pause, verb).expect("pause");
        }
        self.push(&server, tag);
        eventually(
            Duration::from_secs(60),
            || format!("hubhook reaches {step:?}:\n{}", server.stderr()),
            || {
                let there = match step {
                    Step::Gate => self.exists("-hubhook-new"),
                    _ => self.paused.exists(),
                };
                there.then_some(())
            },
        );
        match how {
            Interrupt::Kill => drop(server),
            Interrupt::Term => {
                let exit = server.terminate();
                assert!(exit.success(), "a graceful stop at {step:?}: {exit:?}");
            }
        }
        let _ = std::fs::remove_file(&self.pause);
        let server = self.start();
        let page = self.page_within(HEALTH_TIMEOUT, &server);
        // The old version or the pushed one: never down, never anything else.
        assert!(
            page == "site v1" || page == format!("site {tag}"),
            "{how:?} at {step:?}: the page within health_timeout of the restart: {page:?}\n{}",
            server.stderr()
        );
        let settled = self.settled(&server);
        assert!(server.terminate().success());
        settled
    }
}

/// Interrupts hubhook with `how` at each step in turn; the good new image is v2, v5 for
/// the gate (it answers 2 s after it starts, so the gate lasts long enough to be caught).
fn at_each_step(test: &str, how: Interrupt) {
    let scene = Scene::new(test);
    for (step, tag) in [
        (Step::Rename, "v2"),
        (Step::Stop, "v2"),
        (Step::Run, "v2"),
        (Step::Gate, "v5"),
    ] {
        let page = scene.interrupt(step, how, tag);
        assert!(
            page == "site v1" || page == format!("site {tag}"),
            "{how:?} at {step:?}: {page}"
        );
    }
}

#[test]
fn sigkill_at_each_step_of_a_swap_leaves_a_serving_site() {
    if available("sigkill_at_each_step_of_a_swap") {
        at_each_step("kill", Interrupt::Kill);
    }
}

#[test]
fn sigkill_in_the_gate_of_a_broken_image_keeps_the_old_version() {
    if !available("sigkill_in_the_gate_of_a_broken_image") {
        return;
    }
    let scene = Scene::new("killbroken");
    // v4 never answers: the gate runs until its timeout, and hubhook is killed in it.
    let page = scene.interrupt(Step::Gate, Interrupt::Kill, "v4");
    assert_eq!(page, "site v1");
}

#[test]
fn sigterm_at_each_step_of_a_swap_finishes_or_rolls_back() {
    if available("sigterm_at_each_step_of_a_swap") {
        at_each_step("term", Interrupt::Term);
    }
}
