//! `[ui]`: a read-mostly web page of the journal's deliveries, on a listener of its own.
//!
//! Rendered on the server (maud), served entirely by the binary (no CDN, one small
//! script for the live refresh), usable with JavaScript off. Every page needs a login;
//! the one action, Replay, is a POST that carries the session's CSRF token.

mod chart;
mod pages;
mod session;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hubhook_core::journal::{Filter, History};
use hubhook_core::{DeliveryId, DeliveryStatus, HubhookService, ReplayError, TlsConfig};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use maud::Markup;
use tokio::net::TcpListener;

use crate::config::{Config, TlsFiles, UiSpec};
use crate::deliveries::JOURNAL_FILE;
use crate::error::Error;
use pages::{ListQuery, Row};
pub(crate) use session::{check_password_hash, hash_password};
use session::{cookie, Login, Refused, Session, Sessions, COOKIE};

/// The largest form body read (a login or a replay).
const MAX_FORM: usize = 8 * 1024;
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
/// How long one connection is kept (a browser opens another): idle keep-alive
/// connections cannot hold every slot for long.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// How long a connection past its lifetime has to finish what is in flight (a login
/// waiting for its turn in a full line, at one a second, fits).
const CLOSING_GRACE: Duration = Duration::from_secs(60);
/// How long a new connection may take to send its first byte (or finish its TLS
/// handshake) before it is closed.
const FIRST_BYTE: Duration = Duration::from_secs(10);
/// Deliveries the list shows unless `limit` says otherwise.
const DEFAULT_LIMIT: u64 = 100;
/// The chart's window when the journal keeps deliveries forever.
const MAX_CHART_DAYS: u64 = 90;

const CSS: &str = include_str!("ui.css");
const JS: &str = include_str!("ui.js");

/// What every request handler reads.
struct Ui {
    journal: PathBuf,
    service: HubhookService,
    login: Login,
    sessions: Sessions,
    /// Whether the session cookie is `Secure` (served over TLS, or behind a TLS proxy).
    secure_cookie: bool,
    /// The `Host` values a request may carry (DNS rebinding), or any when empty.
    hosts: Vec<String>,
    chart_days: usize,
}

/// Binds `[ui] listen` and serves the page in the background; returns the bound address.
pub(crate) async fn start(
    spec: &UiSpec,
    config: &Config,
    service: HubhookService,
) -> Result<SocketAddr, Error> {
    let tls = match (&config.tls, spec.tls) {
        (Some(TlsFiles::Files { cert, key }), true) => Some(tokio_rustls::TlsAcceptor::from(
            TlsConfig::from_pem_files(cert, key)?.server_config(),
        )),
        _ => None,
    };
    let tcp = TcpListener::bind(spec.listen)
        .await
        .map_err(|e| format!("cannot listen for the web page on {}: {e}", spec.listen))?;
    let addr = tcp
        .local_addr()
        .map_err(|e| format!("cannot read the web page's address: {e}"))?;
    let keep = config
        .keep
        .map_or(MAX_CHART_DAYS, |d| d.as_secs().div_ceil(86_400));
    let ui = Arc::new(Ui {
        journal: config.data_dir.join(JOURNAL_FILE),
        service,
        login: Login::new(spec.password_hash.clone(), &config.api_keys),
        sessions: Sessions::new(spec.session_ttl),
        secure_cookie: tls.is_some() || spec.secure_cookie,
        hosts: allowed_hosts(spec, addr),
        chart_days: keep.clamp(1, MAX_CHART_DAYS) as usize,
    });
    tokio::spawn(accept(tcp, tls, ui));
    Ok(addr)
}

async fn accept(tcp: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, ui: Arc<Ui>) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(FIRST_BYTE)
        .max_buf_size(64 * 1024);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(16)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(FIRST_BYTE);
    // No version sniffing (it waits for bytes with no timeout of its own): plain TCP is
    // HTTP/1 (browsers speak HTTP/2 over TLS alone), and TLS says which in its ALPN.
    let h1 = Arc::new(http.clone().http1_only());
    let h2 = Arc::new(http.http2_only());
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match tcp.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "web page: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (ui, tls, h1, h2) = (ui.clone(), tls.clone(), h1.clone(), h2.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let ui = ui.clone();
                async move { Ok::<_, Infallible>(respond(&ui, req).await) }
            });
            let served = match tls {
                Some(tls) => match tokio::time::timeout(FIRST_BYTE, tls.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let http = match stream.get_ref().1.alpn_protocol() {
                            Some(b"h2") => &h2,
                            _ => &h1,
                        };
                        serve(http, TokioIo::new(stream), service).await
                    }
                    _ => Ok(()),
                },
                None => serve(&h1, TokioIo::new(stream), service).await,
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "web page: connection ended");
            }
        });
    }
}

/// Serves one connection for at most [`CONNECTION_LIFETIME`], then closes it gracefully:
/// a request in flight gets [`CLOSING_GRACE`] to be answered, and a browser opens
/// another connection.
async fn serve<I, S>(
    http: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = http.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => return served,
        () = tokio::time::sleep(CONNECTION_LIFETIME) => {}
    }
    connection.as_mut().graceful_shutdown();
    match tokio::time::timeout(CLOSING_GRACE, connection).await {
        Ok(served) => served,
        Err(_) => Ok(()),
    }
}

/// One request: the assets and the login are open, every other page needs a session.
async fn respond(ui: &Ui, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if !host_allowed(&ui.hosts, &req) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "this page answers to its own address only (see [ui] hosts)",
        );
    }
    let path = req.uri().path().to_owned();
    // HEAD is GET without the body (hyper leaves the body out).
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        other => other.clone(),
    };
    match (&method, path.as_str()) {
        (&Method::GET, "/assets/ui.css") => return asset(CSS, "text/css; charset=utf-8"),
        (&Method::GET, "/assets/ui.js") => return asset(JS, "text/javascript; charset=utf-8"),
        (&Method::GET, "/login") => return html(StatusCode::OK, pages::login(None)),
        (&Method::POST, "/login") => return log_in(ui, req).await,
        _ => {}
    }
    let token = cookie(req.headers(), COOKIE).map(str::to_owned);
    let Some(session) = token.as_deref().and_then(|t| ui.sessions.find(t)) else {
        // A page asks for the login; anything else is refused outright.
        return match method {
            Method::GET => redirect("/login"),
            _ => text(StatusCode::UNAUTHORIZED, "log in first"),
        };
    };
    let replay_of = path
        .strip_prefix("/deliveries/")
        .and_then(|rest| rest.strip_suffix("/replay"));
    match (&method, path.as_str(), replay_of) {
        (&Method::GET, "/", _) => list(ui, &session, req.uri().query()).await,
        (&Method::POST, "/logout", _) => match form(req).await {
            Some(fields) if session.csrf_matches(field(&fields, "csrf")) => {
                if let Some(token) = &token {
                    ui.sessions.remove(token);
                }
                let mut response = redirect("/login");
                set_cookie(
                    &mut response,
                    &format!("{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"),
                );
                response
            }
            _ => text(
                StatusCode::FORBIDDEN,
                "the form's CSRF token is missing or stale; reload the page",
            ),
        },
        (&Method::POST, _, Some(id)) => {
            let id = id.to_owned();
            match form(req).await {
                Some(fields) if session.csrf_matches(field(&fields, "csrf")) => {
                    replay(ui, &id).await
                }
                _ => text(
                    StatusCode::FORBIDDEN,
                    "the form's CSRF token is missing or stale; reload the page",
                ),
            }
        }
        (&Method::GET, _, None) if path.starts_with("/deliveries/") => {
            detail(ui, &session, &path["/deliveries/".len()..]).await
        }
        (_, "/", _) => not_allowed("GET, HEAD"),
        (_, "/logout", _) => not_allowed("POST"),
        _ => html(
            StatusCode::NOT_FOUND,
            pages::problem("Not found", "There is no such page."),
        ),
    }
}

/// `POST /login`: a session cookie and the list, or the form again.
async fn log_in(ui: &Ui, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(fields) = form(req).await else {
        return html(
            StatusCode::BAD_REQUEST,
            pages::login(Some("The form could not be read.")),
        );
    };
    let given = field(&fields, "password").to_owned();
    let checked = match given.is_empty() {
        true => Err(Refused::Wrong),
        false => ui.login.check(given).await,
    };
    match checked {
        Ok(()) => {}
        Err(Refused::Wrong) => {
            tracing::warn!("web page: a login failed");
            return html(
                StatusCode::UNAUTHORIZED,
                pages::login(Some("That is not the password.")),
            );
        }
        Err(Refused::Busy) => {
            let mut response = html(
                StatusCode::TOO_MANY_REQUESTS,
                pages::login(Some(
                    "Too many logins just now; try again in a few seconds.",
                )),
            );
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("10"),
            );
            return response;
        }
    }
    let token = match ui.sessions.create() {
        Ok(token) => token,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let mut response = redirect("/");
    let secure = if ui.secure_cookie { "; Secure" } else { "" };
    set_cookie(
        &mut response,
        &format!(
            "{COOKIE}={token}; Max-Age={}; Path=/; HttpOnly; SameSite=Strict{secure}",
            ui.sessions.ttl().as_secs()
        ),
    );
    response
}

/// `GET /`.
async fn list(ui: &Ui, session: &Session, query: Option<&str>) -> Response<Full<Bytes>> {
    let pairs = query.map(parse_form).unwrap_or_default();
    let status = match field(&pairs, "status") {
        "" => None,
        word => match word.parse::<DeliveryStatus>() {
            Ok(status) => Some(status),
            Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
        },
    };
    let repo = Some(field(&pairs, "repo").trim().to_owned()).filter(|r| !r.is_empty());
    let limit = field(&pairs, "limit")
        .parse()
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, ListQuery::MAX_LIMIT);
    let query = ListQuery {
        status,
        repo,
        limit,
    };
    let mut filter = Filter::new().limit(limit);
    if let Some(status) = query.status {
        filter = filter.status(status);
    }
    if let Some(repo) = &query.repo {
        filter = filter.repo(repo.clone());
    }
    let journal = ui.journal.clone();
    let days = ui.chart_days;
    let now = now_ms();
    let read = blocking(move || {
        History::open(&journal)?.snapshot(|history| {
            let mut rows = Vec::new();
            for summary in history.list(&filter)? {
                let attempts = history.latest_attempts(summary.id)?;
                rows.push(Row { summary, attempts });
            }
            let since = (now.div_euclid(86_400_000) - days as i64 + 1) * 86_400_000;
            let timings = history.timings(since)?;
            Ok((rows, chart::days(&timings, now, days)))
        })
    })
    .await;
    match read {
        Ok((rows, days)) => html(
            StatusCode::OK,
            pages::list(&session.csrf, &query, &rows, chart::render(&days, now)),
        ),
        Err(e) => e,
    }
}

/// `GET /deliveries/ID`.
async fn detail(ui: &Ui, session: &Session, id: &str) -> Response<Full<Bytes>> {
    let Ok(id) = id.parse::<DeliveryId>() else {
        return html(
            StatusCode::NOT_FOUND,
            pages::problem("Not found", "That is not a delivery id."),
        );
    };
    let journal = ui.journal.clone();
    match blocking(move || History::open(&journal)?.snapshot(|h| h.show(id))).await {
        Ok(Some((summary, message, attempts))) => {
            let message = serde_json::from_str(&message).unwrap_or_default();
            html(
                StatusCode::OK,
                pages::detail(&session.csrf, &summary, &message, &attempts),
            )
        }
        Ok(None) => html(
            StatusCode::NOT_FOUND,
            pages::problem(
                "Not found",
                &format!("No delivery {id} in the journal (pruned, perhaps)."),
            ),
        ),
        Err(e) => e,
    }
}

/// `POST /deliveries/ID/replay`: the new delivery's page.
async fn replay(ui: &Ui, id: &str) -> Response<Full<Bytes>> {
    let Ok(id) = id.parse::<DeliveryId>() else {
        return html(
            StatusCode::NOT_FOUND,
            pages::problem("Not found", "That is not a delivery id."),
        );
    };
    match ui.service.replay(id).await {
        Ok(new) => {
            tracing::info!(delivery = %id, new = %new, "web page: replayed");
            redirect(&format!("/deliveries/{new}"))
        }
        Err(e) => {
            let status = match e {
                ReplayError::NotFound(_) => StatusCode::NOT_FOUND,
                ReplayError::Busy(_) | ReplayError::Journal(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::CONFLICT,
            };
            html(status, pages::problem("Not replayed", &e.to_string()))
        }
    }
}

/// Runs a journal read off the async threads; its error is already the answer.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, hubhook_core::journal::JournalError> + Send + 'static,
) -> Result<T, Response<Full<Bytes>>> {
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "web page: cannot read the journal");
            Err(html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::problem("Journal unreadable", &e.to_string()),
            ))
        }
        Err(_) => Err(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the journal read failed",
        )),
    }
}

/// The fields of a form body (`application/x-www-form-urlencoded`, at most 8 KiB).
async fn form(req: Request<Incoming>) -> Option<Vec<(String, String)>> {
    let body = Limited::new(req.into_body(), MAX_FORM)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(parse_form(std::str::from_utf8(&body).ok()?))
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map_or("", |(_, v)| v.as_str())
}

/// `a=1&b=x+y%21` as pairs; `+` is a space, and a bad escape is kept as written.
fn parse_form(text: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => match s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A response with the headers every answer carries: no caching, no framing, no
/// sniffing, and a policy that allows only what the binary serves.
fn response(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let fixed = [
        (CONTENT_TYPE, content_type),
        (CACHE_CONTROL, "no-store"),
        (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (http::header::X_FRAME_OPTIONS, "DENY"),
        (http::header::REFERRER_POLICY, "no-referrer"),
        (
            http::header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ];
    for (name, value) in fixed {
        headers.insert(
            name,
            http::HeaderValue::from_str(value).expect("a valid header"),
        );
    }
    response
}

fn html(status: StatusCode, page: Markup) -> Response<Full<Bytes>> {
    response(status, "text/html; charset=utf-8", page.into_string())
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

fn asset(body: &'static str, content_type: &str) -> Response<Full<Bytes>> {
    response(StatusCode::OK, content_type, body)
}

fn redirect(to: &str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::SEE_OTHER, to);
    if let Ok(value) = http::HeaderValue::from_str(to) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    response
}

/// The `Host` values the page answers to: `[ui] hosts`, and for a loopback address the
/// loopback names with its port. Empty (any host) when it listens on a wider address
/// without `hosts`: a proxy in front names it.
fn allowed_hosts(spec: &UiSpec, addr: SocketAddr) -> Vec<String> {
    let mut hosts = spec.hosts.clone();
    if addr.ip().is_loopback() {
        let port = addr.port();
        // With their port, and bare (as a browser writes them on the scheme's default
        // port, or a proxy that drops it): no other site can make a browser send these.
        hosts.extend([
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
            addr.to_string(),
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "[::1]".to_owned(),
            addr.ip().to_string(),
        ]);
    }
    hosts
}

/// Whether a request's `Host` (or HTTP/2 authority) is one the page answers to. A page
/// on loopback refuses other names, so a site that points its name at 127.0.0.1 (DNS
/// rebinding) cannot talk to it from the operator's browser.
fn host_allowed(hosts: &[String], req: &Request<Incoming>) -> bool {
    if hosts.is_empty() {
        return true;
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    host.is_some_and(|host| hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
}

fn set_cookie(response: &mut Response<Full<Bytes>>, value: &str) {
    if let Ok(value) = http::HeaderValue::from_str(value) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_decoded() {
        let fields = parse_form("csrf=a%2Bb&password=two+words%21&bad=%zz&empty");
        assert_eq!(field(&fields, "csrf"), "a+b");
        assert_eq!(field(&fields, "password"), "two words!");
        assert_eq!(field(&fields, "bad"), "%zz");
        assert_eq!(field(&fields, "empty"), "");
        assert_eq!(field(&fields, "missing"), "");
    }
}
