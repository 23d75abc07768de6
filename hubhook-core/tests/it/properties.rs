//! Property tests: whatever arrives, the decoder and the service answer without panicking.

use bytes::Bytes;
use http_body_util::Full;
use hubhook_core::{HubMessage, HubhookService, MessageError};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::support::*;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("1.417566161e+09")),
        Just(json!("latest")),
        Just(json!("acme/site")),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("push_data".to_owned()),
                    Just("repository".to_owned()),
                    Just("tag".to_owned()),
                    Just("repo_name".to_owned()),
                    Just("name".to_owned()),
                    Just("namespace".to_owned()),
                    Just("pushed_at".to_owned()),
                    Just("images".to_owned()),
                    Just("star_count".to_owned()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Payloads shaped like Docker Hub's, with arbitrary values where the fields go.
fn hub_shaped() -> impl Strategy<Value = Value> {
    (
        json_value(),
        json_value(),
        json_value(),
        json_value(),
        json_value(),
    )
        .prop_map(|(tag, pushed_at, repo_name, name, count)| {
            json!({
                "push_data": {"tag": tag, "pushed_at": pushed_at, "images": [count.clone()]},
                "repository": {"repo_name": repo_name, "name": name, "star_count": count},
            })
        })
}

fn service() -> HubhookService {
    let (recorder, _rx) = Recorder::new("recorder");
    HubhookService::builder()
        .api_key(KEY)
        .max_body(64 * 1024)
        .handler(recorder)
        .build()
        .expect("service")
}

fn respond(runtime: &tokio::runtime::Runtime, service: &HubhookService, body: Vec<u8>) -> u16 {
    let request = http::Request::post(format!("/hubhook?apikey={KEY}"))
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    runtime.block_on(service.respond(request)).status().as_u16()
}

fn check_decoded(msg: &HubMessage) {
    // Whatever was accepted is valid by the grammar, and says so again.
    // Whatever was accepted can be made again through the public, validating way.
    let again = HubMessage::new(&msg.full_name(), msg.tag()).expect("its name and tag validate");
    let again = match msg.digest() {
        Some(digest) => again.with_digest(digest).expect("its digest validates"),
        None => again,
    };
    assert_eq!(again.image(), msg.image());
    assert!(!msg.repo().is_empty());
    assert!(!msg.image().contains(char::is_whitespace));
}

/// Every outcome of decoding `body`: an accepted message is well-formed, and a refusal is
/// one of the documented ones, fitting the body (not JSON only when it is not JSON), with
/// the offending value cut to its documented length.
fn check_outcome(body: &[u8], result: Result<HubMessage, MessageError>) {
    let is_json = serde_json::from_slice::<Value>(body).is_ok();
    let cut = |value: &str, max: usize| {
        let shown = value.strip_suffix("...").unwrap_or(value);
        assert!(
            shown.chars().count() <= max,
            "{value:?} is not cut to {max}"
        );
    };
    match result {
        Ok(msg) => {
            assert!(is_json, "a body that is not JSON was accepted");
            check_decoded(&msg);
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            match e {
                MessageError::Json(_) => assert!(!is_json, "valid JSON refused as not JSON"),
                MessageError::Shape(_) => assert!(is_json, "not JSON refused for its shape"),
                MessageError::Repository { name, .. } => cut(&name, 64),
                MessageError::Tag { tag, .. } => cut(&tag, 64),
                MessageError::Digest { digest, .. } => cut(&digest, 80),
                other => panic!("an undocumented refusal: {other:?}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_outcome(&body, HubMessage::from_json(&body));
    }

    #[test]
    fn arbitrary_json(value in json_value()) {
        let body = value.to_string().into_bytes();
        check_outcome(&body, HubMessage::from_json(&body));
    }

    #[test]
    fn hub_shaped_json(value in hub_shaped()) {
        let body = value.to_string().into_bytes();
        let result = HubMessage::from_json(&body);
        // Hub-shaped bodies are JSON objects: only the grammar can refuse them.
        prop_assert!(
            !matches!(result, Err(MessageError::Json(_))),
            "{:?}",
            result
        );
        check_outcome(&body, result);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_service_answers_everything(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
        value in hub_shaped(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let service = service();
        let status = respond(&runtime, &service, bytes);
        prop_assert!(status == 202 || status == 400, "bytes -> {}", status);
        let status = respond(&runtime, &service, value.to_string().into_bytes());
        prop_assert!(status == 202 || status == 400, "json -> {}", status);
    }
}

#[test]
fn documented_example_and_its_variants() {
    let msg =
        HubMessage::from_json(hubhook_core::message::EXAMPLE_PAYLOAD.as_bytes()).expect("example");
    assert_eq!(msg.repo(), "svendowideit/testhook");
    assert_eq!(msg.tag(), "latest");
    assert_eq!(msg.image(), "svendowideit/testhook:latest");
    assert_eq!(msg.pushed_at(), Some(1417566161));
    assert_eq!(msg.repository().date_created, Some(1417494799));
    assert_eq!(msg.repository().is_private, Some(true));
    assert_eq!(msg.repository().star_count, Some(0));
    assert_eq!(msg.source(), "dockerhub");
    assert!(msg
        .callback_url()
        .unwrap_or("")
        .starts_with("https://registry.hub.docker.com/"));
    assert_eq!(msg.raw_json(), hubhook_core::message::EXAMPLE_PAYLOAD);

    // Older documentation: float timestamps, a list of images.
    let old = json!({
        "push_data": {"pushed_at": 1.417566161e9, "images": ["27d47432a69b", "51a9c7c1f8bb"],
                      "pusher": "trustedbuilder"},
        "repository": {"date_created": 1.417494799e9, "name": "testhook",
                       "namespace": "svendowideit", "star_count": "7", "comment_count": "x",
                       "is_private": "true", "unknown": {"nested": [1, 2]}}
    });
    let msg = HubMessage::from_json(old.to_string().as_bytes()).expect("old format");
    assert_eq!(
        msg.repo(),
        "svendowideit/testhook",
        "namespace/name when repo_name is absent"
    );
    assert_eq!(msg.tag(), "latest", "a missing tag means latest");
    assert_eq!(msg.pushed_at(), Some(1417566161));
    assert_eq!(msg.repository().date_created, Some(1417494799));
    assert_eq!(msg.push_data().images, ["27d47432a69b", "51a9c7c1f8bb"]);
    assert_eq!(msg.repository().star_count, Some(7));
    assert_eq!(
        msg.repository().comment_count,
        None,
        "a count that is no number is dropped"
    );
    assert_eq!(msg.repository().is_private, Some(true));

    // The serialized form is Docker Hub's shape again.
    let out: Value = serde_json::to_value(&msg).expect("serializes");
    assert_eq!(out["repository"]["repo_name"], "svendowideit/testhook");
    assert_eq!(out["push_data"]["tag"], "latest");
    assert_eq!(out["source"], "dockerhub");

    for (body, why) in [
        (json!({"push_data": {"tag": "v1"}}), "no repository"),
        (json!({"repository": {}}), "no name"),
        (
            json!({"repository": {"repo_name": "Acme/Site"}}),
            "uppercase",
        ),
        (
            json!({"repository": {"repo_name": "a/b"}, "push_data": {"tag": "-v"}}),
            "tag starts with -",
        ),
        (
            json!({"repository": {"repo_name": "a/b"}, "push_data": "x"}),
            "push_data not an object",
        ),
        (
            json!({"repository": {"repo_name": "a/b"}, "push_data": {"tag": "x".repeat(300)}}),
            "long tag",
        ),
    ] {
        assert!(
            HubMessage::from_json(body.to_string().as_bytes()).is_err(),
            "{why}"
        );
    }
}
