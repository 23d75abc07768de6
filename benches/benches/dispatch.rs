//! Criterion benches of decode, route matching and the whole in-process request path
//! (`HubhookService::respond`) on Docker Hub's documented example payload.
//!
//! Run: `cargo bench -p hubhook-benches --bench dispatch` (about 25 s; see docs/BENCHMARKS.md).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hubhook_core::message::EXAMPLE_PAYLOAD;
use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome};
use hubhook_core::{HubhookService, Pattern, Route};

const API_KEY: &str = "benchkey-0123456789abcdefghijklm";
const HOOK_URI: &str = "/hubhook?apikey=benchkey-0123456789abcdefghijklm";

/// A handler that returns `Ok` at once; it only counts its runs, so the set-up can check
/// that runs finish instead of piling up.
struct Noop(Arc<AtomicU64>);

#[async_trait]
impl Handler for Noop {
    fn name(&self) -> &str {
        "noop"
    }

    async fn handle(&self, _msg: &HubMessage, _ctx: &Context) -> Result<Outcome, HandlerError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(Outcome::default())
    }
}

fn example() -> HubMessage {
    HubMessage::from_json(EXAMPLE_PAYLOAD.as_bytes()).expect("the example payload decodes")
}

fn decode(c: &mut Criterion) {
    let body = EXAMPLE_PAYLOAD.as_bytes();
    let mut group = c.benchmark_group("decode");
    group.bench_function("from_json/example", |b| {
        b.iter(|| HubMessage::from_json(black_box(body)))
    });
    group.finish();
}

fn matching(c: &mut Criterion) {
    let msg = example();
    let runs = Arc::new(AtomicU64::new(0));
    // A typical route: one namespace's repositories, one tag.
    let hit = Route::new(Noop(runs.clone()))
        .repo("svendowideit/*")
        .tag("latest");
    let miss = Route::new(Noop(runs)).repo("acme/*").tag("v*");
    assert!(hit.matches(&msg) && !miss.matches(&msg));
    let glob = Pattern::new("svendowideit/*");

    let mut group = c.benchmark_group("match");
    group.bench_function("route/hit", |b| b.iter(|| black_box(&hit).matches(&msg)));
    group.bench_function("route/miss", |b| b.iter(|| black_box(&miss).matches(&msg)));
    group.bench_function("pattern/glob", |b| {
        b.iter(|| black_box(&glob).matches(black_box("svendowideit/testhook")))
    });
    group.finish();
}

fn request() -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(HOOK_URI)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, EXAMPLE_PAYLOAD.len())
        .body(Full::new(Bytes::from_static(EXAMPLE_PAYLOAD.as_bytes())))
        .expect("a valid request")
}

/// One request through the service, then one yield so the spawned handler run executes
/// on this current-thread runtime (without it, runs would only queue up).
async fn respond_and_run(service: &HubhookService, req: Request<Full<Bytes>>) -> StatusCode {
    let status = service.respond(req).await.status();
    tokio::task::yield_now().await;
    status
}

fn request_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let runs = Arc::new(AtomicU64::new(0));
    let service = HubhookService::builder()
        .path("/hubhook")
        .api_key(API_KEY)
        .max_pending(1_000_000)
        .route(
            Route::new(Noop(runs.clone()))
                .repo("svendowideit/*")
                .tag("latest"),
        )
        .build()
        .expect("a valid service");
    assert!(HOOK_URI.ends_with(API_KEY));

    // Check once that this measures accepted webhooks and that handler runs complete.
    for _ in 0..1000 {
        let status = rt.block_on(respond_and_run(&service, request()));
        assert_eq!(status, StatusCode::ACCEPTED, "the service must answer 202");
    }
    assert_eq!(
        runs.load(Ordering::Relaxed),
        1000,
        "every handler run must have finished"
    );

    let mut group = c.benchmark_group("request");
    group.bench_function("respond/example_202", |b| {
        b.iter_batched(
            request,
            |req| rt.block_on(respond_and_run(&service, req)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

// What `criterion_group!` + `criterion_main!` expand to, written out: the macro's
// `pub fn benches` would trip the workspace's `missing_docs` lint.
fn main() {
    let mut c = config().configure_from_args();
    decode(&mut c);
    matching(&mut c);
    request_path(&mut c);
    c.final_summary();
}
