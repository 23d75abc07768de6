//! Dispatch: filters, concurrency, panics, timeouts, and handlers during shutdown.

use std::time::Duration;

use hubhook_core::message::EXAMPLE_PAYLOAD;
use hubhook_core::{
    async_trait, Context, Handler, HandlerError, HubMessage, HubhookService, Outcome, Route,
};
use tokio::sync::mpsc;

use crate::support::*;

/// Panics on tag "boom", reports every other message.
struct Fragile(mpsc::UnboundedSender<String>);

#[async_trait]
impl Handler for Fragile {
    fn name(&self) -> &str {
        "fragile"
    }

    async fn handle(&self, msg: &HubMessage, _ctx: &Context) -> Result<Outcome, HandlerError> {
        if msg.tag() == "boom" {
            panic!("the handler fell over");
        }
        let _ = self.0.send(msg.tag().to_string());
        Ok(Outcome::new("fine"))
    }
}

#[tokio::test]
async fn a_panicking_handler_does_not_stop_the_next_delivery() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = HubhookService::builder()
        .api_key(KEY)
        .handler(Fragile(tx))
        .build()
        .expect("service");
    let server = TestServer::start(service, Transport::Plain).await;
    let hook = format!("/hubhook?apikey={KEY}");
    for _ in 0..3 {
        let r = server.post(&hook, &[], &payload_with_tag("boom")).await;
        assert_eq!(r.status, 202);
        let r = server.post(&hook, &[], &payload_with_tag("v2")).await;
        assert_eq!(r.status, 202, "the server still answers after a panic");
        assert_eq!(next(&mut rx).await, "v2", "the next delivery runs normally");
    }
    // The panics were counted as such.
    let metrics = server
        .metrics_with("hubhook_handler_runs_total{handler=\"fragile\",outcome=\"panic\"} 3")
        .await;
    assert!(
        metrics.contains("hubhook_handler_runs_total{handler=\"fragile\",outcome=\"panic\"} 3"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_running_handler_does_not_delay_the_answer() {
    // The handler cannot finish before the test lets it, and the test lets it only after
    // the 202 has arrived: if the answer waited for the handler, this would hang.
    let Gated {
        service,
        release,
        started: mut started_rx,
        finished: mut finished_rx,
    } = Gated::new(16);
    let server = TestServer::start(service, Transport::Plain).await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        server.post(
            &format!("/hubhook?apikey={KEY}"),
            &[],
            EXAMPLE_PAYLOAD.as_bytes(),
        ),
    )
    .await
    .expect("answered while the handler is still running");
    assert_eq!(r.status, 202);
    let delivery = next(&mut started_rx).await;
    assert_eq!(r.json()["delivery"], delivery.as_str());
    assert!(
        finished_rx.try_recv().is_err(),
        "the handler is still running"
    );
    release.add_permits(1);
    assert_eq!(next(&mut finished_rx).await, Ok(()));
    server.stop().await;
}

#[tokio::test]
async fn routes_filter_by_repo_and_tag_and_matching_handlers_all_run() {
    let (all, mut all_rx) = Recorder::new("all");
    let (tagged, mut tagged_rx) = Recorder::new("tagged");
    let (other, mut other_rx) = Recorder::new("other-repo");
    let service = HubhookService::builder()
        .api_key(KEY)
        .handler(all)
        .route(Route::new(tagged).repo("svendowideit/*").tag("v*"))
        .route(Route::new(other).repo("acme/*"))
        .build()
        .expect("service");
    let server = TestServer::start(service, Transport::Plain).await;
    let hook = format!("/hubhook?apikey={KEY}");
    assert_eq!(
        server
            .post(&hook, &[], &payload_with_tag("v2"))
            .await
            .status,
        202
    );
    assert_eq!(next(&mut all_rx).await.0.tag(), "v2");
    assert_eq!(next(&mut tagged_rx).await.0.tag(), "v2");
    assert_eq!(
        server
            .post(&hook, &[], &payload_with_tag("latest"))
            .await
            .status,
        202
    );
    assert_eq!(next(&mut all_rx).await.0.tag(), "latest");
    server.stop().await;
    assert!(tagged_rx.try_recv().is_err(), "tag filter held");
    assert!(other_rx.try_recv().is_err(), "repo filter held");
}

/// Sleeps far longer than any test; only a timeout or cancellation ends it.
struct Sleeper(mpsc::UnboundedSender<&'static str>);

#[async_trait]
impl Handler for Sleeper {
    fn name(&self) -> &str {
        "sleeper"
    }

    async fn handle(&self, _msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        let _ = self.0.send("started");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(3600)) => Ok(Outcome::new("woke")),
            () = ctx.cancelled() => {
                let _ = self.0.send("cancelled");
                Err(HandlerError::Cancelled)
            }
        }
    }
}

#[tokio::test]
async fn a_handler_over_its_timeout_is_cancelled() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = HubhookService::builder()
        .api_key(KEY)
        .route(Route::new(Sleeper(tx)).timeout(Duration::from_millis(200)))
        .build()
        .expect("service");
    let server = TestServer::start(service, Transport::Plain).await;
    let r = server
        .post(
            &format!("/hubhook?apikey={KEY}"),
            &[],
            EXAMPLE_PAYLOAD.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(next(&mut rx).await, "started");
    assert_eq!(
        next(&mut rx).await,
        "cancelled",
        "the handler saw its cancellation"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_gives_running_handlers_the_grace_period() {
    // A handler that finishes within the grace period completes normally.
    let Gated {
        service,
        release,
        started: mut started_rx,
        finished: mut finished_rx,
    } = Gated::new(16);
    let server = TestServer::start_with(service, Transport::Plain, |b| {
        b.shutdown_grace(Duration::from_secs(30))
    })
    .await;
    server
        .post(
            &format!("/hubhook?apikey={KEY}"),
            &[],
            EXAMPLE_PAYLOAD.as_bytes(),
        )
        .await;
    next(&mut started_rx).await;
    let stopping = tokio::spawn(server.stop());
    // A negative window: nothing but time can show that shutdown is not over yet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the running handler"
    );
    release.add_permits(1);
    assert_eq!(next(&mut finished_rx).await, Ok(()), "it finished normally");
    stopping.await.expect("serve returned");

    // One that does not finish is cancelled when the grace period is over.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = HubhookService::builder()
        .api_key(KEY)
        .handler(Sleeper(tx))
        .build()
        .expect("service");
    let server = TestServer::start_with(service, Transport::Plain, |b| {
        b.shutdown_grace(Duration::from_millis(300))
    })
    .await;
    server
        .post(
            &format!("/hubhook?apikey={KEY}"),
            &[],
            EXAMPLE_PAYLOAD.as_bytes(),
        )
        .await;
    assert_eq!(next(&mut rx).await, "started");
    tokio::time::timeout(Duration::from_secs(20), server.stop())
        .await
        .expect("shutdown ends after the grace period");
    assert_eq!(next(&mut rx).await, "cancelled");
}
