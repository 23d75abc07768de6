//! The log handler: one line per message on standard output.

use std::io::Write;
use std::sync::{Arc, Mutex};

use hubhook_core::{async_trait, Context, Handler, HandlerError, HubMessage, Outcome};

/// How [`LogHandler`] writes its line; in a configuration file, `"text"` or `"json"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    /// `push acme/site:v2 by alice (delivery 01J..., source dockerhub)`
    #[default]
    Text,
    /// One JSON object per line with `repo`, `tag`, `image`, `pusher`, `delivery`,
    /// `source`, `pushed_at`.
    Json,
}

type Sink = Arc<Mutex<dyn Write + Send>>;

/// Writes one line per pushed image: repository, tag, pusher and delivery id.
///
/// Every value in the line comes from a validated [`HubMessage`] or is escaped (the
/// pusher, in text form, is quoted when it holds anything unusual), so a payload cannot
/// forge extra log lines.
pub struct LogHandler {
    name: String,
    format: LogFormat,
    sink: Sink,
}

impl std::fmt::Debug for LogHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandler")
            .field("name", &self.name)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl LogHandler {
    /// A handler called `name` writing text lines to standard output.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            format: LogFormat::Text,
            sink: Arc::new(Mutex::new(std::io::stdout())),
        }
    }

    /// Sets the line format.
    #[must_use]
    pub fn format(mut self, format: LogFormat) -> Self {
        self.format = format;
        self
    }

    /// Writes to `writer` instead of standard output.
    #[must_use]
    pub fn writer(mut self, writer: impl Write + Send + 'static) -> Self {
        self.sink = Arc::new(Mutex::new(writer));
        self
    }

    /// The line this handler writes for `msg` (without the newline).
    pub fn line(&self, msg: &HubMessage, ctx: &Context) -> String {
        match self.format {
            LogFormat::Text => {
                let pusher = msg.pusher().unwrap_or("unknown");
                let pusher_plain = !pusher.is_empty()
                    && pusher
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
                let pusher = if pusher_plain {
                    pusher.to_owned()
                } else {
                    format!("{pusher:?}")
                };
                format!(
                    "push {} by {pusher} (delivery {}, source {})",
                    msg.image(),
                    ctx.delivery(),
                    msg.source()
                )
            }
            LogFormat::Json => serde_json::json!({
                "event": "push",
                "repo": msg.repo(),
                "tag": msg.tag(),
                "image": msg.image(),
                "pusher": msg.pusher(),
                "pushed_at": msg.pushed_at(),
                "delivery": ctx.delivery().as_str(),
                "source": msg.source(),
            })
            .to_string(),
        }
    }
}

#[async_trait]
impl Handler for LogHandler {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, msg: &HubMessage, ctx: &Context) -> Result<Outcome, HandlerError> {
        let mut line = self.line(msg, ctx);
        line.push('\n');
        // A poisoned lock only means another writer panicked mid-line; the sink is still usable.
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        sink.write_all(line.as_bytes())
            .and_then(|()| sink.flush())
            .map_err(|e| HandlerError::Failed(format!("cannot write the log line: {e}")))?;
        Ok(Outcome::new(format!("logged {}", msg.image())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hubhook_core::DeliveryId;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn message(pusher: &str) -> HubMessage {
        let body = serde_json::json!({
            "push_data": {"pusher": pusher, "tag": "v2", "pushed_at": 1417566161},
            "repository": {"repo_name": "acme/site"}
        });
        HubMessage::from_json(body.to_string().as_bytes()).expect("valid payload")
    }

    #[tokio::test]
    async fn text_line_names_repo_tag_pusher_and_delivery() {
        let out = Buffer::default();
        let handler = LogHandler::new("log").writer(out.clone());
        let ctx = Context::new(DeliveryId::generate());
        let outcome = handler
            .handle(&message("alice"), &ctx)
            .await
            .expect("log handler succeeds");
        assert_eq!(outcome.summary, "logged acme/site:v2");
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(
            text,
            format!(
                "push acme/site:v2 by alice (delivery {}, source dockerhub)\n",
                ctx.delivery()
            )
        );
    }

    #[tokio::test]
    async fn a_pusher_cannot_forge_a_line() {
        let out = Buffer::default();
        let handler = LogHandler::new("log").writer(out.clone());
        let ctx = Context::new(DeliveryId::generate());
        handler
            .handle(&message("eve\npush evil/site:latest by admin"), &ctx)
            .await
            .expect("log handler succeeds");
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(r#"by "eve\npush evil/site:latest by admin""#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn json_line() {
        let out = Buffer::default();
        let handler = LogHandler::new("log")
            .format(LogFormat::Json)
            .writer(out.clone());
        let ctx = Context::new(DeliveryId::generate());
        handler
            .handle(&message("alice"), &ctx)
            .await
            .expect("log handler succeeds");
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        let value: serde_json::Value =
            serde_json::from_str(text.trim_end()).expect("one JSON line");
        assert_eq!(value["repo"], "acme/site");
        assert_eq!(value["tag"], "v2");
        assert_eq!(value["pusher"], "alice");
        assert_eq!(value["delivery"], ctx.delivery().as_str());
        assert_eq!(value["pushed_at"], 1417566161);
    }
}
