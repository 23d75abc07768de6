//! The hook pipeline: method, key, content type, body limit, signature, provider, then
//! the hand-off to the store and to dispatch. The cheapest refusals come first, and
//! nothing is read from a client that has not shown a key.

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use std::sync::Arc;
use tokio::sync::oneshot;

use crate::dispatch::{Busy, Reservation};
use crate::handler::DeliveryId;
use crate::observe::{self, Record};
use crate::provider::{Claim, Decoded, Refusal};
use crate::service::response::{error, is_json, text, unavailable, with_header};
use crate::service::{HookState, HubhookService};
use crate::HubMessage;

/// A delivery with its places in the queues, between its reservation and its start.
#[derive(Debug)]
pub(super) struct Pending {
    id: DeliveryId,
    msg: HubMessage,
    reservation: Reservation,
    handlers: Vec<Arc<str>>,
}

impl HubhookService {
    pub(super) async fn hook<B>(&self, req: Request<B>, state: &HookState) -> Response<Full<Bytes>>
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
        // A hook that only a signature authenticates must read the body before it knows
        // who sent it: a smaller limit, and a bound on how many such reads go at once.
        let signed_only = hook.keys.is_empty() && hook.provider.is_signed();
        let limit = if signed_only {
            self.inner.signed_max_body
        } else {
            self.inner.max_body
        };
        let _reading = match signed_only {
            true => match self.inner.unauthenticated_reads.try_acquire() {
                Ok(permit) => Some(permit),
                Err(_) => return unavailable("too many unauthenticated bodies being read"),
            },
            false => None,
        };
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return too_large(limit);
        }
        let limited = Limited::new(body, limit as usize);
        let bytes = match tokio::time::timeout(self.inner.read_timeout, limited.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return too_large(limit);
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
        if self.is_draining() {
            return unavailable("shutting down");
        }
        let messages = match hook
            .provider
            .decode(&parts.headers, &bytes, hook.registry.as_deref())
        {
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
        // A registry redelivers an envelope it got no 2xx for: act on each event once.
        let events: Vec<Option<&str>> = messages.iter().map(|(_, e)| e.as_deref()).collect();
        let (act, claim) = state.recent.claim(&events).await;
        let new: Vec<HubMessage> = messages
            .into_iter()
            .zip(act)
            .filter_map(|((msg, _), act)| act.then_some(msg))
            .collect();
        let accepted = match self.accept(new, Some(claim)).await {
            Ok(accepted) => accepted,
            Err(reason) => return unavailable(reason),
        };
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

    /// Queues `msgs` (the deliveries of one request) for the handlers that want them,
    /// each under a new delivery id. With a store, they are appended in one commit first,
    /// and only a durable delivery is started. The request's event ids (`claim`) count as
    /// seen once its deliveries are durable, even if the request is gone by then; refused,
    /// they are claimable again. `Err` is the reason for a 503.
    pub(super) async fn accept(
        &self,
        msgs: Vec<HubMessage>,
        claim: Option<Claim>,
    ) -> Result<Vec<DeliveryId>, &'static str> {
        let dispatcher = &self.inner.dispatcher;
        let mut batch = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let id = DeliveryId::generate();
            // Dropping `batch` on the way out gives back every place taken so far.
            let reservation = dispatcher.reserve(&msg, id).map_err(|busy| {
                let (reason, handler) = match &busy {
                    Busy::Closed => ("shutting down", ""),
                    Busy::Full(handler) => ("a handler's queue is full", handler.as_str()),
                };
                tracing::warn!(
                    repo = msg.repo().as_str(),
                    tag = msg.tag().as_str(),
                    reason,
                    handler,
                    "refused a delivery with 503"
                );
                reason
            })?;
            let handlers = dispatcher.names(&reservation);
            batch.push(Pending {
                id,
                msg,
                reservation,
                handlers,
            });
        }
        let ids = batch.iter().map(|p| p.id).collect();
        let durable = Durable {
            service: self.clone(),
            runtime: tokio::runtime::Handle::current(),
            batch,
            claim,
        };
        let store = match dispatcher.observers().store() {
            Some(store) if !durable.batch.is_empty() => store.clone(),
            // Nothing to keep: as durable as it gets.
            _ => {
                durable.launch();
                return Ok(ids);
            }
        };
        // Durable before the answer: the only wait on the request path, shared with
        // every request in flight (group commit).
        let records = durable
            .batch
            .iter()
            .map(|p| Record::new(p.id, &p.msg, p.handlers.clone()))
            .collect();
        let (answer, committed) = oneshot::channel();
        store.append(
            records,
            Box::new(move |result| match result {
                Ok(()) => {
                    // If the request is gone, `durable` starts the batch as it drops.
                    let _ = answer.send(Ok(durable));
                }
                Err(e) => {
                    tracing::error!(error = %e, "refused deliveries with 503: the journal failed");
                    // Not durable: the places are given back, nothing starts.
                    durable.refuse();
                    let _ = answer.send(Err(()));
                }
            }),
        );
        match committed.await {
            Ok(Ok(durable)) => {
                durable.launch();
                Ok(ids)
            }
            Ok(Err(())) | Err(_) => Err("the journal is unavailable"),
        }
    }

    /// Hands accepted (and stored) deliveries to their handlers' queues.
    fn launch(&self, batch: Vec<Pending>) {
        let dispatcher = &self.inner.dispatcher;
        for p in batch {
            dispatcher.observers().accepted(&observe::Accepted {
                id: p.id,
                msg: &p.msg,
                handlers: &p.handlers,
            });
            dispatcher.start(p.reservation, p.msg, p.id);
        }
    }
}

fn too_large(limit: u64) -> Response<Full<Bytes>> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body is larger than {limit} bytes"),
    )
}

/// Deliveries the store has made durable: they must start, whoever holds them. The
/// request that accepted them starts them; if it is gone (a client gone, a stream reset)
/// before it could, they start when this is dropped, on whichever thread drops it, or a
/// durable delivery would wait for the next start, behind newer ones.
struct Durable {
    service: HubhookService,
    runtime: tokio::runtime::Handle,
    batch: Vec<Pending>,
    /// The request's event ids: seen from the moment the batch starts.
    claim: Option<Claim>,
}

impl Durable {
    /// Starts the batch (on the caller's runtime thread).
    fn launch(mut self) {
        self.start();
    }

    fn start(&mut self) {
        self.service.launch(std::mem::take(&mut self.batch));
        if let Some(claim) = self.claim.take() {
            claim.commit();
        }
    }

    /// Not durable after all: gives the places and the event ids back, starts nothing.
    fn refuse(mut self) {
        self.batch.clear();
        self.claim = None;
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        if !self.batch.is_empty() || self.claim.is_some() {
            let _runtime = self.runtime.enter();
            self.start();
        }
    }
}
