//! Docker Hub: the payload *is* a [`HubMessage`], read leniently. Docker Hub has changed
//! its number formats over the years (integer or float timestamps, counts sent as
//! strings), so each field is read for what it can be and what is not known is ignored;
//! only the repository name and the tag are strict.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::message::{
    name_of, tag_of, HubMessage, MessageError, PushData, Repository, SOURCE_DOCKERHUB,
};
use crate::reference::split_registry;

// `HubMessage::from_json` is defined here, beside the wire format it reads, so that the
// message type does not depend on a provider.
impl HubMessage {
    /// Decodes and validates a Docker Hub webhook body.
    ///
    /// Timestamps may be integers, floats or numeric strings; counts may be numbers or
    /// strings; unknown fields and fields of an unexpected type are ignored. A missing tag
    /// means `latest`. The repository name is `repository.repo_name`, or
    /// `namespace/name` when that is absent.
    pub fn from_json(body: &[u8]) -> Result<Self, MessageError> {
        decode(body)
    }
}

/// Decodes and validates a Docker Hub webhook body.
fn decode(body: &[u8]) -> Result<HubMessage, MessageError> {
    // Borrowed slices of the body for the fields hubhook reads; everything else is
    // skipped without being built. Each field is then read for what it can be.
    if !body.trim_ascii_start().starts_with(b"{") {
        // (serde would also take an array for a struct.) Say whether it is JSON at all.
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => MessageError::Shape("the body is not a JSON object"),
                Err(e) => MessageError::Json(e.to_string()),
            },
        );
    }
    // serde_json's message is short and says where; it never echoes the input.
    let root: WireRoot<'_> =
        serde_json::from_slice(body).map_err(|e| MessageError::Json(e.to_string()))?;
    let push: WirePush<'_> = match root.push_data.filter(|raw| raw.get() != "null") {
        None => WirePush::default(),
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|_| MessageError::Shape("push_data is not an object"))?,
    };
    let repo: WireRepo<'_> = match root.repository {
        Some(raw) if raw.get().starts_with('{') => serde_json::from_str(raw.get())
            .map_err(|_| MessageError::Shape("repository object is missing"))?,
        _ => return Err(MessageError::Shape("repository object is missing")),
    };

    let name = string(repo.name).unwrap_or_default();
    let namespace = string(repo.namespace);
    let repo_name = match string(repo.repo_name) {
        Some(full) => full,
        None if name.is_empty() => {
            return Err(MessageError::Shape(
                "repository has no repo_name and no name",
            ))
        }
        None => match &namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.clone(),
        },
    };
    let tag = string(push.tag).unwrap_or_else(|| "latest".to_owned());
    // Docker Hub never sends a registry host: one in repo_name would let whoever holds
    // the hook URL choose where an image is pulled from.
    if let (Some(_), _) = split_registry(&repo_name) {
        return Err(MessageError::Shape(
            "repository repo_name names a registry host; a Docker Hub payload never does",
        ));
    }
    let registry = None;
    let repo_name = name_of(&repo_name, &repo_name)?;
    let tag = tag_of(&tag)?;

    let mut msg = HubMessage {
        callback_url: string(root.callback_url),
        push_data: PushData {
            pushed_at: timestamp(push.pushed_at),
            pusher: string(push.pusher),
            tag,
            images: push
                .images
                .and_then(|raw| serde_json::from_str::<Vec<Value>>(raw.get()).ok())
                .map(|items| {
                    items
                        .into_iter()
                        .filter_map(|v| match v {
                            Value::String(s) => Some(s),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        },
        repository: Repository {
            name,
            namespace,
            owner: string(repo.owner),
            repo_name,
            repo_url: string(repo.repo_url),
            is_private: boolean(repo.is_private),
            is_official: boolean(repo.is_official),
            is_trusted: boolean(repo.is_trusted),
            status: string(repo.status),
            description: string(repo.description),
            date_created: timestamp(repo.date_created),
            star_count: count(repo.star_count),
            comment_count: count(repo.comment_count),
        },
        source: SOURCE_DOCKERHUB.to_owned(),
        registry,
        digest: None,
        raw: String::new(),
    };
    msg.validate()?;
    // The body parsed as JSON, so it is UTF-8.
    msg.set_raw(body);
    Ok(msg)
}

/// The fields of the payload hubhook reads, as borrowed raw JSON.
#[derive(Deserialize)]
struct WireRoot<'a> {
    #[serde(borrow)]
    callback_url: Option<&'a RawValue>,
    #[serde(borrow)]
    push_data: Option<&'a RawValue>,
    #[serde(borrow)]
    repository: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct WirePush<'a> {
    #[serde(borrow)]
    tag: Option<&'a RawValue>,
    #[serde(borrow)]
    pushed_at: Option<&'a RawValue>,
    #[serde(borrow)]
    pusher: Option<&'a RawValue>,
    #[serde(borrow)]
    images: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireRepo<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    namespace: Option<&'a RawValue>,
    #[serde(borrow)]
    owner: Option<&'a RawValue>,
    #[serde(borrow)]
    repo_name: Option<&'a RawValue>,
    #[serde(borrow)]
    repo_url: Option<&'a RawValue>,
    #[serde(borrow)]
    is_private: Option<&'a RawValue>,
    #[serde(borrow)]
    is_official: Option<&'a RawValue>,
    #[serde(borrow)]
    is_trusted: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    description: Option<&'a RawValue>,
    #[serde(borrow)]
    date_created: Option<&'a RawValue>,
    #[serde(borrow)]
    star_count: Option<&'a RawValue>,
    #[serde(borrow)]
    comment_count: Option<&'a RawValue>,
}

/// A string field; anything else (null, a number, an object) is no value.
fn string(raw: Option<&RawValue>) -> Option<String> {
    serde_json::from_str(raw?.get()).ok()
}

/// A scalar field as a `Value`; objects and arrays are no value.
fn scalar(raw: Option<&RawValue>) -> Option<Value> {
    let text = raw?.get();
    if text.starts_with(['{', '[']) {
        return None;
    }
    serde_json::from_str(text).ok()
}

fn boolean(raw: Option<&RawValue>) -> Option<bool> {
    match scalar(raw)? {
        Value::Bool(b) => Some(b),
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64().map(|n| n != 0),
        _ => None,
    }
}

/// Seconds since the epoch from an integer, a float (`1.417566161e+09`) or a numeric string.
fn timestamp(raw: Option<&RawValue>) -> Option<i64> {
    let float = match scalar(raw)? {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Some(i);
            }
            n.as_f64()?
        }
        Value::String(s) => {
            if let Ok(i) = s.trim().parse::<i64>() {
                return Some(i);
            }
            s.trim().parse::<f64>().ok()?
        }
        _ => return None,
    };
    // `as` saturates; refuse what is not a plausible time instead of clamping it.
    (float.is_finite() && float.abs() < 1e15).then(|| float.trunc() as i64)
}

fn count(raw: Option<&RawValue>) -> Option<u64> {
    match scalar(raw)? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && *f < 1e15)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}
