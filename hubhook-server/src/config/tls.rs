//! `[tls]`: certificate files, or `[tls.acme]`.

use super::*;

impl Parser<'_> {
    /// `[tls]`: `cert` and `key`, or an `[tls.acme]` table (not both).
    pub(super) fn tls(
        &self,
        raw: &RawTls,
        base: &Path,
        data_dir: &Path,
    ) -> Result<TlsFiles, ConfigError> {
        // Where the table starts, for errors about the table itself.
        let start = self.text.find("[tls").unwrap_or(0);
        let table = start..start;
        match (&raw.cert, &raw.key, &raw.acme) {
            (Some(cert_at), Some(key_at), None) => {
                let cert = resolve(base, cert_at.get_ref());
                let key = resolve(base, key_at.get_ref());
                // Reading both now turns a typo into a config error instead of a failed start.
                if let Err(e) = hubhook_core::TlsConfig::from_pem_files(&cert, &key) {
                    let (span, name) = match e.is_tls_key() {
                        true => (key_at.span(), "tls.key"),
                        false => (cert_at.span(), "tls.cert"),
                    };
                    return Err(self.error_at(span, name, e.to_string()));
                }
                private(&key).map_err(|m| self.error_at(key_at.span(), "tls.key", m))?;
                Ok(TlsFiles::Files { cert, key })
            }
            (None, None, Some(acme)) => self.acme(acme, table, base, data_dir),
            (_, _, Some(_)) => Err(self.error_at(
                table.clone(),
                "tls.acme",
                "use either cert and key, or [tls.acme], not both".into(),
            )),
            (None, _, None) => Err(self.error_at(
                table.clone(),
                "tls.cert",
                "missing: set cert and key, or a [tls.acme] table".into(),
            )),
            (_, None, None) => Err(self.error_at(
                table.clone(),
                "tls.key",
                "missing: set cert and key, or a [tls.acme] table".into(),
            )),
        }
    }

    /// `[tls.acme]`: the names, the CA, where certificates are kept, when they renew.
    fn acme(
        &self,
        a: &RawAcme,
        table: std::ops::Range<usize>,
        base: &Path,
        data_dir: &Path,
    ) -> Result<TlsFiles, ConfigError> {
        let at = |k: &str, m: String| self.error_at(table.clone(), &format!("tls.acme.{k}"), m);
        let name = |d: &str| {
            d.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
        };
        if a.domains.is_empty() || !a.domains.iter().all(|d| name(d)) {
            return Err(at(
                "domains",
                "list the names the certificate is for, like [\"hooks.example.com\"]".into(),
            ));
        }
        Ok(TlsFiles::Acme(crate::acme::AcmeSpec {
            domains: a.domains.clone(),
            email: a.email.clone(),
            directory: a
                .directory
                .clone()
                .unwrap_or_else(|| crate::acme::LETS_ENCRYPT.to_owned()),
            cache_dir: a
                .cache_dir
                .as_ref()
                .map_or_else(|| data_dir.join("acme"), |d| resolve(base, d)),
            ca_file: a.ca_file.as_ref().map(|f| resolve(base, f)),
            renew_before: a
                .renew_before
                .map_or(Duration::from_secs(30 * 86_400), |HumanDuration(t)| t),
            check_every: a
                .check_every
                .map_or(Duration::from_secs(12 * 3600), |HumanDuration(t)| t),
        }))
    }
}
