//! Build with `cargo build --release --manifest-path examples/plugin-notify/Cargo.toml`
//!
//! A hubhook plugin that tells another service about each push, the way the original
//! listener mailed one: it POSTs `{"event":"push","image":...,"repo":...,"tag":...,
//! "pusher":...,"delivery":...,"source":...}` to the configured `url` (http://) and
//! succeeds when the answer is 2xx.
//!
//! ```toml
//! [[handler]]
//! name = "notify"
//! type = "plugin"
//! path = "/usr/lib/hubhook/libhubhook_notify.so"
//! [handler.config]
//! url = "http://127.0.0.1:9000/pushes"
//! timeout_secs = 10
//! ```

use std::time::Duration;

use hubhook_core::plugin::Plugin;
use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Posts a notification of each push to `url`.
struct Notify {
    host: String,
    path: String,
    timeout: Duration,
}

impl Plugin for Notify {
    fn from_config(config: serde_json::Value) -> Result<Self, String> {
        let url = config["url"]
            .as_str()
            .ok_or("config needs \"url\", e.g. \"http://127.0.0.1:9000/pushes\"")?;
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("url {url:?} must start with http://"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.is_empty() || host.contains(['@', ' ']) {
            return Err(format!("url {url:?} has no usable host"));
        }
        let timeout = Duration::from_secs(config["timeout_secs"].as_u64().unwrap_or(10));
        Ok(Notify {
            host: host.to_owned(),
            path: path.to_owned(),
            timeout,
        })
    }
}

#[async_trait]
impl Handler for Notify {
    fn name(&self) -> &str {
        "notify"
    }

    async fn handle(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        let body = serde_json::json!({
            "event": "push",
            "image": msg.image(),
            "repo": msg.repo(),
            "tag": msg.tag(),
            "pusher": msg.pusher(),
            "delivery": ctx.delivery().as_str(),
            "source": msg.source(),
        })
        .to_string();
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: hubhook-notify\r\n\r\n{body}",
            self.path,
            self.host,
            body.len()
        );
        let exchange = async {
            let mut tcp = TcpStream::connect(&self.host)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.host))?;
            tcp.write_all(request.as_bytes())
                .await
                .map_err(|e| format!("cannot send to {}: {e}", self.host))?;
            let mut answer = Vec::new();
            tcp.read_to_end(&mut answer)
                .await
                .map_err(|e| format!("no answer from {}: {e}", self.host))?;
            Ok::<_, String>(answer)
        };
        let answer = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HandlerError::Timeout(self.timeout))?
            .map_err(HandlerError::Failed)?;
        let status_line = String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        if status_line.split(' ').nth(1).is_some_and(|s| s.starts_with('2')) {
            Ok(Outcome::new(format!("notified {} of {}", self.host, msg.image())))
        } else {
            Err(HandlerError::Failed(format!("{} answered {status_line:?}", self.host)))
        }
    }
}

hubhook_core::export_plugin!(Notify);
