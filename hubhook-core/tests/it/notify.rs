//! Notifications against real HTTP receivers on 127.0.0.1 started by the test. That no
//! token reaches a log line is shown on `hubhook serve`'s own output (the server's
//! tests): a thread-local log capture here would miss lines when tests run in parallel.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hubhook_core::notify::Notify;
use hubhook_core::{
    async_trait, Context, Handler, HandlerError, HubMessage, HubhookService, Outcome, Route,
};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What a receiver got.
#[derive(Debug)]
struct Received {
    path: String,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// An HTTP receiver on 127.0.0.1: answers each request with the next status of its
/// script (then 200), or never answers when the script says 0.
struct Receiver {
    port: u16,
    rx: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(
            script.iter().copied().collect::<VecDeque<u16>>(),
        ));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (tx, script) = (tx.clone(), script.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let (tx, script) = (tx.clone(), script.clone());
                            async move {
                                let (head, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let _ = tx.send(Received {
                                    path: head.uri.to_string(),
                                    headers: head.headers,
                                    body: body.to_vec(),
                                });
                                let status =
                                    script.lock().expect("script").pop_front().unwrap_or(200);
                                if status == 0 {
                                    std::future::pending::<()>().await;
                                }
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::new()))
                                        .expect("response"),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { port, rx }
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(20), self.rx.recv())
            .await
            .expect("a notification within 20 s")
            .expect("the receiver runs")
    }
}

/// A deploy that fails with an output tail holding HTML and a second line.
struct Failing;

#[async_trait]
impl Handler for Failing {
    fn name(&self) -> &str {
        "deploy"
    }

    async fn handle(&self, _msg: &HubMessage, _ctx: &Context) -> Result<Outcome, HandlerError> {
        Err(HandlerError::Failed(
            "exit status 1: <b>boom</b>\nlast line".into(),
        ))
    }
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Posts a registry-style push of acme/site:v2 with `DIGEST` through a generic hook.
async fn push(service: &HubhookService) -> String {
    let body = json!({"repo": "acme/site", "tag": "v2", "digest": DIGEST}).to_string();
    let request = http::Request::post("/generic")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let response = service.respond(request).await;
    assert_eq!(response.status(), 202);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let answer: Value = serde_json::from_slice(&body).expect("JSON answer");
    answer["delivery"]
        .as_str()
        .expect("a delivery id")
        .to_owned()
}

fn service(handler: impl Handler, notifications: Vec<Notify>) -> HubhookService {
    HubhookService::builder()
        .hook(
            hubhook_core::Hook::new(
                "/generic",
                hubhook_core::Provider::Generic(
                    hubhook_core::Generic::new("/repo", "/tag").digest("/digest"),
                ),
            )
            .allow_unauthenticated(true),
        )
        .route(Route::new(handler))
        .notify_all(notifications)
        .build()
        .expect("service")
}

const TEMPLATE: &str = "{handler} {outcome} {image} {digest}\n{output}";

#[tokio::test]
async fn the_exact_bodies_and_a_standard_webhooks_signature() {
    let mut slack = Receiver::start(&[]).await;
    let mut discord = Receiver::start(&[]).await;
    let mut ntfy = Receiver::start(&[]).await;
    let mut generic = Receiver::start(&[]).await;
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let notifications = vec![
        Notify::new("slack", &slack.url("slack+http", "/services/T0/B0/TOKEN"))
            .expect("slack")
            .template(TEMPLATE),
        Notify::new(
            "discord",
            &discord.url("discord+http", "/api/webhooks/1/TOKEN"),
        )
        .expect("discord")
        .template(TEMPLATE),
        Notify::new("ntfy", &ntfy.url("ntfy+http", "/deploys"))
            .expect("ntfy")
            .template(TEMPLATE),
        Notify::new("generic", &generic.url("http", "/hooks/deploys"))
            .expect("generic")
            .template(TEMPLATE)
            .secret(SECRET)
            .expect("secret"),
    ];
    let service = service(Failing, notifications);
    let delivery = push(&service).await;
    let text =
        format!("deploy failed acme/site:v2 {DIGEST}\nexit status 1: <b>boom</b>\nlast line");

    let got = slack.next().await;
    assert_eq!(got.path, "/services/T0/B0/TOKEN");
    assert_eq!(got.header("content-type"), "application/json");
    assert_eq!(got.json(), json!({ "text": text }));

    let got = discord.next().await;
    assert_eq!(got.path, "/api/webhooks/1/TOKEN");
    assert_eq!(got.json(), json!({ "content": text }));

    let got = ntfy.next().await;
    assert_eq!(got.path, "/", "ntfy's JSON publish goes to the root");
    assert_eq!(
        got.json(),
        json!({
            "topic": "deploys",
            "title": "deploy failed: acme/site:v2",
            "message": text,
            "tags": ["warning"],
        })
    );

    let got = generic.next().await;
    assert_eq!(got.path, "/hooks/deploys");
    let mut body = got.json();
    let took = body
        .as_object_mut()
        .and_then(|o| o.remove("duration_ms"))
        .expect("duration_ms");
    assert!(took.is_u64(), "{took}");
    assert_eq!(
        body,
        json!({
            "type": "hubhook.outcome",
            "delivery": delivery,
            "handler": "deploy",
            "outcome": "failed",
            "image": "acme/site:v2",
            "repository": "acme/site",
            "tag": "v2",
            "digest": DIGEST,
            "source": "generic",
            "output": "exit status 1: <b>boom</b>\nlast line",
            "text": text,
        })
    );
    // Standard Webhooks: HMAC-SHA256 over "id.timestamp.body" with the base64-decoded
    // secret, computed here on its own, not with hubhook's function.
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("secret");
    let (id, timestamp) = (got.header("webhook-id"), got.header("webhook-timestamp"));
    assert!(
        !id.is_empty() && timestamp.parse::<u64>().is_ok(),
        "{id} {timestamp}"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&got.body);
    let want = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(got.header("webhook-signature"), want);
    assert!(service.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test]
async fn five_hundred_twice_then_two_hundred_is_three_tries() {
    let mut receiver = Receiver::start(&[500, 500, 200]).await;
    let notify = Notify::new("ops", &receiver.url("slack+http", "/services/T/B/TOKEN"))
        .expect("notify")
        .backoff(Duration::from_millis(50));
    let service = service(Failing, vec![notify]);
    push(&service).await;
    for _ in 0..3 {
        receiver.next().await;
    }
    assert!(service.shutdown(Duration::from_secs(10)).await);
    assert!(
        receiver.rx.try_recv().is_err(),
        "no fourth try after the 200"
    );
}

/// Succeeds, and says so on a channel, so the test sees when the run ended.
struct Quick(mpsc::UnboundedSender<()>);

#[async_trait]
impl Handler for Quick {
    fn name(&self) -> &str {
        "deploy"
    }

    async fn handle(&self, _msg: &HubMessage, _ctx: &Context) -> Result<Outcome, HandlerError> {
        let _ = self.0.send(());
        Ok(Outcome::new("deployed"))
    }
}

#[tokio::test]
async fn a_receiver_that_hangs_holds_up_no_handler() {
    // Every request hangs: the script's 0s never answer.
    let mut receiver = Receiver::start(&[0, 0, 0, 0]).await;
    let notify = Notify::new("ops", &receiver.url("http", "/hook"))
        .expect("notify")
        .on(["ok"])
        .expect("on")
        .timeout(Duration::from_millis(300))
        .retries(1)
        .backoff(Duration::from_millis(10));
    let (tx, mut ran) = mpsc::unbounded_channel();
    let service = service(Quick(tx), vec![notify]);
    push(&service).await;
    // Bounded: a run held up by its notification fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(20), ran.recv())
        .await
        .expect("the first run within 20 s")
        .expect("the first run");
    // The first notification is hanging in the receiver now…
    receiver.next().await;
    // …and the next delivery runs all the same, before that try has even timed out.
    push(&service).await;
    tokio::time::timeout(Duration::from_secs(20), ran.recv())
        .await
        .expect("the second run within 20 s, while the first notification hangs")
        .expect("the second run");
    // Each hanging try ends at its timeout: shutdown waits for those, and no longer.
    assert!(service.shutdown(Duration::from_secs(10)).await);
}
