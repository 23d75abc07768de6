//! Test helpers shared by hubhook's integration tests: temporary directories, the real
//! Docker engine, test images built with no pull, and a real registry on 127.0.0.1.
//! Everything they create carries the `hubhook-test` prefix and is removed on drop.

mod engine;

use std::path::{Path, PathBuf};

pub use engine::*;

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
