//! `hubhook send`: post a payload to a hook and print the answer, the "Test" button.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::error::Error as _;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Full;
use hubhook_core::client::{self, Client};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// How long `send` waits for its answer, connecting included.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer body `send` reads and prints; a longer one is an error.
const MAX_ANSWER: usize = 1024 * 1024;

/// What `send` reports: the status line and the body of the answer.
pub(crate) struct Answer {
    pub(crate) status: http::StatusCode,
    pub(crate) body: String,
}

/// The URL as `send` may print it: without the query (`?apikey=…`), the fragment or the
/// `user:password@` part. It works on the raw text, so it is safe for URLs that do not
/// parse; every URL that `send` prints goes through it.
pub(crate) fn redact(url: &str) -> String {
    let (mut shown, cut) = match url.find(['?', '#']) {
        Some(at) => (
            url[..at].to_owned(),
            if url[at..].starts_with('?') {
                "?…"
            } else {
                "#…"
            },
        ),
        None => (url.to_owned(), ""),
    };
    // The userinfo ends at the last '@' (a password may hold '/' or ':'); it starts after
    // "://", or at the start when there is no scheme.
    if let Some(at) = shown.rfind('@') {
        let start = shown[..at].find("://").map_or(0, |s| s + 3);
        shown.replace_range(start..=at, "");
    }
    shown.push_str(cut);
    shown
}

/// Posts `body` to `url` (http or https), with `key` as a bearer token if given.
pub(crate) async fn send(
    url: &str,
    body: Vec<u8>,
    key: Option<&str>,
    cacert: Option<&Path>,
) -> Result<Answer, String> {
    let Target {
        tls,
        host,
        port,
        authority,
        bare_host,
        uri,
    } = target(url)?;
    let mut request = Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, client::USER_AGENT);
    if let Some(key) = key {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let mut client = Client::new().connect_timeout(TIMEOUT).read_body(MAX_ANSWER);
    if tls {
        client = client.tls(Arc::new(client_tls(cacert)?));
    }
    let answer = tokio::time::timeout(TIMEOUT, client.send(&bare_host, port, tls, request))
        .await
        .map_err(|_| format!("no answer from {host}:{port} within 30 s"))?;
    let response = answer.map_err(|e| {
        let cause = e.source().map_or_else(String::new, ToString::to_string);
        if e.is_connect() {
            format!("cannot connect to {host}:{port}: {cause}")
        } else if e.is_tls() {
            let shown = match e.source().and_then(|s| s.downcast_ref::<std::io::Error>()) {
                Some(io) => handshake_error(io, cacert),
                None => cause,
            };
            format!("TLS handshake with {host}:{port} failed: {shown}")
        } else if !tls
            && (cause.contains("invalid HTTP version")
                || cause.contains("connection closed before message completed"))
        {
            // Plain HTTP to a TLS port reads the server's TLS alert as a broken status
            // line: say what that most likely means.
            format!("request failed: {cause}; is {host}:{port} an HTTPS server? try https://")
        } else {
            format!("request failed: {cause}")
        }
    })?;
    Ok(Answer {
        status: response.status(),
        body: String::from_utf8_lossy(response.body()).into_owned(),
    })
}

/// Where `send` posts to, read from its URL.
struct Target {
    tls: bool,
    /// As written in the URL (IPv6 in brackets), for messages.
    host: String,
    port: u16,
    /// The `Host` header: host and port, without any `user:password@`.
    authority: String,
    /// The host to connect to and to name in TLS.
    bare_host: String,
    uri: Uri,
}

/// Reads the URL; every refusal names the URL without its key.
fn target(url: &str) -> Result<Target, String> {
    let shown = redact(url);
    if !url.contains("://") {
        return Err(format!(
            "{shown:?} has no scheme: add http:// (or https://) in front, as in \"http://{shown}\""
        ));
    }
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{shown:?} must start with http:// or https://")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("{shown:?} has no host"))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    // Host: the authority without any `user:password@`.
    let authority = match uri.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(Target {
        tls,
        host,
        port,
        authority,
        bare_host,
        uri,
    })
}

fn client_tls(cacert: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match cacert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in &certs {
                roots
                    .add(cert.clone())
                    .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| match e {
                    rustls::client::VerifierBuilderError::NoRootAnchors => {
                        format!("{} holds no PEM certificate", path.display())
                    }
                    e => format!("cannot use the certificates in {}: {e}", path.display()),
                })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(CaFileVerifier {
                    webpki,
                    certs,
                    file: path.display().to_string(),
                }))
                .with_no_client_auth()
        }
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Verifies the server against the certificates of `--cacert FILE` as curl does: the usual
/// WebPKI checks first, and if they fail only because the server's certificate is not a
/// proper end-entity certificate chained to FILE (a self-signed certificate made by
/// `openssl req -x509` is marked CA:TRUE, which WebPKI refuses as a server's own), it is
/// still trusted when it is byte for byte one of the certificates in FILE, is valid today
/// and is valid for the server name. The handshake signatures are always checked by the
/// provider's algorithms through the WebPKI verifier.
#[derive(Debug)]
struct CaFileVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    certs: Vec<CertificateDer<'static>>,
    file: String,
}

/// A refusal that [`CaFileVerifier`] explains in words.
#[derive(Debug)]
struct Untrusted(String);

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Untrusted {}

/// Whether WebPKI's `error` says the certificate is a CA certificate used as the server's
/// own. rustls passes that webpki error on only as an opaque [`rustls::OtherError`] whose
/// text is the variant's name.
fn is_ca_used_as_end_entity(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidCertificate(CertificateError::Other(other))
            if other.to_string() == "CaUsedAsEndEntity"
    )
}

impl ServerCertVerifier for CaFileVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let error = match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(error) => error,
        };
        let ca_as_leaf = is_ca_used_as_end_entity(&error);
        let no_chain = matches!(
            error,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
        if !ca_as_leaf && !no_chain {
            return Err(error);
        }
        if !self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            let why = if ca_as_leaf {
                "it is marked CA:TRUE, so only an exact copy of it can be trusted"
            } else {
                "nor signed by one of them"
            };
            return Err(untrusted(format!(
                "the server's certificate is not one of the certificates in {} ({why})",
                self.file
            )));
        }
        // Pinned by the user: what is left to check is the dates and the name.
        let (not_before, not_after) = crate::x509::validity(end_entity).ok_or_else(|| {
            untrusted("cannot read the validity dates of the server's certificate".into())
        })?;
        let time = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if time < not_before {
            return Err(CertificateError::NotValidYet.into());
        }
        if time > not_after {
            return Err(CertificateError::Expired.into());
        }
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.webpki.root_hint_subjects()
    }
}

fn untrusted(words: String) -> rustls::Error {
    CertificateError::Other(rustls::OtherError(Arc::new(Untrusted(words)))).into()
}

/// A failed TLS handshake in words, not as rustls's Debug dump.
fn handshake_error(error: &std::io::Error, cacert: Option<&Path>) -> String {
    let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return error.to_string();
    };
    let rustls::Error::InvalidCertificate(cert) = tls else {
        return tls.to_string();
    };
    let trust = match cacert {
        Some(path) => format!("the certificates in {}", path.display()),
        None => "this system's CA certificates (give the CA, or the server's own certificate, with --cacert)".to_owned(),
    };
    match cert {
        CertificateError::Other(other) if other.0.is::<Untrusted>() => other.to_string(),
        CertificateError::Other(_) if is_ca_used_as_end_entity(tls) => format!(
            "the server's certificate is marked CA:TRUE (as self-signed ones made by openssl are) and is not one of {trust}"
        ),
        CertificateError::UnknownIssuer => {
            format!("the server's certificate is not signed by any of {trust}")
        }
        CertificateError::NotValidForName => {
            "the server's certificate is not valid for this host name".to_owned()
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            // webpki gives the names as `DnsName("a.example")` or `IpAddress(127.0.0.1)`.
            let names: Vec<&str> = presented
                .iter()
                .map(|name| {
                    name.strip_suffix(')')
                        .and_then(|n| n.split_once('('))
                        .map_or(name.as_str(), |(_, inner)| inner.trim_matches('"'))
                })
                .collect();
            let valid = if names.is_empty() {
                "it names no host (subjectAltName)".to_owned()
            } else {
                format!("it is only for {}", names.join(", "))
            };
            format!(
                "the server's certificate is not valid for {:?}: {valid}",
                expected.to_str()
            )
        }
        CertificateError::Expired => "the server's certificate has expired".to_owned(),
        CertificateError::NotValidYet => "the server's certificate is not valid yet".to_owned(),
        CertificateError::ExpiredContext { .. } | CertificateError::NotValidYetContext { .. } => {
            format!("the server's {cert}")
        }
        CertificateError::BadEncoding => "the server's certificate cannot be parsed".to_owned(),
        CertificateError::BadSignature => "the server's certificate has a bad signature".to_owned(),
        CertificateError::Revoked => "the server's certificate is revoked".to_owned(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "the server's certificate is not for TLS servers (extended key usage)".to_owned()
        }
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "the server's certificate uses an unsupported signature algorithm".to_owned()
        }
        other => format!("invalid server certificate: {other}"),
    }
}
