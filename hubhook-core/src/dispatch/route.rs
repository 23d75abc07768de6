//! A handler with what it wants and how its runs are queued.

use std::sync::Arc;
use std::time::Duration;

use crate::dispatch::Pattern;
use crate::handler::{DeliveryId, Handler};
use crate::HubMessage;

/// Which deliveries share a place in a handler's queue.
///
/// Deliveries with the same key never run at the same time for one handler; while one
/// runs, a newer one waits, and a still newer one replaces it (latest wins): the replaced
/// delivery is recorded as superseded instead of running. A burst of pushes of one tag
/// therefore ends in at most one more run, with the newest message.
///
/// In a configuration file each is the word in its doc (`"repo+tag"`, `"repo"`,
/// `"handler"`, `"off"`), which is how it deserializes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Coalesce {
    /// Repository and tag (`"repo+tag"`): pushes of `acme/site:latest` coalesce,
    /// `acme/site:v2` is separate. The default.
    #[default]
    #[serde(rename = "repo+tag")]
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
    pub(crate) fn key(self, msg: &HubMessage, id: DeliveryId) -> String {
        match self {
            // The registry is part of the key: a message for another registry never
            // replaces one for this one.
            Self::RepoTag => match &msg.registry {
                Some(host) => format!("{host}/{}:{}", msg.repo(), msg.tag()),
                None => format!("{}:{}", msg.repo(), msg.tag()),
            },
            Self::Repo => match &msg.registry {
                Some(host) => format!("{host}/{}", msg.repo()),
                None => msg.repo().to_string(),
            },
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
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) repo: Pattern,
    pub(crate) tag: Pattern,
    pub(crate) timeout: Option<Duration>,
    pub(crate) coalesce: Coalesce,
    pub(crate) max_concurrency: usize,
    pub(crate) max_queued: Option<usize>,
    pub(crate) retries: u32,
    pub(crate) backoff: Duration,
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
    pub(crate) fn delay(&self, attempt: u32, random: u64) -> Duration {
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
