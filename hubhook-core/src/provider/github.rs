//! GitHub's `package` and `registry_package` events for container images (ghcr.io),
//! authenticated by `X-Hub-Signature-256`.

use http::HeaderMap;
use serde_json::Value;

use super::registry::rfc3339_seconds;
use super::{parse, text, Decoded, Push, Refusal};

/// GitHub's `package` and `registry_package` events.
pub(super) fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Decoded, Refusal> {
    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if event == "ping" {
        return Ok(Decoded::Ignored("ping".into()));
    }
    if event != "package" && event != "registry_package" {
        return Ok(Decoded::Ignored(format!(
            "event {event:?} is not a package event"
        )));
    }
    let root = parse(body)?;
    let action = root.get("action").and_then(Value::as_str).unwrap_or("");
    if action != "published" && action != "updated" {
        return Ok(Decoded::Ignored(format!("package action {action:?}")));
    }
    let package = root
        .get(event)
        .or_else(|| root.get("package"))
        .unwrap_or(&Value::Null);
    let kind = text(package, "/package_type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if kind != "container" && kind != "docker" {
        return Ok(Decoded::Ignored(format!(
            "package type {kind:?} is not a container image"
        )));
    }
    let (Some(owner), Some(name)) = (text(package, "/owner/login"), text(package, "/name")) else {
        return Err(Refusal::BadRequest(
            "package event without owner.login and name".into(),
        ));
    };
    let Some(tag) = text(package, "/package_version/container_metadata/tag/name") else {
        return Ok(Decoded::Ignored("container version without a tag".into()));
    };
    let host = text(package, "/registry/url")
        .map(|u| {
            u.trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
        })
        .unwrap_or("ghcr.io");
    let digest = text(package, "/package_version/container_metadata/tag/digest")
        .or_else(|| text(package, "/package_version/version").filter(|v| v.starts_with("sha256:")));
    let repository = format!("{owner}/{name}").to_ascii_lowercase();
    let msg = Push {
        source: "github",
        registry: Some(host),
        repository: &repository,
        tag,
        digest,
        pusher: text(&root, "/sender/login"),
        pushed_at: text(package, "/package_version/updated_at")
            .or_else(|| text(package, "/updated_at"))
            .and_then(rfc3339_seconds),
    }
    .message(body)?;
    Ok(Decoded::Messages(vec![(msg, None)]))
}
