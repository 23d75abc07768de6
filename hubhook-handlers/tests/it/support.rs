//! Shared helpers: temporary directories and messages.

use std::path::{Path, PathBuf};

use hubhook_core::HubMessage;

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hubhook-handlers-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn str(&self) -> &str {
        self.0.to_str().expect("utf8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A decoded Docker Hub message for `repo:tag` pushed by `pusher`.
pub fn message(repo: &str, tag: &str, pusher: &str) -> HubMessage {
    let body = serde_json::json!({
        "push_data": {"tag": tag, "pusher": pusher, "pushed_at": 1417566161},
        "repository": {"repo_name": repo}
    });
    HubMessage::from_json(body.to_string().as_bytes()).expect("valid message")
}
