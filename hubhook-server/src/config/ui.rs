//! `[ui]`: where the web page of deliveries listens and who may log in.

use super::*;

/// Where the page listens when `[ui]` does not say.
const DEFAULT_UI_ADDR: &str = "127.0.0.1:8081";
/// How long a login lasts when `session_ttl` does not say, and at most.
const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSION_TTL: Duration = Duration::from_secs(30 * 86_400);
/// A cookie's `Max-Age` is in whole seconds; less than a minute is a typo.
const MIN_SESSION_TTL: Duration = Duration::from_secs(60);

impl Parser<'_> {
    /// `[ui]`: `None` unless enabled. Read last: it needs the keys, `[tls]` and the journal.
    pub(super) fn ui(
        &self,
        table: &Spanned<RawUi>,
        config: &Config,
    ) -> Result<Option<UiSpec>, ConfigError> {
        let raw = table.get_ref();
        if !raw.enabled {
            return Ok(None);
        }
        let at = |k: &str, message: String| {
            self.error_at(self.key_span(table.span(), k), &format!("ui.{k}"), message)
        };
        let listen = match &raw.listen {
            Some(text) => text.get_ref().parse::<SocketAddr>().map_err(|_| {
                self.error_at(
                    text.span(),
                    "ui.listen",
                    format!(
                        "{:?} is not an address with a port (like \"{DEFAULT_UI_ADDR}\")",
                        text.get_ref()
                    ),
                )
            })?,
            None => DEFAULT_UI_ADDR.parse().expect("a valid address"),
        };
        if listen.port() != 0 && listen == config.listen {
            return Err(at(
                "listen",
                format!("{listen} is the hook's address; the page needs its own"),
            ));
        }
        if !config.journal {
            return Err(at(
                "enabled",
                "the page shows the journal, and `journal = false` keeps none".into(),
            ));
        }
        let password_hash = match &raw.password_hash {
            Some(hash) => {
                crate::ui::check_password_hash(hash.get_ref())
                    .map_err(|e| self.error_at(hash.span(), "ui.password_hash", e))?;
                Some(hash.get_ref().clone())
            }
            None if config.api_keys.is_empty() => {
                return Err(at(
                    "password_hash",
                    "missing: the page needs a login; set password_hash (`hubhook ui-password` makes one) or an [auth] api key".into(),
                ))
            }
            None => None,
        };
        if raw.tls && !matches!(config.tls, Some(TlsFiles::Files { .. })) {
            return Err(at(
                "tls",
                "needs [tls] cert and key files (an ACME certificate serves the hook only)".into(),
            ));
        }
        if !listen.ip().is_loopback() && raw.hosts.is_empty() {
            self.warnings.borrow_mut().push(format!(
                "{}: ui.listen {listen} is not loopback and ui.hosts is empty: the page answers any Host name; list the names it is reached by",
                self.file.display()
            ));
        }
        if !raw.tls && !raw.secure_cookie && !listen.ip().is_loopback() {
            self.warnings.borrow_mut().push(format!(
                "{}: ui.listen {listen} is not loopback and ui.tls is off: the login crosses the network in clear; set ui.tls, or put it behind a TLS proxy and set ui.secure_cookie",
                self.file.display()
            ));
        }
        if let Some(bad) = raw
            .hosts
            .iter()
            .find(|h| h.is_empty() || h.contains(['/', ' ', '@', '*']))
        {
            return Err(at(
                "hosts",
                format!("{bad:?} is not a Host value (like \"hubhook.example.com\" or \"10.0.0.5:8081\")"),
            ));
        }
        let session_ttl = raw
            .session_ttl
            .map_or(DEFAULT_SESSION_TTL, |HumanDuration(t)| t);
        if session_ttl < MIN_SESSION_TTL || session_ttl > MAX_SESSION_TTL {
            return Err(at(
                "session_ttl",
                "must be between 1 minute and 30 days".into(),
            ));
        }
        Ok(Some(UiSpec {
            listen,
            password_hash,
            tls: raw.tls,
            secure_cookie: raw.secure_cookie,
            hosts: raw.hosts.clone(),
            session_ttl,
        }))
    }
}
