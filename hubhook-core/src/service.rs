//! `HubhookService`: one request in, one response out — the HTTP contract of hubhook.
//!
//! Routing, authentication, limits, decoding and the hand-off to dispatch all happen here,
//! in that order, so the cheapest refusals come first and nothing is read from a client
//! that has not shown a key. The same value serves the built-in [`Listener`](crate::Listener)
//! and, with the `tower` feature, any tower/axum/hyper stack.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};

use crate::auth::ApiKeys;
use crate::dispatch::{Dispatcher, Route};
use crate::handler::{DeliveryId, Handler};
use crate::metrics::Metrics;
use crate::provider::{Decoded, Provider, RecentEvents, Refusal};
use crate::Error;

/// The default hook path.
pub const DEFAULT_PATH: &str = "/hubhook";
/// The default body limit: 1 MiB.
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
const HEALTH_PATH: &str = "/healthz";
const METRICS_PATH: &str = "/metrics";
/// Seconds a client is told to wait when refused with 503.
const RETRY_AFTER_SECS: &str = "5";

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
    read_timeout: Duration,
    draining: AtomicBool,
    dispatcher: Dispatcher,
    metrics: Arc<Metrics>,
}

/// Builds a [`HubhookService`]. Start from [`HubhookService::builder`].
#[derive(Debug)]
#[must_use]
pub struct HubhookServiceBuilder {
    shorthand: Hook,
    shorthand_used: bool,
    hooks: Vec<Hook>,
    max_body: u64,
    read_timeout: Duration,
    max_pending: usize,
    routes: Vec<Route>,
    #[cfg(feature = "journal")]
    journal: Option<Arc<crate::journal::Journal>>,
}

impl HubhookServiceBuilder {
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

    /// How long a client may take to send the body once the headers are in; default 30 s.
    /// A slower one gets 408.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// How many handler runs may be waiting or running at once; default 1024. A webhook
    /// that would need more gets 503 with `Retry-After`.
    pub fn max_pending(mut self, runs: usize) -> Self {
        self.max_pending = runs;
        self
    }

    /// Records every accepted delivery in `journal` before answering 2xx, and every
    /// handler run's outcome; [`HubhookService::recover`] runs what a previous process
    /// left unfinished.
    #[cfg(feature = "journal")]
    pub fn journal(mut self, journal: crate::journal::Journal) -> Self {
        self.journal = Some(Arc::new(journal));
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
            if !path.starts_with('/')
                || path.contains(['?', '#'])
                || path == HEALTH_PATH
                || path == METRICS_PATH
                || hooks[..i].iter().any(|h| h.path == *path)
            {
                return Err(Error::InvalidPath(path.clone()));
            }
            if hook.keys.is_empty() && !hook.allow_unauthenticated && !hook.provider.is_signed() {
                return Err(Error::NoApiKey);
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
            return Err(Error::DuplicateHandler(pair[0].to_owned()));
        }
        let metrics = Arc::new(Metrics::new(names.iter().copied()));
        Ok(HubhookService {
            inner: Arc::new(Inner {
                hooks: hooks
                    .into_iter()
                    .map(|hook| HookState {
                        hook,
                        recent: RecentEvents::default(),
                    })
                    .collect(),
                max_body: self.max_body,
                read_timeout: self.read_timeout,
                draining: AtomicBool::new(false),
                dispatcher: {
                    #[allow(unused_mut)]
                    let mut dispatcher =
                        Dispatcher::new(self.routes, self.max_pending.max(1), metrics.clone());
                    #[cfg(feature = "journal")]
                    {
                        dispatcher.journal = self.journal;
                    }
                    dispatcher
                },
                metrics,
            }),
        })
    }
}

impl HubhookService {
    /// A builder with the defaults: path `/hubhook`, 1 MiB bodies, no handlers, no keys.
    pub fn builder() -> HubhookServiceBuilder {
        HubhookServiceBuilder {
            shorthand: Hook::new(DEFAULT_PATH, Provider::DockerHub),
            shorthand_used: false,
            hooks: Vec::new(),
            max_body: DEFAULT_MAX_BODY,
            read_timeout: Duration::from_secs(30),
            max_pending: 1024,
            routes: Vec::new(),
            #[cfg(feature = "journal")]
            journal: None,
        }
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
            .iter()
            .map(|r| r.name().to_owned())
            .collect()
    }

    /// Answers one request. Never fails: every problem is an HTTP status.
    pub async fn respond<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let response = self.route(req).await;
        self.inner.metrics.record_status(response.status().as_u16());
        response
    }

    async fn route<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path();
        if let Some(hook) = self.inner.hooks.iter().find(|h| h.hook.path == path) {
            return self.hook(req, hook).await;
        }
        let readable = matches!(*req.method(), Method::GET | Method::HEAD);
        match path {
            HEALTH_PATH if readable => text(StatusCode::OK, "text/plain", "ok\n".to_owned()),
            METRICS_PATH if readable => {
                #[allow(unused_mut)]
                let mut body = self.inner.metrics.render(self.inner.dispatcher.running());
                #[cfg(feature = "journal")]
                if let Some(journal) = &self.inner.dispatcher.journal {
                    body.push_str(&journal.render_metrics());
                }
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    body,
                )
            }
            HEALTH_PATH | METRICS_PATH => with_header(
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
                ALLOW,
                "GET, HEAD",
            ),
            _ => error(StatusCode::NOT_FOUND, "not found"),
        }
    }

    async fn hook<B>(&self, req: Request<B>, state: &HookState) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let hook = &state.hook;
        if req.method() != Method::POST {
            return with_header(
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
                ALLOW,
                "POST",
            );
        }
        let (parts, body) = req.into_parts();
        if !hook.keys.is_empty() && !hook.keys.allows(&parts) {
            // One body for every way of failing, so a probe learns nothing about keys.
            tracing::info!(
                path = parts.uri.path(),
                "refused a request without a valid key"
            );
            return error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
        if let Some(kind) = parts.headers.get(CONTENT_TYPE) {
            if !is_json(kind) {
                return error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "content type must be application/json",
                );
            }
        }
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.inner.max_body) {
            return self.too_large();
        }
        let limited = Limited::new(body, self.inner.max_body as usize);
        let bytes = match tokio::time::timeout(self.inner.read_timeout, limited.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return self.too_large();
            }
            Ok(Err(_)) => return error(StatusCode::BAD_REQUEST, "could not read the body"),
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "the body took too long to arrive",
                )
            }
        };
        if let Err(Refusal::Unauthorized) = hook.provider.verify(&parts.headers, &bytes) {
            tracing::info!(
                path = parts.uri.path(),
                "refused a request without a valid signature"
            );
            return error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
        if self.inner.draining.load(Ordering::Acquire) {
            return unavailable("shutting down");
        }
        let messages = match hook.provider.decode(&parts.headers, &bytes) {
            Ok(Decoded::Messages(messages)) => messages,
            Ok(Decoded::Ignored(reason)) => {
                tracing::info!(path = parts.uri.path(), reason, "ignored a webhook");
                let body = serde_json::json!({ "ignored": reason }).to_string();
                return text(StatusCode::OK, "application/json", body);
            }
            Err(refusal) => {
                let reason = match refusal {
                    Refusal::BadRequest(reason) => reason,
                    Refusal::Unauthorized => "unauthorized".to_owned(),
                };
                tracing::info!(path = parts.uri.path(), reason = %reason, "refused a payload");
                return error(StatusCode::BAD_REQUEST, &reason);
            }
        };
        let mut accepted = Vec::new();
        for (msg, event) in messages {
            // A registry redelivers an envelope it got no 2xx for: act on each event once.
            if event.as_deref().is_some_and(|id| state.recent.seen(id)) {
                continue;
            }
            let delivery = DeliveryId::generate();
            let (repo, tag) = (msg.repo().to_owned(), msg.tag().to_owned());
            let reservation = match self.inner.dispatcher.reserve(&msg, None) {
                Ok(reservation) => reservation,
                Err(_) => {
                    let reason = if self.inner.dispatcher.is_closed() {
                        "shutting down"
                    } else {
                        "too many deliveries in progress"
                    };
                    tracing::warn!(repo, tag, reason, "refused a delivery with 503");
                    return unavailable(reason);
                }
            };
            // Durable before the answer: the only wait on the request path, shared with
            // every request in flight (group commit).
            #[cfg(feature = "journal")]
            if let Some(journal) = &self.inner.dispatcher.journal {
                let record = crate::journal::Accepted {
                    id: delivery,
                    source: msg.source.clone(),
                    message: serde_json::to_string(&msg).unwrap_or_default(),
                    pending: self.inner.dispatcher.names(&reservation),
                };
                if let Err(e) = journal.append(record).await {
                    tracing::error!(error = %e, repo, tag, "refused a delivery with 503: the journal failed");
                    return unavailable("the journal is unavailable");
                }
            }
            let handlers = self.inner.dispatcher.start(reservation, msg, delivery);
            self.inner.metrics.record_accepted();
            tracing::info!(%delivery, source = hook.provider.name(), repo, tag, handlers, "accepted a delivery");
            if let Some(id) = &event {
                state.recent.remember(id);
            }
            accepted.push(delivery);
        }
        let body = match accepted.as_slice() {
            [] => {
                let body = serde_json::json!({ "ignored": "every event was handled already" });
                return text(StatusCode::OK, "application/json", body.to_string());
            }
            [one] => serde_json::json!({ "delivery": one.as_str() }),
            many => {
                serde_json::json!({ "deliveries": many.iter().map(DeliveryId::as_str).collect::<Vec<_>>() })
            }
        };
        text(StatusCode::ACCEPTED, "application/json", body.to_string())
    }

    fn too_large(&self) -> Response<Full<Bytes>> {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body is larger than {} bytes", self.inner.max_body),
        )
    }

    /// Runs again what a previous process accepted and did not finish (at least once):
    /// each unfinished delivery, oldest first, to the handlers still owed a run. Returns
    /// how many deliveries were resumed. Call it once at start, before serving.
    #[cfg(feature = "journal")]
    pub async fn recover(&self) -> Result<usize, crate::journal::JournalError> {
        let Some(journal) = &self.inner.dispatcher.journal else {
            return Ok(0);
        };
        let mut resumed = 0;
        for delivery in journal.unfinished().await? {
            let msg = match crate::HubMessage::from_serialized(delivery.message.as_bytes()) {
                Ok(msg) => msg,
                Err(e) => {
                    tracing::error!(delivery = %delivery.id, error = %e, "cannot resume a journaled delivery");
                    continue;
                }
            };
            let reservation = loop {
                match self.inner.dispatcher.reserve(&msg, Some(&delivery.pending)) {
                    Ok(reservation) => break reservation,
                    // Wait for room rather than drop anything.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            let owed = self.inner.dispatcher.names(&reservation);
            for gone in delivery.pending.iter().filter(|h| !owed.contains(h)) {
                // A handler removed from the configuration since: nothing can run it.
                journal.record_run(
                    delivery.id,
                    gone,
                    1,
                    std::time::SystemTime::now(),
                    &Err(crate::HandlerError::Rejected(
                        "the handler is no longer configured".into(),
                    )),
                );
            }
            tracing::info!(delivery = %delivery.id, handlers = owed.len(), "resuming an unfinished delivery");
            self.inner.dispatcher.start(reservation, msg, delivery.id);
            resumed += 1;
        }
        Ok(resumed)
    }

    /// Stops accepting webhooks (they get 503 with `Retry-After`), lets running handlers
    /// finish within `grace`, then cancels the rest. Returns whether all finished in time.
    ///
    /// The [`Listener`](crate::Listener) calls this itself; call it when the service is
    /// mounted elsewhere, after the HTTP server has stopped.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.begin_shutdown();
        self.inner.dispatcher.shutdown(grace).await
    }

    /// Makes new webhooks get 503 from now on, without waiting for anything.
    pub(crate) fn begin_shutdown(&self) {
        self.inner.draining.store(true, Ordering::Release);
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
    path: String,
    provider: Provider,
    keys: ApiKeys,
    allow_unauthenticated: bool,
}

impl Hook {
    /// A hook at `path` taking `provider`'s payloads.
    pub fn new(path: impl Into<String>, provider: Provider) -> Self {
        Self {
            path: path.into(),
            provider,
            keys: ApiKeys::default(),
            allow_unauthenticated: false,
        }
    }

    /// Adds an accepted key (`?apikey=` or `Authorization: Bearer`); several may be valid.
    #[must_use]
    pub fn api_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.keys.add(key.as_ref());
        self
    }

    /// Accepts requests with no key (signed providers still check their signature).
    #[must_use]
    pub fn allow_unauthenticated(mut self, allow: bool) -> Self {
        self.allow_unauthenticated = allow;
        self
    }
}

#[derive(Debug)]
struct HookState {
    hook: Hook,
    recent: RecentEvents,
}

fn is_json(value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn error(status: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": reason }).to_string();
    text(status, "application/json", body)
}

fn unavailable(reason: &str) -> Response<Full<Bytes>> {
    with_header(
        error(StatusCode::SERVICE_UNAVAILABLE, reason),
        RETRY_AFTER,
        RETRY_AFTER_SECS,
    )
}

fn with_header(
    mut response: Response<Full<Bytes>>,
    name: http::header::HeaderName,
    value: &'static str,
) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(name, HeaderValue::from_static(value));
    response
}

#[cfg(feature = "tower")]
mod tower_impl {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// The service for tower, axum and hyper stacks. It is always ready and never fails:
    /// every problem is an HTTP status.
    impl<B> tower::Service<Request<B>> for HubhookService
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<B>) -> Self::Future {
            let service = self.clone();
            Box::pin(async move { Ok(service.respond(req).await) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.docker.distribution.events.v1+json",
        ] {
            assert!(is_json(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "json",
            "",
        ] {
            assert!(!is_json(&HeaderValue::from_static(bad)), "{bad}");
        }
    }
}
