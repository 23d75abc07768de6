//! The TOML configuration: reading it, checking it, and saying exactly where it is wrong.
//!
//! Every problem becomes a [`ConfigError`] naming the file, the line and the key
//! (`hubhook.toml:12: handler[2].type: unknown handler type "shel"`). Serde reports type
//! and unknown-key errors with the span of the value; the checks that run after parsing
//! (addresses, durations, files) keep the span of the value they check.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hubhook_core::auth::{self, KeyProblem};
use hubhook_core::listener;
use hubhook_core::plugin::PluginHandler;
use hubhook_core::{Generic, Hook, Provider};
use hubhook_handlers::{DockerHandler, LogFormat};
use serde::Deserialize;
use toml::Spanned;

/// Where the server looks for its data (the generated key) when nothing says otherwise.
pub(crate) const DEFAULT_DATA_DIR: &str = "./hubhook-data";
/// Finished deliveries older than this are pruned from the journal, by default.
const DEFAULT_KEEP: Duration = Duration::from_secs(30 * 86_400);
/// The longest `keep_days` (a hundred years); 0 keeps forever.
const MAX_KEEP_DAYS: u64 = 36_500;
/// Finished deliveries kept in the journal at most, by default.
const DEFAULT_KEEP_DELIVERIES: u64 = 10_000;
/// The only host the callback may reach unless `callback.allow` says otherwise.
const DEFAULT_CALLBACK_HOST: &str = "registry.hub.docker.com";
/// The handler types this build knows.
const HANDLER_TYPES: &[&str] = &["log", "shell", "docker", "plugin"];

/// A configuration problem, with where it is.
#[derive(Debug)]
pub(crate) struct ConfigError {
    file: PathBuf,
    line: Option<usize>,
    key: Option<String>,
    message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// API keys: a list whose `Debug` shows how many, never what.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Keys(pub(crate) Vec<String>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} key(s), redacted]", self.0.len())
    }
}

impl std::ops::Deref for Keys {
    type Target = Vec<String>;

    fn deref(&self) -> &Vec<String> {
        &self.0
    }
}

impl std::ops::DerefMut for Keys {
    fn deref_mut(&mut self) -> &mut Vec<String> {
        &mut self.0
    }
}

/// The server's settings, checked and with defaults filled in.
#[derive(Debug)]
pub(crate) struct Config {
    /// The file these came from, if any.
    pub(crate) file: Option<PathBuf>,
    pub(crate) listen: SocketAddr,
    pub(crate) path: String,
    pub(crate) data_dir: PathBuf,
    /// The line of `data_dir` in the file, when it is written there.
    pub(crate) data_dir_line: Option<usize>,
    pub(crate) max_body: u64,
    /// The body limit of hooks that only a signature authenticates.
    pub(crate) signed_max_body: u64,
    pub(crate) header_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) shutdown_grace: Duration,
    /// Journal accepted deliveries in the data dir (and resume them after a restart).
    pub(crate) journal: bool,
    /// Finished deliveries older than this are pruned from the journal.
    pub(crate) keep: Option<Duration>,
    /// At most this many finished deliveries are kept in the journal.
    pub(crate) keep_deliveries: Option<u64>,
    /// Docker Hub's legacy callback, when enabled.
    pub(crate) callback: Option<CallbackSpec>,
    pub(crate) api_keys: Keys,
    pub(crate) allow_unauthenticated: bool,
    pub(crate) tls: Option<TlsFiles>,
    /// Whether the Docker Hub hook of the top-level `path` and `[auth]` is served.
    pub(crate) dockerhub_hook: bool,
    pub(crate) hooks: Vec<HookSpec>,
    pub(crate) handlers: Vec<HandlerSpec>,
    /// What `check` prints and `serve` logs as warnings (a config file others can read).
    pub(crate) warnings: Vec<String>,
}

/// The `[callback]` table, when `enabled = true`.
#[derive(Debug, Clone)]
pub(crate) struct CallbackSpec {
    pub(crate) allow: Vec<String>,
    pub(crate) timeout: Duration,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) target_url: String,
}

/// How a handler's runs are queued.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueueSpec {
    pub(crate) coalesce: Option<hubhook_core::Coalesce>,
    pub(crate) max_concurrency: Option<usize>,
    pub(crate) max_queued: Option<usize>,
    pub(crate) retries: Option<u32>,
    pub(crate) retry_backoff: Option<Duration>,
}

/// One `[[hook]]` table.
#[derive(Debug, Clone)]
pub(crate) struct HookSpec {
    pub(crate) path: String,
    pub(crate) provider: Provider,
    pub(crate) api_keys: Keys,
    pub(crate) allow_unauthenticated: bool,
    /// The registry host a `registry` hook's images live on.
    pub(crate) registry: Option<String>,
}

/// Where `[tls]` gets its certificate: two files, or an ACME directory.
#[derive(Debug, Clone)]
pub(crate) enum TlsFiles {
    Files { cert: PathBuf, key: PathBuf },
    Acme(crate::acme::AcmeSpec),
}

/// One `[[handler]]` table.
#[derive(Debug, Clone)]
pub(crate) struct HandlerSpec {
    pub(crate) name: String,
    pub(crate) repo: Option<String>,
    pub(crate) tag: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) queue: QueueSpec,
    pub(crate) kind: HandlerKind,
    /// The line that names the program a shell or docker handler runs (its `command` or
    /// `docker`, else its table), for `check` to point at.
    pub(crate) program_line: Option<usize>,
}

/// What a handler is, with its type's own settings.
#[derive(Debug, Clone)]
pub(crate) enum HandlerKind {
    Log {
        format: LogFormat,
    },
    Shell {
        command: Vec<String>,
        workdir: Option<PathBuf>,
        env: BTreeMap<String, String>,
        output_tail: Option<usize>,
    },
    Docker(Box<DockerHandler>),
    Plugin(PluginHandler),
}

impl HandlerKind {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Self::Log { .. } => "log",
            Self::Shell { .. } => "shell",
            Self::Docker(_) => "docker",
            Self::Plugin(_) => "plugin",
        }
    }
}

impl Config {
    /// The settings used when there is no file: 127.0.0.1:8080, `/hubhook`, the log
    /// handler, `./hubhook-data`.
    pub(crate) fn defaults() -> Self {
        Self {
            file: None,
            listen: listener::DEFAULT_ADDR,
            path: hubhook_core::service::DEFAULT_PATH.to_owned(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            data_dir_line: None,
            max_body: hubhook_core::service::DEFAULT_MAX_BODY,
            signed_max_body: hubhook_core::service::DEFAULT_SIGNED_MAX_BODY,
            header_timeout: listener::DEFAULT_HEADER_TIMEOUT,
            max_connections: listener::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: listener::DEFAULT_MAX_CONNECTIONS_PER_IP,
            shutdown_grace: listener::DEFAULT_SHUTDOWN_GRACE,
            journal: true,
            keep: Some(DEFAULT_KEEP),
            keep_deliveries: Some(DEFAULT_KEEP_DELIVERIES),
            callback: None,
            api_keys: Keys::default(),
            allow_unauthenticated: false,
            tls: None,
            warnings: Vec::new(),
            dockerhub_hook: true,
            hooks: Vec::new(),
            handlers: vec![HandlerSpec {
                name: "log".to_owned(),
                repo: None,
                tag: None,
                timeout: None,
                queue: QueueSpec::default(),
                kind: HandlerKind::Log {
                    format: LogFormat::Text,
                },
                program_line: None,
            }],
        }
    }

    /// Reads and checks `file`.
    pub(crate) fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read the file: {e}"),
        })?;
        let parser = Parser {
            file,
            text: &text,
            warnings: Default::default(),
        };
        let mut config = parser.parse()?;
        config.warnings.extend(parser.warnings.take());
        // A file that holds keys or secrets is as secret as they are; ssh warns likewise.
        let holds_secrets = text.contains("api_keys") || text.contains("secret");
        if let (true, Err(why)) = (holds_secrets, private(file)) {
            config
                .warnings
                .push(format!("{why} (it holds keys or secrets)"));
        }
        Ok(config)
    }
}

/// The folder every relative path in `file` is resolved from: the file's own, also when
/// `--config` names it bare (`hubhook.toml`, whose parent is the empty path).
fn config_dir(file: &Path) -> &Path {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// `path` as written in the file, resolved from `base` (see [`config_dir`]): `./deploy.sh`
/// beside a bare `hubhook.toml` is `./deploy.sh`, not `././deploy.sh`.
fn resolve(base: &Path, path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    base.join(path.strip_prefix(".").unwrap_or(path))
}

/// The data dir `file` names, read without anything else: `hubhook deliveries` needs only
/// this, and must not load plugins or read TLS and key files to find it.
pub(crate) fn data_dir_of(file: &Path) -> Result<PathBuf, ConfigError> {
    let fail = |line: Option<usize>, key: Option<&str>, message: String| ConfigError {
        file: file.to_owned(),
        line,
        key: key.map(str::to_owned),
        message,
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| fail(None, None, format!("cannot read the file: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        fail(line, None, without_values(e.message().trim()))
    })?;
    let base = config_dir(file);
    match table.get("data_dir") {
        None => Ok(PathBuf::from(DEFAULT_DATA_DIR)),
        Some(toml::Value::String(dir)) => Ok(resolve(base, dir)),
        Some(other) => Err(fail(
            None,
            Some("data_dir"),
            format!("must be a path, not {}", other.type_str()),
        )),
    }
}

/// Refuses a file that holds a secret and that group or others may read, as ssh does,
/// naming the file and the `chmod` that fixes it.
pub(crate) fn private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    Err(format!(
        "{} is readable by its group or others (mode {mode:o}): chmod 600 {}",
        path.display(),
        path.display()
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    max_body: Option<Spanned<toml::Value>>,
    signed_max_body: Option<Spanned<toml::Value>>,
    header_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    max_connections_per_ip: Option<Spanned<i64>>,
    shutdown_grace: Option<Spanned<String>>,
    journal: Option<Spanned<toml::Value>>,
    callback: Option<Spanned<RawCallback>>,
    #[serde(default)]
    auth: RawAuth,
    tls: Option<RawTls>,
    #[serde(default, rename = "handler")]
    handlers: Vec<Spanned<toml::Table>>,
    #[serde(default, rename = "hook")]
    hooks: Vec<Spanned<RawHook>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    #[serde(default = "yes")]
    enabled: bool,
    keep_days: Option<u64>,
    keep_deliveries: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallback {
    #[serde(default)]
    enabled: bool,
    allow: Option<Vec<String>>,
    timeout: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    #[serde(default)]
    target_url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    path: Spanned<String>,
    provider: Spanned<String>,
    #[serde(default)]
    api_keys: Vec<Spanned<String>>,
    api_keys_file: Option<Spanned<String>>,
    #[serde(default)]
    allow_unauthenticated: bool,
    secret: Option<Spanned<String>>,
    repo_pointer: Option<Spanned<String>>,
    tag_pointer: Option<Spanned<String>>,
    digest_pointer: Option<Spanned<String>>,
    signature_header: Option<Spanned<String>>,
    registry: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    api_keys: Vec<Spanned<String>>,
    api_keys_file: Option<Spanned<String>>,
    #[serde(default)]
    allow_unauthenticated: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    acme: Option<RawAcme>,
}

/// `[tls.acme]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    domains: Vec<String>,
    email: Option<String>,
    directory: Option<String>,
    cache_dir: Option<String>,
    ca_file: Option<String>,
    renew_before: Option<String>,
    check_every: Option<String>,
}

/// The keys of `shell` handlers beyond the common ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShell {
    command: Vec<String>,
    workdir: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    output_tail: Option<usize>,
}

/// The keys of `docker` handlers beyond the common ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    image: String,
    container: Option<String>,
    service: Option<String>,
    #[serde(default)]
    run_args: Vec<String>,
    #[serde(default)]
    command: Vec<String>,
    stop_timeout: Option<String>,
    step_timeout: Option<String>,
    health: Option<String>,
    health_timeout: Option<String>,
    #[serde(default)]
    cleanup: bool,
    docker: Option<String>,
    docker_host: Option<String>,
    strategy: Option<String>,
    ports: Option<Vec<String>>,
    upstream_file: Option<String>,
    reload: Option<Vec<String>>,
}

/// The keys of `plugin` handlers beyond the common ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    path: String,
    #[serde(default)]
    config: toml::Table,
}

/// The keys of `log` handlers beyond the common ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
}

struct Parser<'a> {
    file: &'a Path,
    text: &'a str,
    /// What is worth saying but not refusing (a key that looks like words).
    warnings: std::cell::RefCell<Vec<String>>,
}

impl Parser<'_> {
    fn parse(&self) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(self.text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
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
        })?;

        let mut config = Config::defaults();
        config.file = Some(self.file.to_owned());
        let base = config_dir(self.file);

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
        if let Some(journal) = &raw.journal {
            self.journal(journal, &mut config)?;
        }
        if let Some(callback) = &raw.callback {
            let span = callback.span();
            let callback = callback.get_ref();
            if callback.enabled {
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
                let timeout = match &callback.timeout {
                    Some(t) => self.duration(t, "callback.timeout")?,
                    None => Duration::from_secs(10),
                };
                let ca_file = match &callback.ca_file {
                    Some(file) => {
                        let path = resolve(base, file.get_ref());
                        // Read now: a typo is a config error, not a failed callback later.
                        hubhook_core::callback::Callbacks::new()
                            .add_roots_pem_file(&path)
                            .map_err(|e| {
                                self.error_at(file.span(), "callback.ca_file", e.to_string())
                            })?;
                        Some(path)
                    }
                    None => None,
                };
                config.callback = Some(CallbackSpec {
                    allow,
                    timeout,
                    ca_file,
                    target_url: callback.target_url.clone(),
                });
            }
        }
        if let Some(size) = &raw.max_body {
            config.max_body = parse_size(size.get_ref())
                .map_err(|m| self.error_at(size.span(), "max_body", m))?;
        }
        if let Some(size) = &raw.signed_max_body {
            config.signed_max_body = parse_size(size.get_ref())
                .map_err(|m| self.error_at(size.span(), "signed_max_body", m))?;
        }
        if let Some(t) = &raw.header_timeout {
            config.header_timeout = self.duration(t, "header_timeout")?;
        }
        if let Some(t) = &raw.shutdown_grace {
            config.shutdown_grace = self.duration(t, "shutdown_grace")?;
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

        if let Some(tls) = &raw.tls {
            config.tls = Some(self.tls(tls, base, &config.data_dir)?);
        }

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
                    self.key_span(table, "name"),
                    &format!("handler[{i}].name"),
                    format!(
                        "another handler is already named {:?}; names must be unique",
                        h.name
                    ),
                ));
            }
        }
        Ok(config)
    }

    fn handler(
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
        let kind = match kind.as_str() {
            "log" => {
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
                HandlerKind::Log { format }
            }
            "shell" => {
                let shell: RawShell = self.rest(index, table, rest)?;
                if shell.command.first().is_none_or(String::is_empty) {
                    return Err(self.error_at(
                        self.key_span(table, "command"),
                        &key("command"),
                        "must name the program to run: command = [\"/path/to/script\", \"arg\"]"
                            .into(),
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
                HandlerKind::Shell {
                    command,
                    workdir: shell.workdir.map(|dir| resolve(base, dir)),
                    env: shell.env,
                    output_tail: shell.output_tail,
                }
            }
            "docker" => {
                let raw: RawDocker = self.rest(index, table, rest)?;
                let at = |k: &str, message: String| {
                    self.error_at(self.key_span(table, k), &key(k), message)
                };
                let duration = |k: &str, value: &Option<String>| {
                    value
                        .as_deref()
                        .map(|t| {
                            humantime::parse_duration(t).map_err(|e| {
                                at(
                                    k,
                                    format!("{t:?} is not a duration like \"30s\" or \"10m\": {e}"),
                                )
                            })
                        })
                        .transpose()
                };
                // The deployed tags: the `tag` pattern, `latest` unless it says otherwise.
                let pattern = tag.get_or_insert_with(|| "latest".to_owned()).clone();
                // Pushes of other repositories need not even reach the handler.
                if repo.is_none() {
                    let (_, path) = hubhook_core::reference::split_registry(&raw.image);
                    if path.contains('/') {
                        repo = Some(path.to_owned());
                    }
                }
                let mut handler = match (&raw.container, &raw.service) {
                    (Some(c), None) => DockerHandler::container(&name, &raw.image, c)
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
                        DockerHandler::service(&name, &raw.image, s)
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
                })?
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
                        DockerHandler::parse_health(health)
                            .map_err(|e| at("health", e.to_string()))?,
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
                HandlerKind::Docker(Box::new(handler))
            }
            "plugin" => {
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
                    .map_err(|e| {
                        self.error_at(self.key_span(table, "path"), &key("path"), e.to_string())
                    })?
                    .with_name(&name);
                HandlerKind::Plugin(plugin)
            }
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

    /// API keys from a list and a keys file; `at` names the table for errors.
    fn keys(
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

    fn hook(
        &self,
        index: usize,
        hook: &Spanned<RawHook>,
        base: &Path,
    ) -> Result<HookSpec, ConfigError> {
        let raw = hook.get_ref();
        let at = format!("hook[{index}]");
        let key = |k: &str| format!("{at}.{k}");
        let path = raw.path.get_ref();
        if let Err(problem) = Hook::check_path(path) {
            return Err(self.error_at(
                raw.path.span(),
                &key("path"),
                format!("{path:?}: {problem}"),
            ));
        }
        let required = |value: &Option<Spanned<String>>, name: &str, why: &str| match value {
            None => Err(self.error_at(
                hook.span(),
                &key(name),
                format!("missing required key `{name}` {why}"),
            )),
            // An empty secret (or pointer) is no secret: anyone can compute that HMAC.
            Some(v) if v.get_ref().is_empty() => {
                Err(self.error_at(v.span(), &key(name), format!("`{name}` must not be empty")))
            }
            // The docs' "<the secret set on GitHub>" must not become a published secret.
            Some(v) if name == "secret" && auth::is_placeholder(v.get_ref()) => Err(self.error_at(
                v.span(),
                &key(name),
                format!(
                    "{:?} is a placeholder: put the secret the sender signs with here",
                    v.get_ref()
                ),
            )),
            Some(v) => Ok(v.get_ref().clone()),
        };
        let pointer =
            |value: &Option<Spanned<String>>, name: &str| -> Result<Option<String>, ConfigError> {
                match value {
                    Some(p) if !p.get_ref().starts_with('/') => Err(self.error_at(
                        p.span(),
                        &key(name),
                        format!(
                            "{:?} is not a JSON pointer (like \"/repository/name\")",
                            p.get_ref()
                        ),
                    )),
                    other => Ok(other.as_ref().map(|p| p.get_ref().clone())),
                }
            };
        let provider = match raw.provider.get_ref().as_str() {
            "dockerhub" => Provider::DockerHub,
            "registry" => Provider::Registry,
            "github" => Provider::GitHub {
                secret: required(&raw.secret, "secret", "(the GitHub webhook secret)")?,
            },
            "generic" => {
                pointer(&raw.repo_pointer, "repo_pointer")?;
                pointer(&raw.tag_pointer, "tag_pointer")?;
                let mut generic = Generic::new(
                    required(&raw.repo_pointer, "repo_pointer", "(a JSON pointer to the repository)")?,
                    required(&raw.tag_pointer, "tag_pointer", "(a JSON pointer to the tag)")?,
                );
                if let Some(p) = pointer(&raw.digest_pointer, "digest_pointer")? {
                    generic = generic.digest(p);
                }
                if let Some(header) = &raw.signature_header {
                    let secret = required(&raw.secret, "secret", "(the HMAC secret of signature_header)")?;
                    generic = generic.signed(header.get_ref().clone(), secret);
                }
                Provider::Generic(generic)
            }
            other => {
                return Err(self.error_at(raw.provider.span(), &key("provider"), format!(
                    "unknown provider {other:?} (expected one of: dockerhub, registry, github, generic)"
                )))
            }
        };
        let api_keys = self.keys(&raw.api_keys, raw.api_keys_file.as_ref(), &at, base)?;
        let signed = matches!(provider, Provider::GitHub { .. })
            || matches!(&provider, Provider::Generic(g) if g.signature.is_some());
        if api_keys.is_empty() && !signed && !raw.allow_unauthenticated {
            return Err(self.error_at(hook.span(), &key("api_keys"), format!(
                "no API key for this hook: set api_keys or api_keys_file{}, or allow_unauthenticated = true",
                if raw.provider.get_ref() == "registry" {
                    " (the registry sends it with `headers: Authorization: [Bearer <key>]`)"
                } else {
                    ""
                }
            )));
        }
        // A registry notification's host comes from the pusher's Host header: the hook
        // says which registry its images live on instead.
        let registry = match (&provider, &raw.registry) {
            (Provider::Registry, _) => Some(required(
                &raw.registry,
                "registry",
                "(the host its images live on, like \"registry.example.com\" or \"127.0.0.1:5000\")",
            )?),
            (_, Some(r)) => {
                return Err(self.error_at(r.span(), &key("registry"), "applies to provider = \"registry\" only".into()))
            }
            (_, None) => None,
        };
        Ok(HookSpec {
            path: path.clone(),
            provider,
            api_keys: Keys(api_keys),
            allow_unauthenticated: raw.allow_unauthenticated,
            registry,
        })
    }

    /// `[tls]`: `cert` and `key`, or an `[tls.acme]` table (not both).
    fn tls(&self, raw: &RawTls, base: &Path, data_dir: &Path) -> Result<TlsFiles, ConfigError> {
        // Where the table starts, for errors about the table itself.
        let start = self.text.find("[tls").unwrap_or(0);
        let table = start..start;
        match (&raw.cert, &raw.key, &raw.acme) {
            (Some(cert_at), Some(key_at), None) => {
                let cert = resolve(base, cert_at.get_ref());
                let key = resolve(base, key_at.get_ref());
                // Reading both now turns a typo into a config error instead of a failed start.
                if let Err(e) = hubhook_core::TlsConfig::from_pem_files(&cert, &key) {
                    let (span, name) = match &e {
                        hubhook_core::Error::Tls { what: "key", .. } => (key_at.span(), "tls.key"),
                        _ => (cert_at.span(), "tls.cert"),
                    };
                    return Err(self.error_at(span, name, e.to_string()));
                }
                private(&key).map_err(|m| self.error_at(key_at.span(), "tls.key", m))?;
                Ok(TlsFiles::Files { cert, key })
            }
            (None, None, Some(a)) => {
                let at =
                    |k: &str, m: String| self.error_at(table.clone(), &format!("tls.acme.{k}"), m);
                let name = |d: &str| {
                    d.split('.').all(|label| {
                        !label.is_empty()
                            && label
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    })
                };
                if a.domains.is_empty() || !a.domains.iter().all(|d| name(d)) {
                    return Err(at(
                        "domains",
                        "list the names the certificate is for, like [\"hooks.example.com\"]"
                            .into(),
                    ));
                }
                let duration = |v: &Option<String>, k: &str, default: Duration| match v {
                    Some(text) => humantime::parse_duration(text).map_err(|e| {
                        at(
                            k,
                            format!("{text:?} is not a duration like \"30d\" or \"12h\": {e}"),
                        )
                    }),
                    None => Ok(default),
                };
                Ok(TlsFiles::Acme(crate::acme::AcmeSpec {
                    domains: a.domains.clone(),
                    email: a.email.clone(),
                    directory: a
                        .directory
                        .clone()
                        .unwrap_or_else(|| crate::acme::LETS_ENCRYPT.to_owned()),
                    cache_dir: a
                        .cache_dir
                        .as_ref()
                        .map_or_else(|| data_dir.join("acme"), |d| resolve(base, d)),
                    ca_file: a.ca_file.as_ref().map(|f| resolve(base, f)),
                    renew_before: duration(
                        &a.renew_before,
                        "renew_before",
                        Duration::from_secs(30 * 86_400),
                    )?,
                    check_every: duration(
                        &a.check_every,
                        "check_every",
                        Duration::from_secs(12 * 3600),
                    )?,
                }))
            }
            (_, _, Some(_)) => Err(self.error_at(
                table.clone(),
                "tls.acme",
                "use either cert and key, or [tls.acme], not both".into(),
            )),
            (None, _, None) => Err(self.error_at(
                table.clone(),
                "tls.cert",
                "missing: set cert and key, or a [tls.acme] table".into(),
            )),
            (_, None, None) => Err(self.error_at(
                table.clone(),
                "tls.key",
                "missing: set cert and key, or a [tls.acme] table".into(),
            )),
        }
    }

    /// `strategy` with its keys: stop-first (the default), or blue-green behind nginx with
    /// two `ports`, an `upstream_file` and a `reload` command.
    fn strategy(
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

    /// `journal = true`, or a `[journal]` table with retention.
    fn journal(
        &self,
        value: &Spanned<toml::Value>,
        config: &mut Config,
    ) -> Result<(), ConfigError> {
        match value.get_ref() {
            toml::Value::Boolean(on) => config.journal = *on,
            toml::Value::Table(table) => {
                let raw: RawJournal = serde_path_to_error::deserialize(toml::Value::Table(
                    table.clone(),
                ))
                .map_err(|e| {
                    let (name, message) = offending_key(e);
                    self.error_at(value.span(), &format!("journal.{name}"), message)
                })?;
                config.journal = raw.enabled;
                // 0 means "keep forever".
                if let Some(days) = raw.keep_days {
                    if days > MAX_KEEP_DAYS {
                        return Err(self.error_at(
                            value.span(),
                            "journal.keep_days",
                            format!(
                                "{days} is more than {MAX_KEEP_DAYS} days; use 0 to keep forever"
                            ),
                        ));
                    }
                    config.keep = (days > 0).then(|| Duration::from_secs(days * 86_400));
                }
                if let Some(n) = raw.keep_deliveries {
                    config.keep_deliveries = (n > 0).then_some(n);
                }
            }
            other => {
                return Err(self.error_at(
                    value.span(),
                    "journal",
                    format!("must be true, false or a table, not {}", other.type_str()),
                ))
            }
        }
        Ok(())
    }

    /// A handler's queue keys: `coalesce`, `max_concurrency`, `max_queued`, `retries`,
    /// `retry_backoff`.
    fn queue(
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
    fn rest<T: for<'de> Deserialize<'de>>(
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

    fn check_key(&self, key: &str, span: Range<usize>, name: &str) -> Result<(), ConfigError> {
        match auth::check_key(key) {
            Err(KeyProblem::Placeholder) => Err(self.error_at(
                span,
                name,
                format!("{key:?} is a placeholder: put a key here; `hubhook keygen` makes one"),
            )),
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

    /// Takes the string key `k` out of handler table `index`'s remaining keys.
    fn take_string(
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
    fn handler_duration(
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

    fn duration(&self, value: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(value.get_ref()).map_err(|e| {
            self.error_at(
                value.span(),
                key,
                format!(
                    "{:?} is not a duration like \"30s\" or \"10m\": {e}",
                    value.get_ref()
                ),
            )
        })
    }

    /// The span of `key = ...` inside a table, found in the text; the table's own span
    /// when the key is not written on a line of its own.
    fn key_span(&self, table: &Spanned<toml::Table>, key: &str) -> Range<usize> {
        let span = table.span();
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

    fn error_at(&self, span: Range<usize>, key: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: Some(self.line_of(span.start)),
            key: Some(key.to_owned()),
            message,
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        self.text
            .get(..offset.min(self.text.len()))
            .map_or(0, |before| before.matches('\n').count())
            + 1
    }
}

/// The key a table's deserialization failed on, and serde's message. An unknown key has
/// no path yet: serde names it in the message.
fn offending_key(e: serde_path_to_error::Error<toml::de::Error>) -> (String, String) {
    let path = e.path().to_string();
    let message = without_values(e.into_inner().message().trim());
    let name = if path == "." {
        message.split('`').nth(1).unwrap_or("").to_owned()
    } else {
        path
    };
    let leaf = name.rsplit('.').next().unwrap_or(&name).to_owned();
    (name, in_words(&leaf, &message))
}

/// The keys whose values are durations, in whatever table they appear.
const DURATION_KEYS: &[&str] = &[
    "timeout",
    "header_timeout",
    "shutdown_grace",
    "stop_timeout",
    "health_timeout",
    "step_timeout",
    "retry_backoff",
    "renew_before",
    "check_every",
];

/// serde's wording (`invalid type: integer `10`, expected a string`, `missing field`,
/// `expected i64`) in the words the rest of `check` uses: what the key must be, then what
/// it is, then how to write it when that is plain.
fn in_words(key: &str, message: &str) -> String {
    if let Some(field) = message.strip_prefix("missing field ") {
        return format!("missing required key {field}");
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return format!("unknown key {rest}");
    }
    let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    else {
        return message.to_owned();
    };
    if DURATION_KEYS.contains(&key) {
        return type_mismatch_message(key, found, "a duration like \"30s\" or \"10m\"");
    }
    let expected = match expected {
        "i64" | "u64" | "u32" | "u16" | "usize" | "i32" => "a whole number",
        "a boolean" => "true or false",
        "a sequence" => "a list",
        "a map" => "a table",
        other => other,
    };
    type_mismatch_message(key, found, expected)
}

/// `must be EXPECTED, not FOUND`, with a way to write it for a number given as a duration.
fn type_mismatch_message(key: &str, found: &str, expected: &str) -> String {
    let found = found.replace('`', "");
    let hint = match found.strip_prefix("integer ") {
        Some(n) if DURATION_KEYS.contains(&key) => format!(": write \"{n}s\" for {n} seconds"),
        _ => String::new(),
    };
    format!("must be {expected}, not {found}{hint}")
}

/// serde's message without the value it quotes (`invalid type: string "…", expected a
/// sequence`): a mistyped `api_keys = "KEY"` or `secret = …` must not echo the secret.
fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("string \"") {
        out.push_str(&rest[..at]);
        out.push_str("string");
        let quoted = &rest[at + "string \"".len()..];
        // The value ends at the first quote that is not escaped.
        let mut escaped = false;
        let end = quoted
            .char_indices()
            .find(|&(_, c)| {
                let close = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                close
            })
            .map_or(quoted.len(), |(i, _)| i + 1);
        rest = &quoted[end..];
    }
    out.push_str(rest);
    out
}

/// Parses `1048576`, `"512KiB"`, `"1MiB"`, `"2MB"` into bytes.
fn parse_size(value: &toml::Value) -> Result<u64, String> {
    let text = match value {
        toml::Value::Integer(n) if *n > 0 => return Ok(*n as u64),
        toml::Value::String(s) => s.trim(),
        _ => return Err("must be a positive number of bytes or a size like \"1MiB\"".into()),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like \"1MiB\" or \"65536\""))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit (use B, KiB, MiB, KB or MB)"
            ))
        }
    };
    match number.checked_mul(factor) {
        Some(0) | None => Err(format!("{text:?} must be a positive size below 16 EiB")),
        Some(bytes) => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Parser {
            file: Path::new("hubhook.toml"),
            text,
            warnings: Default::default(),
        }
        .parse()
    }

    fn error(text: &str) -> String {
        parse(text)
            .expect_err("config should be refused")
            .to_string()
    }

    const KEY: &str = "[auth]\napi_keys = [\"0123456789abcdef0123\"]\n";

    #[test]
    fn sizes() {
        assert_eq!(parse_size(&toml::Value::Integer(10)), Ok(10));
        assert_eq!(parse_size(&"1MiB".into()), Ok(1 << 20));
        assert_eq!(parse_size(&"64 KiB".into()), Ok(64 << 10));
        assert_eq!(parse_size(&"2MB".into()), Ok(2_000_000));
        assert!(parse_size(&"1XB".into()).is_err());
        assert!(parse_size(&"0".into()).is_err());
        assert!(parse_size(&toml::Value::Integer(-1)).is_err());
    }

    #[test]
    fn a_full_config() {
        let config = parse(&format!(
            "listen = \"0.0.0.0:9000\"\npath = \"/hooks/site\"\nmax_body = \"64KiB\"\n\
             header_timeout = \"5s\"\n{KEY}\n[[handler]]\nname = \"audit\"\ntype = \"log\"\n\
             format = \"json\"\nrepo = \"acme/*\"\ntag = \"v*\"\ntimeout = \"10m\"\n"
        ))
        .expect("valid config");
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.path, "/hooks/site");
        assert_eq!(config.max_body, 64 << 10);
        assert_eq!(config.header_timeout, Duration::from_secs(5));
        assert_eq!(config.handlers.len(), 1);
        let h = &config.handlers[0];
        assert_eq!(h.name, "audit");
        assert_eq!(h.repo.as_deref(), Some("acme/*"));
        assert_eq!(h.timeout, Some(Duration::from_secs(600)));
        assert!(matches!(
            h.kind,
            HandlerKind::Log {
                format: LogFormat::Json
            }
        ));
    }

    #[test]
    fn errors_name_line_and_key() {
        assert_eq!(
            error(&format!("listen = \"localhost\"\n{KEY}")),
            "hubhook.toml:1: listen: \"localhost\" is not an address with a port (like \"127.0.0.1:8080\" or \"[::1]:8080\")"
        );
        assert_eq!(
            error(&format!("{KEY}\n[[handler]]\ntype = \"shel\"\n")),
            "hubhook.toml:5: handler[0].type: unknown handler type \"shel\" (expected one of: log, shell, docker, plugin)"
        );
        assert!(error(&format!("{KEY}[[handler]]\nname = \"x\"\n"))
            .starts_with("hubhook.toml:3: handler[0].type: missing required key `type`"));
        assert!(error(&format!(
            "{KEY}[[handler]]\ntype = \"log\"\nformatt = \"json\"\n"
        ))
        .starts_with("hubhook.toml:5: handler[0].formatt: unknown key `formatt`"));
        assert!(
            error(&format!("max_body = \"1XB\"\n{KEY}")).starts_with("hubhook.toml:1: max_body:")
        );
        assert!(error(&format!("\nheader_timeout = \"soon\"\n{KEY}"))
            .starts_with("hubhook.toml:2: header_timeout:"));
        let unknown = error(&format!("lisen = \"x\"\n{KEY}"));
        assert!(unknown.starts_with("hubhook.toml:1"), "{unknown}");
        assert!(unknown.contains("unknown key `lisen`"), "{unknown}");
        let bad_type = error(&format!("max_connections = \"many\"\n{KEY}"));
        assert!(
            bad_type.starts_with("hubhook.toml:1: max_connections:"),
            "{bad_type}"
        );
    }

    #[test]
    fn shell_handlers() {
        let config = parse(&format!(
            "{KEY}[[handler]]\ntype = \"shell\"\ncommand = [\"deploy.sh\", \"--fast\"]\n\
             workdir = \"site\"\nenv = {{ STAGE = \"prod\" }}\n"
        ))
        .expect("valid shell handler");
        let HandlerKind::Shell {
            command,
            workdir,
            env,
            ..
        } = &config.handlers[0].kind
        else {
            panic!("not a shell handler");
        };
        assert_eq!(command, &["deploy.sh", "--fast"]);
        assert_eq!(
            workdir.as_deref(),
            Some(Path::new("./site")),
            "beside the config file"
        );
        assert_eq!(env.get("STAGE").map(String::as_str), Some("prod"));
        let e = error(&format!("{KEY}[[handler]]\ntype = \"shell\"\n"));
        assert!(
            e.starts_with("hubhook.toml:3: handler[0].command: missing required key `command`"),
            "{e}"
        );
        let e = error(&format!(
            "{KEY}[[handler]]\ntype = \"shell\"\ncommand = []\n"
        ));
        assert!(
            e.starts_with("hubhook.toml:5: handler[0].command: must name the program"),
            "{e}"
        );
        let e = error(&format!(
            "{KEY}[[handler]]\ntype = \"shell\"\ncommand = \"deploy.sh --fast\"\n"
        ));
        assert!(
            e.starts_with("hubhook.toml:5: handler[0].command: must be a list, not string"),
            "{e}"
        );
    }

    #[test]
    fn docker_handlers() {
        let config = parse(&format!(
            "{KEY}[[handler]]\nname = \"blog\"\ntype = \"docker\"\nimage = \"nathanleclaire/octoblog\"\n\
             container = \"blog\"\nrun_args = [\"-p\", \"8000:80\"]\nhealth = \"http://127.0.0.1:8000/\"\n"
        ))
        .expect("valid docker handler");
        let h = &config.handlers[0];
        assert_eq!(
            h.tag.as_deref(),
            Some("latest"),
            "docker deploys latest unless told"
        );
        assert_eq!(h.repo.as_deref(), Some("nathanleclaire/octoblog"));
        assert!(matches!(h.kind, HandlerKind::Docker(_)));

        let e = error(&format!(
            "{KEY}[[handler]]\ntype = \"docker\"\nimage = \"a/b\"\n"
        ));
        assert!(
            e.starts_with("hubhook.toml:3: handler[0].container: set exactly one of"),
            "{e}"
        );
        let e = error(&format!(
            "{KEY}[[handler]]\ntype = \"docker\"\ncontainer = \"x\"\n"
        ));
        assert!(
            e.starts_with("hubhook.toml:3: handler[0].image: missing required key `image`"),
            "{e}"
        );
        let e = error(&format!(
            "{KEY}[[handler]]\ntype = \"docker\"\nimage = \"a/b:latest\"\ncontainer = \"x\"\n"
        ));
        assert!(
            e.starts_with(
                "hubhook.toml:5: handler[0].image: image \"a/b:latest\" is not a repository name"
            ),
            "{e}"
        );
        let e = error(&format!(
            "{KEY}[[handler]]\ntype = \"docker\"\nimage = \"a/b\"\ncontainer = \"x\"\nhealth = \"https://x\"\n"
        ));
        assert!(e.starts_with("hubhook.toml:7: handler[0].health:"), "{e}");
        let e = error(&format!(
            "{KEY}[[handler]]\ntype = \"docker\"\nimage = \"a/b\"\nservice = \"web\"\nrun_args = [\"-p\"]\n"
        ));
        assert!(
            e.starts_with("hubhook.toml:7: handler[0].run_args: applies to containers only"),
            "{e}"
        );
        // Blue-green: its keys, and what it refuses.
        let bg =
            "type = \"docker\"\nimage = \"a/b\"\ncontainer = \"web\"\nstrategy = \"blue-green\"\n";
        let ok = "ports = [\"127.0.0.1:8001:80\", \"127.0.0.1:8002:80\"]\nupstream_file = \"web.upstream\"\n";
        parse(&format!("{KEY}[[handler]]\n{bg}{ok}")).expect("a blue-green handler");
        for (extra, want) in [
            (
                format!("{ok}run_args = [\"-p\", \"8000:80\"]\n"),
                "handler[0].run_args: \"-p\" publishes a port",
            ),
            (
                format!("{ok}run_args = [\"--publish=8000:80\"]\n"),
                "handler[0].run_args: \"--publish=8000:80\" publishes a port",
            ),
            (
                "upstream_file = \"u\"\n".to_owned(),
                "handler[0].ports: blue-green needs two port mappings",
            ),
            (
                "ports = [\"8001:80\", \"8002:80\"]\n".to_owned(),
                "handler[0].upstream_file: blue-green needs the file",
            ),
            (
                "ports = [\"8001:80\", \"8001:80\"]\nupstream_file = \"u\"\n".to_owned(),
                "handler[0].ports: \"8001:80\" and \"8001:80\" are the same port",
            ),
        ] {
            let e = error(&format!("{KEY}[[handler]]\n{bg}{extra}"));
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = error(&format!(
            "{KEY}[[handler]]\ntype = \"docker\"\nimage = \"a/b\"\ncontainer = \"web\"\nports = [\"8001:80\", \"8002:80\"]\n"
        ));
        assert!(
            e.contains("handler[0].ports: applies to strategy = \"blue-green\" only"),
            "{e}"
        );
        // Keys a Swarm update cannot honour are refused with the reason, not ignored.
        for (key, value, why) in [
            (
                "health",
                "\"http://127.0.0.1:8000/\"",
                "Swarm gates a service update with the image's HEALTHCHECK",
            ),
            ("health_timeout", "\"30s\"", "Swarm gates a service update"),
            ("stop_timeout", "\"5s\"", "--stop-grace-period"),
            ("cleanup", "true", "every node keeps its own images"),
        ] {
            let e = error(&format!(
                "{KEY}[[handler]]\ntype = \"docker\"\nimage = \"a/b\"\nservice = \"web\"\n{key} = {value}\n"
            ));
            assert!(
                e.starts_with(&format!(
                    "hubhook.toml:7: handler[0].{key}: applies to containers only: "
                )) && e.contains(why),
                "{e}"
            );
        }
    }

    #[test]
    fn debug_shows_no_key() {
        let config = parse(&format!(
            "{KEY}[[hook]]\npath = \"/r\"\nprovider = \"registry\"\nregistry = \"r.example\"\napi_keys = [\"another-key-0123456789\"]\n"
        ))
        .expect("config");
        let shown = format!("{config:?}");
        assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
        assert!(!shown.contains("another-key"), "{shown}");
        assert!(shown.contains("key(s), redacted"), "{shown}");
    }

    #[test]
    fn hooks() {
        let config = parse(
            "[[hook]]\npath = \"/registry\"\nprovider = \"registry\"\nregistry = \"127.0.0.1:5000\"\napi_keys = [\"0123456789abcdef0123\"]\n\
             [[hook]]\npath = \"/github\"\nprovider = \"github\"\nsecret = \"s\"\n",
        )
        .expect("hooks only");
        assert!(
            !config.dockerhub_hook,
            "no Docker Hub hook unless asked for"
        );
        assert_eq!(config.hooks.len(), 2);
        assert_eq!(config.hooks[1].provider.name(), "github");

        assert_eq!(config.hooks[0].registry.as_deref(), Some("127.0.0.1:5000"));
        let e = error("[[hook]]\npath = \"/r\"\nprovider = \"registry\"\napi_keys = [\"0123456789abcdef0123\"]\n");
        assert!(
            e.starts_with("hubhook.toml:1: hook[0].registry: missing required key `registry` (the host its images live on"),
            "{e}"
        );
        let e = error("[[hook]]\npath = \"/g\"\nprovider = \"github\"\nsecret = \"s\"\nregistry = \"ghcr.io\"\n");
        assert!(
            e.starts_with(
                "hubhook.toml:5: hook[0].registry: applies to provider = \"registry\" only"
            ),
            "{e}"
        );
        let e = error(
            "[[hook]]\npath = \"/r\"\nprovider = \"registry\"\nregistry = \"127.0.0.1:5000\"\n",
        );
        assert!(
            e.starts_with("hubhook.toml:1: hook[0].api_keys: no API key for this hook"),
            "{e}"
        );
        let e = error("[[hook]]\npath = \"/g\"\nprovider = \"github\"\nsecret = \"\"\n");
        assert!(
            e.starts_with("hubhook.toml:4: hook[0].secret: `secret` must not be empty"),
            "{e}"
        );
        let e = error("[[hook]]\npath = \"/g\"\nprovider = \"github\"\n");
        assert!(
            e.starts_with("hubhook.toml:1: hook[0].secret: missing required key `secret`"),
            "{e}"
        );
        let e =
            error("[[hook]]\npath = \"/x\"\nprovider = \"quay\"\nallow_unauthenticated = true\n");
        assert!(
            e.starts_with("hubhook.toml:3: hook[0].provider: unknown provider \"quay\""),
            "{e}"
        );
        let e = error(&format!(
            "{KEY}[[hook]]\npath = \"/hubhook\"\nprovider = \"registry\"\nregistry = \"r.example\"\nallow_unauthenticated = true\n"
        ));
        assert!(
            e.starts_with("hubhook.toml:4: hook[0].path: \"/hubhook\" is already served"),
            "{e}"
        );
        let e = error("[[hook]]\npath = \"/c\"\nprovider = \"generic\"\nrepo_pointer = \"repo\"\ntag_pointer = \"/tag\"\nallow_unauthenticated = true\n");
        assert!(
            e.starts_with("hubhook.toml:4: hook[0].repo_pointer: \"repo\" is not a JSON pointer"),
            "{e}"
        );
    }

    #[test]
    fn keys_are_required_unless_waived() {
        assert!(error("listen = \"127.0.0.1:1\"\n").contains("no API key"));
        assert!(
            error("[auth]\napi_keys = [\"short\"]\n").starts_with("hubhook.toml:2: auth.api_keys:")
        );
        let open = parse("[auth]\nallow_unauthenticated = true\n").expect("waived");
        assert!(open.api_keys.is_empty());
    }

    #[test]
    fn duplicate_names_are_refused() {
        let e = error(&format!(
            "{KEY}[[handler]]\ntype = \"log\"\n[[handler]]\ntype = \"log\"\n"
        ));
        assert!(e.starts_with("hubhook.toml:5: handler[1].name:"), "{e}");
    }
}
