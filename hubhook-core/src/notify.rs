//! Notifications: tell someone when a deploy lands or fails, after its delivery settles.
//!
//! A [`Notify`] is one destination, written as a URL in the style shoutrrr and Apprise
//! users know:
//!
//! | URL | sends |
//! |---|---|
//! | `slack://hooks.slack.com/services/T…/B…/X…` | a Slack incoming-webhook body, `{"text": …}` |
//! | `discord://discord.com/api/webhooks/ID/TOKEN` | a Discord webhook body, `{"content": …}` |
//! | `ntfy://ntfy.sh/TOPIC` | ntfy's JSON publish body, `{"topic", "title", "message", "tags"}` |
//! | `https://…` or `http://…` | a generic JSON body, signed the Standard Webhooks way when a secret is set |
//!
//! `slack://`, `discord://` and `ntfy://` speak HTTPS; `slack+http://` (and so on) speak
//! plain HTTP, for a relay on the local network. Each handler's final outcome in a
//! settled delivery that the notification's filters select is sent once, off the request
//! path, in a task the server's shutdown waits for; each try is bounded by a timeout,
//! tried again with a doubling backoff on a connection error, a timeout, 429 or 5xx, and
//! reported as an attempt of handler `notify:NAME` (the journal records it, `deliveries
//! show` lists it). A notification never blocks or fails a handler. The URL's path and
//! query (where webhook tokens live) never appear in a log line or an error: only
//! `scheme://host[:port]` does.
//!
//! ```
//! use hubhook_core::notify::Notify;
//! use hubhook_core::HubhookService;
//!
//! let slack = Notify::new("ops", "slack://hooks.slack.com/services/T0/B0/XXXX")?
//!     .on(["failed", "rolled_back", "timeout"])?;
//! let service = HubhookService::builder()
//!     .api_key("0123456789abcdef0123")
//!     .notify(slack)
//!     .build()?;
//! # Ok::<(), hubhook_core::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderValue};
use http::Request;
use http_body_util::Full;
use serde_json::json;
use sha2::Sha256;
use tokio::sync::OnceCell;

use crate::client::{Client, USER_AGENT};
use crate::dispatch::Pattern;
use crate::error::{Error, Kind};
use crate::handler::DeliveryId;
use crate::observe::{AttemptFinished, Observer, RunStatus, Settled};
use crate::HubMessage;

/// The outcomes notified unless [`Notify::on`] says otherwise.
pub const DEFAULT_ON: [&str; 3] = ["failed", "rolled_back", "timeout"];
/// The outcome words [`Notify::on`] takes: a handler's final status, with `rolled_back`
/// for a failure that put the previous version back.
pub const OUTCOMES: [&str; 8] = [
    "ok",
    "failed",
    "rolled_back",
    "timeout",
    "rejected",
    "panic",
    "cancelled",
    "superseded",
];
/// How long one try may take, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries after the first, by default.
pub const DEFAULT_RETRIES: u32 = 3;
/// The wait before the first retry, by default; it doubles for each next one.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two tries: a shutdown waits for notifications in flight.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest output tail a message carries, before each service's own limit.
const MAX_TAIL: usize = 16 * 1024;

/// What kind of body a destination takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Slack,
    Discord,
    Ntfy,
    Generic,
}

impl Service {
    /// The most characters of text the service takes in one message, with room for the
    /// first line.
    fn text_limit(self) -> usize {
        match self {
            Self::Slack => 3_000,
            Self::Discord => 2_000,
            Self::Ntfy => 3_800,
            Self::Generic => MAX_TAIL + 1_000,
        }
    }
}

/// One notification destination with its filters; see the [module docs](self).
#[derive(Clone)]
pub struct Notify {
    name: String,
    service: Service,
    https: bool,
    host: String,
    port: u16,
    /// `Host` header.
    authority: String,
    /// The request target (the webhook path; `/` for ntfy).
    target: String,
    /// ntfy's topic.
    topic: Option<String>,
    on: Vec<String>,
    handlers: Vec<String>,
    repo: Option<Pattern>,
    template: Option<String>,
    secret: Option<Vec<u8>>,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The path holds the webhook's token: the origin only.
        f.debug_struct("Notify")
            .field("name", &self.name)
            .field("service", &self.service)
            .field("origin", &self.origin())
            .field("on", &self.on)
            .finish_non_exhaustive()
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::new(Kind::InvalidNotify(reason.into()))
}

impl Notify {
    /// A destination called `name` (its attempts are handler `notify:NAME`) at `url`.
    /// Errors name the scheme and host, never the path.
    pub fn new(name: impl Into<String>, url: &str) -> Result<Self, Error> {
        let name = name.into();
        // It goes into a header (webhook-id) and the journal's handler column.
        let word = |b: u8| b.is_ascii_alphanumeric() || b"_.-".contains(&b);
        if name.is_empty() || name.len() > 64 || !name.bytes().all(word) {
            return Err(invalid(
                "a notification's name must be 1 to 64 letters, digits, '_', '.' or '-'",
            ));
        }
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            invalid("the URL has no scheme (slack://, discord://, ntfy://, https://)")
        })?;
        let (scheme, service, https) = service_of(scheme)?;
        let scheme = scheme.as_str();
        let uri: http::Uri = format!("{}://{rest}", if https { "https" } else { "http" })
            .parse()
            .map_err(|_| invalid(format!("{scheme}:// URL does not parse")))?;
        let authority = uri
            .authority()
            .ok_or_else(|| invalid(format!("{scheme}:// URL has no host")))?;
        if authority.as_str().contains('@') {
            return Err(invalid(format!(
                "{scheme}://{}: the URL carries user credentials; put the token where the service expects it",
                authority.host()
            )));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let (target, topic) = target_of(service, scheme, &host, path)?;
        Ok(Self {
            name,
            service,
            https,
            host,
            port,
            authority: authority.as_str().to_owned(),
            target,
            topic,
            on: DEFAULT_ON.iter().map(|s| (*s).to_owned()).collect(),
            handlers: Vec::new(),
            repo: None,
            template: None,
            secret: None,
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            backoff: DEFAULT_BACKOFF,
        })
    }

    /// Which outcomes are sent (words of [`OUTCOMES`]); default [`DEFAULT_ON`].
    pub fn on<I: IntoIterator<Item = S>, S: AsRef<str>>(
        mut self,
        outcomes: I,
    ) -> Result<Self, Error> {
        let mut on = Vec::new();
        for word in outcomes {
            let word = word.as_ref();
            if !OUTCOMES.contains(&word) {
                return Err(invalid(format!(
                    "unknown outcome {word:?} (expected one of: {})",
                    OUTCOMES.join(", ")
                )));
            }
            on.push(word.to_owned());
        }
        self.on = on;
        Ok(self)
    }

    /// Only outcomes of these handlers; default: every handler.
    #[must_use]
    pub fn handlers<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.handlers = names.into_iter().map(Into::into).collect();
        self
    }

    /// Only pushes of repositories matching `glob` (`"acme/*"`).
    #[must_use]
    pub fn repo(mut self, glob: impl Into<String>) -> Self {
        self.repo = Some(Pattern::new(glob));
        self
    }

    /// The text, with `{handler}`, `{outcome}`, `{image}`, `{repo}`, `{tag}`, `{digest}`,
    /// `{duration}`, `{delivery}` and `{output}` replaced; default: the outcome, handler,
    /// image, digest and duration on one line, then the output tail on a failure.
    #[must_use]
    pub fn template(mut self, text: impl Into<String>) -> Self {
        self.template = Some(text.into());
        self
    }

    /// Signs the generic body the Standard Webhooks way (`webhook-id`,
    /// `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`). A secret
    /// `whsec_<base64>` is decoded as the standard says; any other text is the key as is.
    pub fn secret(mut self, secret: &str) -> Result<Self, Error> {
        if self.service != Service::Generic {
            return Err(invalid("a secret signs the generic https:// body only"));
        }
        let key = match secret.strip_prefix("whsec_") {
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| invalid("a whsec_ secret must be base64 after the prefix"))?,
            None => secret.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(invalid("the secret is empty"));
        }
        self.secret = Some(key);
        Ok(self)
    }

    /// How long one try may take; default [`DEFAULT_TIMEOUT`].
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Tries after the first; default [`DEFAULT_RETRIES`].
    #[must_use]
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The wait before the first retry, doubling each time; default [`DEFAULT_BACKOFF`].
    #[must_use]
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The name its attempts are recorded under: `notify:NAME`.
    pub fn handler_name(&self) -> String {
        format!("notify:{}", self.name)
    }

    /// `scheme://host[:port]`: how logs and errors name the destination.
    pub fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        match self.host.contains(':') {
            true => format!("{scheme}://[{}]:{}", self.host, self.port),
            false => format!("{scheme}://{}:{}", self.host, self.port),
        }
    }

    fn wants(&self, msg: &HubMessage, run: &Final) -> bool {
        self.on.contains(&run.outcome)
            && (self.handlers.is_empty() || self.handlers.iter().any(|h| **h == *run.handler))
            && self.repo.as_ref().is_none_or(|p| p.matches(msg.repo()))
    }

    /// The text of the message for `run`.
    fn text(&self, id: DeliveryId, msg: &HubMessage, run: &Final) -> String {
        let digest = msg.digest().map_or("", |d| d.as_str());
        let duration = format!("{:.1?}", run.elapsed);
        let limit = self.service.text_limit();
        let text = match &self.template {
            Some(template) => template
                .replace("{handler}", &run.handler)
                .replace("{outcome}", &run.outcome)
                .replace("{image}", &tagged(msg))
                .replace("{repo}", &msg.full_name())
                .replace("{tag}", msg.tag())
                .replace("{digest}", digest)
                .replace("{duration}", &duration)
                .replace("{delivery}", id.as_str())
                .replace("{output}", &run.detail),
            None => {
                let short = digest.get(..19).unwrap_or(digest);
                let mut line = format!("hubhook: {} {} {}", run.handler, run.outcome, tagged(msg));
                if !short.is_empty() {
                    line.push_str(&format!(" ({short})"));
                }
                line.push_str(&format!(" in {duration}"));
                if run.outcome != "ok" && !run.detail.is_empty() {
                    // The first line says what failed: the output gives way, keeping its end.
                    let room = limit.saturating_sub(line.len() + 4);
                    line.push('\n');
                    line.push_str(&cut_end(&run.detail, room));
                }
                line
            }
        };
        cut_end(&text, limit)
    }

    /// The request for one try.
    fn request(&self, id: DeliveryId, msg: &HubMessage, run: &Final) -> Request<Full<Bytes>> {
        let text = self.text(id, msg, run);
        let body = match self.service {
            Service::Slack => json!({ "text": text }),
            Service::Discord => json!({ "content": text }),
            Service::Ntfy => json!({
                "topic": self.topic,
                "title": format!("{} {}: {}", run.handler, run.outcome, tagged(msg)),
                "message": text,
                "tags": [if run.outcome == "ok" { "white_check_mark" } else { "warning" }],
            }),
            Service::Generic => json!({
                "type": "hubhook.outcome",
                "delivery": id.as_str(),
                "handler": &*run.handler,
                "outcome": run.outcome,
                "image": tagged(msg),
                "repository": msg.full_name(),
                "tag": msg.tag(),
                "digest": msg.digest(),
                "source": msg.source(),
                "duration_ms": run.elapsed.as_millis() as u64,
                "output": cut_end(&run.detail, MAX_TAIL),
                "text": text,
            }),
        }
        .to_string();
        let mut request = Request::new(Full::new(Bytes::from(body.clone())));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self
            .target
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("/"));
        let headers = request.headers_mut();
        if let Ok(host) = HeaderValue::from_str(&self.authority) {
            headers.insert(header::HOST, host);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        if let Some(key) = &self.secret {
            // One id per outcome: receivers deduplicate on it.
            let message_id = format!("{}-{}-{}", id.as_str(), run.handler, self.name);
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string();
            let signature = sign(key, &message_id, &timestamp, body.as_bytes());
            for (name, value) in [
                ("webhook-id", message_id),
                ("webhook-timestamp", timestamp),
                ("webhook-signature", signature),
            ] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
        }
        request
    }
}

/// The scheme, read as a word (anything else before `://` may be a token's path and is
/// never echoed): which service, and whether it speaks TLS.
fn service_of(scheme: &str) -> Result<(String, Service, bool), Error> {
    let scheme = scheme.to_ascii_lowercase();
    if scheme.is_empty()
        || scheme.len() > 16
        || !scheme.bytes().all(|b| b.is_ascii_lowercase() || b == b'+')
    {
        return Err(invalid(
            "the URL does not start with a scheme (slack://, discord://, ntfy://, https://)",
        ));
    }
    let (service, https) = match scheme.as_str() {
        "slack" => (Service::Slack, true),
        "slack+http" => (Service::Slack, false),
        "discord" => (Service::Discord, true),
        "discord+http" => (Service::Discord, false),
        "ntfy" => (Service::Ntfy, true),
        "ntfy+http" => (Service::Ntfy, false),
        "https" => (Service::Generic, true),
        "http" => (Service::Generic, false),
        other => {
            return Err(invalid(format!(
                "unknown scheme {other:?} (expected slack://, discord://, ntfy://, https:// or http://)"
            )))
        }
    };
    Ok((scheme, service, https))
}

/// The request target for `path` (`/` for ntfy, which names its topic in the body), and
/// ntfy's topic; errors name the scheme and host only.
fn target_of(
    service: Service,
    scheme: &str,
    host: &str,
    path: String,
) -> Result<(String, Option<String>), Error> {
    match service {
        Service::Ntfy => {
            let topic = path.trim_matches('/');
            let ok = !topic.is_empty()
                && topic.len() <= 64
                && topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(invalid(format!(
                    "{scheme}://{host}: name one topic after the host (letters, digits, '_', '-')"
                )));
            }
            Ok(("/".to_owned(), Some(topic.to_owned())))
        }
        Service::Slack | Service::Discord if path.len() <= 1 => Err(invalid(format!(
            "{scheme}://{host}: the webhook's path is missing"
        ))),
        _ => Ok((path, None)),
    }
}

/// `repo:tag` (with its registry): the message's image by tag, its digest said apart.
fn tagged(msg: &HubMessage) -> String {
    format!("{}:{}", msg.full_name(), msg.tag())
}

/// `v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`, as Standard Webhooks signs.
pub fn sign(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// `text` cut to at most `max` bytes at a character boundary, keeping the end (an output
/// tail's last lines say why it failed), with `…` in front when cut.
fn cut_end(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max.saturating_sub(3);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// One handler's final attempt, kept until its delivery settles.
#[derive(Debug, Clone)]
struct Final {
    handler: Arc<str>,
    outcome: String,
    elapsed: Duration,
    detail: String,
}

/// The notifications as an observer of deliveries.
#[derive(Debug)]
struct Notifier {
    destinations: Vec<Arc<Notify>>,
    /// Final attempts of deliveries not settled yet.
    finals: Mutex<HashMap<DeliveryId, Vec<Final>>>,
    tls: Arc<OnceCell<Result<Arc<rustls::ClientConfig>, String>>>,
}

impl Observer for Notifier {
    fn attempt_finished(&self, e: &AttemptFinished<'_>) {
        if !e.final_ || e.handler == "callback" || e.handler.starts_with("notify:") {
            return;
        }
        let detail = e.detail.to_string();
        let outcome = if crate::observe::rolled_back(e.status, &detail) {
            "rolled_back"
        } else {
            e.status.as_str()
        };
        let run = Final {
            handler: Arc::from(e.handler),
            outcome: outcome.to_owned(),
            elapsed: e.elapsed,
            detail: cut_end(&detail, MAX_TAIL),
        };
        let mut finals = self.finals.lock().unwrap_or_else(|p| p.into_inner());
        finals.entry(e.id).or_default().push(run);
    }

    fn settled(&self, e: &Settled<'_>) {
        let runs = {
            let mut finals = self.finals.lock().unwrap_or_else(|p| p.into_inner());
            finals.remove(&e.id).unwrap_or_default()
        };
        for run in runs {
            for notify in &self.destinations {
                if !notify.wants(e.msg, &run) {
                    continue;
                }
                let (notify, run, msg, id) = (notify.clone(), run.clone(), e.msg.clone(), e.id);
                let (seam, tls) = (e.seam.clone(), self.tls.clone());
                e.tracker.spawn(async move {
                    deliver(&notify, id, &msg, &run, &tls, &seam).await;
                });
            }
        }
    }
}

impl Notify {
    /// One try: its status, what to record, and whether another try may do better (a
    /// connection error, a timeout, 429 or 5xx).
    async fn try_once(
        &self,
        client: &Client,
        request: Request<Full<Bytes>>,
    ) -> (RunStatus, String, bool) {
        let sent = tokio::time::timeout(
            self.timeout,
            client.send(&self.host, self.port, self.https, request),
        )
        .await;
        match sent {
            Ok(Ok(answer)) => {
                let code = answer.status();
                let status = match code.is_success() {
                    true => RunStatus::Ok,
                    false => RunStatus::Failed,
                };
                let again = code.is_server_error() || code == http::StatusCode::TOO_MANY_REQUESTS;
                let detail = format!("{} answered {}", self.origin(), code.as_u16());
                (status, detail, again)
            }
            // The client's errors name the origin only.
            Ok(Err(e)) => (RunStatus::Failed, e.to_string(), true),
            Err(_) => (
                RunStatus::Timeout,
                format!("no answer from {} within {:?}", self.origin(), self.timeout),
                true,
            ),
        }
    }
}

/// Sends one notification with its retries, reporting each try as an attempt.
async fn deliver(
    notify: &Notify,
    id: DeliveryId,
    msg: &Arc<HubMessage>,
    run: &Final,
    tls: &OnceCell<Result<Arc<rustls::ClientConfig>, String>>,
    seam: &crate::observe::Observers,
) {
    let handler = notify.handler_name();
    let mut client = Client::new().connect_timeout(notify.timeout);
    if notify.https {
        let config = tls
            .get_or_init(|| crate::client::system_roots(rustls::RootCertStore::empty()))
            .await;
        match config {
            Ok(config) => client = client.tls(config.clone()),
            Err(reason) => {
                report(
                    seam,
                    id,
                    msg,
                    &handler,
                    1,
                    SystemTime::now(),
                    Duration::ZERO,
                    RunStatus::Failed,
                    reason,
                    true,
                );
                return;
            }
        }
    }
    let tries = notify.retries.saturating_add(1);
    let mut backoff = notify.backoff;
    for attempt in 1..=tries {
        let (started, clock) = (SystemTime::now(), Instant::now());
        let request = notify.request(id, msg, run);
        let (status, detail, again) = notify.try_once(&client, request).await;
        let last = !again || attempt == tries;
        report(
            seam,
            id,
            msg,
            &handler,
            attempt,
            started,
            clock.elapsed(),
            status,
            &detail,
            last,
        );
        if last {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    seam: &crate::observe::Observers,
    id: DeliveryId,
    msg: &HubMessage,
    handler: &str,
    attempt: u32,
    started: SystemTime,
    elapsed: Duration,
    status: RunStatus,
    detail: &str,
    final_: bool,
) {
    seam.attempt_finished(&AttemptFinished {
        id,
        msg: Some(msg),
        handler,
        attempt,
        started,
        elapsed,
        status,
        detail: &detail,
        final_,
    });
}

impl crate::HubhookServiceBuilder {
    /// Sends `notify` for every handler outcome it selects, after the delivery settles;
    /// see [`notify`](crate::notify).
    pub fn notify(self, notify: Notify) -> Self {
        self.notify_all([notify])
    }

    /// Sends each of `notifications`; one observer serves them all.
    pub fn notify_all(self, notifications: impl IntoIterator<Item = Notify>) -> Self {
        let destinations: Vec<Arc<Notify>> = notifications.into_iter().map(Arc::new).collect();
        if destinations.is_empty() {
            return self;
        }
        self.observe(Arc::new(Notifier {
            destinations,
            finals: Mutex::new(HashMap::new()),
            tls: Arc::new(OnceCell::new()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_and_refused_without_their_path() {
        let slack =
            Notify::new("ops", "slack://hooks.slack.com/services/T0/B0/SECRET").expect("slack");
        assert_eq!(slack.origin(), "https://hooks.slack.com:443");
        assert_eq!(slack.target, "/services/T0/B0/SECRET");
        let ntfy = Notify::new("ops", "ntfy+http://127.0.0.1:8080/deploys").expect("ntfy");
        assert_eq!(ntfy.topic.as_deref(), Some("deploys"));
        assert_eq!(ntfy.origin(), "http://127.0.0.1:8080");
        for (url, words) in [
            ("hooks.slack.com/x", "no scheme"),
            ("smtp://mail/x", "unknown scheme"),
            ("slack://hooks.slack.com", "path is missing"),
            ("ntfy://ntfy.sh/a/b", "one topic"),
            ("https://user:SECRET@example.com/x", "user credentials"),
            (
                "hooks.example.com/T/SECRET?next=https://x",
                "does not start with a scheme",
            ),
        ] {
            let e = Notify::new("ops", url).expect_err(url).to_string();
            assert!(e.contains(words), "{url}: {e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
        assert!(
            slack.clone().secret("s").is_err(),
            "slack bodies are not signed"
        );
        assert!(format!("{slack:?}").find("SECRET").is_none());
        assert!(Notify::new("ops", "https://x/y")
            .expect("generic")
            .on(["sometimes"])
            .is_err());
    }

    #[test]
    fn a_long_output_leaves_the_first_line_whole() {
        let notify = Notify::new("ops", "discord://discord.com/api/webhooks/1/T").expect("url");
        let msg = HubMessage::new("acme/site", "v2").expect("message");
        let run = Final {
            handler: Arc::from("deploy"),
            outcome: "failed".into(),
            elapsed: Duration::from_millis(1200),
            detail: format!("{}the last line", "x".repeat(10_000)),
        };
        let text = notify.text(DeliveryId::generate(), &msg, &run);
        assert!(
            text.len() <= Service::Discord.text_limit(),
            "{}",
            text.len()
        );
        assert!(
            text.starts_with("hubhook: deploy failed acme/site:v2 in "),
            "{text}"
        );
        assert!(text.ends_with("the last line"), "{text}");
        assert!(
            Notify::new("ops ops", "https://x/y").is_err(),
            "names go into a header"
        );
    }

    #[test]
    fn tails_keep_their_end() {
        assert_eq!(cut_end("short", 10), "short");
        let cut = cut_end(&format!("{}END", "é".repeat(100)), 20);
        assert!(
            cut.starts_with('…') && cut.ends_with("END") && cut.len() <= 21,
            "{cut}"
        );
    }
}
