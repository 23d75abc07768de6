//! `HubhookService`: one request in, one response out — the HTTP contract of hubhook.
//!
//! Routing, authentication, limits, decoding and the hand-off to dispatch happen here
//! (`hook`), in that order, so the cheapest refusals come first and nothing is read from a
//! client that has not shown a key. The same value serves the built-in
//! [`Listener`](crate::Listener) and, with the `tower` feature, any tower/axum/hyper stack.

mod builder;
mod endpoint;
mod hook;
mod recovery;
mod response;
#[cfg(feature = "tower")]
mod tower;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::ALLOW;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;

use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::provider::RecentEvents;

pub use builder::{Hook, HubhookServiceBuilder};
pub use endpoint::Endpoint;
use endpoint::Which;
pub use recovery::{Recovery, ReplayError};
use response::{error, text, with_header};

/// The default hook path.
pub const DEFAULT_PATH: &str = "/hubhook";
/// The default body limit: 1 MiB.
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
/// The default body limit of a hook that only a signature authenticates (GitHub, signed
/// generic): 64 KiB, several times a GitHub package event (about 10 KiB).
pub const DEFAULT_SIGNED_MAX_BODY: u64 = 64 * 1024;
/// Bodies read at once before any authentication, at most; more get 503.
const UNAUTHENTICATED_READS: usize = 32;
pub(crate) const HEALTH_PATH: &str = "/healthz";
pub(crate) const METRICS_PATH: &str = "/metrics";

/// The webhook endpoint as a value: answers one request at a time, runs handlers in the
/// background. Cheap to clone (all clones share the same state).
///
/// ```
/// use hubhook_core::HubhookService;
/// # use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome};
/// # struct Deploy;
/// # #[async_trait] impl Handler for Deploy {
/// #     fn name(&self) -> &str { "deploy" }
/// #     async fn handle(&self, _: &HubMessage, _: &Context) -> Result<Outcome, HandlerError> { Ok(Outcome::default()) }
/// # }
/// let service = HubhookService::builder()
///     .path("/hooks/site")
///     .api_key("a-long-random-key")
///     .handler(Deploy)
///     .build()?;
/// # Ok::<(), hubhook_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct HubhookService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    hooks: Vec<HookState>,
    max_body: u64,
    /// The body limit of a hook that only a signature authenticates (read before it).
    signed_max_body: u64,
    /// Places for bodies read before any authentication (signed hooks): a few clients
    /// cannot make the server hold many large bodies at once.
    unauthenticated_reads: tokio::sync::Semaphore,
    read_timeout: Duration,
    draining: AtomicBool,
    dispatcher: Dispatcher,
    /// Counts answers by status; also an observer of deliveries, through the dispatcher.
    metrics: Arc<Metrics>,
}

impl HubhookService {
    /// A builder with the defaults: path `/hubhook`, 1 MiB bodies, no handlers, no keys.
    pub fn builder() -> HubhookServiceBuilder {
        HubhookServiceBuilder::new()
    }

    /// The path of the first hook (the Docker Hub hook, when there is one).
    pub fn path(&self) -> &str {
        self.inner
            .hooks
            .first()
            .map_or("", |h| h.hook.path.as_str())
    }

    /// Every hook's path and provider name.
    pub fn hooks(&self) -> Vec<(String, &'static str)> {
        self.inner
            .hooks
            .iter()
            .map(|h| (h.hook.path.clone(), h.hook.provider.name()))
            .collect()
    }

    /// The names of the configured handlers, in the order they were added.
    pub fn handler_names(&self) -> Vec<String> {
        self.inner
            .dispatcher
            .routes()
            .map(|r| r.name().to_owned())
            .collect()
    }

    /// Answers one request. Never fails: every problem is an HTTP status.
    pub async fn respond<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let response = match self.endpoint_at(req.uri().path()) {
            Some(which) => self.answer(which, req).await,
            None => error(StatusCode::NOT_FOUND, "not found"),
        };
        self.counted(response)
    }

    /// `response`, counted in `/metrics` by its status.
    fn counted(&self, response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
        self.inner.metrics.record_status(response.status().as_u16());
        response
    }

    /// Which endpoint answers at `path`, if any.
    fn endpoint_at(&self, path: &str) -> Option<Which> {
        if let Some(i) = self.inner.hooks.iter().position(|h| h.hook.path == path) {
            return Some(Which::Hook(i));
        }
        match path {
            HEALTH_PATH => Some(Which::Health),
            METRICS_PATH => Some(Which::Metrics),
            _ => None,
        }
    }

    /// `req` answered by one endpoint, whatever its path.
    async fn answer<B>(&self, which: Which, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let hook = match which {
            Which::Hook(i) => &self.inner.hooks[i],
            Which::Health | Which::Metrics => {
                if !matches!(*req.method(), Method::GET | Method::HEAD) {
                    return with_header(
                        error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
                        ALLOW,
                        "GET, HEAD",
                    );
                }
                return match which {
                    Which::Health => text(StatusCode::OK, "text/plain", "ok\n".to_owned()),
                    _ => self.metrics_text(),
                };
            }
        };
        self.hook(req, hook).await
    }

    fn metrics_text(&self) -> Response<Full<Bytes>> {
        let dispatcher = &self.inner.dispatcher;
        let mut body = self
            .inner
            .metrics
            .render(dispatcher.running(), &dispatcher.depths());
        dispatcher.observers().render_metrics(&mut body);
        text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            body,
        )
    }
}

impl HubhookService {
    /// Stops accepting webhooks (they get 503 with `Retry-After`), lets running handlers
    /// finish within `grace`, then cancels the rest. Returns whether all finished in time.
    ///
    /// The [`Listener`](crate::Listener) calls this itself; call it when the service is
    /// mounted elsewhere, after the HTTP server has stopped.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.begin_shutdown();
        self.inner.dispatcher.shutdown(grace).await
    }

    /// Whether `path` is one of the hooks (not `/healthz`, `/metrics` or unknown).
    pub(crate) fn is_hook_path(&self, path: &str) -> bool {
        self.inner.hooks.iter().any(|h| h.hook.path == path)
    }

    fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Makes new webhooks get 503 from now on, without waiting for anything.
    pub(crate) fn begin_shutdown(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }
}

#[derive(Debug)]
struct HookState {
    hook: Hook,
    recent: Arc<RecentEvents>,
}
