//! Per-handler queues over real HTTP: coalescing (latest wins), concurrency, bounds,
//! retries with backoff, timeouts, and what the journal keeps across a shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hubhook_core::{
    async_trait, Coalesce, Context, Handler, HandlerError, HubMessage, HubhookService, Outcome,
    Route,
};
use tokio::sync::{mpsc, Semaphore};

use crate::support::*;

/// One run as the handler saw it.
#[derive(Debug, Clone)]
struct Seen {
    delivery: String,
    pusher: String,
    attempt: u32,
    at: Instant,
}

/// What a [`Probe`] does with a run.
#[derive(Clone)]
enum Behave {
    /// Waits for a permit (or cancellation), then succeeds.
    Gate(Arc<Semaphore>),
    /// Fails while the attempt number is at most this, then succeeds.
    FailUntil(u32),
    /// Never finishes by itself.
    Hang,
}

/// Reports each run on a channel, then behaves as told.
struct Probe {
    name: &'static str,
    behave: Behave,
    tx: mpsc::UnboundedSender<Seen>,
}

impl Probe {
    fn new(name: &'static str, behave: Behave) -> (Self, mpsc::UnboundedReceiver<Seen>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { name, behave, tx }, rx)
    }
}

#[async_trait]
impl Handler for Probe {
    fn name(&self) -> &str {
        self.name
    }

    async fn handle(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        let _ = self.tx.send(Seen {
            delivery: ctx.delivery().to_string(),
            pusher: msg.pusher().map(str::to_owned).unwrap_or_default(),
            attempt: ctx.attempt(),
            at: Instant::now(),
        });
        match &self.behave {
            Behave::Gate(gate) => tokio::select! {
                permit = gate.acquire() => {
                    permit.expect("gate open").forget();
                    Ok(Outcome::new("released"))
                }
                () = ctx.cancelled() => Err(HandlerError::Cancelled),
            },
            Behave::FailUntil(n) if ctx.attempt() <= *n => Err(HandlerError::Failed(format!(
                "attempt {} failed",
                ctx.attempt()
            ))),
            Behave::FailUntil(_) => Ok(Outcome::new("third time lucky")),
            Behave::Hang => {
                ctx.cancelled().await;
                Err(HandlerError::Cancelled)
            }
        }
    }
}

/// The documented example with a tag and a pusher.
fn payload(tag: &str, pusher: &str) -> Vec<u8> {
    let mut value: serde_json::Value =
        serde_json::from_slice(&payload_with_tag(tag)).expect("JSON");
    value["push_data"]["pusher"] = serde_json::Value::String(pusher.to_owned());
    value.to_string().into_bytes()
}

fn hook() -> String {
    format!("/hubhook?apikey={KEY}")
}

async fn quiet<T: std::fmt::Debug>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) {
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("{what}: {extra:?}");
    }
}

#[tokio::test]
async fn a_burst_for_one_tag_ends_in_one_more_run_with_the_newest_message() {
    let gate = Arc::new(Semaphore::new(0));
    let (probe, mut runs) = Probe::new("deploy", Behave::Gate(gate.clone()));
    let service = HubhookService::builder()
        .api_key(KEY)
        .handler(probe)
        .build()
        .expect("service");
    let server = TestServer::start(service, Transport::Plain).await;
    let first = server.post(&hook(), &[], &payload("latest", "p0")).await;
    assert_eq!(first.status, 202);
    assert_eq!(
        next(&mut runs).await.pusher,
        "p0",
        "the first one runs at once"
    );
    // While it runs, 200 more pushes of the same tag arrive, and one of another tag.
    for i in 1..=200 {
        let r = server
            .post(&hook(), &[], &payload("latest", &format!("p{i}")))
            .await;
        assert_eq!(r.status, 202, "every push is accepted");
    }
    let other = server.post(&hook(), &[], &payload("v2", "other")).await;
    assert_eq!(other.status, 202);
    assert_eq!(
        next(&mut runs).await.pusher,
        "other",
        "another tag is another key: it does not wait"
    );
    gate.add_permits(3);
    let second = next(&mut runs).await;
    assert_eq!(second.pusher, "p200", "the newest message runs next");
    quiet(&mut runs, "no stale push runs").await;
    let line = "hubhook_handler_runs_total{handler=\"deploy\",outcome=\"superseded\"} 199";
    let metrics = server.metrics_with(line).await;
    assert!(metrics.contains(line), "{metrics}");
    assert!(
        metrics.contains("hubhook_queue_depth{handler=\"deploy\"} 0\n"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn max_concurrency_and_a_full_queue() {
    let gate = Arc::new(Semaphore::new(0));
    let (probe, mut runs) = Probe::new("deploy", Behave::Gate(gate.clone()));
    let service = HubhookService::builder()
        .api_key(KEY)
        .route(
            Route::new(probe)
                .coalesce(Coalesce::Off)
                .max_concurrency(2)
                .max_queued(3),
        )
        .build()
        .expect("service");
    let server = TestServer::start(service, Transport::Plain).await;
    for i in 0..3 {
        let r = server
            .post(&hook(), &[], &payload("latest", &format!("p{i}")))
            .await;
        assert_eq!(r.status, 202, "coalescing is off: all three are queued");
    }
    assert_eq!(next(&mut runs).await.pusher, "p0");
    assert_eq!(next(&mut runs).await.pusher, "p1");
    quiet(&mut runs, "a third run past max_concurrency = 2").await;
    let metrics = server
        .metrics_with("hubhook_queue_depth{handler=\"deploy\"} 1\n")
        .await;
    assert!(
        metrics.contains("hubhook_queue_depth{handler=\"deploy\"} 1\n")
            && metrics.contains("hubhook_queue_running{handler=\"deploy\"} 2\n"),
        "{metrics}"
    );

    let full = server.post(&hook(), &[], &payload("latest", "p3")).await;
    assert_eq!(full.status, 503, "the queue holds 3: the fourth is refused");
    assert_eq!(full.header("retry-after"), Some("5"));
    assert_eq!(full.json()["error"], "a handler's queue is full");

    gate.add_permits(1);
    assert_eq!(next(&mut runs).await.pusher, "p2", "in order of arrival");
    // One finished: there is room again.
    hubhook_testkit::eventually_async(
        Duration::from_secs(1),
        "a place freed by a finished run is taken again",
        || async {
            let r = server.post(&hook(), &[], &payload("latest", "p4")).await;
            (r.status == 202).then_some(())
        },
    )
    .await;
    gate.add_permits(10);
    assert_eq!(next(&mut runs).await.pusher, "p4");
    server.stop().await;
}

#[tokio::test]
async fn a_full_queue_still_takes_a_push_that_replaces_a_waiting_one() {
    let gate = Arc::new(Semaphore::new(0));
    let (probe, mut runs) = Probe::new("deploy", Behave::Gate(gate.clone()));
    let service = HubhookService::builder()
        .api_key(KEY)
        .route(Route::new(probe).max_queued(2))
        .build()
        .expect("service");
    let server = TestServer::start(service, Transport::Plain).await;
    assert_eq!(
        server
            .post(&hook(), &[], &payload("latest", "p1"))
            .await
            .status,
        202
    );
    assert_eq!(next(&mut runs).await.pusher, "p1");
    assert_eq!(
        server
            .post(&hook(), &[], &payload("latest", "p2"))
            .await
            .status,
        202
    );
    // Both places are taken (p1 runs, p2 waits); p3 and p4 replace the waiting one.
    for pusher in ["p3", "p4"] {
        let r = server.post(&hook(), &[], &payload("latest", pusher)).await;
        assert_eq!(r.status, 202, "{pusher}: {}", r.body);
    }
    let other = server.post(&hook(), &[], &payload("v2", "other")).await;
    assert_eq!(other.status, 503, "another key needs a place of its own");
    gate.add_permits(10);
    assert_eq!(next(&mut runs).await.pusher, "p4");
    quiet(&mut runs, "nothing else runs").await;
    server.stop().await;
}

#[tokio::test]
async fn a_failing_handler_is_retried_with_a_growing_backoff() {
    let (probe, mut runs) = Probe::new("flaky", Behave::FailUntil(2));
    let service = HubhookService::builder()
        .api_key(KEY)
        .route(
            Route::new(probe)
                .retries(3)
                .backoff(Duration::from_millis(100)),
        )
        .build()
        .expect("service");
    let server = TestServer::start(service, Transport::Plain).await;
    let r = server.post(&hook(), &[], &payload("latest", "me")).await;
    assert_eq!(r.status, 202);
    let seen = [
        next(&mut runs).await,
        next(&mut runs).await,
        next(&mut runs).await,
    ];
    assert_eq!(seen.clone().map(|s| s.attempt), [1, 2, 3]);
    assert!(
        seen.iter().all(|s| s.delivery == seen[0].delivery),
        "one delivery"
    );
    // Backoff with jitter: the n-th wait is between half and all of 100 ms · 2^(n-1).
    let first = seen[1].at - seen[0].at;
    let second = seen[2].at - seen[1].at;
    assert!(first >= Duration::from_millis(50), "first wait {first:?}");
    assert!(
        second >= Duration::from_millis(100),
        "second wait {second:?}"
    );
    quiet(&mut runs, "no attempt after the success").await;
    let metrics = server
        .metrics_with("hubhook_handler_runs_total{handler=\"flaky\",outcome=\"ok\"} 1")
        .await;
    assert!(
        metrics.contains("hubhook_handler_runs_total{handler=\"flaky\",outcome=\"failed\"} 2\n")
            && metrics.contains("hubhook_handler_runs_total{handler=\"flaky\",outcome=\"ok\"} 1\n"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_hanging_handler_times_out_on_every_attempt() {
    let (probe, mut runs) = Probe::new("stuck", Behave::Hang);
    let service = HubhookService::builder()
        .api_key(KEY)
        .route(
            Route::new(probe)
                .timeout(Duration::from_millis(100))
                .retries(1)
                .backoff(Duration::from_millis(10)),
        )
        .build()
        .expect("service");
    let server = TestServer::start(service, Transport::Plain).await;
    assert_eq!(
        server
            .post(&hook(), &[], &payload("latest", "me"))
            .await
            .status,
        202
    );
    assert_eq!(next(&mut runs).await.attempt, 1);
    assert_eq!(next(&mut runs).await.attempt, 2, "a timeout is retried");
    let line = "hubhook_handler_runs_total{handler=\"stuck\",outcome=\"timeout\"} 2";
    let metrics = server.metrics_with(line).await;
    assert!(metrics.contains(line), "{metrics}");
    quiet(&mut runs, "no third attempt with retries = 1").await;
    server.stop().await;
}

#[cfg(feature = "journal")]
mod journaled {
    use hubhook_core::journal::{Filter, History, Journal};
    use hubhook_core::DeliveryStatus;
    use hubhook_core::Listener;

    use super::*;

    /// A server journaling to `path` with one route and the given shutdown grace.
    async fn journaled(path: &std::path::Path, route: Route, grace: Duration) -> TestServer {
        let service = HubhookService::builder()
            .api_key(KEY)
            .journal(Journal::open(path).expect("journal"))
            .route(route)
            .build()
            .expect("service");
        let listener = Listener::builder(service)
            .addr("127.0.0.1:0".parse().expect("addr"))
            .shutdown_grace(grace)
            .bind()
            .await
            .expect("bind");
        TestServer::from_listener(listener)
    }

    /// A journal file in a temporary folder that goes with the returned guard.
    fn journal_path(name: &str) -> (hubhook_testkit::TempDir, std::path::PathBuf) {
        let dir = hubhook_testkit::TempDir::new(&format!("queues-{name}"));
        let path = dir.path().join("journal.sqlite");
        (dir, path)
    }

    #[tokio::test]
    async fn a_final_failure_and_a_superseded_retry_stay_visible() {
        let (_dir, path) = journal_path("visible");
        let (probe, mut runs) = Probe::new("flaky", Behave::FailUntil(10));
        let service = HubhookService::builder()
            .api_key(KEY)
            .journal(Journal::open(&path).expect("journal"))
            .route(
                Route::new(probe)
                    .retries(1)
                    .backoff(Duration::from_millis(400)),
            )
            .build()
            .expect("service");
        let server = TestServer::start(service, Transport::Plain).await;
        // v1 fails twice: a final failure.
        let failed = server.post(&hook(), &[], &payload("v1", "a")).await.json();
        assert_eq!(next(&mut runs).await.attempt, 1);
        assert_eq!(next(&mut runs).await.attempt, 2);
        // latest fails once; during its backoff a newer push of the same tag arrives:
        // the old one is superseded instead of retried, the new one runs.
        let old = server
            .post(&hook(), &[], &payload("latest", "old"))
            .await
            .json();
        assert_eq!(next(&mut runs).await.pusher, "old");
        // Its attempt has failed (v1's two and this one): it waits out its backoff now.
        let failed_three = "hubhook_handler_runs_total{handler=\"flaky\",outcome=\"failed\"} 3";
        let text = server.metrics_with(failed_three).await;
        assert!(text.contains(failed_three), "{text}");
        let new = server
            .post(&hook(), &[], &payload("latest", "new"))
            .await
            .json();
        let run = next(&mut runs).await;
        assert_eq!((run.pusher.as_str(), run.attempt), ("new", 1));
        server.stop().await;

        let history = History::open(&path).expect("history");
        let status = |id: &serde_json::Value| {
            let id = id.as_str().expect("id").parse().expect("delivery id");
            let (summary, _, attempts) = history.show(id).expect("show").expect("journaled");
            let attempts: Vec<(u32, String, bool)> = attempts
                .into_iter()
                .map(|a| (a.attempt, a.status.to_string(), a.final_))
                .collect();
            (summary.status.to_string(), attempts)
        };
        assert_eq!(
            status(&failed["delivery"]),
            (
                "failed".to_owned(),
                vec![(1, "failed".into(), false), (2, "failed".into(), true)]
            )
        );
        assert_eq!(
            status(&old["delivery"]),
            (
                "superseded".to_owned(),
                vec![(1, "failed".into(), false), (1, "superseded".into(), true)]
            )
        );
        let (new_status, _) = status(&new["delivery"]);
        assert_ne!(new_status, "superseded");
        let failures = history
            .list(&Filter::new().status(DeliveryStatus::Failed))
            .expect("list");
        assert!(
            failures.iter().any(|s| s.id.as_str() == failed["delivery"]),
            "{failures:?}"
        );
    }

    #[tokio::test]
    async fn every_journaled_delivery_runs_even_when_its_request_is_dropped() {
        let (_dir, path) = journal_path("dropped");
        let (recorder, mut ran) = Recorder::new("recorder");
        let service = HubhookService::builder()
            .api_key(KEY)
            .journal(Journal::open(&path).expect("journal"))
            .route(
                Route::new(recorder)
                    .coalesce(Coalesce::Off)
                    .max_concurrency(64),
            )
            .build()
            .expect("service");
        // Requests given from 0 to 400 µs: many are dropped while their delivery is
        // being committed.
        for i in 0..60u64 {
            let request = http::Request::post(format!("/hubhook?apikey={KEY}"))
                .body(http_body_util::Full::new(bytes::Bytes::from(payload(
                    "latest",
                    &format!("p{i}"),
                ))))
                .expect("request");
            let _ =
                tokio::time::timeout(Duration::from_micros(i * 7), service.respond(request)).await;
        }
        // A window, not a wait for an event: the commits of dropped requests land in the
        // background, and nothing outside the writer can tell when the last one has.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(service.shutdown(Duration::from_secs(5)).await);
        let history = History::open(&path).expect("history");
        let journaled = history.list(&Filter::new()).expect("list");
        let mut runs = 0;
        while ran.try_recv().is_ok() {
            runs += 1;
        }
        assert!(!journaled.is_empty());
        assert!(
            journaled.iter().all(|d| d.status == DeliveryStatus::Ok),
            "journaled and never started: {:?}",
            journaled
                .iter()
                .filter(|d| d.status != DeliveryStatus::Ok)
                .collect::<Vec<_>>()
        );
        assert_eq!(runs, journaled.len(), "one run per journaled delivery");
    }

    #[tokio::test]
    async fn a_delivery_no_handler_wants_is_journaled_finished() {
        let (_dir, path) = journal_path("unmatched");
        let (recorder, _ran) = Recorder::new("recorder");
        let service = HubhookService::builder()
            .api_key(KEY)
            .journal(Journal::open(&path).expect("journal"))
            .route(Route::new(recorder).tag("v*"))
            .build()
            .expect("service");
        let server = TestServer::start(service, Transport::Plain).await;
        let r = server.post(&hook(), &[], &payload("latest", "me")).await;
        assert_eq!(r.status, 202);
        server.stop().await;
        let history = History::open(&path).expect("history");
        let list = history.list(&Filter::new()).expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].status, DeliveryStatus::Unmatched);
        assert!(list[0].handlers.is_empty());
        let journal = Journal::open(&path).expect("reopen");
        assert!(journal.unfinished().await.expect("unfinished").is_empty());
    }

    #[tokio::test]
    async fn after_a_restart_only_the_newest_of_one_key_runs() {
        let (_dir, path) = journal_path("restart-latest");
        let gate = Arc::new(Semaphore::new(0));
        let (probe, mut runs) = Probe::new("deploy", Behave::Gate(gate));
        let server = journaled(&path, Route::new(probe), Duration::from_millis(100)).await;
        let old = server
            .post(&hook(), &[], &payload("latest", "old"))
            .await
            .json();
        assert_eq!(next(&mut runs).await.pusher, "old");
        let new = server
            .post(&hook(), &[], &payload("latest", "new"))
            .await
            .json();
        server.stop().await; // "old" is cancelled, "new" never started: both owed

        let (probe, mut runs) = Probe::new("deploy", Behave::FailUntil(0));
        let service = HubhookService::builder()
            .api_key(KEY)
            .journal(Journal::open(&path).expect("journal reopens"))
            .route(Route::new(probe))
            .build()
            .expect("service");
        assert_eq!(service.recover().await.expect("recover"), 1);
        let run = next(&mut runs).await;
        assert_eq!(run.delivery, new["delivery"].as_str().expect("id"));
        quiet(&mut runs, "the older one does not run after the restart").await;
        assert!(service.shutdown(Duration::from_secs(5)).await);
        let history = History::open(&path).expect("history");
        let id = old["delivery"].as_str().expect("id").parse().expect("id");
        let (summary, _, _) = history.show(id).expect("show").expect("journaled");
        assert_eq!(summary.status, DeliveryStatus::Superseded);
    }

    #[tokio::test]
    async fn shutdown_finishes_or_keeps_what_runs_and_keeps_what_waits() {
        let (_dir, path) = journal_path("shutdown");
        let gate = Arc::new(Semaphore::new(0));
        let (probe, mut runs) = Probe::new("deploy", Behave::Gate(gate.clone()));
        let route = Route::new(probe).max_concurrency(1);
        let server = journaled(&path, route, Duration::from_millis(300)).await;
        let running = server
            .post(&hook(), &[], &payload("v1", "running"))
            .await
            .json();
        assert_eq!(next(&mut runs).await.pusher, "running");
        let waiting = server
            .post(&hook(), &[], &payload("v2", "waiting"))
            .await
            .json();
        quiet(&mut runs, "max_concurrency = 1").await;
        // Shutdown: the running one gets the grace period, is cancelled; the waiting one
        // never starts. Both stay owed.
        tokio::time::timeout(Duration::from_secs(20), server.stop())
            .await
            .expect("shutdown ends after the grace period");
        quiet(&mut runs, "nothing starts during shutdown").await;

        let gate = Arc::new(Semaphore::new(10));
        let (probe, mut runs) = Probe::new("deploy", Behave::Gate(gate));
        let service = HubhookService::builder()
            .api_key(KEY)
            .journal(Journal::open(&path).expect("journal reopens"))
            .route(Route::new(probe).max_concurrency(1))
            .build()
            .expect("service");
        assert_eq!(service.recover().await.expect("recover"), 2);
        let again = [next(&mut runs).await, next(&mut runs).await];
        assert_eq!(
            again.map(|s| s.delivery),
            [
                running["delivery"].as_str().expect("id").to_owned(),
                waiting["delivery"].as_str().expect("id").to_owned()
            ],
            "both run after the restart, oldest first"
        );
        assert!(service.shutdown(Duration::from_secs(5)).await);
        let history = History::open(&path).expect("history");
        let list = history.list(&Filter::new()).expect("list");
        assert!(
            list.iter().all(|s| s.status == DeliveryStatus::Ok),
            "{list:?}"
        );
    }
}
