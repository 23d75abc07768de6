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
mod error;
mod keys;
mod preflight;
mod send;
mod serve;
mod tls;
mod ui;
mod x509;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hubhook_core::journal::Filter;
use hubhook_core::{DeliveryId, DeliveryStatus};

use crate::config::{Config, DEFAULT_DATA_DIR};
use crate::error::Error;

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
    /// loads and initialises plugins, runs `compose config` for compose handlers, and
    /// checks that the data dir can be created and that every shell program, docker binary
    /// and compose command can be run; it starts nothing. It prints a
    /// summary and what it checked, and warnings on stderr.
    Check {
        /// The TOML configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a new random API key (256 bits, URL-safe).
    Keygen,
    /// Read a password from stdin (without echo on a terminal) and print its Argon2id
    /// hash, for `[ui] password_hash`.
    UiPassword,
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
    let done = init_logging()
        .map_err(Error::from)
        .and_then(|()| match cli.command {
            Command::Serve { config, listen } => on_runtime(serve::serve(config, listen)),
            Command::Check { config } => check(&config),
            Command::Deliveries {
                config,
                data_dir,
                action,
            } => deliveries_command(config, data_dir, action),
            Command::Tls(TlsCommand::SelfSigned { hosts, out }) => {
                tls::self_signed(&hosts, &out).map_err(Error::from)
            }
            Command::Keygen => keys::generate()
                .map(|key| println!("{key}"))
                .map_err(|e| Error::from(format!("cannot make a key: {e}"))),
            Command::UiPassword => ui_password(),
            Command::Send {
                url,
                file,
                key,
                cacert,
            } => on_runtime(send_command(url, file, key, cacert)),
        });
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `hubhook check`: the file, then what `serve` will need; a summary on stdout.
fn check(file: &Path) -> Result<(), Error> {
    let config = Config::load(file)?;
    let checked = preflight::check(&config)?;
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
    if let Some(ui) = &config.ui {
        let scheme = if ui.tls { "https" } else { "http" };
        println!("web page: {scheme}://{}/", ui.listen);
    }
    println!("checked: {}", checked.join("; "));
    Ok(())
}

/// `hubhook ui-password`: one line of stdin (not echoed on a terminal), hashed.
fn ui_password() -> Result<(), Error> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let mut line = String::new();
    let read = if terminal {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        eprint!("Password for the web page: ");
        let before = tcgetattr(&stdin).map_err(|e| format!("cannot read the terminal: {e}"))?;
        let mut quiet = before.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
        let read = stdin.lock().read_line(&mut line);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &before);
        eprintln!();
        read
    } else {
        stdin.lock().read_line(&mut line)
    };
    read.map_err(|e| format!("cannot read the password: {e}"))?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.chars().count() < 8 {
        return Err(String::from("the password needs at least 8 characters").into());
    }
    println!("{}", ui::hash_password(password)?);
    Ok(())
}

/// `hubhook deliveries`: reads the journal of the data dir the options name.
fn deliveries_command(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    action: DeliveriesCommand,
) -> Result<(), Error> {
    let data_dir = match (data_dir, config) {
        (Some(dir), _) => dir,
        // Only the data dir: no plugin is loaded, no TLS or key file read.
        (None, Some(file)) => config::data_dir_of(&file)?,
        (None, None) => PathBuf::from(DEFAULT_DATA_DIR),
    };
    match action {
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
            on_runtime(async move { deliveries::replay(&data_dir, id).await })
        }
    }
}

/// `hubhook send`: posts the payload and prints the answer; `Err` unless it is a 2xx.
async fn send_command(
    url: String,
    file: Option<PathBuf>,
    key: Option<String>,
    cacert: Option<PathBuf>,
) -> Result<(), Error> {
    let body = match &file {
        Some(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
        None => hubhook_core::message::EXAMPLE_PAYLOAD.as_bytes().to_vec(),
    };
    let answer = send::send(&url, body, key.as_deref(), cacert.as_deref()).await?;
    println!("HTTP {}", answer.status);
    println!("{}", answer.body.trim_end());
    if answer.status.is_success() {
        Ok(())
    } else {
        Err(format!("the hook answered {}", answer.status).into())
    }
}

/// The words `deliveries list --status` takes.
fn status_words() -> impl clap::builder::TypedValueParser<Value = DeliveryStatus> {
    use clap::builder::{PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(DeliveryStatus::ALL.map(DeliveryStatus::as_str))
        .try_map(|word| word.parse::<DeliveryStatus>())
}

/// Runs `work` on a runtime.
fn on_runtime(work: impl std::future::Future<Output = Result<(), Error>>) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(work);
    // Dropping a runtime waits for every blocking thread, and a plugin call that timed out
    // may never return: the graceful part of shutdown is over by now, so do not wait.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
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
