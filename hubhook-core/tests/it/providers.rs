//! Registry notifications, GitHub package events and generic JSON, over real sockets.

use hmac::{Hmac, Mac};
use hubhook_core::{Generic, Hook, HubhookService, Provider};
use serde_json::json;
use sha2::Sha256;

use crate::support::*;

const DIGEST: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";
const REGISTRY_TYPE: &str = "Content-Type: application/vnd.docker.distribution.events.v1+json";

fn event(id: &str, action: &str, media: &str, tag: Option<&str>) -> serde_json::Value {
    let mut target = json!({
        "mediaType": media, "size": 527, "digest": DIGEST, "length": 527,
        "repository": "team/site",
        "url": format!("http://127.0.0.1:5000/v2/team/site/manifests/{DIGEST}"),
    });
    if let Some(tag) = tag {
        target["tag"] = json!(tag);
    }
    json!({
        "id": id, "timestamp": "2026-11-26T06:00:00Z", "action": action, "target": target,
        "request": {"id": "r1", "addr": "127.0.0.1:40000", "host": "127.0.0.1:5000",
                    "method": "PUT", "useragent": "docker/28.2.2"},
        "actor": {}, "source": {"addr": "registry:5000", "instanceID": "x"}
    })
}

const MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn envelope(events: Vec<serde_json::Value>) -> Vec<u8> {
    json!({ "events": events }).to_string().into_bytes()
}

async fn registry_server() -> (
    TestServer,
    tokio::sync::mpsc::UnboundedReceiver<(hubhook_core::HubMessage, String)>,
) {
    registry_server_from(HubhookService::builder()).await
}

/// `builder` with a registry hook (host 127.0.0.1:5000) and a recording handler.
async fn registry_server_from(
    builder: hubhook_core::HubhookServiceBuilder,
) -> (
    TestServer,
    tokio::sync::mpsc::UnboundedReceiver<(hubhook_core::HubMessage, String)>,
) {
    let (recorder, rx) = Recorder::new("recorder");
    let service = builder
        .hook(
            Hook::new("/registry", Provider::Registry)
                .api_key(KEY)
                .registry("127.0.0.1:5000"),
        )
        .handler(recorder)
        .build()
        .expect("service");
    (TestServer::start(service, Transport::Plain).await, rx)
}

#[tokio::test]
async fn registry_envelopes_act_on_tagged_manifest_pushes_only() {
    let (server, mut rx) = registry_server().await;
    let auth = format!("Authorization: Bearer {KEY}");
    let post = |body: Vec<u8>, kind: &'static str| {
        let auth = auth.clone();
        let server = &server;
        async move { server.post("/registry", &[&auth, kind], &body).await }
    };

    // Several events in one envelope: two tagged manifest pushes and a blob push.
    let r = post(
        envelope(vec![
            event("e1", "push", MANIFEST, Some("v2")),
            event(
                "e2",
                "push",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                None,
            ),
            event(
                "e3",
                "push",
                "application/vnd.oci.image.manifest.v1+json",
                Some("latest"),
            ),
        ]),
        REGISTRY_TYPE,
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["deliveries"].as_array().map(Vec::len), Some(2));
    let (first, _) = next(&mut rx).await;
    let (second, _) = next(&mut rx).await;
    let mut tags = vec![first.tag().to_string(), second.tag().to_string()];
    tags.sort();
    assert_eq!(tags, ["latest", "v2"]);
    assert_eq!(
        first.registry(),
        Some("127.0.0.1:5000"),
        "image = the hook's registry + repository"
    );
    assert_eq!(first.repo(), "team/site");
    assert_eq!(first.digest().map(|d| d.as_str()), Some(DIGEST));
    assert_eq!(first.image(), format!("127.0.0.1:5000/team/site@{DIGEST}"));
    assert_eq!(first.source(), "registry");

    // Blob-only, pull, unknown action, missing tag: answered 2xx, nothing runs.
    for (events, why) in [
        (
            vec![event("b1", "push", "application/octet-stream", None)],
            "blob push",
        ),
        (
            vec![event("p1", "pull", MANIFEST, Some("v2"))],
            "pull event",
        ),
        (
            vec![event("m1", "mount", "application/octet-stream", None)],
            "mount event",
        ),
        (
            vec![event("d1", "delete", MANIFEST, Some("v2"))],
            "delete event",
        ),
        (
            vec![event("u1", "teleport", MANIFEST, Some("v2"))],
            "teleport event",
        ),
        (
            vec![event("t1", "push", MANIFEST, None)],
            "manifest push without a tag",
        ),
    ] {
        let r = post(envelope(events), REGISTRY_TYPE).await;
        assert_eq!(r.status, 200, "{why}: {r:?}");
        assert!(
            r.json()["ignored"].as_str().unwrap_or("").contains(why),
            "{why}: {r:?}"
        );
    }

    // The same event id twice acts once.
    let twice = || envelope(vec![event("dup-1", "push", MANIFEST, Some("v3"))]);
    assert_eq!(
        post(twice(), "Content-Type: application/json").await.status,
        202
    );
    assert_eq!(next(&mut rx).await.0.tag(), "v3");
    let again = post(
        twice(),
        "Content-Type: application/vnd.docker.distribution.events.v2+json",
    )
    .await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json()["ignored"], "every event was handled already");

    // Wrong content type, no key, not an envelope, a hostile tag.
    let r = post(twice(), "Content-Type: text/plain").await;
    assert_eq!(r.status, 415);
    let r = server.post("/registry", &[REGISTRY_TYPE], &twice()).await;
    assert_eq!(r.status, 401);
    let r = post(b"{\"something\":1}".to_vec(), REGISTRY_TYPE).await;
    assert_eq!(r.status, 400);
    let r = post(
        envelope(vec![event("x1", "push", MANIFEST, Some("--privileged"))]),
        REGISTRY_TYPE,
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    server.stop().await;
    assert!(rx.try_recv().is_err(), "nothing else ran");
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

#[tokio::test]
async fn github_package_events_need_a_valid_signature() {
    const SECRET: &str = "github-webhook-secret";
    let (recorder, mut rx) = Recorder::new("recorder");
    let service = HubhookService::builder()
        .hook(Hook::new(
            "/github",
            Provider::GitHub {
                secret: SECRET.into(),
            },
        ))
        .handler(recorder)
        .build()
        .expect("service");
    let server = TestServer::start(service, Transport::Plain).await;
    let body = json!({
        "action": "published",
        "registry_package": {
            "name": "Site", "package_type": "CONTAINER", "owner": {"login": "Acme"},
            "package_version": {"version": DIGEST, "container_metadata": {"tag": {"name": "v2", "digest": DIGEST}}},
            "registry": {"url": "https://ghcr.io", "vendor": "GitHub Inc"}
        },
        "sender": {"login": "alice"}
    })
    .to_string()
    .into_bytes();
    let event = "X-GitHub-Event: registry_package";
    let good = format!("X-Hub-Signature-256: {}", sign(SECRET, &body));

    let r = server
        .post(
            "/github",
            &[event, &good, "Content-Type: application/json"],
            &body,
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let (msg, _) = next(&mut rx).await;
    assert_eq!(msg.image(), format!("ghcr.io/acme/site@{DIGEST}"));
    assert_eq!(msg.tag(), "v2");
    assert_eq!(msg.pusher(), Some("alice"));

    let mut changed = body.clone();
    let last = changed.len() - 2;
    changed[last] ^= 1;
    let wrong_prefix = good.replace("sha256=", "sha1=");
    let wrong = format!("X-Hub-Signature-256: {}", sign("another secret", &body));
    for (headers, payload, why) in [
        (vec![event, wrong.as_str()], &body, "wrong secret"),
        (vec![event], &body, "missing signature"),
        (
            vec![event, wrong_prefix.as_str()],
            &body,
            "wrong algorithm prefix",
        ),
        (
            vec![event, good.as_str()],
            &changed,
            "body changed by one byte",
        ),
    ] {
        let r = server.post("/github", &headers, payload).await;
        assert_eq!(r.status, 401, "{why}: {r:?}");
        assert_eq!(r.json()["error"], "unauthorized");
    }
    // A ping, properly signed, is answered and ignored.
    let ping = b"{\"zen\":\"Keep it logically awesome.\"}";
    let signed = format!("X-Hub-Signature-256: {}", sign(SECRET, ping));
    let r = server
        .post("/github", &["X-GitHub-Event: ping", &signed], ping)
        .await;
    assert_eq!(r.status, 200);
    server.stop().await;
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn generic_json_by_pointers_with_an_optional_signature() {
    let (recorder, mut rx) = Recorder::new("recorder");
    let service = HubhookService::builder()
        .hook(
            Hook::new(
                "/ci",
                Provider::Generic(
                    Generic::new("/image/name", "/image/tag").digest("/image/digest"),
                ),
            )
            .api_key(KEY),
        )
        .hook(Hook::new(
            "/signed",
            Provider::Generic(Generic::new("/repo", "/tag").signed("X-Signature", "s3cret")),
        ))
        .handler(recorder)
        .build()
        .expect("service");
    let server = TestServer::start(service, Transport::Plain).await;
    let body = json!({"image": {"name": "registry.example.com:5000/team/api", "tag": "1.4.2", "digest": DIGEST}});
    let r = server
        .post(
            &format!("/ci?apikey={KEY}"),
            &[],
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let (msg, _) = next(&mut rx).await;
    assert_eq!(msg.registry(), Some("registry.example.com:5000"));
    assert_eq!(msg.repo(), "team/api");
    assert_eq!(msg.tag(), "1.4.2");
    assert_eq!(msg.source(), "generic");
    let r = server
        .post(
            &format!("/ci?apikey={KEY}"),
            &[],
            b"{\"image\":{\"name\":\"a/b\"}}",
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap_or("")
        .contains("no tag at /image/tag"));

    let signed = br#"{"repo":"team/api","tag":"v1"}"#;
    let signature = sign("s3cret", signed);
    let r = server
        .post(
            "/signed",
            &[&format!("X-Signature: {}", &signature["sha256=".len()..])],
            signed,
        )
        .await;
    assert_eq!(
        r.status, 202,
        "bare hex is accepted for generic hooks: {r:?}"
    );
    next(&mut rx).await;
    let r = server.post("/signed", &[], signed).await;
    assert_eq!(r.status, 401);
    server.stop().await;
}

#[test]
fn hooks_need_distinct_paths_and_some_authentication() {
    let e = HubhookService::builder()
        .hook(Hook::new("/r", Provider::Registry))
        .build()
        .expect_err("no key");
    assert!(
        e.is_config() && e.to_string().starts_with("no API key"),
        "{e}"
    );
    assert!(
        HubhookService::builder()
            .hook(Hook::new("/g", Provider::GitHub { secret: "x".into() }))
            .build()
            .is_ok(),
        "a signed provider needs no key"
    );
    let e = HubhookService::builder()
        .hook(Hook::new("/r", Provider::Registry).api_key(KEY))
        .hook(Hook::new("/r", Provider::Registry).api_key(KEY))
        .build()
        .expect_err("one path, two hooks");
    assert!(e.is_config(), "{e}");
    assert_eq!(
        e.to_string(),
        "invalid hook path \"/r\": two hooks have this path"
    );
    // Only [[hook]]s: no Docker Hub hook at /hubhook.
    let service = HubhookService::builder()
        .hook(Hook::new("/r", Provider::Registry).api_key(KEY))
        .build()
        .expect("service");
    assert_eq!(service.hooks(), [("/r".to_owned(), "registry")]);
}

/// Envelopes through a journaled service: one commit per request, one run per event id.
#[cfg(feature = "journal")]
mod journaled {
    use std::time::{Duration, Instant};

    use hubhook_core::journal::Journal;

    use super::*;

    async fn journaled_registry(
        name: &str,
    ) -> (
        TestServer,
        tokio::sync::mpsc::UnboundedReceiver<(hubhook_core::HubMessage, String)>,
        hubhook_testkit::TempDir,
    ) {
        let dir = hubhook_testkit::TempDir::new(&format!("envelope-{name}"));
        let (recorder, rx) = Recorder::new("recorder");
        let service = HubhookService::builder()
            .hook(Hook::new("/registry", Provider::Registry).api_key(KEY))
            .journal(Journal::open(dir.path().join("journal.sqlite")).expect("journal"))
            .max_pending(4096)
            .handler(recorder)
            .build()
            .expect("service");
        (TestServer::start(service, Transport::Plain).await, rx, dir)
    }

    /// A value from the `/metrics` text, 0 when absent.
    fn metric(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    #[tokio::test]
    async fn an_envelope_of_a_thousand_events_is_one_commit() {
        let (server, mut rx, _dir) = journaled_registry("thousand").await;
        let events = (0..1000)
            .map(|i| event(&format!("e{i}"), "push", MANIFEST, Some(&format!("v{i}"))))
            .collect();
        let auth = format!("Authorization: Bearer {KEY}");
        let started = Instant::now();
        let r = server
            .post("/registry", &[&auth, REGISTRY_TYPE], &envelope(events))
            .await;
        let took = started.elapsed();
        assert_eq!(r.status, 202, "{}", r.body);
        let ids = r.json()["deliveries"].as_array().map_or(0, Vec::len);
        assert_eq!(ids, 1000);
        // A registry gives up (and redelivers) after its own timeout; one fsync for the
        // whole envelope keeps the answer far inside it.
        eprintln!("an envelope of 1000 events answered in {took:?}");
        assert!(took < Duration::from_secs(2), "answered in {took:?}");
        let metrics = server
            .metrics_with("hubhook_journal_commit_deliveries_sum 1000")
            .await;
        assert_eq!(
            metric(&metrics, "hubhook_journal_commit_deliveries_sum"),
            1000.0,
            "{metrics}"
        );
        // Exactly one commit carried more than 256 deliveries: all 1000 went in one.
        let commits = metric(&metrics, "hubhook_journal_commit_deliveries_count");
        let small = metric(
            &metrics,
            "hubhook_journal_commit_deliveries_bucket{le=\"256\"}",
        );
        assert_eq!(commits - small, 1.0, "{metrics}");
        for _ in 0..1000 {
            next(&mut rx).await;
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn one_event_posted_eight_times_at_once_runs_once() {
        let (server, mut rx, _dir) = journaled_registry("eight").await;
        let body = envelope(vec![event("only-once", "push", MANIFEST, Some("v1"))]);
        let auth = format!("Authorization: Bearer {KEY}");
        let headers = [auth.as_str(), REGISTRY_TYPE];
        let post = || server.post("/registry", &headers, &body);
        // Eight connections at once, polled together on this task.
        let answers = tokio::join!(
            post(),
            post(),
            post(),
            post(),
            post(),
            post(),
            post(),
            post()
        );
        let answers = [
            answers.0, answers.1, answers.2, answers.3, answers.4, answers.5, answers.6, answers.7,
        ];
        let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [200, 200, 200, 200, 200, 200, 200, 202],
            "{statuses:?}"
        );
        next(&mut rx).await;
        // The other seven were answered "handled already" before this point; a second run
        // would have been queued by now.
        let line = "hubhook_handler_runs_total{handler=\"recorder\",outcome=\"ok\"} 1";
        let metrics = server.metrics_with(line).await;
        assert!(metrics.contains(line), "{metrics}");
        assert!(rx.try_recv().is_err(), "one run for one event id");
        server.stop().await;
    }
}

/// The registry a message names comes from configuration: a Docker Hub payload naming a
/// host is refused, and a registry event for another host than the hook's is ignored.
#[tokio::test]
async fn no_payload_chooses_the_registry() {
    // The Docker Hub hook as well as the registry's.
    let (server, mut rx) = registry_server_from(HubhookService::builder().api_key(KEY)).await;
    let evil = json!({"repository": {"repo_name": "evil.example/acme/site"}, "push_data": {"tag": "latest"}});
    let r = server
        .post(
            &format!("/hubhook?apikey={KEY}"),
            &["Content-Type: application/json"],
            evil.to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("registry host"), "{}", r.body);

    let mut other = event("h1", "push", MANIFEST, Some("v1"));
    other["request"]["host"] = json!("evil.example");
    let auth = format!("Authorization: Bearer {KEY}");
    let r = server
        .post("/registry", &[&auth, REGISTRY_TYPE], &envelope(vec![other]))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("another registry host"), "{}", r.body);

    // The hook's own host still acts, and names the configured host.
    let r = server
        .post(
            "/registry",
            &[&auth, REGISTRY_TYPE],
            &envelope(vec![event("h2", "push", MANIFEST, Some("v1"))]),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let (msg, _) = next(&mut rx).await;
    assert_eq!(msg.image(), format!("127.0.0.1:5000/team/site@{DIGEST}"));
    assert!(
        rx.try_recv().is_err(),
        "neither refused push reached a handler"
    );
    server.stop().await;
}

/// A registry hook built without `.registry(host)` names no host: the event's
/// `request.host` is the pusher's Host header, which the sender chooses.
#[tokio::test]
async fn without_a_configured_host_no_registry_event_names_one() {
    let (recorder, mut rx) = Recorder::new("recorder");
    let service = HubhookService::builder()
        .hook(Hook::new("/registry", Provider::Registry).api_key(KEY))
        .handler(recorder)
        .build()
        .expect("service");
    let server = TestServer::start(service, Transport::Plain).await;
    let mut chosen = event("n1", "push", MANIFEST, Some("v1"));
    chosen["request"]["host"] = json!("evil.example");
    let auth = format!("Authorization: Bearer {KEY}");
    let r = server
        .post(
            "/registry",
            &[&auth, REGISTRY_TYPE],
            &envelope(vec![chosen]),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let (msg, _) = next(&mut rx).await;
    assert_eq!(msg.registry(), None);
    assert_eq!(msg.image(), format!("team/site@{DIGEST}"));
    server.stop().await;
}

/// A hook that only a signature authenticates reads at most `signed_max_body` before it
/// can check it: a 1 MiB body is refused before it is read, declared or chunked.
#[tokio::test]
async fn a_big_body_to_a_signed_hook_is_refused_before_it_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let service = HubhookService::builder()
        .hook(Hook::new(
            "/github",
            Provider::GitHub {
                secret: "s3cret".into(),
            },
        ))
        .build()
        .expect("service");
    let server = TestServer::start(service, Transport::Plain).await;

    // Declared: 413 on the headers alone, with none of the 1 MiB sent.
    let mut io = server.connect().await;
    io.write_all(b"POST /github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: package\r\nContent-Length: 1048576\r\n\r\n")
        .await
        .expect("head");
    let r = read_response(&mut io)
        .await
        .expect("an answer before the body");
    assert_eq!(r.status, 413, "{r:?}");
    assert!(
        r.body
            .contains(&hubhook_core::service::DEFAULT_SIGNED_MAX_BODY.to_string()),
        "{}",
        r.body
    );

    // Chunked: refused once the limit is passed, while most of the 1 MiB is still unsent.
    let mut io = server.connect().await;
    io.write_all(b"POST /github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: package\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .expect("head");
    let chunk = vec![b' '; 16 * 1024];
    let mut sent = 0;
    let mut answer = Vec::new();
    while sent < 1024 * 1024 {
        let head = format!("{:x}\r\n", chunk.len());
        if io.write_all(head.as_bytes()).await.is_err()
            || io.write_all(&chunk).await.is_err()
            || io.write_all(b"\r\n").await.is_err()
        {
            break;
        }
        sent += chunk.len();
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(5), io.read(&mut buf)).await
        {
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || answer.starts_with(b"HTTP/1.1 413") {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "{text:?} after {sent} bytes"
    );
    assert!(sent < 256 * 1024, "refused after {sent} of 1 MiB");
    server.stop().await;
}
