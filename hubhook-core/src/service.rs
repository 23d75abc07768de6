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
use crate::dispatch::{Busy, Dispatcher, Route};
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
    #[cfg(feature = "callback")]
    callbacks: Option<crate::callback::Callbacks>,
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

    /// How many deliveries may be waiting or running per handler, unless its
    /// [`Route::max_queued`] says otherwise; default 1024. A webhook that would need more
    /// gets 503 with `Retry-After`. Deliveries that coalesce share one place.
    pub fn max_pending(mut self, runs: usize) -> Self {
        self.max_pending = runs;
        self
    }

    /// Records every accepted delivery in `journal` before answering 2xx, and every
    /// handler run's outcome; [`HubhookService::recover`] runs what a previous process
    /// left unfinished.
    #[cfg(feature = "journal")]
    pub fn journal(self, journal: crate::journal::Journal) -> Self {
        self.journal_shared(Arc::new(journal))
    }

    /// Like [`journal`](Self::journal), for a journal the caller keeps using too (to
    /// prune it, for example).
    #[cfg(feature = "journal")]
    pub fn journal_shared(mut self, journal: Arc<crate::journal::Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// After every handler of a delivery has finished, POSTs the result to the message's
    /// `callback_url` (Docker Hub's legacy callback) when `callbacks` allows its host.
    #[cfg(feature = "callback")]
    pub fn callbacks(mut self, callbacks: crate::callback::Callbacks) -> Self {
        self.callbacks = Some(callbacks);
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
                    #[allow(unused_variables)]
                    if let Some(shared) = dispatcher.shared_mut() {
                        #[cfg(feature = "journal")]
                        {
                            shared.journal = self.journal;
                        }
                        #[cfg(feature = "callback")]
                        {
                            shared.callbacks = self.callbacks.map(Arc::new);
                        }
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
            #[cfg(feature = "callback")]
            callbacks: None,
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
                let dispatcher = &self.inner.dispatcher;
                #[allow(unused_mut)]
                let mut body = self
                    .inner
                    .metrics
                    .render(dispatcher.running(), &dispatcher.depths());
                #[cfg(feature = "journal")]
                if let Some(journal) = &dispatcher.shared.journal {
                    journal.render_metrics(&mut body);
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
            let delivery = match self.accept(msg).await {
                Ok(delivery) => delivery,
                Err(reason) => return unavailable(reason),
            };
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

    /// Queues `msg` for the handlers that want it under a new delivery id, journaled first when there is a journal. `Err` is the reason for a 503.
    async fn accept(&self, msg: crate::HubMessage) -> Result<DeliveryId, &'static str> {
        let dispatcher = &self.inner.dispatcher;
        let delivery = DeliveryId::generate();
        let (repo, tag) = (msg.repo(), msg.tag());
        let reservation = match dispatcher.reserve(&msg, delivery) {
            Ok(reservation) => reservation,
            Err(busy) => {
                let (reason, handler) = match &busy {
                    Busy::Closed => ("shutting down", ""),
                    Busy::Full(handler) => ("a handler's queue is full", handler.as_str()),
                };
                tracing::warn!(repo, tag, reason, handler, "refused a delivery with 503");
                return Err(reason);
            }
        };
        // Durable before the answer: the only wait on the request path, shared with
        // every request in flight (group commit).
        #[cfg(feature = "journal")]
        if let Some(journal) = dispatcher.shared.journal.clone() {
            let record = crate::journal::Accepted {
                id: delivery,
                source: msg.source.clone(),
                message: serde_json::to_string(&msg).unwrap_or_default(),
                pending: dispatcher.names(&reservation),
            };
            let (repo, tag) = (repo.to_owned(), tag.to_owned());
            // Once the append is sent, the delivery must start even if this request is
            // dropped meanwhile (a client gone, a stream reset): a journaled delivery
            // left unstarted would only run at the next start, after newer ones.
            let service = self.clone();
            let appended = tokio::spawn(async move {
                match journal.append(record, &repo, &tag).await {
                    Ok(()) => {
                        service.launch(reservation, msg, delivery);
                        Ok(())
                    }
                    Err(e) => {
                        tracing::error!(error = %e, repo, tag, "refused a delivery with 503: the journal failed");
                        Err("the journal is unavailable")
                    }
                }
            });
            return match appended.await {
                Ok(Ok(())) => Ok(delivery),
                Ok(Err(reason)) => Err(reason),
                Err(_) => Err("the journal is unavailable"),
            };
        }
        self.launch(reservation, msg, delivery);
        Ok(delivery)
    }

    /// Hands an accepted (and journaled) delivery to its handlers' queues.
    fn launch(
        &self,
        reservation: crate::dispatch::Reservation,
        msg: crate::HubMessage,
        delivery: DeliveryId,
    ) {
        tracing::info!(%delivery, source = %msg.source, repo = msg.repo(), tag = msg.tag(), "accepted a delivery");
        self.inner.dispatcher.start(reservation, msg, delivery);
        self.inner.metrics.record_accepted();
    }

    fn too_large(&self) -> Response<Full<Bytes>> {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body is larger than {} bytes", self.inner.max_body),
        )
    }

    /// Runs again what a previous process accepted and did not finish (at least once):
    /// each unfinished delivery, oldest first, to the handlers still owed a run, through
    /// their queues (so deliveries with one coalescing key end in one run of the newest).
    /// Returns how many deliveries were resumed. Call it once at start, before serving.
    #[cfg(feature = "journal")]
    pub async fn recover(&self) -> Result<usize, crate::journal::JournalError> {
        let dispatcher = &self.inner.dispatcher;
        let Some(journal) = &dispatcher.shared.journal else {
            return Ok(0);
        };
        let now = std::time::SystemTime::now;
        let mut owed = Vec::new();
        for delivery in journal.unfinished().await? {
            match crate::HubMessage::from_serialized(delivery.message.as_bytes()) {
                Ok(msg) => owed.push((delivery, msg)),
                Err(e) => {
                    tracing::error!(delivery = %delivery.id, error = %e, "cannot resume a journaled delivery");
                    journal.record(
                        delivery.id,
                        "recovery",
                        0,
                        now(),
                        "failed",
                        format!("the journaled message cannot be read: {e}"),
                        true,
                    );
                    journal.finish(delivery.id);
                }
            }
        }
        // Latest wins across a restart too: of several unfinished deliveries with one
        // coalescing key, only the newest runs.
        let plan = dispatcher.plan_recovery(
            &owed
                .iter()
                .map(|(d, msg)| (d.id, msg, d.pending.as_slice()))
                .collect::<Vec<_>>(),
        );
        let mut resumed = 0;
        for ((delivery, msg), crate::dispatch::Resume { run, superseded }) in
            owed.into_iter().zip(plan)
        {
            for (handler, by) in &superseded {
                journal.record_run(
                    delivery.id,
                    handler,
                    0,
                    now(),
                    &Err(crate::HandlerError::Superseded(*by)),
                    true,
                );
            }
            // Wait for room rather than drop anything.
            let Some(reservation) = dispatcher.reserve_waiting(&msg, Some(&run)).await else {
                break;
            };
            let starting = dispatcher.names(&reservation);
            for gone in run.iter().filter(|h| !starting.contains(h)) {
                // A handler removed from the configuration since: nothing can run it.
                journal.record(
                    delivery.id,
                    gone,
                    0,
                    now(),
                    "rejected",
                    "the handler is no longer configured".into(),
                    true,
                );
            }
            if starting.is_empty() {
                journal.finish(delivery.id);
                continue;
            }
            tracing::info!(delivery = %delivery.id, handlers = starting.len(), "resuming an unfinished delivery");
            dispatcher.start(reservation, msg, delivery.id);
            resumed += 1;
        }
        Ok(resumed)
    }

    /// Runs a journaled delivery again, as a new delivery with the same message, for the
    /// handlers that match it now. Returns the new delivery's id.
    #[cfg(feature = "journal")]
    pub async fn replay(&self, id: DeliveryId) -> Result<DeliveryId, ReplayError> {
        let journal = self
            .inner
            .dispatcher
            .shared
            .journal
            .as_ref()
            .ok_or(ReplayError::NoJournal)?;
        let old = journal.get(id).await?.ok_or(ReplayError::NotFound(id))?;
        let msg = crate::HubMessage::from_serialized(old.message.as_bytes())
            .map_err(|e| ReplayError::Unreadable(e.to_string()))?;
        if self.inner.draining.load(Ordering::Acquire) {
            return Err(ReplayError::Busy("shutting down"));
        }
        let delivery = self.accept(msg).await.map_err(ReplayError::Busy)?;
        tracing::info!(%delivery, replay_of = %id, "replaying a delivery");
        Ok(delivery)
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

/// Why [`HubhookService::replay`] could not run a delivery again.
#[cfg(feature = "journal")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The service has no journal to replay from.
    #[error("this service has no journal")]
    NoJournal,
    /// No delivery with this id is in the journal (never, or pruned).
    #[error("no delivery {0} in the journal")]
    NotFound(DeliveryId),
    /// The journaled message could not be read back.
    #[error("the journaled message cannot be read: {0}")]
    Unreadable(String),
    /// The queues are full or the service is shutting down.
    #[error("not now: {0}")]
    Busy(&'static str),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
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
