//! Providers: how each registry's webhook becomes [`HubMessage`]s.
//!
//! - Docker Hub: the payload *is* a `HubMessage`.
//! - Distribution registry (also GitLab's and Harbor's notifications): an envelope of
//!   events; only manifest pushes with a tag act, everything else is answered and ignored.
//! - GitHub packages: `package` / `registry_package` events for container images,
//!   authenticated by `X-Hub-Signature-256`.
//! - Generic: any JSON with the repository and tag at configured JSON pointers.
//!
//! Every value taken from a payload goes through [`HubMessage::validate`] before it is
//! returned, exactly like a Docker Hub payload.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use http::HeaderMap;
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::watch;

use crate::message::{MessageError, SOURCE_DOCKERHUB};
use crate::HubMessage;

/// How many registry event ids a hook remembers to act on each once.
const REMEMBERED_EVENTS: usize = 4096;

/// Which registry's webhooks a hook receives.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provider {
    /// Docker Hub's webhook payload.
    DockerHub,
    /// Distribution registry notifications (`application/vnd.docker.distribution.events.v1+json`).
    Registry,
    /// GitHub `package` / `registry_package` events, signed with this secret.
    GitHub {
        /// The webhook secret configured on GitHub.
        secret: String,
    },
    /// Any JSON: repository and tag at JSON pointers, optionally signed.
    Generic(Generic),
}

/// Where a generic hook finds things in the JSON body (RFC 6901 pointers), and how it is
/// signed.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Generic {
    /// Pointer to the repository (`"/repository/name"`); a registry host in it is kept.
    pub repo: String,
    /// Pointer to the tag (`"/tag"`).
    pub tag: String,
    /// Pointer to the digest, if the sender gives one.
    pub digest: Option<String>,
    /// A header holding a hex HMAC-SHA256 of the body (`sha256=` prefix optional), with the
    /// secret, when the sender signs its requests.
    pub signature: Option<(String, String)>,
}

// Secrets never show in Debug output (a config dump, a panic message, a log line).
impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DockerHub => f.write_str("DockerHub"),
            Self::Registry => f.write_str("Registry"),
            Self::GitHub { .. } => f.write_str("GitHub { secret: <redacted> }"),
            Self::Generic(g) => f.debug_tuple("Generic").field(g).finish(),
        }
    }
}

impl std::fmt::Debug for Generic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generic")
            .field("repo", &self.repo)
            .field("tag", &self.tag)
            .field("digest", &self.digest)
            .field(
                "signature_header",
                &self.signature.as_ref().map(|(header, _)| header),
            )
            .finish()
    }
}

impl Generic {
    /// Repository and tag at these pointers, unsigned.
    pub fn new(repo: impl Into<String>, tag: impl Into<String>) -> Self {
        Self {
            repo: repo.into(),
            tag: tag.into(),
            digest: None,
            signature: None,
        }
    }

    /// Also reads the digest at this pointer.
    #[must_use]
    pub fn digest(mut self, pointer: impl Into<String>) -> Self {
        self.digest = Some(pointer.into());
        self
    }

    /// Requires `header` to hold the HMAC-SHA256 of the body under `secret`.
    #[must_use]
    pub fn signed(mut self, header: impl Into<String>, secret: impl Into<String>) -> Self {
        self.signature = Some((header.into(), secret.into()));
        self
    }
}

/// What a provider made of a body.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// Messages to dispatch, each with its provider event id when it has one.
    Messages(Vec<(HubMessage, Option<String>)>),
    /// Nothing to do; the reason is answered with 200.
    Ignored(String),
}

/// Why a body was refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// 401: a signature is missing or wrong.
    Unauthorized,
    /// 400, with the reason.
    BadRequest(String),
}

impl From<MessageError> for Refusal {
    fn from(e: MessageError) -> Self {
        Refusal::BadRequest(e.to_string())
    }
}

impl Provider {
    /// The provider's name in configuration and in `HubMessage::source`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::DockerHub => SOURCE_DOCKERHUB,
            Self::Registry => "registry",
            Self::GitHub { .. } => "github",
            Self::Generic(_) => "generic",
        }
    }

    /// Whether requests must carry a signature instead of (or besides) an API key.
    pub(crate) fn is_signed(&self) -> bool {
        // An empty secret signs nothing: anyone can compute that HMAC.
        match self {
            Self::GitHub { secret } => !secret.is_empty(),
            Self::Generic(g) => g
                .signature
                .as_ref()
                .is_some_and(|(_, secret)| !secret.is_empty()),
            _ => false,
        }
    }

    /// Checks the signature, when this provider has one; constant time.
    pub(crate) fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
        let (header, secret, prefixed) = match self {
            Self::GitHub { secret } => ("x-hub-signature-256", secret.as_str(), true),
            Self::Generic(Generic {
                signature: Some((header, secret)),
                ..
            }) => (header.as_str(), secret.as_str(), false),
            _ => return Ok(()),
        };
        let Some(value) = headers.get(header).and_then(|v| v.to_str().ok()) else {
            return Err(Refusal::Unauthorized);
        };
        let hex = match value.strip_prefix("sha256=") {
            Some(hex) => hex,
            // GitHub always prefixes; another algorithm's prefix is a refusal, not a guess.
            None if prefixed || value.contains('=') => return Err(Refusal::Unauthorized),
            None => value,
        };
        let Some(given) = decode_hex(hex) else {
            return Err(Refusal::Unauthorized);
        };
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
            .map_err(|_| Refusal::Unauthorized)?;
        mac.update(body);
        // verify_slice compares in constant time.
        mac.verify_slice(&given).map_err(|_| Refusal::Unauthorized)
    }

    /// Turns a body into messages (or a reason to ignore it).
    pub(crate) fn decode(&self, headers: &HeaderMap, body: &[u8]) -> Result<Decoded, Refusal> {
        match self {
            Self::DockerHub => Ok(Decoded::Messages(vec![(
                HubMessage::from_json(body)?,
                None,
            )])),
            Self::Registry => registry(body),
            Self::GitHub { .. } => github(headers, body),
            Self::Generic(g) => generic(g, body),
        }
    }
}

fn parse(body: &[u8]) -> Result<Value, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| Refusal::BadRequest(format!("body is not valid JSON: {e}")))
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// What a provider's payload says about one push, before it is validated.
struct Push<'a> {
    source: &'static str,
    registry: Option<&'a str>,
    repository: &'a str,
    tag: &'a str,
    digest: Option<&'a str>,
    pusher: Option<&'a str>,
    pushed_at: Option<i64>,
}

impl Push<'_> {
    /// The message for this push (a registry host in front is kept apart), validated,
    /// holding `raw` as its JSON.
    fn message(self, raw: &[u8]) -> Result<HubMessage, Refusal> {
        let full = match self.registry {
            Some(host) => format!("{host}/{}", self.repository),
            None => self.repository.to_owned(),
        };
        let mut msg = HubMessage::new(&full, self.tag)?;
        msg.source = self.source.to_owned();
        msg.digest = self.digest.map(str::to_owned);
        msg.push_data.pusher = self.pusher.map(str::to_owned);
        msg.push_data.pushed_at = self.pushed_at;
        msg.set_raw(raw);
        msg.validate()?;
        Ok(msg)
    }
}

/// Distribution's notification envelope: `{"events": [...]}`.
fn registry(body: &[u8]) -> Result<Decoded, Refusal> {
    let root = parse(body)?;
    let Some(events) = root.get("events").and_then(Value::as_array) else {
        return Err(Refusal::BadRequest(
            "not a registry notification: no \"events\" list".into(),
        ));
    };
    let mut messages = Vec::new();
    let mut skipped = Vec::new();
    for event in events {
        let action = event.get("action").and_then(Value::as_str).unwrap_or("");
        let media = text(event, "/target/mediaType").unwrap_or("");
        let tag = text(event, "/target/tag");
        let is_manifest = media.contains("manifest") || media.contains("image.index");
        match (action, is_manifest, tag) {
            ("push", true, Some(tag)) => {
                let Some(repository) = text(event, "/target/repository") else {
                    return Err(Refusal::BadRequest(
                        "a push event has no target.repository".into(),
                    ));
                };
                // Each message keeps its own event as raw JSON, not the whole envelope:
                // an envelope of many events must not cost events × envelope in memory.
                let msg = Push {
                    source: "registry",
                    registry: text(event, "/request/host"),
                    repository,
                    tag,
                    digest: text(event, "/target/digest"),
                    pusher: text(event, "/actor/name"),
                    pushed_at: text(event, "/timestamp").and_then(rfc3339_seconds),
                }
                .message(event.to_string().as_bytes())?;
                messages.push((msg, text(event, "/id").map(str::to_owned)));
            }
            ("push", true, None) => skipped.push("manifest push without a tag".to_owned()),
            ("push", false, _) => skipped.push("blob push".to_owned()),
            (other, _, _) => skipped.push(format!(
                "{} event",
                if other.is_empty() { "unnamed" } else { other }
            )),
        }
    }
    if messages.is_empty() {
        skipped.dedup();
        let why = if skipped.is_empty() {
            "no events".to_owned()
        } else {
            skipped.join(", ")
        };
        return Ok(Decoded::Ignored(format!("nothing to deploy: {why}")));
    }
    Ok(Decoded::Messages(messages))
}

/// GitHub's `package` and `registry_package` events.
fn github(headers: &HeaderMap, body: &[u8]) -> Result<Decoded, Refusal> {
    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if event == "ping" {
        return Ok(Decoded::Ignored("ping".into()));
    }
    if event != "package" && event != "registry_package" {
        return Ok(Decoded::Ignored(format!(
            "event {event:?} is not a package event"
        )));
    }
    let root = parse(body)?;
    let action = root.get("action").and_then(Value::as_str).unwrap_or("");
    if action != "published" && action != "updated" {
        return Ok(Decoded::Ignored(format!("package action {action:?}")));
    }
    let package = root
        .get(event)
        .or_else(|| root.get("package"))
        .unwrap_or(&Value::Null);
    let kind = text(package, "/package_type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if kind != "container" && kind != "docker" {
        return Ok(Decoded::Ignored(format!(
            "package type {kind:?} is not a container image"
        )));
    }
    let (Some(owner), Some(name)) = (text(package, "/owner/login"), text(package, "/name")) else {
        return Err(Refusal::BadRequest(
            "package event without owner.login and name".into(),
        ));
    };
    let Some(tag) = text(package, "/package_version/container_metadata/tag/name") else {
        return Ok(Decoded::Ignored("container version without a tag".into()));
    };
    let host = text(package, "/registry/url")
        .map(|u| {
            u.trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
        })
        .unwrap_or("ghcr.io");
    let digest = text(package, "/package_version/container_metadata/tag/digest")
        .or_else(|| text(package, "/package_version/version").filter(|v| v.starts_with("sha256:")));
    let repository = format!("{owner}/{name}").to_ascii_lowercase();
    let msg = Push {
        source: "github",
        registry: Some(host),
        repository: &repository,
        tag,
        digest,
        pusher: text(&root, "/sender/login"),
        pushed_at: text(package, "/package_version/updated_at")
            .or_else(|| text(package, "/updated_at"))
            .and_then(rfc3339_seconds),
    }
    .message(body)?;
    Ok(Decoded::Messages(vec![(msg, None)]))
}

fn generic(spec: &Generic, body: &[u8]) -> Result<Decoded, Refusal> {
    let root = parse(body)?;
    let Some(repository) = text(&root, &spec.repo) else {
        return Err(Refusal::BadRequest(format!(
            "no repository at {}",
            spec.repo
        )));
    };
    let Some(tag) = text(&root, &spec.tag) else {
        return Err(Refusal::BadRequest(format!("no tag at {}", spec.tag)));
    };
    let digest = spec.digest.as_deref().and_then(|p| text(&root, p));
    let (registry, path) = crate::reference::split_registry(repository);
    // A generic body names no pusher and no time: the time it arrived stands in.
    let received = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let msg = Push {
        source: "generic",
        registry,
        repository: path,
        tag,
        digest,
        pusher: None,
        pushed_at: Some(received),
    }
    .message(body)?;
    Ok(Decoded::Messages(vec![(msg, None)]))
}

/// Seconds since the Unix epoch of an RFC 3339 time such as
/// `2016-03-09T14:44:26.402973972-08:00` (the form registries and GitHub send); `None`
/// for anything else.
fn rfc3339_seconds(text: &str) -> Option<i64> {
    fn number(s: &str) -> Option<i64> {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    }
    let b = text.as_bytes();
    // ASCII only, so that slicing by byte below never splits a character.
    if !text.is_ascii()
        || b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (
        number(&text[0..4])?,
        number(&text[5..7])?,
        number(&text[8..10])?,
    );
    let (hour, minute, second) = (
        number(&text[11..13])?,
        number(&text[14..16])?,
        number(&text[17..19])?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // A leap second counts as the last second of its minute.
    let second = second.min(59);
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (number(&rest[1..3])?, number(&rest[4..6])?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'-' {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };
    // Days from 1970-01-01 to the civil date (proleptic Gregorian calendar).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset * 60)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || hex.len() > 128 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Event ids a hook has acted on recently, so a redelivered event acts once. Kept as
/// SHA-256 digests: ids are sender-chosen text of any length.
///
/// "Seen" is decided atomically: a request claims the new ids of its envelope under one
/// lock, and a concurrent redelivery of any of them waits until that request has been
/// answered (committed: seen; refused: claimable again). No request holds claims while
/// it waits, so two envelopes that share events cannot wait for each other.
#[derive(Debug, Default)]
pub(crate) struct RecentEvents(Mutex<Remembered>);

#[derive(Debug, Default)]
struct Remembered {
    /// Events acted on, as a set to look up and in arrival order to forget the oldest.
    done: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
    /// Events a request is accepting now; the receiver wakes when it is done.
    claimed: HashMap<[u8; 32], watch::Receiver<()>>,
}

/// The events of one request that it alone may accept; released (claimable again) when
/// dropped without [`Claim::commit`].
#[derive(Debug)]
pub(crate) struct Claim {
    events: Arc<RecentEvents>,
    keys: Vec<[u8; 32]>,
    /// Dropped when the claim ends, which wakes every waiter; `None` when nothing was
    /// claimed, so nothing can wait on it.
    _done: Option<watch::Sender<()>>,
}

impl RecentEvents {
    /// Claims the new ones among `ids` (`None`: an event without an id, always new).
    /// Returns which to act on, in order, and the claim to commit once they are
    /// accepted. Waits while another request is accepting any of them.
    pub(crate) async fn claim(self: &Arc<Self>, ids: &[Option<&str>]) -> (Vec<bool>, Claim) {
        if ids.iter().all(Option::is_none) {
            // Nothing to claim (most providers send no ids): no lock, no channel.
            let claim = Claim {
                events: self.clone(),
                keys: Vec::new(),
                _done: None,
            };
            return (vec![true; ids.len()], claim);
        }
        let keys: Vec<Option<[u8; 32]>> = ids.iter().map(|id| id.map(digest)).collect();
        loop {
            let mut busy = {
                let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
                match keys.iter().flatten().find_map(|k| guard.claimed.get(k)) {
                    Some(busy) => busy.clone(),
                    None => {
                        let (tx, rx) = watch::channel(());
                        let mut act = Vec::with_capacity(keys.len());
                        let mut claimed = Vec::new();
                        for key in &keys {
                            let new = match key {
                                None => true,
                                Some(k) if guard.done.contains(k) => false,
                                // The same id twice in one envelope acts once.
                                Some(k) if claimed.contains(k) => false,
                                Some(k) => {
                                    guard.claimed.insert(*k, rx.clone());
                                    claimed.push(*k);
                                    true
                                }
                            };
                            act.push(new);
                        }
                        let claim = Claim {
                            events: self.clone(),
                            keys: claimed,
                            _done: Some(tx),
                        };
                        return (act, claim);
                    }
                }
            };
            // Ends with an error when the other request's claim is dropped.
            let _ = busy.changed().await;
        }
    }
}

impl Claim {
    /// The claimed events were accepted: they are seen from now on.
    pub(crate) fn commit(mut self) {
        let keys = std::mem::take(&mut self.keys);
        if keys.is_empty() {
            return;
        }
        let mut guard = self.events.0.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            guard.claimed.remove(&key);
            if guard.done.insert(key) {
                guard.order.push_back(key);
                if guard.order.len() > REMEMBERED_EVENTS {
                    if let Some(old) = guard.order.pop_front() {
                        guard.done.remove(&old);
                    }
                }
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut guard = self.events.0.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            guard.claimed.remove(key);
        }
    }
}

fn digest(id: &str) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(id.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn rfc3339_times_as_registries_and_github_send_them() {
        // `date -d 2016-03-09T14:44:26-08:00 +%s`
        assert_eq!(
            rfc3339_seconds("2016-03-09T14:44:26.402973972-08:00"),
            Some(1_457_563_466)
        );
        assert_eq!(rfc3339_seconds("2021-03-03T13:36:35Z"), Some(1_614_778_595));
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_seconds("2000-02-29t12:00:00+05:30"),
            Some(951_805_800)
        );
        assert_eq!(rfc3339_seconds("1969-12-31T23:59:59Z"), Some(-1));
        for bad in [
            "",
            "2021-03-03",
            "2021-03-03T13:36:35",
            "2021-13-03T13:36:35Z",
            "2021-03-03T24:00:00Z",
            "2021-03-03T13:36:35.Z",
            "2021-03-03T13:36:35+0100",
            "2021-03-03T13:36:35Z junk",
            "２０21-03-03T13:36:35Z",
            "+021-03-03T13:36:35Z",
        ] {
            assert_eq!(rfc3339_seconds(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn github_documented_example_signature() {
        // GitHub's documentation: secret "It's a Secret to Everybody", payload
        // "Hello, World!".
        let github = Provider::GitHub {
            secret: "It's a Secret to Everybody".into(),
        };
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(github
            .verify(&headers(&[("x-hub-signature-256", good)]), b"Hello, World!")
            .is_ok());
        // Wrong signature, missing header, wrong algorithm prefix, body changed by one byte.
        let wrong = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e18";
        assert!(github
            .verify(
                &headers(&[("x-hub-signature-256", wrong)]),
                b"Hello, World!"
            )
            .is_err());
        assert!(github.verify(&headers(&[]), b"Hello, World!").is_err());
        let sha1 = "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(github
            .verify(&headers(&[("x-hub-signature-256", sha1)]), b"Hello, World!")
            .is_err());
        let bare = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(github
            .verify(&headers(&[("x-hub-signature-256", bare)]), b"Hello, World!")
            .is_err());
        assert!(github
            .verify(&headers(&[("x-hub-signature-256", good)]), b"Hello, World?")
            .is_err());
        assert!(github
            .verify(&headers(&[("x-hub-signature-256", "sha256=zz")]), b"x")
            .is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_and_empty_ones_sign_nothing() {
        let github = Provider::GitHub {
            secret: "top-secret-value".into(),
        };
        assert!(!format!("{github:?}").contains("top-secret-value"));
        let generic = Provider::Generic(Generic::new("/r", "/t").signed("X-Sig", "another-secret"));
        assert!(!format!("{generic:?}").contains("another-secret"));
        assert!(!Provider::GitHub {
            secret: String::new()
        }
        .is_signed());
    }

    fn ids(ids: &[&'static str]) -> Vec<Option<&'static str>> {
        ids.iter().map(|id| Some(*id)).collect()
    }

    #[tokio::test]
    async fn recent_events_forget_the_oldest() {
        let recent = Arc::new(RecentEvents::default());
        for i in 0..=REMEMBERED_EVENTS {
            let id = i.to_string();
            let (act, claim) = recent.claim(&[Some(id.as_str())]).await;
            assert_eq!(act, [true]);
            claim.commit();
        }
        let (act, _claim) = recent
            .claim(&[Some("0"), Some("1"), Some(&REMEMBERED_EVENTS.to_string())])
            .await;
        assert_eq!(act, [true, false, false]);
    }

    #[tokio::test]
    async fn a_claim_released_without_commit_can_be_claimed_again() {
        let recent = Arc::new(RecentEvents::default());
        let (act, claim) = recent.claim(&ids(&["a", "a", "b"])).await;
        assert_eq!(
            act,
            [true, false, true],
            "one id twice in an envelope acts once"
        );
        // A concurrent redelivery waits for the first request to end.
        let waiter = {
            let recent = recent.clone();
            tokio::spawn(async move { recent.claim(&ids(&["b", "c"])).await.0 })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "waits while b is being accepted");
        drop(claim);
        assert_eq!(
            waiter.await.expect("task"),
            [true, true],
            "refused: b is new again"
        );

        let (_, claim) = recent.claim(&ids(&["d"])).await;
        claim.commit();
        assert_eq!(recent.claim(&ids(&["d", "e"])).await.0, [false, true]);
    }
}
