//! Any JSON sender: the repository, the tag and the digest at configured JSON pointers.

use super::{parse, text, Decoded, Generic, Push, Refusal};

pub(super) fn decode(spec: &Generic, body: &[u8]) -> Result<Decoded, Refusal> {
    let root = parse(body)?;
    let Some(repository) = text(&root, &spec.repo) else {
        return Err(Refusal::BadRequest(format!(
            "no repository at {}",
            spec.repo
        )));
    };
    let Some(tag) = text(&root, &spec.tag) else {
        return Err(Refusal::BadRequest(format!("no tag at {}", spec.tag)));
    };
    let digest = spec.digest.as_deref().and_then(|p| text(&root, p));
    let (registry, path) = crate::reference::split_registry(repository);
    // A generic body names no pusher and no time: the time it arrived stands in.
    let received = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let msg = Push {
        source: "generic",
        registry,
        repository: path,
        tag,
        digest,
        pusher: None,
        pushed_at: Some(received),
    }
    .message(body)?;
    Ok(Decoded::Messages(vec![(msg, None)]))
}
