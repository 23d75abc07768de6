//! TLS from PEM files: rustls with the `ring` provider, ALPN for h2 and http/1.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::TlsPart;
use crate::Error;

/// The ALPN protocol of an ACME TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A server certificate chain and its private key, ready for the
/// [`ListenerBuilder::tls`](crate::ListenerBuilder::tls).
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Reads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    /// Errors name the file and say what is wrong with it.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, Error> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let cert_pem = read(cert, TlsPart::Certificate)?;
        let key_pem = read(key, TlsPart::Key)?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| e.at_files(cert, key))
    }

    /// Like [`from_pem_files`](Self::from_pem_files), from PEM text in memory.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        let fail = |part: TlsPart, reason: String| Error::tls(part, PathBuf::new(), reason);
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(TlsPart::Certificate, format!("is not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(fail(
                TlsPart::Certificate,
                "holds no CERTIFICATE block".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| fail(TlsPart::Key, format!("holds no usable private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(TlsPart::Configuration, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| fail(TlsPart::Certificate, format!("does not fit the key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// TLS whose certificate `resolver` picks for each handshake: one that changes while
    /// the server runs (a renewal takes effect for new connections, and open ones keep
    /// theirs), or an ACME TLS-ALPN-01 challenge. ALPN offers `h2`, `http/1.1` and
    /// `acme-tls/1`; a connection that negotiates `acme-tls/1` is closed after its
    /// handshake, as RFC 8737 says.
    pub fn from_resolver(
        resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    ) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::tls(TlsPart::Configuration, PathBuf::new(), e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// The rustls server configuration, for a listener of the embedder's own (hubhook's
    /// web page serves with the hook's certificate this way). ALPN offers `h2` and
    /// `http/1.1` (and `acme-tls/1` when made by [`from_resolver`](Self::from_resolver)).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

fn read(path: &Path, part: TlsPart) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::tls(part, path, format!("cannot be read: {e}")).with(e))
}
