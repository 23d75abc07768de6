//! The compose handler: Compose recreates the service, so everything its file says
//! (networks and aliases, volumes, configs, labels) is kept, and a later `compose up -d`
//! finds the service as its file wants it and leaves it alone.
//!
//! A deploy: `compose pull SERVICES` (a failed pull changes nothing), the image ids the
//! services' containers run now are recorded, `compose up -d --no-deps SERVICES`, the
//! health gate on each new container; on failure the image reference is pointed at the
//! recorded image again (`docker tag`) and `compose up -d --no-deps` runs once more.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hubhook_core::reference::check_tag;
use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome};
use serde::Deserialize;
use tokio::process::Command;

use super::cli::{Docker, Failure};
use super::{failed, health, normalize, object_name, own_task, pushed_tag, Health};

/// The docker CLI plugin tried first (`docker compose`, with the configured docker
/// binary); the standalone `docker-compose` when it is missing.
const PLUGIN: &str = "compose";
const STANDALONE: &str = "docker-compose";

/// Why a [`ComposeHandler`] cannot be built, or why its project does not fit it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ComposeError {
    /// The configured image is not a repository name.
    #[error(
        "image {0:?} is not a repository name (like \"acme/site\" or \"127.0.0.1:5000/site\")"
    )]
    Image(String),
    /// A service name is not one Compose accepts.
    #[error("{0:?} is not a service name (letters, digits, '_', '.', '-')")]
    Service(String),
    /// No service to deploy.
    #[error("name at least one service to deploy")]
    NoServices,
    /// The compose command is empty.
    #[error("the compose command must name a program")]
    Command,
    /// The tag is not a tag.
    #[error("tag {0:?} is not a tag")]
    Tag(String),
    /// The project folder is not there.
    #[error("{0} is not a folder (the one with the compose file)")]
    ProjectDir(String),
    /// The compose command cannot run.
    #[error("compose missing: {0}")]
    Missing(String),
    /// `compose config` refused the project.
    #[error("compose file invalid: {0}")]
    Invalid(String),
    /// A configured service is not in the project.
    #[error("the project has no service {service:?} (it has: {known})")]
    UnknownService {
        /// The configured service.
        service: String,
        /// The project's services, comma-separated.
        known: String,
    },
    /// A configured service runs another image.
    #[error("service {service:?} runs image {found:?}, not the configured repository {image:?}")]
    WrongImage {
        /// The service.
        service: String,
        /// Its `image:` in the file.
        found: String,
        /// The configured repository.
        image: String,
    },
    /// Services of one handler name different tags of the repository.
    #[error("the services name different tags of {image}: {tags}; give them one handler each")]
    Tags {
        /// The repository.
        image: String,
        /// The tags, comma-separated.
        tags: String,
    },
}

/// Redeploys services of a Docker Compose project when their image is pushed, through
/// Compose itself: pull first, `up -d --no-deps` of only those services, a health gate,
/// and a rollback to the image they ran before.
///
/// Compose pulls the tag its file names, so the handler deploys pushes of that tag only
/// ([`tag`](Self::tag), which [`inspect`](Self::inspect) reads from the file). The file
/// is never rewritten.
///
/// ```no_run
/// use hubhook_handlers::{ComposeHandler, Health};
///
/// # fn main() -> Result<(), hubhook_handlers::ComposeError> {
/// let deploy = ComposeHandler::new("site", "acme/site", "/srv/site", ["web"])?
///     .health(Health::Http("http://127.0.0.1:8000/".into()));
/// // Runs `compose config` once (blocking): the services exist and run acme/site.
/// let deploy = deploy.inspect()?;
/// assert_eq!(deploy.deployed_tag(), "latest");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ComposeHandler {
    name: String,
    image: String,
    tag: String,
    project_dir: PathBuf,
    files: Vec<PathBuf>,
    project: Option<String>,
    services: Vec<String>,
    /// The compose command; found on first use when not set.
    compose: Arc<OnceLock<Vec<String>>>,
    /// The project's name as Compose labels its containers, learned from the first
    /// container found: then the containers are listed by `docker ps` (milliseconds)
    /// instead of `compose ps` (a Python start-up, for Compose 1).
    labelled: Arc<OnceLock<String>>,
    health: Health,
    health_timeout: Duration,
    docker: Docker,
}

impl ComposeHandler {
    /// A handler called `name` that redeploys `services` of the project in `project_dir`
    /// when `image` (a repository, without tag) is pushed with the tag `latest`.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(
        name: impl Into<String>,
        image: &str,
        project_dir: impl Into<PathBuf>,
        services: I,
    ) -> Result<Self, ComposeError> {
        if hubhook_core::reference::check_name(image).is_err() {
            return Err(ComposeError::Image(image.to_owned()));
        }
        let services = services
            .into_iter()
            .map(|s| {
                let s = s.into();
                object_name(&s).map_err(|_| ComposeError::Service(s))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if services.is_empty() {
            return Err(ComposeError::NoServices);
        }
        Ok(Self {
            name: name.into(),
            image: image.to_owned(),
            tag: "latest".to_owned(),
            project_dir: project_dir.into(),
            files: Vec::new(),
            project: None,
            services,
            compose: Arc::new(OnceLock::new()),
            labelled: Arc::new(OnceLock::new()),
            health: Health::None,
            health_timeout: Duration::from_secs(30),
            docker: Docker::new(),
        })
    }

    /// The tag the services' `image:` names; default `latest`. [`inspect`](Self::inspect)
    /// sets it from the file.
    pub fn tag(mut self, tag: &str) -> Result<Self, ComposeError> {
        check_tag(tag).map_err(|_| ComposeError::Tag(tag.to_owned()))?;
        self.tag = tag.to_owned();
        Ok(self)
    }

    /// The compose files (`-f`), relative to the project folder; default: Compose's own
    /// (`compose.yaml`, `docker-compose.yml`, …).
    #[must_use]
    pub fn files<I: IntoIterator<Item = P>, P: Into<PathBuf>>(mut self, files: I) -> Self {
        self.files = files.into_iter().map(Into::into).collect();
        self
    }

    /// The project name (`-p`); default: Compose's own (the folder's name).
    #[must_use]
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }

    /// The compose command as argv; default `docker compose`, or `docker-compose` when
    /// the plugin is missing.
    pub fn compose_command<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        argv: I,
    ) -> Result<Self, ComposeError> {
        let argv: Vec<String> = argv.into_iter().map(Into::into).collect();
        if argv.first().is_none_or(String::is_empty) {
            return Err(ComposeError::Command);
        }
        self.compose = Arc::new(OnceLock::from(argv));
        Ok(self)
    }

    /// The health gate for each recreated container; default [`Health::None`].
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

    /// How long one compose or docker command may take; default
    /// [`DEFAULT_STEP_TIMEOUT`](super::DEFAULT_STEP_TIMEOUT).
    #[must_use]
    pub fn step_timeout(mut self, timeout: Duration) -> Self {
        self.docker.step_timeout = timeout;
        self
    }

    /// The `docker` binary for `inspect` and `tag`; default `docker` from `PATH`.
    #[must_use]
    pub fn docker_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.docker.binary = path.into();
        self
    }

    /// The daemon to talk to (`DOCKER_HOST`).
    #[must_use]
    pub fn docker_host(mut self, host: impl Into<String>) -> Self {
        self.docker.host = Some(host.into());
        self
    }

    /// How long a server waits at shutdown for a deploy in progress: the health timeout
    /// and 20 s for Compose to stop the old container and start the new one. A deploy
    /// cut short past it leaves the service as Compose left it; the next push or a
    /// `compose up -d` converges it.
    pub fn swap_bound(&self) -> Duration {
        self.health_timeout.saturating_add(Duration::from_secs(20))
    }

    /// The configured repository.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The one tag this handler deploys.
    pub fn deployed_tag(&self) -> &str {
        &self.tag
    }

    /// The compose command in use (found now when it was not set: `docker compose`, with
    /// the configured docker binary, if the plugin answers `version`, else
    /// `docker-compose`). Finding it runs a command and blocks: [`inspect`](Self::inspect)
    /// does it at start-up.
    pub fn compose_argv(&self) -> &[String] {
        self.compose.get_or_init(|| {
            // The plugin of the configured docker binary, as `docker compose` would be.
            let plugin = std::process::Command::new(&self.docker.binary)
                .args([PLUGIN, "version"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            match plugin {
                true => vec![self.docker.binary.display().to_string(), PLUGIN.to_owned()],
                false => vec![STANDALONE.to_owned()],
            }
        })
    }

    /// Runs `compose config` once (it blocks: call it at start-up) and checks that every
    /// configured service exists and runs the configured repository; returns the handler
    /// with the tag the file names.
    pub fn inspect(mut self) -> Result<Self, ComposeError> {
        if !self.project_dir.is_dir() {
            return Err(ComposeError::ProjectDir(
                self.project_dir.display().to_string(),
            ));
        }
        let mut command = self.command(&["config"]).into_std();
        command.stdin(std::process::Stdio::null());
        if let Some(host) = &self.docker.host {
            command.env("DOCKER_HOST", host);
        }
        let output = command.output().map_err(|e| {
            ComposeError::Missing(format!("cannot run {}: {e}", self.compose_argv().join(" ")))
        })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(ComposeError::Invalid(tail(stderr.trim())));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let project: Project = serde_yaml::from_str(&text)
            .map_err(|e| ComposeError::Invalid(format!("cannot read `compose config`: {e}")))?;
        let mut tags = Vec::new();
        for service in &self.services {
            let Some(found) = project.services.get(service) else {
                let known: Vec<&str> = project.services.keys().map(String::as_str).collect();
                return Err(ComposeError::UnknownService {
                    service: service.clone(),
                    known: known.join(", "),
                });
            };
            let written = found.image.clone().unwrap_or_default();
            let (repo, tag) = split_tag(&written);
            if normalize(repo) != normalize(&self.image) {
                return Err(ComposeError::WrongImage {
                    service: service.clone(),
                    found: written,
                    image: self.image.clone(),
                });
            }
            if !tags.iter().any(|t| t == tag) {
                tags.push(tag.to_owned());
            }
        }
        match tags.as_slice() {
            [tag] => self.tag = tag.clone(),
            _ => {
                return Err(ComposeError::Tags {
                    image: self.image.clone(),
                    tags: tags.join(", "),
                })
            }
        }
        Ok(self)
    }

    /// `-f FILE… -p NAME` then `args`.
    fn compose_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a std::ffi::OsStr> {
        let argv = self.compose_argv();
        let mut out: Vec<&std::ffi::OsStr> = argv[1..].iter().map(|a| a.as_ref()).collect();
        for file in &self.files {
            out.push("-f".as_ref());
            out.push(file.as_os_str());
        }
        if let Some(project) = &self.project {
            out.push("-p".as_ref());
            out.push(project.as_ref());
        }
        out.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
        out
    }

    /// `compose ARGS` in the project folder, with no input and this daemon.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.compose_argv()[0]);
        command
            .args(self.compose_args(args))
            .current_dir(&self.project_dir);
        command
    }

    /// Runs `compose ARGS SERVICES` in the project folder within the step timeout.
    async fn compose(&self, args: &[&str], ctx: Option<&Context>) -> Result<String, Failure> {
        let mut all = args.to_vec();
        all.extend(self.services.iter().map(String::as_str));
        let command = self.command(&all);
        let verb = format!("compose {}", args.first().copied().unwrap_or(""));
        let run = self.docker.output(command, &verb, self.docker.step_timeout);
        match ctx {
            Some(ctx) => tokio::select! {
                result = run => result,
                () = ctx.cancelled() => Err(Failure::Cancelled),
            },
            None => run.await,
        }
    }

    /// `service`'s containers (one-off ones aside), with whether each runs: by the
    /// project's label once it is known (one `docker ps`), else through `compose ps`
    /// (whose list, in Compose v2, holds running containers only).
    async fn containers(&self, service: &str) -> Result<Vec<Listed>, Failure> {
        match self.labelled.get() {
            Some(project) => {
                let project = format!("label=com.docker.compose.project={project}");
                let service = format!("label=com.docker.compose.service={service}");
                let listed = self
                    .docker
                    .run(&[
                        "ps",
                        "--all",
                        "--no-trunc",
                        "--filter",
                        &project,
                        "--filter",
                        &service,
                        "--filter",
                        "label=com.docker.compose.oneoff=False",
                        "--format",
                        "{{.ID}} {{.State}}",
                    ])
                    .await?;
                Ok(listed
                    .lines()
                    .filter_map(|line| {
                        let (id, state) = line.split_once(' ')?;
                        // Stopped for good: exited, created and never started, dead.
                        // Anything else (running, restarting, paused) counts as the
                        // service's.
                        let stopped = matches!(state.trim(), "exited" | "created" | "dead");
                        Some(Listed {
                            id: id.to_owned(),
                            running: !stopped,
                        })
                    })
                    .collect())
            }
            None => {
                let command = self.command(&["ps", "-q", service]);
                let ids = self
                    .docker
                    .output(command, "compose ps", self.docker.step_timeout)
                    .await?;
                // No state here; `inspect` of the first one teaches the label, and the
                // next listing has states.
                Ok(ids
                    .split_whitespace()
                    .map(|id| Listed {
                        id: id.to_owned(),
                        running: true,
                    })
                    .collect())
            }
        }
    }

    /// Before `up`: each service's containers, and the image id of the one it runs
    /// (a running container first, so that a stopped leftover of a scale change is not
    /// taken for it), in service order.
    async fn running_images(&self) -> Result<Before, Failure> {
        let mut before = Before::default();
        for service in &self.services {
            let mut listed = self.containers(service).await?;
            if self.labelled.get().is_none() {
                if let Some(first) = listed.first() {
                    // Learn the project's label, then list again with each one's state.
                    self.image_of(&first.id).await?;
                    if self.labelled.get().is_some() {
                        listed = self.containers(service).await?;
                    }
                }
            }
            let image = match listed.iter().find(|c| c.running).or(listed.first()) {
                Some(c) => Some(self.image_of(&c.id).await?),
                None => None,
            };
            before.images.push(image);
            before.ids.extend(listed.into_iter().map(|c| c.id));
        }
        Ok(before)
    }

    /// The image id container `id` runs; learns the project's label on the way.
    async fn image_of(&self, id: &str) -> Result<String, Failure> {
        let found = self
            .docker
            .run(&[
                "inspect",
                "--format",
                "{{.Image}} {{index .Config.Labels \"com.docker.compose.project\"}}",
                id,
            ])
            .await?;
        let mut fields = found.split_whitespace();
        let image = fields.next().unwrap_or_default().to_owned();
        if let Some(project) = fields.next() {
            let _ = self.labelled.set(project.to_owned());
        }
        Ok(image)
    }

    /// Checks what the payload chose: this repository and exactly the file's tag.
    fn check_message(&self, msg: &HubMessage) -> Result<String, HandlerError> {
        let tag = pushed_tag(&self.image, msg)?;
        if tag != self.tag {
            return Err(HandlerError::Rejected(format!(
                "tag {tag} is not the tag the compose file names ({}); Compose deploys only that one",
                self.tag
            )));
        }
        Ok(format!("{}:{tag}", self.image))
    }

    /// Pull, record, up, gate; roll back on failure.
    async fn deploy(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        let started = Instant::now();
        let tagged = self.check_message(msg)?;
        let services = self.services.join(", ");
        let early = |what: &str, e: Failure| e.nothing_changed(what);
        self.compose(&["pull"], Some(ctx))
            .await
            .map_err(|e| early("pull failed", e))?;
        if let Some(digest) = msg.digest() {
            let known = self
                .docker
                .run(&[
                    "image",
                    "inspect",
                    "--format",
                    "{{range .RepoDigests}}{{.}} {{end}}",
                    &tagged,
                ])
                .await
                .map_err(|e| early("cannot inspect the pulled image", e))?;
            if !known
                .split_whitespace()
                .any(|d| d.rsplit_once('@').is_some_and(|(_, d)| d == digest))
            {
                return Err(HandlerError::Rejected(format!(
                    "{tagged} does not point to the pushed digest {digest} (a newer push won, or \
                     the payload names another build); nothing changed"
                )));
            }
        }
        let before = self
            .running_images()
            .await
            .map_err(|e| early("cannot read the running containers", e))?;
        // From here on the steps run to their end: a cancelled run must not leave a
        // service half-recreated without its rollback.
        let result = match self.compose(&["up", "-d", "--no-deps"], None).await {
            Ok(_) => self.gate(ctx, &before.ids).await,
            Err(e) => Err(format!("compose up failed: {e}")),
        };
        match result {
            Ok(()) => Ok(Outcome::new(format!(
                "deployed {tagged} to {services} in {:.1?}",
                started.elapsed()
            ))),
            Err(reason) => {
                let cut_short = ctx.is_cancelled();
                let failure = self.roll_back(&tagged, &before.images, &reason).await;
                Err(super::owed_if_cancelled(failure, cut_short, &self.name))
            }
        }
    }

    /// The health gate on each service's containers after `up`: those it created (not
    /// among `before`, whatever their state: one that exited at once fails) and those it
    /// kept running. A stopped container that was there before (a leftover of a scale
    /// change) is not the service's and is left out.
    async fn gate(&self, ctx: &Context, before: &[String]) -> Result<(), String> {
        for service in &self.services {
            let ids: Vec<String> = self
                .containers(service)
                .await
                .map_err(|e| format!("cannot find {service}'s new container: {e}"))?
                .into_iter()
                .filter(|c| c.running || !before.contains(&c.id))
                .map(|c| c.id)
                .collect();
            if ids.is_empty() {
                return Err(format!("gate failed: {service} has no container after up"));
            }
            for id in ids {
                health::gate(&self.docker, &id, &self.health, self.health_timeout, ctx)
                    .await
                    .map_err(|e| format!("gate failed for {service}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Points `tagged` at the image the services ran before and recreates them again.
    async fn roll_back(
        &self,
        tagged: &str,
        before: &[Option<String>],
        reason: &str,
    ) -> HandlerError {
        // One image for all the services: they name one tag.
        let Some(previous) = before.iter().flatten().next() else {
            return failed(format!(
                "{reason}; no previous container to roll back to, the new one is left as it is"
            ));
        };
        if let Err(e) = self.docker.run(&["tag", previous, tagged]).await {
            return failed(format!("{reason}; rollback failed: docker tag: {e}"));
        }
        match self.compose(&["up", "-d", "--no-deps"], None).await {
            Ok(_) => failed(format!(
                "{reason}; rolled back: {tagged} points at {} again and the services run it",
                short(previous)
            )),
            Err(e) => failed(format!("{reason}; rollback failed: compose up: {e}")),
        }
    }

    fn lock_key(&self) -> String {
        format!(
            "{}|compose|{}|{}",
            self.docker.host.as_deref().unwrap_or(""),
            self.project_dir.display(),
            self.project.as_deref().unwrap_or("")
        )
    }
}

#[async_trait]
impl Handler for ComposeHandler {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        // Everything the payload chooses is checked before any command.
        self.check_message(msg)?;
        // One deploy per project at a time, in its own task (see the docker handler).
        let (this, msg, inner) = (self.clone(), msg.clone(), ctx.clone());
        own_task(&self.lock_key(), ctx, async move {
            this.deploy(&msg, &inner).await
        })
        .await
    }
}

/// What `compose config` prints, as far as it is read here.
#[derive(Deserialize)]
struct Project {
    #[serde(default)]
    services: std::collections::BTreeMap<String, ServiceConfig>,
}

#[derive(Deserialize)]
struct ServiceConfig {
    image: Option<String>,
}

/// A container of a service, as `docker ps` lists it.
#[derive(Debug)]
struct Listed {
    id: String,
    running: bool,
}

/// What ran before a deploy: each service's image (for the rollback) and every container
/// of the services (so the gate can tell a leftover from what `up` made).
#[derive(Debug, Default)]
struct Before {
    images: Vec<Option<String>>,
    ids: Vec<String>,
}

/// `repo:tag` → (`repo`, `tag`); the tag is `latest` when none is written. A `:` before
/// the last `/` is a registry port, not a tag.
fn split_tag(image: &str) -> (&str, &str) {
    let image = image.split('@').next().unwrap_or(image);
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

/// `sha256:0123456789ab…` → `sha256:0123456789ab`.
fn short(id: &str) -> &str {
    id.get(..19).unwrap_or(id)
}

/// The last line of a command's error output (Compose ends a traceback with the error
/// itself), at most 400 characters.
fn tail(text: &str) -> String {
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    line.trim().chars().take(400).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_split_after_the_registry_port() {
        assert_eq!(split_tag("acme/site"), ("acme/site", "latest"));
        assert_eq!(split_tag("acme/site:v2"), ("acme/site", "v2"));
        assert_eq!(
            split_tag("127.0.0.1:5000/acme/site"),
            ("127.0.0.1:5000/acme/site", "latest")
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/acme/site:v2"),
            ("127.0.0.1:5000/acme/site", "v2")
        );
    }

    #[test]
    fn configuration_is_checked() {
        assert!(ComposeHandler::new("c", "acme/site", "/srv", ["web"]).is_ok());
        assert_eq!(
            ComposeHandler::new("c", "acme/site:v1", "/srv", ["web"]).err(),
            Some(ComposeError::Image("acme/site:v1".into()))
        );
        assert_eq!(
            ComposeHandler::new("c", "acme/site", "/srv", ["-web"]).err(),
            Some(ComposeError::Service("-web".into()))
        );
        assert_eq!(
            ComposeHandler::new("c", "acme/site", "/srv", Vec::<String>::new()).err(),
            Some(ComposeError::NoServices)
        );
        let h = ComposeHandler::new("c", "acme/site", "/srv", ["web"]).expect("valid");
        assert!(h.clone().compose_command(Vec::<String>::new()).is_err());
        assert!(h.tag("-v1").is_err());
    }
}
