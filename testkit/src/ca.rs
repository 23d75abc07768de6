//! A test certificate authority and a certificate it signed for `localhost`, for the
//! HTTPS receivers tests start: the client under test trusts the CA's PEM, as it would a
//! private CA in production.

use std::sync::Arc;

/// A CA, its PEM, and a rustls server configuration for `localhost` (HTTP/1.1) with a
/// certificate it signed.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA certificate, PEM.
    pub pem: String,
    /// A server for `localhost` whose certificate this CA signed.
    pub server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// A new CA and server certificate (keys made now, never reused).
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hubhook test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        let key = rcgen::KeyPair::generate().expect("server key");
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("server params")
            .signed_by(&key, &ca, &ca_key)
            .expect("server certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            pem: ca.pem(),
            server: Arc::new(server),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
