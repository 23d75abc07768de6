//! Run with `HUBHOOK_KEY=$(cargo run -q -p hubhook-server -- keygen) cargo run -p hubhook-examples --example axum_mount`
//!
//! hubhook inside an existing axum application: the hook is one route among others,
//! served by axum's own server. `HubhookService` is a `tower::Service` (feature `tower`).

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use hubhook_core::HubhookService;
use hubhook_handlers::LogHandler;

/// The application: its own pages, plus the hook at `/hooks/registry`.
fn app(hooks: HubhookService) -> Router {
    Router::new()
        .route("/", get(|| async { "my site\n" }))
        .route_service("/hooks/registry", hooks)
}

fn hooks(key: &str) -> Result<HubhookService, hubhook_core::Error> {
    HubhookService::builder()
        .path("/hooks/registry")
        .api_key(key)
        .handler(LogHandler::new("log"))
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key =
        std::env::var("HUBHOOK_KEY").map_err(|_| "set HUBHOOK_KEY (hubhook keygen makes one)")?;
    let hooks = hooks(&key)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!(
        "listening on http://{}/hooks/registry",
        listener.local_addr()?
    );
    axum::serve(listener, app(hooks.clone()))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // axum has stopped taking requests; give running handlers their grace period.
    hooks.shutdown(Duration::from_secs(30)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn exchange(addr: std::net::SocketAddr, raw: String) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(raw.as_bytes()).await.expect("write");
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn the_hook_answers_on_its_axum_route() {
        let key = "axum-example-key-0123456789";
        let hooks = hooks(key).expect("service");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let serve = axum::serve(listener, app(hooks.clone()));
        let server = tokio::spawn(async move { serve.await });

        let body = hubhook_core::message::EXAMPLE_PAYLOAD;
        let post = |auth: &str| {
            format!(
                "POST /hooks/registry HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let accepted = exchange(addr, post(&format!("Authorization: Bearer {key}\r\n"))).await;
        assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
        assert!(accepted.contains("{\"delivery\":\""), "{accepted}");
        let refused = exchange(addr, post("")).await;
        assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
        let page = exchange(
            addr,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
        )
        .await;
        assert!(
            page.ends_with("my site\n"),
            "the rest of the app is untouched: {page}"
        );

        server.abort();
        assert!(
            hooks.shutdown(Duration::from_secs(5)).await,
            "handlers finished"
        );
    }
}
