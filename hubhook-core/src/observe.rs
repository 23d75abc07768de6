//! The delivery lifecycle seam: accepted, attempt started, attempt finished, settled.
//!
//! Dispatch reports what happens to a delivery here and nowhere else; the journal, the
//! metrics, the log lines and the legacy callback listen. Data flows one way: an observer
//! never calls back into dispatch. The one observer that answers is the durable
//! [`Store`] (the journal): the service waits for its commit before it answers 2xx.
//!
//! [`RunStatus`] and [`DeliveryStatus`] are the only source of the status words that
//! metrics, the journal, callbacks and the command line use.

// Parts of the seam are read only by the optional observers (the journal, the callback).
#![cfg_attr(not(all(feature = "journal", feature = "callback")), allow(dead_code))]

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::task::TaskTracker;

use crate::handler::{DeliveryId, HandlerError, Outcome};
use crate::HubMessage;

/// Whether a run that ended with `status` and `detail` was a failed deploy that put the
/// previous version back: the docker and compose handlers end such a failure with these
/// words. What notifications call `rolled_back` and the web page badges so.
pub(crate) fn rolled_back(status: RunStatus, detail: &str) -> bool {
    status == RunStatus::Failed
        && (detail.contains("; rolled back") || detail.contains("; rollback done"))
}

/// How one handler attempt (or the legacy callback) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunStatus {
    /// It worked.
    Ok,
    /// It was tried and failed.
    Failed,
    /// The message did not fit the handler's configuration; nothing was done.
    Rejected,
    /// It took longer than its timeout.
    Timeout,
    /// Shutdown stopped it; the delivery is still owed a run.
    Cancelled,
    /// The handler panicked.
    Panic,
    /// A newer delivery of the same coalescing key replaced it.
    Superseded,
}

impl RunStatus {
    /// Every status, in the order `/metrics` lists them.
    pub const ALL: [RunStatus; 7] = [
        Self::Ok,
        Self::Failed,
        Self::Rejected,
        Self::Timeout,
        Self::Cancelled,
        Self::Panic,
        Self::Superseded,
    ];

    /// The status of a handler's result.
    pub fn of(result: &Result<Outcome, HandlerError>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(HandlerError::Rejected(_)) => Self::Rejected,
            Err(HandlerError::Timeout(_)) => Self::Timeout,
            Err(HandlerError::Cancelled) => Self::Cancelled,
            Err(HandlerError::Panicked(_)) => Self::Panic,
            Err(HandlerError::Superseded(_)) => Self::Superseded,
            Err(HandlerError::Failed(_) | HandlerError::Other(_)) => Self::Failed,
        }
    }

    /// The word for it: `ok`, `failed`, `rejected`, `timeout`, `cancelled`, `panic`,
    /// `superseded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Panic => "panic",
            Self::Superseded => "superseded",
        }
    }

    /// Whether an attempt that ended so makes its delivery `failed`.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Rejected | Self::Timeout | Self::Panic
        )
    }
}

/// Where a delivery stands: owed runs, or how its handlers ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeliveryStatus {
    /// Some handler is still owed a final attempt.
    Pending,
    /// Every handler succeeded.
    Ok,
    /// Some handler failed, timed out, panicked or rejected it.
    Failed,
    /// Nothing failed, but a newer delivery replaced it for some handler.
    Superseded,
    /// No handler wanted it.
    Unmatched,
}

impl DeliveryStatus {
    /// Every status, in the order the command line lists them.
    pub const ALL: [DeliveryStatus; 5] = [
        Self::Pending,
        Self::Ok,
        Self::Failed,
        Self::Superseded,
        Self::Unmatched,
    ];

    /// The status of a delivery whose handlers all ended with `finals` (one final
    /// attempt each): `failed` if any failed, else `superseded` if any was, else `ok`.
    /// A delivery with no final attempt at all counts as failed.
    pub fn settle(finals: impl IntoIterator<Item = RunStatus>) -> Self {
        let mut status = None;
        for run in finals {
            status = Some(match (status, run) {
                (_, run) if run.is_failure() => return Self::Failed,
                (_, RunStatus::Superseded) | (Some(Self::Superseded), _) => Self::Superseded,
                _ => Self::Ok,
            });
        }
        status.unwrap_or(Self::Failed)
    }

    /// The word for it: `pending`, `ok`, `failed`, `superseded`, `unmatched`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Superseded => "superseded",
            Self::Unmatched => "unmatched",
        }
    }
}

/// A status word that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

macro_rules! words {
    ($ty:ty) => {
        impl FromStr for $ty {
            type Err = UnknownStatus;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$ty>::ALL
                    .into_iter()
                    .find(|status| status.as_str() == s)
                    .ok_or_else(|| UnknownStatus(s.to_owned()))
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}
words!(RunStatus);
words!(DeliveryStatus);

/// A delivery on its way in: decoded, given an id and the handlers it goes to.
#[derive(Debug)]
pub(crate) struct Accepted<'a> {
    pub(crate) id: DeliveryId,
    pub(crate) msg: &'a HubMessage,
    pub(crate) handlers: &'a [Arc<str>],
}

/// One attempt of one handler, about to run.
#[derive(Debug)]
pub(crate) struct AttemptStarted<'a> {
    pub(crate) id: DeliveryId,
    pub(crate) handler: &'a str,
    pub(crate) attempt: u32,
}

/// One attempt of one handler (or of the callback, as handler `callback`), ended.
pub(crate) struct AttemptFinished<'a> {
    pub(crate) id: DeliveryId,
    pub(crate) msg: Option<&'a HubMessage>,
    pub(crate) handler: &'a str,
    /// From 1; 0 for a delivery settled without running (superseded while waiting).
    pub(crate) attempt: u32,
    pub(crate) started: SystemTime,
    pub(crate) elapsed: Duration,
    pub(crate) status: RunStatus,
    /// The outcome's summary or the error's text (empty when cancelled).
    pub(crate) detail: &'a dyn fmt::Display,
    /// Whether it settles the handler's share of the delivery (no retry follows).
    pub(crate) final_: bool,
}

impl fmt::Debug for AttemptFinished<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptFinished")
            .field("id", &self.id)
            .field("handler", &self.handler)
            .field("attempt", &self.attempt)
            .field("status", &self.status)
            .field("final_", &self.final_)
            .finish_non_exhaustive()
    }
}

/// Every handler of a delivery has a final attempt.
#[derive(Debug)]
pub(crate) struct Settled<'a> {
    pub(crate) id: DeliveryId,
    pub(crate) msg: &'a Arc<HubMessage>,
    pub(crate) status: DeliveryStatus,
    /// Each handler's final status, in the order they settled.
    pub(crate) handlers: &'a [(Arc<str>, RunStatus)],
    /// For work an observer does later (the callback): shutdown waits for it.
    pub(crate) tracker: &'a TaskTracker,
    /// Where an observer reports what that work did (as an attempt of its own).
    pub(crate) seam: &'a Arc<Observers>,
}

/// Something that watches deliveries go by. Every method has a default that does
/// nothing; each is called on the thread that made the event, so it must be quick.
pub(crate) trait Observer: Send + Sync + fmt::Debug {
    /// A delivery is accepted (durable, when there is a store) and about to be queued.
    fn accepted(&self, _event: &Accepted<'_>) {}
    /// A handler attempt starts.
    fn attempt_started(&self, _event: &AttemptStarted<'_>) {}
    /// A handler attempt ended.
    fn attempt_finished(&self, _event: &AttemptFinished<'_>) {}
    /// Every handler of a delivery has settled.
    fn settled(&self, _event: &Settled<'_>) {}
    /// Adds this observer's series to the `/metrics` text.
    fn render_metrics(&self, _out: &mut String) {}
}

/// A delivery as the store keeps it, to run it (again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) id: DeliveryId,
    /// The provider it came from.
    pub(crate) source: String,
    /// The message, serialized (`HubMessage`'s JSON).
    pub(crate) message: String,
    /// The handlers still owed a final attempt (unfinished), or all it went to (get).
    pub(crate) handlers: Vec<String>,
}

/// A delivery to append to the store, owned, in a form every store can keep.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) id: DeliveryId,
    pub(crate) source: String,
    pub(crate) repo: String,
    pub(crate) tag: String,
    /// The message, serialized (`HubMessage`'s JSON).
    pub(crate) message: String,
    pub(crate) handlers: Vec<Arc<str>>,
}

impl Record {
    pub(crate) fn new(id: DeliveryId, msg: &HubMessage, handlers: Vec<Arc<str>>) -> Self {
        Self {
            id,
            source: msg.source.clone(),
            // As `docker pull` names it, so that a registry's `host/team/app` is told
            // apart from Docker Hub's `team/app`, and `deliveries list --repo` takes what
            // the list shows.
            repo: msg.full_name(),
            tag: msg.tag().to_string(),
            message: serde_json::to_string(msg).unwrap_or_default(),
            handlers,
        }
    }
}

/// An error from the store, with its cause.
pub(crate) type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// Called once, on any thread, when an append is durable (or failed).
pub(crate) type Committed = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// The durable observer: accepted deliveries are appended to it before they are
/// answered, and what a previous process left unfinished is read back from it.
#[async_trait::async_trait]
pub(crate) trait Store: Observer {
    /// Appends `deliveries` in one commit; `committed` is called when they are durable,
    /// or with the reason they are not.
    fn append(&self, deliveries: Vec<Record>, committed: Committed);
    /// Deliveries accepted and not settled, oldest first, with the handlers still owed.
    async fn unfinished(&self) -> Result<Vec<Stored>, StoreError>;
    /// One delivery by id, with every handler it went to.
    async fn get(&self, id: DeliveryId) -> Result<Option<Stored>, StoreError>;
    /// Waits until everything reported before is durable.
    async fn sync(&self) -> Result<(), StoreError>;
}

/// Every observer of a service, and its store when it has one.
#[derive(Debug, Default)]
pub(crate) struct Observers {
    list: Vec<Arc<dyn Observer>>,
    store: Option<Arc<dyn Store>>,
}

impl Observers {
    pub(crate) fn new(list: Vec<Arc<dyn Observer>>, store: Option<Arc<dyn Store>>) -> Self {
        let mut list = list;
        if let Some(store) = &store {
            list.push(store.clone() as Arc<dyn Observer>);
        }
        Self { list, store }
    }

    /// The durable store, when deliveries are kept.
    pub(crate) fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    pub(crate) fn accepted(&self, event: &Accepted<'_>) {
        self.list.iter().for_each(|o| o.accepted(event));
    }

    pub(crate) fn attempt_started(&self, event: &AttemptStarted<'_>) {
        self.list.iter().for_each(|o| o.attempt_started(event));
    }

    pub(crate) fn attempt_finished(&self, event: &AttemptFinished<'_>) {
        self.list.iter().for_each(|o| o.attempt_finished(event));
    }

    pub(crate) fn settled(&self, event: &Settled<'_>) {
        self.list.iter().for_each(|o| o.settled(event));
    }

    pub(crate) fn render_metrics(&self, out: &mut String) {
        self.list.iter().for_each(|o| o.render_metrics(out));
    }
}

impl crate::HubhookServiceBuilder {
    /// Adds an observer of every delivery's lifecycle (the callback uses this).
    pub(crate) fn observe(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Makes `store` the durable record: deliveries are appended to it before their 2xx
    /// (the journal uses this).
    pub(crate) fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }
}

/// The log lines of a delivery's life: one per finished attempt at INFO (WARN when it
/// failed, ERROR for a panic); acceptance and starts at DEBUG.
#[derive(Debug, Default)]
pub(crate) struct Log;

impl Observer for Log {
    fn accepted(&self, e: &Accepted<'_>) {
        tracing::debug!(
            delivery = %e.id, source = %e.msg.source, repo = e.msg.repo().as_str(), tag = e.msg.tag().as_str(),
            handlers = e.handlers.len(), "accepted a delivery"
        );
    }

    fn attempt_started(&self, e: &AttemptStarted<'_>) {
        tracing::debug!(handler = e.handler, delivery = %e.id, attempt = e.attempt, "handler started");
    }

    fn attempt_finished(&self, e: &AttemptFinished<'_>) {
        let (repo, tag) = e.msg.map_or(("", ""), |m| (m.repo(), m.tag()));
        let elapsed_ms = e.elapsed.as_millis() as u64;
        // One event per line: a command's output tail is escaped, not written raw.
        let detail = OneLine(e.detail);
        let (handler, delivery, attempt) = (e.handler, e.id, e.attempt);
        match e.status {
            RunStatus::Ok => tracing::info!(
                handler, %delivery, attempt, repo, tag, elapsed_ms, summary = %detail,
                "handler succeeded"
            ),
            RunStatus::Panic => tracing::error!(
                handler, %delivery, attempt, repo, tag, panic = %detail, "handler panicked"
            ),
            RunStatus::Superseded => tracing::info!(
                handler, %delivery, by = %detail, "superseded by a newer delivery"
            ),
            _ => tracing::warn!(
                handler, %delivery, attempt, repo, tag, elapsed_ms, error = %detail,
                "handler failed"
            ),
        }
    }

    fn settled(&self, e: &Settled<'_>) {
        tracing::debug!(delivery = %e.id, status = %e.status, "delivery settled");
    }
}

/// Text with its line breaks and other control characters escaped (`\n`), for a log line.
struct OneLine<'a>(&'a dyn fmt::Display);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        let text = self.0.to_string();
        for c in text.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_details_stay_on_one_line() {
        let shown = OneLine(&"exit status 1; output: a\nb\r\x1b[31m").to_string();
        assert_eq!(shown, "exit status 1; output: a\\nb\\r\\u{1b}[31m");
    }

    #[test]
    fn words_round_trip() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>(), Ok(status));
        }
        for status in DeliveryStatus::ALL {
            assert_eq!(status.as_str().parse::<DeliveryStatus>(), Ok(status));
        }
        assert!("done".parse::<DeliveryStatus>().is_err());
    }

    #[test]
    fn a_delivery_settles_by_its_worst_handler() {
        use RunStatus::*;
        let cases: [(&[RunStatus], DeliveryStatus); 6] = [
            (&[Ok, Ok], DeliveryStatus::Ok),
            (&[Ok, Superseded], DeliveryStatus::Superseded),
            (&[Superseded, Ok], DeliveryStatus::Superseded),
            (&[Superseded, Timeout], DeliveryStatus::Failed),
            (&[Rejected], DeliveryStatus::Failed),
            (&[], DeliveryStatus::Failed),
        ];
        for (finals, want) in cases {
            assert_eq!(
                DeliveryStatus::settle(finals.iter().copied()),
                want,
                "{finals:?}"
            );
        }
    }
}
