//! Who may see the page: the login (a password hash or the API keys), the session cookie
//! and each session's CSRF token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub(super) const COOKIE: &str = "hubhook_session";
/// Sessions kept at most; the oldest gives way to a new login past this.
const MAX_SESSIONS: usize = 1024;
/// How long a failed login holds the next one back: at most one guess a second.
const FAILED_LOGIN_PAUSE: Duration = Duration::from_secs(1);

/// Whether `hash` is an Argon2 hash in PHC form that a login can be checked against.
pub(crate) fn check_password_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| {
        format!("not a password hash in PHC form ({e}); make one with `hubhook ui-password`")
    })?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "{} hashes are not read here; make an Argon2 hash with `hubhook ui-password`",
            parsed.algorithm
        ));
    }
    Argon2::default()
        .verify_password(b"", &parsed)
        .or_else(|e| match e {
            argon2::password_hash::Error::Password => Ok(()),
            other => Err(format!("cannot be checked against: {other}")),
        })
}

/// An Argon2id hash of `password` in PHC form, with a random salt.
pub(crate) fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| format!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

/// What a login is checked against.
pub(super) struct Login {
    /// The configured Argon2 hash; when set, only the password logs in.
    password_hash: Option<String>,
    /// Otherwise, the SHA-256 of each API key.
    keys: Vec<[u8; 32]>,
    /// Held through each check, and for a pause after a failed one.
    gate: tokio::sync::Mutex<()>,
}

impl Login {
    pub(super) fn new(password_hash: Option<String>, keys: &[String]) -> Self {
        Self {
            password_hash,
            keys: keys.iter().map(|k| Sha256::digest(k).into()).collect(),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether `given` logs in. One check at a time, and a failed one pauses the next
    /// for a second: guessing runs at one try a second, whatever the number of clients.
    pub(super) async fn check(&self, given: String) -> bool {
        let _turn = self.gate.lock().await;
        let ok = match &self.password_hash {
            Some(hash) => {
                let hash = hash.clone();
                tokio::task::spawn_blocking(move || {
                    PasswordHash::new(&hash).is_ok_and(|parsed| {
                        Argon2::default()
                            .verify_password(given.as_bytes(), &parsed)
                            .is_ok()
                    })
                })
                .await
                .unwrap_or(false)
            }
            None => {
                let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
                let mut ok = subtle::Choice::from(0);
                for key in &self.keys {
                    ok |= key.ct_eq(&digest);
                }
                ok.into()
            }
        };
        if !ok {
            tokio::time::sleep(FAILED_LOGIN_PAUSE).await;
        }
        ok
    }
}

/// A logged-in browser.
#[derive(Clone)]
pub(super) struct Session {
    /// The token every form that changes something carries.
    pub(super) csrf: String,
    expires: Instant,
}

impl Session {
    /// Whether `given` is this session's CSRF token (compared in constant time).
    pub(super) fn csrf_matches(&self, given: &str) -> bool {
        given.len() == self.csrf.len() && bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// The sessions, by the SHA-256 of their cookie (the cookie itself is kept nowhere).
pub(super) struct Sessions {
    ttl: Duration,
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lasts.
    pub(super) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new session; returns its cookie value.
    pub(super) fn create(&self) -> Result<String, String> {
        let token = random_token()?;
        let session = Session {
            csrf: random_token()?,
            expires: Instant::now() + self.ttl,
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(Sha256::digest(token.as_bytes()).into(), session);
        Ok(token)
    }

    /// The session a request's cookie names, if it is live.
    pub(super) fn find(&self, cookie: &str) -> Option<Session> {
        let key: [u8; 32] = Sha256::digest(cookie.as_bytes()).into();
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&key)
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }

    /// Ends the session a cookie names.
    pub(super) fn remove(&self, cookie: &str) {
        let key: [u8; 32] = Sha256::digest(cookie.as_bytes()).into();
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
}

/// 256 random bits, URL-safe base64.
fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub(super) fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_hash_checks_and_others_are_refused() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        check_password_hash(&hash).expect("a made hash is readable");
        assert!(check_password_hash("hunter2").is_err());
        let bcrypt = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
        assert!(check_password_hash(bcrypt).is_err());
    }

    #[tokio::test]
    async fn the_password_or_a_key_logs_in() {
        let hash = hash_password("correct horse").expect("hash");
        let login = Login::new(Some(hash), &["the-api-key".to_owned()]);
        assert!(login.check("correct horse".into()).await);
        // With a password set, a key does not log in.
        assert!(!login.check("the-api-key".into()).await);
        let keys = Login::new(None, &["the-api-key".to_owned()]);
        assert!(keys.check("the-api-key".into()).await);
        assert!(!keys.check("the-api-kez".into()).await);
    }

    #[test]
    fn sessions_expire_and_end() {
        let sessions = Sessions::new(Duration::from_millis(0));
        let token = sessions.create().expect("session");
        assert!(sessions.find(&token).is_none(), "expired at once");
        let sessions = Sessions::new(Duration::from_secs(60));
        let token = sessions.create().expect("session");
        let session = sessions.find(&token).expect("live");
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches("x"));
        sessions.remove(&token);
        assert!(sessions.find(&token).is_none());
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            "other=1; hubhook_session=abc".parse().expect("header"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
