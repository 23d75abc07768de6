//! `ingest`: the ingest load bench — `hubhook serve` against a bare hyper server, same load.
//!
//! Run from the workspace root (see docs/BENCHMARKS.md):
//! `cargo build --release -p hubhook-server -p hubhook-benches && target/release/ingest`
//! with `--hubhook PATH` (default `target/release/hubhook`), `--connections N` (16),
//! `--seconds S` per measurement (5), `--rounds R` (3) and `--journal` (the delivery
//! journal on: every 202 waits for its group commit).
//!
//! It starts `hubhook serve` (one log handler, stdout and stderr to /dev/null) and a bare
//! hyper server (this binary re-run as `ingest --bare-server PORT`) on free 127.0.0.1 ports.
//! Each round loads one server, then the other (the order alternates), for a 1 s warm-up
//! and S seconds of measurement: N keep-alive HTTP/1.1 connections, each POSTing Docker
//! Hub's example payload in a loop. It prints req/s, p50/p99 latency, CPU time per request,
//! the hubhook/bare ratio (medians over rounds) and the RSS of `hubhook serve`, idle and
//! peak. It exits non-zero when a server does not come up, answers no request with 2xx,
//! or answers any with something else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;

#[path = "ingest/net.rs"]
mod net;

use net::Measurement;

/// The key `hubhook serve` is configured with; the bare server ignores it.
pub(crate) const API_KEY: &str = "ingestbenchkey0123456789abcdefgh";
const _: () = assert!(API_KEY.len() == 32);
/// Load before each measurement, not counted.
pub(crate) const WARM_UP: Duration = Duration::from_secs(1);
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Clock ticks per second in /proc/PID/stat (USER_HZ; 100 on every common Linux build).
const USER_HZ: f64 = 100.0;
const USAGE: &str = "usage: ingest [--hubhook PATH] [--connections N] [--seconds S] [--rounds R]
  --hubhook PATH     release hubhook binary (default: <workspace>/target/release/hubhook)
  --connections N    keep-alive connections, one task each (default 16)
  --seconds S        measured seconds per server per round, after a 1 s warm-up (default 5)
  --rounds R         rounds; each loads hubhook and the bare server once (default 3)
  --journal          run hubhook with `journal = true` and report its commit batches";

#[derive(Debug)]
struct Options {
    hubhook: PathBuf,
    connections: usize,
    seconds: u64,
    rounds: usize,
    journal: bool,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let mut opts = Options {
        hubhook: workspace.join("target/release/hubhook"),
        connections: 16,
        seconds: 5,
        rounds: 3,
        journal: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--journal" {
            opts.journal = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        let number = |v: &String| match v.parse::<u64>() {
            Ok(n) if (1..=100_000).contains(&n) => Ok(n),
            _ => Err(format!("{flag} wants a number from 1 to 100000, not {v:?}")),
        };
        match flag.as_str() {
            "--hubhook" => opts.hubhook = PathBuf::from(value?),
            "--connections" => opts.connections = number(value?)? as usize,
            "--seconds" => opts.seconds = number(value?)?,
            "--rounds" => opts.rounds = number(value?)? as usize,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--bare-server") {
        return net::bare_server(args.get(1));
    }
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = parse_args(&args).and_then(|opts| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
        // On Ctrl-C the bench future is dropped, and with it the guards that kill the servers.
        rt.block_on(async {
            tokio::select! {
                result = bench(&opts) => result,
                _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
            }
        })
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("ingest: FAILED: some requests got no 2xx answer (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ingest: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the whole bench; `Ok(false)` when it finished but saw non-2xx answers or errors.
async fn bench(opts: &Options) -> Result<bool, String> {
    if !opts.hubhook.is_file() {
        return Err(format!(
            "no hubhook binary at {} (build it with `cargo build --release -p hubhook-server` \
             or pass --hubhook PATH)",
            opts.hubhook.display()
        ));
    }
    let dir = TempDir::create()?;
    let port = free_port()?;
    let config = dir.0.join("hubhook.toml");
    let data = dir.0.join("data").display().to_string();
    let toml = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = {data:?}\njournal = {}\n\n[auth]\n\
         api_keys = [\"{API_KEY}\"]\n\n[[handler]]\ntype = \"log\"\n",
        opts.journal
    );
    std::fs::write(&config, &toml)
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let mut cmd = Command::new(&opts.hubhook);
    cmd.arg("serve").arg("--config").arg(&config);
    let hubhook = Server::start("hubhook", cmd, port, false)
        .await
        .map_err(|e| format!("{e}\nwith this {}:\n{toml}", config.display()))?;
    let idle = memory(hubhook.pid())?;

    let port = free_port()?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--bare-server").arg(port.to_string());
    let bare = Server::start("bare", cmd, port, true).await?;

    println!(
        "ingest: {} connections, {} s per measurement after a {} s warm-up, {} rounds, {} CPUs, journal {}{}",
        opts.connections,
        opts.seconds,
        WARM_UP.as_secs(),
        opts.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if opts.journal { "on" } else { "off" },
        std::env::var("HUBHOOK_LOG").map_or(String::new(), |v| format!(", HUBHOOK_LOG={v}")),
    );
    println!(
        "hubhook: {} (pid {})",
        opts.hubhook.display(),
        hubhook.pid()
    );
    let mut clean = true;
    let (mut hub_runs, mut bare_runs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=opts.rounds {
        println!("round {round}/{}", opts.rounds);
        let order = match round % 2 {
            1 => [&hubhook, &bare],
            _ => [&bare, &hubhook],
        };
        for server in order {
            let pid = server.pid().to_string();
            let cpu = || (cpu_seconds(&pid), cpu_seconds("self"));
            let m = net::load(server.addr, cpu, opts.connections, opts.seconds).await;
            server.check_alive()?;
            m.print(server.name);
            clean &= m.non_2xx.is_empty() && m.errors == 0;
            if m.ok == 0 {
                let name = server.name;
                return Err(format!(
                    "{name} answered no request with 2xx in round {round}"
                ));
            }
            match server.name {
                "hubhook" => hub_runs.push(m),
                _ => bare_runs.push(m),
            }
        }
        let ratio = hub_runs[round - 1].rps / bare_runs[round - 1].rps;
        println!("  ratio hubhook/bare req/s: {ratio:.3}");
        ratios.push(ratio);
    }
    let peak = memory(hubhook.pid())?;
    let journal_stats = if opts.journal {
        net::metrics(hubhook.addr).await
    } else {
        None
    };

    println!(
        "\nsummary: medians over {} rounds, {} connections, {} s each",
        opts.rounds, opts.connections, opts.seconds
    );
    println!(
        "  server        req/s   p50 ms   p99 ms   server CPU µs/req   load generator CPU µs/req"
    );
    for (name, runs) in [("hubhook", &hub_runs), ("bare", &bare_runs)] {
        let med = |f: fn(&Measurement) -> f64| median(runs.iter().map(f));
        println!(
            "  {name:<8} {:>10.0} {:>8.3} {:>8.3} {:>19.1} {:>27.1}",
            med(|m| m.rps),
            med(|m| m.p50),
            med(|m| m.p99),
            med(|m| m.server_cpu_us),
            med(|m| m.client_cpu_us),
        );
    }
    let ratio = median(ratios.into_iter());
    println!("  ratio hubhook/bare req/s: {ratio:.3} (median of the per-round ratios)");
    println!(
        "  hubhook serve RSS: idle {:.1} MiB (VmRSS when ready), peak {:.1} MiB \
         (VmHWM after load), after load {:.1} MiB",
        idle.rss_mib, peak.hwm_mib, peak.rss_mib
    );
    if let Some(text) = &journal_stats {
        print_commits(text);
    }
    let verdict = |met: bool| if met { "MET" } else { "NOT MET" };
    if opts.journal {
        println!(
            "  target (journal on): hubhook >= 30% of bare req/s: {} ({:.1}%)",
            verdict(ratio >= 0.3),
            ratio * 100.0
        );
        println!(
            "  target (journal on): peak RSS of hubhook serve under load < 30 MiB: {} ({:.1} MiB)",
            verdict(peak.hwm_mib < 30.0),
            peak.hwm_mib
        );
    } else {
        println!(
            "  target: hubhook >= 50% of bare req/s: {} ({:.1}%)",
            verdict(ratio >= 0.5),
            ratio * 100.0
        );
    }
    println!(
        "  target: idle RSS of hubhook serve < 8 MiB: {} ({:.1} MiB)",
        verdict(idle.rss_mib < 8.0),
        idle.rss_mib
    );
    Ok(clean)
}

/// Prints the journal's commit figures from a `/metrics` text: commits, records per
/// commit (mean and histogram) and commit time.
fn print_commits(text: &str) {
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    let commits = value("hubhook_journal_commit_records_count");
    let records = value("hubhook_journal_commit_records_sum");
    let seconds = value("hubhook_journal_commit_seconds_sum");
    if commits == 0.0 {
        println!("  journal: no commits reported by /metrics");
        return;
    }
    println!(
        "  journal: {commits:.0} commits, {records:.0} records (deliveries, attempts, finishes): \
         {:.1} records per commit, {:.3} ms per commit on average",
        records / commits,
        seconds / commits * 1e3
    );
    let buckets: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("hubhook_journal_commit_records_bucket{le=\""))
        .map(|l| l.replacen("\"} ", " ≤ ", 1))
        .map(|l| {
            let (le, n) = l.split_once(" ≤ ").unwrap_or(("", ""));
            format!("≤{le}: {n}")
        })
        .collect();
    println!(
        "  journal records per commit (cumulative): {}",
        buckets.join(", ")
    );
}

/// A child server on 127.0.0.1; killed when dropped, on every path out of the bench.
struct Server {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
    /// The bare server exits when its stdin closes, so it cannot outlive this process.
    _stdin: Option<ChildStdin>,
}

impl Server {
    async fn start(
        name: &'static str,
        mut cmd: Command,
        port: u16,
        pipe_stdin: bool,
    ) -> Result<Self, String> {
        let shown = format!("{cmd:?}");
        let stdin = if pipe_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        cmd.stdin(stdin).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({shown}): {e}"))?;
        let _stdin = child.stdin.take();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let server = Server {
            name,
            addr,
            child,
            _stdin,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            server
                .check_alive()
                .map_err(|e| format!("{e} before it was ready; run it by hand: {shown}"))?;
            if net::healthz(addr).await == Some(StatusCode::OK) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let secs = READY_TIMEOUT.as_secs();
                return Err(format!(
                    "{name} did not answer GET /healthz with 200 on {addr} within {secs} s ({shown})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&self) -> Result<(), String> {
        // `try_wait` needs `&mut`; /proc tells the same without reaping.
        match proc_stat(&self.pid().to_string()) {
            Some(fields) if !matches!(fields.first().map(String::as_str), Some("Z" | "X")) => {
                Ok(())
            }
            _ => Err(format!("{} (pid {}) has exited", self.name, self.pid())),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory for the config, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("hubhook-ingest-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago (bound, read and released).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))
}

/// The fields of /proc/PID/stat after the command name, from the state (field 3) on.
fn proc_stat(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU seconds used so far by all threads of `pid` ("self" for this process).
fn cpu_seconds(pid: &str) -> f64 {
    let ticks = proc_stat(pid).map_or(0, |f| {
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        field(11) + field(12) // utime and stime, fields 14 and 15
    });
    ticks as f64 / USER_HZ
}

struct Memory {
    rss_mib: f64,
    hwm_mib: f64,
}

/// VmRSS and VmHWM of a process, from /proc/PID/status.
fn memory(pid: u32) -> Result<Memory, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .ok_or(format!("no {name} in {path}"))
    };
    Ok(Memory {
        rss_mib: field("VmRSS:")?,
        hwm_mib: field("VmHWM:")?,
    })
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
