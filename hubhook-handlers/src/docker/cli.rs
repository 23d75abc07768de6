//! The `docker` CLI, argv only: every command with a time limit, every container found
//! by its exact name and then addressed by its id.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hubhook_core::Context;
use tokio::process::Command;

/// The `docker` binary, the daemon it talks to, and how long one command may take.
#[derive(Debug, Clone)]
pub(super) struct Docker {
    pub(super) binary: PathBuf,
    pub(super) host: Option<String>,
    pub(super) step_timeout: Duration,
}

/// Why a docker command failed, in words an operator acts on.
#[derive(Debug)]
pub(super) enum Failure {
    Missing(PathBuf, std::io::Error),
    Cancelled,
    /// The command (`docker pull`) did not end within its limit (a hung daemon, a stuck
    /// pull).
    Timeout(String, Duration),
    Command(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(path, e) => {
                let what = match path.file_name().and_then(|n| n.to_str()) {
                    Some(name) if name.contains("compose") => "compose",
                    _ => "docker binary",
                };
                write!(f, "{what} missing: cannot run {}: {e}", path.display())
            }
            Self::Cancelled => f.write_str("cancelled"),
            Self::Timeout(command, limit) => {
                write!(f, "`{command}` did not finish within {limit:?}")
            }
            Self::Command(text) => f.write_str(text),
        }
    }
}

impl Failure {
    /// This failure, before anything was changed, as a handler's error: cancelled and
    /// timed out as such, anything else as `WHAT, nothing changed: why`.
    pub(super) fn nothing_changed(self, what: &str) -> hubhook_core::HandlerError {
        use hubhook_core::HandlerError;
        match self {
            Self::Cancelled => HandlerError::Cancelled,
            Self::Timeout(_, limit) => HandlerError::Timeout(limit),
            other => HandlerError::Failed(format!("{what}, nothing changed: {other}")),
        }
    }
}

impl Docker {
    /// The `docker` in `PATH`, the environment's daemon, [`DEFAULT_STEP_TIMEOUT`].
    ///
    /// [`DEFAULT_STEP_TIMEOUT`]: super::DEFAULT_STEP_TIMEOUT
    pub(super) fn new() -> Self {
        Self {
            binary: PathBuf::from("docker"),
            host: None,
            step_timeout: super::DEFAULT_STEP_TIMEOUT,
        }
    }
}

/// A container found by its exact name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found {
    /// The full id: every later command addresses the container by it.
    pub(super) id: String,
    pub(super) running: bool,
}

impl Docker {
    /// Runs `docker ARGS` within the step timeout; stops it if `ctx` is cancelled.
    pub(super) async fn run_cancellable(
        &self,
        args: &[&str],
        ctx: &Context,
    ) -> Result<String, Failure> {
        tokio::select! {
            result = self.run(args) => result,
            () = ctx.cancelled() => Err(Failure::Cancelled),
        }
    }

    /// Runs `docker ARGS` within the step timeout, whatever else happens: the steps of a
    /// swap or a rollback must not be cut short by a cancelled run.
    pub(super) async fn run(&self, args: &[&str]) -> Result<String, Failure> {
        self.run_within(args, self.step_timeout).await
    }

    /// Runs `docker ARGS` within `limit`; past it the command is killed.
    pub(super) async fn run_within(
        &self,
        args: &[&str],
        limit: Duration,
    ) -> Result<String, Failure> {
        let mut command = Command::new(&self.binary);
        command.args(args);
        let verb = args.first().copied().unwrap_or("");
        self.output(command, verb, limit).await
    }

    /// Runs `command` (docker, or another program that talks to the same daemon) within
    /// `limit`, with no input and this daemon's `DOCKER_HOST`; its standard output, or
    /// why it failed, classified by `verb`.
    pub(super) async fn output(
        &self,
        mut command: Command,
        verb: &str,
        limit: Duration,
    ) -> Result<String, Failure> {
        command
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .env("DOCKER_CLI_HINTS", "false");
        if let Some(host) = &self.host {
            command.env("DOCKER_HOST", host);
        }
        let program = PathBuf::from(command.as_std().get_program());
        let named = |program: &PathBuf| {
            let name = program.file_name().map_or_else(
                || program.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            format!("{name} {verb}")
        };
        let output = match tokio::time::timeout(limit, command.output()).await {
            Ok(output) => output.map_err(|e| Failure::Missing(program.clone(), e))?,
            Err(_) => return Err(Failure::Timeout(named(&program), limit)),
        };
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(Failure::Command(classify(verb, stderr.trim())))
    }

    /// The container named exactly `name`, if there is one. Docker resolves an unknown
    /// name as an id prefix, and its name filter matches substrings, so the list is read
    /// and the name compared here; only a container with exactly that name is returned.
    pub(super) async fn find(&self, name: &str) -> Result<Option<Found>, Failure> {
        let filter = format!("name={name}");
        let listed = self
            .run(&[
                "ps",
                "--all",
                "--no-trunc",
                "--filter",
                &filter,
                "--format",
                "{{.ID}}\t{{.Names}}\t{{.State}}",
            ])
            .await?;
        Ok(listed.lines().find_map(|line| {
            let mut fields = line.split('\t');
            let (id, names, state) = (fields.next()?, fields.next()?, fields.next()?);
            names.split(',').any(|n| n == name).then(|| Found {
                id: id.to_owned(),
                running: state == "running",
            })
        }))
    }
}

/// Puts a readable reason in front of docker's own message.
pub(super) fn classify(verb: &str, stderr: &str) -> String {
    let lower = stderr.to_ascii_lowercase();
    let reason = if lower.contains("cannot connect to the docker daemon")
        || lower.contains("error during connect")
    {
        "docker daemon unreachable"
    } else if lower.contains("manifest unknown")
        || lower.contains("not found")
        || lower.contains("pull access denied")
        || lower.contains("repository does not exist")
    {
        if verb == "pull" {
            "image or tag not found"
        } else {
            "not found"
        }
    } else if lower.contains("port is already allocated")
        || lower.contains("address already in use")
    {
        "port already in use"
    } else if lower.contains("is already in use by container") || lower.contains("conflict") {
        "name already in use"
    } else {
        "docker failed"
    };
    let detail: String = stderr
        .lines()
        .last()
        .unwrap_or("")
        .chars()
        .take(400)
        .collect();
    format!("{reason}: {detail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        assert!(classify(
            "pull",
            "Error response from daemon: manifest for x:v9 not found: manifest unknown"
        )
        .starts_with("image or tag not found: "));
        assert!(classify("run", "docker: Error response from daemon: driver failed programming external connectivity: Bind for 0.0.0.0:8000 failed: port is already allocated.")
            .starts_with("port already in use: "));
        assert!(classify("run", "docker: Error response from daemon: Conflict. The container name \"/blog\" is already in use by container \"abc\".")
            .starts_with("name already in use: "));
        assert!(classify("ps", "Cannot connect to the Docker daemon at unix:///nope.sock. Is the docker daemon running?")
            .starts_with("docker daemon unreachable: "));
    }
}
