//! The file as a whole: the top-level keys, `[auth]`, `[journal]`, `[callback]`, and
//! what every table's reader uses (lines, spans, keys, durations).

use super::*;

impl Parser<'_> {
    pub(super) fn parse(&self) -> Result<Config, ConfigError> {
        let raw = self.deserialize()?;
        let mut config = Config::defaults();
        config.file = Some(self.file.to_owned());
        let base = config_dir(self.file);
        self.server(&raw, &mut config, base)?;
        if let Some(journal) = &raw.journal {
            self.journal(journal, &mut config)?;
        }
        if let Some(callback) = &raw.callback {
            config.callback = self.callback(callback, base)?;
        }
        self.auth_and_hooks(&raw, &mut config, base)?;
        if let Some(tls) = &raw.tls {
            config.tls = Some(self.tls(tls, base, &config.data_dir)?);
        }
        self.handlers(&raw, &mut config, base)?;
        for (i, table) in raw.notify.iter().enumerate() {
            let notify = self.notify(i, table, &config.handlers)?;
            config.notify.push(notify);
        }
        if let Some(ui) = &raw.ui {
            config.ui = self.ui(ui, &config)?;
        }
        Ok(config)
    }

    /// The file as serde reads it; a wrong type or an unknown key names its line.
    fn deserialize(&self) -> Result<RawConfig, ConfigError> {
        let de = toml::Deserializer::new(self.text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            // Spanned<T> shows up in the path as a private field; the user never wrote it.
            let path = e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            let leaf = path.rsplit('.').next().unwrap_or("");
            let message = in_words(leaf, &without_values(inner.message().trim()));
            ConfigError {
                file: self.file.to_owned(),
                line: inner.span().map(|s| self.line_of(s.start)),
                key: (path != "." && !path.is_empty()).then_some(path),
                message,
            }
        })
    }

    /// The listener's keys: address, hook path, data dir, limits and timeouts.
    fn server(&self, raw: &RawConfig, config: &mut Config, base: &Path) -> Result<(), ConfigError> {
        if let Some(listen) = &raw.listen {
            config.listen = listen.get_ref().parse().map_err(|_| {
                self.error_at(listen.span(), "listen", format!(
                    "{:?} is not an address with a port (like \"127.0.0.1:8080\" or \"[::1]:8080\")",
                    listen.get_ref()
                ))
            })?;
        }
        if let Some(path) = &raw.path {
            let p = path.get_ref();
            if let Err(problem) = Hook::check_path(p) {
                return Err(self.error_at(path.span(), "path", format!("{p:?}: {problem}")));
            }
            config.path = p.clone();
        }
        if let Some(dir) = &raw.data_dir {
            config.data_dir = resolve(base, dir.get_ref());
            config.data_dir_line = Some(self.line_of(dir.span().start));
        }
        self.limits(raw, config)
    }

    /// `[callback]`: `None` unless enabled.
    fn callback(
        &self,
        callback: &Spanned<RawCallback>,
        base: &Path,
    ) -> Result<Option<CallbackSpec>, ConfigError> {
        let span = callback.span();
        let callback = callback.get_ref();
        if !callback.enabled {
            return Ok(None);
        }
        let allow = callback
            .allow
            .clone()
            .unwrap_or_else(|| vec![DEFAULT_CALLBACK_HOST.to_owned()]);
        if let Some(bad) = allow
            .iter()
            .find(|h| h.is_empty() || h.contains(['/', '*', '@', ' ']))
        {
            return Err(self.error_at(
                span,
                "callback.allow",
                format!("{bad:?} is not a host name (like \"registry.hub.docker.com\" or \"hooks.example.com:8443\")"),
            ));
        }
        let timeout = callback
            .timeout
            .map_or(Duration::from_secs(10), |HumanDuration(t)| t);
        let ca_file = match &callback.ca_file {
            Some(file) => {
                let path = resolve(base, file.get_ref());
                // Read now: a typo is a config error, not a failed callback later.
                hubhook_core::callback::Callbacks::new()
                    .add_roots_pem_file(&path)
                    .map_err(|e| self.error_at(file.span(), "callback.ca_file", e.to_string()))?;
                Some(path)
            }
            None => None,
        };
        Ok(Some(CallbackSpec {
            allow,
            timeout,
            ca_file,
            target_url: callback.target_url.clone(),
        }))
    }

    /// Body sizes, timeouts and connection caps.
    fn limits(&self, raw: &RawConfig, config: &mut Config) -> Result<(), ConfigError> {
        if let Some(ByteSize(size)) = raw.max_body {
            config.max_body = size;
        }
        if let Some(ByteSize(size)) = raw.signed_max_body {
            config.signed_max_body = size;
        }
        if let Some(HumanDuration(t)) = raw.header_timeout {
            config.header_timeout = t;
        }
        if let Some(HumanDuration(t)) = raw.shutdown_grace {
            config.shutdown_grace = t;
        }
        for (n, key, value) in [
            (
                &raw.max_connections,
                "max_connections",
                &mut config.max_connections,
            ),
            (
                &raw.max_connections_per_ip,
                "max_connections_per_ip",
                &mut config.max_connections_per_ip,
            ),
        ] {
            if let Some(n) = n {
                *value = usize::try_from(*n.get_ref())
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        self.error_at(n.span(), key, "must be a positive number".into())
                    })?;
            }
        }
        Ok(())
    }

    /// `[auth]` (the Docker Hub hook's keys) and the `[[hook]]` tables.
    fn auth_and_hooks(
        &self,
        raw: &RawConfig,
        config: &mut Config,
        base: &Path,
    ) -> Result<(), ConfigError> {
        config.api_keys = Keys(self.keys(
            &raw.auth.api_keys,
            raw.auth.api_keys_file.as_ref(),
            "auth",
            base,
        )?);
        config.allow_unauthenticated = raw.auth.allow_unauthenticated;
        // With [[hook]] tables, the top-level Docker Hub hook is served only when asked for.
        config.dockerhub_hook = raw.hooks.is_empty()
            || raw.path.is_some()
            || !config.api_keys.is_empty()
            || config.allow_unauthenticated;
        if config.dockerhub_hook && config.api_keys.is_empty() && !config.allow_unauthenticated {
            return Err(ConfigError {
                file: self.file.to_owned(),
                line: None,
                key: Some("auth".into()),
                message: "no API key: set auth.api_keys or auth.api_keys_file (`hubhook keygen` makes one), \
                          or set auth.allow_unauthenticated = true to accept anyone"
                    .into(),
            });
        }
        for (i, hook) in raw.hooks.iter().enumerate() {
            let spec = self.hook(i, hook, base)?;
            let taken = (config.dockerhub_hook && spec.path == config.path)
                || config.hooks.iter().any(|h| h.path == spec.path);
            if taken {
                return Err(self.error_at(
                    hook.get_ref().path.span(),
                    &format!("hook[{i}].path"),
                    format!("{:?} is already served by another hook", spec.path),
                ));
            }
            config.hooks.push(spec);
        }
        Ok(())
    }

    /// The `[[handler]]` tables, with unique names.
    fn handlers(
        &self,
        raw: &RawConfig,
        config: &mut Config,
        base: &Path,
    ) -> Result<(), ConfigError> {
        // No [[handler]] at all keeps the default log handler: a hook that does nothing
        // with what it accepts is never what anyone wants.
        if !raw.handlers.is_empty() {
            config.handlers = raw
                .handlers
                .iter()
                .enumerate()
                .map(|(i, table)| self.handler(i, table, base))
                .collect::<Result<_, _>>()?;
        }
        for (i, h) in config.handlers.iter().enumerate() {
            if config.handlers[..i]
                .iter()
                .any(|other| other.name == h.name)
            {
                let table = &raw.handlers[i];
                return Err(self.error_at(
                    self.key_span(table.span(), "name"),
                    &format!("handler[{i}].name"),
                    format!(
                        "another handler is already named {:?}; names must be unique",
                        h.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// API keys from a list and a keys file; `at` names the table for errors.
    pub(super) fn keys(
        &self,
        list: &[Spanned<String>],
        file: Option<&Spanned<String>>,
        at: &str,
        base: &Path,
    ) -> Result<Vec<String>, ConfigError> {
        let mut keys = Vec::new();
        for key in list {
            self.check_key(key.get_ref(), key.span(), &format!("{at}.api_keys"))?;
            keys.push(key.get_ref().clone());
        }
        if let Some(file) = file {
            let name = format!("{at}.api_keys_file");
            let path = resolve(base, file.get_ref());
            let text = std::fs::read_to_string(&path).map_err(|e| {
                self.error_at(
                    file.span(),
                    &name,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            private(&path).map_err(|m| self.error_at(file.span(), &name, m))?;
            for (i, line) in text.lines().enumerate() {
                let key = line.trim();
                if key.is_empty() || key.starts_with('#') {
                    continue;
                }
                // The same policy as a key in the file, the key itself never shown.
                if let Err(problem) = auth::check_key(key) {
                    return Err(self.error_at(
                        file.span(),
                        &name,
                        format!("line {} of {}: {problem}", i + 1, path.display()),
                    ));
                }
                keys.push(key.to_owned());
            }
        }
        Ok(keys)
    }

    pub(super) fn check_key(
        &self,
        key: &str,
        span: Range<usize>,
        name: &str,
    ) -> Result<(), ConfigError> {
        match auth::check_key(key) {
            // The problem's words, never the key itself.
            Err(problem) => Err(self.error_at(span, name, problem.to_string())),
            Ok(()) => {
                if auth::reads_as_words(key) {
                    let line = self.line_of(span.start);
                    self.warnings.borrow_mut().push(format!(
                        "{}:{line}: {name}: a key that reads as words is easy to guess; make one with `hubhook keygen`",
                        self.file.display()
                    ));
                }
                Ok(())
            }
        }
    }

    /// `journal = true`, or a `[journal]` table with retention.
    pub(super) fn journal(
        &self,
        value: &Spanned<JournalSetting>,
        config: &mut Config,
    ) -> Result<(), ConfigError> {
        let raw = match value.get_ref() {
            JournalSetting::On(on) => {
                config.journal = *on;
                return Ok(());
            }
            JournalSetting::Table(raw) => raw,
        };
        config.journal = raw.enabled;
        // 0 means "keep forever".
        if let Some(days) = raw.keep_days {
            if days > MAX_KEEP_DAYS {
                return Err(self.error_at(
                    value.span(),
                    "journal.keep_days",
                    format!("{days} is more than {MAX_KEEP_DAYS} days; use 0 to keep forever"),
                ));
            }
            config.keep = (days > 0).then(|| Duration::from_secs(days * 86_400));
        }
        if let Some(n) = raw.keep_deliveries {
            config.keep_deliveries = (n > 0).then_some(n);
        }
        Ok(())
    }

    /// The span of `key = ...` inside a table, found in the text; the table's own span
    /// when the key is not written on a line of its own.
    pub(super) fn key_span(&self, span: Range<usize>, key: &str) -> Range<usize> {
        let body = self.text.get(span.clone()).unwrap_or("");
        let mut offset = span.start;
        for line in body.split_inclusive('\n') {
            let trimmed = line.trim_start();
            if let Some(after) = trimmed.strip_prefix(key) {
                if after.trim_start().starts_with('=') {
                    return offset..offset + line.len();
                }
            }
            offset += line.len();
        }
        span
    }

    pub(super) fn error_at(&self, span: Range<usize>, key: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: Some(self.line_of(span.start)),
            key: Some(key.to_owned()),
            message,
        }
    }

    pub(super) fn line_of(&self, offset: usize) -> usize {
        self.text
            .get(..offset.min(self.text.len()))
            .map_or(0, |before| before.matches('\n').count())
            + 1
    }
}
