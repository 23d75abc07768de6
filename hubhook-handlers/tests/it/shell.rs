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
    // Set, and empty: no digest or registry is known for a Docker Hub push.
    for empty in ["HUBHOOK_DIGEST=", "HUBHOOK_REGISTRY="] {
        assert!(
            env.lines().any(|l| l == empty),
            "{empty} missing from:
{env}"
        );
    }
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
    let what = format!("{} is written", path.display());
    hubhook_testkit::eventually_async(Duration::from_secs(10), what, || async {
        let text = std::fs::read_to_string(path).ok()?;
        text.ends_with('\n').then_some(text)
    })
    .await
}

/// Posts the documented payload to a service whose only route runs `handler` with a
/// 500 ms timeout; the run goes on in the background. Returns the service.
async fn post_with_timeout(handler: ShellHandler) -> HubhookService {
    let service = HubhookService::builder()
        .allow_unauthenticated(true)
        .route(Route::new(handler).timeout(Duration::from_millis(500)))
        .build()
        .expect("service");
    let request = http::Request::post("/hubhook")
        .body(Full::new(Bytes::from(
            hubhook_core::message::EXAMPLE_PAYLOAD,
        )))
        .expect("request");
    assert_eq!(service.respond(request).await.status(), 202);
    service
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let out = TempDir::new("timeout");
    // The script starts a grandchild that would live for five minutes, then waits.
    let handler = sh(
        r#"sleep 300 & echo $! > "$OUT/grandchild"; echo $$ > "$OUT/child"; wait"#,
        &out,
    );
    let service = post_with_timeout(handler).await;

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
    hubhook_testkit::eventually_async(
        Duration::from_secs(10),
        "the timeout kills the child and the grandchild",
        || async { (!alive(grandchild) && !alive(child)).then_some(()) },
    )
    .await;
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

/// The pipe behind descriptor `fd` of `pid`, as `/proc` names it (`pipe:[1234]`).
fn pipe_of(pid: i32, fd: i32) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let link = link.to_string_lossy().into_owned();
    link.starts_with("pipe:").then_some(link)
}

/// Which of `pipes` this process still has a descriptor for. Other tests running at the
/// same time open and close descriptors of their own, so a bare count of `/proc/self/fd`
/// would be flaky; these pipes are the ones the run made, and no other test has them.
fn held_by_us(pipes: &[String]) -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .map(|link| link.to_string_lossy().into_owned())
        .filter(|link| pipes.contains(link))
        .collect()
}

/// Kills the process groups a test left running, also when an assertion fails.
struct Groups(Vec<i32>);

impl Drop for Groups {
    fn drop(&mut self) {
        for pgid in &self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
        }
    }
}

#[tokio::test]
async fn a_daemon_holding_the_pipes_neither_holds_the_run_nor_leaks_them() {
    let out = TempDir::new("daemon");
    // The background child keeps stdout, stderr and (past the /dev/null an asynchronous
    // list gets) stdin for 30 s, and never reads. The payload is bigger than a pipe holds,
    // so the stdin writer stays blocked for as long as the daemon lives. The daemon writes
    // its pid once its descriptors are in place, then becomes `sleep`.
    let handler = sh(
        r#"exec 3<&0
        sh -c 'echo $$ > "$OUT/daemon"; exec sleep 30' <&3 3<&- &
        echo $$ > "$OUT/group"; echo started"#,
        &out,
    );
    let pusher = "x".repeat(256 * 1024);
    let mut groups = Groups(Vec::new());
    for run in 0..3 {
        let _ = std::fs::remove_file(out.path().join("daemon"));
        let started = std::time::Instant::now();
        let outcome = handler
            .handle(
                &message("acme/site", "v2", &pusher),
                &Context::new(DeliveryId::generate()),
            )
            .await
            .expect("exit 0 is success");
        let took = started.elapsed();
        groups.0.push(
            wait_for_file(&out.path().join("group"))
                .await
                .trim()
                .parse()
                .expect("pgid"),
        );
        let daemon: i32 = wait_for_file(&out.path().join("daemon"))
            .await
            .trim()
            .parse()
            .expect("pid");
        assert_eq!(outcome.summary, "exit status 0; output: started");
        assert!(
            took < Duration::from_secs(3),
            "run {run} took {took:?}: the daemon held it"
        );
        assert!(alive(daemon), "the daemon outlives the run");
        let pipes: Vec<String> = (0..3).filter_map(|fd| pipe_of(daemon, fd)).collect();
        assert_eq!(
            pipes.len(),
            3,
            "the daemon holds all three pipes: {pipes:?}"
        );
        assert_eq!(
            held_by_us(&pipes),
            Vec::<String>::new(),
            "run {run}: the readers and the stdin writer closed their ends of the pipes"
        );
    }
}

#[tokio::test]
async fn a_timeout_kills_what_survives_sigterm_after_the_program_left() {
    let out = TempDir::new("survivor");
    // The program leaves on SIGTERM; the grandchild ignores it, so only the SIGKILL the
    // group gets once the program has exited (and before it is reaped) stops it.
    let handler = sh(
        r#"trap 'exit 0' TERM
        sh -c 'trap "" TERM; echo $$ > "$OUT/grandchild"; exec sleep 300' &
        echo $$ > "$OUT/child"; wait"#,
        &out,
    );
    let service = post_with_timeout(handler).await;

    let child: i32 = wait_for_file(&out.path().join("child"))
        .await
        .trim()
        .parse()
        .expect("pid");
    let _groups = Groups(vec![child]);
    let grandchild: i32 = wait_for_file(&out.path().join("grandchild"))
        .await
        .trim()
        .parse()
        .expect("pid");
    hubhook_testkit::eventually_async(
        Duration::from_secs(10),
        "the grandchild that ignored SIGTERM is killed",
        || async { (!alive(grandchild) && !alive(child)).then_some(()) },
    )
    .await;
    assert!(service.shutdown(Duration::from_secs(5)).await);
}
