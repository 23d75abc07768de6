//! The shell handler with real child processes.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hubhook_core::{Context, DeliveryId, Handler, HandlerError, HubhookService, Route};
use hubhook_handlers::ShellHandler;

use crate::support::*;
use hubhook_testkit::TempDir;

fn sh(script: &str, out: &TempDir) -> ShellHandler {
    ShellHandler::new("shell", ["sh", "-c", script])
        .expect("command")
        .env("OUT", out.str())
}

#[tokio::test]
async fn the_payload_arrives_as_environment_and_stdin() {
    let out = TempDir::new("env");
    let handler = sh(
        r#"env | grep '^HUBHOOK_' | sort > "$OUT/env"; cat > "$OUT/stdin"; pwd > "$OUT/pwd""#,
        &out,
    )
    .workdir("/tmp");
    let msg = message("acme/site", "v2", "alice");
    let ctx = Context::new(DeliveryId::generate()).with_attempt(2);
    let outcome = handler.handle(&msg, &ctx).await.expect("exit 0 is success");
    assert!(
        outcome.summary.starts_with("exit status 0"),
        "{}",
        outcome.summary
    );

    let env = std::fs::read_to_string(out.path().join("env")).expect("env file");
    for want in [
        "HUBHOOK_REPO=acme/site".to_owned(),
        "HUBHOOK_TAG=v2".to_owned(),
        "HUBHOOK_IMAGE=acme/site:v2".to_owned(),
        "HUBHOOK_PUSHER=alice".to_owned(),
        "HUBHOOK_PUSHED_AT=1417566161".to_owned(),
        format!("HUBHOOK_DELIVERY={}", ctx.delivery()),
        "HUBHOOK_ATTEMPT=2".to_owned(),
        "HUBHOOK_SOURCE=dockerhub".to_owned(),
    ] {
        assert!(
            env.lines().any(|l| l == want),
            "{want} missing from:\n{env}"
        );
    }
    assert!(
        !env.contains("HUBHOOK_DIGEST"),
        "no digest is known for a Docker Hub push"
    );
    let stdin: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("stdin")).expect("stdin file"),
    )
    .expect("stdin is JSON");
    assert_eq!(stdin["repository"]["repo_name"], "acme/site");
    assert_eq!(stdin["push_data"]["tag"], "v2");
    assert_eq!(stdin["source"], "dockerhub");
    assert_eq!(
        std::fs::read_to_string(out.path().join("pwd"))
            .expect("pwd")
            .trim(),
        "/tmp"
    );
}

#[tokio::test]
async fn a_non_zero_exit_is_a_failure_with_the_output_tail() {
    let out = TempDir::new("exit");
    let handler = sh(
        "echo preparing; echo 'pull failed: manifest unknown' >&2; exit 3",
        &out,
    );
    let err = handler
        .handle(
            &message("acme/site", "v2", "alice"),
            &Context::new(DeliveryId::generate()),
        )
        .await
        .expect_err("exit 3 is a failure");
    let text = err.to_string();
    assert!(matches!(err, HandlerError::Failed(_)), "{err:?}");
    assert!(text.starts_with("exit status 3; output: "), "{text}");
    assert!(
        text.contains("preparing") && text.contains("pull failed: manifest unknown"),
        "{text}"
    );

    let noisy = sh(
        "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done; exit 1",
        &out,
    )
    .output_tail(64);
    let text = noisy
        .handle(
            &message("acme/site", "v2", "alice"),
            &Context::new(DeliveryId::generate()),
        )
        .await
        .expect_err("exit 1")
        .to_string();
    assert!(
        text.contains("...") && text.ends_with("line 1999"),
        "only the tail is kept: {text}"
    );
    assert!(text.len() < 200, "{text}");
}

#[tokio::test]
async fn a_missing_program_is_a_clear_failure() {
    let handler = ShellHandler::new("shell", ["/nonexistent/deploy.sh"]).expect("command");
    let err = handler
        .handle(
            &message("acme/site", "v2", "alice"),
            &Context::new(DeliveryId::generate()),
        )
        .await
        .expect_err("cannot start");
    assert!(
        err.to_string()
            .starts_with("cannot start \"/nonexistent/deploy.sh\": "),
        "{err}"
    );
}

fn alive(pid: i32) -> bool {
    // A killed process whose parent is gone may linger as a zombie until reaped; that is dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

async fn wait_for_file(path: &std::path::Path) -> String {
    for _ in 0..500 {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let out = TempDir::new("timeout");
    // The script starts a grandchild that would live for five minutes, then waits.
    let handler = sh(
        r#"sleep 300 & echo $! > "$OUT/grandchild"; echo $$ > "$OUT/child"; wait"#,
        &out,
    );
    let service = HubhookService::builder()
        .allow_unauthenticated(true)
        .route(Route::new(handler).timeout(Duration::from_millis(500)))
        .build()
        .expect("service");
    let request = http::Request::post("/hubhook")
        .body(Full::new(Bytes::from(hubhook_core::EXAMPLE_PAYLOAD)))
        .expect("request");
    assert_eq!(service.respond(request).await.status(), 202);

    let grandchild: i32 = wait_for_file(&out.path().join("grandchild"))
        .await
        .trim()
        .parse()
        .expect("pid");
    let child: i32 = wait_for_file(&out.path().join("child"))
        .await
        .trim()
        .parse()
        .expect("pid");
    assert!(
        alive(grandchild) && alive(child),
        "both run before the timeout"
    );
    let mut gone = false;
    for _ in 0..500 {
        if !alive(grandchild) && !alive(child) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "the timeout killed the child and the grandchild");
    assert!(service.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn payload_text_is_never_run() {
    let out = TempDir::new("inject");
    let marker = out.path().join("pwned");
    // The pusher is free text in the payload; the script uses it the way scripts do.
    let handler = sh(
        r#"echo "deploying for $HUBHOOK_PUSHER" > "$OUT/said""#,
        &out,
    );
    let pusher = format!(
        "$(touch {}) `touch {}`; touch {}",
        marker.display(),
        marker.display(),
        marker.display()
    );
    handler
        .handle(
            &message("acme/site", "v2", &pusher),
            &Context::new(DeliveryId::generate()),
        )
        .await
        .expect("runs");
    assert!(!marker.exists(), "no payload text was executed");
    let said = std::fs::read_to_string(out.path().join("said")).expect("said");
    assert_eq!(said.trim(), format!("deploying for {pusher}"));
}
