//! The `fastgate` binary: parse arguments, load config, set up logging, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Parser;
use fastgate_server::api::rfc3339;
use fastgate_server::cli::{Cli, Command, KeysCommand, Listen, printable};
use fastgate_server::config::{LogFormat, Settings};
use fastgate_server::logfile::LogFile;
use fastgate_server::{Gateway, connect_store};
use fastgate_store::{KeyFilter, KeyUpdate, NewKey};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let listen = match cli.listen() {
        Ok(listen) => listen,
        Err(e) => {
            use clap::CommandFactory as _;
            Cli::command()
                .error(clap::error::ErrorKind::ArgumentConflict, e)
                .exit()
        }
    };
    let config_path = match cli.config_path() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fastgate: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    // Serving and check-config also read the TLS files and the proxy variables; `fastgate keys
    // …` (perhaps run by a user who cannot read the client key) does not need them.
    let serving = matches!(cli.command, None | Some(Command::Serve(_)));
    let upstream_too = serving || matches!(cli.command, Some(Command::CheckConfig));
    let loaded = match Settings::load(&config_path) {
        // The spec does not depend on the configuration: printed also without a readable one
        // (`fastgate openapi > openapi.json` in a checkout, a CI job).
        Err(e) if matches!(cli.command, Some(Command::Openapi)) => {
            eprintln!("fastgate: {e}; the spec does not depend on it, printed without it");
            Settings::for_spec()
        }
        loaded => loaded,
    }
    .and_then(|mut s| {
        if upstream_too {
            s.prepare_upstream(&|name| std::env::var(name).ok())?;
        }
        Ok(s)
    });
    let settings = match loaded {
        Ok(mut s) => {
            apply_overrides(&listen, &mut s);
            s
        }
        Err(e) => {
            eprintln!("fastgate: configuration error: {e}");
            if e.key == "(file)"
                && let Some(hint) = cli.config_hint()
            {
                eprintln!("fastgate: {hint}");
            }
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Some(Command::CheckConfig)) {
        for warning in &settings.warnings {
            println!("warning: {warning}");
        }
        // What the server would fail on (or do without) at start, checked without creating
        // anything.
        let (problems, notes) = preflight(&settings);
        for note in &notes {
            println!("warning: {note}");
        }
        for problem in &problems {
            println!("error: {problem}");
        }
        if !problems.is_empty() {
            return ExitCode::from(2);
        }
        println!(
            "configuration OK: {} ({} route(s){})",
            config_path.display(),
            settings.routes.len(),
            settings
                .routes_path
                .as_ref()
                .map(|p| format!(", routes from {}", p.display()))
                .unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let log_file = match init_logging(&settings, serving) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fastgate: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fastgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, listen, config_path, settings, log_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once on stderr, as a plain line like the configuration errors above (shown
            // whatever the log filter); also in `logging.file`, as a log line (kept off stderr).
            // Each cause once: drivers often repeat their source in their own message
            // ("role \"u\" does not exist: role \"u\" does not exist" with `{e:#}`).
            let shown = fastgate_layer::ErrorChain(e.as_ref()).to_string();
            tracing::error!(target: EXIT_ERROR_TARGET, "{shown}");
            eprintln!("fastgate: {shown}");
            ExitCode::FAILURE
        }
    }
}

/// Target of the log line that records in `logging.file` the error the process stops with.
/// `main` prints that error on stderr itself, so the line is kept off stderr
/// ([`not_the_exit_error`]): the error was printed twice there.
const EXIT_ERROR_TARGET: &str = "fastgate::exit";

fn not_the_exit_error(meta: &tracing::Metadata<'_>) -> bool {
    meta.target() != EXIT_ERROR_TARGET
}

/// `--host` / `--port` win over the file (and over `FASTGATE__APP__…`), also after a reload.
fn apply_overrides(listen: &Listen, settings: &mut Settings) {
    if let Some(host) = &listen.host {
        settings.config.app.host.clone_from(host);
    }
    if let Some(port) = listen.port {
        settings.config.app.port = port;
    }
}

/// The nearest existing directory at or above `dir` ("." for an empty path).
fn existing_ancestor(dir: &std::path::Path) -> Option<&std::path::Path> {
    // A relative path's last ancestor is "", which is the working directory, not a missing one.
    dir.ancestors()
        .map(|d| {
            if d.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                d
            }
        })
        .find(|d| d.exists())
}

/// `check-config`'s checks of the paths the server would use, made without creating or opening
/// anything for writing: the SQLite file's directory and `logging.file` (errors: the server
/// would not start), the audit spool's directory (a warning: it would run without a spool).
fn preflight(settings: &Settings) -> (Vec<String>, Vec<String>) {
    use std::path::Path;
    let c = &settings.config;
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let database = fastgate_store::parse_database_url(&c.database.url);
    if let Ok(fastgate_store::DatabaseUrl::Postgres(pg)) = &database {
        for parameter in pg.ignored_parameters() {
            notes.push(format!(
                "database.url: the query parameter {parameter} is not one the PostgreSQL driver knows: ignored"
            ));
        }
    }
    if let Ok(fastgate_store::DatabaseUrl::Sqlite(fastgate_store::SqliteLocation::File(path))) =
        database
    {
        let dir = path.parent().unwrap_or(Path::new(""));
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            problems.push(format!(
                "database.url: directory {} for the SQLite database does not exist (it is not created)",
                dir.display()
            ));
        } else if path.is_dir() {
            problems.push(format!(
                "database.url: {} is a directory, not a database file",
                path.display()
            ));
        }
    }
    if let Some(file) = c.logging.file.as_deref() {
        let path = Path::new(file);
        if path.is_dir() {
            problems.push(format!("logging.file: {file} is a directory"));
        } else {
            let parent = path.parent().unwrap_or(Path::new(""));
            match existing_ancestor(parent) {
                Some(dir) if dir.is_dir() => {}
                _ => problems.push(format!(
                    "logging.file: the directory for {file} cannot be created (a file is in its way)"
                )),
            }
        }
    }
    if let Some(spool) = c.audit.spool_file.as_deref().filter(|s| !s.is_empty()) {
        let dir = Path::new(spool).parent().unwrap_or(Path::new(""));
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if !dir.is_dir() {
            notes.push(format!(
                "audit.spool_file: directory {} does not exist (the gateway would run without a spool)",
                dir.display()
            ));
        }
    }
    (problems, notes)
}

/// Logging to stderr and, when serving, also to `logging.file` (returned, for SIGHUP to reopen).
fn init_logging(settings: &Settings, serving: bool) -> Result<Option<Arc<LogFile>>, String> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt as _};
    let c = &settings.config;
    let default = match &c.logging.level {
        // Validated when the config was loaded.
        Some(level) => fastgate_server::config::log_filter(level)?,
        None => if c.app.debug { "debug" } else { "info" }.to_owned(),
    };
    // An empty RUST_LOG (docker-compose's `${RUST_LOG}`) counts as unset. It is read as
    // `logging.level` is (so `warning` is the level, not a target named "warning", which would
    // silence every line); one that cannot be read is said on stderr and not used.
    let mut filter = match std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        Some(env) => match fastgate_server::config::log_filter(&env) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("fastgate: RUST_LOG is not used: {e}; logging at {default:?} instead");
                default
            }
        },
        None => default,
    };
    // sqlx logs statements (never bound values) at debug; `database.echo` shows them. A filter
    // that names sqlx itself decides.
    if !filter.contains("sqlx") {
        filter.push_str(if c.database.echo {
            ",sqlx=debug"
        } else {
            ",sqlx=warn"
        });
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal, and not when NO_COLOR asks for none (no-color.org).
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // `logging.file`, for the server only (`fastgate keys …` must not create or append to it):
    // every line goes to stderr and is appended to the file, without colour codes.
    let file = match (&c.logging.file, serving) {
        (Some(path), true) => Some(
            LogFile::open(std::path::Path::new(path))
                .map_err(|e| format!("logging.file: cannot open {path}: {e}"))?,
        ),
        _ => None,
    };
    let stderr = std::io::stderr.with_filter(not_the_exit_error);
    let (writer, ansi) = match &file {
        Some(f) => (BoxMakeWriter::new(stderr.and(Arc::clone(f))), false),
        None => (BoxMakeWriter::new(stderr), colour),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match c.logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(file)
}

async fn run(
    cli: Cli,
    listen: Listen,
    config_path: PathBuf,
    settings: Settings,
    log_file: Option<Arc<LogFile>>,
) -> anyhow::Result<()> {
    match cli.command {
        None | Some(Command::Serve(_)) => serve(listen, config_path, settings, log_file).await,
        Some(Command::CheckConfig) => Ok(()),
        Some(Command::Migrate) => {
            let store = connect_store(&settings).await.context("database")?;
            store.migrate().await.context("migrations")?;
            println!("migrations applied ({})", store.backend().as_str());
            Ok(())
        }
        Some(Command::Openapi) => {
            // The spec does not depend on the data: describe the API over a throw-away in-memory
            // database, so that printing it needs no reachable (or writable) configured one.
            let store = fastgate_store::Store::connect(
                "sqlite::memory:",
                fastgate_store::StoreOptions {
                    max_connections: 1,
                    ..fastgate_store::StoreOptions::default()
                },
            )
            .await
            .context("in-memory database for the spec")?;
            let (audit, _worker) = fastgate_layer::audit::AuditLayer::pair(
                store.audit_sink(),
                fastgate_layer::audit::AuditConfig::default(),
            );
            let stats = audit.stats();
            let state = std::sync::Arc::new(fastgate_server::state::AppState::new(
                store, settings, stats,
            ));
            let api = fastgate_server::openapi(state);
            println!("{}", fastgate_server::spec::finish(&api.spec()));
            Ok(())
        }
        Some(Command::ImportMfastgate { from }) => {
            let store = connect_store(&settings).await.context("database")?;
            let opts = fastgate_store::mfastgate::ImportOptions::default()
                .add_permission(settings.config.api_gateway.permission.clone());
            let r = store
                .import_mfastgate(&from, &opts)
                .await
                .with_context(|| format!("import from {}", from.display()))?;
            println!(
                "keys: {} imported, {} already present, {} not importable; audit rows: {} \
                 imported, {} already present, {} not importable",
                r.keys_imported,
                r.keys_present,
                r.keys_invalid,
                r.audit_imported,
                r.audit_present,
                r.audit_invalid
            );
            let days = settings.config.audit.retention_days;
            if r.audit_imported > 0 && days > 0 {
                // The old history is usually older than the retention: the purge that runs
                // within an hour of the start would delete it.
                println!(
                    "note: audit.retention_days is {days}: imported records older than {days} days \
                     are deleted by the gateway's retention purge (an hour after its start, then \
                     hourly); set audit.retention_days: 0 (keep all) or a larger value, and \
                     (re)start the gateway, to keep them"
                );
            }
            Ok(())
        }
        Some(Command::Keys(cmd)) => keys(cmd, settings).await,
    }
}

async fn serve(
    listen: Listen,
    config_path: PathBuf,
    settings: Settings,
    log_file: Option<Arc<LogFile>>,
) -> anyhow::Result<()> {
    // First: a SIGHUP during start-up (logrotate's postrotate) must not kill the process; a
    // signal that arrives before the loop polls these is kept for it.
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Before the database pool and the listener take descriptors.
    fastgate_server::raise_open_files_limit();
    let store = connect_store(&settings).await.context("database")?;
    let addr = settings.listen_addr();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    // The database as it is reached (a file's path; a URL without its password).
    let database = fastgate_store::parse_database_url(&settings.config.database.url)
        .map_or_else(|_| store.backend().as_str().to_owned(), |u| u.to_string());
    tracing::info!(
        address = %listener.local_addr()?,
        database,
        config = %config_path.display(),
        routes = settings.routes.len(),
        "FastGate {} listening",
        env!("CARGO_PKG_VERSION")
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway = Gateway::start(listener, settings, store, async move {
        let _ = stop_rx.await;
    })
    .await?;

    let first = loop {
        tokio::select! {
            _ = hup.recv() => {
                // The log file first (logrotate renamed it), so the reload's lines land there.
                if let Some(f) = &log_file
                    && let Err(e) = f.reopen()
                {
                    tracing::error!(file = %f.path().display(), error = %e, "cannot reopen logging.file");
                }
                // The TLS files and proxy variables are read by `reload`, once the settings read
                // only at start (`trust_env` among them) have their running values back.
                match Settings::load(&config_path) {
                    Ok(mut new) => {
                        apply_overrides(&listen, &mut new);
                        gateway.reload(new);
                    }
                    Err(e) => tracing::error!(
                        "configuration reload failed, keeping the running configuration: {e}"
                    ),
                }
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    // A signal that comes within a second of the first is the same stop sent twice (a
    // supervisor signalling the process group, then the process), not an impatient operator.
    let first_at = std::time::Instant::now();
    let repeated = |name: &str, what: &str| {
        let again = first_at.elapsed() >= Duration::from_secs(1);
        if !again {
            tracing::info!("{name} again within a second of the first: still {what}");
        }
        again
    };
    // From now on `/health` answers 503 `draining`: a load balancer polling it takes the
    // instance out of rotation.
    gateway.state.begin_draining();
    // Read only at start: a reload keeps the running value.
    let accept_grace =
        Duration::from_secs(gateway.state.settings().config.app.shutdown_accept_grace);
    if accept_grace.is_zero() {
        tracing::info!("{first}: shutting down");
    } else {
        // Still accepting and serving (new connections and idle keep-alive ones alike) until
        // the load balancer has taken the instance out; a second signal ends the wait.
        tracing::info!(
            "{first}: draining: /health answers 503 `draining`, new connections are still served \
             for {} s (app.shutdown_accept_grace), then shutting down",
            accept_grace.as_secs()
        );
        let waited = tokio::time::sleep(accept_grace);
        tokio::pin!(waited);
        loop {
            let name = tokio::select! {
                () = &mut waited => {
                    tracing::info!("accept grace over: shutting down");
                    break;
                }
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if repeated(name, "draining") {
                tracing::warn!("{name} again: accept grace ended early; shutting down");
                break;
            }
        }
    }
    let _ = stop_tx.send(());
    // A further SIGTERM or Ctrl-C ends the grace period at once: what is still in flight is cut
    // (audited `interrupted`), the audit queue is still written.
    let cut = gateway.cut();
    let stopped = gateway.wait();
    tokio::pin!(stopped);
    loop {
        let name = tokio::select! {
            done = &mut stopped => { done?; break; }
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        if repeated(name, "shutting down") {
            tracing::warn!("{name} again: not waiting for requests in flight");
            cut.now();
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The error for an id no key has. The argument is not repeated: it may be a key's secret
/// given by mistake (the ids of keys imported from M-FastGate look like secrets).
fn no_such_key() -> anyhow::Error {
    anyhow::anyhow!(
        "no key has this id (keys are named by their id, not their secret: see `fastgate keys list`)"
    )
}

/// Disable or enable a key; an error when there is no such key.
async fn set_active(store: &fastgate_store::Store, id: &str, active: bool) -> anyhow::Result<()> {
    let update = KeyUpdate {
        active: Some(active),
        ..KeyUpdate::default()
    };
    match store.update_key(id, update).await? {
        Some(_) => Ok(()),
        None => Err(no_such_key()),
    }
}

async fn keys(cmd: KeysCommand, settings: Settings) -> anyhow::Result<()> {
    let store = connect_store(&settings).await.context("database")?;
    let now = SystemTime::now();
    match cmd {
        KeysCommand::Create(args) => {
            let days = args
                .expires_days
                .unwrap_or(settings.config.security.default_expiry_days);
            // Each item was checked by clap (`api::permission`); this drops duplicates. Without
            // `--permission`, the unified endpoint's, as `POST /admin/keys` gives.
            let permissions = fastgate_server::api::clean_permissions(
                Some(args.permissions).filter(|p| !p.is_empty()),
            )
            .map_err(anyhow::Error::msg)?
            .unwrap_or_else(|| vec![settings.config.api_gateway.permission.clone()]);
            let created = store
                .create_key(NewKey {
                    name: args.name,
                    source_path: args.source_path,
                    permissions,
                    expires_at: (!args.never_expires)
                        .then(|| now + Duration::from_secs(u64::from(days) * 86_400)),
                })
                .await?;
            println!("{}", created.secret);
            let expiry = match created.record.expires_at {
                Some(t) => format!("expires {}", rfc3339(t)),
                None => "never expires".to_owned(),
            };
            eprintln!(
                "created key {} for {} ({expiry}) — store it now: it is not shown again",
                printable(&created.record.id),
                printable(&created.record.source_path)
            );
        }
        KeysCommand::List { source_path, json } => {
            // Every key, a page at a time (a key created meanwhile may shift a page: ids seen
            // already are skipped).
            let mut items = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut offset: u32 = 0;
            loop {
                let page = store
                    .list_keys(&KeyFilter {
                        active: None,
                        source_path: source_path.clone(),
                        expired: None,
                        limit: 1000,
                        offset,
                    })
                    .await?;
                let got = u32::try_from(page.items.len()).unwrap_or(u32::MAX);
                offset = offset.saturating_add(got);
                items.extend(page.items.into_iter().filter(|k| seen.insert(k.id.clone())));
                if got == 0 || u64::from(offset) >= page.total {
                    break;
                }
            }
            if json {
                let items: Vec<serde_json::Value> = items
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "id": k.id, "name": k.name, "source_path": k.source_path,
                            "permissions": k.permissions, "display": k.display,
                            "status": k.status(now), "request_count": k.request_count,
                            "created_at": rfc3339(k.created_at),
                            "expires_at": k.expires_at.map(rfc3339),
                            "last_used_at": k.last_used_at.map(rfc3339),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(items));
            } else {
                // Values may hold control characters (an imported key's): escaped, so that
                // none reaches the terminal.
                let id_width = items
                    .iter()
                    .map(|k| printable(&k.id).chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(2);
                println!(
                    "{:<id_width$} {:<10} {:<20} {:<16} {:<24} {:>8}",
                    "ID", "STATUS", "SOURCE_PATH", "PERMISSIONS", "KEY", "REQUESTS"
                );
                for k in &items {
                    println!(
                        "{:<id_width$} {:<10} {:<20} {:<16} {:<24} {:>8}",
                        printable(&k.id),
                        k.status(now),
                        printable(&k.source_path),
                        printable(&k.permissions.join(",")),
                        printable(&k.display),
                        k.request_count
                    );
                }
            }
            eprintln!("{} key(s)", items.len());
        }
        KeysCommand::Revoke { id } => {
            set_active(&store, &id, false).await?;
            println!("revoked {}", printable(&id));
        }
        KeysCommand::Enable { id } => {
            set_active(&store, &id, true).await?;
            println!("enabled {}", printable(&id));
        }
        KeysCommand::Delete { id } => {
            if store.delete_key(&id).await? {
                println!("deleted {}", printable(&id));
            } else {
                return Err(no_such_key());
            }
        }
        KeysCommand::Rotate { id, grace_seconds } => {
            match store
                .rotate_key(&id, Duration::from_secs(grace_seconds))
                .await?
            {
                Some(created) => {
                    println!("{}", created.secret);
                    eprintln!(
                        "rotated key {} — the old secret works for {grace_seconds} more second(s)",
                        printable(&created.record.id)
                    );
                }
                None => return Err(no_such_key()),
            }
        }
    }
    Ok(())
}
