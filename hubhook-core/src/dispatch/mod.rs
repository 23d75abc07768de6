//! Dispatch: which handlers a message goes to, and running them off the request path.
//!
//! Each handler has a queue. A delivery waits there under a coalescing key (by default
//! repository and tag): one run per key at a time, and a newer delivery replaces one still
//! waiting (latest wins; the replaced one is recorded as superseded). At most
//! `max_concurrency` runs per handler go at once, each in its own task, with a timeout and
//! retries after a jittered exponential backoff. A handler's panic is caught and reported
//! with the handler's name and the delivery id. Every queue is bounded: past the bound the
//! request is refused with 503 rather than piling up work.

mod pattern;
mod queue;
mod route;
mod run;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::DeliveryId;
use crate::observe::Observers;
use crate::HubMessage;

pub use pattern::Pattern;
pub use route::{Coalesce, Route, DEFAULT_BACKOFF, DEFAULT_MAX_CONCURRENCY};

use queue::{Delivery, Job, Queue, Shared};

/// Runs matching handlers for accepted messages, in the background, through one queue
/// per handler.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    queues: Vec<Arc<Queue>>,
    shared: Arc<Shared>,
}

/// Places taken in the queues for one delivery, before it is journaled and started.
#[derive(Debug)]
pub(crate) struct Reservation {
    routes: Vec<(usize, Option<OwnedSemaphorePermit>)>,
}

/// What recovery does with one unfinished delivery.
#[derive(Debug)]
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
    pub(crate) fn new(routes: Vec<Route>, max_pending: usize, observers: Arc<Observers>) -> Self {
        Self {
            queues: routes
                .into_iter()
                .map(|route| {
                    let bound = route.max_queued.unwrap_or(max_pending).max(1);
                    Arc::new(Queue::new(route, bound))
                })
                .collect(),
            shared: Arc::new(Shared {
                tracker: TaskTracker::new(),
                closing: CancellationToken::new(),
                cancel: CancellationToken::new(),
                observers,
            }),
        }
    }

    /// The tracker of every task dispatch starts (shutdown waits for them).
    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.shared.tracker
    }

    /// Every observer of the deliveries dispatched here.
    pub(crate) fn observers(&self) -> &Arc<Observers> {
        &self.shared.observers
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
                        && queue
                            .has_newer(&queue.route.coalesce.key(msg, id))
                            .is_some() =>
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
    pub(crate) fn names(&self, reservation: &Reservation) -> Vec<Arc<str>> {
        reservation
            .routes
            .iter()
            .map(|(i, _)| self.queues[*i].name.clone())
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
        let delivery = Arc::new(Delivery::new(delivery, msg, count));
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
        let store = self.shared.observers.store();
        if waiting > 0 {
            if store.is_some() {
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
            let _ =
                tokio::time::timeout(run::CLEANUP + Duration::from_secs(1), tracker.wait()).await;
        }
        if let Some(store) = store {
            // What the runs recorded is on disk before the process goes (a stalled disk
            // does not hold the exit: the next start runs those deliveries again).
            match tokio::time::timeout(Duration::from_secs(5), store.sync()).await {
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
