//! Test helpers: the real `hubhook` binary as a child process, temporary directories, and
//! a tiny blocking HTTP/1.1 client.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use hubhook_testkit::{eventually, TempDir};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_hubhook");
pub const KEY: &str = "server-test-key-0123456789abcdef";

/// Runs `hubhook ARGS` to completion.
pub fn hubhook(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run hubhook")
}

/// Runs `hubhook serve ARGS --listen 127.0.0.1:0`, expecting it to refuse to start: returns
/// its stderr once it has exited 1. Fails the test if it starts serving instead.
pub fn serve_refuses(args: &[&str], cwd: &Path) -> String {
    let child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hubhook serve");
    // Refusing takes no more than reading the file; a server that listens never exits,
    // and is killed when the wait fails.
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(child);
    let status = eventually(
        Duration::from_secs(20),
        format!("hubhook serve {args:?} refuses to start"),
        || child.0.try_wait().expect("wait"),
    );
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    stderr
}

/// A running `hubhook serve`, killed on drop, with its output collected as it comes.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub scheme: &'static str,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `hubhook serve ARGS` (add `--listen 127.0.0.1:0`) and waits for the
    /// startup line to learn the port.
    pub fn start(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .current_dir(cwd)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hubhook serve");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        let mut server = Self {
            child,
            addr: "127.0.0.1:1".parse().expect("addr"),
            scheme: "http",
            stdout,
            stderr,
        };
        let line = server.wait_for_stderr("listening on ");
        let url = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("startup line has the URL");
        let (scheme, rest) = url.split_once("://").expect("scheme");
        server.scheme = if scheme == "https" { "https" } else { "http" };
        let host_port = rest.split('/').next().expect("host:port");
        server.addr = host_port.parse().expect("startup line has the address");
        server
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout").clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// Waits (up to 20 s) for a stderr line containing `needle`, and returns it.
    pub fn wait_for_stderr(&mut self, needle: &str) -> String {
        self.wait_for(needle, true)
    }

    /// Waits (up to 20 s) for a stdout line containing `needle`, and returns it.
    pub fn wait_for_stdout(&mut self, needle: &str) -> String {
        self.wait_for(needle, false)
    }

    fn wait_for(&mut self, needle: &str, stderr: bool) -> String {
        let child = &mut self.child;
        let (out, err) = (self.stdout.clone(), self.stderr.clone());
        let text = |buffer: &Arc<Mutex<String>>| buffer.lock().expect("output").clone();
        eventually(
            Duration::from_secs(20),
            || {
                format!(
                    "a line with {needle:?}\nstdout:\n{}\nstderr:\n{}",
                    text(&out),
                    text(&err)
                )
            },
            || {
                let lines = text(if stderr { &err } else { &out });
                if let Some(line) = lines.lines().find(|l| l.contains(needle)) {
                    return Some(line.to_owned());
                }
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "hubhook exited ({status}) before printing {needle:?}\nstdout:\n{}\nstderr:\n{}",
                        text(&out),
                        text(&err)
                    );
                }
                None
            },
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        eventually(
            Duration::from_secs(20),
            "hubhook exits after SIGTERM",
            || self.child.try_wait().expect("wait"),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut text = sink.lock().expect("output buffer");
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); returns the status
/// and the body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[&str],
    body: &[u8],
) -> (u16, String) {
    let (status, _, body) = hubhook_testkit::exchange(addr, method, target, headers, body);
    (status, body)
}

/// Posts a Docker Hub push of `acme/site:TAG` to `/hubhook` with [`KEY`]; the status.
pub fn post_push(addr: SocketAddr, tag: &str) -> u16 {
    let body =
        format!(r#"{{"push_data":{{"tag":"{tag}"}},"repository":{{"repo_name":"acme/site"}}}}"#);
    request(
        addr,
        "POST",
        &format!("/hubhook?apikey={KEY}"),
        &[],
        body.as_bytes(),
    )
    .0
}

/// A config file with [`KEY`], listening on a free port, plus `extra` TOML.
pub fn config(dir: &TempDir, extra: &str) -> PathBuf {
    dir.write(
        "hubhook.toml",
        &format!("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n{extra}\n[auth]\napi_keys = [\"{KEY}\"]\n"),
    )
}
