//! Every row of the HTTP contract, over plain HTTP and over TLS, on real sockets.

use std::time::Duration;

use hubhook_core::message::EXAMPLE_PAYLOAD;
use hubhook_core::HubhookService;
use tokio::io::AsyncWriteExt;

use crate::support::*;

fn hook(key: &str) -> String {
    format!("/hubhook?apikey={key}")
}

/// Waits until `addr` refuses connections: the listening socket closes in the same step
/// that starts refusing webhooks, so that is the sign the shutdown has begun.
async fn refused_from_now(addr: std::net::SocketAddr) {
    hubhook_testkit::eventually_async(
        Duration::from_secs(10),
        "the listener stops accepting",
        || async { tokio::net::TcpStream::connect(addr).await.err().map(drop) },
    )
    .await;
}

#[tokio::test]
async fn valid_post_is_accepted_and_dispatched() {
    for transport in TRANSPORTS {
        let (service, mut rx) = recording_service();
        let server = TestServer::start(service, transport).await;
        let r = server
            .post(
                &hook(KEY),
                &["Content-Type: application/json"],
                EXAMPLE_PAYLOAD.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 202, "{transport:?}: {r:?}");
        let delivery = r.json()["delivery"]
            .as_str()
            .expect("delivery id")
            .to_owned();
        assert_eq!(delivery.len(), 26);
        let (msg, seen) = next(&mut rx).await;
        assert_eq!(seen, delivery, "the handler sees the answered delivery id");
        assert_eq!(msg.repo(), "svendowideit/testhook");
        assert_eq!(msg.tag(), "latest");
        assert_eq!(msg.pusher(), Some("trustedbuilder"));

        // Bearer header, and the second (rotated) key, work as well.
        let r = server
            .post(
                "/hubhook",
                &[&format!("Authorization: Bearer {OTHER_KEY}")],
                EXAMPLE_PAYLOAD.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 202, "{transport:?}: bearer with the rotated key");
        next(&mut rx).await;
        server.stop().await;
    }
}

#[tokio::test]
async fn missing_or_wrong_key_is_401_with_one_body() {
    for transport in TRANSPORTS {
        let (service, mut rx) = recording_service();
        let server = TestServer::start(service, transport).await;
        let body = EXAMPLE_PAYLOAD.as_bytes();
        let answers = [
            server.post("/hubhook", &[], body).await,
            server
                .post(&hook("wrong-key-0123456789abcdef"), &[], body)
                .await,
            server.post(&hook(&KEY[..KEY.len() - 1]), &[], body).await,
            server.post(&hook(""), &[], body).await,
            server
                .post("/hubhook", &["Authorization: Bearer nope"], body)
                .await,
            server
                .post("/hubhook", &[&format!("Authorization: Basic {KEY}")], body)
                .await,
        ];
        for r in &answers {
            assert_eq!(r.status, 401, "{transport:?}: {r:?}");
            assert_eq!(r.body, answers[0].body, "the same body whatever the reason");
        }
        assert_eq!(answers[0].json()["error"], "unauthorized");
        assert!(
            rx.try_recv().is_err(),
            "no handler ran for a refused request"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn bad_payloads_are_400_with_a_reason() {
    for transport in TRANSPORTS {
        let (service, mut rx) = recording_service();
        let server = TestServer::start(service, transport).await;
        let cases: [(&[u8], &str); 6] = [
            (b"{not json", "not valid JSON"),
            (b"[1,2,3]", "not a JSON object"),
            (b"{\"push_data\":{\"tag\":\"v1\"}}", "repository"),
            (
                br#"{"repository":{"repo_name":"$(id)"}}"#,
                "repository name",
            ),
            (
                br#"{"push_data":{"tag":"latest; touch pwned"},"repository":{"repo_name":"a/b"}}"#,
                "tag",
            ),
            (b"", "not valid JSON"),
        ];
        for (body, reason) in cases {
            let r = server
                .post(&hook(KEY), &["Content-Type: application/json"], body)
                .await;
            assert_eq!(r.status, 400, "{transport:?}: {body:?} -> {r:?}");
            let error = r.json()["error"].as_str().expect("error text").to_owned();
            assert!(
                error.contains(reason),
                "{error:?} should mention {reason:?}"
            );
        }
        assert!(rx.try_recv().is_err());
        server.stop().await;
    }
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    for transport in TRANSPORTS {
        let (service, mut rx) = recording_service(); // max_body 4096
        let server = TestServer::start(service, transport).await;

        // Declared too large: refused from the headers alone, the body is never sent.
        let mut io = server.connect().await;
        io.write_all(
            format!(
                "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n",
                hook(KEY)
            )
            .as_bytes(),
        )
        .await
        .expect("write head");
        let r = read_response(&mut io)
            .await
            .expect("answer before any body");
        assert_eq!(r.status, 413, "{transport:?}");

        // Chunked, no length: the read stops at the limit.
        let mut io = server.connect().await;
        let mut raw = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            hook(KEY)
        )
        .into_bytes();
        for _ in 0..10 {
            raw.extend_from_slice(b"400\r\n");
            raw.extend_from_slice(&[b' '; 0x400]);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        io.write_all(&raw).await.expect("write chunked body");
        let r = read_response(&mut io).await.expect("an answer");
        assert_eq!(r.status, 413, "{transport:?}");
        assert!(r.json()["error"].as_str().unwrap_or("").contains("4096"));
        assert!(rx.try_recv().is_err());
        server.stop().await;
    }
}

#[tokio::test]
async fn non_json_content_type_is_415() {
    for transport in TRANSPORTS {
        let (service, mut rx) = recording_service();
        let server = TestServer::start(service, transport).await;
        for kind in ["text/plain", "application/x-www-form-urlencoded"] {
            let r = server
                .post(
                    &hook(KEY),
                    &[&format!("Content-Type: {kind}")],
                    EXAMPLE_PAYLOAD.as_bytes(),
                )
                .await;
            assert_eq!(r.status, 415, "{transport:?} {kind}");
        }
        // No content type at all is fine (some senders omit it), and +json types are JSON.
        let r = server
            .post(&hook(KEY), &[], EXAMPLE_PAYLOAD.as_bytes())
            .await;
        assert_eq!(r.status, 202);
        next(&mut rx).await;
        let r = server
            .post(
                &hook(KEY),
                &["Content-Type: application/vnd.docker.distribution.events.v1+json"],
                EXAMPLE_PAYLOAD.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 202);
        server.stop().await;
    }
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    for transport in TRANSPORTS {
        let (service, _rx) = recording_service();
        let server = TestServer::start(service, transport).await;
        for method in ["GET", "PUT", "DELETE", "PATCH"] {
            let r = server
                .send(
                    format!(
                        "{method} {} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                        hook(KEY)
                    )
                    .as_bytes(),
                )
                .await;
            assert_eq!(r.status, 405, "{transport:?} {method}");
            assert_eq!(r.header("allow"), Some("POST"));
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn unknown_paths_are_404() {
    for transport in TRANSPORTS {
        let (service, _rx) = recording_service();
        let server = TestServer::start(service, transport).await;
        for target in ["/", "/hubhook/", "/hubhookx", "/other?apikey=x"] {
            let r = server.post(target, &[], EXAMPLE_PAYLOAD.as_bytes()).await;
            assert_eq!(r.status, 404, "{transport:?} {target}");
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn healthz_and_metrics_need_no_key() {
    for transport in TRANSPORTS {
        let (service, mut rx) = recording_service();
        let server = TestServer::start(service, transport).await;
        let r = server
            .send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        assert_eq!(r.status, 200, "{transport:?}");
        assert_eq!(r.body, "ok\n");

        server
            .post(&hook(KEY), &[], EXAMPLE_PAYLOAD.as_bytes())
            .await;
        server
            .post("/hubhook", &[], EXAMPLE_PAYLOAD.as_bytes())
            .await;
        next(&mut rx).await;
        let text = server
            .metrics_with("hubhook_handler_runs_total{handler=\"recorder\",outcome=\"ok\"} 1")
            .await;
        assert!(
            text.contains("hubhook_requests_total{status=\"202\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("hubhook_requests_total{status=\"401\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("hubhook_requests_total{status=\"200\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("hubhook_handler_runs_total{handler=\"recorder\",outcome=\"ok\"} 1\n"),
            "{text}"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn full_queue_is_503_with_retry_after() {
    for transport in TRANSPORTS {
        let Gated {
            service,
            release,
            mut started,
            ..
        } = Gated::new(1);
        let server = TestServer::start(service, transport).await;
        let first = server
            .post(&hook(KEY), &[], EXAMPLE_PAYLOAD.as_bytes())
            .await;
        assert_eq!(first.status, 202);
        next(&mut started).await;
        let second = server
            .post(&hook(KEY), &[], EXAMPLE_PAYLOAD.as_bytes())
            .await;
        assert_eq!(second.status, 503, "{transport:?}");
        assert_eq!(second.header("retry-after"), Some("5"));
        release.add_permits(1);
        // Once the run is over there is room again.
        hubhook_testkit::eventually_async(
            Duration::from_secs(1),
            "room again once the run is over",
            || async {
                let r = server
                    .post(&hook(KEY), &[], EXAMPLE_PAYLOAD.as_bytes())
                    .await;
                (r.status == 202).then_some(())
            },
        )
        .await;
        release.add_permits(1);
        server.stop().await;
    }
}

#[tokio::test]
async fn shutting_down_answers_the_request_under_way_with_503() {
    for transport in TRANSPORTS {
        let (service, mut rx) = recording_service();
        let server = TestServer::start(service, transport).await;
        // A request whose body is still arriving when shutdown starts. `Expect:
        // 100-continue` makes the server say when it starts reading the body: from then
        // on the request is under way.
        let mut io = server.connect().await;
        let body = EXAMPLE_PAYLOAD.as_bytes();
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            hook(KEY),
            body.len()
        );
        io.write_all(head.as_bytes()).await.expect("head");
        let go_on = read_response(&mut io).await.expect("100 Continue");
        assert_eq!(go_on.status, 100, "{transport:?}");
        io.write_all(&body[..10]).await.expect("part of the body");
        io.flush().await.expect("flush");
        let addr = server.addr;
        let serving = tokio::spawn(server.stop());
        refused_from_now(addr).await;
        // ...is still answered, with a definite "try again later".
        io.write_all(&body[10..]).await.expect("rest of the body");
        let r = read_response(&mut io)
            .await
            .expect("an answer, not a reset");
        assert_eq!(r.status, 503, "{transport:?}");
        assert_eq!(r.header("retry-after"), Some("5"));
        assert_eq!(r.json()["error"], "shutting down");
        serving.await.expect("serve returned");
        assert!(rx.try_recv().is_err(), "a refused delivery runs no handler");
    }
}

#[tokio::test]
async fn slow_bodies_get_408() {
    for transport in TRANSPORTS {
        let (recorder, _rx) = Recorder::new("recorder");
        let service = HubhookService::builder()
            .api_key(KEY)
            .read_timeout(Duration::from_millis(200))
            .handler(recorder)
            .build()
            .expect("service");
        let server = TestServer::start(service, transport).await;
        let mut io = server.connect().await;
        io.write_all(
            format!(
                "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{",
                hook(KEY)
            )
            .as_bytes(),
        )
        .await
        .expect("head");
        let r = read_response(&mut io).await.expect("an answer");
        assert_eq!(r.status, 408, "{transport:?}");
        server.stop().await;
    }
}

#[test]
fn an_empty_or_blank_key_is_refused_by_the_builder() {
    // `.api_key(std::env::var("HUBHOOK_KEY")?)` with the variable set but empty would
    // otherwise make `?apikey=` authenticate.
    for key in ["", "   ", "\t\n"] {
        let built = HubhookService::builder().api_key(key).build();
        let e = built.expect_err("an empty key");
        assert!(
            e.is_config() && e.to_string().starts_with("an API key is empty"),
            "{key:?}: {e}"
        );
    }
    let built = HubhookService::builder()
        .hook(hubhook_core::Hook::new("/r", hubhook_core::Provider::Registry).api_key(""))
        .build();
    let e = built.expect_err("an empty key");
    assert!(
        e.is_config() && e.to_string().starts_with("an API key is empty"),
        "{e}"
    );
}

#[tokio::test]
async fn shutting_down_answers_503_on_a_kept_alive_connection_until_handlers_finish() {
    for transport in TRANSPORTS {
        let Gated {
            service,
            release,
            mut started,
            mut finished,
        } = Gated::new(4);
        let server = TestServer::start(service, transport).await;
        let addr = server.addr;
        // One connection, kept alive across requests as nginx's upstream keep-alive does.
        let mut io = server.connect().await;
        io.write_all(&post_bytes(&hook(KEY), &[], EXAMPLE_PAYLOAD.as_bytes()))
            .await
            .expect("first request");
        let first = read_response(&mut io).await.expect("an answer");
        assert_eq!(first.status, 202, "{transport:?}");
        next(&mut started).await;

        let serving = tokio::spawn(server.stop());
        refused_from_now(addr).await;

        // The handler still runs: the open connection is answered, not dropped.
        io.write_all(&post_bytes(&hook(KEY), &[], EXAMPLE_PAYLOAD.as_bytes()))
            .await
            .expect("second request on the same connection");
        let second = read_response(&mut io)
            .await
            .expect("an answer on the kept-alive connection, not a close");
        assert_eq!(second.status, 503, "{transport:?}");
        assert_eq!(second.header("retry-after"), Some("5"));
        assert_eq!(second.json()["error"], "shutting down");
        assert!(!serving.is_finished(), "shutdown waits for the handler");

        // Once the handler is done, shutdown finishes and the connection closes.
        release.add_permits(1);
        assert_eq!(next(&mut finished).await, Ok(()));
        serving.await.expect("serve returned");
        assert!(
            closes_within(&mut io, Duration::from_secs(5)).await,
            "{transport:?}: the connection closes after shutdown"
        );
        assert!(
            started.try_recv().is_err(),
            "the refused webhook ran nothing"
        );
    }
}
