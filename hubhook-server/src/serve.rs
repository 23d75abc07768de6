//! `hubhook serve`, step by step: load the configuration, open the journal, build the
//! service, bind the listener, announce, then serve until a signal; and what runs beside
//! it (container swaps left half-way, journal retention).

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;

use hubhook_core::journal::Journal;
use hubhook_core::{Handler, Hook, HubhookService, Listener, Route, TlsConfig};
use hubhook_handlers::{DockerHandler, LogHandler, ShellHandler};

use crate::config::{Config, HandlerKind, HandlerSpec, TlsFiles};
use crate::deliveries::JOURNAL_FILE;
use crate::error::Error;
use crate::{acme, control, keys, preflight, ui};

/// The generated key of a start without a file, and whether to print it in full.
struct Announce {
    /// The key, when no start has printed its URL yet.
    new_key: Option<String>,
    /// Where the key is kept.
    path: PathBuf,
    /// The marker written once the URL has been printed.
    shown: PathBuf,
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully.
pub(crate) async fn serve(file: Option<PathBuf>, listen: Option<SocketAddr>) -> Result<(), Error> {
    // From here on SIGTERM and SIGINT mean a graceful stop, also while starting.
    let stop = shutdown_signal().map_err(|e| format!("cannot watch for signals: {e}"))?;
    let (config, announce) = load(file, listen)?;
    let journal = open_journal(&config)?;
    let service = build_service(&config, journal.clone())?;
    // Everything that can fail at start (the port, the certificate, the socket) comes
    // before any handler runs: a failed start must not cut a recovered deploy short.
    let listener = bind(&config, &service).await?;
    // `hubhook deliveries replay` reaches the running server through this socket.
    let _control = match &journal {
        Some(_) => Some(control::start(&config.data_dir, service.clone())?),
        None => None,
    };
    let page = match &config.ui {
        Some(spec) => Some((ui::start(spec, &config, service.clone()).await?, spec.tls)),
        None => None,
    };
    reconcile_swaps(&config);
    recover(&service).await?;
    if let Some(journal) = &journal {
        retention(journal.clone(), config.keep, config.keep_deliveries);
    }
    announce_start(&config, &service, &listener, announce);
    if let Some((addr, tls)) = page {
        let scheme = if tls { "https" } else { "http" };
        tracing::info!("web page of deliveries on {scheme}://{addr}/");
    }
    let served = listener.serve_with_shutdown(stop).await;
    finish_swaps(&config).await;
    Ok(served?)
}

/// The configuration (the file's, or the defaults with a generated key), checked as
/// `hubhook check` checks it.
fn load(
    file: Option<PathBuf>,
    listen: Option<SocketAddr>,
) -> Result<(Config, Option<Announce>), Error> {
    let mut config = match &file {
        Some(path) => Config::load(path)?,
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
        let (key, path, _made_now) = keys::load_or_create(&config.data_dir)?;
        // The full URL is shown until one start got as far as printing it: a first
        // start that failed (a taken port) must not lose it.
        let shown = path.with_file_name(keys::SHOWN_FILE);
        announce = Some(Announce {
            new_key: (!shown.exists()).then(|| key.clone()),
            path,
            shown,
        });
        config.api_keys.push(key);
    } else if config.allow_unauthenticated && config.api_keys.is_empty() {
        tracing::warn!("auth.allow_unauthenticated is set and there is no key: anyone who reaches the hook can trigger handlers");
    }
    Ok((config, announce))
}

/// The journal in the data dir (made 0700), or `None` with a warning when it is off.
fn open_journal(config: &Config) -> Result<Option<Arc<Journal>>, Error> {
    if !config.journal {
        tracing::warn!("journal = false: accepted deliveries are kept in memory only, and a restart or a crash loses those not yet run");
        return Ok(None);
    }
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
    let journal = Journal::open(config.data_dir.join(JOURNAL_FILE))?;
    Ok(Some(Arc::new(journal)))
}

/// The service: the hooks, the handlers' routes, the journal and the callback.
fn build_service(config: &Config, journal: Option<Arc<Journal>>) -> Result<HubhookService, Error> {
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
    // Every accepted delivery is journaled before it is answered.
    if let Some(journal) = journal {
        builder = builder.journal_shared(journal);
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
    builder = builder.notify_all(config.notify.iter().cloned());
    Ok(builder.build()?)
}

/// The listener on the configured address, with its limits and TLS (from files or ACME).
async fn bind(config: &Config, service: &HubhookService) -> Result<Listener, Error> {
    let mut listener = Listener::builder(service.clone())
        .addr(config.listen)
        .header_timeout(config.header_timeout)
        .max_connections(config.max_connections)
        .max_connections_per_ip(config.max_connections_per_ip)
        .shutdown_grace(config.shutdown_grace);
    match &config.tls {
        Some(TlsFiles::Files { cert, key }) => {
            listener = listener.tls(TlsConfig::from_pem_files(cert, key)?);
        }
        Some(TlsFiles::Acme(spec)) => {
            let certificates = acme::start(spec.clone())?;
            listener = listener.tls(TlsConfig::from_resolver(certificates)?);
        }
        None => {}
    }
    Ok(listener.bind().await?)
}

/// Runs again, in the background, what a previous process left unfinished (at least
/// once). Read before the first request is accepted, run while serving: waiting for room
/// in a busy queue must not hold /healthz or a signal.
async fn recover(service: &HubhookService) -> Result<(), Error> {
    let recovery = service.recovery().await?;
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
    Ok(())
}

/// The start line in the log, and with no file, the hook URL on stdout.
fn announce_start(
    config: &Config,
    service: &HubhookService,
    listener: &Listener,
    announce: Option<Announce>,
) {
    let handlers = service.handler_names();
    let hooks = service.hooks();
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
    let Some(Announce {
        new_key,
        path,
        shown,
    }) = announce
    else {
        return;
    };
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
    let composed = config.handlers.iter().filter_map(|spec| match &spec.kind {
        HandlerKind::Compose(handler) => Some(handler.swap_bound()),
        _ => None,
    });
    let Some(bound) = docker_handlers(config)
        .map(DockerHandler::swap_bound)
        .chain(composed)
        .max()
    else {
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
        HandlerKind::Compose(handler) => Route::new((**handler).clone()),
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
