//! `ingest`: the ingest load bench — `hubhook serve` between its two limits, a bare hyper
//! server (the ceiling: no work at all) and the durable floor (the least a server can do
//! and still have each webhook on disk before it answers), loaded by two clients.
//!
//! Run from the workspace root (see docs/BENCHMARKS.md):
//! `cargo build --release -p hubhook-server -p hubhook-benches && target/release/ingest`
//! (about 3 minutes with the defaults; `--rounds 1 --seconds 2` for a quick look). Options:
//! `--hubhook PATH` (default `target/release/hubhook`), `--journal default|on|off` (default
//! `default`: hubhook's config has no `journal` key; `on`/`off` write `journal = true/false`;
//! a bare `--journal` is `on`), `--clients builtin,wrk` (default both; `wrk` needs Debian's
//! `wrk` on PATH), `--connections N` (16), `--seconds S` measured per target, client and
//! round (4) and `--rounds R` (5): the reviewer's `wrk -t1 -c16 -d4s`, 5 rounds.
//!
//! Targets, each on a free 127.0.0.1 port, stdout and stderr to /dev/null:
//! - `hubhook`: `hubhook serve` with a temp config (one API key, one log handler, a fresh
//!   `data_dir`, the `journal` key as `--journal` says);
//! - `bare`: this binary as `ingest --bare-server PORT` (hyper, answers 200 after reading
//!   the body);
//! - `floor`: this binary as `ingest --floor-server PORT DIR` (hyper + SQLite WAL,
//!   `synchronous = FULL`, group commit, 200 after the commit; see ingest/floor.rs).
//!
//! Clients, each POSTing Docker Hub's example payload as `application/json` to
//! `/hubhook?apikey=KEY` over N keep-alive connections:
//! - `builtin`: hyper in this process, one task per connection, a 1 s warm-up, then S s;
//! - `wrk`: `wrk -t1 -cN -d1s --latency -s post.lua` (discarded: wrk has no warm-up), then
//!   the same with `-dSs`, measured; its `Requests/sec`, `50%`/`99%` latencies,
//!   `Non-2xx or 3xx responses` and `Socket errors` are read.
//!
//! Every measurement starts its target fresh (new port, new temp dir) and kills it after,
//! so nothing carries over. Each round measures every client against every target, the
//! target order rotating from round to round (and the client order alternating). Server
//! CPU per request is from /proc/PID/stat over the measured window. For hubhook it also
//! reads VmRSS when ready (idle) and VmHWM after the load (peak), and `/metrics` after the
//! load: the journal counts as on when `hubhook_journal_commit_records_count` > 0, and its
//! records (and deliveries, when hubhook reports them) per commit are shown.
//!
//! The report, per client: medians over rounds of req/s, p50, p99 and CPU per request per
//! target; the ratios hubhook/bare, hubhook/floor and floor/bare as medians of per-round
//! ratios [min–max]; hubhook's RSS; then the target lines (MET / NOT MET). It exits
//! non-zero when a server does not come up, answers no request with 2xx, or answers any
//! with something else (or a client saw errors).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;

#[path = "ingest/floor.rs"]
mod floor;
#[path = "ingest/net.rs"]
mod net;

use net::Measurement;

/// The key `hubhook serve` is configured with; the bare and floor servers ignore it.
pub(crate) const API_KEY: &str = "ingestbenchkey0123456789abcdefgh";
const _: () = assert!(API_KEY.len() == 32);
/// Load before each measurement, not counted.
pub(crate) const WARM_UP: Duration = Duration::from_secs(1);
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Clock ticks per second in /proc/PID/stat (USER_HZ; 100 on every common Linux build).
const USER_HZ: f64 = 100.0;
/// The targets: with the journal on, hubhook is held to `HUB_FLOOR` of the floor's req/s;
/// with it off, to `HUB_BARE` of the bare server's. Its RSS: peak < 30 MiB, idle <= 8 MiB.
const HUB_FLOOR: f64 = 0.80;
const HUB_BARE: f64 = 0.50;
const PEAK_RSS_MIB: f64 = 30.0;
const IDLE_RSS_MIB: f64 = 8.0;
const USAGE: &str =
    "usage: ingest [--hubhook PATH] [--journal default|on|off] [--clients builtin,wrk]
              [--connections N] [--seconds S] [--rounds R]
Loads hubhook serve, a bare hyper server and the durable floor (hyper + SQLite FULL group
commit), each started fresh for every measurement, with each client; prints medians over
the rounds, the ratios between the targets and hubhook's RSS, then the targets MET/NOT MET.
  --hubhook PATH     release hubhook binary (default: <workspace>/target/release/hubhook)
  --journal MODE     hubhook's config: default = no `journal` key (hubhook's own default),
                     on = `journal = true`, off = `journal = false` (default: default;
                     a bare --journal is on). On or off is read back from /metrics.
  --clients LIST     comma-separated: builtin (hyper in this process), wrk (wrk -t1 -cN
                     -dSs --latency; needs wrk on PATH) (default: builtin,wrk)
  --connections N    keep-alive connections per client (default 16)
  --seconds S        measured seconds per target, client and round, after a 1 s warm-up
                     (default 4)
  --rounds R         rounds; each measures every client against every target (default 5)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Hubhook,
    Bare,
    Floor,
}

impl Target {
    const ALL: [Target; 3] = [Target::Hubhook, Target::Bare, Target::Floor];

    fn name(self) -> &'static str {
        match self {
            Target::Hubhook => "hubhook",
            Target::Bare => "bare",
            Target::Floor => "floor",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Builtin,
    Wrk,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Builtin => "builtin",
            Client::Wrk => "wrk",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Journal {
    /// No `journal` key in the config: whatever hubhook defaults to.
    Default,
    On,
    Off,
}

#[derive(Debug)]
struct Options {
    hubhook: PathBuf,
    connections: usize,
    seconds: u64,
    rounds: usize,
    journal: Journal,
    clients: Vec<Client>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let mut opts = Options {
        hubhook: workspace.join("target/release/hubhook"),
        connections: 16,
        seconds: 4,
        rounds: 5,
        journal: Journal::Default,
        clients: vec![Client::Builtin, Client::Wrk],
    };
    let mut it = args.iter().peekable();
    while let Some(flag) = it.next() {
        if flag == "--journal" {
            // A bare `--journal` (the old flag) is `on`.
            opts.journal = match it.next_if(|v| ["default", "on", "off"].contains(&v.as_str())) {
                Some(v) if v == "default" => Journal::Default,
                Some(v) if v == "off" => Journal::Off,
                _ => Journal::On,
            };
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
            "--clients" => opts.clients = parse_clients(value?)?,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(opts)
}

fn parse_clients(list: &str) -> Result<Vec<Client>, String> {
    let mut clients = Vec::new();
    for name in list.split(',').map(str::trim) {
        let client = match name {
            "builtin" => Client::Builtin,
            "wrk" => Client::Wrk,
            _ => return Err(format!("--clients takes builtin and/or wrk, not {name:?}")),
        };
        if !clients.contains(&client) {
            clients.push(client);
        }
    }
    Ok(clients)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--bare-server") {
        return net::bare_server(args.get(1));
    }
    if args.first().map(String::as_str) == Some("--floor-server") {
        return floor::floor_server(args.get(1), args.get(2));
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
        // On Ctrl-C the bench future is dropped, and with it the guards that kill the
        // servers and wrk.
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
            eprintln!("ingest: FAILED: some requests got no 2xx answer or an error (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ingest: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What every measurement needs besides the options.
struct Setup<'a> {
    opts: &'a Options,
    /// This binary, for the bare and floor servers.
    exe: PathBuf,
    /// `wrk` and its script, when the wrk client is asked for.
    wrk: Option<(PathBuf, PathBuf)>,
    /// Holds the script and each server's own temp dir.
    scratch: TempDir,
}

/// One measurement: one client against one freshly started target.
struct Run {
    client: Client,
    target: Target,
    round: usize,
    m: Measurement,
    /// hubhook only: VmRSS when ready and VmHWM after the load, MiB.
    rss: Option<(f64, f64)>,
    /// hubhook only: its journal's commit figures from /metrics after the load, if any.
    commits: Option<Commits>,
}

impl Run {
    fn journal_on(&self) -> bool {
        self.commits.is_some_and(|c| c.commits > 0.0)
    }

    fn print(&self) {
        self.m
            .print(&format!("{} {}", self.client.name(), self.target.name()));
        if let (Target::Floor, Some(c)) = (self.target, self.commits) {
            println!("  {:<16} {}", "", c.describe());
        }
        if let Some((idle, peak)) = self.rss {
            let journal = match self.commits {
                Some(c) if c.commits > 0.0 => format!("journal on: {}", c.describe()),
                _ => "journal off (no commits in /metrics)".to_owned(),
            };
            println!(
                "  {:<16} RSS idle {idle:.1} MiB, peak {peak:.1} MiB; {journal}",
                ""
            );
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
    let scratch = TempDir::create(
        std::env::temp_dir().join(format!("hubhook-ingest-{}", std::process::id())),
    )?;
    let wrk = match opts.clients.contains(&Client::Wrk) {
        false => None,
        true => {
            let exe = net::find_wrk().ok_or(
                "the wrk client needs `wrk` on PATH: install it with `apt-get install wrk`, \
                 or pass --clients builtin",
            )?;
            Some((exe, net::write_wrk_script(&scratch.0)?))
        }
    };
    let setup = Setup {
        opts,
        exe: std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?,
        wrk,
        scratch,
    };

    let client_names: Vec<&str> = opts.clients.iter().map(|c| c.name()).collect();
    println!(
        "ingest: targets hubhook, bare, floor, each started fresh per measurement; clients {}; \
         {} connections, {} s measured after a {} s warm-up, {} rounds, {} CPUs{}",
        client_names.join(", "),
        opts.connections,
        opts.seconds,
        WARM_UP.as_secs(),
        opts.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::var("HUBHOOK_LOG").map_or(String::new(), |v| format!(", HUBHOOK_LOG={v}")),
    );
    let journal = match opts.journal {
        Journal::Default => "default (no `journal` key)",
        Journal::On => "on (`journal = true`)",
        Journal::Off => "off (`journal = false`)",
    };
    println!("hubhook: {}, journal {journal}", opts.hubhook.display());
    if let Some((exe, script)) = &setup.wrk {
        println!(
            "wrk: {} -t1 -c{} -d{}s --latency -s {}",
            exe.display(),
            opts.connections,
            opts.seconds,
            script.display()
        );
    }

    let mut clean = true;
    let mut runs: Vec<Run> = Vec::new();
    for round in 0..opts.rounds {
        println!("round {}/{}", round + 1, opts.rounds);
        let mut targets = Target::ALL;
        targets.rotate_left(round % Target::ALL.len());
        let mut clients = opts.clients.clone();
        clients.rotate_left(round % opts.clients.len());
        for client in clients {
            for target in targets {
                let run = measure(&setup, client, target, round).await?;
                run.print();
                clean &= run.m.problems.is_empty();
                runs.push(run);
            }
            let ratios: Vec<String> = RATIOS
                .iter()
                .filter_map(|&(a, b)| {
                    let r = ratio(&runs, client, round, a, b)?;
                    Some(format!("{}/{} {r:.3}", a.name(), b.name()))
                })
                .collect();
            println!(
                "  {:<16} req/s ratios: {}",
                client.name(),
                ratios.join(", ")
            );
        }
    }

    let mut verdicts = Vec::new();
    for &client in &opts.clients {
        verdicts.extend(summarize(&runs, client, opts));
    }
    println!("\ntargets:");
    for line in verdicts {
        println!("  {line}");
    }
    Ok(clean)
}

/// Starts `target` fresh, loads it with `client`, reads hubhook's memory and /metrics,
/// and kills it.
async fn measure(
    setup: &Setup<'_>,
    client: Client,
    target: Target,
    round: usize,
) -> Result<Run, String> {
    let opts = setup.opts;
    let server = start(setup, target).await?;
    let idle = match target {
        Target::Hubhook => Some(memory(server.pid())?),
        Target::Bare | Target::Floor => None,
    };
    let pid = server.pid().to_string();
    let m = match (client, &setup.wrk) {
        (Client::Builtin, _) => {
            let cpu = || (cpu_seconds(&pid, false), cpu_seconds("self", false));
            net::load(server.addr, cpu, opts.connections, opts.seconds).await
        }
        (Client::Wrk, Some((wrk, script))) => {
            // This process's reaped children over the window: the measured wrk run.
            let cpu = || (cpu_seconds(&pid, false), cpu_seconds("self", true));
            net::wrk(
                wrk,
                script,
                server.addr,
                cpu,
                opts.connections,
                opts.seconds,
            )
            .await
            .map_err(|e| format!("wrk against {}: {e}", target.name()))?
        }
        (Client::Wrk, None) => return Err("the wrk client was not set up".to_owned()),
    };
    server.check_alive()?;
    if m.ok == 0 {
        return Err(format!(
            "{} answered no request from {} with 2xx in round {}",
            target.name(),
            client.name(),
            round + 1
        ));
    }
    let rss = match idle {
        Some(idle) => Some((idle.rss_mib, memory(server.pid())?.hwm_mib)),
        None => None,
    };
    // hubhook's journal and the floor report their group commits the same way.
    let commits = match target {
        Target::Hubhook | Target::Floor => net::metrics(server.addr)
            .await
            .as_deref()
            .and_then(Commits::parse),
        Target::Bare => None,
    };
    Ok(Run {
        client,
        target,
        round,
        m,
        rss,
        commits,
    })
}

/// Starts `target` on a free port with a fresh temp dir of its own.
async fn start(setup: &Setup<'_>, target: Target) -> Result<Server, String> {
    static STARTS: AtomicUsize = AtomicUsize::new(0);
    let n = STARTS.fetch_add(1, Ordering::Relaxed);
    let dir = TempDir::create(setup.scratch.0.join(format!("{n}-{}", target.name())))?;
    let port = free_port()?;
    let (cmd, config) = match target {
        Target::Hubhook => {
            let journal = match setup.opts.journal {
                Journal::Default => "",
                Journal::On => "journal = true\n",
                Journal::Off => "journal = false\n",
            };
            let toml = format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\n{journal}\n[auth]\n\
                 api_keys = [\"{API_KEY}\"]\n\n[[handler]]\ntype = \"log\"\n",
                dir.0.join("data").display().to_string(),
            );
            let path = dir.0.join("hubhook.toml");
            std::fs::write(&path, &toml)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            let mut cmd = Command::new(&setup.opts.hubhook);
            cmd.arg("serve").arg("--config").arg(&path);
            (cmd, Some((path, toml)))
        }
        Target::Bare => {
            let mut cmd = Command::new(&setup.exe);
            cmd.arg("--bare-server").arg(port.to_string());
            (cmd, None)
        }
        Target::Floor => {
            let mut cmd = Command::new(&setup.exe);
            cmd.arg("--floor-server").arg(port.to_string()).arg(&dir.0);
            (cmd, None)
        }
    };
    Server::start(target, cmd, port, dir)
        .await
        .map_err(|e| match config {
            Some((path, toml)) => format!("{e}\nwith this {}:\n{toml}", path.display()),
            None => e,
        })
}

/// The req/s ratios reported, numerator and denominator.
const RATIOS: [(Target, Target); 3] = [
    (Target::Hubhook, Target::Bare),
    (Target::Hubhook, Target::Floor),
    (Target::Floor, Target::Bare),
];

/// `a`'s req/s over `b`'s, both measured by `client` in `round`.
fn ratio(runs: &[Run], client: Client, round: usize, a: Target, b: Target) -> Option<f64> {
    let rps = |target| {
        runs.iter()
            .find(|r| r.client == client && r.round == round && r.target == target)
            .map(|r| r.m.rps)
    };
    Some(rps(a)? / rps(b)?)
}

/// Prints `client`'s summary; returns its target lines.
fn summarize(runs: &[Run], client: Client, opts: &Options) -> Vec<String> {
    let of = |target: Target| -> Vec<&Run> {
        runs.iter()
            .filter(|r| r.client == client && r.target == target)
            .collect()
    };
    println!(
        "\nsummary, {} client: medians over {} rounds [min–max], {} connections, {} s each",
        client.name(),
        opts.rounds,
        opts.connections,
        opts.seconds
    );
    println!("  target        req/s   p50 ms   p99 ms   server CPU µs/req   client CPU µs/req");
    for target in Target::ALL {
        let runs = of(target);
        let med = |f: fn(&Measurement) -> f64| Spread::of(runs.iter().map(|r| f(&r.m))).median;
        println!(
            "  {:<8} {:>10.0} {:>8.3} {:>8.3} {:>19.1} {:>19.1}",
            target.name(),
            med(|m| m.rps),
            med(|m| m.p50),
            med(|m| m.p99),
            med(|m| m.server_cpu_us),
            med(|m| m.client_cpu_us),
        );
    }
    let ratio_of = |a: Target, b: Target| {
        Spread::of((0..opts.rounds).filter_map(|round| ratio(runs, client, round, a, b)))
    };
    for (a, b) in RATIOS {
        println!(
            "  {}/{} req/s: {:.3} (median of the per-round ratios)",
            a.name(),
            b.name(),
            ratio_of(a, b)
        );
    }
    let hub = of(Target::Hubhook);
    let idle = Spread::of(hub.iter().filter_map(|r| r.rss).map(|(idle, _)| idle));
    let peak = Spread::of(hub.iter().filter_map(|r| r.rss).map(|(_, peak)| peak));
    println!(
        "  hubhook RSS: idle {idle:.1} MiB (VmRSS when ready), peak {peak:.1} MiB (VmHWM after the load)"
    );

    // Whether hubhook journaled is read back from /metrics, not assumed from the config.
    let on = hub.iter().filter(|r| r.journal_on()).count();
    let journal_on = on > 0;
    if journal_on {
        let commits: Vec<Commits> = hub.iter().filter_map(|r| r.commits).collect();
        let med = |f: fn(&Commits) -> Option<f64>| Spread::of(commits.iter().filter_map(f));
        let deliveries = match commits.iter().all(|c| c.deliveries.is_some()) {
            true => format!("{:.2}", med(|c| Some(c.deliveries? / c.commits))),
            false => "not reported (no hubhook_journal_commit_deliveries_sum)".to_owned(),
        };
        println!(
            "  hubhook journal on (commits in /metrics) in {on} of {} runs: records per commit \
             {:.2}, deliveries per commit {deliveries}, ms per commit {:.3}",
            hub.len(),
            med(|c| Some(c.records / c.commits)),
            med(|c| Some(c.seconds / c.commits * 1e3)),
        );
    } else {
        println!("  hubhook journal off (no hubhook_journal_commit_records_count > 0 in /metrics)");
    }
    if on != 0 && on != hub.len() {
        println!(
            "  !!!!!!!! the journal was on in only {on} of {} hubhook runs",
            hub.len()
        );
    }
    match (opts.journal, journal_on) {
        (Journal::On, false) => println!("  !!!!!!!! --journal on, but hubhook made no commits"),
        (Journal::Off, true) => println!("  !!!!!!!! --journal off, but hubhook made commits"),
        _ => {}
    }

    let verdict = |met: bool| if met { "MET" } else { "NOT MET" };
    let name = client.name();
    let mut lines = Vec::new();
    if journal_on {
        let r = ratio_of(Target::Hubhook, Target::Floor).median;
        lines.push(format!(
            "{name:<8} journal on:  hubhook/floor req/s >= {HUB_FLOOR:.2}: {} ({r:.3})",
            verdict(r >= HUB_FLOOR)
        ));
    } else {
        let r = ratio_of(Target::Hubhook, Target::Bare).median;
        lines.push(format!(
            "{name:<8} journal off: hubhook/bare req/s >= {HUB_BARE:.2}: {} ({r:.3})",
            verdict(r >= HUB_BARE)
        ));
    }
    lines.push(format!(
        "{name:<8} peak RSS of hubhook serve < {PEAK_RSS_MIB:.0} MiB: {} ({:.1} MiB)",
        verdict(peak.median < PEAK_RSS_MIB),
        peak.median
    ));
    lines.push(format!(
        "{name:<8} idle RSS of hubhook serve <= {IDLE_RSS_MIB:.0} MiB: {} ({:.1} MiB)",
        verdict(idle.median <= IDLE_RSS_MIB),
        idle.median
    ));
    lines
}

/// The journal's commit figures from a `/metrics` text.
#[derive(Clone, Copy)]
struct Commits {
    commits: f64,
    records: f64,
    seconds: f64,
    /// `hubhook_journal_commit_deliveries_sum`, when hubhook reports it.
    deliveries: Option<f64>,
}

impl Commits {
    /// `None` when the text has no `hubhook_journal_commit_records_count` (no journal).
    fn parse(text: &str) -> Option<Self> {
        let value = |name: &str| -> Option<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        };
        Some(Commits {
            commits: value("hubhook_journal_commit_records_count")?,
            records: value("hubhook_journal_commit_records_sum").unwrap_or(0.0),
            seconds: value("hubhook_journal_commit_seconds_sum").unwrap_or(0.0),
            deliveries: value("hubhook_journal_commit_deliveries_sum"),
        })
    }

    fn describe(&self) -> String {
        let deliveries = self.deliveries.map_or(String::new(), |d| {
            format!(", {:.2} deliveries", d / self.commits)
        });
        format!(
            "{:.0} commits, {:.2} records{deliveries} per commit, {:.3} ms per commit",
            self.commits,
            self.records / self.commits,
            self.seconds / self.commits * 1e3
        )
    }
}

/// The median of some figures over rounds, with their range.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Spread {
    fn of(values: impl Iterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        let min = v.first().copied().unwrap_or(f64::NAN);
        let max = v.last().copied().unwrap_or(f64::NAN);
        Spread {
            median,
            min,
            max,
            n,
        }
    }
}

/// The median, then `[min–max]` when there is more than one value; the precision applies
/// to all three.
impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = f.precision().unwrap_or(3);
        write!(f, "{:.p$}", self.median)?;
        if self.n > 1 {
            write!(f, " [{:.p$}–{:.p$}]", self.min, self.max)?;
        }
        Ok(())
    }
}

/// A child server on 127.0.0.1 with its own temp dir; killed (and the dir removed) when
/// dropped, on every path out of the bench.
struct Server {
    target: Target,
    addr: SocketAddr,
    child: Child,
    /// The bare and floor servers exit when their stdin closes, so they cannot outlive
    /// this process.
    _stdin: Option<ChildStdin>,
    _dir: TempDir,
}

impl Server {
    async fn start(
        target: Target,
        mut cmd: Command,
        port: u16,
        dir: TempDir,
    ) -> Result<Self, String> {
        let name = target.name();
        let shown = format!("{cmd:?}");
        let stdin = match target {
            Target::Hubhook => Stdio::null(),
            Target::Bare | Target::Floor => Stdio::piped(),
        };
        cmd.stdin(stdin).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({shown}): {e}"))?;
        let _stdin = child.stdin.take();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let server = Server {
            target,
            addr,
            child,
            _stdin,
            _dir: dir,
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
            _ => Err(format!(
                "{} (pid {}) has exited",
                self.target.name(),
                self.pid()
            )),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Before the fields (the temp dir) are dropped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn create(dir: PathBuf) -> Result<Self, String> {
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

/// User + system CPU seconds used so far by all threads of `pid` ("self" for this
/// process), or with `reaped_children`, by its children it has waited for.
fn cpu_seconds(pid: &str, reaped_children: bool) -> f64 {
    // utime and stime are fields 14 and 15, cutime and cstime 16 and 17.
    let first = if reaped_children { 13 } else { 11 };
    let ticks = proc_stat(pid).map_or(0, |f| {
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        field(first) + field(first + 1)
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
