//! The HTTP side of the `ingest` bench (`target/release/ingest`, see src/ingest.rs): the
//! two load clients (the built-in hyper client and `wrk`), the readiness and `/metrics`
//! probes, and the bare hyper server hubhook is compared against.
//!
//! Run through `ingest`: `cargo build --release -p hubhook-server -p hubhook-benches &&
//! target/release/ingest`; the bare server alone is `target/release/ingest --bare-server PORT`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{API_KEY, WARM_UP};

/// How long the measured loop waits for one answer before it counts an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the connections saw during the measured window (one per connection, then merged).
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    last_end: Option<Instant>,
    non_2xx: BTreeMap<u16, u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.last_end = self.last_end.max(other.last_end);
        for (status, n) in other.non_2xx {
            *self.non_2xx.entry(status).or_default() += n;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One target's figures for one measurement by one client.
pub(crate) struct Measurement {
    /// 2xx answers in the measured window.
    pub(crate) ok: u64,
    pub(crate) rps: f64,
    /// Latency percentiles, ms.
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    /// CPU time per 2xx answer, µs: the server's, and the load client's.
    pub(crate) server_cpu_us: f64,
    pub(crate) client_cpu_us: f64,
    /// Non-2xx answers and request or socket errors, one line each; empty when clean.
    pub(crate) problems: Vec<String>,
}

impl Measurement {
    /// `cpu` is the (server, client) CPU seconds used over the measured window.
    fn new(
        ok: u64,
        rps: f64,
        (p50, p99): (f64, f64),
        cpu: (f64, f64),
        problems: Vec<String>,
    ) -> Self {
        let per_request = |cpu: f64| if ok > 0 { cpu * 1e6 / ok as f64 } else { 0.0 };
        Measurement {
            ok,
            rps,
            p50,
            p99,
            server_cpu_us: per_request(cpu.0),
            client_cpu_us: per_request(cpu.1),
            problems,
        }
    }

    pub(crate) fn print(&self, label: &str) {
        println!(
            "  {label:<16} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  CPU/req {:.1} µs server, \
             {:.1} µs client  ({} ok)",
            self.rps, self.p50, self.p99, self.server_cpu_us, self.client_cpu_us, self.ok
        );
        for problem in &self.problems {
            println!("  !!!!!!!! {label}: {problem}");
        }
    }
}

/// The `builtin` client: loads `addr` with `connections` keep-alive connections, one task
/// each, for a warm-up, then `seconds`. `cpu` gives the CPU seconds used so far by the
/// server and by this process.
pub(crate) async fn load(
    addr: SocketAddr,
    cpu: impl Fn() -> (f64, f64),
    connections: usize,
    seconds: u64,
) -> Measurement {
    let measure_from = Instant::now() + WARM_UP;
    let until = measure_from + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(worker(addr, measure_from, until)))
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let before = cpu();
    let mut all = Tally::default();
    for task in tasks {
        all.merge(task.await.unwrap_or_else(|e| {
            let mut failed = Tally::default();
            failed.error(format!("a load task failed: {e}"));
            failed
        }));
    }
    let after = cpu();
    all.latencies.sort_unstable();
    let ok = all.latencies.len();
    let elapsed = all
        .last_end
        .map_or(0.0, |end| (end - measure_from).as_secs_f64());
    let percentile = |p: f64| {
        let rank = ((p * ok as f64).ceil() as usize).clamp(1, ok.max(1));
        all.latencies
            .get(rank - 1)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let mut problems = Vec::new();
    if !all.non_2xx.is_empty() {
        problems.push(format!(
            "NON-2XX ANSWERS (status: count): {:?}",
            all.non_2xx
        ));
    }
    if let Some(first) = &all.first_error {
        problems.push(format!("{} REQUEST ERRORS, first: {first}", all.errors));
    }
    Measurement::new(
        ok as u64,
        if elapsed > 0.0 {
            ok as f64 / elapsed
        } else {
            0.0
        },
        (percentile(0.50), percentile(0.99)),
        (after.0 - before.0, after.1 - before.1),
        problems,
    )
}

/// One connection's loop: POST the example until `until`; tally what starts after
/// `measure_from`. Reconnects after an error.
async fn worker(addr: SocketAddr, measure_from: Instant, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let body = Bytes::from_static(hubhook_core::message::EXAMPLE_PAYLOAD.as_bytes());
    let uri = format!("/hubhook?apikey={API_KEY}");
    let host = addr.to_string();
    while Instant::now() < until {
        let mut sender = match connect(addr).await {
            Ok(sender) => sender,
            Err(e) => {
                tally.error(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        while Instant::now() < until {
            let req = Request::builder()
                .method(Method::POST)
                .uri(uri.as_str())
                .header(HOST, host.as_str())
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()))
                .expect("a valid request");
            let started = Instant::now();
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut sender, req)).await;
            let answer = answer.unwrap_or_else(|_| Err("no answer within 10 s".to_owned()));
            match answer {
                Ok(_) if started < measure_from => {}
                Ok(status) if status.is_success() => {
                    let end = Instant::now();
                    tally.latencies.push(end - started);
                    tally.last_end = Some(end);
                }
                Ok(status) => *tally.non_2xx.entry(status.as_u16()).or_default() += 1,
                Err(e) => {
                    tally.error(e);
                    break;
                }
            }
        }
    }
    tally
}

/// Where `wrk` is on PATH, if it is.
pub(crate) fn find_wrk() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("wrk"))
        .find(|exe| exe.is_file())
}

/// Writes the Lua script that makes `wrk` POST the example payload as JSON into `dir`.
pub(crate) fn write_wrk_script(dir: &Path) -> Result<PathBuf, String> {
    // Every byte outside printable ASCII, and `"` and `\`, as a 3-digit decimal escape.
    let body: String = hubhook_core::message::EXAMPLE_PAYLOAD
        .bytes()
        .map(|b| match b {
            b' '..=b'~' if b != b'"' && b != b'\\' => char::from(b).to_string(),
            _ => format!("\\{b:03}"),
        })
        .collect();
    let script = format!(
        "wrk.method = \"POST\"\nwrk.body = \"{body}\"\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n"
    );
    let path = dir.join("post.lua");
    std::fs::write(&path, script).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// The `wrk` client: `wrk -t1 -c<connections> -d1s` (discarded: wrk has no warm-up), then
/// the same for `seconds`, measured. `cpu` gives the CPU seconds used so far by the server
/// and by the children this process has waited for (so the finished wrk runs).
pub(crate) async fn wrk(
    wrk: &Path,
    script: &Path,
    addr: SocketAddr,
    cpu: impl Fn() -> (f64, f64),
    connections: usize,
    seconds: u64,
) -> Result<Measurement, String> {
    run_wrk(wrk, script, addr, connections, WARM_UP.as_secs()).await?;
    let before = cpu();
    let out = run_wrk(wrk, script, addr, connections, seconds).await?;
    let after = cpu();
    parse_wrk(&out, (after.0 - before.0, after.1 - before.1))
        .map_err(|e| format!("{e} in this wrk output:\n{out}"))
}

/// Runs wrk once against `/hubhook?apikey=KEY` on `addr`; its stdout.
async fn run_wrk(
    wrk: &Path,
    script: &Path,
    addr: SocketAddr,
    connections: usize,
    seconds: u64,
) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(wrk);
    cmd.arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(format!("http://{addr}/hubhook?apikey={API_KEY}"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let shown = format!("{:?}", cmd.as_std());
    let output = cmd
        .output()
        .await
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Reads wrk's `--latency` report: `N requests in`, the `50%` and `99%` lines,
/// `Requests/sec:`, and `Non-2xx or 3xx responses:` and `Socket errors:` when there are any.
fn parse_wrk(out: &str, cpu: (f64, f64)) -> Result<Measurement, String> {
    let line = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let number = |prefix: &str| -> Result<f64, String> {
        let value = line(prefix).ok_or(format!("no {prefix:?} line"))?;
        let value = value.split_whitespace().next().unwrap_or(value);
        value
            .parse()
            .map_err(|_| format!("cannot read {value:?} after {prefix:?}"))
    };
    let millis = |prefix: &str| -> Result<f64, String> {
        let value = line(prefix).ok_or(format!("no {prefix:?} latency line (wrk --latency)"))?;
        let (scale, unit) = [(1e-3, "us"), (1.0, "ms"), (1e3, "s"), (6e4, "m")]
            .into_iter()
            .find(|(_, unit)| value.ends_with(unit))
            .ok_or(format!("no unit in the {prefix} latency {value:?}"))?;
        let n: f64 = value[..value.len() - unit.len()]
            .parse()
            .map_err(|_| format!("cannot read the {prefix} latency {value:?}"))?;
        Ok(n * scale)
    };
    let requests = out
        .lines()
        .find_map(|l| l.split_once(" requests in ")?.0.trim().parse::<u64>().ok())
        .ok_or("no \"N requests in\" line")?;
    let mut problems = Vec::new();
    let non_2xx = match line("Non-2xx or 3xx responses:") {
        Some(_) => number("Non-2xx or 3xx responses:")? as u64,
        None => 0,
    };
    if non_2xx > 0 {
        problems.push(format!(
            "NON-2XX ANSWERS: {non_2xx} (wrk: Non-2xx or 3xx responses)"
        ));
    }
    if let Some(errors) = line("Socket errors:") {
        problems.push(format!("SOCKET ERRORS (wrk): {errors}"));
    }
    Ok(Measurement::new(
        requests.saturating_sub(non_2xx),
        number("Requests/sec:")?,
        (millis("50%")?, millis("99%")?),
        cpu,
        problems,
    ))
}

/// Opens a keep-alive HTTP/1.1 connection; its driver runs in its own task.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {addr} failed: {e}"))?;
    // Ends when the sender is dropped or the server closes the connection.
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends one request and reads the whole answer; returns its status.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<StatusCode, String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection closed: {e}"))?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?;
    Ok(status)
}

/// `GET path` on a fresh connection within `limit`: the status and the body, or `None`
/// if there is no answer.
async fn get(addr: SocketAddr, path: &str, limit: Duration) -> Option<(StatusCode, Bytes)> {
    let get = async {
        let mut sender = connect(addr).await.ok()?;
        let req = Request::get(path)
            .header(HOST, addr.to_string())
            .body(Full::default())
            .ok()?;
        let response = sender.send_request(req).await.ok()?;
        let status = response.status();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    };
    tokio::time::timeout(limit, get).await.ok().flatten()
}

/// The status of `GET /healthz` on a fresh connection, or `None` if there is no answer yet.
pub(crate) async fn healthz(addr: SocketAddr) -> Option<StatusCode> {
    get(addr, "/healthz", Duration::from_secs(2))
        .await
        .map(|(status, _)| status)
}

/// The body of `GET /metrics`, or `None` if there is no answer.
pub(crate) async fn metrics(addr: SocketAddr) -> Option<String> {
    let (_, body) = get(addr, "/metrics", Duration::from_secs(5)).await?;
    String::from_utf8(body.to_vec()).ok()
}

/// `ingest --bare-server PORT`: reads each request's body and answers 200 with an empty
/// body. Exits when stdin closes.
pub(crate) fn bare_server(port: Option<&String>) -> ExitCode {
    let Some(port) = port.and_then(|p| p.parse::<u16>().ok()) else {
        eprintln!("ingest: --bare-server needs a port");
        return ExitCode::FAILURE;
    };
    serve_http1("bare", port, |req: Request<Incoming>| async move {
        let _ = req.into_body().collect().await;
        Response::new(Full::default())
    })
}

/// Serves `answer` over HTTP/1.1 on 127.0.0.1:`port` (`TCP_NODELAY`, a multi-thread
/// runtime with the default workers) until stdin closes: the bench's bare and floor
/// servers.
pub(crate) fn serve_http1<F, Fut>(name: &str, port: u16, answer: F) -> ExitCode
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    exit_when_stdin_closes();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("ingest: {name} server cannot bind 127.0.0.1:{port}: {e}");
                return ExitCode::FAILURE;
            }
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let answer = answer.clone();
                    async move { Ok::<_, Infallible>(answer(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// A child server of the bench exits when its stdin (a pipe from `ingest`) closes, so it
/// cannot outlive the bench.
pub(crate) fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
}
