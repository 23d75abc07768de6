//! The file as serde reads it: every table's keys and their types. What is checked after
//! reading (addresses, files, bounds) is in the readers of each table.

use std::collections::BTreeMap;
use std::fmt;

use hubhook_handlers::LogFormat;
use serde::Deserialize;
use toml::Spanned;

use super::words::{ByteSize, HumanDuration};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) data_dir: Option<Spanned<String>>,
    pub(super) max_body: Option<ByteSize>,
    pub(super) signed_max_body: Option<ByteSize>,
    pub(super) header_timeout: Option<HumanDuration>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) max_connections_per_ip: Option<Spanned<i64>>,
    pub(super) shutdown_grace: Option<HumanDuration>,
    pub(super) journal: Option<Spanned<JournalSetting>>,
    pub(super) callback: Option<Spanned<RawCallback>>,
    #[serde(default)]
    pub(super) auth: RawAuth,
    pub(super) tls: Option<RawTls>,
    #[serde(default, rename = "handler")]
    pub(super) handlers: Vec<Spanned<RawHandler>>,
    #[serde(default, rename = "hook")]
    pub(super) hooks: Vec<Spanned<RawHook>>,
    #[serde(default, rename = "notify")]
    pub(super) notify: Vec<Spanned<RawNotify>>,
    pub(super) ui: Option<Spanned<RawUi>>,
}

/// `[ui]`: the web page of deliveries.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUi {
    #[serde(default = "yes")]
    pub(super) enabled: bool,
    pub(super) listen: Option<Spanned<String>>,
    pub(super) password_hash: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) tls: bool,
    #[serde(default)]
    pub(super) secure_cookie: bool,
    #[serde(default)]
    pub(super) hosts: Vec<String>,
    pub(super) session_ttl: Option<HumanDuration>,
}

/// `journal = true`, or a `[journal]` table.
pub(super) enum JournalSetting {
    On(bool),
    Table(RawJournal),
}

impl<'de> Deserialize<'de> for JournalSetting {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Setting;
        impl<'de> serde::de::Visitor<'de> for Setting {
            type Value = JournalSetting;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or a table")
            }

            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<JournalSetting, E> {
                Ok(JournalSetting::On(on))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<JournalSetting, A::Error> {
                // The table's own errors (an unknown key, a wrong type) keep their words.
                let de = serde::de::value::MapAccessDeserializer::new(map);
                RawJournal::deserialize(de).map(JournalSetting::Table)
            }
        }
        de.deserialize_any(Setting)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJournal {
    #[serde(default = "yes")]
    pub(super) enabled: bool,
    pub(super) keep_days: Option<u64>,
    pub(super) keep_deliveries: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCallback {
    #[serde(default)]
    pub(super) enabled: bool,
    pub(super) allow: Option<Vec<String>>,
    pub(super) timeout: Option<HumanDuration>,
    pub(super) ca_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) target_url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    pub(super) path: Spanned<String>,
    pub(super) provider: ProviderName,
    #[serde(default)]
    pub(super) api_keys: Vec<Spanned<String>>,
    pub(super) api_keys_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) allow_unauthenticated: bool,
    pub(super) secret: Option<Spanned<String>>,
    pub(super) repo_pointer: Option<Spanned<String>>,
    pub(super) tag_pointer: Option<Spanned<String>>,
    pub(super) digest_pointer: Option<Spanned<String>>,
    pub(super) signature_header: Option<Spanned<String>>,
    pub(super) registry: Option<Spanned<String>>,
}

/// A hook's `provider`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProviderName {
    #[serde(rename = "dockerhub")]
    DockerHub,
    #[serde(rename = "registry")]
    Registry,
    #[serde(rename = "github")]
    GitHub,
    #[serde(rename = "generic")]
    Generic,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(default)]
    pub(super) api_keys: Vec<Spanned<String>>,
    pub(super) api_keys_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) allow_unauthenticated: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) acme: Option<RawAcme>,
}

/// `[tls.acme]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    pub(super) domains: Vec<String>,
    pub(super) email: Option<String>,
    pub(super) directory: Option<String>,
    pub(super) cache_dir: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) renew_before: Option<HumanDuration>,
    pub(super) check_every: Option<HumanDuration>,
}

/// A `[[handler]]` table: the keys every handler has, read here, and its type's own keys
/// in `rest`, read by that type's struct (which refuses keys it does not know).
#[derive(Deserialize)]
pub(super) struct RawHandler {
    #[serde(rename = "type")]
    pub(super) kind: Option<HandlerType>,
    pub(super) name: Option<Spanned<String>>,
    pub(super) repo: Option<String>,
    pub(super) tag: Option<String>,
    pub(super) timeout: Option<HumanDuration>,
    pub(super) coalesce: Option<hubhook_core::Coalesce>,
    pub(super) max_concurrency: Option<Spanned<i64>>,
    pub(super) max_queued: Option<Spanned<i64>>,
    pub(super) retries: Option<Spanned<i64>>,
    pub(super) retry_backoff: Option<HumanDuration>,
    /// serde cannot both flatten these keys into each type's struct and refuse unknown
    /// ones, so the type's keys are kept here and read second.
    #[serde(flatten)]
    pub(super) rest: toml::Table,
}

/// A handler's `type`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum HandlerType {
    Log,
    Shell,
    Docker,
    Compose,
    Plugin,
}

impl HandlerType {
    pub(super) const ALL: [Self; 5] = [
        Self::Log,
        Self::Shell,
        Self::Docker,
        Self::Compose,
        Self::Plugin,
    ];

    /// The word for it in the file, which is also a handler's name when it has none.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Shell => "shell",
            Self::Docker => "docker",
            Self::Compose => "compose",
            Self::Plugin => "plugin",
        }
    }
}

/// A docker handler's `strategy`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Strategy {
    StopFirst,
    BlueGreen,
}

/// The keys of `shell` handlers beyond the common ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShell {
    pub(super) command: Vec<String>,
    pub(super) workdir: Option<String>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    pub(super) output_tail: Option<usize>,
}

/// The keys of `docker` handlers beyond the common ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocker {
    pub(super) image: String,
    pub(super) container: Option<String>,
    pub(super) service: Option<String>,
    #[serde(default)]
    pub(super) run_args: Vec<String>,
    #[serde(default)]
    pub(super) command: Vec<String>,
    pub(super) stop_timeout: Option<HumanDuration>,
    pub(super) step_timeout: Option<HumanDuration>,
    pub(super) health: Option<String>,
    pub(super) health_timeout: Option<HumanDuration>,
    #[serde(default)]
    pub(super) cleanup: bool,
    pub(super) docker: Option<String>,
    pub(super) docker_host: Option<String>,
    pub(super) strategy: Option<Strategy>,
    pub(super) ports: Option<Vec<String>>,
    pub(super) upstream_file: Option<String>,
    pub(super) reload: Option<Vec<String>>,
}

/// A `[[notify]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) name: Option<String>,
    pub(super) url: Spanned<String>,
    pub(super) on: Option<Vec<String>>,
    pub(super) handlers: Option<Vec<String>>,
    pub(super) repo: Option<String>,
    pub(super) template: Option<String>,
    pub(super) secret: Option<Spanned<String>>,
    pub(super) timeout: Option<HumanDuration>,
    pub(super) retries: Option<u32>,
    pub(super) retry_backoff: Option<HumanDuration>,
}

/// The keys of `compose` handlers beyond the common ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompose {
    pub(super) image: String,
    pub(super) project_dir: String,
    #[serde(default)]
    pub(super) files: Vec<String>,
    pub(super) project: Option<String>,
    pub(super) services: Vec<String>,
    pub(super) health: Option<String>,
    pub(super) health_timeout: Option<HumanDuration>,
    pub(super) step_timeout: Option<HumanDuration>,
    pub(super) compose: Option<Vec<String>>,
    pub(super) docker: Option<String>,
    pub(super) docker_host: Option<String>,
}

/// The keys of `plugin` handlers beyond the common ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugin {
    pub(super) path: String,
    #[serde(default)]
    pub(super) config: toml::Table,
}

/// The keys of `log` handlers beyond the common ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default)]
    pub(super) format: LogFormat,
}
