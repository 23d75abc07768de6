//! `[[notify]]` tables: where outcomes are sent, and which.

use super::*;

impl Parser<'_> {
    /// One `[[notify]]` table; its URL is never echoed (webhook URLs carry tokens).
    pub(super) fn notify(
        &self,
        index: usize,
        table: &Spanned<RawNotify>,
        handlers: &[HandlerSpec],
    ) -> Result<hubhook_core::notify::Notify, ConfigError> {
        let raw = table.get_ref();
        let key = |k: &str| format!("notify[{index}].{k}");
        let at = |k: &str, message: String| {
            self.error_at(self.key_span(table.span(), k), &key(k), message)
        };
        let name = raw.name.clone().unwrap_or_else(|| index.to_string());
        let mut notify =
            hubhook_core::notify::Notify::new(&name, raw.url.get_ref()).map_err(|e| {
                match raw.name {
                    Some(_) if e.to_string().contains("notification's name") => {
                        at("name", e.to_string())
                    }
                    _ => self.error_at(raw.url.span(), &key("url"), e.to_string()),
                }
            })?;
        if let Some(on) = &raw.on {
            notify = notify.on(on).map_err(|e| at("on", e.to_string()))?;
        }
        if let Some(names) = &raw.handlers {
            if let Some(unknown) = names
                .iter()
                .find(|n| !handlers.iter().any(|h| h.name == **n))
            {
                return Err(at("handlers", format!("no handler is named {unknown:?}")));
            }
            notify = notify.handlers(names.iter().cloned());
        }
        if let Some(repo) = &raw.repo {
            notify = notify.repo(repo);
        }
        if let Some(template) = &raw.template {
            notify = notify.template(template);
        }
        if let Some(secret) = &raw.secret {
            // Not echoed, as for a hook's secret.
            if auth::is_placeholder(secret.get_ref()) {
                return Err(self.error_at(
                    secret.span(),
                    &key("secret"),
                    "still the placeholder (a value in <angle brackets>, or dots): put the receiver's signing secret here".into(),
                ));
            }
            notify = notify
                .secret(secret.get_ref())
                .map_err(|e| self.error_at(secret.span(), &key("secret"), e.to_string()))?;
        }
        if let Some(HumanDuration(t)) = raw.timeout {
            notify = notify.timeout(t);
        }
        if let Some(n) = raw.retries {
            if n > 100 {
                return Err(at(
                    "retries",
                    format!("must be a whole number from 0 to 100, not {n}"),
                ));
            }
            notify = notify.retries(n);
        }
        if let Some(HumanDuration(t)) = raw.retry_backoff {
            notify = notify.backoff(t);
        }
        Ok(notify)
    }
}
