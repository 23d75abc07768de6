//! Service mode: a Swarm service moved to the pushed image, resolved to its digest first.

use std::time::Instant;

use hubhook_core::{Context, HandlerError, Outcome};

use super::cli::{Docker, Failure};

/// `docker service update --image IMAGE@DIGEST SERVICE` (`tagged` names it in the
/// outcome), with Swarm's own rollback on a failed update. `reference` is already resolved to a digest, so a missing tag never
/// reaches the service (Swarm would stop the running task before it found out).
pub(super) async fn update(
    docker: &Docker,
    tagged: &str,
    reference: &str,
    ctx: &Context,
    service: &str,
) -> Result<Outcome, HandlerError> {
    let started = Instant::now();
    let update = docker
        .run_cancellable(
            &[
                "service",
                "update",
                "--detach=false",
                "--quiet",
                "--with-registry-auth",
                "--update-failure-action",
                "rollback",
                "--image",
                reference,
                service,
            ],
            ctx,
        )
        .await;
    // A hung or cancelled update ends here, without waiting on the daemon again.
    match update {
        Err(Failure::Timeout(_, limit)) => return Err(HandlerError::Timeout(limit)),
        Err(Failure::Cancelled) => return Err(HandlerError::Cancelled),
        _ => {}
    }
    let state = docker
        .run(&[
            "service",
            "inspect",
            "--format",
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}: {{.UpdateStatus.Message}}{{else}}none{{end}}",
            service,
        ])
        .await
        .unwrap_or_default();
    let state = state.trim();
    if let Err(e) = update {
        return Err(HandlerError::Failed(format!(
            "service update of {service} to {tagged} ({reference}) failed ({state}): {e}"
        )));
    }
    if state.starts_with("rollback") || state.starts_with("paused") {
        return Err(HandlerError::Failed(format!(
            "service {service} did not take {tagged} ({reference}); Swarm reports {state}"
        )));
    }
    Ok(Outcome::new(format!(
        "service {service} runs {tagged} as {reference} ({} ms)",
        started.elapsed().as_millis()
    )))
}
