//! Run with `HUBHOOK_KEY=$(cargo run -q -p hubhook-server -- keygen) cargo run -p hubhook-examples --example embedded`
//!
//! An embedded listener in a few lines: your own handler next to the built-in log handler,
//! on 127.0.0.1:8080, until Ctrl-C. Try it with
//! `cargo run -p hubhook-server -- send http://127.0.0.1:8080/hubhook --key "$HUBHOOK_KEY"`.

use std::time::Duration;

use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome};
use hubhook_core::{HubhookService, Listener, Route};
use hubhook_handlers::LogHandler;

/// Says what it would deploy; a real one would call your deploy tool here.
struct Announce;

#[async_trait]
impl Handler for Announce {
    fn name(&self) -> &str {
        "announce"
    }

    async fn handle(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        // Everything in `msg` that names an image passed the image-reference grammar.
        println!("would deploy {} (delivery {})", msg.image(), ctx.delivery());
        Ok(Outcome::new(format!("announced {}", msg.image())))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let key =
        std::env::var("HUBHOOK_KEY").map_err(|_| "set HUBHOOK_KEY (hubhook keygen makes one)")?;
    let service = HubhookService::builder()
        .api_key(key)
        .handler(LogHandler::new("log"))
        .route(
            Route::new(Announce)
                .tag("latest")
                .timeout(Duration::from_secs(60)),
        )
        .build()?;
    let listener = Listener::builder(service)
        .addr("127.0.0.1:8080".parse()?)
        .bind()
        .await?;
    println!("listening on http://{}/hubhook", listener.local_addr());
    listener
        .serve_with_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
