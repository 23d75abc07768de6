//! Run with `cargo bench -p hubhook-benches --bench plugin` (builds the test plugin first).
//!
//! One plugin call against one static handler call: the same no-op work behind the C ABI
//! (JSON encoding of the delivery, a blocking-pool hop, the plugin's JSON decoding and its
//! own runtime) and as an ordinary in-process `Handler`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criterion::Criterion;
use hubhook_core::message::EXAMPLE_PAYLOAD;
use hubhook_core::plugin::PluginHandler;
use hubhook_core::{async_trait, Context, DeliveryId, Handler, HandlerError, HubMessage, Outcome};

/// The in-process twin of the test plugin in "ok" mode: formats the same summary.
struct Static;

#[async_trait]
impl Handler for Static {
    fn name(&self) -> &str {
        "static"
    }

    async fn handle(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        Ok(Outcome::new(format!(
            "misbehave saw {} (delivery {}, attempt {})",
            msg.image(),
            ctx.delivery(),
            ctx.attempt()
        )))
    }
}

fn build_plugin(root: &Path) -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(root.join("hubhook-server/tests/plugins/misbehave/Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("target/plugins"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the test plugin failed");
    root.join("target/plugins/release/libhubhook_misbehave.so")
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let library = build_plugin(&root);
    let plugin =
        PluginHandler::load(&library, &serde_json::json!({"mode": "ok"})).expect("load plugin");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let msg = HubMessage::from_json(EXAMPLE_PAYLOAD.as_bytes()).expect("example");
    let ctx = Context::new(DeliveryId::generate());
    // Both give the same answer, so both do the same work.
    let a = runtime
        .block_on(plugin.handle(&msg, &ctx))
        .expect("plugin call");
    let b = runtime
        .block_on(Static.handle(&msg, &ctx))
        .expect("static call");
    assert_eq!(a.summary, b.summary);

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    let mut group = c.benchmark_group("handler_call");
    group.bench_function("static", |bench| {
        bench.iter(|| runtime.block_on(Static.handle(&msg, &ctx)))
    });
    group.bench_function("plugin", |bench| {
        bench.iter(|| runtime.block_on(plugin.handle(&msg, &ctx)))
    });
    group.finish();
    c.final_summary();
}
