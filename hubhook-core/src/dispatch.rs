//! Dispatch: which handlers a message goes to, and running them off the request path.
//!
//! Each handler has a queue. A delivery waits there under a coalescing key (by default
//! repository and tag): one run per key at a time, and a newer delivery replaces one still
//! waiting (latest wins; the replaced one is recorded as superseded). At most
//! `max_concurrency` runs per handler go at once, each in its own task, with a timeout and
//! retries after a jittered exponential backoff. A handler's panic is caught and reported
//! with the handler's name and the delivery id. Every queue is bounded: past the bound the
//! request is refused with 503 rather than piling up work.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
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

/// Which deliveries share a place in a handler's queue.
///
/// Deliveries with the same key never run at the same time for one handler; while one
/// runs, a newer one waits, and a still newer one replaces it (latest wins): the replaced
/// delivery is recorded as superseded instead of running. A burst of pushes of one tag
/// therefore ends in at most one more run, with the newest message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Coalesce {
    /// Repository and tag: pushes of `acme/site:latest` coalesce, `acme/site:v2` is
    /// separate. The default.
    #[default]
    RepoTag,
    /// Repository: any tag of `acme/site` replaces a waiting one.
    Repo,
    /// Everything the handler gets shares one key: one run at a time, latest wins.
    Handler,
    /// No coalescing: every delivery runs, in order of arrival per handler, up to
    /// [`max_concurrency`](Route::max_concurrency) at once.
    Off,
}

impl Coalesce {
    fn key(self, msg: &HubMessage, id: DeliveryId) -> String {
        match self {
            Self::RepoTag => format!("{}:{}", msg.repo(), msg.tag()),
            Self::Repo => msg.repo().to_owned(),
            Self::Handler => String::new(),
            Self::Off => id.as_str().to_owned(),
        }
    }
}

/// A handler with the messages it wants (repository and tag globs) and how its runs are
/// queued: coalescing, concurrency, timeout and retries.
///
/// ```
/// use std::time::Duration;
/// use hubhook_core::{Coalesce, Pattern, Route};
/// # use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome};
/// # struct Deploy;
/// # #[async_trait] impl Handler for Deploy {
/// #     fn name(&self) -> &str { "deploy" }
/// #     async fn handle(&self, _: &HubMessage, _: &Context) -> Result<Outcome, HandlerError> { Ok(Outcome::default()) }
/// # }
/// let route = Route::new(Deploy)
///     .repo("acme/site")
///     .tag("v*")
///     .timeout(Duration::from_secs(120))
///     .retries(2)
///     .coalesce(Coalesce::Repo);
/// ```
#[derive(Clone)]
pub struct Route {
    handler: Arc<dyn Handler>,
    repo: Pattern,
    tag: Pattern,
    timeout: Option<Duration>,
    coalesce: Coalesce,
    max_concurrency: usize,
    max_queued: Option<usize>,
    retries: u32,
    backoff: Duration,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("handler", &self.handler.name())
            .field("repo", &self.repo)
            .field("tag", &self.tag)
            .field("timeout", &self.timeout)
            .field("coalesce", &self.coalesce)
            .field("max_concurrency", &self.max_concurrency)
            .field("max_queued", &self.max_queued)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .finish()
    }
}

/// Runs of one handler at once, by default.
pub const DEFAULT_MAX_CONCURRENCY: usize = 4;
/// The wait before the first retry, by default; it doubles for each one after.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts, whatever the backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

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
            coalesce: Coalesce::default(),
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            max_queued: None,
            retries: 0,
            backoff: DEFAULT_BACKOFF,
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

    /// Cancels an attempt that takes longer than `timeout` and reports it as timed out.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Which deliveries coalesce; default [`Coalesce::RepoTag`].
    #[must_use]
    pub fn coalesce(mut self, coalesce: Coalesce) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// How many runs of this handler may go at once (each for a different key); default
    /// [`DEFAULT_MAX_CONCURRENCY`]. Zero counts as one.
    #[must_use]
    pub fn max_concurrency(mut self, runs: usize) -> Self {
        self.max_concurrency = runs.max(1);
        self
    }

    /// How many deliveries may wait or run for this handler; default the service's
    /// [`max_pending`](crate::HubhookServiceBuilder::max_pending). A webhook that would
    /// need more gets 503 with `Retry-After`. Zero counts as one.
    #[must_use]
    pub fn max_queued(mut self, deliveries: usize) -> Self {
        self.max_queued = Some(deliveries.max(1));
        self
    }

    /// How many times a failed or timed-out attempt is tried again; default 0. Rejections,
    /// panics and cancellations are never retried.
    #[must_use]
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The wait before the first retry (default 1 s); each later wait doubles, up to ten
    /// minutes, and every wait is drawn at random between half and all of it (jitter), so
    /// handlers that failed together do not retry together.
    #[must_use]
    pub fn backoff(mut self, first: Duration) -> Self {
        self.backoff = first;
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

    /// The wait after failed attempt number `attempt` (1-based), with jitter from `random`.
    fn delay(&self, attempt: u32, random: u64) -> Duration {
        let full = self
            .backoff
            .saturating_mul(
                1u32.checked_shl(attempt.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(MAX_BACKOFF);
        let half = full / 2;
        let spread = (full - half).as_micros() as u64;
        half + Duration::from_micros(if spread == 0 {
            0
        } else {
            random % (spread + 1)
        })
    }
}

/// What happened to one handler's share of a delivery, in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    Ok,
    Failed,
    Superseded,
}

/// One accepted delivery on its way through the queues of the handlers it went to.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) id: DeliveryId,
    pub(crate) msg: Arc<HubMessage>,
    /// Handlers that have not settled yet.
    remaining: std::sync::atomic::AtomicUsize,
    failed: std::sync::atomic::AtomicBool,
    superseded: std::sync::atomic::AtomicBool,
    /// One line per handler, for the callback's description (kept only when callbacks
    /// are on).
    notes: Mutex<Vec<String>>,
}

impl Delivery {
    /// Records one handler's end; the last one finishes the delivery.
    fn settle(&self, shared: &Shared, handler: &str, how: Settled, note: &'static str) {
        use std::sync::atomic::Ordering;
        match how {
            Settled::Failed => self.failed.store(true, Ordering::Relaxed),
            Settled::Superseded => self.superseded.store(true, Ordering::Relaxed),
            Settled::Ok => {}
        }
        if shared.wants_notes() {
            if let Ok(mut notes) = self.notes.lock() {
                notes.push(format!("{handler}: {note}"));
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let status = if self.failed.load(Ordering::Relaxed) {
            Settled::Failed
        } else if self.superseded.load(Ordering::Relaxed) {
            Settled::Superseded
        } else {
            Settled::Ok
        };
        let notes = self
            .notes
            .lock()
            .map(|mut n| std::mem::take(&mut *n))
            .unwrap_or_default();
        shared.finished(self, status, notes);
    }
}

/// What every queue shares: the task tracker, the stop signal, metrics, the journal.
#[derive(Debug)]
pub(crate) struct Shared {
    tracker: TaskTracker,
    /// Fires when shutdown begins: nothing new starts, backoffs and waits end.
    closing: CancellationToken,
    /// Fires when the grace period is over: running handlers are cancelled.
    cancel: CancellationToken,
    metrics: Arc<Metrics>,
    #[cfg(feature = "journal")]
    pub(crate) journal: Option<Arc<crate::journal::Journal>>,
    #[cfg(feature = "callback")]
    pub(crate) callbacks: Option<Arc<crate::callback::Callbacks>>,
}

impl Shared {
    /// Whether anything reads a delivery's notes (the callback does).
    fn wants_notes(&self) -> bool {
        #[cfg(feature = "callback")]
        return self.callbacks.is_some();
        #[cfg(not(feature = "callback"))]
        false
    }

    /// Every handler of `delivery` has settled.
    #[allow(unused_variables)]
    fn finished(&self, delivery: &Delivery, status: Settled, notes: Vec<String>) {
        #[cfg(feature = "journal")]
        if let Some(journal) = &self.journal {
            journal.finish(delivery.id);
        }
        #[cfg(feature = "callback")]
        if let Some(callbacks) = &self.callbacks {
            crate::callback::after_delivery(
                callbacks,
                &self.tracker,
                #[cfg(feature = "journal")]
                self.journal.clone(),
                delivery,
                status,
                notes,
            );
        }
    }
}

/// One handler's queue: keys waiting, keys running, bounded in deliveries.
#[derive(Debug)]
struct Queue {
    route: Route,
    slots: Arc<Semaphore>,
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    keys: HashMap<String, Slot>,
    /// Keys with a waiting delivery and nothing running, in arrival order.
    ready: VecDeque<String>,
    running: usize,
    closed: bool,
}

#[derive(Debug)]
struct Slot {
    running: bool,
    /// The newest delivery seen for this key; an older one arriving late is superseded.
    newest: DeliveryId,
    pending: Option<Job>,
}

/// A delivery waiting for (or in) a run of one handler, holding its place in the bound.
#[derive(Debug)]
struct Job {
    delivery: Arc<Delivery>,
    /// Its place in the queue's bound; `None` for a delivery let in past the bound
    /// because it replaces a waiting one, whose place it takes over.
    slot: Option<OwnedSemaphorePermit>,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // The state is consistent between statements; a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `job` in line; starts what can start.
    fn enqueue(self: &Arc<Self>, shared: &Arc<Shared>, job: Job) {
        let key = self.route.coalesce.key(&job.delivery.msg, job.delivery.id);
        let id = job.delivery.id;
        let mut state = self.lock();
        let superseded = match state.keys.get_mut(&key) {
            Some(slot) if id < slot.newest => Some((job, slot.newest)),
            Some(slot) => {
                slot.newest = id;
                let mut job = job;
                match slot.pending.take() {
                    Some(mut old) => {
                        if job.slot.is_none() {
                            job.slot = old.slot.take();
                        }
                        slot.pending = Some(job);
                        Some((old, id))
                    }
                    None => {
                        slot.pending = Some(job);
                        None
                    }
                }
            }
            None => {
                state.keys.insert(
                    key.clone(),
                    Slot {
                        running: false,
                        newest: id,
                        pending: Some(job),
                    },
                );
                state.ready.push_back(key);
                None
            }
        };
        let starts = self.take_ready(&mut state);
        drop(state);
        if let Some((old, by)) = superseded {
            self.supersede(shared, &old.delivery, 0, by);
        }
        for (key, job) in starts {
            self.spawn(shared, key, job);
        }
    }

    fn take_ready(&self, state: &mut QueueState) -> Vec<(String, Job)> {
        let mut starts = Vec::new();
        while !state.closed && state.running < self.route.max_concurrency {
            let Some(key) = state.ready.pop_front() else {
                break;
            };
            if let Some(slot) = state.keys.get_mut(&key) {
                if let Some(job) = slot.pending.take() {
                    slot.running = true;
                    state.running += 1;
                    starts.push((key, job));
                }
            }
        }
        starts
    }

    /// A run for `key` is over: the next one for the key (or another key) may start.
    fn done(self: &Arc<Self>, shared: &Arc<Shared>, key: &str) {
        let mut state = self.lock();
        state.running -= 1;
        if let Some(slot) = state.keys.get_mut(key) {
            slot.running = false;
            if slot.pending.is_some() {
                state.ready.push_back(key.to_owned());
            } else {
                state.keys.remove(key);
            }
        }
        let starts = self.take_ready(&mut state);
        drop(state);
        for (key, job) in starts {
            self.spawn(shared, key, job);
        }
    }

    /// Whether a delivery waits (not runs) under `key`: a newer one would replace it.
    fn has_waiting(&self, key: &str) -> bool {
        self.lock()
            .keys
            .get(key)
            .is_some_and(|slot| slot.pending.is_some())
    }

    /// Whether a newer delivery waits for `key`.
    fn has_newer(&self, key: &str) -> Option<DeliveryId> {
        let state = self.lock();
        let slot = state.keys.get(key)?;
        slot.pending.as_ref().map(|_| slot.newest)
    }

    /// (waiting, running) deliveries.
    fn depth(&self) -> (usize, usize) {
        let state = self.lock();
        let waiting = state.keys.values().filter(|s| s.pending.is_some()).count();
        (waiting, state.running)
    }

    /// Stops starting runs; returns how many deliveries were still waiting.
    fn close(&self) -> usize {
        let mut state = self.lock();
        state.closed = true;
        state.keys.values().filter(|s| s.pending.is_some()).count()
    }

    #[cfg_attr(not(feature = "journal"), allow(unused_variables))]
    fn supersede(&self, shared: &Shared, delivery: &Delivery, attempt: u32, by: DeliveryId) {
        let name = self.route.name();
        let result = Err(HandlerError::Superseded(by));
        shared.metrics.record_run(name, &result, Duration::ZERO);
        #[cfg(feature = "journal")]
        if let Some(journal) = &shared.journal {
            journal.record_run(
                delivery.id,
                name,
                attempt,
                std::time::SystemTime::now(),
                &result,
                true,
            );
        }
        tracing::info!(handler = name, delivery = %delivery.id, by = %by, "superseded by a newer delivery");
        delivery.settle(shared, name, Settled::Superseded, "superseded");
    }

    fn spawn(self: &Arc<Self>, shared: &Arc<Shared>, key: String, job: Job) {
        /// Frees the key when the run ends, however it ends.
        struct Done {
            queue: Arc<Queue>,
            shared: Arc<Shared>,
            key: String,
        }
        impl Drop for Done {
            fn drop(&mut self) {
                self.queue.done(&self.shared, &self.key);
            }
        }
        let done = Done {
            queue: self.clone(),
            shared: shared.clone(),
            key,
        };
        shared.tracker.spawn(async move {
            let done = done;
            done.queue
                .drive(&done.shared, &done.key, &job.delivery)
                .await;
            drop(job);
        });
    }

    /// Every attempt of one handler for one delivery, with retries and their backoff.
    async fn drive(&self, shared: &Shared, key: &str, delivery: &Arc<Delivery>) {
        let route = &self.route;
        let name = route.name();
        let (id, msg) = (delivery.id, &*delivery.msg);
        let mut attempt = 1;
        loop {
            let cancel = shared.cancel.child_token();
            let mut ctx = Context::new(id)
                .with_attempt(attempt)
                .with_cancellation(cancel.clone());
            // A timeout too large to add to now is as good as none.
            if let Some(deadline) = route
                .timeout
                .and_then(|limit| Instant::now().checked_add(limit))
            {
                ctx = ctx.with_deadline(deadline);
            }
            let started = Instant::now();
            #[cfg(feature = "journal")]
            let started_at = std::time::SystemTime::now();
            let result = run(&*route.handler, msg, &ctx, route.timeout, &cancel).await;
            let elapsed = started.elapsed();
            shared.metrics.record_run(name, &result, elapsed);
            let retry = attempt <= route.retries
                && matches!(
                    result,
                    Err(HandlerError::Failed(_)
                        | HandlerError::Timeout(_)
                        | HandlerError::Other(_))
                );
            let cancelled = matches!(result, Err(HandlerError::Cancelled));
            #[cfg(feature = "journal")]
            if let Some(journal) = &shared.journal {
                journal.record_run(id, name, attempt, started_at, &result, !retry && !cancelled);
            }
            let elapsed_ms = elapsed.as_millis() as u64;
            let (repo, tag) = (msg.repo(), msg.tag());
            match &result {
                Ok(outcome) => tracing::info!(
                    handler = name, delivery = %id, attempt, repo, tag, elapsed_ms,
                    summary = %outcome.summary, "handler succeeded"
                ),
                Err(HandlerError::Panicked(reason)) => tracing::error!(
                    handler = name, delivery = %id, attempt, repo, tag, panic = %reason,
                    "handler panicked"
                ),
                Err(error) => tracing::warn!(
                    handler = name, delivery = %id, attempt, repo, tag, elapsed_ms, %error,
                    "handler failed"
                ),
            }
            if cancelled {
                // Stopped by shutdown: still owed, the journal runs it again on start.
                return;
            }
            if !retry {
                // The callback reports the status word only: a command's output is not
                // for a third party's page.
                let (how, note) = match &result {
                    Ok(_) => (Settled::Ok, "ok"),
                    Err(HandlerError::Timeout(_)) => (Settled::Failed, "timed out"),
                    Err(HandlerError::Panicked(_)) => (Settled::Failed, "panicked"),
                    Err(HandlerError::Rejected(_)) => (Settled::Failed, "rejected"),
                    Err(_) => (Settled::Failed, "failed"),
                };
                delivery.settle(shared, name, how, note);
                return;
            }
            let wait = route.delay(attempt, jitter());
            tracing::info!(handler = name, delivery = %id, attempt, wait_ms = wait.as_millis() as u64, "retrying after a backoff");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                // Shutdown during the backoff: the delivery stays owed.
                () = shared.closing.cancelled() => return,
            }
            if let Some(by) = self.has_newer(key) {
                // A newer message for the same key is waiting: retrying the old one
                // would deploy something stale.
                self.supersede(shared, delivery, attempt, by);
                return;
            }
            attempt += 1;
        }
    }
}

/// A random number for backoff jitter.
fn jitter() -> u64 {
    let mut bytes = [0u8; 8];
    // Without an entropy source the wait is the upper bound: still a valid backoff.
    let _ = getrandom::getrandom(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Runs matching handlers for accepted messages, in the background, through one queue
/// per handler.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    queues: Vec<Arc<Queue>>,
    pub(crate) shared: Arc<Shared>,
}

/// Places taken in the queues for one delivery, before it is journaled and started.
#[derive(Debug)]
pub(crate) struct Reservation {
    routes: Vec<(usize, Option<OwnedSemaphorePermit>)>,
}

/// What recovery does with one unfinished delivery.
#[derive(Debug)]
#[cfg_attr(not(feature = "journal"), allow(dead_code))]
pub(crate) struct Resume {
    /// Handlers to run it.
    pub(crate) run: Vec<String>,
    /// Handlers for which a newer delivery of the same key supersedes it (and which).
    pub(crate) superseded: Vec<(String, DeliveryId)>,
}

/// Why a delivery could not be queued.
#[derive(Debug)]
pub(crate) enum Busy {
    /// Shutting down.
    Closed,
    /// This handler's queue is full.
    Full(String),
}

impl Dispatcher {
    pub(crate) fn new(routes: Vec<Route>, max_pending: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            queues: routes
                .into_iter()
                .map(|route| {
                    let bound = route.max_queued.unwrap_or(max_pending).max(1);
                    Arc::new(Queue {
                        route,
                        slots: Arc::new(Semaphore::new(bound)),
                        state: Mutex::new(QueueState::default()),
                    })
                })
                .collect(),
            shared: Arc::new(Shared {
                tracker: TaskTracker::new(),
                closing: CancellationToken::new(),
                cancel: CancellationToken::new(),
                metrics,
                #[cfg(feature = "journal")]
                journal: None,
                #[cfg(feature = "callback")]
                callbacks: None,
            }),
        }
    }

    /// Mutable access to the shared parts, before the first delivery.
    pub(crate) fn shared_mut(&mut self) -> Option<&mut Shared> {
        Arc::get_mut(&mut self.shared)
    }

    pub(crate) fn routes(&self) -> impl Iterator<Item = &Route> {
        self.queues.iter().map(|q| &q.route)
    }

    fn matching<'a>(
        &'a self,
        msg: &'a HubMessage,
        only: Option<&'a [String]>,
    ) -> impl Iterator<Item = usize> + 'a {
        (0..self.queues.len()).filter(move |&i| {
            let route = &self.queues[i].route;
            route.matches(msg) && only.is_none_or(|names| names.iter().any(|n| n == route.name()))
        })
    }

    /// Takes a place in the queue of each handler that wants `msg` (delivery `id`): in
    /// every one or in none, so a refused delivery leaves nothing behind.
    pub(crate) fn reserve(&self, msg: &HubMessage, id: DeliveryId) -> Result<Reservation, Busy> {
        let mut routes = Vec::new();
        for i in self.matching(msg, None) {
            if self.shared.tracker.is_closed() {
                return Err(Busy::Closed);
            }
            let queue = &self.queues[i];
            // Dropping `routes` on the way out gives back what was taken.
            let slot = match queue.slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                // Full, but a delivery of this key waits: this one will replace it and
                // take over its place. (Never for `Coalesce::Off`: keys are unique.)
                Err(_)
                    if queue.route.coalesce != Coalesce::Off
                        && queue.has_waiting(&queue.route.coalesce.key(msg, id)) =>
                {
                    None
                }
                Err(_) => return Err(Busy::Full(queue.route.name().to_owned())),
            };
            routes.push((i, slot));
        }
        Ok(Reservation { routes })
    }

    /// Like [`reserve`](Self::reserve), waiting for room instead of refusing (recovery and
    /// replay: nothing there may be dropped). `None` when shutting down.
    #[cfg_attr(not(feature = "journal"), allow(dead_code))]
    pub(crate) async fn reserve_waiting(
        &self,
        msg: &HubMessage,
        only: Option<&[String]>,
    ) -> Option<Reservation> {
        let mut routes = Vec::new();
        for i in self.matching(msg, only) {
            let slot = tokio::select! {
                slot = self.queues[i].slots.clone().acquire_owned() => slot.ok()?,
                () = self.shared.closing.cancelled() => return None,
            };
            routes.push((i, Some(slot)));
        }
        Some(Reservation { routes })
    }

    /// For deliveries left unfinished by a previous process (oldest first, each with the
    /// handlers it still owes): which handlers each should run, and for which a newer one
    /// of the same coalescing key supersedes it. Latest wins across a restart too.
    #[cfg_attr(not(feature = "journal"), allow(dead_code))]
    pub(crate) fn plan_recovery(
        &self,
        owed: &[(DeliveryId, &HubMessage, &[String])],
    ) -> Vec<Resume> {
        let queue_of = |name: &str| self.queues.iter().position(|q| q.route.name() == name);
        let mut newest: HashMap<(usize, String), DeliveryId> = HashMap::new();
        for (id, msg, handlers) in owed {
            for i in handlers.iter().filter_map(|h| queue_of(h)) {
                let key = self.queues[i].route.coalesce.key(msg, *id);
                let entry = newest.entry((i, key)).or_insert(*id);
                *entry = (*entry).max(*id);
            }
        }
        owed.iter()
            .map(|(id, msg, handlers)| {
                let (mut run, mut superseded) = (Vec::new(), Vec::new());
                for name in handlers.iter() {
                    let Some(i) = queue_of(name) else {
                        // Not configured any more: the caller records that.
                        run.push(name.clone());
                        continue;
                    };
                    let key = self.queues[i].route.coalesce.key(msg, *id);
                    match newest.get(&(i, key)) {
                        Some(by) if by > id => superseded.push((name.clone(), *by)),
                        _ => run.push(name.clone()),
                    }
                }
                Resume { run, superseded }
            })
            .collect()
    }

    /// The names of the handlers a reservation is for.
    #[cfg_attr(not(feature = "journal"), allow(dead_code))]
    pub(crate) fn names(&self, reservation: &Reservation) -> Vec<String> {
        reservation
            .routes
            .iter()
            .map(|(i, _)| self.queues[*i].route.name().to_owned())
            .collect()
    }

    /// Queues the reserved runs; returns how many handlers the delivery went to.
    pub(crate) fn start(
        &self,
        reservation: Reservation,
        msg: HubMessage,
        delivery: DeliveryId,
    ) -> usize {
        let count = reservation.routes.len();
        if count == 0 {
            return 0;
        }
        let delivery = Arc::new(Delivery {
            id: delivery,
            msg: Arc::new(msg),
            remaining: count.into(),
            failed: false.into(),
            superseded: false.into(),
            notes: Mutex::new(Vec::new()),
        });
        for (i, slot) in reservation.routes {
            let job = Job {
                delivery: delivery.clone(),
                slot,
            };
            self.queues[i].enqueue(&self.shared, job);
        }
        count
    }

    /// Stops taking and starting runs, lets running ones finish within `grace`, then
    /// cancels the rest and waits for them to notice. Deliveries still waiting stay in the
    /// journal (when there is one) for the next start. Returns whether everything running
    /// finished in time.
    pub(crate) async fn shutdown(&self, grace: Duration) -> bool {
        self.shared.tracker.close();
        self.shared.closing.cancel();
        let waiting: usize = self.queues.iter().map(|q| q.close()).sum();
        if waiting > 0 {
            #[cfg(feature = "journal")]
            let kept = self.shared.journal.is_some();
            #[cfg(not(feature = "journal"))]
            let kept = false;
            if kept {
                tracing::info!(
                    waiting,
                    "queued handler runs stay in the journal for the next start"
                );
            } else {
                tracing::warn!(
                    waiting,
                    "queued handler runs dropped at shutdown (no journal)"
                );
            }
        }
        let tracker = &self.shared.tracker;
        let finished = tokio::time::timeout(grace, tracker.wait()).await.is_ok();
        if !finished {
            tracing::warn!(
                running = tracker.len(),
                "grace period over, cancelling running handlers"
            );
            self.shared.cancel.cancel();
            // Each run gives its handler CLEANUP to notice; wait a little longer than that.
            let _ = tokio::time::timeout(CLEANUP + Duration::from_secs(1), tracker.wait()).await;
        }
        #[cfg(feature = "journal")]
        if let Some(journal) = &self.shared.journal {
            // What the runs recorded is on disk before the process goes (a stalled disk
            // does not hold the exit: the next start runs those deliveries again).
            match tokio::time::timeout(Duration::from_secs(5), journal.sync()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "the journal could not be synced at shutdown")
                }
                Err(_) => tracing::error!("the journal did not sync within 5 s of shutdown"),
            }
        }
        finished
    }

    pub(crate) fn running(&self) -> usize {
        self.shared.tracker.len()
    }

    /// Per handler: (name, waiting, running).
    pub(crate) fn depths(&self) -> Vec<(&str, usize, usize)> {
        self.queues
            .iter()
            .map(|q| {
                let (waiting, running) = q.depth();
                (q.route.name(), waiting, running)
            })
            .collect()
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
