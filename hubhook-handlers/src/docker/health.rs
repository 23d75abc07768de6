//! The health gate: a new container must run, and pass its check, before the old one goes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hubhook_core::client::{self, Client};
use hubhook_core::Context;
use tokio::task::JoinSet;

use super::cli::Docker;
use super::Health;

/// How often the gate looks at the container, and starts another HTTP probe.
const TICK: Duration = Duration::from_millis(50);
/// Probes in flight at once: a probe docker's port proxy accepted and cannot forward yet
/// never answers, so later probes do not wait for it.
const MAX_PROBES: usize = 8;
/// How long one probe waits to connect, and then for the status line.
const CONNECT: Duration = Duration::from_secs(1);
const ANSWER: Duration = Duration::from_secs(5);

/// Waits until the container `id` passes `health`, for at most `timeout`. `Err` says why
/// it did not (it exited, it is unhealthy, the time ran out, the run was cancelled).
pub(super) async fn gate(
    docker: &Docker,
    id: &str,
    health: &Health,
    timeout: Duration,
    ctx: &Context,
) -> Result<(), String> {
    // A configured timeout too large to add is as good as none.
    let deadline = Instant::now()
        .checked_add(timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
    // Without a check, the one test is that the container did not exit at once.
    let settle = Instant::now() + Duration::from_millis(500);
    let mut probes = JoinSet::new();
    loop {
        let state = docker
            .run(&[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}}",
                id,
            ])
            .await
            .map_err(|e| format!("cannot inspect the new container: {e}"))?;
        let mut parts = state.split_whitespace();
        let (status, code, check) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("-"),
        );
        if status != "running" {
            return Err(format!(
                "health gate failed: the container is {status} (exit code {code})"
            ));
        }
        let passed = match health {
            Health::None => Instant::now() >= settle,
            Health::Docker => match check {
                "healthy" => true,
                "unhealthy" => {
                    return Err("health gate failed: docker reports the container unhealthy".into())
                }
                "-" => return Err("health gate failed: the image has no HEALTHCHECK".into()),
                _ => false,
            },
            Health::Http(url) => {
                let mut passed = false;
                while let Some(done) = probes.try_join_next() {
                    passed |= done.unwrap_or(false);
                }
                if !passed && probes.len() < MAX_PROBES {
                    probes.spawn(http_ok(url.clone()));
                }
                passed
            }
        };
        if passed {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "health gate failed: not healthy within {timeout:?}{}",
                match health {
                    Health::Http(url) => format!(" ({url} did not answer 2xx)"),
                    _ => String::new(),
                }
            ));
        }
        tokio::select! {
            // A probe that answers ends the wait at once.
            Some(Ok(true)) = probes.join_next(), if !probes.is_empty() => return Ok(()),
            () = tokio::time::sleep(TICK) => {}
            () = ctx.cancelled() => return Err("cancelled during the health gate".into()),
        }
    }
}

/// Whether a GET of `url` answers 2xx: connecting and the answer are bounded apart.
async fn http_ok(url: String) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Ok(authority) = authority.parse::<http::uri::Authority>() else {
        return false;
    };
    // `http://host/` means port 80.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let Ok(request) = http::Request::get(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::USER_AGENT, client::USER_AGENT)
        .body(Full::new(Bytes::new()))
    else {
        return false;
    };
    let client = Client::new().connect_timeout(CONNECT);
    let probe = client.send(host, port, false, request);
    matches!(
        tokio::time::timeout(CONNECT + ANSWER, probe).await,
        Ok(Ok(answer)) if answer.status().is_success()
    )
}
