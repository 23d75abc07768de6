//! The real Docker engine and a real registry.
//!
//! Test images are built here with no pull: `docker import` of a root filesystem holding
//! Debian's busybox-static, serving a page with `busybox httpd`. The registry is Debian's
//! `docker-registry` on 127.0.0.1 (no TLS needed there). Everything is named with the
//! `hubhook-test` prefix and removed by name when the guards drop.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::TempDir;

/// The base name of the imported images: `hubhook-test/site:v1` and so on.
pub const BASE: &str = "hubhook-test/site";

/// What the tags are: v1 and v2 serve their own page, v3 exits at once, v4 runs but never
/// serves HTTP, v5 serves its page only 2 s after it starts (a slow start widens the gate).
const VERSIONS: [(&str, &str); 5] = [
    (
        "v1",
        r#"["/bin/busybox","httpd","-f","-p","80","-h","/www"]"#,
    ),
    (
        "v2",
        r#"["/bin/busybox","httpd","-f","-p","80","-h","/www"]"#,
    ),
    ("v3", r#"["/bin/busybox","false"]"#),
    ("v4", r#"["/bin/busybox","sleep","3600"]"#),
    (
        "v5",
        r#"["/bin/busybox","sh","-c","sleep 2; exec /bin/busybox httpd -f -p 80 -h /www"]"#,
    ),
];

/// Whether the engine (and the registry binary) are here. When they are not, the test is
/// skipped with a reason, unless `HUBHOOK_REQUIRE_DOCKER=1` (CI) makes that a failure.
pub fn available(test: &str) -> bool {
    let reason = if !docker(&["info", "--format", "{{.ServerVersion}}"]).0 {
        Some("`docker info` fails: no Docker engine")
    } else if !Path::new("/bin/busybox").exists() {
        Some("/bin/busybox missing (Debian's busybox-static)")
    } else if Command::new("docker-registry")
        .arg("--version")
        .output()
        .is_err()
    {
        Some("docker-registry missing (Debian's docker-registry)")
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) if std::env::var("HUBHOOK_REQUIRE_DOCKER").as_deref() == Ok("1") => {
            panic!("{test}: {reason}, and HUBHOOK_REQUIRE_DOCKER=1")
        }
        Some(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            false
        }
    }
}

/// Runs `docker ARGS`; (success, stdout + stderr).
pub fn docker(args: &[&str]) -> (bool, String) {
    match Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

fn must(args: &[&str]) -> String {
    let (ok, out) = docker(args);
    assert!(ok, "docker {args:?} failed: {out}");
    out
}

/// Imports the test images once per test run.
pub fn images() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = TempDir::new("rootfs");
        for (tag, cmd) in VERSIONS {
            let root = dir.path().join(tag);
            std::fs::create_dir_all(root.join("bin")).expect("rootfs");
            std::fs::create_dir_all(root.join("www")).expect("rootfs");
            std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
            std::fs::write(root.join("www/index.html"), format!("site {tag}\n")).expect("page");
            let tar = dir.path().join(format!("{tag}.tar"));
            let status = Command::new("tar")
                .args([
                    "-C",
                    root.to_str().expect("utf8"),
                    "-cf",
                    tar.to_str().expect("utf8"),
                    ".",
                ])
                .status()
                .expect("tar");
            assert!(status.success());
            must(&[
                "import",
                "--change",
                &format!("CMD {cmd}"),
                tar.to_str().expect("utf8"),
                &format!("{BASE}:{tag}"),
            ]);
        }
    });
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A `docker-registry` on 127.0.0.1, holding the test images pushed to it. Killed, and the
/// images tagged for it removed, on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
    _dir: TempDir,
}

impl Registry {
    /// A registry with no notifications.
    pub fn start() -> Self {
        Self::start_notifying(None)
    }

    /// A registry that notifies `url` of every event, sending `Authorization: Bearer key`.
    pub fn start_notifying(notify: Option<(&str, &str)>) -> Self {
        images();
        let dir = TempDir::new("registry");
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{}",
                dir.path().join("data").display(),
                match notify {
                    Some((url, key)) => format!(
                        "notifications:\n  endpoints:\n    - name: hubhook\n      url: {url}\n      headers:\n        Authorization: [Bearer {key}]\n      timeout: 2s\n      threshold: 3\n      backoff: 1s\n"
                    ),
                    None => String::new(),
                }
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().expect("utf8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = Self {
            child,
            host: format!("127.0.0.1:{port}"),
            _dir: dir,
        };
        crate::eventually(Duration::from_secs(20), "the registry listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        registry
    }

    /// The repository in this registry: `127.0.0.1:PORT/hubhook-test/site`.
    pub fn repo(&self) -> String {
        format!("{}/{BASE}", self.host)
    }

    /// Pushes the test image `tag`, then removes the local copy so a deploy really pulls.
    pub fn push(&self, tag: &str) {
        self.push_keeping(tag);
        must(&["image", "rm", &format!("{}:{tag}", self.repo())]);
    }

    /// Pushes the test image `tag` and keeps the local tag.
    pub fn push_keeping(&self, tag: &str) {
        self.push_as(tag, tag);
    }

    /// Pushes the test image `version` under the tag `tag` (v2 as `live`), keeping the
    /// local tag; the registry digest of what was pushed.
    pub fn push_as(&self, version: &str, tag: &str) -> String {
        let target = format!("{}:{tag}", self.repo());
        must(&["tag", &format!("{BASE}:{version}"), &target]);
        let out = must(&["push", &target]);
        out.split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Tags, and the digest-only references a deploy by digest leaves behind.
        let (_, listed) = docker(&[
            "image",
            "ls",
            "--digests",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.Repository}}@{{.Digest}}",
            &self.repo(),
        ]);
        for reference in listed
            .split_whitespace()
            .filter(|r| r.starts_with(&self.host) && !r.ends_with("<none>"))
        {
            let _ = docker(&["image", "rm", reference]);
        }
    }
}

/// Containers (and their `-hubhook-old` and `-hubhook-new` twins) removed by name on drop.
#[derive(Debug)]
pub struct Containers(pub Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.0 {
            let old = format!("{name}-hubhook-old");
            let new = format!("{name}-hubhook-new");
            let _ = docker(&["rm", "--force", name, &old, &new]);
        }
    }
}

/// A unique container name for one test.
pub fn container_name(test: &str) -> String {
    format!("hubhook-test-{test}-{}", std::process::id())
}

/// The page served on 127.0.0.1:`port`, if any within 2 s (for a container just started).
pub fn page(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    crate::within(Duration::from_secs(2), || {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
        tcp.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        tcp.read_to_string(&mut text).ok()?;
        if !text.starts_with("HTTP/1.") {
            return None;
        }
        text.split("\r\n\r\n").nth(1).map(|b| b.trim().to_owned())
    })
}

/// One quick GET of the page on 127.0.0.1:`port`, for timing: while a container stops,
/// docker's port proxy may accept a connection and never answer it, so the waits are short
/// (100 ms) and the caller polls again.
pub fn quick_page(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .ok()?;
    tcp.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).ok()?;
    text.starts_with("HTTP/1.").then_some(())?;
    text.split("\r\n\r\n").nth(1).map(|b| b.trim().to_owned())
}

/// For the redeploy benches: polls the page on 127.0.0.1:`port` every 5 ms until it shows
/// `site VERSION`; the milliseconds from `started` until then. Panics after 120 s.
pub fn wait_for_page(port: u16, version: &str, started: std::time::Instant) -> u128 {
    let want = format!("site {version}");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if quick_page(port).is_some_and(|body| body == want) {
            return started.elapsed().as_millis();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the page never showed {want}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The id of the container `name`, if it exists.
pub fn container_id(name: &str) -> Option<String> {
    let (ok, out) = docker(&["container", "inspect", "--format", "{{.Id}}", name]);
    ok.then(|| out.trim().to_owned())
}

/// A single-node swarm for the test: joined (`swarm init`) only if the engine was not in
/// one, and left again on drop, so the engine is left as found.
#[derive(Debug)]
pub struct Swarm {
    created: bool,
}

impl Swarm {
    /// Joins (or reuses) a single-node swarm.
    pub fn join() -> Self {
        let (_, state) = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        let created = state.trim() == "inactive";
        if created {
            must(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        }
        Self { created }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.created {
            let _ = docker(&["swarm", "leave", "--force"]);
        }
    }
}

/// Swarm services removed by name on drop.
#[derive(Debug)]
pub struct Services(pub Vec<String>);

impl Drop for Services {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = docker(&["service", "rm", name]);
        }
        // Tasks stop shortly after their service goes; wait so the port is free again.
        for name in &self.0 {
            crate::within(Duration::from_secs(10), || {
                let (_, left) = docker(&[
                    "ps",
                    "--all",
                    "--quiet",
                    "--filter",
                    &format!("name={name}."),
                ]);
                left.trim().is_empty().then_some(())
            });
        }
    }
}
