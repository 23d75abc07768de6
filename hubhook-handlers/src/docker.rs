//! The docker handler: redeploys a container (or a Swarm service) with the pushed image,
//! through the `docker` CLI, without taking the site down when something goes wrong.
//!
//! Container mode: pull first (a failed pull touches nothing); keep the old container until
//! the new one runs (rename it aside, stop it, run the new one, health gate); roll back to
//! the old one when the new one fails; remove the old one after success. Service mode:
//! `docker service update --image` with Swarm's own rollback on failure.
//!
//! The image comes from configuration. The payload only picks a tag that the configured
//! pattern allows, and every payload value is checked against the image-reference grammar
//! again here, before anything reaches an argv: a payload value can never become a flag.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hubhook_core::reference::{check_name, check_tag};
use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome, Pattern};
use tokio::process::Command;

/// How the new container is judged healthy before the old one is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// The container must still be running a moment after it started.
    None,
    /// The image's own `HEALTHCHECK` must report `healthy`.
    Docker,
    /// This `http://` URL must answer 2xx.
    Http(String),
}

/// Why a [`DockerHandler`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// The configured image is not a repository name.
    #[error("image {0:?} is not a repository name (like \"acme/site\" or \"127.0.0.1:5000/site\"); give the tag pattern separately")]
    Image(String),
    /// The container or service name is not a Docker object name.
    #[error("{0:?} is not a container or service name (letters, digits, '_', '.', '-', starting with a letter or digit)")]
    Name(String),
    /// The health URL is not an `http://` URL.
    #[error("health check {0:?} must be \"none\", \"docker\" or an http:// URL")]
    Health(String),
}

#[derive(Debug, Clone)]
enum Target {
    Container {
        name: String,
        run_args: Vec<String>,
        command: Vec<String>,
    },
    Service {
        name: String,
    },
}

/// Redeploys a container or a Swarm service when its image is pushed.
///
/// ```
/// use hubhook_handlers::{DockerHandler, Health};
///
/// let deploy = DockerHandler::container("blog", "nathanleclaire/octoblog", "blog")?
///     .tag("latest")
///     .run_args(["-p", "8000:80", "--restart", "unless-stopped"])
///     .health(Health::Http("http://127.0.0.1:8000/".into()));
/// # Ok::<(), hubhook_handlers::DockerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct DockerHandler {
    name: String,
    image: String,
    tag: Pattern,
    target: Target,
    stop_timeout: Duration,
    health: Health,
    health_timeout: Duration,
    cleanup: bool,
    docker: Docker,
}

impl DockerHandler {
    /// A handler called `name` that redeploys the container `container` from `image` (a
    /// repository, without tag). Default tag pattern: `latest`.
    pub fn container(
        name: impl Into<String>,
        image: &str,
        container: &str,
    ) -> Result<Self, DockerError> {
        Self::new(
            name.into(),
            image,
            Target::Container {
                name: object_name(container)?,
                run_args: Vec::new(),
                command: Vec::new(),
            },
        )
    }

    /// A handler called `name` that moves the Swarm service `service` to the pushed image.
    pub fn service(
        name: impl Into<String>,
        image: &str,
        service: &str,
    ) -> Result<Self, DockerError> {
        Self::new(
            name.into(),
            image,
            Target::Service {
                name: object_name(service)?,
            },
        )
    }

    fn new(name: String, image: &str, target: Target) -> Result<Self, DockerError> {
        if check_name(image).is_err() {
            return Err(DockerError::Image(image.to_owned()));
        }
        Ok(Self {
            name,
            image: image.to_owned(),
            tag: Pattern::new("latest"),
            target,
            stop_timeout: Duration::from_secs(10),
            health: Health::None,
            health_timeout: Duration::from_secs(30),
            cleanup: false,
            docker: Docker {
                binary: PathBuf::from("docker"),
                host: None,
            },
        })
    }

    /// The pushed tags that deploy (a glob); default `latest`.
    #[must_use]
    pub fn tag(mut self, glob: impl Into<String>) -> Self {
        self.tag = Pattern::new(glob);
        self
    }

    /// Arguments between `docker run` and the image (`-p 8000:80`, `--restart ...`).
    /// Container mode only. These come from configuration, never from a payload.
    #[must_use]
    pub fn run_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        if let Target::Container { run_args, .. } = &mut self.target {
            *run_args = args.into_iter().map(Into::into).collect();
        }
        self
    }

    /// The command after the image in `docker run`. Container mode only.
    #[must_use]
    pub fn command<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        if let Target::Container { command, .. } = &mut self.target {
            *command = args.into_iter().map(Into::into).collect();
        }
        self
    }

    /// How long `docker stop` waits before killing the old container; default 10 s.
    #[must_use]
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// The health gate for the new container; default [`Health::None`].
    #[must_use]
    pub fn health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// How long the health gate waits; default 30 s.
    #[must_use]
    pub fn health_timeout(mut self, timeout: Duration) -> Self {
        self.health_timeout = timeout;
        self
    }

    /// Removes the old container's image after a successful deploy.
    #[must_use]
    pub fn cleanup(mut self, cleanup: bool) -> Self {
        self.cleanup = cleanup;
        self
    }

    /// The `docker` binary to run; default `docker` from `PATH`.
    #[must_use]
    pub fn docker_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.docker.binary = path.into();
        self
    }

    /// The daemon to talk to (`DOCKER_HOST`), e.g. `unix:///run/docker.sock`.
    #[must_use]
    pub fn docker_host(mut self, host: impl Into<String>) -> Self {
        self.docker.host = Some(host.into());
        self
    }

    /// The configured repository.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The tag pattern.
    pub fn tag_pattern(&self) -> &Pattern {
        &self.tag
    }

    /// Parses a health setting as written in configuration: `none`, `docker` or a URL.
    pub fn parse_health(text: &str) -> Result<Health, DockerError> {
        match text {
            "none" => Ok(Health::None),
            "docker" => Ok(Health::Docker),
            url if url.starts_with("http://") && url.len() > 7 => Ok(Health::Http(url.to_owned())),
            other => Err(DockerError::Health(other.to_owned())),
        }
    }

    /// What to deploy for `msg`, or why not: the configured repository with the pushed
    /// tag (or digest), once every payload value has passed the grammar again.
    pub fn reference_for(&self, msg: &HubMessage) -> Result<String, HandlerError> {
        msg.validate()
            .map_err(|e| HandlerError::Rejected(format!("refusing the payload: {e}")))?;
        let pushed = match &msg.registry {
            Some(host) => format!("{host}/{}", msg.repo()),
            None => msg.repo().to_owned(),
        };
        if normalize(&pushed) != normalize(&self.image) {
            return Err(HandlerError::Rejected(format!(
                "pushed repository {pushed} is not the configured image {}",
                self.image
            )));
        }
        let tag = msg.tag();
        check_tag(tag).map_err(|e| HandlerError::Rejected(format!("tag {tag:?} {e}")))?;
        if !self.tag.matches(tag) {
            return Err(HandlerError::Rejected(format!(
                "tag {tag} does not match the configured pattern {}",
                self.tag.as_str()
            )));
        }
        Ok(match &msg.digest {
            Some(digest) => format!("{}@{digest}", self.image),
            None => format!("{}:{tag}", self.image),
        })
    }

    /// Pulls the pushed tag (a failed pull touches nothing) and returns what to run:
    /// `image@digest` when the provider named the digest, after checking that the tag
    /// really points to it (so a payload cannot pick another build of the repository
    /// under an allowed tag), else `image:tag`.
    async fn pull(&self, msg: &HubMessage, ctx: &Context) -> Result<String, HandlerError> {
        let tagged = format!("{}:{}", self.image, msg.tag());
        self.docker
            .run(&["pull", &tagged], ctx)
            .await
            .map_err(|e| failed(format!("pull of {tagged} failed, nothing changed: {e}")))?;
        let Some(digest) = &msg.digest else {
            return Ok(tagged);
        };
        let known = self
            .docker
            .run(
                &[
                    "image",
                    "inspect",
                    "--format",
                    "{{range .RepoDigests}}{{.}} {{end}}",
                    &tagged,
                ],
                ctx,
            )
            .await
            .map_err(failed)?;
        let suffix = format!("@{digest}");
        if known.split_whitespace().any(|d| d.ends_with(&suffix)) {
            Ok(format!("{}@{digest}", self.image))
        } else {
            Err(HandlerError::Rejected(format!(
                "{tagged} does not point to the pushed digest {digest} (a newer push won, or the \
                 payload names another build); nothing changed"
            )))
        }
    }

    /// Pull, then swap or update; runs in its own task (see `handle`).
    async fn deploy(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        let started = Instant::now();
        match &self.target {
            Target::Container {
                name,
                run_args,
                command,
            } => {
                let reference = self.pull(msg, ctx).await?;
                let pulled = started.elapsed();
                self.deploy_container(started, pulled, &reference, ctx, name, run_args, command)
                    .await
            }
            Target::Service { name } => {
                // Swarm's nodes pull for themselves; pull here only to check a digest.
                let reference = match msg.digest {
                    Some(_) => self.pull(msg, ctx).await?,
                    None => format!("{}:{}", self.image, msg.tag()),
                };
                self.deploy_service(&reference, ctx, name).await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn deploy_container(
        &self,
        started: Instant,
        pulled: Duration,
        reference: &str,
        ctx: &Context,
        name: &str,
        run_args: &[String],
        command: &[String],
    ) -> Result<Outcome, HandlerError> {
        // 2. Move the running container aside, keeping it for a rollback.
        let old = format!("{name}-hubhook-old");
        if self.exists(&old, ctx).await? {
            if self.exists(name, ctx).await? {
                // A previous deploy finished but could not remove its old container.
                self.docker
                    .run_uncancelled(&["rm", "-f", &old])
                    .await
                    .map_err(failed)?;
            } else {
                // A previous deploy stopped half-way: put the old container back first.
                self.docker
                    .run_uncancelled(&["rename", &old, name])
                    .await
                    .map_err(failed)?;
                let _ = self.docker.run_uncancelled(&["start", name]).await;
            }
        }
        let had_old = self.exists(name, ctx).await?;
        let old_image = if had_old {
            // The reference the old container was started from, and its image id.
            let image = self
                .docker
                .run_uncancelled(&["inspect", "--format", "{{.Config.Image}} {{.Image}}", name])
                .await
                .map_err(failed)?;
            self.docker
                .run_uncancelled(&["rename", name, &old])
                .await
                .map_err(failed)?;
            let stop = self.stop_timeout.as_secs().to_string();
            if let Err(e) = self
                .docker
                .run_uncancelled(&["stop", "--time", &stop, &old])
                .await
            {
                let _ = self.docker.run_uncancelled(&["rename", &old, name]).await;
                return Err(failed(format!(
                    "could not stop the running container, nothing changed: {e}"
                )));
            }
            Some(image.trim().to_owned())
        } else {
            None
        };
        let swapped = started.elapsed();

        // 3. Run the new one and gate it.
        let mut argv: Vec<&str> = vec!["run", "--detach", "--name", name];
        argv.extend(run_args.iter().map(String::as_str));
        argv.push(reference);
        argv.extend(command.iter().map(String::as_str));
        let result = match self.docker.run_uncancelled(&argv).await {
            Ok(_) => self.health_gate(name, ctx).await,
            Err(e) => Err(format!("docker run failed: {e}")),
        };
        let healthy = started.elapsed();

        match result {
            Ok(()) => {
                if had_old {
                    let _ = self.docker.run_uncancelled(&["rm", "--force", &old]).await;
                }
                let mut summary = format!(
                    "deployed {reference} to container {name} (pull {} ms, swap {} ms, health {} ms)",
                    pulled.as_millis(),
                    (swapped - pulled).as_millis(),
                    (healthy - swapped).as_millis()
                );
                if self.cleanup {
                    if let Some(old_image) = old_image {
                        // A new tag: untag the old reference (the image goes when nothing else
                        // names it). The same tag pushed again: the old image lost its name to
                        // the new one, so it goes by id.
                        let mut parts = old_image.split_whitespace();
                        let (old_ref, old_id) =
                            (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                        let target = if old_ref == reference {
                            old_id
                        } else {
                            old_ref
                        };
                        if !target.is_empty() {
                            if let Err(e) =
                                self.docker.run_uncancelled(&["image", "rm", target]).await
                            {
                                summary.push_str(&format!("; old image kept: {e}"));
                            }
                        }
                    }
                }
                Ok(Outcome::new(summary))
            }
            Err(reason) => {
                let logs = self
                    .docker
                    .run_uncancelled(&["logs", "--tail", "20", name])
                    .await
                    .map(|out| out.trim().to_owned())
                    .unwrap_or_default();
                let _ = self.docker.run_uncancelled(&["rm", "--force", name]).await;
                let mut report = format!("new container for {reference} failed: {reason}");
                if !logs.is_empty() {
                    report.push_str(&format!("; its last output: {logs}"));
                }
                if had_old {
                    let back = async {
                        self.docker.run_uncancelled(&["rename", &old, name]).await?;
                        self.docker.run_uncancelled(&["start", name]).await
                    };
                    match back.await {
                        Ok(_) => {
                            report.push_str("; rollback done: the previous container runs again")
                        }
                        Err(e) => report.push_str(&format!(
                            "; ROLLBACK FAILED, the previous container is {old} and stopped: {e}"
                        )),
                    }
                }
                Err(HandlerError::Failed(report))
            }
        }
    }

    async fn health_gate(&self, name: &str, ctx: &Context) -> Result<(), String> {
        // A configured timeout too large to add is as good as none.
        let deadline = Instant::now()
            .checked_add(self.health_timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
        if self.health == Health::None {
            // Without a gate, the one check is that the container did not exit at once.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        loop {
            let state = self
                .docker
                .run_uncancelled(&[
                    "inspect",
                    "--format",
                    "{{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}}",
                    name,
                ])
                .await
                .map_err(|e| format!("cannot inspect the new container: {e}"))?;
            let mut parts = state.split_whitespace();
            let (status, code, health) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or("-"),
            );
            if status != "running" {
                return Err(format!(
                    "health gate failed: the container is {status} (exit code {code})"
                ));
            }
            let passed = match &self.health {
                Health::None => return Ok(()),
                Health::Docker => match health {
                    "healthy" => true,
                    "unhealthy" => {
                        return Err(
                            "health gate failed: docker reports the container unhealthy".into()
                        )
                    }
                    "-" => return Err("health gate failed: the image has no HEALTHCHECK".into()),
                    _ => false,
                },
                Health::Http(url) => http_ok(url).await,
            };
            if passed {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "health gate failed: not healthy within {:?}{}",
                    self.health_timeout,
                    match &self.health {
                        Health::Http(url) => format!(" ({url} did not answer 2xx)"),
                        _ => String::new(),
                    }
                ));
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = ctx.cancelled() => return Err("cancelled during the health gate".into()),
            }
        }
    }

    async fn exists(&self, name: &str, ctx: &Context) -> Result<bool, HandlerError> {
        match self
            .docker
            .run(
                &["container", "inspect", "--format", "{{.Name}}", name],
                ctx,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(Failure::Command(text)) if text.contains("No such") => Ok(false),
            Err(e) => Err(failed(e)),
        }
    }

    async fn deploy_service(
        &self,
        reference: &str,
        ctx: &Context,
        service: &str,
    ) -> Result<Outcome, HandlerError> {
        let started = Instant::now();
        let update = self
            .docker
            .run(
                &[
                    "service",
                    "update",
                    "--detach=false",
                    "--quiet",
                    "--with-registry-auth",
                    "--update-failure-action",
                    "rollback",
                    "--image",
                    reference,
                    service,
                ],
                ctx,
            )
            .await;
        let state = self
            .docker
            .run_uncancelled(&[
                "service",
                "inspect",
                "--format",
                "{{if .UpdateStatus}}{{.UpdateStatus.State}}: {{.UpdateStatus.Message}}{{else}}none{{end}}",
                service,
            ])
            .await
            .unwrap_or_default();
        let state = state.trim();
        if let Err(e) = update {
            return Err(failed(format!(
                "service update of {service} to {reference} failed ({state}): {e}"
            )));
        }
        if state.starts_with("rollback") || state.starts_with("paused") {
            return Err(HandlerError::Failed(format!(
                "service {service} did not take {reference}; Swarm reports {state}"
            )));
        }
        Ok(Outcome::new(format!(
            "service {service} runs {reference} ({} ms)",
            started.elapsed().as_millis()
        )))
    }
}

#[async_trait]
impl Handler for DockerHandler {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        // Everything the payload chooses is checked before any docker call.
        self.reference_for(msg)?;
        let (key, name) = match &self.target {
            Target::Container { name, .. } => ("container", name),
            Target::Service { name } => ("service", name),
        };
        // Two deploys of one container or service never overlap, whichever handler runs them.
        let lock = deploy_lock(&format!(
            "{}|{key}|{name}",
            self.docker.host.as_deref().unwrap_or("")
        ));
        // The deploy runs in its own task, lock included: if this run is dropped (its
        // timeout or the shutdown's grace period ran out) half-way through a swap, the task
        // still finishes the swap or puts the old container back. The cancellation reaches
        // it through `ctx`, which stops the pull and the health gate, never a swap step.
        let (this, msg, ctx) = (self.clone(), msg.clone(), ctx.clone());
        let task = tokio::spawn(async move {
            let _held = lock.lock_owned().await;
            this.deploy(&msg, &ctx).await
        });
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => {
                Err(HandlerError::Panicked("the deploy task panicked".into()))
            }
            Err(e) => Err(failed(format!("the deploy task ended: {e}"))),
        }
    }
}

fn deploy_lock(key: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    locks.entry(key.to_owned()).or_default().clone()
}

/// `docker.io/library/nginx`, `library/nginx` and `nginx` are one repository.
fn normalize(name: &str) -> String {
    let name = name
        .strip_prefix("docker.io/")
        .or_else(|| name.strip_prefix("index.docker.io/"))
        .unwrap_or(name);
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("library/{name}")
    }
}

fn object_name(name: &str) -> Result<String, DockerError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 100
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(DockerError::Name(name.to_owned()))
    }
}

/// Whether a GET of `url` answers 2xx within half a second. Short on purpose: just after
/// `docker run`, docker's port proxy accepts connections it cannot forward yet and never
/// answers them; the gate retries until its own timeout instead.
async fn http_ok(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // `http://host/` means port 80; connecting needs it spelled out.
    let address = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_owned()
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: hubhook\r\n\r\n");
    let attempt = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(&address).await.ok()?;
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).await.ok()?;
        // "HTTP/1.1 200"
        Some(head.starts_with(b"HTTP/1.") && head[9] == b'2')
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(true))
    )
}

fn failed(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Failed(e.to_string())
}

/// The `docker` CLI, argv only.
#[derive(Debug, Clone)]
struct Docker {
    binary: PathBuf,
    host: Option<String>,
}

/// Why a docker command failed, in words an operator acts on.
#[derive(Debug)]
enum Failure {
    Missing(PathBuf, std::io::Error),
    Cancelled,
    Command(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(path, e) => write!(
                f,
                "docker binary missing: cannot run {}: {e}",
                path.display()
            ),
            Self::Cancelled => f.write_str("cancelled"),
            Self::Command(text) => f.write_str(text),
        }
    }
}

impl Docker {
    /// Runs `docker ARGS`; stops it if the run is cancelled.
    async fn run(&self, args: &[&str], ctx: &Context) -> Result<String, Failure> {
        tokio::select! {
            result = self.run_uncancelled(args) => result,
            () = ctx.cancelled() => Err(Failure::Cancelled),
        }
    }

    /// Runs `docker ARGS` to the end: for the steps of a swap or a rollback, which must not
    /// stop half-way.
    async fn run_uncancelled(&self, args: &[&str]) -> Result<String, Failure> {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .env("DOCKER_CLI_HINTS", "false");
        if let Some(host) = &self.host {
            command.env("DOCKER_HOST", host);
        }
        let output = command
            .output()
            .await
            .map_err(|e| Failure::Missing(self.binary.clone(), e))?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(Failure::Command(classify(
            args.first().copied().unwrap_or(""),
            stderr.trim(),
        )))
    }
}

/// Puts a readable reason in front of docker's own message.
fn classify(verb: &str, stderr: &str) -> String {
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
    fn names_normalize() {
        assert_eq!(normalize("nginx"), "library/nginx");
        assert_eq!(normalize("docker.io/library/nginx"), "library/nginx");
        assert_eq!(normalize("acme/site"), "acme/site");
        assert_eq!(normalize("127.0.0.1:5000/site"), "127.0.0.1:5000/site");
    }

    #[test]
    fn configuration_is_checked() {
        assert!(DockerHandler::container("d", "acme/site", "blog").is_ok());
        assert_eq!(
            DockerHandler::container("d", "acme/site:latest", "blog").err(),
            Some(DockerError::Image("acme/site:latest".into()))
        );
        assert!(matches!(
            DockerHandler::container("d", "acme/site", "-blog"),
            Err(DockerError::Name(_))
        ));
        assert!(matches!(
            DockerHandler::service("d", "acme/site", "a b"),
            Err(DockerError::Name(_))
        ));
        assert_eq!(DockerHandler::parse_health("docker"), Ok(Health::Docker));
        assert!(DockerHandler::parse_health("https://x/").is_err());
    }

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
