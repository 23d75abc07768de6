//! `hubhook`: receive registry webhooks and redeploy.
//!
//! `hubhook serve` with no file listens on 127.0.0.1:8080 at `/hubhook` with the log
//! handler, makes an API key in `./hubhook-data` and prints the hook URL to paste into
//! Docker Hub. See `hubhook --help` and docs/CONFIG.md.

#![deny(unsafe_code)]

mod acme;
mod config;
mod control;
mod deliveries;
mod keys;
mod preflight;
mod send;
mod tls;
mod x509;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::os::unix::fs::DirBuilderExt;

use hubhook_core::journal::{Filter, Journal};
use hubhook_core::{
    DeliveryId, DeliveryStatus, Handler, Hook, HubhookService, Listener, Route, TlsConfig,
};
use hubhook_handlers::{DockerHandler, LogHandler, ShellHandler};

use crate::config::{Config, HandlerKind, HandlerSpec, TlsFiles, DEFAULT_DATA_DIR};
use crate::deliveries::JOURNAL_FILE;

/// Receive container-registry webhooks (Docker Hub and others) and act on them: log the
/// push, run a script, redeploy a container.
#[derive(Debug, Parser)]
#[command(name = "hubhook", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve webhooks until SIGINT or SIGTERM.
    ///
    /// With no --config: listens on 127.0.0.1:8080 at /hubhook, runs the log handler,
    /// journals every accepted delivery in ./hubhook-data before answering 202 (unfinished
    /// ones run again at the next start), and keeps a generated API key in
    /// ./hubhook-data/api-key (the hook URL with the key is printed on stdout by every
    /// start until one has printed it). Logs go to stderr, one event per line; set
    /// HUBHOOK_LOG (for example "debug" or "hubhook_core=debug") to change how much; an
    /// invalid value is an error. It refuses to start (exit 1, with the same message)
    /// whenever `check` would fail.
    Serve {
        /// The TOML configuration file (see docs/CONFIG.md).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Listen on this address instead of the configured one (e.g. 0.0.0.0:8080).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Check a configuration file and exit: 0 when it is good, 1 with the file, line and
    /// key of the first problem otherwise.
    ///
    /// Besides the file itself it reads the key and TLS files (which must be private),
    /// loads and initialises plugins, and checks that the data dir can be created and that
    /// every shell program and docker binary can be run; it starts nothing. It prints a
    /// summary and what it checked, and warnings on stderr.
    Check {
        /// The TOML configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a new random API key (256 bits, URL-safe).
    Keygen,
    /// Make TLS files for `[tls]`.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Read the delivery journal (on unless `journal = false`), also while the server runs: list
    /// deliveries, show one with every attempt, or run one again.
    Deliveries {
        /// The configuration file whose data_dir holds the journal.
        #[arg(long, short, value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        /// The data dir that holds the journal (default: the config's, or ./hubhook-data).
        #[arg(long, value_name = "DIR", global = true, conflicts_with = "config")]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        action: DeliveriesCommand,
    },
    /// Post a test webhook (Docker Hub's documented example, or a file) and print the answer.
    ///
    /// Prints the status and the body. Exits 0 on a 2xx answer and 1 on any other answer
    /// or when no answer came (with the reason and what to try). It sends no signature,
    /// so it can test hooks that take an API key (Docker Hub, registry, generic), not a
    /// `github` hook or a generic hook that requires a signature: use the sender's own
    /// "redeliver" for those.
    Send {
        /// The hook URL, e.g. http://127.0.0.1:8080/hubhook?apikey=KEY
        url: String,
        /// Post this file instead of the documented example payload.
        #[arg(long, short, value_name = "PAYLOAD")]
        file: Option<PathBuf>,
        /// Send this key as "Authorization: Bearer" (keeps it out of the URL).
        #[arg(long, short, value_name = "KEY", allow_hyphen_values = true)]
        key: Option<String>,
        /// Trust the CA certificates in this PEM file for https URLs (default: the system's).
        #[arg(long, value_name = "PEM")]
        cacert: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Write a self-signed certificate (cert.pem) and its private key (key.pem, mode 0600)
    /// for the given hosts, then print the [tls] lines and the certificate's SHA-256
    /// fingerprint. Exits 1 without writing anything if either file exists.
    SelfSigned {
        /// A name or IP address clients use to reach hubhook; repeat for several.
        #[arg(long = "host", value_name = "NAME", required = true)]
        hosts: Vec<String>,
        /// Where to write the two files.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum DeliveriesCommand {
    /// List deliveries, newest first.
    List {
        /// Only deliveries with this status ("unmatched": no handler wanted it).
        #[arg(long, value_name = "S", value_parser = status_words())]
        status: Option<DeliveryStatus>,
        /// Only this repository, as the list shows it: `acme/site`, or with its registry
        /// host, `registry.example.com/team/app`.
        #[arg(long, value_name = "R")]
        repo: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u64,
    },
    /// Show one delivery: the message's summary and every handler attempt. Exits 1 when
    /// the journal has no such delivery.
    Show {
        /// The delivery id (from the 202 answer, the log or `list`).
        id: DeliveryId,
    },
    /// Run a delivery again, as a new delivery with the same message: at once through
    /// the running server, or at its next start when none runs.
    Replay {
        /// The delivery id.
        id: DeliveryId,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    match cli.command {
        Command::Serve { config, listen } => run(serve(config, listen)),
        Command::Check { config } => match Config::load(&config)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                let checked = preflight::check(&c)?;
                Ok((c, checked))
            }) {
            Ok((config, checked)) => {
                let names: Vec<String> = config
                    .handlers
                    .iter()
                    .map(|h| format!("{} ({})", h.name, h.kind.type_name()))
                    .collect();
                let mut paths: Vec<String> = config.hooks.iter().map(|h| h.path.clone()).collect();
                if config.dockerhub_hook {
                    paths.insert(0, config.path.clone());
                }
                for warning in &config.warnings {
                    eprintln!("warning: {warning}");
                }
                println!(
                    "{}: ok; listens on {}{} ({}), handlers: {}",
                    config.file.as_deref().unwrap_or(&config.data_dir).display(),
                    config.listen,
                    paths.join(", "),
                    if config.tls.is_some() {
                        "TLS"
                    } else {
                        "plain HTTP"
                    },
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                );
                println!("checked: {}", checked.join("; "));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Deliveries {
            config,
            data_dir,
            action,
        } => {
            let data_dir = match (data_dir, config) {
                (Some(dir), _) => dir,
                // Only the data dir: no plugin is loaded, no TLS or key file read.
                (None, Some(file)) => match config::data_dir_of(&file) {
                    Ok(dir) => dir,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                (None, None) => PathBuf::from(DEFAULT_DATA_DIR),
            };
            let done = match action {
                DeliveriesCommand::List {
                    status,
                    repo,
                    limit,
                } => {
                    let mut filter = Filter::new().limit(limit);
                    if let Some(status) = status {
                        filter = filter.status(status);
                    }
                    if let Some(repo) = repo {
                        filter = filter.repo(repo);
                    }
                    deliveries::list(&data_dir, &filter)
                }
                DeliveriesCommand::Show { id } => deliveries::show(&data_dir, id),
                DeliveriesCommand::Replay { id } => {
                    return run(async move { deliveries::replay(&data_dir, id).await })
                }
            };
            match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tls(TlsCommand::SelfSigned { hosts, out }) => match tls::self_signed(&hosts, &out)
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Keygen => match keys::generate() {
            Ok(key) => {
                println!("{key}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot make a key: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Send {
            url,
            file,
            key,
            cacert,
        } => run(async move {
            let body = match &file {
                Some(path) => std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
                None => hubhook_core::message::EXAMPLE_PAYLOAD.as_bytes().to_vec(),
            };
            let answer = send::send(&url, body, key.as_deref(), cacert.as_deref()).await?;
            println!("HTTP {}", answer.status);
            println!("{}", answer.body.trim_end());
            if answer.status.is_success() {
                Ok(())
            } else {
                Err(format!("the hook answered {}", answer.status))
            }
        }),
    }
}

/// The words `deliveries list --status` takes.
fn status_words() -> impl clap::builder::TypedValueParser<Value = DeliveryStatus> {
    use clap::builder::{PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(DeliveryStatus::ALL.map(DeliveryStatus::as_str))
        .try_map(|word| word.parse::<DeliveryStatus>())
}

/// Runs `work` on a runtime and turns its error into a message and exit status 1.
fn run(work: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(work);
    // Dropping a runtime waits for every blocking thread, and a plugin call that timed out
    // may never return: the graceful part of shutdown is over by now, so do not wait.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr at the level `HUBHOOK_LOG` asks for (default INFO); a value that is not
/// a filter is an error, not silently the default.
fn init_logging() -> Result<(), String> {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let filter = match std::env::var("HUBHOOK_LOG") {
        Err(_) => Targets::new().with_default(LevelFilter::INFO),
        Ok(spec) => {
            let bad = |why: String| {
                format!(
                    "HUBHOOK_LOG={spec:?} is not a log filter ({why}): use a level such as \"debug\", \
                     or targets such as \"hubhook_core=debug,info\""
                )
            };
            // A bare word must be a level: `debgu` is a typo, not a target to trace.
            if let Some(word) = spec
                .split(',')
                .map(str::trim)
                .find(|p| !p.is_empty() && !p.contains('=') && p.parse::<LevelFilter>().is_err())
            {
                return Err(bad(format!("{word:?} is not a level")));
            }
            spec.parse::<Targets>().map_err(|e| bad(e.to_string()))?
        }
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .with(filter)
        .init();
    Ok(())
}

async fn serve(file: Option<PathBuf>, listen: Option<SocketAddr>) -> Result<(), String> {
    // From here on SIGTERM and SIGINT mean a graceful stop, also while starting.
    let stop = shutdown_signal().map_err(|e| format!("cannot watch for signals: {e}"))?;
    let mut config = match &file {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::defaults(),
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    // What `check` verifies, `serve` refuses to start without: a program that is not
    // there is found now, not at the first push.
    preflight::check(&config)?;
    if let Some(addr) = listen {
        config.listen = addr;
    }
    // With no file, the server looks after its own key; with a file, the file says.
    let mut announce = None;
    if config.file.is_none() {
        let (key, path, _made_now) =
            keys::load_or_create(&config.data_dir).map_err(|e| e.to_string())?;
        // The full URL is shown until one start got as far as printing it: a first
        // start that failed (a taken port) must not lose it.
        let shown = path.with_file_name(keys::SHOWN_FILE);
        announce = Some(((!shown.exists()).then(|| key.clone()), path, shown));
        config.api_keys.push(key);
    } else if config.allow_unauthenticated && config.api_keys.is_empty() {
        tracing::warn!("auth.allow_unauthenticated is set and there is no key: anyone who reaches the hook can trigger handlers");
    }

    let mut builder = HubhookService::builder()
        .max_body(config.max_body)
        .signed_max_body(config.signed_max_body);
    if config.dockerhub_hook {
        builder = builder
            .path(config.path.clone())
            .allow_unauthenticated(config.allow_unauthenticated);
        for key in config.api_keys.iter() {
            builder = builder.api_key(key);
        }
    }
    for spec in &config.hooks {
        let mut hook = Hook::new(spec.path.clone(), spec.provider.clone())
            .allow_unauthenticated(spec.allow_unauthenticated);
        if let Some(host) = &spec.registry {
            hook = hook.registry(host);
        }
        for key in spec.api_keys.iter() {
            hook = hook.api_key(key);
        }
        builder = builder.hook(hook);
    }
    for spec in &config.handlers {
        builder = builder.route(route(spec).map_err(|e| format!("handler {:?}: {e}", spec.name))?);
    }
    // Every accepted delivery is journaled before it is answered; what a previous process
    // left unfinished runs again now (at least once).
    let mut journal = None;
    if !config.journal {
        tracing::warn!("journal = false: accepted deliveries are kept in memory only, and a restart or a crash loses those not yet run");
    } else {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .map_err(|e| {
                format!(
                    "cannot create the data dir {}: {e}",
                    config.data_dir.display()
                )
            })?;
        if let Ok(meta) = std::fs::metadata(&config.data_dir) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    data_dir = %config.data_dir.display(),
                    "the data dir is readable by other users; the journal holds every payload: chmod 700 it"
                );
            }
        }
        let opened = std::sync::Arc::new(
            Journal::open(config.data_dir.join(JOURNAL_FILE)).map_err(|e| e.to_string())?,
        );
        builder = builder.journal_shared(opened.clone());
        journal = Some(opened);
    }
    if let Some(spec) = &config.callback {
        let mut callbacks = hubhook_core::callback::Callbacks::new()
            .allow(spec.allow.iter().cloned())
            .timeout(spec.timeout)
            .target_url(&spec.target_url);
        if let Some(ca) = &spec.ca_file {
            callbacks = callbacks
                .add_roots_pem_file(ca)
                .map_err(|e| e.to_string())?;
        }
        builder = builder.callbacks(callbacks);
    }
    let service = builder.build().map_err(|e| e.to_string())?;
    let handlers = service.handler_names();
    let hooks = service.hooks();

    // Everything that can fail at start (the port, the certificate, the socket) comes
    // before any handler runs: a failed start must not cut a recovered deploy short.
    let mut listener = Listener::builder(service.clone())
        .addr(config.listen)
        .header_timeout(config.header_timeout)
        .max_connections(config.max_connections)
        .max_connections_per_ip(config.max_connections_per_ip)
        .shutdown_grace(config.shutdown_grace);
    match &config.tls {
        Some(TlsFiles::Files { cert, key }) => {
            listener =
                listener.tls(TlsConfig::from_pem_files(cert, key).map_err(|e| e.to_string())?);
        }
        Some(TlsFiles::Acme(spec)) => {
            let certificates = acme::start(spec.clone())?;
            listener =
                listener.tls(TlsConfig::from_resolver(certificates).map_err(|e| e.to_string())?);
        }
        None => {}
    }
    let listener = listener.bind().await.map_err(|e| e.to_string())?;
    // `hubhook deliveries replay` reaches the running server through this socket.
    let _control = match &journal {
        Some(_) => Some(control::start(&config.data_dir, service.clone())?),
        None => None,
    };
    reconcile_swaps(&config);
    // Read before the first request is accepted, run in the background while serving:
    // waiting for room in a busy queue must not hold /healthz or a signal.
    let recovery = service.recovery().await.map_err(|e| e.to_string())?;
    if !recovery.is_empty() {
        tokio::spawn(async move {
            let owed = recovery.len();
            let resumed = recovery.run().await;
            tracing::info!(
                owed,
                resumed,
                "resumed deliveries a previous run left unfinished"
            );
        });
    }
    if let Some(journal) = &journal {
        retention(journal.clone(), config.keep, config.keep_deliveries);
    }
    let scheme = if listener.is_tls() { "https" } else { "http" };
    let addr = listener.local_addr();
    let more_hooks = if hooks.len() > 1 {
        let list: Vec<String> = hooks
            .iter()
            .map(|(path, provider)| format!("{path} ({provider})"))
            .collect();
        format!(", hooks: {}", list.join(", "))
    } else {
        String::new()
    };
    tracing::info!(
        "hubhook {} listening on {scheme}://{addr}{} (TLS {}){more_hooks}, {} handler(s): {}",
        env!("CARGO_PKG_VERSION"),
        hooks.first().map_or("", |(path, _)| path.as_str()),
        if listener.is_tls() { "on" } else { "off" },
        handlers.len(),
        if handlers.is_empty() {
            "none".to_owned()
        } else {
            handlers.join(", ")
        },
    );
    if let Some((new_key, path, shown)) = announce {
        // The key goes to stdout for the operator to copy, never through the log.
        match new_key {
            Some(key) => {
                println!(
                    "Hook URL for Docker Hub (key kept in {}):\n  {scheme}://{addr}{}?apikey={key}",
                    path.display(),
                    config.path
                );
                let _ = std::fs::write(&shown, "the hook URL with this key was printed once\n");
            }
            None => println!(
                "Hook URL: {scheme}://{addr}{}?apikey=<the key in {}>",
                config.path,
                path.display()
            ),
        }
    }
    let served = listener.serve_with_shutdown(stop).await;
    finish_swaps(&config).await;
    served.map_err(|e| e.to_string())
}

/// The docker handlers of `config`.
fn docker_handlers(config: &Config) -> impl Iterator<Item = &DockerHandler> {
    config.handlers.iter().filter_map(|spec| match &spec.kind {
        HandlerKind::Docker(handler) => Some(&**handler),
        _ => None,
    })
}

/// Finishes, in the background, any container swap a previous run left half-way (killed,
/// or stopped past its bound): the container runs the last image that passed its gate, or
/// the new one that passed.
fn reconcile_swaps(config: &Config) {
    for handler in docker_handlers(config) {
        let handler = handler.clone();
        tokio::spawn(async move {
            match handler.reconcile().await {
                Ok(None) => {}
                Ok(Some(repaired)) => {
                    tracing::warn!(
                        handler = handler.name(),
                        "repaired an unfinished deploy: {repaired}"
                    )
                }
                Err(e) => {
                    tracing::error!(handler = handler.name(), error = %e, "could not check for an unfinished deploy")
                }
            }
        });
    }
}

/// Before exiting, lets every container swap in progress finish or roll back, within the
/// largest `stop_timeout + health_timeout` + 10 s of the docker handlers; one cut short
/// past that is repaired at the next start.
async fn finish_swaps(config: &Config) {
    let Some(bound) = docker_handlers(config).map(DockerHandler::swap_bound).max() else {
        return;
    };
    if !DockerHandler::finish_swaps(std::time::Duration::ZERO).await {
        tracing::info!(bound_s = bound.as_secs(), "waiting for deploys in progress to finish or roll back (stop_timeout + health_timeout + 10 s)");
        if !DockerHandler::finish_swaps(bound).await {
            tracing::error!(
                bound_s = bound.as_secs(),
                "a deploy did not finish in time; the next start repairs it"
            );
        }
    }
}

fn route(spec: &HandlerSpec) -> Result<Route, String> {
    let mut route = match &spec.kind {
        HandlerKind::Log { format } => Route::new(LogHandler::new(&spec.name).format(*format)),
        HandlerKind::Shell {
            command,
            workdir,
            env,
            output_tail,
        } => {
            let mut shell =
                ShellHandler::new(&spec.name, command.clone()).map_err(|e| e.to_string())?;
            if let Some(dir) = workdir {
                shell = shell.workdir(dir);
            }
            for (key, value) in env {
                shell = shell.env(key, value);
            }
            if let Some(bytes) = output_tail {
                shell = shell.output_tail(*bytes);
            }
            Route::new(shell)
        }
        HandlerKind::Docker(handler) => Route::new((**handler).clone()),
        HandlerKind::Plugin(plugin) => Route::new(plugin.clone()),
    };
    if let Some(repo) = &spec.repo {
        route = route.repo(repo);
    }
    if let Some(tag) = &spec.tag {
        route = route.tag(tag);
    }
    if let Some(timeout) = spec.timeout {
        route = route.timeout(timeout);
    }
    let queue = &spec.queue;
    if let Some(coalesce) = queue.coalesce {
        route = route.coalesce(coalesce);
    }
    if let Some(n) = queue.max_concurrency {
        route = route.max_concurrency(n);
    }
    if let Some(n) = queue.max_queued {
        route = route.max_queued(n);
    }
    if let Some(n) = queue.retries {
        route = route.retries(n);
    }
    if let Some(backoff) = queue.retry_backoff {
        route = route.backoff(backoff);
    }
    Ok(route)
}

/// Prunes the journal now and every minute: finished deliveries older than `keep` and
/// past the newest `keep_deliveries` (so a flood cannot grow it for long).
fn retention(
    journal: std::sync::Arc<Journal>,
    keep: Option<std::time::Duration>,
    keep_deliveries: Option<u64>,
) {
    if keep.is_none() && keep_deliveries.is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every.tick().await;
            match journal.prune(keep, keep_deliveries).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "pruned finished deliveries from the journal"),
                Err(e) => tracing::warn!(error = %e, "could not prune the journal"),
            }
        }
    });
}

/// Registers for SIGTERM and SIGINT at once (so neither kills the process from now on);
/// the future ends at the first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown signal received");
    })
}
