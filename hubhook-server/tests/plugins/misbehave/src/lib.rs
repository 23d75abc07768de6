//! A plugin for hubhook's tests: `{"mode": "ok" | "fail" | "panic" | "hang" | "refuse"}`.

use std::time::Duration;

use hubhook_core::plugin::Plugin;
use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome};

struct Misbehave {
    mode: String,
}

impl Plugin for Misbehave {
    fn from_config(config: serde_json::Value) -> Result<Self, String> {
        let mode = config["mode"].as_str().unwrap_or("ok").to_owned();
        match mode.as_str() {
            "refuse" => Err("refusing to start: mode is \"refuse\"".into()),
            "init-panic" => panic!("init fell over"),
            _ => Ok(Misbehave { mode }),
        }
    }
}

#[async_trait]
impl Handler for Misbehave {
    fn name(&self) -> &str {
        "misbehave"
    }

    async fn handle(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        // Per message, so a test can send a good delivery after a bad one.
        let mode = if msg.tag() == "ok" { "ok" } else { self.mode.as_str() };
        match mode {
            "fail" => Err(HandlerError::Failed(format!("failing {} on purpose", msg.image()))),
            "panic" => panic!("the plugin panicked on {}", msg.image()),
            "hang" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Outcome::new("woke up"))
            }
            _ => Ok(Outcome::new(format!(
                "misbehave saw {} (delivery {}, attempt {})",
                msg.image(),
                ctx.delivery(),
                ctx.attempt()
            ))),
        }
    }
}

hubhook_core::export_plugin!(Misbehave);
