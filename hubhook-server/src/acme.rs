//! `[tls.acme]`: certificates fetched from an ACME directory (Let's Encrypt, or a test CA
//! such as pebble), validated by TLS-ALPN-01 on hubhook's own TLS port, cached in the data
//! dir, and renewed well before they expire. Serving goes on with the old certificate
//! while a renewal fails; a new one takes effect for new connections, and open ones keep
//! theirs.
//!
//! instant-acme speaks the protocol (it is small, async on tokio and hyper, and uses rustls
//! with ring like the rest of hubhook); TLS-ALPN-01 needs no second port: the listener's
//! certificate resolver answers a validation's `acme-tls/1` handshake with the challenge
//! certificate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Let's Encrypt's production directory, the default.
pub(crate) const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// What `[tls.acme]` says.
#[derive(Debug, Clone)]
pub(crate) struct AcmeSpec {
    pub(crate) domains: Vec<String>,
    pub(crate) email: Option<String>,
    pub(crate) directory: String,
    /// Where the account and the certificate are kept (default: `<data_dir>/acme`).
    pub(crate) cache_dir: PathBuf,
    /// Extra roots to trust the directory with (a test CA); default: the system's.
    pub(crate) ca_file: Option<PathBuf>,
    /// Renew when the certificate has less than this left; default 30 days.
    pub(crate) renew_before: Duration,
    /// How often the certificate is looked at; default 12 hours.
    pub(crate) check_every: Duration,
}

/// The certificate hubhook serves, swapped when it is renewed, and the TLS-ALPN-01
/// challenge certificates of an order being validated.
#[derive(Debug, Default)]
pub(crate) struct Certificates {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == hubhook_core::tls::ACME_TLS_ALPN));
        if validation {
            let name = hello.server_name()?;
            return read(&self.challenges).get(name).cloned();
        }
        read(&self.current).clone()
    }
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock.write().unwrap_or_else(|p| p.into_inner()) = value;
}

impl Certificates {
    /// Installs a chain and its key (PEM) as the certificate new connections get.
    fn install(&self, chain_pem: &str, key_pem: &str) -> Result<(), String> {
        let certified = certified(chain_pem, key_pem)?;
        // The cache's two files are replaced one at a time: a crash in between leaves a
        // key beside a certificate it does not belong to, which must not be served. (Not
        // for the challenge certificate: its critical acmeIdentifier extension is one
        // webpki, which parses the certificate here, does not know.)
        certified
            .keys_match()
            .map_err(|e| format!("the private key does not belong to the certificate: {e}"))?;
        write(&self.current, Some(Arc::new(certified)));
        Ok(())
    }

    /// Seconds since the epoch at which the current certificate expires.
    fn expires(&self) -> Option<i64> {
        let current = read(&self.current)?;
        let leaf = current.cert.first()?;
        crate::x509::validity(leaf).map(|(_, not_after)| not_after)
    }
}

fn certified(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate chain is not PEM: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the private key is not PEM: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the private key cannot sign: {e}"))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Loads the cached certificate, if any, and starts the task that obtains and renews it.
/// Returns the resolver for the listener's TLS.
pub(crate) fn start(spec: AcmeSpec) -> Result<Arc<Certificates>, String> {
    create_private_dir(&spec.cache_dir)?;
    let certs = Arc::new(Certificates::default());
    let (cert_file, key_file) = (
        spec.cache_dir.join("cert.pem"),
        spec.cache_dir.join("key.pem"),
    );
    if let (Ok(chain), Ok(key)) = (
        std::fs::read_to_string(&cert_file),
        std::fs::read_to_string(&key_file),
    ) {
        match certs.install(&chain, &key) {
            Ok(()) => {
                tracing::info!(cache = %spec.cache_dir.display(), "serving the cached ACME certificate")
            }
            Err(e) => {
                tracing::warn!(file = %cert_file.display(), error = %e, "the cached ACME certificate is unusable; fetching a new one")
            }
        }
    }
    let task = certs.clone();
    tokio::spawn(async move { renew_forever(spec, task).await });
    Ok(certs)
}

/// Obtains a certificate when there is none or it is due, then looks again every
/// `check_every`; a failure is retried after a backoff while the old certificate serves.
async fn renew_forever(spec: AcmeSpec, certs: Arc<Certificates>) {
    let mut backoff = Duration::from_secs(10);
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let due = certs
            .expires()
            .is_none_or(|at| at - now <= spec.renew_before.as_secs() as i64);
        if due {
            match obtain(&spec, &certs).await {
                Ok(()) => {
                    backoff = Duration::from_secs(10);
                    tracing::info!(domains = %spec.domains.join(", "), "installed a new ACME certificate");
                }
                Err(e) => {
                    tracing::error!(domains = %spec.domains.join(", "), error = %e, retry_s = backoff.as_secs(), "could not obtain an ACME certificate; the current one (if any) keeps serving");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(3600));
                    continue;
                }
            }
        }
        tokio::time::sleep(spec.check_every).await;
    }
}

/// One order: account, TLS-ALPN-01 for each domain, finalize, install, cache. The
/// challenge certificates are served only while this runs, however it ends.
async fn obtain(spec: &AcmeSpec, certs: &Certificates) -> Result<(), String> {
    let result = place_order(spec, certs).await;
    write(&certs.challenges, HashMap::new());
    result
}

async fn place_order(spec: &AcmeSpec, certs: &Certificates) -> Result<(), String> {
    let account = account(spec).await?;
    let identifiers: Vec<Identifier> = spec
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authz = next.map_err(|e| format!("authorization: {e}"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("an authorization is {other:?}")),
        }
        let mut challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or("the directory offers no tls-alpn-01 challenge")?;
        let domain = challenge.identifier().to_string();
        let digest = challenge.key_authorization().digest();
        let answer = challenge_certificate(&domain, digest.as_ref())?;
        certs
            .challenges
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain, Arc::new(answer));
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("challenge: {e}"))?;
    }
    let polling = RetryPolicy::new().timeout(Duration::from_secs(90));
    let status = order
        .poll_ready(&polling)
        .await
        .map_err(|e| format!("validation: {e}"))?;
    match status {
        OrderStatus::Ready => {}
        other => return Err(format!("the order is {other:?} after validation")),
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain_pem = order
        .poll_certificate(&polling)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    certs.install(&chain_pem, &key_pem)?;
    write_private(&spec.cache_dir.join("key.pem"), &key_pem)?;
    write_private(&spec.cache_dir.join("cert.pem"), &chain_pem)?;
    Ok(())
}

/// The account kept in the cache, or a new one (then kept, 0600).
async fn account(spec: &AcmeSpec) -> Result<Account, String> {
    let builder = || match &spec.ca_file {
        Some(ca) => Account::builder_with_root(ca)
            .map_err(|e| format!("cannot trust {}: {e}", ca.display())),
        None => Account::builder().map_err(|e| format!("cannot make an HTTPS client: {e}")),
    };
    let file = spec.cache_dir.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Ok(credentials) = serde_json::from_str::<AccountCredentials>(&text) {
            match builder()?.from_credentials(credentials).await {
                Ok(account) => return Ok(account),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "the cached ACME account is unusable; making a new one")
                }
            }
        }
    }
    let contact = spec.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            spec.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("cannot register with {}: {e}", spec.directory))?;
    let text = serde_json::to_string(&credentials).map_err(|e| e.to_string())?;
    write_private(&file, &text)?;
    Ok(account)
}

/// The self-signed certificate a TLS-ALPN-01 validation expects for `domain`: its only
/// name, and the `acmeIdentifier` extension holding the key authorization's digest.
fn challenge_certificate(domain: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])
        .map_err(|e| format!("challenge certificate for {domain}: {e}"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| format!("challenge key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("challenge certificate for {domain}: {e}"))?;
    certified(&cert.pem(), &key.serialize_pem())
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the ACME cache {}: {e}", dir.display()))
}

/// Writes `text` to `path` (mode 0600) by a temporary file renamed over it.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", temp.display()))?;
    std::fs::rename(&temp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_from_another_certificate_is_refused() {
        let one = rcgen::generate_simple_self_signed(vec!["one.test".to_owned()]).expect("one");
        let two = rcgen::generate_simple_self_signed(vec!["two.test".to_owned()]).expect("two");
        let (cert, key) = (one.cert.pem(), one.key_pair.serialize_pem());
        let certs = Certificates::default();
        assert_eq!(certs.install(&cert, &key), Ok(()));
        let got = certs.install(&cert, &two.key_pair.serialize_pem()).err();
        assert!(
            got.as_deref()
                .is_some_and(|e| e.contains("does not belong to the certificate")),
            "{got:?}"
        );
    }
}
