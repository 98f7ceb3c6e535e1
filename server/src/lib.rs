//! The `fastgate` server: assembles `fastgate-layer` and `fastgate-store` behind one hyper accept
//! loop ([`front`]): `/proxy/...` goes straight to the layer stack, everything else to a poem app
//! with the admin API (`/admin`, documented at `/docs` and `/openapi.json`), `/health` and the
//! embedded dashboard (`/admin/ui/`).
//!
//! `main.rs` only parses arguments and wires signals; everything a test needs is here:
//! [`Gateway::start`] takes a listener that is already bound (tests bind `127.0.0.1:0`).

pub mod api;
pub mod cli;
pub mod config;
pub mod egress;
mod export;
pub mod front;
pub mod guard;
pub mod linger;
pub mod logfile;
mod parse_refusal;
pub mod spec;
pub mod state;
pub mod tls;
pub mod ui;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fastgate_layer::GatewayBuilder;
use fastgate_layer::audit::{
    AuditBatch, AuditConfig as LayerAuditConfig, AuditLayer, AuditSink, SpoolError, SpoolSink,
    SpoolStats,
};
use fastgate_layer::forward::{ForwardConfig, UpstreamTls};
use fastgate_layer::route::RouteTable;
use fastgate_store::{BackgroundOptions, Store, StoreAuditSink, StoreError, StoreOptions};
use percent_encoding::percent_decode_str;
use poem::{Endpoint, EndpointExt, IntoResponse, Response, Route};
use poem_openapi::OpenApiService;
use rustls::ClientConfig;
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::state::AppState;

/// Open the database named by the settings (migrations applied).
pub async fn connect_store(settings: &Settings) -> Result<Store, fastgate_store::StoreError> {
    let c = &settings.config;
    Store::connect(
        &c.database.url,
        StoreOptions {
            key_prefix: c.security.key_prefix.clone(),
            cache_ttl: Duration::from_secs(c.security.key_cache_ttl_seconds),
            max_connections: c.database.max_connections,
            ..StoreOptions::default()
        },
    )
    .await
}

/// Raise the soft limit of open files (`RLIMIT_NOFILE`) to the hard limit, as Go's runtime and
/// nginx (`worker_rlimit_nofile`) do: every client connection and every upstream connection
/// takes a descriptor, and systemd's default soft limit (1024, kept low for programs that still
/// use `select`) is far below the hard one (524288). Said at debug level; a failure leaves the
/// limit as it was (the process still runs, with fewer connections).
#[cfg(unix)]
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    if limit.current == limit.maximum {
        tracing::debug!(
            soft = show(limit.current),
            hard = show(limit.maximum),
            "open files limit (RLIMIT_NOFILE)"
        );
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(
            soft = show(limit.maximum),
            was = show(limit.current),
            "open files limit (RLIMIT_NOFILE) raised to the hard limit"
        ),
        Err(e) => tracing::debug!(
            soft = show(limit.current),
            hard = show(limit.maximum),
            error = %e,
            "open files limit (RLIMIT_NOFILE) not raised"
        ),
    }
}

/// The OpenAPI service (admin API + health); also used to print the spec.
pub fn openapi(state: Arc<AppState>) -> OpenApiService<(api::SystemApi, api::AdminApi), ()> {
    OpenApiService::new(
        (
            api::SystemApi::new(state.clone()),
            api::AdminApi::new(state),
        ),
        "FastGate",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Admin API of FastGate, an API gateway for OpenAI-compatible LLM backends. \
         Every /admin endpoint needs the admin token: `?token=`, `Authorization: Bearer` or \
         `X-Admin-Token`. Errors are OpenAI-shaped: {\"error\":{\"message\",\"type\",\"code\"}}.",
    )
    .license(poem_openapi::LicenseObject::new("MIT").url("https://opensource.org/licenses/MIT"))
}

/// The spec served at `/openapi.json` (poem-openapi's, finished by [`spec::finish`]) and the
/// Swagger UI page of `/docs` showing that spec.
pub fn spec_and_docs(
    api: &OpenApiService<(api::SystemApi, api::AdminApi), ()>,
) -> (String, String) {
    let generated = api.spec();
    let finished = spec::finish(&generated);
    // The page embeds the spec as a JavaScript object literal, verbatim.
    let docs = api.swagger_ui_html().replacen(&generated, &finished, 1);
    (finished, docs)
}

/// The Swagger UI page, with the dashboard's protections: not framed by other sites (the page
/// takes the admin token for "Try it out"), no referrer, no sniffing, and a CSP that lets its
/// inline script and style run but loads and calls nothing outside this origin.
fn docs_page(html: String) -> impl Endpoint {
    const DOCS_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
                            style-src 'unsafe-inline'; img-src 'self' data:; font-src data:; \
                            connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
                            form-action 'none'";
    poem::endpoint::make_sync(move |_| {
        poem::web::Html(html.clone())
            .with_header(poem::http::header::CONTENT_SECURITY_POLICY, DOCS_CSP)
            .with_header("x-frame-options", "DENY")
            .with_header(poem::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .with_header(poem::http::header::REFERRER_POLICY, "no-referrer")
    })
}

/// The audit sink: the store, behind the spool file of `audit.spool_file` unless that is `""`.
enum ServerSink {
    Store(StoreAuditSink),
    Spooled(SpoolSink<StoreAuditSink>),
}

#[derive(Debug, thiserror::Error)]
enum ServerSinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Spool(#[from] SpoolError<StoreError>),
}

impl AuditSink for ServerSink {
    type Error = ServerSinkError;

    async fn write_batch(&mut self, events: &AuditBatch) -> Result<(), ServerSinkError> {
        match self {
            Self::Store(sink) => Ok(sink.write_batch(events).await?),
            Self::Spooled(sink) => Ok(sink.write_batch(events).await?),
        }
    }

    async fn idle(&mut self) {
        if let Self::Spooled(sink) = self {
            sink.idle().await;
        }
    }
}

/// The audit spool as the gateway runs with it.
enum Spool {
    /// `audit.spool_file: ""`: none, on purpose.
    Off,
    /// Set, but not usable (said at start): the gateway runs without one.
    Unusable,
    /// In use, with its counters.
    Active(SpoolStats),
}

/// The store's audit sink, behind a spool file when one is configured. The file's place is
/// checked now (created and removed), not at the first outage; events a previous run left in it
/// are written first.
async fn audit_sink(audit: &crate::config::AuditConfig, store: &Store) -> (ServerSink, Spool) {
    let Some(path) = audit.spool_file.as_deref().filter(|p| !p.is_empty()) else {
        return (ServerSink::Store(store.audit_sink()), Spool::Off);
    };
    let shown = path;
    let path = std::path::Path::new(path);
    let usable = (|| {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        if !path.exists() {
            match std::fs::OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(path)
            {
                Ok(_) => std::fs::remove_file(path)?,
                // Another process made it meanwhile: the place is writable.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        SpoolSink::open(store.audit_sink(), path)
    })();
    // Not a reason to refuse to serve (an upgrade keeping its config, in a read-only working
    // directory, must still start), but said loudly.
    let mut spool = match usable {
        Ok(spool) => spool,
        Err(e) => {
            tracing::error!(
                "audit.spool_file {shown}: not usable ({e}); running without a spool: audit records of a database outage longer than about 40 s are lost (/health says degraded: audit_spool_unusable). Set a writable path, or \"\" to silence this"
            );
            return (ServerSink::Store(store.audit_sink()), Spool::Unusable);
        }
    };
    let waiting = spool.stats().waiting();
    if waiting > 0 {
        tracing::info!(waiting, path = %path.display(), "audit events left in the spool file by an earlier run; writing them");
        // Bounded: a long outage's file must not keep the gateway from serving; the worker
        // writes the rest.
        match spool.replay_now(Duration::from_secs(10)).await {
            Ok(written) => tracing::info!(written, "audit spool written to the database"),
            Err(e) => {
                tracing::warn!(error = %fastgate_layer::ErrorChain(&e), "audit spool not written yet; retried while serving")
            }
        }
    }
    let stats = spool.stats();
    (ServerSink::Spooled(spool), Spool::Active(stats))
}

/// The key usage file beside the audit spool file `spool` (`<spool>.usage`): usage counts the
/// last flush at a stop could not write are kept there, and loaded by the next start. Without
/// it (not usable: said in a warning) they are lost, as without a spool.
async fn keep_usage_beside(spool: &std::path::Path, store: &Store) {
    let mut path = spool.as_os_str().to_owned();
    path.push(".usage");
    let path = std::path::PathBuf::from(path);
    let file = match fastgate_store::UsageFile::open(&path) {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(
                "{e}; running without it: key usage counts still unwritten at a stop during a database outage are lost"
            );
            return;
        }
    };
    match store.keep_usage_in(file).await {
        Ok(loaded) if loaded.requests > 0 => tracing::info!(
            keys = loaded.keys,
            requests = loaded.requests,
            path = %path.display(),
            "key usage counted by an earlier run while the database was unreachable; written with the next usage flush"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(
            "{e}; running without it: key usage counts still unwritten at a stop during a database outage are lost"
        ),
    }
}

/// A running gateway: the server task, the audit worker and the shared state.
#[derive(Debug)]
pub struct Gateway {
    /// Shared state (settings, store, counters).
    pub state: Arc<AppState>,
    /// The live route table (replaced on reload).
    pub routes: RouteTable,
    /// The TLS settings of `https://` backends (replaced on reload).
    upstream_tls: UpstreamTls,
    server: JoinHandle<std::io::Result<()>>,
    audit_worker: JoinHandle<()>,
    background: JoinHandle<()>,
    background_stop: tokio::sync::watch::Sender<bool>,
    cut: front::Cut,
}

impl Gateway {
    /// Start serving on `listener` until `shutdown` resolves; then in-flight requests get
    /// `app.shutdown_timeout` seconds, and every queued audit event is written.
    pub async fn start(
        listener: tokio::net::TcpListener,
        mut settings: Settings,
        store: Store,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<Self> {
        let c = settings.config.clone();
        let trusted_proxies = settings.trusted_proxies();
        let cors = settings.cors();
        // Read here unless the caller did (`Settings::prepare_upstream`).
        let upstream = match settings.upstream.clone() {
            Some(upstream) => upstream,
            None => settings
                .prepare_upstream(&|name| std::env::var(name).ok())
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .clone(),
        };
        let upstream_tls = UpstreamTls::new(ClientConfig::clone(&upstream.tls));
        let mut forward_config = ForwardConfig::default().upstream_tls(upstream_tls.clone());
        forward_config.pool_idle_timeout = Duration::from_secs_f64(c.api_gateway.pool_idle_timeout);
        if let Some(rules) = &upstream.egress_proxy {
            forward_config = forward_config.egress_proxy(Arc::clone(rules));
            tracing::info!(
                "https:// backends connect through the proxy of HTTPS_PROXY / ALL_PROXY (except NO_PROXY hosts and loopback)"
            );
        }
        if !c.api_gateway.async_audit {
            tracing::warn!(
                "api_gateway.async_audit: false is accepted, but audit is always asynchronous"
            );
        }
        let (sink, spool) = audit_sink(&c.audit, &store).await;
        match &sink {
            ServerSink::Spooled(spooled) => keep_usage_beside(spooled.path(), &store).await,
            ServerSink::Store(_) => tracing::debug!(
                "no audit spool: key usage counts still unwritten at a stop during a database outage are lost"
            ),
        }
        let (audit, audit_worker) = AuditLayer::pair(
            sink,
            LayerAuditConfig::default()
                .capacity(c.audit.queue_capacity)
                .max_batch(c.audit.batch_size)
                .max_delay(Duration::from_millis(c.audit.flush_interval_ms))
                // Without a spool file, a database outage of up to ~40 s loses no audit event
                // (then they are counted); with one, the spool takes a batch at its first failure.
                .max_retries(12)
                .retry_backoff(Duration::from_millis(100), Duration::from_secs(5)),
        );
        let routes = RouteTable::new(settings.routes.clone());
        let mut strip: Vec<http::HeaderName> = c
            .api_gateway
            .strip_headers
            .iter()
            .filter_map(|h| http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
            .collect();
        // The gateway's own admin credential is never the backend's, whatever the list says.
        let admin_header = http::HeaderName::from_static(guard::ADMIN_TOKEN_HEADER);
        if !strip.contains(&admin_header) {
            strip.push(admin_header);
        }
        let gateway = GatewayBuilder::new(store.key_resolver(), routes.clone())
            .audit(audit.clone())
            .strip_headers(strip)
            .max_body_bytes(c.api_gateway.max_body_bytes)
            .forward_config(forward_config)
            .build::<linger::LingeringBody>();
        let audit_stats = audit.stats();
        let spool_unusable = matches!(spool, Spool::Unusable);
        let spool = match spool {
            Spool::Active(stats) => Some(stats),
            Spool::Off | Spool::Unusable => None,
        };
        let state = Arc::new(
            AppState::new(store.clone(), settings, audit_stats.clone())
                .with_spool(spool)
                .with_spool_unusable(spool_unusable),
        );
        drop(audit);

        let api = openapi(state.clone());
        let (spec_json, docs_html) = spec_and_docs(&api);
        let app = Route::new()
            .at(
                "/openapi.json",
                poem::endpoint::make_sync(move |_| {
                    Response::builder()
                        .content_type("application/json; charset=utf-8")
                        .body(spec_json.clone())
                }),
            )
            .at("/docs", docs_page(docs_html.clone()))
            .at("/docs/", docs_page(docs_html))
            .at("/admin/ui", ui::serve_ui)
            .at("/admin/ui/*path", ui::serve_ui)
            .nest("/", api)
            // `/` itself: a route for it would be shadowed by the API nested at `/`.
            .around(|ep, mut req| async move {
                if req.uri().path() == "/"
                    && (req.method() == http::Method::GET || req.method() == http::Method::HEAD)
                {
                    Ok(root().into_response())
                } else if let Some(refused) = control_characters_in_admin_url(&req) {
                    Ok(refused)
                } else {
                    python_booleans(&mut req);
                    ep.call(req).await
                }
            })
            .with(guard::AdminGuard::new(state.clone()))
            .catch_all_error(json_error)
            .around(|ep, req| async move {
                let admin = is_admin_path(req.uri().path());
                let mut res = match ep.call(req).await {
                    Ok(res) => res,
                    Err(err) => err.into_response(),
                };
                // Admin answers hold new secrets (create, rotate), audit records and the
                // configuration: no cache keeps them. The dashboard's files set their own.
                if admin && !res.headers().contains_key(http::header::CACHE_CONTROL) {
                    res.headers_mut().insert(
                        http::header::CACHE_CONTROL,
                        http::HeaderValue::from_static("no-store"),
                    );
                }
                Ok(res)
            })
            .boxed();

        let worker = tokio::spawn(audit_worker.run());
        let (background_stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let background = tokio::spawn(
            store.background(
                BackgroundOptions {
                    retention: (c.audit.retention_days > 0)
                        .then(|| Duration::from_secs(u64::from(c.audit.retention_days) * 86_400)),
                    ..BackgroundOptions::default()
                },
                async move {
                    let _ = stop_rx.wait_for(|stop| *stop).await;
                },
            ),
        );
        let grace = Duration::from_secs(c.app.shutdown_timeout);
        let cut = front::Cut::default();
        let front_config = front::FrontConfig {
            header_read_timeout: Duration::from_secs(c.app.header_read_timeout),
            grace,
            cut: cut.clone(),
            trusted_proxies,
            forwarded_header: c.app.forwarded_header,
            cors,
            cors_admin_api: c.app.cors_admin_api,
            max_body_bytes: c.api_gateway.max_body_bytes,
            audit: audit_stats,
        };
        let server = tokio::spawn(front::serve(
            listener,
            gateway,
            Arc::new(app),
            shutdown,
            front_config,
        ));
        Ok(Self {
            state,
            routes,
            upstream_tls,
            server,
            audit_worker: worker,
            background,
            background_stop,
            cut,
        })
    }

    /// Apply a reloaded configuration: routes, real keys, timeouts, the admin token and the TLS
    /// settings of `https://` backends (for new connections).
    /// Settings read only at start (listen address, database, audit queue, …) keep their running
    /// values, and the ones that changed in the file are named in a warning.
    pub fn reload(&self, mut new: Settings) {
        let old = self.state.settings();
        // The `routes.yaml` found beside the config at the last load is gone (moved away, or
        // being replaced): its routes would silently vanish. Kept, as for a broken file; an
        // empty file or `api_gateway.routes_file: ""` drops them on purpose.
        // Decided on what the two loads saw, not on the file now (it may be back already).
        if new.config.api_gateway.routes_file.is_none()
            && old.config.api_gateway.routes_file.is_none()
            && new.routes_path.is_none()
            && let Some(gone) = old.routes_path.as_deref()
        {
            tracing::error!(
                file = %gone.display(),
                "configuration reload refused, keeping the running configuration: the routes file in use is gone (to drop its routes, leave it empty or set api_gateway.routes_file: \"\")"
            );
            return;
        }
        let pending = keep_restart_only(&old.config, &mut new.config);
        if new.upstream.is_none()
            && let Err(e) = new.prepare_upstream(&|name| std::env::var(name).ok())
        {
            tracing::error!("configuration reload failed, keeping the running configuration: {e}");
            return;
        }
        for warning in &new.warnings {
            tracing::warn!("{warning}");
        }
        if !pending.is_empty() {
            tracing::warn!(
                settings = pending.join(", "),
                "changed in the file, but read only at start: the running values stay (and /admin/config shows them) until a restart (SIGHUP does reopen logging.file)"
            );
        }
        self.routes.replace(new.routes.clone());
        // Files re-read by the load (a rotated certificate): replaced only when something changed,
        // as replacing drops the `https://` connection pools (logrotate sends SIGHUP daily).
        if let (Some(fresh), Some(running)) = (&new.upstream, &old.upstream)
            && fresh.tls_fingerprint != running.tls_fingerprint
        {
            self.upstream_tls.replace(ClientConfig::clone(&fresh.tls));
            tracing::info!(
                "api_gateway.tls changed: new https:// connections use the new settings"
            );
        }
        self.state.replace_settings(new);
        tracing::info!(routes = self.routes.len(), "configuration reloaded");
    }

    /// A handle that ends the shutdown's grace period early (see [`front::Cut`]).
    pub fn cut(&self) -> front::Cut {
        self.cut.clone()
    }

    /// Wait for the server to stop (after the shutdown future resolved), then flush audit.
    pub async fn wait(self) -> std::io::Result<()> {
        let served = self.server.await.map_err(std::io::Error::other)?;
        // The app (and with it every audit sender) is gone once the server returns; the worker
        // drains what is queued and stops.
        match tokio::time::timeout(Duration::from_secs(30), self.audit_worker).await {
            Ok(_) => {}
            Err(_) => tracing::error!("audit worker did not finish within 30 s"),
        }
        let _ = self.background_stop.send(true);
        // A usage flush under way and the final one (each bounded by the limit; a key poll or
        // purge under way is dropped at once), then the counts saved to the usage file if the
        // final one failed.
        let limit = self.state.store.usage_flush_limit() * 2 + Duration::from_secs(2);
        if tokio::time::timeout(limit, self.background).await.is_err() {
            tracing::error!("the store's background task did not finish within {limit:?}");
        }
        served
    }
}

/// `/admin` or anything below `/admin/` (the dashboard's files included).
fn is_admin_path(path: &str) -> bool {
    path.strip_prefix("/admin")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// 400 for an admin request whose path or query, percent-decoded, holds a control character
/// (`/admin/logs/a%00b`, `?model=a%00b`): no filter, id or owner can hold one (the API refuses
/// them in what it stores), and PostgreSQL refuses a NUL in text, which answered 503
/// `store_unavailable` and set `/health`'s `last_error` as if the database were down.
fn control_characters_in_admin_url(req: &poem::Request) -> Option<Response> {
    let path = req.uri().path();
    if !is_admin_path(path) {
        return None;
    }
    let has_control = |s: &str| {
        percent_decode_str(s)
            .decode_utf8_lossy()
            .chars()
            .any(char::is_control)
    };
    if !has_control(path) && !req.uri().query().is_some_and(has_control) {
        return None;
    }
    Some(
        Response::builder()
            .status(http::StatusCode::BAD_REQUEST)
            .content_type("application/json; charset=utf-8")
            .body(
                fastgate_layer::error::error_body(
                    "control characters are not accepted in an admin path or query parameter",
                    "bad_request",
                )
                .to_vec(),
            ),
    )
}

/// The admin API's boolean query parameters.
const BOOLEAN_PARAMS: [&str; 7] = [
    "active",
    "expired",
    "is_active",
    "is_stream",
    "include_headers",
    "include_body",
    "bom",
];

/// M-FastGate's FastAPI read a boolean query parameter as pydantic does (`True`, `1`, `yes`,
/// `on`, `t`, `y`, and their negatives, in any case), and Python's `requests` sends
/// `params={"is_active": True}` as `is_active=True`: such values are rewritten to `true` /
/// `false` before the API (which reads only those) sees them. Other values are left for the
/// API to refuse.
fn python_booleans(req: &mut poem::Request) {
    let Some(query) = req.uri().query() else {
        return;
    };
    let mut changed = false;
    let rewritten: Vec<String> = query
        .split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            // A client may percent-encode either side (`is%5Factive=%46alse`).
            let name = percent_decode_str(name).decode_utf8_lossy();
            if !BOOLEAN_PARAMS.contains(&&*name) {
                return pair.to_owned();
            }
            let value = percent_decode_str(value).decode_utf8_lossy();
            let canonical = match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "y" | "on" | "t" => "true",
                "false" | "0" | "no" | "n" | "off" | "f" => "false",
                _ => return pair.to_owned(),
            };
            let out = format!("{name}={canonical}");
            changed |= out != pair;
            out
        })
        .collect();
    if !changed {
        return;
    }
    let path_and_query = format!("{}?{}", req.uri().path(), rewritten.join("&"));
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// Give `new` the running values of the settings read only at start, so that what the
/// server reports (`/admin/config`) is what it does; returns the names of those that differ.
fn keep_restart_only(running: &config::Config, new: &mut config::Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($name:literal => $($field:ident).+;)*) => {$(
            if running.$($field).+ != new.$($field).+ {
                changed.push($name);
                new.$($field).+ = running.$($field).+.clone();
            }
        )*};
    }
    keep! {
        "app.host" => app.host;
        "app.port" => app.port;
        "app.header_read_timeout" => app.header_read_timeout;
        "app.shutdown_timeout" => app.shutdown_timeout;
        "app.shutdown_accept_grace" => app.shutdown_accept_grace;
        "app.trusted_proxies" => app.trusted_proxies;
        "app.forwarded_header" => app.forwarded_header;
        "app.cors_allow_origins" => app.cors_allow_origins;
        "app.cors_admin_api" => app.cors_admin_api;
        "app.debug" => app.debug;
        "security.key_prefix" => security.key_prefix;
        "security.key_cache_ttl_seconds" => security.key_cache_ttl_seconds;
        "database.url" => database.url;
        "database.echo" => database.echo;
        "database.max_connections" => database.max_connections;
        "api_gateway.strip_headers" => api_gateway.strip_headers;
        "api_gateway.max_body_bytes" => api_gateway.max_body_bytes;
        "api_gateway.pool_idle_timeout" => api_gateway.pool_idle_timeout;
        "api_gateway.trust_env" => api_gateway.trust_env;
        "audit.queue_capacity" => audit.queue_capacity;
        "audit.batch_size" => audit.batch_size;
        "audit.flush_interval_ms" => audit.flush_interval_ms;
        "audit.retention_days" => audit.retention_days;
        "audit.spool_file" => audit.spool_file;
        "logging" => logging;
    }
    changed
}

/// `GET /`: what this server is and where its parts are.
fn root() -> poem::web::Json<serde_json::Value> {
    poem::web::Json(serde_json::json!({
        "name": "FastGate",
        "version": env!("CARGO_PKG_VERSION"),
        "docs": "/docs",
        "openapi": "/openapi.json",
        "health": "/health",
        "dashboard": "/admin/ui/",
    }))
}

/// Every error poem produces itself (unknown path, unparsable parameter or body) as OpenAI JSON.
async fn json_error(err: poem::Error) -> Response {
    let status = err.status();
    let code = match status.as_u16() {
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "request_too_large",
        415 => "unsupported_media_type",
        400..=499 => "bad_request",
        _ => "internal_error",
    };
    let message = if status.is_server_error() {
        "internal error".to_owned()
    } else {
        err.to_string()
    };
    Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(fastgate_layer::error::error_body(&message, code).to_vec())
}
