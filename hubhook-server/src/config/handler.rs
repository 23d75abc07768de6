//! `[[handler]]` tables: the keys every handler has, then each type's own.

use super::*;

/// Where a handler's table is: its index, its text, and the folder paths resolve from.
pub(super) struct Table<'a> {
    index: usize,
    table: &'a Spanned<toml::Table>,
    base: &'a Path,
}

impl Parser<'_> {
    pub(super) fn handler(
        &self,
        index: usize,
        table: &Spanned<toml::Table>,
        base: &Path,
    ) -> Result<HandlerSpec, ConfigError> {
        let key = |k: &str| format!("handler[{index}].{k}");
        let mut rest = table.get_ref().clone();
        let mut take_string = |k: &str| self.take_string(index, table, &mut rest, k);
        let Some(kind) = take_string("type")? else {
            return Err(self.error_at(
                table.span(),
                &key("type"),
                format!(
                    "missing required key `type` (one of: {})",
                    HANDLER_TYPES.join(", ")
                ),
            ));
        };
        let name = take_string("name")?.unwrap_or_else(|| kind.clone());
        let mut repo = take_string("repo")?;
        let mut tag = take_string("tag")?;
        let timeout = take_string("timeout")?
            .map(|t| self.handler_duration(table, &key("timeout"), "timeout", &t))
            .transpose()?;
        let queue = self.queue(index, table, &mut rest)?;
        let program_line = match kind.as_str() {
            "shell" => Some(self.key_span(table, "command")),
            "docker" => Some(self.key_span(table, "docker")),
            _ => None,
        }
        .map(|span| self.line_of(span.start));
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(self.error_at(
                self.key_span(table, "name"),
                &key("name"),
                "must be 1 to 64 characters, without control characters".into(),
            ));
        }
        let at = Table { index, table, base };
        let kind = match kind.as_str() {
            "log" => self.log_handler(&at, rest)?,
            "shell" => self.shell_handler(&at, rest)?,
            "docker" => self.docker_handler(&at, rest, &name, &mut repo, &mut tag)?,
            "plugin" => self.plugin_handler(&at, rest, &name)?,
            other => {
                return Err(self.error_at(
                    self.key_span(table, "type"),
                    &key("type"),
                    format!(
                        "unknown handler type {other:?} (expected one of: {})",
                        HANDLER_TYPES.join(", ")
                    ),
                ))
            }
        };
        Ok(HandlerSpec {
            name,
            repo,
            tag,
            timeout,
            queue,
            kind,
            program_line,
        })
    }

    /// `type = "log"`: the line format.
    fn log_handler(&self, at: &Table<'_>, rest: toml::Table) -> Result<HandlerKind, ConfigError> {
        let (index, table) = (at.index, at.table);
        let key = |k: &str| format!("handler[{index}].{k}");
        let log: RawLog = self.rest(index, table, rest)?;
        let format = match log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(self.error_at(
                    self.key_span(table, "format"),
                    &key("format"),
                    format!("unknown log format {other:?} (expected \"text\" or \"json\")"),
                ))
            }
        };
        Ok(HandlerKind::Log { format })
    }

    /// `type = "shell"`: the program, made absolute when it is the config's neighbour.
    fn shell_handler(&self, at: &Table<'_>, rest: toml::Table) -> Result<HandlerKind, ConfigError> {
        let (index, table, base) = (at.index, at.table, at.base);
        let key = |k: &str| format!("handler[{index}].{k}");
        let shell: RawShell = self.rest(index, table, rest)?;
        if shell.command.first().is_none_or(String::is_empty) {
            return Err(self.error_at(
                self.key_span(table, "command"),
                &key("command"),
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
        let (index, table, base) = (at.index, at.table, at.base);
        let key = |k: &str| format!("handler[{index}].{k}");
        let raw: RawDocker = self.rest(index, table, rest)?;
        let at =
            |k: &str, message: String| self.error_at(self.key_span(table, k), &key(k), message);
        let duration = |k: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|t| self.handler_duration(table, &key(k), k, t))
                .transpose()
        };
        // The deployed tags: the `tag` pattern, `latest` unless it says otherwise.
        let pattern = tag.get_or_insert_with(|| "latest".to_owned()).clone();
        // Pushes of other repositories need not even reach the handler.
        if repo.is_none() {
            let (_, path) = hubhook_core::reference::split_registry(&raw.image);
            if path.contains('/') {
                *repo = Some(path.to_owned());
            }
        }
        let mut handler = self
            .docker_target(table, &key, &raw, name)?
            .tag(pattern)
            .cleanup(raw.cleanup);
        if let Some(t) = duration("stop_timeout", &raw.stop_timeout)? {
            handler = handler.stop_timeout(t);
        }
        if let Some(t) = duration("health_timeout", &raw.health_timeout)? {
            handler = handler.health_timeout(t);
        }
        if let Some(t) = duration("step_timeout", &raw.step_timeout)? {
            handler = handler.step_timeout(t);
        }
        if let Some(health) = &raw.health {
            handler = handler.health(
                DockerHandler::parse_health(health).map_err(|e| at("health", e.to_string()))?,
            );
        }
        handler = self.strategy(&raw, handler, base, &at)?;
        if let Some(bin) = &raw.docker {
            // Like a shell command: a relative path is the config's neighbour.
            let bin = match bin.contains('/') && Path::new(bin).is_relative() {
                true => resolve(base, bin),
                false => PathBuf::from(bin),
            };
            handler = handler.docker_binary(bin);
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
        table: &Spanned<toml::Table>,
        key: &dyn Fn(&str) -> String,
        raw: &RawDocker,
        name: &str,
    ) -> Result<DockerHandler, ConfigError> {
        let at =
            |k: &str, message: String| self.error_at(self.key_span(table, k), &key(k), message);
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
                    table.span(),
                    &key("container"),
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

    /// `type = "plugin"`: loaded and initialised now, so `check` catches a bad plugin.
    fn plugin_handler(
        &self,
        at: &Table<'_>,
        rest: toml::Table,
        name: &str,
    ) -> Result<HandlerKind, ConfigError> {
        let (index, table, base) = (at.index, at.table, at.base);
        let key = |k: &str| format!("handler[{index}].{k}");
        let raw: RawPlugin = self.rest(index, table, rest)?;
        let config = serde_json::to_value(&raw.config).map_err(|e| {
            self.error_at(
                self.key_span(table, "config"),
                &key("config"),
                e.to_string(),
            )
        })?;
        // Loaded and initialised now: `hubhook check` catches a bad plugin too.
        let plugin = PluginHandler::load(resolve(base, &raw.path), &config)
            .map_err(|e| self.error_at(self.key_span(table, "path"), &key("path"), e.to_string()))?
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
        match raw.strategy.as_deref() {
            None | Some("stop-first") => {
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
            Some("blue-green") => {
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
            Some(other) => Err(at(
                "strategy",
                format!("unknown strategy {other:?} (expected \"stop-first\" or \"blue-green\")"),
            )),
        }
    }

    /// A handler's queue keys: `coalesce`, `max_concurrency`, `max_queued`, `retries`,
    /// `retry_backoff`.
    pub(super) fn queue(
        &self,
        index: usize,
        table: &Spanned<toml::Table>,
        rest: &mut toml::Table,
    ) -> Result<QueueSpec, ConfigError> {
        let key = |k: &str| format!("handler[{index}].{k}");
        let mut count = |k: &str, min: i64, max: i64| -> Result<Option<i64>, ConfigError> {
            match rest.remove(k) {
                None => Ok(None),
                Some(toml::Value::Integer(n)) if (min..=max).contains(&n) => Ok(Some(n)),
                Some(other) => Err(self.error_at(
                    self.key_span(table, k),
                    &key(k),
                    format!("must be a whole number from {min} to {max}, not {other}"),
                )),
            }
        };
        let max_concurrency = count("max_concurrency", 1, 1024)?.map(|n| n as usize);
        let max_queued = count("max_queued", 1, 1_000_000)?.map(|n| n as usize);
        let retries = count("retries", 0, 100)?.map(|n| n as u32);
        let mut text = |k: &str| self.take_string(index, table, rest, k);
        let coalesce = text("coalesce")?
            .map(|c| match c.as_str() {
                "repo+tag" => Ok(hubhook_core::Coalesce::RepoTag),
                "repo" => Ok(hubhook_core::Coalesce::Repo),
                "handler" => Ok(hubhook_core::Coalesce::Handler),
                "off" => Ok(hubhook_core::Coalesce::Off),
                other => Err(self.error_at(
                    self.key_span(table, "coalesce"),
                    &key("coalesce"),
                    format!("unknown coalescing key {other:?} (expected \"repo+tag\", \"repo\", \"handler\" or \"off\")"),
                )),
            })
            .transpose()?;
        let retry_backoff = text("retry_backoff")?
            .map(|t| self.handler_duration(table, &key("retry_backoff"), "retry_backoff", &t))
            .transpose()?;
        Ok(QueueSpec {
            coalesce,
            max_concurrency,
            max_queued,
            retries,
            retry_backoff,
        })
    }

    /// Deserializes a handler's own keys; unknown keys are errors naming the key.
    pub(super) fn rest<T: for<'de> Deserialize<'de>>(
        &self,
        index: usize,
        table: &Spanned<toml::Table>,
        rest: toml::Table,
    ) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(rest)).map_err(|e| {
            let (name, message) = offending_key(e);
            self.error_at(
                self.key_span(table, &name),
                &format!("handler[{index}].{name}"),
                message,
            )
        })
    }

    /// Takes the string key `k` out of handler table `index`'s remaining keys.
    pub(super) fn take_string(
        &self,
        index: usize,
        table: &Spanned<toml::Table>,
        rest: &mut toml::Table,
        k: &str,
    ) -> Result<Option<String>, ConfigError> {
        match rest.remove(k) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(other) => {
                let found = match &other {
                    toml::Value::Integer(n) => format!("integer {n}"),
                    other => other.type_str().to_owned(),
                };
                let expected = if DURATION_KEYS.contains(&k) {
                    "a duration like \"30s\" or \"10m\""
                } else {
                    "a string"
                };
                Err(self.error_at(
                    self.key_span(table, k),
                    &format!("handler[{index}].{k}"),
                    type_mismatch_message(k, &found, expected),
                ))
            }
        }
    }

    /// A duration from a handler table's `name` key (`full` names it in errors).
    pub(super) fn handler_duration(
        &self,
        table: &Spanned<toml::Table>,
        full: &str,
        name: &str,
        text: &str,
    ) -> Result<Duration, ConfigError> {
        humantime::parse_duration(text).map_err(|e| {
            self.error_at(
                self.key_span(table, name),
                full,
                format!("{text:?} is not a duration like \"30s\" or \"10m\": {e}"),
            )
        })
    }
}
