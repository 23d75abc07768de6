//! Run with `HUBHOOK_KEY=$(cargo run -q -p hubhook-server -- keygen) cargo run -p hubhook-examples --example axum_mount`
//!
//! hubhook inside an existing axum application: two hooks, the health check and the
//! metrics are routes among others, served by axum's own server. Each endpoint of a
//! `HubhookService` is a `tower::Service` (feature `tower`) that answers wherever it is
//! mounted, so every path is written once.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use hubhook_core::{Hook, HubhookService, Provider};
use hubhook_handlers::LogHandler;

/// The application: its own pages, each hook at the path its `Hook` names, and the health
/// check and metrics where this application wants them. No path is written twice.
fn app(hooks: &HubhookService) -> Router {
    let mut app = Router::new().route("/", get(|| async { "my site\n" }));
    for hook in hooks.hook_endpoints() {
        let path = hook.path().to_owned();
        app = app.route_service(&path, hook);
    }
    app.route_service("/healthz", hooks.health_endpoint())
        .route_service("/metrics", hooks.metrics_endpoint())
}

/// Two hooks: Docker Hub's, and a self-hosted registry's notifications.
fn hooks(key: &str) -> Result<HubhookService, hubhook_core::Error> {
    HubhookService::builder()
        .hook(Hook::new("/hooks/dockerhub", Provider::DockerHub).api_key(key))
        .hook(Hook::new("/hooks/registry", Provider::Registry).api_key(key))
        .handler(LogHandler::new("log"))
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key =
        std::env::var("HUBHOOK_KEY").map_err(|_| "set HUBHOOK_KEY (hubhook keygen makes one)")?;
    let hooks = hooks(&key)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    for (path, provider) in hooks.hooks() {
        println!("{provider} hook: http://{}{path}", listener.local_addr()?);
    }
    axum::serve(listener, app(&hooks))
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
    async fn two_hooks_health_and_metrics_answer_on_their_axum_routes() {
        let key = "axum-example-key-0123456789";
        let hooks = hooks(key).expect("service");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let serve = axum::serve(listener, app(&hooks));
        let server = tokio::spawn(async move { serve.await });

        let post = |path: &str, auth: &str, body: &str| {
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let get =
            |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let bearer = format!("Authorization: Bearer {key}\r\n");

        // Docker Hub's payload at its hook, a registry envelope at the other.
        let hub = hubhook_core::message::EXAMPLE_PAYLOAD;
        let accepted = exchange(addr, post("/hooks/dockerhub", &bearer, hub)).await;
        assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
        let envelope = r#"{"events":[{"id":"e1","action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"team/app","tag":"v1"},"request":{"host":"registry.example.com"}}]}"#;
        let accepted = exchange(addr, post("/hooks/registry", &bearer, envelope)).await;
        assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
        // Each endpoint is only what it is: the registry hook does not take Docker Hub's
        // shape, and no key is no entry.
        let wrong = exchange(addr, post("/hooks/registry", &bearer, hub)).await;
        assert!(wrong.starts_with("HTTP/1.1 400"), "{wrong}");
        let refused = exchange(addr, post("/hooks/dockerhub", "", hub)).await;
        assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

        let health = exchange(addr, get("/healthz")).await;
        assert!(
            health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
            "{health}"
        );
        let metrics = exchange(addr, get("/metrics")).await;
        assert!(
            metrics.contains("hubhook_requests_total{status=\"202\"} 2"),
            "{metrics}"
        );
        let post_health = exchange(addr, post("/healthz", "", "{}")).await;
        assert!(post_health.starts_with("HTTP/1.1 405"), "{post_health}");

        // The rest of the app is untouched; paths nobody mounted are axum's 404.
        let page = exchange(addr, get("/")).await;
        assert!(page.ends_with("my site\n"), "{page}");
        let unknown = exchange(addr, get("/hubhook")).await;
        assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");

        server.abort();
        assert!(
            hooks.shutdown(Duration::from_secs(5)).await,
            "handlers finished"
        );
    }
}
