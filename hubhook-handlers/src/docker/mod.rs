//! The docker handler: redeploys a container (or a Swarm service) with the pushed image,
//! through the `docker` CLI, without taking the site down when something goes wrong.
//!
//! Container mode: pull first (a failed pull touches nothing); keep the old container until
//! the new one runs (rename it aside, stop it, run the new one, health gate); roll back to
//! the old one when the new one fails; remove the old one after success. Each step is
//! recorded by the engine itself, in the containers' names, and a reconciler finishes or
//! undoes a swap that hubhook itself did not finish (`swap`). Service mode: the tag is
//! resolved to its digest first, then `docker service update --image` with Swarm's own
//! rollback on failure (`service`). Compose mode (`compose`, its own handler type) lets
//! Compose recreate the services, with the same pull-first, gate and rollback. Every
//! docker command has a time limit (`cli`); the health gate is `health`.
//!
//! The image comes from configuration. The payload only picks a tag that the configured
//! pattern allows, and every payload value is a type that passed the image-reference
//! grammar when the message was made (`reference::{Name, Tag, Digest}`): a payload value
//! can never become a flag.

mod bluegreen;
mod cli;
mod compose;
mod health;
mod service;
mod swap;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hubhook_core::reference::check_name;
use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome, Pattern};
use tokio::sync::watch;

pub use bluegreen::BlueGreen;
use cli::{Docker, Failure};
pub use compose::{ComposeError, ComposeHandler};
use swap::Swap;

/// How long one docker command may take, by default.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// What a swap may take at shutdown beyond its `stop_timeout` and `health_timeout`.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(10);

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
    /// The blue-green ports are not two different `-p` values.
    #[error("{0}")]
    Ports(String),
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
    blue_green: Option<BlueGreen>,
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
            blue_green: None,
            docker: Docker::new(),
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

    /// Deploys blue-green behind nginx instead of stop-first (containers only): the new
    /// container runs beside the old one on the other port, passes its gate, nginx is
    /// switched to it, then the old one goes. `run_args` must not publish ports then.
    #[must_use]
    pub fn blue_green(mut self, blue_green: BlueGreen) -> Self {
        self.blue_green = Some(blue_green);
        self
    }

    /// How long one docker command may take (`docker stop` gets this on top of the stop
    /// timeout); default [`DEFAULT_STEP_TIMEOUT`]. Past it the command is killed and the
    /// run ends with a timeout, after putting the previous container back.
    #[must_use]
    pub fn step_timeout(mut self, timeout: Duration) -> Self {
        self.docker.step_timeout = timeout;
        self
    }

    /// How long a server waits at shutdown for a swap in progress: the stop timeout, the
    /// health timeout and a margin of 10 s. A swap whose docker commands hang longer
    /// (each has [`step_timeout`](Self::step_timeout)) is cut short and left for
    /// [`reconcile`](Self::reconcile).
    pub fn swap_bound(&self) -> Duration {
        self.stop_timeout
            .saturating_add(self.health_timeout)
            .saturating_add(SHUTDOWN_MARGIN)
    }

    /// The `docker` binary to run; default `docker` from `PATH`.
    #[must_use]
    pub fn docker_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.docker.binary = path.into();
        self
    }

    /// The `docker` binary this handler runs.
    pub fn docker_binary_path(&self) -> &std::path::Path {
        &self.docker.binary
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
    /// tag (or digest). A `HubMessage` is valid by construction, so its values have
    /// passed the image-reference grammar already.
    pub fn reference_for(&self, msg: &HubMessage) -> Result<String, HandlerError> {
        let tag = pushed_tag(&self.image, msg)?;
        if !self.tag.matches(tag) {
            return Err(HandlerError::Rejected(format!(
                "tag {tag} does not match the configured pattern {}",
                self.tag.as_str()
            )));
        }
        Ok(match msg.digest() {
            Some(digest) => format!("{}@{digest}", self.image),
            None => format!("{}:{tag}", self.image),
        })
    }

    /// Pulls the pushed tag (a failed pull touches nothing) and returns what to run:
    /// `image@digest` when the provider named the digest, after checking that the tag
    /// really points to it (so a payload cannot pick another build of the repository
    /// under an allowed tag). Without a digest in the message: `image:tag`, or with `pin`
    /// the digest the pull found, so that a Swarm service moves only to an image that
    /// exists (Swarm stops a running task before it finds out that a tag is missing).
    async fn pull(
        &self,
        msg: &HubMessage,
        ctx: &Context,
        pin: bool,
    ) -> Result<String, HandlerError> {
        let tagged = format!("{}:{}", self.image, msg.tag());
        let digests = self.pulled_digests(&tagged, ctx).await?;
        let digest = match msg.digest() {
            Some(digest) if digests.iter().any(|d| digest == d.as_str()) => digest.as_str(),
            Some(digest) => {
                return Err(HandlerError::Rejected(format!(
                    "{tagged} does not point to the pushed digest {digest} (a newer push won, or \
                     the payload names another build); nothing changed"
                )))
            }
            None if !pin => return Ok(tagged),
            None => digests.first().ok_or_else(|| {
                failed(format!(
                    "{tagged} has no registry digest after its pull; nothing changed"
                ))
            })?,
        };
        Ok(format!("{}@{digest}", self.image))
    }

    /// Pulls `tagged` and returns the digests the registry knows it by.
    async fn pulled_digests(
        &self,
        tagged: &str,
        ctx: &Context,
    ) -> Result<Vec<String>, HandlerError> {
        let what = format!("pull of {tagged} failed");
        let cancelled = |e: Failure| e.nothing_changed(&what);
        self.docker
            .run_cancellable(&["pull", tagged], ctx)
            .await
            .map_err(cancelled)?;
        let known = self
            .docker
            .run_cancellable(
                &[
                    "image",
                    "inspect",
                    "--format",
                    "{{range .RepoDigests}}{{.}} {{end}}",
                    tagged,
                ],
                ctx,
            )
            .await
            .map_err(cancelled)?;
        let repo = normalize(&self.image);
        Ok(known
            .split_whitespace()
            .filter_map(|d| d.split_once('@'))
            .filter(|(name, _)| normalize(name) == repo)
            .map(|(_, digest)| digest.to_owned())
            .collect())
    }

    fn swap<'a>(
        &'a self,
        name: &'a str,
        run_args: &'a [String],
        command: &'a [String],
    ) -> Swap<'a> {
        Swap {
            docker: &self.docker,
            name,
            image: &self.image,
            run_args,
            command,
            stop_timeout: self.stop_timeout,
            health: &self.health,
            health_timeout: self.health_timeout,
            cleanup: self.cleanup,
            blue_green: self.blue_green.as_ref(),
        }
    }

    /// Reconcile, pull, then swap or update; runs in its own task (see `handle`).
    async fn deploy(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        let started = Instant::now();
        match &self.target {
            Target::Container {
                name,
                run_args,
                command,
            } => {
                let swap = self.swap(name, run_args, command);
                if let Some(repaired) = swap.reconcile().await.map_err(failed)? {
                    tracing::warn!(handler = %self.name, container = %name, "before deploying: {repaired}");
                }
                let reference = self.pull(msg, ctx, false).await?;
                swap.run(&reference, ctx, started, started.elapsed()).await
            }
            Target::Service { name } => {
                let reference = self.pull(msg, ctx, true).await?;
                let tagged = format!("{}:{}", self.image, msg.tag());
                service::update(&self.docker, &tagged, &reference, ctx, name).await
            }
        }
    }

    /// Finishes or undoes a container swap that a previous run of hubhook left half-way
    /// (killed, or stopped past its bound), from what docker reports; returns what it did,
    /// `None` when there was nothing to repair. Call it at start; every deploy calls it
    /// first too. Nothing to do for a Swarm service.
    pub async fn reconcile(&self) -> Result<Option<String>, HandlerError> {
        let Target::Container {
            name,
            run_args,
            command,
        } = &self.target
        else {
            return Ok(None);
        };
        let lock = deploy_lock(&self.lock_key());
        let _held = lock.lock_owned().await;
        self.swap(name, run_args, command)
            .reconcile()
            .await
            .map_err(failed)
    }

    /// Waits until every deploy task in progress (in any docker handler of this process:
    /// swaps, service updates, and those waiting for the deploy lock) has finished or
    /// rolled back, for at most `limit`; whether they all did. Swaps go on in
    /// their own tasks after their run was cancelled, so a server calls this before it
    /// exits: a swap cut short at exit is left for [`reconcile`](Self::reconcile).
    pub async fn finish_swaps(limit: Duration) -> bool {
        let mut swaps = in_flight().subscribe();
        let idle = tokio::time::timeout(limit, swaps.wait_for(|n| *n == 0)).await;
        idle.is_ok()
    }

    fn lock_key(&self) -> String {
        let (key, name) = match &self.target {
            Target::Container { name, .. } => ("container", name),
            Target::Service { name } => ("service", name),
        };
        format!("{}|{key}|{name}", self.docker.host.as_deref().unwrap_or(""))
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
        // Two deploys of one container or service never overlap, whichever handler runs them.
        let (this, msg, inner) = (self.clone(), msg.clone(), ctx.clone());
        own_task(&self.lock_key(), ctx, async move {
            this.deploy(&msg, &inner).await
        })
        .await
    }
}

/// What a deploy that rolled back reports when a shutdown cut its gate short
/// (`cut_short`: the context was cancelled when the gate ended): the previous version
/// runs again, but the push was never judged, so the delivery is still owed a run
/// ([`HandlerError::Cancelled`]: a journaled server deploys it at its next start). The
/// rollback's report goes to the log. A timeout, and any failure of a gate that ended
/// on its own, stand.
fn owed_if_cancelled(failure: HandlerError, cut_short: bool, handler: &str) -> HandlerError {
    if !cut_short || !matches!(failure, HandlerError::Failed(_)) {
        return failure;
    }
    tracing::warn!(handler, "cut short by a shutdown: {failure}");
    HandlerError::Cancelled
}

/// The pushed tag, once the pushed repository is `image`; refused otherwise, before any
/// command. The tag needs no check here: a [`Tag`](hubhook_core::reference::Tag) passed
/// the grammar when the message was made.
fn pushed_tag<'m>(image: &str, msg: &'m HubMessage) -> Result<&'m str, HandlerError> {
    let pushed = msg.full_name();
    if normalize(&pushed) != normalize(image) {
        return Err(HandlerError::Rejected(format!(
            "pushed repository {pushed} is not the configured image {image}"
        )));
    }
    Ok(msg.tag().as_str())
}

/// Runs `deploy` in its own task, holding the deploy lock `key`: if the run is dropped
/// (its timeout or the shutdown's grace period ran out) half-way through a swap, the task
/// still finishes or rolls back, and a server waits for it before exiting
/// (`finish_swaps`). The cancellation reaches it through `ctx`, which stops the wait for
/// the lock here; the deploy decides which of its steps it stops.
async fn own_task<F>(key: &str, ctx: &Context, deploy: F) -> Result<Outcome, HandlerError>
where
    F: std::future::Future<Output = Result<Outcome, HandlerError>> + Send + 'static,
{
    let lock = deploy_lock(key);
    let ctx = ctx.clone();
    let counted = Counted::new();
    let task = tokio::spawn(async move {
        let _counted = counted;
        let _held = tokio::select! {
            held = lock.lock_owned() => held,
            () = ctx.cancelled() => return Err(HandlerError::Cancelled),
        };
        deploy.await
    });
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(HandlerError::Panicked("the deploy task panicked".into())),
        Err(e) => Err(failed(format!("the deploy task ended: {e}"))),
    }
}

/// The number of deploy tasks in progress in this process.
fn in_flight() -> &'static watch::Sender<usize> {
    static IN_FLIGHT: OnceLock<watch::Sender<usize>> = OnceLock::new();
    IN_FLIGHT.get_or_init(|| watch::Sender::new(0))
}

/// One deploy task, counted while it lives.
struct Counted;

impl Counted {
    fn new() -> Self {
        in_flight().send_modify(|n| *n += 1);
        Self
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        in_flight().send_modify(|n| *n = n.saturating_sub(1));
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

fn failed(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Failed(e.to_string())
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
}
