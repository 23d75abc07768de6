//! One handler's queue: coalescing keys, latest wins, bounded concurrency, and every
//! attempt of a run with its retries.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dispatch::run::run;
use crate::dispatch::Route;
use crate::handler::{Context, DeliveryId, HandlerError};
use crate::observe::{
    AttemptFinished, AttemptStarted, DeliveryStatus, Observers, RunStatus, Settled,
};
use crate::HubMessage;

/// One accepted delivery on its way through the queues of the handlers it went to.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) id: DeliveryId,
    pub(crate) msg: Arc<HubMessage>,
    /// How many handlers it went to.
    handlers: usize,
    /// Each settled handler's final status; full when the delivery is settled.
    finals: Mutex<Vec<(Arc<str>, RunStatus)>>,
}

impl Delivery {
    pub(crate) fn new(id: DeliveryId, msg: HubMessage, handlers: usize) -> Self {
        Self {
            id,
            msg: Arc::new(msg),
            handlers,
            finals: Mutex::new(Vec::with_capacity(handlers)),
        }
    }

    /// Records one handler's end; the last one settles the delivery.
    fn settle(&self, shared: &Shared, handler: &Arc<str>, status: RunStatus) {
        let finals = {
            let mut finals = self.finals.lock().unwrap_or_else(|p| p.into_inner());
            finals.push((handler.clone(), status));
            if finals.len() < self.handlers {
                return;
            }
            std::mem::take(&mut *finals)
        };
        shared.observers.settled(&Settled {
            id: self.id,
            msg: &self.msg,
            status: DeliveryStatus::settle(finals.iter().map(|(_, s)| *s)),
            handlers: &finals,
            tracker: &shared.tracker,
            seam: &shared.observers,
        });
    }
}

/// What every queue shares: the task tracker, the stop signals and the observers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) tracker: TaskTracker,
    /// Fires when shutdown begins: nothing new starts, backoffs and waits end.
    pub(crate) closing: CancellationToken,
    /// Fires when the grace period is over: running handlers are cancelled.
    pub(crate) cancel: CancellationToken,
    pub(crate) observers: Arc<Observers>,
}

/// One handler's queue: keys waiting, keys running, bounded in deliveries.
#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) route: Route,
    /// The handler's name, shared with every record of its runs.
    pub(crate) name: Arc<str>,
    pub(crate) slots: Arc<Semaphore>,
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
pub(crate) struct QueueState {
    keys: HashMap<String, Slot>,
    /// Keys with a waiting delivery and nothing running, in arrival order.
    ready: VecDeque<String>,
    running: usize,
    closed: bool,
}

#[derive(Debug)]
struct Slot {
    /// The newest delivery seen for this key; an older one arriving late is superseded.
    newest: DeliveryId,
    pending: Option<Job>,
}

/// A delivery waiting for (or in) a run of one handler, holding its place in the bound.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) delivery: Arc<Delivery>,
    /// Its place in the queue's bound; `None` for a delivery let in past the bound
    /// because it replaces a waiting one, whose place it takes over.
    pub(crate) slot: Option<OwnedSemaphorePermit>,
}

impl Queue {
    pub(crate) fn new(route: Route, bound: usize) -> Self {
        Self {
            name: Arc::from(route.name()),
            route,
            slots: Arc::new(Semaphore::new(bound)),
            state: Mutex::new(QueueState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // The state is consistent between statements; a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `job` in line; starts what can start.
    pub(crate) fn enqueue(self: &Arc<Self>, shared: &Arc<Shared>, job: Job) {
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

    /// The newest delivery waiting (not running) under `key`, if one does.
    pub(crate) fn has_newer(&self, key: &str) -> Option<DeliveryId> {
        let state = self.lock();
        let slot = state.keys.get(key)?;
        slot.pending.as_ref().map(|_| slot.newest)
    }

    /// (waiting, running) deliveries.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let state = self.lock();
        let waiting = state.keys.values().filter(|s| s.pending.is_some()).count();
        (waiting, state.running)
    }

    /// Stops starting runs; returns how many deliveries were still waiting.
    pub(crate) fn close(&self) -> usize {
        let mut state = self.lock();
        state.closed = true;
        state.keys.values().filter(|s| s.pending.is_some()).count()
    }

    fn supersede(&self, shared: &Shared, delivery: &Delivery, attempt: u32, by: DeliveryId) {
        shared.observers.attempt_finished(&AttemptFinished {
            id: delivery.id,
            msg: Some(&delivery.msg),
            handler: &self.name,
            attempt,
            started: SystemTime::now(),
            elapsed: Duration::ZERO,
            status: RunStatus::Superseded,
            detail: &by,
            final_: true,
        });
        delivery.settle(shared, &self.name, RunStatus::Superseded);
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
            shared.observers.attempt_started(&AttemptStarted {
                id,
                handler: &self.name,
                attempt,
            });
            let (started, started_at) = (Instant::now(), SystemTime::now());
            let result = run(&*route.handler, msg, &ctx, route.timeout, &cancel).await;
            let status = RunStatus::of(&result);
            let retry = attempt <= route.retries
                && matches!(status, RunStatus::Failed | RunStatus::Timeout);
            let cancelled = status == RunStatus::Cancelled;
            let detail: &dyn std::fmt::Display = match &result {
                Ok(outcome) => &outcome.summary,
                Err(HandlerError::Cancelled) => &"",
                Err(HandlerError::Panicked(reason)) => reason,
                Err(error) => error,
            };
            shared.observers.attempt_finished(&AttemptFinished {
                id,
                msg: Some(msg),
                handler: &self.name,
                attempt,
                started: started_at,
                elapsed: started.elapsed(),
                status,
                detail,
                final_: !retry && !cancelled,
            });
            if cancelled {
                // Stopped by shutdown: still owed, the journal runs it again on start.
                return;
            }
            if !retry {
                delivery.settle(shared, &self.name, status);
                return;
            }
            let wait = route.delay(attempt, jitter());
            tracing::info!(handler = &*self.name, delivery = %id, attempt, wait_ms = wait.as_millis() as u64, "retrying after a backoff");
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
