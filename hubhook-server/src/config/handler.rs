//! `[[handler]]` tables: the keys every handler has, then each type's own.

use super::*;

/// Where a handler's table is: its index, its place in the text, and the folder paths
/// resolve from.
pub(super) struct Table<'a> {
    index: usize,
    span: Range<usize>,
    base: &'a Path,
}

impl Table<'_> {
    /// `handler[2].command`.
    fn key(&self, k: &str) -> String {
        format!("handler[{}].{k}", self.index)
    }
}

impl Parser<'_> {
    pub(super) fn handler(
        &self,
        index: usize,
        table: &Spanned<RawHandler>,
        base: &Path,
    ) -> Result<HandlerSpec, ConfigError> {
        let at = Table {
            index,
            span: table.span(),
            base,
        };
        let raw = table.get_ref();
        let Some(kind) = raw.kind else {
            return Err(self.error_at(
                at.span.clone(),
                &at.key("type"),
                format!(
                    "missing required key `type` (one of: {})",
                    HandlerType::ALL.map(HandlerType::name).join(", ")
                ),
            ));
        };
        let name = match &raw.name {
            Some(name) => {
                let text = name.get_ref();
                if text.is_empty() || text.len() > 64 || text.chars().any(char::is_control) {
                    return Err(self.error_at(
                        name.span(),
                        &at.key("name"),
                        "must be 1 to 64 characters, without control characters".into(),
                    ));
                }
                // The journal records the callback and notifications under these.
                if text == "callback" || text.starts_with("notify:") {
                    return Err(self.error_at(
                        name.span(),
                        &at.key("name"),
                        format!("{text:?} is hubhook's own name for the callback and notifications; choose another"),
                    ));
                }
                text.clone()
            }
            None => kind.name().to_owned(),
        };
        let program_line = match kind {
            HandlerType::Shell => Some(self.key_span(at.span.clone(), "command")),
            HandlerType::Docker => Some(self.key_span(at.span.clone(), "docker")),
            HandlerType::Compose => Some(self.key_span(at.span.clone(), "compose")),
            _ => None,
        }
        .map(|span| self.line_of(span.start));
        let (mut repo, mut tag) = (raw.repo.clone(), raw.tag.clone());
        let rest = raw.rest.clone();
        let kind = match kind {
            HandlerType::Log => HandlerKind::Log {
                format: self.rest::<RawLog>(&at, rest)?.format,
            },
            HandlerType::Shell => self.shell_handler(&at, rest)?,
            HandlerType::Docker => self.docker_handler(&at, rest, &name, &mut repo, &mut tag)?,
            HandlerType::Compose => self.compose_handler(&at, rest, &name, &mut repo, &mut tag)?,
            HandlerType::Plugin => self.plugin_handler(&at, rest, &name)?,
        };
        Ok(HandlerSpec {
            name,
            repo,
            tag,
            timeout: raw.timeout.map(|HumanDuration(t)| t),
            queue: self.queue(&at, raw)?,
            kind,
            program_line,
        })
    }

    /// `type = "shell"`: the program, made absolute when it is the config's neighbour.
    fn shell_handler(&self, at: &Table<'_>, rest: toml::Table) -> Result<HandlerKind, ConfigError> {
        let base = at.base;
        let shell: RawShell = self.rest(at, rest)?;
        if shell.command.first().is_none_or(String::is_empty) {
            return Err(self.error_at(
                self.key_span(at.span.clone(), "command"),
                &at.key("command"),
                "must name the program to run: command = [\"/path/to/script\", \"arg\"]".into(),
            ));
        }
        // A program named by a relative path (with a '/') is the config's
        // neighbour, like every other path in the file; a bare name is looked up
        // in PATH as a shell would. It is made absolute: the program starts in
        // `workdir`, where a relative path would name another file.
        let mut command = shell.command;
        if command[0].contains('/') && Path::new(&command[0]).is_relative() {
            let path = resolve(base, &command[0]);
            command[0] = std::path::absolute(&path)
                .unwrap_or(path)
                .display()
                .to_string();
        }
        Ok(HandlerKind::Shell {
            command,
            workdir: shell.workdir.map(|dir| resolve(base, dir)),
            env: shell.env,
            output_tail: shell.output_tail,
        })
    }

    /// `type = "docker"`: a container or a Swarm service, and how it is gated.
    fn docker_handler(
        &self,
        at: &Table<'_>,
        rest: toml::Table,
        name: &str,
        repo: &mut Option<String>,
        tag: &mut Option<String>,
    ) -> Result<HandlerKind, ConfigError> {
        let base = at.base;
        let raw: RawDocker = self.rest(at, rest)?;
        let table = at;
        let at = |k: &str, message: String| self.key_error(table, k, message);
        // The deployed tags: the `tag` pattern, `latest` unless it says otherwise.
        let pattern = tag.get_or_insert_with(|| "latest".to_owned()).clone();
        default_repo(repo, &raw.image);
        let mut handler = self
            .docker_target(table, &raw, name)?
            .tag(pattern)
            .cleanup(raw.cleanup);
        if let Some(HumanDuration(t)) = raw.stop_timeout {
            handler = handler.stop_timeout(t);
        }
        if let Some(HumanDuration(t)) = raw.health_timeout {
            handler = handler.health_timeout(t);
        }
        if let Some(HumanDuration(t)) = raw.step_timeout {
            handler = handler.step_timeout(t);
        }
        if let Some(health) = &raw.health {
            handler = handler.health(
                DockerHandler::parse_health(health).map_err(|e| at("health", e.to_string()))?,
            );
        }
        handler = self.strategy(&raw, handler, base, &at)?;
        if let Some(bin) = &raw.docker {
            handler = handler.docker_binary(program(base, bin));
        }
        if let Some(host) = &raw.docker_host {
            handler = handler.docker_host(host);
        }
        Ok(HandlerKind::Docker(Box::new(handler)))
    }

    /// The container or the Swarm service a docker handler deploys, with the keys that
    /// apply to a service refused when set.
    fn docker_target(
        &self,
        table: &Table<'_>,
        raw: &RawDocker,
        name: &str,
    ) -> Result<DockerHandler, ConfigError> {
        let at = |k: &str, message: String| self.key_error(table, k, message);
        match (&raw.container, &raw.service) {
            (Some(c), None) => DockerHandler::container(name, &raw.image, c)
                .map(|h| h.run_args(raw.run_args.clone()).command(raw.command.clone())),
            (None, Some(s)) => {
                // Keys a Swarm update cannot honour are refused, not ignored: a
                // `health` that gated nothing would promise what it does not do.
                let container_only = [
                    ("run_args", !raw.run_args.is_empty(), "a service keeps its own settings"),
                    ("command", !raw.command.is_empty(), "a service keeps its own settings"),
                    ("health", raw.health.is_some(), "Swarm gates a service update with the image's HEALTHCHECK and rolls back by itself"),
                    ("health_timeout", raw.health_timeout.is_some(), "Swarm gates a service update with the image's HEALTHCHECK and rolls back by itself"),
                    ("stop_timeout", raw.stop_timeout.is_some(), "set the service's own --stop-grace-period"),
                    ("cleanup", raw.cleanup, "every node keeps its own images"),
                    ("strategy", raw.strategy.is_some(), "Swarm's update order is the service's own --update-order"),
                ];
                if let Some((k, _, why)) = container_only.iter().find(|(_, set, _)| *set) {
                    return Err(at(k, format!("applies to containers only: {why}")));
                }
                DockerHandler::service(name, &raw.image, s)
            }
            _ => {
                return Err(self.error_at(
                    table.span.clone(),
                    &table.key("container"),
                    "set exactly one of `container` (a container to redeploy) or `service` (a Swarm service)".into(),
                ))
            }
        }
        .map_err(|e| {
            let k = match e {
                hubhook_handlers::DockerError::Image(_) => "image",
                _ if raw.container.is_some() => "container",
                _ => "service",
            };
            at(k, e.to_string())
        })
    }

    /// `type = "compose"`: services of a Compose project, checked against the project's
    /// own `compose config` now; the deployed tag is the one the file names.
    fn compose_handler(
        &self,
        at: &Table<'_>,
        rest: toml::Table,
        name: &str,
        repo: &mut Option<String>,
        tag: &mut Option<String>,
    ) -> Result<HandlerKind, ConfigError> {
        let raw: RawCompose = self.rest(at, rest)?;
        let error =
            |k: &str, e: hubhook_handlers::ComposeError| self.key_error(at, k, e.to_string());
        let mut handler = ComposeHandler::new(
            name,
            &raw.image,
            resolve(at.base, &raw.project_dir),
            raw.services.iter().cloned(),
        )
        .map_err(|e| match e {
            hubhook_handlers::ComposeError::Image(_) => error("image", e),
            _ => error("services", e),
        })?
        .files(raw.files.iter().map(PathBuf::from));
        if let Some(project) = &raw.project {
            handler = handler.project(project);
        }
        if let Some(argv) = &raw.compose {
            handler = handler
                .compose_command(argv.iter().cloned())
                .map_err(|e| error("compose", e))?;
        }
        if let Some(health) = &raw.health {
            handler = handler.health(
                DockerHandler::parse_health(health)
                    .map_err(|e| self.key_error(at, "health", e.to_string()))?,
            );
        }
        if let Some(HumanDuration(t)) = raw.health_timeout {
            handler = handler.health_timeout(t);
        }
        if let Some(HumanDuration(t)) = raw.step_timeout {
            handler = handler.step_timeout(t);
        }
        if let Some(bin) = &raw.docker {
            handler = handler.docker_binary(program(at.base, bin));
        }
        if let Some(host) = &raw.docker_host {
            handler = handler.docker_host(host);
        }
        // `compose config`, once: the services exist, run this repository, and name a tag.
        let handler = handler.inspect().map_err(|e| match e {
            hubhook_handlers::ComposeError::Missing(_) => error("compose", e),
            hubhook_handlers::ComposeError::Invalid(_)
            | hubhook_handlers::ComposeError::ProjectDir(_) => error("project_dir", e),
            _ => error("services", e),
        })?;
        let named = handler.deployed_tag();
        match tag.as_deref() {
            Some(wanted) if wanted != named => {
                return Err(self.key_error(at, "tag", format!(
                    "the compose file names tag {named:?}, and Compose pulls what its file names: \
                     to follow {wanted:?}, write the tag in the file (a variable such as ${{SITE_TAG}} \
                     works) and leave `tag` out"
                )))
            }
            _ => *tag = Some(named.to_owned()),
        }
        default_repo(repo, &raw.image);
        Ok(HandlerKind::Compose(Box::new(handler)))
    }

    /// `type = "plugin"`: loaded and initialised now, so `check` catches a bad plugin.
    fn plugin_handler(
        &self,
        at: &Table<'_>,
        rest: toml::Table,
        name: &str,
    ) -> Result<HandlerKind, ConfigError> {
        let raw: RawPlugin = self.rest(at, rest)?;
        let config = serde_json::to_value(&raw.config)
            .map_err(|e| self.key_error(at, "config", e.to_string()))?;
        // Loaded and initialised now: `hubhook check` catches a bad plugin too.
        let plugin = PluginHandler::load(resolve(at.base, &raw.path), &config)
            .map_err(|e| self.key_error(at, "path", e.to_string()))?
            .with_name(name);
        Ok(HandlerKind::Plugin(plugin))
    }

    /// `strategy` with its keys: stop-first (the default), or blue-green behind nginx with
    /// two `ports`, an `upstream_file` and a `reload` command.
    pub(super) fn strategy(
        &self,
        raw: &RawDocker,
        handler: DockerHandler,
        base: &Path,
        at: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<DockerHandler, ConfigError> {
        match raw.strategy {
            None | Some(Strategy::StopFirst) => {
                for (k, set) in [
                    ("ports", raw.ports.is_some()),
                    ("upstream_file", raw.upstream_file.is_some()),
                    ("reload", raw.reload.is_some()),
                ] {
                    if set {
                        return Err(at(k, "applies to strategy = \"blue-green\" only".into()));
                    }
                }
                Ok(handler)
            }
            Some(Strategy::BlueGreen) => {
                if raw.container.is_none() {
                    return Err(at("strategy", "blue-green applies to a `container`".into()));
                }
                if let Some(flag) = raw.run_args.iter().find(|a| {
                    *a == "-p" || a.starts_with("--publish") || (a.starts_with("-p") && a.len() > 2)
                }) {
                    return Err(at(
                        "run_args",
                        format!("{flag:?} publishes a port: with blue-green, `ports` says which, in turn"),
                    ));
                }
                let ports = match raw.ports.as_deref() {
                    Some([a, b]) => [a.as_str(), b.as_str()],
                    _ => {
                        return Err(at(
                            "ports",
                            "blue-green needs two port mappings used in turn: ports = [\"127.0.0.1:8001:80\", \"127.0.0.1:8002:80\"]".into(),
                        ))
                    }
                };
                let Some(upstream) = &raw.upstream_file else {
                    return Err(at(
                        "upstream_file",
                        "blue-green needs the file nginx includes in its upstream block (upstream_file = \"/etc/nginx/hubhook/site.upstream\")".into(),
                    ));
                };
                let mut bg = hubhook_handlers::BlueGreen::new(ports, resolve(base, upstream))
                    .map_err(|e| at("ports", e.to_string()))?;
                if let Some(reload) = &raw.reload {
                    if reload.first().is_none_or(String::is_empty) {
                        return Err(at("reload", "must name the program to run: reload = [\"nginx\", \"-s\", \"reload\"]".into()));
                    }
                    bg = bg.reload(reload.clone());
                }
                Ok(handler.blue_green(bg))
            }
        }
    }

    /// A handler's queue keys: `coalesce`, `max_concurrency`, `max_queued`, `retries`,
    /// `retry_backoff`; the counts within their bounds.
    fn queue(&self, at: &Table<'_>, raw: &RawHandler) -> Result<QueueSpec, ConfigError> {
        let count = |k: &str, value: &Option<Spanned<i64>>, min: i64, max: i64| match value {
            None => Ok(None),
            Some(n) if (min..=max).contains(n.get_ref()) => Ok(Some(*n.get_ref())),
            Some(n) => Err(self.error_at(
                n.span(),
                &at.key(k),
                format!(
                    "must be a whole number from {min} to {max}, not {}",
                    n.get_ref()
                ),
            )),
        };
        Ok(QueueSpec {
            coalesce: raw.coalesce,
            max_concurrency: count("max_concurrency", &raw.max_concurrency, 1, 1024)?
                .map(|n| n as usize),
            max_queued: count("max_queued", &raw.max_queued, 1, 1_000_000)?.map(|n| n as usize),
            retries: count("retries", &raw.retries, 0, 100)?.map(|n| n as u32),
            retry_backoff: raw.retry_backoff.map(|HumanDuration(t)| t),
        })
    }

    /// Deserializes a handler type's own keys; unknown keys are errors naming the key.
    fn rest<T: for<'de> Deserialize<'de>>(
        &self,
        at: &Table<'_>,
        rest: toml::Table,
    ) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(rest)).map_err(|e| {
            let (name, message) = offending_key(e);
            self.key_error(at, &name, message)
        })
    }

    /// An error about key `k` of the handler table, on the line that sets it.
    fn key_error(&self, at: &Table<'_>, k: &str, message: String) -> ConfigError {
        self.error_at(self.key_span(at.span.clone(), k), &at.key(k), message)
    }
}

/// A program named in the file: like a shell command's, a relative path (with a `/`) is
/// the config's neighbour, a bare name is looked up in `PATH`.
fn program(base: &Path, name: &str) -> PathBuf {
    match name.contains('/') && Path::new(name).is_relative() {
        true => resolve(base, name),
        false => PathBuf::from(name),
    }
}

/// A handler of `image` gets pushes of that repository only, unless `repo` says which:
/// pushes of other repositories need not even reach it.
fn default_repo(repo: &mut Option<String>, image: &str) {
    if repo.is_none() {
        let (_, path) = hubhook_core::reference::split_registry(image);
        if path.contains('/') {
            *repo = Some(path.to_owned());
        }
    }
}
