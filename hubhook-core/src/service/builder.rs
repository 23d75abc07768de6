//! Building a [`HubhookService`]: hooks, limits, routes and the observers of deliveries.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::ApiKeys;
use crate::dispatch::{Dispatcher, Route};
use crate::error::Kind;
use crate::handler::Handler;
use crate::metrics::Metrics;
use crate::observe::{self, Observer, Observers, Store};
use crate::provider::{Provider, RecentEvents};
use crate::service::{
    HookState, HubhookService, Inner, DEFAULT_MAX_BODY, DEFAULT_PATH, DEFAULT_SIGNED_MAX_BODY,
};
use crate::service::{HEALTH_PATH, METRICS_PATH};
use crate::Error;

/// Builds a [`HubhookService`]. Start from [`HubhookService::builder`].
#[derive(Debug)]
#[must_use]
pub struct HubhookServiceBuilder {
    shorthand: Hook,
    shorthand_used: bool,
    hooks: Vec<Hook>,
    max_body: u64,
    signed_max_body: u64,
    read_timeout: Duration,
    max_pending: usize,
    routes: Vec<Route>,
    pub(crate) observers: Vec<Arc<dyn Observer>>,
    pub(crate) store: Option<Arc<dyn Store>>,
}

impl HubhookServiceBuilder {
    /// A builder with the defaults: path `/hubhook`, 1 MiB bodies, no handlers, no keys.
    pub(crate) fn new() -> Self {
        Self {
            shorthand: Hook::new(DEFAULT_PATH, Provider::DockerHub),
            shorthand_used: false,
            hooks: Vec::new(),
            max_body: DEFAULT_MAX_BODY,
            signed_max_body: DEFAULT_SIGNED_MAX_BODY,
            read_timeout: Duration::from_secs(30),
            max_pending: 1024,
            routes: Vec::new(),
            observers: Vec::new(),
            store: None,
        }
    }

    /// The path of the Docker Hub hook; default `/hubhook`. (This and [`api_key`](Self::api_key)
    /// configure the Docker Hub hook; [`hook`](Self::hook) adds others.)
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.shorthand.path = path.into();
        self.shorthand_used = true;
        self
    }

    /// Adds a key that authenticates requests to the Docker Hub hook (as `?apikey=` or
    /// `Authorization: Bearer`). Call it again to accept several keys at once, for rotation.
    pub fn api_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.shorthand = self.shorthand.api_key(key);
        self.shorthand_used = true;
        self
    }

    /// Lets [`build`](Self::build) succeed with no key on the Docker Hub hook: anyone who
    /// can reach it can trigger handlers. Keys that are configured are still required.
    pub fn allow_unauthenticated(mut self, allow: bool) -> Self {
        self.shorthand = self.shorthand.allow_unauthenticated(allow);
        self.shorthand_used = true;
        self
    }

    /// Adds a hook: another path, provider and authentication. When only `hook` is used
    /// (no [`path`](Self::path) or [`api_key`](Self::api_key)), there is no Docker Hub hook
    /// at `/hubhook`.
    pub fn hook(mut self, hook: Hook) -> Self {
        self.hooks.push(hook);
        self
    }

    /// The largest body accepted, in bytes; default 1 MiB. Larger ones get 413.
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// The largest body a hook authenticated only by a signature (GitHub, a signed
    /// generic hook without an API key) reads before it can check the signature; default
    /// [`DEFAULT_SIGNED_MAX_BODY`]. Larger ones get 413. At most 32 such bodies are read at
    /// once; more get 503 with `Retry-After`.
    pub fn signed_max_body(mut self, bytes: u64) -> Self {
        self.signed_max_body = bytes;
        self
    }

    /// How long a client may take to send the body once the headers are in; default 30 s.
    /// A slower one gets 408.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// How many deliveries may be waiting or running per handler, unless its
    /// [`Route::max_queued`] says otherwise; default 1024. A webhook that would need more
    /// gets 503 with `Retry-After`. Deliveries that coalesce share one place.
    pub fn max_pending(mut self, runs: usize) -> Self {
        self.max_pending = runs;
        self
    }

    /// Sends every accepted message to `handler`.
    pub fn handler(self, handler: impl Handler) -> Self {
        self.route(Route::new(handler))
    }

    /// Sends the messages `route` matches to its handler.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Checks the settings and builds the service. Building needs no runtime; answering
    /// requests does (handlers are spawned on the current tokio runtime).
    pub fn build(self) -> Result<HubhookService, Error> {
        let mut hooks = self.hooks;
        if self.shorthand_used || hooks.is_empty() {
            hooks.insert(0, self.shorthand);
        }
        for (i, hook) in hooks.iter().enumerate() {
            let path = &hook.path;
            let problem = Hook::check_path(path).err().or_else(|| {
                let taken = hooks[..i].iter().any(|h| h.path == *path);
                taken.then_some("two hooks have this path")
            });
            if let Some(problem) = problem {
                return Err(Error::new(Kind::InvalidPath(path.clone(), problem)));
            }
            if hook.empty_key {
                return Err(Error::new(Kind::EmptyApiKey));
            }
            if hook.keys.is_empty() && !hook.allow_unauthenticated && !hook.provider.is_signed() {
                return Err(Error::new(Kind::NoApiKey));
            }
            if hook.keys.is_empty() && !hook.provider.is_signed() {
                tracing::warn!(
                    path = %path,
                    "no API key configured: anyone who can reach the hook can trigger handlers"
                );
            }
        }
        let mut names: Vec<&str> = self.routes.iter().map(Route::name).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::new(Kind::DuplicateHandler(pair[0].to_owned())));
        }
        let metrics = Arc::new(Metrics::new(names.iter().copied()));
        let mut observers: Vec<Arc<dyn Observer>> = vec![Arc::new(observe::Log), metrics.clone()];
        observers.extend(self.observers);
        let observers = Arc::new(Observers::new(observers, self.store));
        Ok(HubhookService {
            inner: Arc::new(Inner {
                hooks: hooks
                    .into_iter()
                    .map(|hook| HookState {
                        hook,
                        recent: Arc::new(RecentEvents::default()),
                    })
                    .collect(),
                max_body: self.max_body,
                signed_max_body: self.signed_max_body.min(self.max_body),
                unauthenticated_reads: tokio::sync::Semaphore::new(super::UNAUTHENTICATED_READS),
                read_timeout: self.read_timeout,
                draining: AtomicBool::new(false),
                dispatcher: Dispatcher::new(self.routes, self.max_pending.max(1), observers),
                metrics,
            }),
        })
    }
}

/// One webhook endpoint: a path, the provider whose payloads it takes, and who may call it.
///
/// ```
/// use hubhook_core::{Hook, HubhookService, Provider};
///
/// let service = HubhookService::builder()
///     .hook(Hook::new("/registry", Provider::Registry).api_key("token-the-registry-sends"))
///     .hook(Hook::new("/github", Provider::GitHub { secret: "webhook secret".into() }))
///     .build()?;
/// # Ok::<(), hubhook_core::Error>(())
/// ```
#[derive(Debug)]
pub struct Hook {
    pub(crate) path: String,
    pub(crate) provider: Provider,
    pub(crate) keys: ApiKeys,
    allow_unauthenticated: bool,
    /// An empty or blank key was given: [`HubhookServiceBuilder::build`] refuses it.
    empty_key: bool,
    /// The registry host this hook's images live on (registry notifications).
    pub(crate) registry: Option<String>,
}

impl Hook {
    /// Whether `path` can be a hook's path: it starts with `/`, holds no query or fragment
    /// (the key goes in `?apikey=` when a request is made), and is not `/healthz` or
    /// `/metrics`. `Err` says which of these it breaks. This is the rule
    /// [`HubhookServiceBuilder::build`] applies; a configuration reader can apply it first
    /// to point at the line.
    ///
    /// ```
    /// use hubhook_core::Hook;
    ///
    /// assert!(Hook::check_path("/hooks/registry").is_ok());
    /// assert_eq!(Hook::check_path("/healthz"), Err("/healthz is the health check's path"));
    /// ```
    pub fn check_path(path: &str) -> Result<(), &'static str> {
        if !path.starts_with('/') {
            Err("a hook path must start with '/'")
        } else if path.contains(['?', '#']) {
            Err("a hook path holds no query or fragment: the key goes in ?apikey= when a request is made")
        } else if path == HEALTH_PATH {
            Err("/healthz is the health check's path")
        } else if path == METRICS_PATH {
            Err("/metrics is the metrics' path")
        } else {
            Ok(())
        }
    }

    /// A hook at `path` taking `provider`'s payloads.
    pub fn new(path: impl Into<String>, provider: Provider) -> Self {
        Self {
            path: path.into(),
            provider,
            keys: ApiKeys::default(),
            allow_unauthenticated: false,
            empty_key: false,
            registry: None,
        }
    }

    /// The registry host (`"registry.example.com"`, `"127.0.0.1:5000"`) this hook's
    /// images live on, for [`Provider::Registry`]: its messages name this host, and an
    /// event for another host is ignored (200). Without it they name no host: the host
    /// a notification carries comes from the pusher's `Host` header, never trusted.
    #[must_use]
    pub fn registry(mut self, host: impl Into<String>) -> Self {
        self.registry = Some(host.into());
        self
    }

    /// Adds an accepted key (`?apikey=` or `Authorization: Bearer`); several may be valid.
    #[must_use]
    pub fn api_key(mut self, key: impl AsRef<[u8]>) -> Self {
        let key = key.as_ref();
        if key.trim_ascii().is_empty() {
            self.empty_key = true;
        } else {
            self.keys.add(key);
        }
        self
    }

    /// Accepts requests with no key (signed providers still check their signature).
    #[must_use]
    pub fn allow_unauthenticated(mut self, allow: bool) -> Self {
        self.allow_unauthenticated = allow;
        self
    }
}
