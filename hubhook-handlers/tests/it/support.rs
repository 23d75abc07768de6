//! Shared helpers: messages.

use hubhook_core::HubMessage;

/// A decoded Docker Hub message for `repo:tag` pushed by `pusher`.
pub fn message(repo: &str, tag: &str, pusher: &str) -> HubMessage {
    let body = serde_json::json!({
        "push_data": {"tag": tag, "pusher": pusher, "pushed_at": 1417566161},
        "repository": {"repo_name": repo}
    });
    HubMessage::from_json(body.to_string().as_bytes()).expect("valid message")
}
