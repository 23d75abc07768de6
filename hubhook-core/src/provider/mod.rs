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

mod dedup;
mod dockerhub;
mod generic;
mod github;
mod registry;

use http::HeaderMap;
use serde_json::Value;

pub(crate) use dedup::{Claim, RecentEvents};

use crate::message::{MessageError, SOURCE_DOCKERHUB};
use crate::HubMessage;

/// How many registry event ids a hook remembers to act on each once.
pub(super) const REMEMBERED_EVENTS: usize = 4096;

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
        let value = headers.get(header).and_then(|v| v.to_str().ok());
        if crate::auth::signature_matches(secret, value, prefixed, body) {
            Ok(())
        } else {
            Err(Refusal::Unauthorized)
        }
    }

    /// Turns a body into messages (or a reason to ignore it). `registry` is the host the
    /// hook's images live on, from configuration: a registry event names it, never
    /// chooses it.
    pub(crate) fn decode(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        registry: Option<&str>,
    ) -> Result<Decoded, Refusal> {
        match self {
            Self::DockerHub => Ok(Decoded::Messages(vec![(
                HubMessage::from_json(body)?,
                None,
            )])),
            Self::Registry => registry::decode(body, registry),
            Self::GitHub { .. } => github::decode(headers, body),
            Self::Generic(g) => generic::decode(g, body),
        }
    }
}

pub(super) fn parse(body: &[u8]) -> Result<Value, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| Refusal::BadRequest(format!("body is not valid JSON: {e}")))
}

pub(super) fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// What a provider's payload says about one push, before it is validated.
pub(super) struct Push<'a> {
    pub(super) source: &'static str,
    pub(super) registry: Option<&'a str>,
    pub(super) repository: &'a str,
    pub(super) tag: &'a str,
    pub(super) digest: Option<&'a str>,
    pub(super) pusher: Option<&'a str>,
    pub(super) pushed_at: Option<i64>,
}

impl Push<'_> {
    /// The message for this push (a registry host in front is kept apart), validated,
    /// holding `raw` as its JSON.
    pub(super) fn message(self, raw: &[u8]) -> Result<HubMessage, Refusal> {
        let full = match self.registry {
            Some(host) => format!("{host}/{}", self.repository),
            None => self.repository.to_owned(),
        };
        let mut msg = HubMessage::new(&full, self.tag)?;
        msg.source = self.source.to_owned();
        msg.digest = self.digest.map(crate::message::digest_of).transpose()?;
        msg.push_data.pusher = self.pusher.map(str::to_owned);
        msg.push_data.pushed_at = self.pushed_at;
        msg.set_raw(raw);
        msg.validate()?;
        Ok(msg)
    }
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
}
