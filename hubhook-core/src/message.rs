//! `HubMessage`: the Docker Hub webhook payload, the shape every provider's events map
//! onto, validated: the repository name and the tag must follow the image-reference
//! grammar, because everything downstream acts on them. Docker Hub's own wire format is
//! read in `provider::dockerhub`.

use crate::reference::split_registry;
use serde::Serialize;
use serde_json::Value;

use crate::reference::{self, Digest, Name, ReferenceError, Tag};

/// Docker Hub's documented example webhook payload, as its documentation shows it.
///
/// Useful to test a hook by hand (`hubhook send` posts it) and in tests.
pub const EXAMPLE_PAYLOAD: &str = r#"{
  "callback_url": "https://registry.hub.docker.com/u/svendowideit/testhook/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/",
  "push_data": { "pushed_at": 1417566161, "pusher": "trustedbuilder", "tag": "latest" },
  "repository": {
    "comment_count": 0, "date_created": 1417494799, "description": "",
    "dockerfile": "FROM busybox\n",
    "full_description": "Docker Hub based automated build from a GitHub repo",
    "is_official": false, "is_private": true, "is_trusted": true,
    "name": "testhook", "namespace": "svendowideit", "owner": "svendowideit",
    "repo_name": "svendowideit/testhook",
    "repo_url": "https://registry.hub.docker.com/u/svendowideit/testhook/",
    "star_count": 0, "status": "Active"
  }
}
"#;

/// The source name of messages decoded from a Docker Hub payload.
pub const SOURCE_DOCKERHUB: &str = "dockerhub";

/// One "an image was pushed" event.
///
/// The shape is Docker Hub's webhook payload; other registries' events map onto it and add
/// what they know ([`source`](Self::source), [`registry`](Self::registry),
/// [`digest`](Self::digest)). Serializing gives the Docker Hub shape plus those fields.
///
/// A message is valid by construction: every way to make one ([`from_json`](Self::from_json),
/// [`new`](Self::new), the `with_*` methods, the providers) checks the repository, the tag
/// and the digest against the image-reference grammar, and its fields are read through
/// accessors, so no handler needs to check them again.
///
/// ```
/// use hubhook_core::HubMessage;
///
/// let body = br#"{"push_data":{"tag":"v2","pushed_at":1.417566161e9},
///                 "repository":{"repo_name":"acme/site","star_count":"3"}}"#;
/// let msg = HubMessage::from_json(body)?;
/// assert_eq!(msg.repo(), "acme/site");
/// assert_eq!(msg.tag(), "v2");
/// assert_eq!(msg.image(), "acme/site:v2");
/// assert_eq!(msg.pushed_at(), Some(1417566161));
/// # Ok::<(), hubhook_core::MessageError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HubMessage {
    /// Docker Hub's legacy callback URL, if the payload carried one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) callback_url: Option<String>,
    /// What was pushed, when and by whom.
    pub(crate) push_data: PushData,
    /// The repository that was pushed to.
    pub(crate) repository: Repository,
    /// Which provider produced this message (`"dockerhub"` for Docker Hub payloads).
    pub(crate) source: String,
    /// The registry host (`"127.0.0.1:5000"`, `"ghcr.io"`), or `None` for Docker Hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) registry: Option<String>,
    /// The pushed manifest's digest (`sha256:...`), when the provider knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) digest: Option<Digest>,
    #[serde(skip)]
    pub(crate) raw: String,
}

/// The `push_data` object of the payload.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PushData {
    /// When the push happened, in seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pushed_at: Option<i64>,
    /// Who pushed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pusher: Option<String>,
    /// The pushed tag.
    pub tag: Tag,
    /// Image digests, as older payloads listed them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
}

/// The `repository` object of the payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Repository {
    /// Short name (`"testhook"`).
    pub name: String,
    /// Namespace (`"svendowideit"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Owner account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Full name (`"svendowideit/testhook"`).
    pub repo_name: Name,
    /// The repository's web page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo_url: Option<String>,
    /// Whether the repository is private.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_private: Option<bool>,
    /// Whether it is an official image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_official: Option<bool>,
    /// Whether it is an automated ("trusted") build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_trusted: Option<bool>,
    /// Repository status (`"Active"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Short description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Creation time, in seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date_created: Option<i64>,
    /// Number of stars.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub star_count: Option<u64>,
    /// Number of comments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment_count: Option<u64>,
}

impl Repository {
    /// A repository known only by its names, as a message built by hand has it.
    fn named(name: String, namespace: Option<String>, repo_name: Name) -> Self {
        Self {
            name,
            namespace,
            owner: None,
            repo_name,
            repo_url: None,
            is_private: None,
            is_official: None,
            is_trusted: None,
            status: None,
            description: None,
            date_created: None,
            star_count: None,
            comment_count: None,
        }
    }
}

/// Why a body could not become a [`HubMessage`]. Answered with HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The body is not JSON at all.
    #[error("body is not valid JSON: {0}")]
    Json(String),
    /// The JSON is not an object with the expected parts.
    #[error("payload is not a Docker Hub webhook: {0}")]
    Shape(&'static str),
    /// The repository name breaks the image-reference grammar.
    #[error("repository name {name:?} {reason}")]
    Repository {
        /// The offending value, truncated to 64 characters.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The tag breaks the image-reference grammar.
    #[error("tag {tag:?} {reason}")]
    Tag {
        /// The offending value, truncated to 64 characters.
        tag: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The digest is not `algorithm:hex`.
    #[error("digest {digest:?} {reason}")]
    Digest {
        /// The offending value, truncated to 80 characters.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl HubMessage {
    /// A stand-in for a stored message that no longer decodes (`unreadable:latest`), so
    /// that its delivery can still settle; crate-private, never a push anyone made.
    pub(crate) fn unreadable() -> Self {
        Self {
            callback_url: None,
            push_data: PushData::default(),
            repository: Repository::named("unreadable".to_owned(), None, Name::known("unreadable")),
            source: String::new(),
            registry: None,
            digest: None,
            raw: String::new(),
        }
    }

    /// Decodes what serializing a `HubMessage` produced: the Docker Hub shape plus
    /// `source`, `registry` and `digest`, validated like any message.
    ///
    /// For messages that crossed a boundary hubhook itself controls (a plugin receives its
    /// messages this way). Webhook bodies go through [`from_json`](Self::from_json), which
    /// ignores those three fields: a payload cannot choose a digest or claim a source.
    pub fn from_serialized(json: &[u8]) -> Result<Self, MessageError> {
        let mut msg = Self::from_json(json)?;
        let value: Value =
            serde_json::from_slice(json).map_err(|e| MessageError::Json(e.to_string()))?;
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        if let Some(source) = text("source") {
            msg.source = source;
        }
        if let Some(registry) = text("registry") {
            msg.registry = Some(registry);
        }
        msg.digest = text("digest").as_deref().map(digest_of).transpose()?;
        msg.validate()?;
        Ok(msg)
    }

    /// Builds a message for `repository:tag` from another source, validated like a decoded
    /// one. Add what the source knows with the `with_*` methods.
    ///
    /// ```
    /// let msg = hubhook_core::HubMessage::new("127.0.0.1:5000/site", "v2")?;
    /// assert_eq!(msg.image(), "127.0.0.1:5000/site:v2");
    /// # Ok::<(), hubhook_core::MessageError>(())
    /// ```
    pub fn new(repository: &str, tag: &str) -> Result<Self, MessageError> {
        let (registry, path) = split_registry(repository);
        let name = path.rsplit('/').next().unwrap_or(path).to_owned();
        let namespace = path.rsplit_once('/').map(|(ns, _)| ns.to_owned());
        let repo_name = name_of(repository, path)?;
        let msg = HubMessage {
            callback_url: None,
            push_data: PushData {
                tag: tag_of(tag)?,
                ..PushData::default()
            },
            repository: Repository::named(name, namespace, repo_name),
            source: "custom".to_owned(),
            registry: registry.map(str::to_owned),
            digest: None,
            raw: String::new(),
        };
        msg.validate()?;
        Ok(msg)
    }

    /// Checks the name with its registry host against the image-reference grammar (the
    /// repository, tag and digest are checked as they are made: their types say so).
    pub(crate) fn validate(&self) -> Result<(), MessageError> {
        reference::check_name(&self.full_name()).map_err(|e| repo_error(&self.full_name(), e))
    }

    /// The repository path as the provider names it (`"svendowideit/testhook"`), without
    /// the registry host.
    pub fn repo(&self) -> &Name {
        &self.repository.repo_name
    }

    /// The pushed tag (`"latest"`).
    pub fn tag(&self) -> &Tag {
        &self.push_data.tag
    }

    /// The pullable reference: `[registry/]repo:tag`, or `[registry/]repo@digest` when
    /// the digest is known.
    pub fn image(&self) -> String {
        match &self.digest {
            Some(digest) => format!("{}@{digest}", self.full_name()),
            None => format!("{}:{}", self.full_name(), self.push_data.tag),
        }
    }

    /// The JSON body this message was decoded from (empty for messages built with
    /// [`new`](Self::new)).
    pub fn raw_json(&self) -> &str {
        &self.raw
    }

    /// Keeps `body` as the raw JSON this message came from.
    pub(crate) fn set_raw(&mut self, body: &[u8]) {
        self.raw = String::from_utf8_lossy(body).into_owned();
    }

    /// The same message, pushed as the manifest `digest` (`sha256:…`); refused unless it
    /// is `algorithm:hex`.
    pub fn with_digest(mut self, digest: &str) -> Result<Self, MessageError> {
        self.digest = Some(digest_of(digest)?);
        Ok(self)
    }

    /// The same message, pushed by `pusher`.
    pub fn with_pusher(mut self, pusher: impl Into<String>) -> Self {
        self.push_data.pusher = Some(pusher.into());
        self
    }

    /// The same message, pushed at `seconds` since the Unix epoch.
    pub fn with_pushed_at(mut self, seconds: i64) -> Self {
        self.push_data.pushed_at = Some(seconds);
        self
    }

    /// Docker Hub's legacy callback URL, if the payload carried one.
    pub fn callback_url(&self) -> Option<&str> {
        self.callback_url.as_deref()
    }

    /// What was pushed, when and by whom, as the payload said.
    pub fn push_data(&self) -> &PushData {
        &self.push_data
    }

    /// The repository that was pushed to, as the payload said.
    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// Which provider produced this message: `"dockerhub"`, `"registry"`, `"github"`,
    /// `"generic"`, or `"custom"` for one built with [`new`](Self::new).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The registry host (`"127.0.0.1:5000"`, `"ghcr.io"`), or `None` for Docker Hub.
    pub fn registry(&self) -> Option<&str> {
        self.registry.as_deref()
    }

    /// The pushed manifest's digest (`sha256:…`), when the provider knows it.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// Who pushed, when the provider says.
    pub fn pusher(&self) -> Option<&str> {
        self.push_data.pusher.as_deref()
    }

    /// When the push happened, in seconds since the Unix epoch, when the provider says.
    pub fn pushed_at(&self) -> Option<i64> {
        self.push_data.pushed_at
    }

    /// The repository as `docker pull` names it: the registry host in front when known
    /// (`localhost:5000/team/app`), else the repository alone (`acme/site`).
    pub fn full_name(&self) -> String {
        match &self.registry {
            Some(host) => format!("{host}/{}", self.repository.repo_name),
            None => self.repository.repo_name.to_string(),
        }
    }
}

/// `path` as the message's repository, once `full` (the path with its registry host, if
/// any) passes the grammar.
pub(crate) fn name_of(full: &str, path: &str) -> Result<Name, MessageError> {
    reference::check_name(full).map_err(|e| repo_error(full, e))?;
    Name::new(path).map_err(|e| repo_error(full, e))
}

/// `tag` as the message's tag, when the grammar allows it.
pub(crate) fn tag_of(tag: &str) -> Result<Tag, MessageError> {
    Tag::new(tag).map_err(|reason| MessageError::Tag {
        tag: truncate(tag, 64),
        reason: reason.to_string(),
    })
}

/// `digest` as the message's digest, when it is `algorithm:hex`.
pub(crate) fn digest_of(digest: &str) -> Result<Digest, MessageError> {
    Digest::new(digest).map_err(|reason| MessageError::Digest {
        digest: truncate(digest, 80),
        reason: reason.to_string(),
    })
}

fn repo_error(name: &str, reason: ReferenceError) -> MessageError {
    MessageError::Repository {
        name: truncate(name, 64),
        reason: reason.to_string(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_registry_only_takes_hosts() {
        assert_eq!(split_registry("a/b"), (None, "a/b"));
        assert_eq!(split_registry("ghcr.io/a/b"), (Some("ghcr.io"), "a/b"));
        assert_eq!(
            split_registry("localhost:5000/a"),
            (Some("localhost:5000"), "a")
        );
    }

    #[test]
    fn a_registry_host_in_repo_name_is_refused() {
        // Docker Hub never sends one; taking it would let a payload choose the registry.
        for name in [
            "127.0.0.1:5000/team/site",
            "evil.example/acme/site",
            "localhost/a/b",
        ] {
            let body =
                format!(r#"{{"push_data":{{"tag":"v2"}},"repository":{{"repo_name":"{name}"}}}}"#);
            let e = HubMessage::from_json(body.as_bytes()).expect_err(name);
            assert!(e.to_string().contains("registry host"), "{name}: {e}");
        }
    }

    #[test]
    fn serialized_messages_round_trip() {
        let mut msg = HubMessage::new("127.0.0.1:5000/team/site", "v2").expect("valid");
        msg.digest = Some(digest_of(&format!("sha256:{}", "a".repeat(64))).expect("digest"));
        msg.push_data.pusher = Some("alice".into());
        let json = serde_json::to_vec(&msg).expect("serializes");
        let back = HubMessage::from_serialized(&json).expect("decodes");
        assert_eq!(back.image(), msg.image());
        assert_eq!(back.source, "custom");
        assert_eq!(back.push_data.pusher.as_deref(), Some("alice"));
        // A webhook body cannot pick a digest.
        assert_eq!(HubMessage::from_json(&json).expect("decodes").digest, None);
    }

    #[test]
    fn truncate_counts_characters() {
        assert_eq!(truncate("ééé", 2), "éé...");
        assert_eq!(truncate("ab", 2), "ab");
    }
}
