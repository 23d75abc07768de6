//! Who may see the page: the login (a password hash or the API keys), the session cookie
//! and each session's CSRF token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
/// How long a failed login waits before its answer.
const FAILED_LOGIN_PAUSE: Duration = Duration::from_secs(1);
/// Checks allowed at once after a quiet spell, then one a second: the pace of guessing.
/// (A wrong guess keeps its turn; a right one gives it back.)
const CHECK_BURST: f64 = 10.0;
const CHECKS_PER_SECOND: f64 = 1.0;
/// Logins waiting for their check at most; more are refused at once.
const MAX_WAITING_LOGINS: usize = 32;
/// The Argon2 costs a configured hash may ask for: each login runs at that cost.
const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
const MAX_ARGON2_TIME: u32 = 10;
const MAX_ARGON2_LANES: u32 = 8;

/// Whether `hash` is an Argon2 hash in PHC form, at a cost a login can afford.
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
    let params = argon2::Params::try_from(&parsed)
        .map_err(|e| format!("its Argon2 parameters cannot be read: {e}"))?;
    if params.m_cost() > MAX_ARGON2_MEMORY_KIB
        || params.t_cost() > MAX_ARGON2_TIME
        || params.p_cost() > MAX_ARGON2_LANES
    {
        return Err(format!(
            "its cost (m={}, t={}, p={}) is more than a login may take (m={MAX_ARGON2_MEMORY_KIB}, t={MAX_ARGON2_TIME}, p={MAX_ARGON2_LANES}); make one with `hubhook ui-password`",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok(())
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
    password_hash: Option<Arc<str>>,
    /// Otherwise, the SHA-256 of each API key.
    keys: Vec<[u8; 32]>,
    /// One check at a time, in turn: its permit goes with the check, also into a blocking
    /// Argon2 run that outlives a client who hung up.
    gate: Arc<tokio::sync::Semaphore>,
    /// Logins waiting for the gate or holding it.
    waiting: AtomicUsize,
    /// The turns to check: tokens, and when they were last counted.
    bucket: Mutex<(f64, tokio::time::Instant)>,
}

/// Why a login did not log in.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// Not the password (or a key).
    Wrong,
    /// Too many logins waiting: try again shortly.
    Busy,
}

impl Login {
    pub(super) fn new(password_hash: Option<String>, keys: &[String]) -> Self {
        Self {
            password_hash: password_hash.map(Arc::from),
            keys: keys.iter().map(|k| Sha256::digest(k).into()).collect(),
            gate: Arc::new(tokio::sync::Semaphore::new(1)),
            waiting: AtomicUsize::new(0),
            bucket: Mutex::new((CHECK_BURST, tokio::time::Instant::now())),
        }
    }

    /// Checks `given`, every time: guessing is slowed, never answered without a check.
    /// Logins take turns (at most [`MAX_WAITING_LOGINS`] wait; more get [`Refused::Busy`]
    /// at once), each turn spends a token of a bucket that refills at one a second (a
    /// right password gives its token back), and a wrong one is answered after a second.
    pub(super) async fn check(&self, given: String) -> Result<(), Refused> {
        let ok = {
            let _queued = Queued::join(&self.waiting).ok_or(Refused::Busy)?;
            let turn = self
                .gate
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Refused::Busy)?;
            self.spend_token().await;
            self.matches(given, turn).await
        };
        if ok {
            self.give_back_token();
            return Ok(());
        }
        tokio::time::sleep(FAILED_LOGIN_PAUSE).await;
        Err(Refused::Wrong)
    }

    /// Waits for a token and spends it (before the check: a client who hangs up during
    /// it has spent its turn all the same).
    async fn spend_token(&self) {
        loop {
            let wait = {
                let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
                let now = tokio::time::Instant::now();
                let refill = now.duration_since(bucket.1).as_secs_f64() * CHECKS_PER_SECOND;
                *bucket = ((bucket.0 + refill).min(CHECK_BURST), now);
                if bucket.0 >= 1.0 {
                    bucket.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - bucket.0) / CHECKS_PER_SECOND)
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn give_back_token(&self) {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        bucket.0 = (bucket.0 + 1.0).min(CHECK_BURST);
    }

    /// The check itself; `turn` is held until it ends, also when the caller is dropped.
    async fn matches(&self, given: String, turn: tokio::sync::OwnedSemaphorePermit) -> bool {
        match &self.password_hash {
            Some(hash) => {
                let hash = hash.clone();
                tokio::task::spawn_blocking(move || {
                    let _turn = turn;
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
                let _turn = turn;
                let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
                let mut ok = subtle::Choice::from(0);
                for key in &self.keys {
                    ok |= key.ct_eq(&digest);
                }
                ok.into()
            }
        }
    }
}

/// A place in the line for the check, given up when dropped.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    /// A place, unless [`MAX_WAITING_LOGINS`] are taken.
    fn join(count: &'a AtomicUsize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_WAITING_LOGINS).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
            expires: Instant::now()
                .checked_add(self.ttl)
                .ok_or("the session's lifetime is out of range")?,
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
        assert_eq!(login.check("correct horse".into()).await, Ok(()));
        // With a password set, a key does not log in.
        assert_eq!(login.check("the-api-key".into()).await, Err(Refused::Wrong));
        let keys = Login::new(None, &["the-api-key".to_owned()]);
        assert_eq!(keys.check("the-api-key".into()).await, Ok(()));
        assert_eq!(keys.check("the-api-kez".into()).await, Err(Refused::Wrong));
    }

    #[tokio::test(start_paused = true)]
    async fn guessing_is_paced_and_a_right_key_still_gets_its_check() {
        let login = Arc::new(Login::new(None, &["the-api-key".to_owned()]));
        let start = tokio::time::Instant::now();
        // Thirty guesses at once: a burst of 10 is checked at once, the other 20 at one
        // a second.
        let guesses: Vec<_> = (0..30)
            .map(|i| {
                let login = login.clone();
                tokio::spawn(async move { login.check(format!("guess-{i}")).await })
            })
            .collect();
        for guess in guesses {
            assert_eq!(guess.await.expect("a guess"), Err(Refused::Wrong));
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(20), "{took:?}");
        assert!(took < Duration::from_secs(23), "{took:?}");
        // Right after the guesses, the key still logs in: it waits for a turn.
        assert_eq!(login.check("the-api-key".into()).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_waits_in_a_bounded_line() {
        let login = Arc::new(Login::new(None, &["the-api-key".to_owned()]));
        // Someone is being checked: the next ones wait in line, up to its length.
        let held = login.gate.clone().acquire_owned().await.expect("the gate");
        let waiting: Vec<_> = (0..MAX_WAITING_LOGINS + 5)
            .map(|i| {
                let login = login.clone();
                tokio::spawn(async move { login.check(format!("guess-{i}")).await })
            })
            .collect();
        tokio::task::yield_now().await;
        let mut busy = 0;
        let mut pending = Vec::new();
        for task in waiting {
            if task.is_finished() {
                assert_eq!(task.await.expect("a login"), Err(Refused::Busy));
                busy += 1;
            } else {
                pending.push(task);
            }
        }
        assert_eq!((busy, pending.len()), (5, MAX_WAITING_LOGINS));
        drop(held);
        for task in pending {
            assert_eq!(task.await.expect("a login"), Err(Refused::Wrong));
        }
        assert_eq!(
            login.waiting.load(Ordering::Acquire),
            0,
            "every place given back"
        );
    }

    #[tokio::test]
    async fn a_login_whose_client_hung_up_keeps_its_turn_until_its_check_ends() {
        // A hash slow enough (64 MiB, 3 passes) that its check outlives the hang-up.
        let params = argon2::Params::new(64 * 1024, 3, 1, None).expect("params");
        let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"sixteen byte salt").expect("salt");
        let hash = argon
            .hash_password(b"correct horse", &salt)
            .expect("hash")
            .to_string();
        let login = Arc::new(Login::new(Some(hash), &[]));
        let check = {
            let login = login.clone();
            tokio::spawn(async move { login.check("wrong".into()).await })
        };
        // Wait until it holds the gate, then drop it as hyper drops a request.
        while login.gate.available_permits() == 1 {
            tokio::task::yield_now().await;
        }
        check.abort();
        let dropped = check.await.expect_err("the login was dropped");
        assert!(dropped.is_cancelled());
        // The Argon2 run goes on, and keeps the gate: the next check waits for it.
        assert_eq!(login.gate.available_permits(), 0);
        assert_eq!(login.check("correct horse".into()).await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn right_logins_give_their_turn_back() {
        let login = Login::new(None, &["the-api-key".to_owned()]);
        let start = tokio::time::Instant::now();
        for _ in 0..(CHECK_BURST as usize + 5) {
            assert_eq!(login.check("the-api-key".into()).await, Ok(()));
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "no right login waited");
    }

    #[test]
    fn a_hash_that_costs_too_much_is_refused() {
        let costly = "$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$ZHVtbXloYXNoZHVtbXloYXNoZHVtbXloYXNoZHVtbXk";
        let e = check_password_hash(costly).expect_err("4 GiB a login");
        assert!(e.contains("m=4194304"), "{e}");
    }

    #[test]
    fn sessions_expire_and_end() {
        let sessions = Sessions::new(Duration::MAX);
        assert!(
            sessions.create().is_err(),
            "an out-of-range lifetime is an error"
        );
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
