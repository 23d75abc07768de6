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

use hubhook_core::auth;
use hubhook_core::listener;
use hubhook_core::plugin::PluginHandler;
use hubhook_core::{Generic, Hook, Provider};
use hubhook_handlers::{ComposeHandler, DockerHandler, LogFormat};
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
    /// The `[[notify]]` destinations.
    pub(crate) notify: Vec<hubhook_core::notify::Notify>,
    /// The web page of deliveries, when `[ui]` turns it on.
    pub(crate) ui: Option<UiSpec>,
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

/// The `[ui]` table, when enabled.
#[derive(Clone)]
pub(crate) struct UiSpec {
    pub(crate) listen: SocketAddr,
    /// An Argon2 hash in PHC form (`$argon2id$...`), checked when the file is read.
    pub(crate) password_hash: Option<String>,
    /// Serve the page with `[tls]`'s certificate (and mark its cookie `Secure`).
    pub(crate) tls: bool,
    /// Mark the cookie `Secure` without `tls` (a TLS proxy in front).
    pub(crate) secure_cookie: bool,
    /// The `Host` values the page answers to, besides loopback's.
    pub(crate) hosts: Vec<String>,
    pub(crate) session_ttl: Duration,
}

impl fmt::Debug for UiSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UiSpec")
            .field("listen", &self.listen)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "redacted"),
            )
            .field("tls", &self.tls)
            .field("secure_cookie", &self.secure_cookie)
            .field("hosts", &self.hosts)
            .field("session_ttl", &self.session_ttl)
            .finish()
    }
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
    Compose(Box<ComposeHandler>),
    Plugin(PluginHandler),
}

impl HandlerKind {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Self::Log { .. } => "log",
            Self::Shell { .. } => "shell",
            Self::Docker(_) => "docker",
            Self::Compose(_) => "compose",
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
            notify: Vec::new(),
            ui: None,
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
        // Webhook URLs carry tokens too.
        let holds_secrets = text.contains("api_keys")
            || text.contains("secret")
            || text.contains("password_hash")
            || !config.notify.is_empty();
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

struct Parser<'a> {
    file: &'a Path,
    text: &'a str,
    /// What is worth saying but not refusing (a key that looks like words).
    warnings: std::cell::RefCell<Vec<String>>,
}

mod handler;
mod hook;
mod notify;
mod parse;
mod raw;
#[cfg(test)]
mod tests;
mod tls;
mod ui;
mod words;

use raw::*;
use words::{in_words, offending_key, without_values, ByteSize, HumanDuration};
