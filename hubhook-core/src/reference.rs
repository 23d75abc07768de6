//! The image-reference grammar of the Distribution project, checked by hand.
//!
//! Every repository and tag that arrives in a payload passes through here before it is
//! stored in a [`HubMessage`](crate::HubMessage), so later code (a `docker` argv, a log
//! line, an environment variable) only ever sees values this grammar allows: no spaces,
//! no shell metacharacters, nothing that starts with `-`.
//!
//! Public so that handlers can hold their own configuration to the same rules.
//!
//! ```text
//! name      := [domain '/'] path-component ('/' path-component)*
//! domain    := domain-component ('.' domain-component)* [':' port]     (or "localhost")
//! path-component := [a-z0-9]+ (separator [a-z0-9]+)*
//! separator := '.' | '_' | '__' | '-'+
//! tag       := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest    := algorithm ':' hex   (sha256: 64 lowercase hex digits)
//! ```

/// The longest repository name (domain included) the grammar allows.
pub const MAX_NAME_LEN: usize = 255;
/// The longest tag the grammar allows.
pub const MAX_TAG_LEN: usize = 128;

/// Why a value is not a valid part of an image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReferenceError {
    /// The value is empty.
    Empty,
    /// The value is longer than the grammar allows (the limit is given).
    TooLong(usize),
    /// A repository name with a part outside the grammar.
    BadComponent,
    /// A tag outside the grammar.
    BadTag,
    /// A digest that is not `sha256:` or `sha512:` with the right number of hex digits.
    BadDigest,
}

impl std::error::Error for ReferenceError {}

impl std::fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("is empty"),
            Self::TooLong(max) => write!(f, "is longer than {max} characters"),
            Self::BadComponent => f.write_str(
                "is not a repository name (lowercase letters, digits and single separators '.', '_', '__', '-' between '/'-separated parts)",
            ),
            Self::BadTag => f.write_str(
                "is not a tag (letters, digits, '_', '.', '-', starting with a letter, digit or '_')",
            ),
            Self::BadDigest => f.write_str("is not a digest (sha256: followed by 64 hex digits)"),
        }
    }
}

/// Splits a registry host off the front of a repository name, as Distribution does: the
/// first component is a host only if more components follow and it looks like one (holds
/// a `.` or a `:`, or is `localhost`). This is the one place that rule is written.
///
/// ```
/// use hubhook_core::reference::split_registry;
///
/// assert_eq!(split_registry("localhost:5000/team/app"), (Some("localhost:5000"), "team/app"));
/// assert_eq!(split_registry("ghcr.io/acme/site"), (Some("ghcr.io"), "acme/site"));
/// assert_eq!(split_registry("acme/site"), (None, "acme/site"));
/// assert_eq!(split_registry("registry.example.com"), (None, "registry.example.com"));
/// ```
pub fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// Checks a repository name, with or without a registry domain in front.
pub fn check_name(name: &str) -> Result<(), ReferenceError> {
    if name.is_empty() {
        return Err(ReferenceError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ReferenceError::TooLong(MAX_NAME_LEN));
    }
    let (host, path) = split_registry(name);
    if host.is_some_and(|host| !is_domain(host)) {
        return Err(ReferenceError::BadComponent);
    }
    if path.split('/').all(is_path_component) {
        Ok(())
    } else {
        Err(ReferenceError::BadComponent)
    }
}

/// Checks a tag.
pub fn check_tag(tag: &str) -> Result<(), ReferenceError> {
    if tag.is_empty() {
        return Err(ReferenceError::Empty);
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(ReferenceError::TooLong(MAX_TAG_LEN));
    }
    let bytes = tag.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    if word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| word(b) || b == b'.' || b == b'-')
    {
        Ok(())
    } else {
        Err(ReferenceError::BadTag)
    }
}

/// Checks a content digest such as `sha256:<64 hex>`.
pub fn check_digest(digest: &str) -> Result<(), ReferenceError> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(ReferenceError::BadDigest);
    };
    let hex_ok = |len: usize| {
        hex.len() == len
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = match algorithm {
        "sha256" => hex_ok(64),
        "sha512" => hex_ok(128),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::BadDigest)
    }
}

fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        let sep = b[i];
        while i < b.len() && b[i] == sep {
            i += 1;
        }
        let run = i - start;
        let ok = match sep {
            b'.' => run == 1,
            b'_' => run <= 2,
            b'-' => true,
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn is_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "nginx",
            "library/nginx",
            "svendowideit/testhook",
            "127.0.0.1:5000/site",
            "localhost/a/b",
            "ghcr.io/org/app-name",
            "a__b/c.d/e---f",
            "registry.example.com:443/team/app",
        ] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Upper/case",
            "latest; touch pwned",
            "$(id)",
            "`id`",
            "--privileged",
            "-v/:/host",
            "a\nb",
            "a//b",
            "a/",
            "/a",
            "a..b",
            "a___b",
            "a b",
            "bad_domain:port/x",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            check_name(&"a".repeat(300)),
            Err(ReferenceError::TooLong(MAX_NAME_LEN))
        );
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1", "1.2.3", "_x", "A-b.C_d", &"t".repeat(128)] {
            assert_eq!(check_tag(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "latest; touch pwned",
            "$(id)",
            "`id`",
            "--privileged",
            "v1\n",
            "a/b",
            "a:b",
            &"t".repeat(129),
        ] {
            assert!(check_tag(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn digests() {
        let hex = "a".repeat(64);
        assert_eq!(check_digest(&format!("sha256:{hex}")), Ok(()));
        assert!(check_digest(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(check_digest("sha256:abc").is_err());
        assert!(check_digest(&format!("md5:{hex}")).is_err());
        assert!(check_digest(&hex).is_err());
    }
}

/// A string newtype that only the grammar's `check` lets in.
macro_rules! checked {
    ($(#[$doc:meta])* $name:ident, $check:path, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("Checks `value` as ", $what, ".")]
            pub fn new(value: &str) -> Result<Self, ReferenceError> {
                $check(value)?;
                Ok(Self(value.to_owned()))
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// A value known to pass the grammar (a literal in this crate).
            #[allow(dead_code)]
            pub(crate) fn known(value: &'static str) -> Self {
                debug_assert!($check(value).is_ok(), "{value:?}");
                Self(value.to_owned())
            }
        }

        impl std::str::FromStr for $name {
            type Err = ReferenceError;

            fn from_str(value: &str) -> Result<Self, ReferenceError> {
                Self::new(value)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

checked!(
    /// A repository name the grammar allows (`acme/site`, `127.0.0.1:5000/site`): what
    /// [`HubMessage::repo`](crate::HubMessage::repo) returns, so no handler checks it again.
    ///
    /// ```
    /// use hubhook_core::reference::Name;
    ///
    /// assert_eq!(Name::new("acme/site")?, "acme/site");
    /// assert!(Name::new("acme/site; rm -rf /").is_err());
    /// # Ok::<(), hubhook_core::reference::ReferenceError>(())
    /// ```
    Name,
    check_name,
    "a repository name"
);

checked!(
    /// A tag the grammar allows (`latest`, `v1.2.3`): what
    /// [`HubMessage::tag`](crate::HubMessage::tag) returns. It never starts with `-`, so
    /// it can never become a flag.
    ///
    /// ```
    /// use hubhook_core::reference::Tag;
    ///
    /// assert_eq!(Tag::new("v2")?.as_str(), "v2");
    /// assert!(Tag::new("--privileged").is_err());
    /// # Ok::<(), hubhook_core::reference::ReferenceError>(())
    /// ```
    Tag,
    check_tag,
    "a tag"
);

checked!(
    /// A content digest the grammar allows (`sha256:` and 64 hex digits): what
    /// [`HubMessage::digest`](crate::HubMessage::digest) returns.
    Digest,
    check_digest,
    "a digest"
);

impl Default for Tag {
    /// `latest`, the tag Docker means when none is written.
    fn default() -> Self {
        Self("latest".to_owned())
    }
}
