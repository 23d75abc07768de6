//! Dispatch: which handlers a message goes to, and running them off the request path.
//!
//! Every matching handler runs in its own task. A handler's panic is caught here and
//! reported with the handler's name and the delivery id; the task ends, nothing else does.
//! The number of runs waiting or running is bounded: past the bound the request is refused
//! with 503 rather than piling up work.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::{Context, DeliveryId, Handler, HandlerError, Outcome};
use crate::metrics::Metrics;
use crate::HubMessage;

/// A glob over repository names or tags: `*` matches any run of characters (`/`
/// included), `?` one character; everything else matches itself.
///
/// ```
/// use hubhook_core::Pattern;
///
/// assert!(Pattern::new("acme/*").matches("acme/site"));
/// assert!(Pattern::new("v?.*").matches("v2.1"));
/// assert!(!Pattern::new("latest").matches("v2"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern from its text.
    pub fn new(glob: impl Into<String>) -> Self {
        Self(glob.into())
    }

    /// The pattern that matches everything.
    pub fn any() -> Self {
        Self("*".to_owned())
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        // Repositories and tags are ASCII by the reference grammar: match bytes, no
        // allocation. Other text falls back to characters.
        if self.0.is_ascii() && text.is_ascii() {
            glob(self.0.as_bytes(), text.as_bytes(), b'*', b'?')
        } else {
            let p: Vec<char> = self.0.chars().collect();
            let t: Vec<char> = text.chars().collect();
            glob(&p, &t, '*', '?')
        }
    }
}

/// Iterative wildcard matching with one backtrack point: linear in practice and never
/// exponential, whatever the pattern.
fn glob<T: PartialEq + Copy>(p: &[T], t: &[T], star: T, one: T) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == one || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == star {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = backtrack {
            pi = sp + 1;
            ti = st + 1;
            backtrack = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == star)
}

/// A handler with the messages it wants: repository and tag globs, and a run timeout.
///
/// ```
/// use hubhook_core::{Pattern, Route};
/// # use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome};
/// # struct Deploy;
/// # #[async_trait] impl Handler for Deploy {
/// #     fn name(&self) -> &str { "deploy" }
/// #     async fn handle(&self, _: &HubMessage, _: &Context) -> Result<Outcome, HandlerError> { Ok(Outcome::default()) }
/// # }
/// let route = Route::new(Deploy).repo("acme/site").tag("v*");
/// ```
#[derive(Clone)]
pub struct Route {
    handler: Arc<dyn Handler>,
    repo: Pattern,
    tag: Pattern,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("handler", &self.handler.name())
            .field("repo", &self.repo)
            .field("tag", &self.tag)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Route {
    /// A route that sends every message to `handler`.
    pub fn new(handler: impl Handler) -> Self {
        Self::from_arc(Arc::new(handler))
    }

    /// Like [`new`](Self::new), for a handler that is already shared.
    pub fn from_arc(handler: Arc<dyn Handler>) -> Self {
        Self {
            handler,
            repo: Pattern::any(),
            tag: Pattern::any(),
            timeout: None,
        }
    }

    /// Only messages whose repository (`namespace/name`) matches `glob`.
    #[must_use]
    pub fn repo(mut self, glob: impl Into<String>) -> Self {
        self.repo = Pattern::new(glob);
        self
    }

    /// Only messages whose tag matches `glob`.
    #[must_use]
    pub fn tag(mut self, glob: impl Into<String>) -> Self {
        self.tag = Pattern::new(glob);
        self
    }

    /// Cancels a run that takes longer than `timeout` and reports it as timed out.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The handler's name.
    pub fn name(&self) -> &str {
        self.handler.name()
    }

    /// Whether this route wants `msg`.
    pub fn matches(&self, msg: &HubMessage) -> bool {
        self.repo.matches(msg.repo()) && self.tag.matches(msg.tag())
    }
}

/// Runs matching handlers for accepted messages, in the background.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    routes: Vec<Route>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    capacity: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    #[cfg(feature = "journal")]
    pub(crate) journal: Option<Arc<crate::journal::Journal>>,
}

/// Slots taken for one delivery's runs, before it is journaled and started.
#[derive(Debug)]
pub(crate) struct Reservation {
    routes: Vec<usize>,
    permits: Vec<OwnedSemaphorePermit>,
}

/// No room for more runs right now.
#[derive(Debug)]
pub(crate) struct Busy;

impl Dispatcher {
    pub(crate) fn new(routes: Vec<Route>, max_pending: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            routes,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            capacity: Arc::new(Semaphore::new(max_pending)),
            metrics,
            #[cfg(feature = "journal")]
            journal: None,
        }
    }

    pub(crate) fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Takes a slot for each handler that wants `msg` (of those named in `only`, when
    /// given): either every one or none, so a refused delivery leaves nothing behind.
    pub(crate) fn reserve(
        &self,
        msg: &HubMessage,
        only: Option<&[String]>,
    ) -> Result<Reservation, Busy> {
        let routes: Vec<usize> = (0..self.routes.len())
            .filter(|&i| {
                let route = &self.routes[i];
                route.matches(msg)
                    && only.is_none_or(|names| names.iter().any(|n| n == route.name()))
            })
            .collect();
        if routes.is_empty() {
            return Ok(Reservation {
                routes,
                permits: Vec::new(),
            });
        }
        if self.tracker.is_closed() {
            return Err(Busy);
        }
        let mut permits = Vec::with_capacity(routes.len());
        for _ in &routes {
            // Dropping `permits` on the way out gives back what was taken.
            permits.push(
                self.capacity
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| Busy)?,
            );
        }
        Ok(Reservation { routes, permits })
    }

    /// The names of the handlers a reservation is for.
    #[cfg_attr(not(feature = "journal"), allow(dead_code))]
    pub(crate) fn names(&self, reservation: &Reservation) -> Vec<String> {
        reservation
            .routes
            .iter()
            .map(|&i| self.routes[i].name().to_owned())
            .collect()
    }

    /// Starts the reserved runs; returns how many started.
    pub(crate) fn start(
        &self,
        reservation: Reservation,
        msg: HubMessage,
        delivery: DeliveryId,
    ) -> usize {
        let msg = Arc::new(msg);
        let started = reservation.routes.len();
        for (i, permit) in reservation.routes.into_iter().zip(reservation.permits) {
            self.spawn(&self.routes[i], msg.clone(), delivery, permit);
        }
        started
    }

    fn spawn(
        &self,
        route: &Route,
        msg: Arc<HubMessage>,
        delivery: DeliveryId,
        permit: OwnedSemaphorePermit,
    ) {
        let handler = route.handler.clone();
        let timeout = route.timeout;
        let cancel = self.cancel.child_token();
        let metrics = self.metrics.clone();
        #[cfg(feature = "journal")]
        let journal = self.journal.clone();
        self.tracker.spawn(async move {
            let _permit = permit;
            let mut ctx = Context::new(delivery).with_cancellation(cancel.clone());
            // A timeout too large to add to now is as good as none.
            if let Some(deadline) = timeout.and_then(|limit| Instant::now().checked_add(limit)) {
                ctx = ctx.with_deadline(deadline);
            }
            let started = Instant::now();
            #[cfg(feature = "journal")]
            let started_at = std::time::SystemTime::now();
            let result = run(&*handler, &msg, &ctx, timeout, &cancel).await;
            let elapsed = started.elapsed();
            let name = handler.name();
            metrics.record_run(name, &result, elapsed);
            #[cfg(feature = "journal")]
            if let Some(journal) = &journal {
                journal.record_run(delivery, name, ctx.attempt(), started_at, &result);
            }
            match &result {
                Ok(outcome) => tracing::info!(
                    handler = name, %delivery, repo = msg.repo(), tag = msg.tag(),
                    elapsed_ms = elapsed.as_millis() as u64, summary = %outcome.summary,
                    "handler succeeded"
                ),
                Err(HandlerError::Panicked(reason)) => tracing::error!(
                    handler = name, %delivery, repo = msg.repo(), tag = msg.tag(),
                    panic = %reason, "handler panicked"
                ),
                Err(error) => tracing::warn!(
                    handler = name, %delivery, repo = msg.repo(), tag = msg.tag(),
                    elapsed_ms = elapsed.as_millis() as u64, %error, "handler failed"
                ),
            }
        });
    }

    /// Stops taking new runs, lets running ones finish within `grace`, then cancels the
    /// rest and waits for them to notice. Returns whether everything finished in time.
    pub(crate) async fn shutdown(&self, grace: Duration) -> bool {
        self.tracker.close();
        let finished = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(
                running = self.tracker.len(),
                "grace period over, cancelling running handlers"
            );
            self.cancel.cancel();
            // Each run gives its handler CLEANUP to notice; wait a little longer than that.
            let _ =
                tokio::time::timeout(CLEANUP + Duration::from_secs(1), self.tracker.wait()).await;
        }
        finished
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tracker.is_closed()
    }

    pub(crate) fn running(&self) -> usize {
        self.tracker.len()
    }
}

/// How long a handler gets to clean up (kill children, roll back) once told to stop.
const CLEANUP: Duration = Duration::from_secs(5);

async fn run(
    handler: &dyn Handler,
    msg: &HubMessage,
    ctx: &Context,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
) -> Result<Outcome, HandlerError> {
    let mut work = CatchUnwind(handler.handle(msg, ctx));
    let stop = async {
        match timeout {
            Some(limit) => tokio::select! {
                () = tokio::time::sleep(limit) => HandlerError::Timeout(limit),
                () = cancel.cancelled() => HandlerError::Cancelled,
            },
            None => {
                cancel.cancelled().await;
                HandlerError::Cancelled
            }
        }
    };
    tokio::select! {
        result = &mut work => result,
        reason = stop => {
            // Tell the handler through its context, then give it a moment to clean up
            // before it is dropped mid-flight. The run counts as stopped either way.
            cancel.cancel();
            let _ = tokio::time::timeout(CLEANUP, &mut work).await;
            Err(reason)
        }
    }
}

/// Turns a panic inside the wrapped future into `HandlerError::Panicked`.
struct CatchUnwind<F>(F);

impl<F> Future for CatchUnwind<Pin<Box<F>>>
where
    F: Future<Output = Result<Outcome, HandlerError>> + ?Sized,
{
    type Output = Result<Outcome, HandlerError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready(Err(HandlerError::Panicked(panic_message(&*payload)))),
        }
    }
}

/// The text of a panic payload, when it has one.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("*", "anything/at/all", true),
            ("*", "", true),
            ("acme/*", "acme/site", true),
            ("acme/*", "other/site", false),
            ("v*", "v1.2", true),
            ("v?", "v12", false),
            ("*-prod", "site-prod", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("latest", "latest", true),
            ("latest", "latest2", false),
            ("é*", "été", true),
            ("?t?", "été", true),
        ];
        for (glob, text, want) in cases {
            assert_eq!(Pattern::new(glob).matches(text), want, "{glob} ~ {text}");
        }
    }

    #[test]
    fn glob_matching_is_not_exponential() {
        let glob = Pattern::new("*a*a*a*a*a*a*a*a*a*a*b");
        assert!(!glob.matches(&"a".repeat(10_000)));
    }
}
