//! Docker Hub's legacy callback: POST a run's state to the payload's `callback_url`, over
//! HTTPS, to allowlisted hosts only.
//!
//! The URL comes from a request body, so it is treated as hostile until checked: nothing
//! outside the allowlist is looked up or contacted, redirects are never followed, and the
//! URL is only ever printed as `scheme://host[:port]` (Docker Hub puts a token in its path).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Uri};
use http_body_util::Full;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use tokio::sync::OnceCell;

use crate::client::{Client, Failure, USER_AGENT};
use crate::observe::{AttemptFinished, DeliveryStatus, Observer, RunStatus, Settled};

const MAX_DESCRIPTION: usize = 255;
const MAX_CONTEXT: usize = 100;
const MAX_RESPONSE_BUFFER: usize = 64 * 1024;

/// Where callbacks may go, and the HTTPS client that sends them.
///
/// ```no_run
/// use hubhook_core::callback::{CallbackBody, CallbackState, Callbacks};
/// # async fn run(callback_url: &str) -> Result<(), hubhook_core::callback::CallbackError> {
/// let callbacks = Callbacks::new(); // registry.hub.docker.com, port 443, 10 s
/// let body = CallbackBody::new(CallbackState::Success, "deployed", "hubhook", "");
/// callbacks.send(callback_url, &body).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Callbacks {
    allow: Vec<(String, u16)>,
    timeout: Duration,
    target_url: String,
    extra_roots: RootCertStore,
    // Shared by clones; system roots are read once, on the first send.
    tls: Arc<OnceCell<Result<Arc<ClientConfig>, String>>>,
}

impl fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allow: Vec<String> = self.allow.iter().map(|(h, p)| host_port(h, *p)).collect();
        f.debug_struct("Callbacks")
            .field("allow", &allow)
            .field("timeout", &self.timeout)
            .field("extra_roots", &self.extra_roots.len())
            .finish_non_exhaustive()
    }
}

impl Default for Callbacks {
    fn default() -> Self {
        Self::new()
    }
}

impl Callbacks {
    /// Callbacks to `registry.hub.docker.com` on port 443, with a 10 s timeout.
    pub fn new() -> Self {
        Self {
            allow: Vec::new(),
            timeout: Duration::from_secs(10),
            target_url: String::new(),
            extra_roots: RootCertStore::empty(),
            tls: Arc::default(),
        }
        .allow(["registry.hub.docker.com"])
    }

    /// Replaces the allowlist. An entry is a host name (or IP address), compared exactly and
    /// case-insensitively: `hub.docker.com` does not allow `x.hub.docker.com`. A bare host
    /// allows port 443 only; `host:port` allows that port only. An entry that is not a valid
    /// `host[:port]` allows nothing.
    #[must_use]
    pub fn allow(mut self, hosts: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.allow = hosts
            .into_iter()
            .filter_map(|h| h.into().parse::<Authority>().ok())
            .filter_map(|a| split_authority(&a))
            .collect();
        self
    }

    /// The `target_url` sent in every callback: where the results can be seen (your
    /// site, a CI page); empty by default.
    #[must_use]
    pub fn target_url(mut self, url: impl Into<String>) -> Self {
        self.target_url = url.into();
        self
    }

    /// How long one callback may take, from connecting to the response head.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Trusts the CA certificates in a PEM file as well as the system's, for a private CA.
    /// Errors name the file.
    pub fn add_roots_pem_file(mut self, path: impl AsRef<Path>) -> Result<Self, CallbackError> {
        let path = path.as_ref();
        let fail = |reason: String| CallbackError::Roots {
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| fail(format!("cannot be read as PEM: {e}")))?;
        if certs.is_empty() {
            return Err(fail("holds no CERTIFICATE block".into()));
        }
        for cert in certs {
            self.extra_roots
                .add(cert)
                .map_err(|e| fail(format!("holds an unusable CA certificate: {e}")))?;
        }
        self.tls = Arc::default();
        Ok(self)
    }

    /// POSTs `body` as JSON to `url` and returns the (2xx) status.
    ///
    /// Before anything touches the network, `url` must parse, be `https`, carry no user
    /// name or password, and name an allowed host and port. A 3xx is an error and is not
    /// followed; so is any other status outside 2xx. The response body is not read.
    pub async fn send(&self, url: &str, body: &CallbackBody) -> Result<u16, CallbackError> {
        let target = Target::check(url, &self.allow)?;
        let config = self.client_config().await?;
        let origin = target.origin();
        tokio::time::timeout(self.timeout, target.post(config, body.json()))
            .await
            .map_err(|_| CallbackError::Timeout {
                origin,
                timeout: self.timeout,
            })?
    }

    async fn client_config(&self) -> Result<Arc<ClientConfig>, CallbackError> {
        let built = self
            .tls
            .get_or_init(|| crate::client::system_roots(self.extra_roots.clone()))
            .await;
        built
            .clone()
            .map_err(|reason| CallbackError::TlsSetup { reason })
    }
}

/// A checked callback URL.
struct Target {
    /// Lower-case, as in the URL (an IPv6 address keeps its brackets).
    host: String,
    port: u16,
    authority: Authority,
    path: PathAndQuery,
}

impl Target {
    fn check(url: &str, allow: &[(String, u16)]) -> Result<Self, CallbackError> {
        let invalid = |reason: &str| CallbackError::InvalidUrl {
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        if uri.scheme() != Some(&Scheme::HTTPS) {
            return Err(CallbackError::NotHttps {
                origin: redact(url),
            });
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?.clone();
        if authority.as_str().contains('@') {
            return Err(CallbackError::UserInfo {
                host: authority.host().to_owned(),
            });
        }
        let (host, port) = split_authority(&authority).ok_or_else(|| invalid("bad port"))?;
        if !allow.iter().any(|(h, p)| *h == host && *p == port) {
            return Err(CallbackError::NotAllowed {
                host: host_port(&host, port),
            });
        }
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Ok(Self {
            host,
            port,
            authority,
            path,
        })
    }

    fn origin(&self) -> String {
        format!("https://{}", host_port(&self.host, self.port))
    }

    async fn post(self, config: Arc<ClientConfig>, json: String) -> Result<u16, CallbackError> {
        let origin = self.origin();
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        let tls_error = |source| CallbackError::Tls {
            origin: origin.clone(),
            source,
        };
        let http_error = |source| CallbackError::Http {
            origin: origin.clone(),
            source,
        };
        let host_header = HeaderValue::from_str(self.authority.as_str()).map_err(|_| {
            CallbackError::InvalidUrl {
                reason: "the host is not usable in a Host header".into(),
            }
        })?;
        let length = HeaderValue::from(json.len());
        let mut request = Request::new(Full::new(Bytes::from(json)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = Uri::from(self.path);
        let headers = request.headers_mut();
        headers.insert(header::HOST, host_header);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        headers.insert(header::CONTENT_LENGTH, length);

        // The buffer bounds the response head; no body is read.
        let response = Client::new()
            .tls(config)
            .max_head(MAX_RESPONSE_BUFFER)
            .exchange(bare, self.port, true, request)
            .await
            .map_err(|failure| match failure {
                Failure::Connect(source) => CallbackError::Connect {
                    origin: origin.clone(),
                    source,
                },
                Failure::Tls(source) => tls_error(source),
                Failure::Http(source) => http_error(source),
                // Neither happens here (a TLS configuration is given, no body is read);
                // they are still errors, not panics.
                Failure::NoTls => CallbackError::TlsSetup {
                    reason: "no TLS configuration".into(),
                },
                Failure::Body(reason) => tls_error(io::Error::other(reason)),
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else if status.is_redirection() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(|l| match l.parse::<Uri>() {
                    Ok(uri) if uri.authority().is_none() => origin.clone(),
                    _ => redact(l),
                });
            Err(CallbackError::Redirect {
                origin,
                status: status.as_u16(),
                location,
            })
        } else {
            Err(CallbackError::Status {
                origin,
                status: status.as_u16(),
            })
        }
    }
}

/// Lower-case host (brackets kept) and port (443 when absent); `None` for a bad port.
fn split_authority(authority: &Authority) -> Option<(String, u16)> {
    let host = authority.host();
    let rest = authority.as_str().strip_prefix(host)?;
    let port = match rest {
        "" => 443,
        _ => rest.strip_prefix(':')?.parse().ok()?,
    };
    Some((host.to_ascii_lowercase(), port))
}

fn host_port(host: &str, port: u16) -> String {
    match port {
        443 => host.to_owned(),
        _ => format!("{host}:{port}"),
    }
}

/// `scheme://host[:port]` of `url`: the only part fit to print.
fn redact(url: &str) -> String {
    let Ok(uri) = url.parse::<Uri>() else {
        return "<invalid URL>".into();
    };
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(a)) => match a.port() {
            Some(port) => format!("{scheme}://{}:{port}", a.host()),
            None => format!("{scheme}://{}", a.host()),
        },
        _ => "<URL without scheme or host>".into(),
    }
}

/// The first `max` characters of `s`.
fn cut(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// The state a callback reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallbackState {
    /// The run succeeded.
    Success,
    /// The run failed.
    Failure,
    /// The run could not be done.
    Error,
}

impl CallbackState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Error => "error",
        }
    }
}

/// The JSON Docker Hub accepts at a `callback_url`.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct CallbackBody {
    /// The outcome.
    pub state: CallbackState,
    /// At most 255 characters: [`new`](Self::new) and [`Callbacks::send`] cut it there.
    pub description: String,
    /// At most 100 characters: [`new`](Self::new) and [`Callbacks::send`] cut it there.
    pub context: String,
    /// A page with details of the run; may be empty.
    pub target_url: String,
}

impl fmt::Debug for CallbackBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackBody")
            .field("state", &self.state)
            .field("description", &self.description)
            .field("context", &self.context)
            .field("target_url", &redact(&self.target_url))
            .finish()
    }
}

impl CallbackBody {
    /// A body with `description` cut to 255 characters and `context` to 100 (characters, not
    /// bytes).
    pub fn new(
        state: CallbackState,
        description: impl Into<String>,
        context: impl Into<String>,
        target_url: impl Into<String>,
    ) -> Self {
        let clamp = |mut s: String, max| {
            s.truncate(cut(&s, max).len());
            s
        };
        Self {
            state,
            description: clamp(description.into(), MAX_DESCRIPTION),
            context: clamp(context.into(), MAX_CONTEXT),
            target_url: target_url.into(),
        }
    }

    /// The wire form, limits applied even to fields set by hand; infallible, unlike
    /// `serde_json::to_string`.
    fn json(&self) -> String {
        let mut map = serde_json::Map::new();
        map.insert("state".into(), self.state.as_str().into());
        map.insert(
            "description".into(),
            cut(&self.description, MAX_DESCRIPTION).into(),
        );
        map.insert("context".into(), cut(&self.context, MAX_CONTEXT).into());
        map.insert("target_url".into(), self.target_url.as_str().into());
        serde_json::Value::Object(map).to_string()
    }
}

/// The legacy callback as an observer of deliveries: once every handler of a delivery
/// has settled, POSTs the outcome to the message's `callback_url`, if it has one, in a
/// tracked task (shutdown waits for it, and the timeout bounds it). Its result is an
/// attempt of its own, of handler `callback`, reported through the seam.
#[derive(Debug)]
struct Notifier(Arc<Callbacks>);

impl Observer for Notifier {
    fn settled(&self, e: &Settled<'_>) {
        let Some(url) = e.msg.callback_url.clone() else {
            return;
        };
        let state = match e.status {
            DeliveryStatus::Ok => CallbackState::Success,
            // Nothing failed, but a newer push replaced this one: it was not deployed.
            DeliveryStatus::Superseded => CallbackState::Error,
            _ => CallbackState::Failure,
        };
        // Status words only: a command's output is not for a third party's page.
        let notes: Vec<String> = e
            .handlers
            .iter()
            .map(|(handler, status)| format!("{handler}: {status}"))
            .collect();
        let body = CallbackBody::new(state, notes.join("; "), "hubhook", &*self.0.target_url);
        let (callbacks, seam, id, msg) = (self.0.clone(), e.seam.clone(), e.id, e.msg.clone());
        e.tracker.spawn(async move {
            let (started, clock) = (std::time::SystemTime::now(), std::time::Instant::now());
            let result = callbacks.send(&url, &body).await;
            // The log line comes from the seam's log observer, like any attempt's.
            let (status, detail) = match &result {
                Ok(code) => (RunStatus::Ok, format!("answered {code}")),
                Err(e) => (RunStatus::Failed, e.to_string()),
            };
            seam.attempt_finished(&AttemptFinished {
                id,
                msg: Some(&msg),
                handler: "callback",
                attempt: 1,
                started,
                elapsed: clock.elapsed(),
                status,
                detail: &detail,
                final_: true,
            });
        });
    }
}

impl crate::HubhookServiceBuilder {
    /// After every handler of a delivery has finished, POSTs the result to the message's
    /// `callback_url` (Docker Hub's legacy callback) when `callbacks` allows its host.
    pub fn callbacks(self, callbacks: Callbacks) -> Self {
        self.observe(Arc::new(Notifier(Arc::new(callbacks))))
    }
}

/// Why a callback was refused or failed. Messages name the host, never the URL's path or
/// query (Docker Hub puts a token there).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallbackError {
    /// The URL does not parse, or has no host.
    #[error("invalid callback URL: {reason}")]
    InvalidUrl {
        /// What is wrong.
        reason: String,
    },
    /// The URL is not `https`.
    #[error("callback to {origin} refused: only https is allowed")]
    NotHttps {
        /// `scheme://host[:port]` of the URL.
        origin: String,
    },
    /// The URL carries a user name or password.
    #[error("callback to {host} refused: the URL carries user credentials")]
    UserInfo {
        /// The host.
        host: String,
    },
    /// The host and port are not on the allowlist; the host was neither looked up nor
    /// contacted.
    #[error("callback to {host} refused: not on the allowlist")]
    NotAllowed {
        /// `host` or `host:port` (port other than 443), as an allowlist entry would say it.
        host: String,
    },
    /// [`Callbacks::add_roots_pem_file`] could not use the file.
    #[error("CA certificates {}: {reason}", .path.display())]
    Roots {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS client could not be set up, e.g. there is no trusted root certificate.
    #[error("cannot set up TLS for callbacks: {reason}")]
    TlsSetup {
        /// What is wrong.
        reason: String,
    },
    /// Looking up or connecting to the host failed.
    #[error("cannot connect to {origin}: {source}")]
    Connect {
        /// `https://host[:port]`.
        origin: String,
        /// The cause.
        source: io::Error,
    },
    /// The TLS handshake failed, e.g. the certificate is not trusted.
    #[error("TLS with {origin} failed: {source}")]
    Tls {
        /// `https://host[:port]`.
        origin: String,
        /// The cause (often a `rustls::Error` inside).
        source: io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with {origin} failed: {source}")]
    Http {
        /// `https://host[:port]`.
        origin: String,
        /// The cause.
        source: hyper::Error,
    },
    /// No response head within the timeout.
    #[error("no answer from {origin} within {timeout:?}")]
    Timeout {
        /// `https://host[:port]`.
        origin: String,
        /// The timeout.
        timeout: Duration,
    },
    /// A 3xx answer; redirects are not followed.
    #[error(
        "{origin} answered {status}, a redirect to {}; redirects are not followed",
        .location.as_deref().unwrap_or("nowhere")
    )]
    Redirect {
        /// `https://host[:port]`.
        origin: String,
        /// The status.
        status: u16,
        /// `scheme://host[:port]` of the `Location` header, if there is one.
        location: Option<String>,
    },
    /// Any other answer outside 2xx.
    #[error("{origin} answered {status}")]
    Status {
        /// `https://host[:port]`.
        origin: String,
        /// The status.
        status: u16,
    },
}
