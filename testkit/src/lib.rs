//! Test helpers shared by hubhook's integration tests: temporary directories, waiting for
//! what sends no event ([`eventually`]), a test CA ([`TestCa`]), the real Docker engine,
//! test images built with no pull, a real registry on 127.0.0.1, and a real browser
//! ([`Browser`], headless Chromium).
//! Everything they create carries the `hubhook-test` prefix and is removed on drop.

mod browser;
mod ca;
mod engine;
mod http;
mod nginx;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use browser::Browser;
pub use ca::TestCa;
pub use engine::*;
pub use http::exchange;
pub use nginx::Nginx;

/// How often [`eventually`] and [`eventually_async`] look again.
const POLL: Duration = Duration::from_millis(10);

/// What a wait was for, said when it times out: a fixed text, or a closure run only then
/// (to show the output gathered so far).
pub trait Describe {
    /// The text for the panic message.
    fn describe(&self) -> String;
}

impl Describe for &str {
    fn describe(&self) -> String {
        (*self).to_owned()
    }
}

impl Describe for String {
    fn describe(&self) -> String {
        self.clone()
    }
}

impl<F: Fn() -> String> Describe for F {
    fn describe(&self) -> String {
        self()
    }
}

/// Waits until `check` gives `Some`, looking every 10 ms, and returns what it gave;
/// panics with `what` after `limit`. The one place the tests wait by polling, for what
/// sends no event: a file a child process writes, a container's state, a page that
/// changes, a line in another process's log.
pub fn eventually<T>(limit: Duration, what: impl Describe, check: impl FnMut() -> Option<T>) -> T {
    match within(limit, check) {
        Some(found) => found,
        None => panic!("not within {limit:?}: {}", what.describe()),
    }
}

/// [`eventually`] without the panic: `None` when `check` gave nothing within `limit`
/// (for a cleanup that must not panic, or a probe whose "no" is an answer).
pub fn within<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// [`eventually`] for async checks, waiting on the tokio timer.
pub async fn eventually_async<T, F>(
    limit: Duration,
    what: impl Describe,
    check: impl FnMut() -> F,
) -> T
where
    F: Future<Output = Option<T>>,
{
    match within_async(limit, check).await {
        Some(found) => found,
        None => panic!("not within {limit:?}: {}", what.describe()),
    }
}

/// [`within`] for async checks, waiting on the tokio timer.
pub async fn within_async<T, F>(limit: Duration, mut check: impl FnMut() -> F) -> Option<T>
where
    F: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory whose name contains `name`.
    pub fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hubhook-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The directory as text.
    pub fn str(&self) -> &str {
        self.0.to_str().expect("utf8 temp path")
    }

    /// Writes `text` to `name` inside the directory, making the folders `name` names.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("make temp folders");
        }
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    /// Writes `text` to `name` inside the directory, readable by its owner only (0600):
    /// what a key file must be for hubhook to read it.
    pub fn write_private(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.write(name, text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod temp file");
        path
    }

    /// Writes `text` to `name` inside the directory as an executable script (0755).
    pub fn write_script(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.write(name, text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp script");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
