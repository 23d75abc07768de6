//! The shell handler: runs a program (an argv, never a shell string) for each message.
//!
//! The payload reaches the program only as environment variables and as JSON on stdin, so
//! no payload value is ever parsed as shell text or as a command-line flag. The program
//! runs in its own process group; when the run is cancelled (timeout, shutdown) the whole
//! group gets SIGTERM, then SIGKILL, so grandchildren do not outlive it.
//!
//! The group is only ever signalled while its leader (the program) is not reaped yet:
//! the group id is the leader's pid, and once the leader is reaped (and the group empty)
//! that number can go to an unrelated process, which a `killpg` would then hit. So the run
//! notices the leader's exit with a wait that does not reap (`waitid` with `WNOWAIT`),
//! signals what it must, and reaps last.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;

/// How much of the program's output (stdout and stderr, interleaved) is kept by default.
pub const DEFAULT_OUTPUT_TAIL: usize = 4096;

/// How long the output readers and the stdin writer may go on once the program has exited.
/// Output already in the pipes is read in far less; the limit is for a daemon the program
/// left running with the pipes open, which would otherwise keep the tasks and their pipe
/// descriptors (and the run, waiting for EOF) alive for as long as it lives.
const IO_GRACE: Duration = Duration::from_millis(300);

/// How often the leader is checked when no SIGCHLD listener could be set up.
const EXIT_POLL: Duration = Duration::from_millis(50);

/// Runs a program for each message, with the payload in its environment and on stdin.
///
/// Every variable is set for every provider; a value the provider does not send is empty.
/// CONFIG.md lists where each comes from, provider by provider.
///
/// | variable | value |
/// |---|---|
/// | `HUBHOOK_REPO` | repository without a registry host, e.g. `acme/site` |
/// | `HUBHOOK_TAG` | tag, e.g. `latest` |
/// | `HUBHOOK_IMAGE` | what `docker pull` takes: `[host/]repo@digest` when the digest is known, else `[host/]repo:tag` |
/// | `HUBHOOK_REGISTRY` | the registry host, or empty (Docker Hub) |
/// | `HUBHOOK_DIGEST` | the manifest digest, or empty |
/// | `HUBHOOK_PUSHER` | who pushed (control characters removed), or empty |
/// | `HUBHOOK_PUSHED_AT` | when, in seconds since the epoch, or empty |
/// | `HUBHOOK_SOURCE` | the provider, e.g. `dockerhub` |
/// | `HUBHOOK_DELIVERY` | the delivery id |
/// | `HUBHOOK_ATTEMPT` | the attempt number, from 1 |
///
/// Standard input carries the message as JSON (Docker Hub's shape plus `source`,
/// `registry`, `digest`). Exit status 0 is success; anything else is a failure whose
/// message holds the status and the tail of the output.
///
/// ```
/// use hubhook_handlers::ShellHandler;
///
/// let deploy = ShellHandler::new("deploy", ["/usr/local/bin/deploy.sh", "--quiet"])?
///     .workdir("/srv/site")
///     .env("COMPOSE_PROJECT_NAME", "site");
/// # Ok::<(), hubhook_handlers::ShellError>(())
/// ```
#[derive(Clone)]
pub struct ShellHandler {
    name: String,
    argv: Vec<String>,
    workdir: Option<PathBuf>,
    env: Vec<(String, String)>,
    output_tail: usize,
    kill_grace: Duration,
}

/// The configured environment's values are often tokens: `Debug` shows the names only.
impl std::fmt::Debug for ShellHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(k, _)| format!("{k}=<redacted>"))
            .collect();
        f.debug_struct("ShellHandler")
            .field("name", &self.name)
            .field("argv", &self.argv)
            .field("workdir", &self.workdir)
            .field("env", &env)
            .field("output_tail", &self.output_tail)
            .field("kill_grace", &self.kill_grace)
            .finish()
    }
}

/// Why a [`ShellHandler`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShellError {
    /// The command is empty.
    #[error("the command is empty; give at least the program to run")]
    EmptyCommand,
    /// An argument or environment entry holds a NUL byte, which no program can receive.
    #[error("{0:?} holds a NUL byte")]
    Nul(String),
}

impl ShellHandler {
    /// A handler called `name` running `argv[0]` with the rest as its arguments. The
    /// program is looked up in `PATH` when it has no `/`.
    pub fn new<I, S>(name: impl Into<String>, argv: I) -> Result<Self, ShellError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let argv: Vec<String> = argv.into_iter().map(Into::into).collect();
        if argv.is_empty() || argv[0].is_empty() {
            return Err(ShellError::EmptyCommand);
        }
        if let Some(bad) = argv.iter().find(|a| a.contains('\0')) {
            return Err(ShellError::Nul(bad.clone()));
        }
        Ok(Self {
            name: name.into(),
            argv,
            workdir: None,
            env: Vec::new(),
            output_tail: DEFAULT_OUTPUT_TAIL,
            kill_grace: Duration::from_secs(2),
        })
    }

    /// Runs the program in `dir` instead of the server's working directory.
    #[must_use]
    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Sets an extra environment variable for the program. The `HUBHOOK_*` variables are
    /// set after these and win.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Keeps the last `bytes` of output for the outcome and the log; default 4096.
    #[must_use]
    pub fn output_tail(mut self, bytes: usize) -> Self {
        self.output_tail = bytes;
        self
    }

    /// The program and its arguments.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }
}

/// The `HUBHOOK_*` environment for `msg`: every variable is set for every provider, empty
/// when the provider does not say (see the table on [`ShellHandler`]).
pub(crate) fn payload_env(msg: &HubMessage, ctx: &Context) -> Vec<(&'static str, String)> {
    let or_empty = |value: Option<&str>| value.unwrap_or_default().to_owned();
    vec![
        ("HUBHOOK_REPO", msg.repo().to_string()),
        ("HUBHOOK_TAG", msg.tag().to_string()),
        ("HUBHOOK_IMAGE", msg.image()),
        ("HUBHOOK_DELIVERY", ctx.delivery().to_string()),
        ("HUBHOOK_ATTEMPT", ctx.attempt().to_string()),
        ("HUBHOOK_SOURCE", printable(msg.source())),
        (
            "HUBHOOK_PUSHER",
            msg.pusher().map(printable).unwrap_or_default(),
        ),
        (
            "HUBHOOK_PUSHED_AT",
            msg.pushed_at().map(|at| at.to_string()).unwrap_or_default(),
        ),
        ("HUBHOOK_REGISTRY", or_empty(msg.registry())),
        ("HUBHOOK_DIGEST", or_empty(msg.digest().map(|d| d.as_str()))),
    ]
}

/// Free text from a payload, without control characters (and so without NUL, which an
/// environment variable cannot hold).
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(256).collect()
}

#[async_trait]
impl Handler for ShellHandler {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        let stdin_json = serde_json::to_vec(msg)
            .map_err(|e| HandlerError::Failed(format!("cannot encode the message: {e}")))?;
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.workdir {
            command.current_dir(dir);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command.envs(payload_env(msg, ctx));
        let mut child = command
            .spawn()
            .map_err(|e| HandlerError::Failed(format!("cannot start {:?}: {e}", self.argv[0])))?;
        // The child is the leader of its own group: its pid is the group id. Tokio only
        // forgets the pid once the child is reaped, which has not happened yet.
        let Some(pid) = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
        else {
            return Err(HandlerError::Failed(format!(
                "{:?} started without a pid",
                self.argv[0]
            )));
        };
        // Declared after `child`, so dropped before it: if the run is dropped, the group is
        // killed while the leader is still unreaped.
        let mut group = GroupGuard(Some(pid));
        let mut leader = Leader::new(pid);

        let tail = Arc::new(Mutex::new(Tail::new(self.output_tail)));
        // A JoinSet aborts its tasks when dropped, so even a dropped run closes the pipes.
        let mut io = JoinSet::new();
        if let Some(out) = child.stdout.take() {
            io.spawn(collect(out, tail.clone()));
        }
        if let Some(err) = child.stderr.take() {
            io.spawn(collect(err, tail.clone()));
        }
        if let Some(mut stdin) = child.stdin.take() {
            // A program that never reads stdin must not block the run: write in the
            // background and ignore a closed pipe.
            io.spawn(async move {
                let _ = stdin.write_all(&stdin_json).await;
            });
        }

        // Nothing here reaps the leader before `child.wait()` below: until then its pid,
        // alive or a zombie, is sure to still name our group.
        tokio::select! {
            _ = leader.exited() => {}
            () = ctx.cancelled() => {
                group.signal(Signal::SIGTERM);
                let exited = match tokio::time::timeout(self.kill_grace, leader.exited()).await {
                    Ok(exited) => exited,
                    Err(_) => {
                        group.signal(Signal::SIGKILL);
                        leader.exited().await
                    }
                };
                // Whatever is left of the group goes too. The leader is a zombie, not
                // reaped, so the group id is still ours; when it could not be waited for
                // (someone else reaped it), the id may be reused and is left alone.
                if exited.is_ok() {
                    group.signal(Signal::SIGKILL);
                }
                group.disarm();
                let status = child.wait().await;
                let output = drain(io, &tail).await;
                tracing::warn!(
                    handler = %self.name, delivery = %ctx.delivery(), ?status, output = %output,
                    "stopped the command and its process group"
                );
                return Err(HandlerError::Cancelled);
            }
        }
        // The program exited on its own: what it left running in the background is its
        // business (a daemon it started, say). Disarm before reaping: after it, the guard
        // could signal a stranger.
        group.disarm();
        let status = child.wait().await;
        // A daemon may hold the pipes; the output is what arrived within the grace.
        let output = drain(io, &tail).await;
        let status = status
            .map_err(|e| HandlerError::Failed(format!("waiting for the command failed: {e}")))?;
        tracing::info!(
            handler = %self.name, delivery = %ctx.delivery(), status = %describe(status),
            output = %output, "command finished"
        );
        if status.success() {
            Ok(Outcome::new(format!(
                "{}; output: {output}",
                describe(status)
            )))
        } else {
            Err(HandlerError::Failed(format!(
                "{}; output: {output}",
                describe(status)
            )))
        }
    }
}

/// Notices the group leader's exit without reaping it.
struct Leader {
    pid: Pid,
    /// Wakes the check on every child exit in the process; `None` falls back to polling.
    sigchld: Option<tokio::signal::unix::Signal>,
}

impl Leader {
    fn new(pid: Pid) -> Self {
        // Set up before the first check, so an exit after that check is never missed.
        let sigchld = signal(SignalKind::child()).ok();
        Self { pid, sigchld }
    }

    /// Completes once the leader has exited, leaving it a zombie: not reaped, so its pid
    /// (the group id) cannot be given to another process yet. An error means it cannot
    /// be waited for (something else reaped it), and its pid may already be reused.
    async fn exited(&mut self) -> Result<(), Errno> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
        loop {
            match waitid(Id::Pid(self.pid), flags) {
                Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
                Ok(_) => return Ok(()),
                Err(e) => return Err(e),
            }
            match &mut self.sigchld {
                Some(sigchld) => {
                    if sigchld.recv().await.is_none() {
                        self.sigchld = None;
                    }
                }
                None => tokio::time::sleep(EXIT_POLL).await,
            }
        }
    }
}

/// Kills the process group if the run is dropped before the program was reaped. It must
/// be disarmed before the leader is reaped: only until then is the group id surely ours.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.0 {
            // ESRCH (the group is gone already) is the expected outcome at times.
            let _ = killpg(pid, signal);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended".to_owned(),
    }
}

/// Lets the output readers and the stdin writer finish for up to [`IO_GRACE`], then stops
/// them, and returns the output tail. When this returns, the tasks are gone and their ends
/// of the pipes closed, whatever the program left holding the other ends.
async fn drain(mut io: JoinSet<()>, tail: &Mutex<Tail>) -> String {
    let all = async { while io.join_next().await.is_some() {} };
    if tokio::time::timeout(IO_GRACE, all).await.is_err() {
        io.abort_all();
        while io.join_next().await.is_some() {}
    }
    tail.lock().map(|t| t.text()).unwrap_or_default()
}

async fn collect(mut stream: impl AsyncRead + Unpin, tail: Arc<Mutex<Tail>>) {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut tail) = tail.lock() {
                    tail.push(&chunk[..n]);
                }
            }
        }
    }
}

/// The last `limit` bytes written.
#[derive(Debug)]
struct Tail {
    bytes: VecDeque<u8>,
    limit: usize,
    dropped: bool,
}

impl Tail {
    fn new(limit: usize) -> Self {
        Self {
            bytes: VecDeque::new(),
            limit,
            dropped: false,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.bytes.extend(data);
        while self.bytes.len() > self.limit {
            self.bytes.pop_front();
            self.dropped = true;
        }
    }

    fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let text = String::from_utf8_lossy(&[a, b].concat())
            .trim_end()
            .to_owned();
        if self.dropped {
            format!("...{text}")
        } else {
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_env_values() {
        let shell = ShellHandler::new("deploy", ["/bin/true"])
            .expect("handler")
            .env("DEPLOY_TOKEN", "hunter2-secret");
        let shown = format!("{shell:?}");
        assert!(shown.contains("DEPLOY_TOKEN=<redacted>"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn tail_keeps_the_end() {
        let mut t = Tail::new(6);
        t.push(b"hello ");
        t.push(b"world\n");
        assert_eq!(t.text(), "...world");
        let mut t = Tail::new(100);
        t.push(b"short\n");
        assert_eq!(t.text(), "short");
    }

    #[test]
    fn empty_and_nul_commands_are_refused() {
        assert_eq!(
            ShellHandler::new("x", Vec::<String>::new()).err(),
            Some(ShellError::EmptyCommand)
        );
        assert!(matches!(
            ShellHandler::new("x", ["a\0b"]),
            Err(ShellError::Nul(_))
        ));
    }

    #[test]
    fn printable_drops_control_characters() {
        assert_eq!(printable("eve\n\0bob"), "evebob");
    }
}
