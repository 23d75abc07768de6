//! Running again what a previous process accepted and did not finish, and replaying a
//! stored delivery on request.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::dispatch::Resume;
use crate::error::Kind;
use crate::handler::DeliveryId;
use crate::observe::{AttemptFinished, DeliveryStatus, RunStatus, Settled, StoreError, Stored};
use crate::service::HubhookService;
use crate::{Error, HubMessage};

impl HubhookService {
    /// Runs again what a previous process accepted and did not finish (at least once):
    /// each unfinished delivery, oldest first, to the handlers still owed a run, through
    /// their queues (so deliveries with one coalescing key end in one run of the newest).
    /// Returns how many deliveries were resumed; `Ok(0)` without a journal. The same as
    /// [`recovery`](Self::recovery) followed by [`Recovery::run`].
    pub async fn recover(&self) -> Result<usize, Error> {
        Ok(self.recovery().await?.run().await)
    }

    /// Reads what a previous process left unfinished, before this one accepts anything
    /// (so nothing this process accepts is mistaken for it). Run the returned
    /// [`Recovery`] in the background while the listener serves: it waits for room in the
    /// queues rather than drop anything, and it stops early, leaving the rest stored for
    /// the next start, when shutdown begins.
    pub async fn recovery(&self) -> Result<Recovery, Error> {
        let Some(store) = self.inner.dispatcher.observers().store() else {
            return Ok(Recovery {
                service: self.clone(),
                owed: Vec::new(),
            });
        };
        let mut owed = Vec::new();
        for delivery in store
            .unfinished()
            .await
            .map_err(|e| Error::new(Kind::Journal).with(e))?
        {
            match HubMessage::from_serialized(delivery.message.as_bytes()) {
                Ok(msg) => owed.push((delivery, msg)),
                Err(e) => {
                    tracing::error!(delivery = %delivery.id, error = %e, "cannot resume a stored delivery");
                    let reason = format!("the stored message cannot be read: {e}");
                    self.settle_unrun(
                        delivery.id,
                        None,
                        &[("recovery", RunStatus::Failed, &reason)],
                    );
                }
            }
        }
        Ok(Recovery {
            service: self.clone(),
            owed,
        })
    }
}

/// Deliveries a previous process left unfinished, read and ready to run again: see
/// [`HubhookService::recovery`].
#[derive(Debug)]
#[must_use = "a recovery does nothing until it runs"]
pub struct Recovery {
    service: HubhookService,
    owed: Vec<(Stored, HubMessage)>,
}

impl Recovery {
    /// How many deliveries are owed runs.
    pub fn len(&self) -> usize {
        self.owed.len()
    }

    /// Whether nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.owed.is_empty()
    }

    /// Queues every owed delivery, oldest first; returns how many were resumed.
    pub async fn run(self) -> usize {
        let Recovery { service, owed } = self;
        let dispatcher = &service.inner.dispatcher;
        // Latest wins across a restart too: of several unfinished deliveries with one
        // coalescing key, only the newest runs.
        let plan = dispatcher.plan_recovery(
            &owed
                .iter()
                .map(|(d, msg)| (d.id, msg, d.handlers.as_slice()))
                .collect::<Vec<_>>(),
        );
        let mut resumed = 0;
        for ((delivery, msg), Resume { run, superseded }) in owed.into_iter().zip(plan) {
            let mut unrun: Vec<(&str, RunStatus, &(dyn fmt::Display + Sync))> = superseded
                .iter()
                .map(|(handler, by)| (handler.as_str(), RunStatus::Superseded, by as _))
                .collect();
            // Wait for room rather than drop anything.
            let Some(reservation) = dispatcher.reserve_waiting(&msg, Some(&run)).await else {
                break;
            };
            let starting = dispatcher.names(&reservation);
            // A handler removed from the configuration since, or whose patterns no longer
            // match: nothing can run it.
            unrun.extend(
                run.iter()
                    .filter(|h| !starting.iter().any(|s| &**s == h.as_str()))
                    .map(|h| {
                        (
                            h.as_str(),
                            RunStatus::Rejected,
                            &"the handler is no longer configured for this repository and tag" as _,
                        )
                    }),
            );
            if starting.is_empty() {
                service.settle_unrun(delivery.id, Some(msg), &unrun);
                continue;
            }
            service.report_unrun(delivery.id, Some(&msg), &unrun);
            tracing::info!(delivery = %delivery.id, handlers = starting.len(), "resuming an unfinished delivery");
            dispatcher.start(reservation, msg, delivery.id);
            resumed += 1;
        }
        resumed
    }
}

impl HubhookService {
    /// Reports the final attempts of handlers that will not run a delivery.
    fn report_unrun(
        &self,
        id: DeliveryId,
        msg: Option<&HubMessage>,
        unrun: &[(&str, RunStatus, &(dyn fmt::Display + Sync))],
    ) {
        let seam = self.inner.dispatcher.observers();
        for (handler, status, detail) in unrun {
            seam.attempt_finished(&AttemptFinished {
                id,
                msg,
                handler,
                attempt: 0,
                started: SystemTime::now(),
                elapsed: Duration::ZERO,
                status: *status,
                detail,
                final_: true,
            });
        }
    }

    /// Like [`report_unrun`](Self::report_unrun), for a delivery that runs nowhere: it
    /// settles at once.
    fn settle_unrun(
        &self,
        id: DeliveryId,
        msg: Option<HubMessage>,
        unrun: &[(&str, RunStatus, &(dyn fmt::Display + Sync))],
    ) {
        self.report_unrun(id, msg.as_ref(), unrun);
        let seam = self.inner.dispatcher.observers();
        let finals: Vec<(Arc<str>, RunStatus)> = unrun
            .iter()
            .map(|(handler, status, _)| (Arc::from(*handler), *status))
            .collect();
        seam.settled(&Settled {
            id,
            msg: &Arc::new(msg.unwrap_or_else(HubMessage::unreadable)),
            status: DeliveryStatus::settle(finals.iter().map(|(_, s)| *s)),
            handlers: &finals,
            tracker: self.inner.dispatcher.tracker(),
            seam,
        });
    }

    /// Runs a stored delivery again, as a new delivery with the same message, for the
    /// handlers that match it now. Returns the new delivery's id.
    pub async fn replay(&self, id: DeliveryId) -> Result<DeliveryId, ReplayError> {
        let store = self
            .inner
            .dispatcher
            .observers()
            .store()
            .ok_or(ReplayError::NoJournal)?;
        let old = store
            .get(id)
            .await
            .map_err(ReplayError::Journal)?
            .ok_or(ReplayError::NotFound(id))?;
        let msg = HubMessage::from_serialized(old.message.as_bytes())
            .map_err(|e| ReplayError::Unreadable(e.to_string()))?;
        if self.is_draining() {
            return Err(ReplayError::Busy("shutting down"));
        }
        let delivery = self
            .accept(vec![msg], None)
            .await
            .map_err(ReplayError::Busy)?
            .pop()
            .ok_or(ReplayError::Busy("not accepted"))?;
        tracing::info!(%delivery, replay_of = %id, "replaying a delivery");
        Ok(delivery)
    }
}

/// Why [`HubhookService::replay`] could not run a delivery again.
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
    #[error("journal: {0}")]
    Journal(#[source] StoreError),
}
