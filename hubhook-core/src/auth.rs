//! Authentication: the policy an API key must meet ([`check_key`]), where a request
//! carries one and checking it in constant time, and the HMAC-SHA256 signatures GitHub
//! and signed generic hooks send.
//!
//! Docker Hub can only send a key in the URL (`?apikey=`), other clients may use
//! `Authorization: Bearer`. Both are compared as SHA-256 digests with `subtle`, against
//! every configured key without stopping at the first match, so neither the position of a
//! mismatching byte nor the length of a key nor which key matched shows in the timing.

use http::header::AUTHORIZATION;
use http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// The shortest API key [`check_key`] accepts. `hubhook keygen` makes 43 characters.
pub const MIN_KEY_LEN: usize = 16;

/// Why [`check_key`] refuses a key. Its `Display` says what to do instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyProblem {
    /// The docs' stand-in for a key (`<paste …>`, `...`), not a key.
    Placeholder,
    /// Shorter than [`MIN_KEY_LEN`].
    TooShort,
    /// Holds a character that is not safe in a URL's query, where Docker Hub sends it.
    NotUrlSafe,
}

impl std::fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Placeholder => f.write_str("still the placeholder (a value in <angle brackets>, or dots), not a key: put a key here; `hubhook keygen` makes one"),
            Self::TooShort => write!(f, "an API key must be at least {MIN_KEY_LEN} characters; `hubhook keygen` makes a good one"),
            Self::NotUrlSafe => f.write_str("an API key may hold only letters, digits, '-', '_', '.' and '~' (it travels in a URL); `hubhook keygen` makes one"),
        }
    }
}

impl std::error::Error for KeyProblem {}

/// The key policy, in one place: a key is not a placeholder, has at least [`MIN_KEY_LEN`]
/// characters, and only URL-safe ones (it travels in `?apikey=`). The service builder
/// refuses only empty keys; a configuration reader applies this.
///
/// ```
/// use hubhook_core::auth::{check_key, KeyProblem};
///
/// assert!(check_key("Zq3-Hk9vXw2Lr8Tn5Yb7Pd4Mf6Gc1Js0").is_ok());
/// assert_eq!(check_key("<paste the output of hubhook keygen>"), Err(KeyProblem::Placeholder));
/// assert_eq!(check_key("short"), Err(KeyProblem::TooShort));
/// assert_eq!(check_key("output of hubhook keygen"), Err(KeyProblem::NotUrlSafe));
/// ```
pub fn check_key(key: &str) -> Result<(), KeyProblem> {
    if is_placeholder(key) {
        return Err(KeyProblem::Placeholder);
    }
    if key.trim().len() < MIN_KEY_LEN {
        return Err(KeyProblem::TooShort);
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return Err(KeyProblem::NotUrlSafe);
    }
    Ok(())
}

/// Whether a key or secret is the docs' stand-in for one the reader supplies: a value in
/// angle brackets (`<the secret set on GitHub>`) or only dots (`...`).
pub fn is_placeholder(value: &str) -> bool {
    let value = value.trim();
    (value.starts_with('<') && value.ends_with('>'))
        || (!value.is_empty() && value.chars().all(|c| c == '.' || c == '…'))
}

/// Whether a key that passes [`check_key`] still reads as words (`replace-me-with-a-key`),
/// which is easy to guess: worth a warning.
pub fn reads_as_words(key: &str) -> bool {
    let words = key.split(['-', '_', '.', '~']).collect::<Vec<_>>();
    words.len() >= 3
        && words
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
}

/// Whether `header` (the value of a signature header) is the HMAC-SHA256 of `body` under
/// `secret`, as hex, after `sha256=` (required when `prefixed`, as GitHub sends it;
/// another algorithm's prefix never matches). Compared in constant time.
pub(crate) fn signature_matches(
    secret: &str,
    header: Option<&str>,
    prefixed: bool,
    body: &[u8],
) -> bool {
    use hmac::{Hmac, Mac};
    let Some(value) = header else {
        return false;
    };
    let hex = match value.strip_prefix("sha256=") {
        Some(hex) => hex,
        None if prefixed || value.contains('=') => return false,
        None => value,
    };
    let Some(given) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&given).is_ok()
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

/// The set of keys that authenticate a hook. Several may be valid at once, for rotation.
#[derive(Clone, Default)]
pub(crate) struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys, not even their digests.
        write!(f, "ApiKeys({} keys)", self.digests.len())
    }
}

impl ApiKeys {
    pub(crate) fn add(&mut self, key: &[u8]) {
        self.digests.push(Sha256::digest(key).into());
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether the request carries one of the keys, in the query or as a bearer token.
    pub(crate) fn allows(&self, parts: &Parts) -> bool {
        let mut ok = Choice::from(0);
        for candidate in candidates(parts) {
            let digest: [u8; 32] = Sha256::digest(&candidate).into();
            for key in &self.digests {
                ok |= key.ct_eq(&digest);
            }
        }
        ok.into()
    }
}

/// Every key the request offers: each `apikey` query parameter and a bearer token.
fn candidates(parts: &Parts) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    if let Some(query) = parts.uri.query() {
        for pair in query.split('&') {
            if let Some(value) = pair.strip_prefix("apikey=") {
                found.push(percent_decode(value));
            }
        }
    }
    if let Some(value) = parts.headers.get(AUTHORIZATION) {
        let value = value.as_bytes();
        if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
            found.push(value[7..].trim_ascii().to_vec());
        }
    }
    // A request stuffed with thousands of keys would buy thousands of hashes; a few are
    // all a legitimate client ever sends.
    found.truncate(4);
    found
}

/// Decodes `%XX` escapes and `+` in a query value; malformed escapes stay as they are.
fn percent_decode(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, auth: Option<&str>) -> Parts {
        let mut req = http::Request::builder().uri(uri);
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        req.body(()).expect("valid request").into_parts().0
    }

    fn keys(list: &[&str]) -> ApiKeys {
        let mut k = ApiKeys::default();
        for key in list {
            k.add(key.as_bytes());
        }
        k
    }

    #[test]
    fn query_and_bearer() {
        let k = keys(&["old-key", "new-key"]);
        assert!(k.allows(&parts("/hook?apikey=old-key", None)));
        assert!(k.allows(&parts("/hook?x=1&apikey=new-key", None)));
        assert!(k.allows(&parts("/hook", Some("Bearer new-key"))));
        assert!(k.allows(&parts("/hook", Some("bearer  old-key "))));
        assert!(!k.allows(&parts("/hook?apikey=wrong", None)));
        assert!(!k.allows(&parts("/hook?apikey=", None)));
        assert!(!k.allows(&parts("/hook?apikey=new-ke", None)));
        assert!(!k.allows(&parts("/hook", Some("Basic new-key"))));
        assert!(!k.allows(&parts("/hook", None)));
        assert!(!keys(&[]).allows(&parts("/hook?apikey=", None)));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c"), b"a/b c");
        assert_eq!(percent_decode("100%"), b"100%");
        assert_eq!(percent_decode("%zz%4"), b"%zz%4");
        let k = keys(&["a/b"]);
        assert!(k.allows(&parts("/h?apikey=a%2fb", None)));
    }
}
