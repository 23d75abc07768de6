//! Shared helpers: messages, and a run shut down half-way.

use std::time::Duration;

use hubhook_core::{Context, DeliveryId, Handler, HandlerError, HubMessage, Outcome};

/// A decoded Docker Hub message for `repo:tag` pushed by `pusher`.
pub fn message(repo: &str, tag: &str, pusher: &str) -> HubMessage {
    let body = serde_json::json!({
        "push_data": {"tag": tag, "pusher": pusher, "pushed_at": 1417566161},
        "repository": {"repo_name": repo}
    });
    HubMessage::from_json(body.to_string().as_bytes()).expect("valid message")
}

/// Runs `handler` on `msg` and shuts it down (cancels its context, as a server's
/// shutdown does) once `in_gate` says its new version is in the health gate (up to 60 s);
/// the run's result. Call from a multi-thread runtime: the wait blocks its thread.
pub async fn shut_down_in_the_gate<H>(
    handler: &H,
    msg: HubMessage,
    in_gate: impl FnMut() -> Option<()>,
) -> Result<Outcome, HandlerError>
where
    H: Handler + Clone + 'static,
{
    let cancel = tokio_util::sync::CancellationToken::new();
    let ctx = Context::new(DeliveryId::generate()).with_cancellation(cancel.clone());
    let run = tokio::spawn({
        let handler = handler.clone();
        async move { handler.handle(&msg, &ctx).await }
    });
    hubhook_testkit::eventually(
        Duration::from_secs(60),
        "the new version in its gate",
        in_gate,
    );
    cancel.cancel();
    run.await.expect("the run ends")
}
