//! Configuration: M-FastGate's YAML file (same keys), `FASTGATE__SECTION__KEY` environment
//! overrides, an optional routes file, and validation that names the offending key.
//!
//! Loading order: the YAML file, then every `FASTGATE__…` environment variable on top, then
//! validation. Unknown keys are rejected. Secrets (`security.admin_token`,
//! `api_gateway.real_api_key`, route keys) are held as [`Secret`] and serialize as `******`, so
//! the effective config can be shown (`GET /admin/config`) without leaking them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fastgate_layer::{Backend, RouteConfig, Secret};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_yaml_ng::Value;

/// Prefix of environment variables that override config keys (`FASTGATE__API_GATEWAY__TIMEOUT`).
pub const ENV_PREFIX: &str = "FASTGATE__";

/// The mask printed instead of a secret.
pub const MASK: &str = "******";

/// A configuration problem, naming the key (and the file line, for YAML errors).
#[derive(Debug, thiserror::Error)]
#[error("{}: {key}: {message}", location(.file, *.line))]
pub struct ConfigError {
    /// File the problem was found in.
    pub file: PathBuf,
    /// Line in that file, when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `api_gateway.backend_url`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn location(file: &Path, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{}:{line}", file.display()),
        None => file.display().to_string(),
    }
}

impl ConfigError {
    fn new(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }
}

// === the file format ===

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `app`: name, listen address, shutdown.
    #[serde(default)]
    pub app: AppConfig,
    /// `database`: where keys and audit records live.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// `security`: admin token and key policy.
    pub security: SecurityConfig,
    /// `api_gateway`: the unified endpoint and its backend.
    pub api_gateway: ApiGatewayConfig,
    /// `audit`: queue, batching and retention.
    #[serde(default)]
    pub audit: AuditConfig,
    /// `logging`: level, format and an optional file.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// M-FastGate's `rate_limiting` section: accepted, not enforced (a warning says so when
    /// `enabled`). Per-key limits are planned.
    #[serde(default)]
    pub rate_limiting: Option<RateLimitingConfig>,
    /// M-FastGate's `cloud_proxy` section (a later M-FastGate feature): accepted and ignored
    /// with a warning.
    #[serde(default, skip_serializing)]
    pub cloud_proxy: Option<CloudProxyConfig>,
    /// M-FastGate's `model_routing` section (a later M-FastGate feature): accepted and ignored
    /// with a warning. Its `app_key` is a [`Secret`]; the section is never serialized.
    #[serde(default, skip_serializing)]
    pub model_routing: Option<ModelRoutingConfig>,
}

/// M-FastGate's `cloud_proxy` section (ignored).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudProxyConfig {
    /// Proxy host.
    pub host: Option<String>,
    /// Proxy port.
    pub port: Option<u16>,
    /// Proxy path.
    pub base_path: Option<String>,
}

/// M-FastGate's `model_routing` section (ignored).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelRoutingConfig {
    /// Whether M-FastGate routed by model.
    pub enabled: Option<bool>,
    /// M-FastGate's application key for the routing service.
    #[serde(deserialize_with = "de_opt_secret")]
    pub app_key: Option<Secret>,
    /// Caller name sent to the routing service.
    pub system_source: Option<String>,
    /// M-FastGate's model routes file.
    pub config_path: Option<String>,
}

/// M-FastGate's `rate_limiting` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitingConfig {
    /// Whether M-FastGate limited requests.
    pub enabled: bool,
    /// M-FastGate's limit per key and minute.
    pub default_requests_per_minute: Option<u32>,
}

/// `app` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    /// Display name (kept from M-FastGate).
    pub name: String,
    /// Informational version string (kept from M-FastGate; the binary reports its own).
    pub version: Option<String>,
    /// Verbose logging when `logging.level` is not set.
    pub debug: bool,
    /// Address to listen on.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// Seconds in-flight requests and streams get to finish on SIGTERM/SIGINT.
    pub shutdown_timeout: u64,
    /// Seconds the gateway keeps accepting and serving after the first SIGTERM/SIGINT, with
    /// `/health` answering 503 `draining`, before the shutdown (and its `shutdown_timeout`)
    /// begins: time for a load balancer to take the instance out of rotation. 0 (the default):
    /// the listener closes at once.
    pub shutdown_accept_grace: u64,
    /// Seconds a connection may take to send a request's headers, counted from when it starts
    /// waiting for the request (so also how long an idle HTTP/1.1 keep-alive connection is kept);
    /// any connection, HTTP/2 included, with no request in flight for 1–1.5 × this long is shut
    /// down gracefully.
    pub header_read_timeout: u64,
    /// Reverse proxies / load balancers in front of FastGate (IP addresses or CIDR ranges). A
    /// request from one of them is attributed to the client named in `forwarded_header` (the
    /// right-most address that is not itself a trusted proxy): in the audit log and for the admin
    /// lock-out. Empty (the default): the socket's peer address, headers ignored.
    pub trusted_proxies: Vec<String>,
    /// The header the trusted proxies name the client in; the other one is ignored.
    pub forwarded_header: ForwardedHeader,
    /// Origins whose browser scripts may call the gateway (`/proxy/...` and `/health`) from
    /// another origin (CORS): `["*"]` (the default, as M-FastGate's `allow_origins=["*"]`) for
    /// any, a list of origins (`https://app.example.com`), or `[]` to answer no CORS request.
    pub cors_allow_origins: Vec<String>,
    /// Let those origins' scripts call the admin API, `/docs` and `/openapi.json` too (default
    /// `false`: a page that guessed the admin token could otherwise manage keys through a
    /// visitor's browser).
    pub cors_admin_api: bool,
}

/// The header trusted proxies name the client in (`app.forwarded_header`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `x-forwarded-for`: `X-Forwarded-For: client, proxy1, …` (nginx's
    /// `$proxy_add_x_forwarded_for`, most load balancers).
    #[default]
    XForwardedFor,
    /// `forwarded`: RFC 7239 `Forwarded: for=client, for=proxy1` (its `for=` parameters).
    Forwarded,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            name: "FastGate".into(),
            version: None,
            debug: false,
            host: "0.0.0.0".into(),
            port: 8514,
            shutdown_timeout: 30,
            shutdown_accept_grace: 0,
            header_read_timeout: 60,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
            cors_allow_origins: vec!["*".into()],
            cors_admin_api: false,
        }
    }
}

/// `database` section.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite:///./fastgate.db` (relative), `sqlite:////abs/path.db`, or `postgresql://…`.
    #[serde(serialize_with = "serialize_db_url")]
    pub url: String,
    /// Log every SQL statement at debug level (kept from M-FastGate).
    pub echo: bool,
    /// Connection pool size.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite:///./fastgate.db".into(),
            echo: false,
            max_connections: 10,
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url_password(&self.url))
            .field("echo", &self.echo)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// `security` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// Token for the admin API and dashboard. Pass it as `FASTGATE__SECURITY__ADMIN_TOKEN` in production.
    #[serde(deserialize_with = "de_secret", serialize_with = "ser_secret")]
    pub admin_token: Secret,
    /// Prefix of generated gateway keys.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Expiry of new keys when the request does not say.
    #[serde(default = "default_expiry_days")]
    pub default_expiry_days: u32,
    /// How long a resolved key is trusted without asking the database again.
    #[serde(default = "default_key_cache_ttl")]
    pub key_cache_ttl_seconds: u64,
    /// Failed admin logins allowed per client address per minute before answering 429.
    #[serde(default = "default_admin_max_failures")]
    pub admin_max_failures_per_minute: u32,
}

fn default_key_prefix() -> String {
    "fg_".into()
}
fn default_expiry_days() -> u32 {
    365
}
fn default_key_cache_ttl() -> u64 {
    30
}
fn default_admin_max_failures() -> u32 {
    10
}

/// `api_gateway` section: the unified endpoint `/proxy` + `backend_path`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiGatewayConfig {
    /// Backend base URL, e.g. `http://127.0.0.1:9000`.
    #[serde(serialize_with = "serialize_db_url")]
    pub backend_url: String,
    /// Backend path; the gateway serves it at `/proxy` + this path.
    pub backend_path: String,
    /// The real upstream key injected into every forwarded request.
    #[serde(
        default,
        deserialize_with = "de_opt_secret",
        serialize_with = "ser_opt_secret"
    )]
    pub real_api_key: Option<Secret>,
    /// Header carrying the real key (`authorization` sends `Bearer <key>`).
    #[serde(default = "default_key_header")]
    pub key_header: String,
    /// Request headers removed before forwarding (hop-by-hop headers are always removed).
    #[serde(default = "default_strip_headers")]
    pub strip_headers: Vec<String>,
    /// Kept from M-FastGate. Audit is always asynchronous; `false` is accepted with a warning.
    #[serde(default = "yes")]
    pub async_audit: bool,
    /// Seconds to wait for the backend's response headers.
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Seconds to wait for a connection to the backend.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: u64,
    /// Longest silence, in seconds, between two chunks of a response (streams included).
    #[serde(default = "default_timeout")]
    pub idle_timeout: u64,
    /// Seconds an idle pooled connection to a backend is kept for the next request. Keep it
    /// below the backend's own keep-alive timeout (uvicorn, and so vLLM, and Node close idle
    /// connections after 5 s): a request sent on a connection the backend is closing fails
    /// with 502, and FastGate never resends a request. Fractions allowed; 0.1 to 3600.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: f64,
    /// Largest request body accepted, in bytes (larger → 413).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Permission a key needs for the unified endpoint.
    #[serde(default = "default_permission")]
    pub permission: String,
    /// Extra routes file; defaults to `routes.yaml` beside the config file when that exists.
    #[serde(default)]
    pub routes_file: Option<String>,
    /// Kept from M-FastGate. FastGate never retries a request (a retried chat completion is
    /// paid twice); a value above 0 is accepted with a warning.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Kept from M-FastGate: JSON fields to remove from request bodies. Only an empty list is
    /// accepted (FastGate does not rewrite bodies); a non-empty one stops the start rather than
    /// forward fields the operator wanted removed.
    #[serde(default)]
    pub strip_body_fields: Vec<String>,
    /// Kept from M-FastGate. FastGate never records request headers or bodies; `true` is
    /// accepted with a warning.
    #[serde(default)]
    pub audit_full_request: Option<bool>,
    /// Kept from M-FastGate. FastGate never records response headers or bodies; `true` is
    /// accepted with a warning.
    #[serde(default)]
    pub audit_full_response: Option<bool>,
    /// TLS for `https://` backends (every route): extra trusted CAs, a client certificate.
    #[serde(default)]
    pub tls: UpstreamTlsConfig,
    /// Send `https://` backends' connections through the proxy of `HTTPS_PROXY` / `ALL_PROXY`
    /// (except `NO_PROXY` hosts and loopback), as M-FastGate's HTTP client did. Read at start.
    #[serde(default = "yes")]
    pub trust_env: bool,
}

/// `api_gateway.tls`: how FastGate checks `https://` backends and what it presents to them.
/// Relative paths are relative to the config file's directory. The files are read at start and
/// again on SIGHUP (new connections use the new settings).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// Trust Mozilla's roots (public CAs); `false`: only `ca_file`.
    #[serde(default = "yes")]
    pub public_roots: bool,
    /// PEM file of CA certificates trusted in addition to Mozilla's roots (a private CA).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM certificate chain presented to backends that ask for one (mutual TLS).
    #[serde(default)]
    pub client_cert_file: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<String>,
}

impl Default for UpstreamTlsConfig {
    fn default() -> Self {
        Self {
            public_roots: true,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

impl fmt::Debug for ApiGatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiGatewayConfig")
            .field("backend_url", &redact_url_password(&self.backend_url))
            .field("backend_path", &self.backend_path)
            .field("real_api_key", &self.real_api_key)
            .field("strip_headers", &self.strip_headers)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

fn yes() -> bool {
    true
}
fn default_key_header() -> String {
    "authorization".into()
}
fn default_strip_headers() -> Vec<String> {
    [
        "host",
        "x-api-key",
        "authorization",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
    ]
    .map(String::from)
    .to_vec()
}
fn default_timeout() -> u64 {
    60
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_pool_idle_timeout() -> f64 {
    4.0
}
fn default_max_body() -> u64 {
    10 * 1024 * 1024
}
fn default_permission() -> String {
    "chat".into()
}

/// `audit.spool_file` unless the config says otherwise.
pub const DEFAULT_SPOOL_FILE: &str = "fastgate-audit.spool";

/// `audit` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Days audit records are kept; 0 keeps them forever.
    pub retention_days: u32,
    /// Events queued in memory before new ones are dropped (and counted).
    pub queue_capacity: usize,
    /// Largest batch written in one transaction.
    pub batch_size: usize,
    /// Longest time, in milliseconds, an event waits in memory before its batch is written.
    pub flush_interval_ms: u64,
    /// A local file that keeps audit batches the database refuses (an outage) until it takes
    /// them again; relative paths are relative to the working directory. `""`: none (batches
    /// are retried for about 40 s, then lost and counted).
    pub spool_file: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: 90,
            queue_capacity: 65_536,
            batch_size: 512,
            flush_interval_ms: 200,
            spool_file: Some(DEFAULT_SPOOL_FILE.to_owned()),
        }
    }
}

/// `logging` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `tracing` filter, e.g. `info` or `fastgate=debug,info`. `RUST_LOG` wins when set.
    pub level: Option<String>,
    /// `text` or `json`.
    pub format: LogFormat,
    /// Also append log lines to this file (M-FastGate's `logs/fastgate.log`) when serving; its
    /// directory is created. Relative paths are relative to the working directory, as in
    /// M-FastGate. SIGHUP reopens it (logrotate). `""` means none.
    pub file: Option<String>,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: None,
            format: LogFormat::Text,
            file: None,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The routes file: extra endpoints under `/proxy/`.
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// The routes.
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
}

/// One extra route.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    /// Name for logs; defaults to the path.
    #[serde(default)]
    pub name: Option<String>,
    /// Path clients call; must start with `/proxy/`.
    pub path: String,
    /// Backend base URL.
    #[serde(serialize_with = "serialize_db_url")]
    pub backend_url: String,
    /// Backend path.
    pub backend_path: String,
    /// Real key for this backend; defaults to `api_gateway.real_api_key`. `""`: none (the
    /// route's requests go without a credential, whatever `api_gateway.real_api_key` is).
    #[serde(
        default,
        deserialize_with = "de_opt_secret_keep_empty",
        serialize_with = "ser_opt_secret"
    )]
    pub real_api_key: Option<Secret>,
    /// Read the real key from this environment variable instead.
    #[serde(default)]
    pub real_api_key_env: Option<String>,
    /// Header carrying the key; defaults to `api_gateway.key_header`.
    #[serde(default)]
    pub key_header: Option<String>,
    /// Response-header timeout in seconds; defaults to `api_gateway.timeout`.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Permission a key needs; defaults to `chat`.
    #[serde(default)]
    pub permission: Option<String>,
}

// === secrets in serde ===

/// Why a secret was refused when it is not text; never its value.
const SECRET_NOT_TEXT: &str = "expected a string (value not shown: a secret)";

/// A secret exactly as the file spells it. Read with `deserialize_string`, for which
/// serde_yaml_ng hands over a plain scalar's own text: an unquoted `0x1F`, `+123`, `1.50` or
/// `True` stays that text instead of becoming the number or boolean YAML would read (`31`,
/// `123`, `1.5`, `true`). A [`Value`] no longer has that text: [`parse_config`] puts the file's
/// secrets back into it as strings ([`file_secrets`]) before the environment's overrides.
struct SecretText(String);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_owned())
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
                Ok(v)
            }
        }
        // Any error is replaced: serde's own would quote a number or boolean (from a `Value`).
        d.deserialize_string(Text)
            .map(Self)
            .map_err(|_| serde::de::Error::custom(SECRET_NOT_TEXT))
    }
}

fn de_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    // An empty value, `~` and `null` are YAML's null: no secret at all, not the text `null`.
    Option::<SecretText>::deserialize(d)?
        .map(|t| Secret::new(t.0))
        .ok_or_else(|| {
            serde::de::Error::custom(
                "no value (YAML reads an empty value, `~` and `null` as none): set it, in quotes",
            )
        })
}

fn de_opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(de_opt_secret_keep_empty(d)?.filter(|s| !s.expose().is_empty()))
}

/// As [`de_opt_secret`], but `""` stays `Some("")` (a route's explicit "no key").
fn de_opt_secret_keep_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<SecretText>::deserialize(d)?.map(|t| Secret::new(t.0)))
}

/// The secrets of the main config file as written, by key path (see [`SecretText`]). Empty when
/// the file cannot be read this way (a secret that is a list or a mapping, a section that is
/// not a mapping): the strict deserialization then refuses it, without the value.
fn file_secrets(text: &str) -> Vec<(Vec<String>, String)> {
    #[derive(Deserialize)]
    struct File {
        security: Option<Security>,
        api_gateway: Option<Gateway>,
        model_routing: Option<ModelRouting>,
    }
    #[derive(Deserialize)]
    struct Security {
        admin_token: Option<SecretText>,
    }
    #[derive(Deserialize)]
    struct Gateway {
        real_api_key: Option<SecretText>,
    }
    #[derive(Deserialize)]
    struct ModelRouting {
        app_key: Option<SecretText>,
    }
    let Ok(Some(file)) = serde_yaml_ng::from_str::<Option<File>>(text) else {
        return Vec::new();
    };
    let key = |section: &str, name: &str, t: Option<SecretText>| {
        t.map(|t| (vec![section.to_owned(), name.to_owned()], t.0))
    };
    [
        file.security
            .and_then(|s| key("security", "admin_token", s.admin_token)),
        file.api_gateway
            .and_then(|s| key("api_gateway", "real_api_key", s.real_api_key)),
        file.model_routing
            .and_then(|s| key("model_routing", "app_key", s.app_key)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn ser_secret<S: Serializer>(_: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(MASK)
}

fn ser_opt_secret<S: Serializer>(v: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str(MASK),
        None => s.serialize_none(),
    }
}

fn serialize_db_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url_password(url))
}

/// Replace the password of a URL (`user:password@` or a `password=` parameter) with the mask.
pub fn redact_url_password(url: &str) -> String {
    fastgate_store::redact_url(url)
}

// === loading ===

/// The TLS settings and egress-proxy rules for the backends, read by
/// [`Settings::prepare_upstream`].
#[derive(Clone)]
pub struct Upstream {
    /// The TLS client settings built from `api_gateway.tls`.
    pub tls: Arc<rustls::ClientConfig>,
    /// SHA-256 over `api_gateway.tls` and the bytes of its files: a reload replaces the TLS
    /// settings (and drops the `https://` connection pools) only when it changed.
    pub tls_fingerprint: [u8; 32],
    /// The egress proxy rules for `https://` backends, or `None` for direct connections.
    pub egress_proxy: Option<Arc<fastgate_layer::forward::Matcher>>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("egress_proxy", &self.egress_proxy.is_some())
            .finish_non_exhaustive()
    }
}

/// A loaded, validated configuration plus everything derived from it.
#[derive(Clone)]
pub struct Settings {
    /// The parsed config (secrets masked when serialized).
    pub config: Config,
    /// The file it came from.
    pub path: PathBuf,
    /// Routes by the exact path clients call.
    pub routes: HashMap<String, RouteConfig>,
    /// The routes file that was loaded, if any.
    pub routes_path: Option<PathBuf>,
    /// Problems that did not stop the load (logged at start and on reload).
    pub warnings: Vec<String>,
    /// What [`prepare_upstream`](Self::prepare_upstream) read; `None` until then.
    pub upstream: Option<Upstream>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("path", &self.path)
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Load `path`, apply the process environment's overrides and validate.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        // `std::env::vars` would panic on a variable that is not UTF-8: one of ours is an error,
        // any other is none of the config's business.
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            let Ok(k) = k.into_string() else { continue };
            match v.into_string() {
                Ok(v) => env.push((k, v)),
                Err(_) if env_key(&k).is_some() => {
                    return Err(ConfigError::new(
                        path,
                        &k,
                        "the value is not valid UTF-8 (value not shown)",
                    ));
                }
                Err(_) => {}
            }
        }
        Self::load_with_env(path, env)
    }

    /// Load `path` with the given environment (tests pass their own).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "(file)", format!("cannot read: {e}")))?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        let config = parse_config(path, &text, env.clone()).map_err(|mut e| {
            if (e.key == "security.admin_token" || e.key == "security")
                && let Some(var) = mfastgate_variable(&env, "ADMIN_TOKEN")
            {
                e.message.push_str(&format!(
                    " ({var} is set: M-FastGate read it for a key its YAML left out; \
                     FastGate reads {ENV_PREFIX}SECURITY__ADMIN_TOKEN)"
                ));
            }
            e
        })?;
        let unused_real_key = config.api_gateway.real_api_key.is_none()
            && mfastgate_variable(&env, "REAL_API_KEY").is_some();
        // A value refused by the checks after parsing names its variable when one set it: the
        // file is not where to look then.
        let mut settings = Self::from_config(path, config).map_err(|mut e| {
            let set_by = env.iter().map(|(k, _)| k).find(|k| {
                env_key(k).is_some_and(|rest| {
                    covers(
                        &rest
                            .split("__")
                            .collect::<Vec<_>>()
                            .join(".")
                            .to_ascii_lowercase(),
                        &e.key,
                    )
                })
            });
            if let Some(var) = set_by {
                // "(set here or by FASTGATE__…)" becomes what did set it.
                let hint = format!(
                    " (set here or by {ENV_PREFIX}{})",
                    e.key.replace('.', "__").to_ascii_uppercase()
                );
                let message = e.message.strip_suffix(&hint).unwrap_or(&e.message);
                e.message = format!("{message} (set by {var})");
            }
            e
        })?;
        if unused_real_key && let Some(var) = mfastgate_variable(&env, "REAL_API_KEY") {
            settings.warnings.push(format!(
                "{var} is set but not read: M-FastGate read it for api_gateway.real_api_key \
                 when its YAML left that out; FastGate reads \
                 {ENV_PREFIX}API_GATEWAY__REAL_API_KEY (requests now go to the backend \
                 without a real key)"
            ));
        }
        Ok(settings)
    }

    /// Settings for describing the API only (`fastgate openapi` without a readable config):
    /// the spec does not depend on them.
    pub fn for_spec() -> Result<Self, ConfigError> {
        const MINIMAL: &str = "security:\n  admin_token: \"spec-only-not-a-token-0000\"\n\
                               api_gateway:\n  backend_url: \"http://127.0.0.1:9\"\n  backend_path: \"/v1/chat/completions\"\n  routes_file: \"\"\n";
        let path = Path::new("(built-in)");
        Self::from_config(path, parse_config(path, MINIMAL, Vec::new())?)
    }

    /// Validate a parsed config and derive the routes. The upstream TLS files and the proxy
    /// variables are not read here: see [`prepare_upstream`](Self::prepare_upstream).
    pub fn from_config(path: &Path, mut config: Config) -> Result<Self, ConfigError> {
        // `""` switches a file set in the YAML off (e.g. `FASTGATE__LOGGING__FILE=`).
        if config
            .logging
            .file
            .as_deref()
            .is_some_and(|f| f.trim().is_empty())
        {
            config.logging.file = None;
        }
        validate(path, &config)?;
        let mut routes_path = routes_file_path(path, &config);
        let explicit = config
            .api_gateway
            .routes_file
            .as_deref()
            .is_some_and(|p| !p.is_empty());
        let mut warnings = Vec::new();
        let extra = match &routes_path {
            Some(p) => match load_routes_file(p) {
                Ok(extra) => extra,
                // A `routes.yaml` found beside the config may be M-FastGate's own file, in
                // another format: ignore it (loudly) rather than refuse to start. One with a
                // top-level `routes:` is FastGate's: a mistake in it stops the start (and a
                // reload), as in the main file.
                Err(e) if !explicit && !has_routes_key(p) => {
                    warnings.push(format!(
                        "ignoring {}: not in FastGate's routes format ({e}); set api_gateway.routes_file to use it",
                        p.display()
                    ));
                    routes_path = None;
                    RoutesFile::default()
                }
                Err(e) => return Err(e),
            },
            None => RoutesFile::default(),
        };
        let routes = build_routes(path, routes_path.as_deref(), &config, &extra)?;
        let mut with_userinfo: Vec<&str> = routes
            .iter()
            .filter(|(_, r)| {
                r.backend
                    .base_url
                    .authority()
                    .is_some_and(|a| a.as_str().contains('@'))
            })
            .map(|(p, _)| p.as_str())
            .collect();
        with_userinfo.sort_unstable();
        if !with_userinfo.is_empty() {
            warnings.push(format!(
                "the backend URL of {} holds a user name or password: it is not sent (FastGate \
                 authenticates to the backend with real_api_key only); remove it from the URL",
                with_userinfo.join(", ")
            ));
        }
        if let Some(why) = weak_admin_token(config.security.admin_token.expose()) {
            warnings.push(format!(
                "security.admin_token {why}: anyone who knows or guesses it can manage keys and \
                 read the audit log; set a long random one (e.g. openssl rand -hex 32)"
            ));
        }
        if crate::api::permission(&config.api_gateway.permission).is_err() {
            warnings.push(format!(
                "api_gateway.permission: {}; keys created without permissions (which get it) are \
                 refused by the admin API and the CLI until it does",
                crate::api::PERMISSION_RULE.replace("permissions must", "it should")
            ));
        }
        let unified = format!("/proxy{}", config.api_gateway.backend_path);
        warnings.extend(prefix_route_warnings(&routes, &unified));
        warnings.extend(mfastgate_warnings(&config));
        if !config.api_gateway.async_audit {
            warnings.push(
                "api_gateway.async_audit: false has no effect: audit records are always written \
                 in the background (none is dropped while the queue has room; see audit.queue_capacity)"
                    .to_owned(),
            );
        }
        Ok(Self {
            config,
            path: path.to_path_buf(),
            routes,
            routes_path,
            warnings,
            upstream: None,
        })
    }

    /// Read what reaching the backends needs besides the config file: the `api_gateway.tls`
    /// files and, with `api_gateway.trust_env`, the proxy variables (looked up with `env`).
    /// Serving and `check-config` do this; the other commands (`fastgate keys …`) never touch
    /// them. Warnings are added to [`warnings`](Self::warnings).
    pub fn prepare_upstream(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<&Upstream, ConfigError> {
        let path = self.path.as_path();
        let (tls, fingerprint, tls_warnings) =
            crate::tls::client_config(path, &self.config.api_gateway.tls)
                .map_err(|(key, message)| ConfigError::new(path, key, message))?;
        let (egress_proxy, egress_warnings) =
            crate::egress::rules(self.config.api_gateway.trust_env, env, &self.routes)
                .map_err(|(key, message)| ConfigError::new(path, key, message))?;
        self.warnings.extend(tls_warnings);
        self.warnings.extend(egress_warnings);
        Ok(self.upstream.insert(Upstream {
            tls: Arc::new(tls),
            tls_fingerprint: fingerprint,
            egress_proxy: egress_proxy.map(Arc::new),
        }))
    }

    /// The CORS layer of `app.cors_allow_origins` (validated when the config was loaded); `None`
    /// for `[]`. Preflights are answered with the method and headers the browser asks for
    /// (scripts send `Authorization` or `X-API-Key`), cached for 10 minutes; every response
    /// header is exposed (`X-Request-Id`, the backend's rate-limit headers). No cookies are
    /// involved, so credentials are not allowed.
    pub fn cors(&self) -> Option<tower_http::cors::CorsLayer> {
        use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer, ExposeHeaders};
        let origins = &self.config.app.cors_allow_origins;
        if origins.is_empty() {
            return None;
        }
        let allow = if origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(
                origins
                    .iter()
                    .filter_map(|o| http::HeaderValue::from_str(o).ok()),
            )
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods(AllowMethods::mirror_request())
                .allow_headers(AllowHeaders::mirror_request())
                .expose_headers(ExposeHeaders::any())
                .max_age(Duration::from_secs(600)),
        )
    }

    /// `app.trusted_proxies` as ranges (validated when the config was loaded).
    pub fn trusted_proxies(&self) -> Vec<ipnet::IpNet> {
        self.config
            .app
            .trusted_proxies
            .iter()
            .filter_map(|p| parse_trusted_proxy(p))
            .collect()
    }

    /// The address to listen on.
    pub fn listen_addr(&self) -> String {
        let host = &self.config.app.host;
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", self.config.app.port)
        } else {
            format!("{host}:{}", self.config.app.port)
        }
    }

    /// The effective config as JSON, secrets masked.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.config).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = value.as_object_mut() {
            let routes: Vec<serde_json::Value> = self
                .routes
                .iter()
                .map(|(path, r)| {
                    serde_json::json!({
                        "path": path,
                        "name": &*r.name,
                        "permission": &*r.permission,
                        "backend_url": redact_url_password(&r.backend.base_url.to_string()),
                        "backend_path": r.backend.path,
                        "real_api_key": r.backend.api_key.as_ref().map(|_| MASK),
                        "key_header": r.backend.key_header.as_str(),
                        "timeout_seconds": r.backend.response_timeout.as_secs(),
                    })
                })
                .collect();
            obj.insert("routes".into(), serde_json::Value::Array(routes));
        }
        value
    }
}

/// Parse YAML text, apply overrides from `env` and deserialize strictly.
pub fn parse_config(
    path: &Path,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    // First pass straight from the text: syntax errors, unknown keys and wrong types come with a line.
    let direct = serde_yaml_ng::Deserializer::from_str(text);
    if let Err(err) = serde_path_to_error::deserialize::<_, Config>(direct) {
        let overridden = err.path().to_string();
        let line = err.inner().location().map(|l| l.line());
        // A missing key may legitimately come from the environment; check again after overrides.
        let missing = err.inner().to_string().contains("missing field");
        if !missing {
            return Err(ConfigError {
                file: path.to_path_buf(),
                line,
                key: display_path(&overridden),
                message: without_path(&overridden, &strip_location(&err.inner().to_string())),
            });
        }
    }
    // The text passed the first pass (or only missed a key), so what fails here is a value the
    // direct reading took as text and `Value` cannot hold: an unquoted integer beyond 64 bits.
    // serde's message would quote it, and it may be a secret.
    let mut value: Value = serde_yaml_ng::from_str(text).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: e.location().map(|l| l.line()),
        key: "(yaml)".into(),
        message: "an unquoted number too large for 64 bits (value not shown: it may be a \
                  secret): put it in quotes"
            .into(),
    })?;
    if value.is_null() {
        value = Value::Mapping(Default::default());
    }
    // The secrets as written: `Value` read `0x1F` as the number 31.
    for (segments, secret) in file_secrets(text) {
        set_path(&mut value, &segments, Value::String(secret));
    }
    let overrides = env_overrides(path, env)?;
    // A plain value is first taken as the text it is (a secret like `a #b` or `&x` stays
    // intact); where the key wants another type (a number, a boolean) it is read as YAML instead.
    let mut as_yaml = vec![false; overrides.len()];
    loop {
        let mut merged = value.clone();
        for (i, o) in overrides.iter().enumerate() {
            let parsed = match &o.value {
                EnvValue::Yaml(v) => v.clone(),
                EnvValue::Plain(raw) if as_yaml[i] => match serde_yaml_ng::from_str::<Value>(raw) {
                    // YAML's null here came from a comment or an anchor (`#x`, `&x`): the text.
                    Ok(v) if !v.is_null() => v,
                    _ => Value::String(raw.clone()),
                },
                EnvValue::Plain(raw) => Value::String(raw.clone()),
            };
            set_path(&mut merged, &o.segments, parsed);
        }
        match serde_path_to_error::deserialize::<_, Config>(merged) {
            Ok(mut config) => {
                resolve_env_paths(path, &overrides, &mut config)?;
                return Ok(config);
            }
            Err(err) => {
                let key = err.path().to_string();
                let retry = overrides
                    .iter()
                    .position(|o| o.key() == key && matches!(o.value, EnvValue::Plain(_)))
                    .filter(|&i| !as_yaml[i]);
                if let Some(i) = retry {
                    as_yaml[i] = true;
                    continue;
                }
                let message = strip_location(&err.inner().to_string());
                return Err(ConfigError {
                    file: path.to_path_buf(),
                    line: None,
                    key: display_path(&key),
                    message: match setting_var(&overrides, &key) {
                        Some(var) => format!("{message} (set by {var})"),
                        None => message,
                    },
                });
            }
        }
    }
}

/// One `FASTGATE__SECTION__KEY` variable: its name as set, the key path it sets, its value.
struct EnvOverride {
    var: String,
    segments: Vec<String>,
    value: EnvValue,
}

impl EnvOverride {
    fn key(&self) -> String {
        self.segments.join(".")
    }
}

/// An environment value as the config reads it (see [`read_env_value`]).
enum EnvValue {
    /// Taken as the text it is; read as a YAML scalar only where the key wants a number or a
    /// boolean.
    Plain(String),
    /// What YAML reads (null, a quoted string, a list or a mapping), as in the file.
    Yaml(Value),
}

/// How an environment value is read. Unlike the file's, it is text as given (spaces around it
/// kept; `#`, `&`, `*`, `!`, `|`, `>` mean nothing), except for the spellings that mean
/// something else than their text in the file, which mean the same here:
/// - empty (or only spaces): the empty string, as `""` in the file;
/// - `~`, `null`, `Null`, `NULL`: no value (YAML's null);
/// - a value that starts with a quote: one quoted YAML string, `"…"` or `'…'` (docker's
///   `--env-file` keeps the quotes of `KEY="…"`), which is its content: `""` is the empty string;
/// - a value that starts with `[` or `{`: a YAML list or mapping (for a secret: refused).
///
/// The error never holds the value (it may be a secret).
fn read_env_value(raw: &str) -> Result<EnvValue, &'static str> {
    let t = raw.trim_matches([' ', '\t']);
    if t.is_empty() {
        return Ok(EnvValue::Yaml(Value::String(String::new())));
    }
    if matches!(t, "~" | "null" | "Null" | "NULL") {
        return Ok(EnvValue::Yaml(Value::Null));
    }
    if t.starts_with(['"', '\'']) {
        return match serde_yaml_ng::from_str::<Value>(t) {
            Ok(v @ Value::String(_)) if t.len() >= 2 && t.ends_with(&t[..1]) => {
                Ok(EnvValue::Yaml(v))
            }
            _ => Err(
                "starts with a quote but is not one quoted string as YAML reads it (\"…\" or \
                      '…'; value not shown): quote the whole value, or leave the quotes out",
            ),
        };
    }
    if t.starts_with(['[', '{']) {
        return match serde_yaml_ng::from_str::<Value>(t) {
            Ok(v @ (Value::Sequence(_) | Value::Mapping(_))) => Ok(EnvValue::Yaml(v)),
            _ => Err(
                "starts with [ or { but is not a YAML list or mapping (value not shown): \
                      to mean the text, put it in quotes",
            ),
        };
    }
    Ok(EnvValue::Plain(raw.to_owned()))
}

/// The `FASTGATE__…` variables of `env` (the name in any case), by key path. A name with an empty
/// segment (`FASTGATE__APP____PORT`, a trailing `__`), two names for one key
/// (`FASTGATE__APP__PORT` and `fastgate__app__port`) and a value [`read_env_value`] refuses are
/// errors naming the variable.
fn env_overrides(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<EnvOverride>, ConfigError> {
    let mut overrides: Vec<EnvOverride> = Vec::new();
    for (var, raw) in env {
        let Some(rest) = env_key(&var) else { continue };
        let segments: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if segments.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                path,
                &var,
                "an empty segment in the variable's name (four underscores in a row, or __ at \
                 its end): it names no key; write FASTGATE__SECTION__KEY",
            ));
        }
        let key = segments.join(".");
        if let Some(other) = overrides.iter().find(|o| o.segments == segments) {
            return Err(ConfigError::new(
                path,
                &key,
                format!(
                    "set by both {} and {var} (names are read in any case): unset one",
                    other.var
                ),
            ));
        }
        let value = read_env_value(&raw)
            .map_err(|m| ConfigError::new(path, &key, format!("{m} (set by {var})")))?;
        overrides.push(EnvOverride {
            var,
            segments,
            value,
        });
    }
    Ok(overrides)
}

/// The key part of a config variable's name (`APP__PORT` of `FASTGATE__APP__PORT`), the prefix
/// read in any case as the rest is; `None` for other variables.
fn env_key(var: &str) -> Option<&str> {
    let prefix = var.get(..ENV_PREFIX.len())?;
    prefix
        .eq_ignore_ascii_case(ENV_PREFIX)
        .then(|| &var[ENV_PREFIX.len()..])
}

/// The variable that set `key` (a dotted path) or a section holding it, as it was named.
fn setting_var<'a>(overrides: &'a [EnvOverride], key: &str) -> Option<&'a str> {
    overrides
        .iter()
        .find(|o| covers(&o.key(), key))
        .map(|o| o.var.as_str())
}

/// Whether setting the key path `set` sets `key` (itself, or a part of it: `app.trusted_proxies`
/// covers `app.trusted_proxies[0]`).
fn covers(set: &str, key: &str) -> bool {
    key.strip_prefix(set)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// The keys holding a file path that a path written in the config file resolves against the
/// file's directory for. Given by a variable, a relative one is relative to the working
/// directory instead (as a shell user expects, and as every other path is): made absolute here.
fn resolve_env_paths(
    path: &Path,
    overrides: &[EnvOverride],
    config: &mut Config,
) -> Result<(), ConfigError> {
    let g = &mut config.api_gateway;
    for (key, value) in [
        ("api_gateway.routes_file", &mut g.routes_file),
        ("api_gateway.tls.ca_file", &mut g.tls.ca_file),
        (
            "api_gateway.tls.client_cert_file",
            &mut g.tls.client_cert_file,
        ),
        (
            "api_gateway.tls.client_key_file",
            &mut g.tls.client_key_file,
        ),
    ] {
        let Some(var) = setting_var(overrides, key) else {
            continue;
        };
        let Some(p) = value.as_deref().filter(|p| !p.is_empty()) else {
            continue;
        };
        if Path::new(p).is_absolute() {
            continue;
        }
        let resolved = std::path::absolute(p)
            .ok()
            .and_then(|a| a.into_os_string().into_string().ok())
            .ok_or_else(|| {
                ConfigError::new(
                    path,
                    key,
                    format!(
                        "{p:?} is relative and the working directory cannot be read (or is not \
                         UTF-8): give an absolute path (set by {var})"
                    ),
                )
            })?;
        *value = Some(resolved);
    }
    Ok(())
}

fn display_path(path: &str) -> String {
    if path.is_empty() || path == "." {
        "(top level)".into()
    } else {
        path.to_owned()
    }
}

/// serde_yaml_ng starts some messages with the path the error already names as its key
/// (`app.port: invalid type …`), or with its parent (`database: unknown field …` for
/// `database.pool_size`): drop it so the key is not printed twice.
fn without_path(path: &str, message: &str) -> String {
    let mut prefixes: Vec<&str> = path
        .match_indices(['.', '['])
        .map(|(at, _)| &path[..at])
        .collect();
    prefixes.push(path);
    prefixes
        .iter()
        .rev()
        .find_map(|p| message.strip_prefix(p)?.strip_prefix(": "))
        .unwrap_or(message)
        .to_owned()
}

/// A serde_yaml_ng message without its ` at line …` (the error names the line itself), and
/// with the values a boolean takes: the YAML 1.1 that M-FastGate's PyYAML read also took
/// `yes`/`no` and `on`/`off`, which YAML 1.2 reads as strings.
fn strip_location(message: &str) -> String {
    let message = match message.find(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    hide_strings(message).replace(
        "expected a boolean",
        "expected a boolean: true or false (not yes/no, on/off or 1/0)",
    )
}

/// serde's `invalid type: string "…", expected u64` without the string: a secret pasted into
/// the wrong key (`timeout: sk-…`, `FASTGATE__API_GATEWAY__TIMEOUT=sk-…`) must not be printed.
fn hide_strings(message: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let Some(end) = after.find("\", expected").or_else(|| after.rfind('"')) else {
            break;
        };
        out.push_str(&rest[..at]);
        out.push_str("a string (not shown)");
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn set_path(root: &mut Value, segments: &[String], new: Value) {
    let Some((last, parents)) = segments.split_last() else {
        return;
    };
    let mut node = root;
    for seg in parents {
        if !node.is_mapping() {
            *node = Value::Mapping(Default::default());
        }
        let Value::Mapping(map) = node else { return };
        node = map
            .entry(Value::String(seg.clone()))
            .or_insert_with(|| Value::Mapping(Default::default()));
    }
    if !node.is_mapping() {
        *node = Value::Mapping(Default::default());
    }
    if let Value::Mapping(map) = node {
        map.insert(Value::String(last.clone()), new);
    }
}

/// `scheme://host[:port]` exactly as a browser sends it in `Origin` (origins are compared byte for
/// byte): `http` or `https`, a host in lower case, no default port, no path, query, user info,
/// wildcard or trailing slash.
fn check_origin(s: &str) -> Result<(), &'static str> {
    const SHAPE: &str =
        "is not an origin (scheme://host[:port], no path, e.g. https://app.example.com)";
    let (rest, default_port) = if let Some(rest) = s.strip_prefix("https://") {
        (rest, ":443")
    } else if let Some(rest) = s.strip_prefix("http://") {
        (rest, ":80")
    } else {
        return Err(SHAPE);
    };
    if rest.contains('*') {
        return Err("has a wildcard: list each origin (or use \"*\" alone for any)");
    }
    let has_host = s
        .parse::<http::Uri>()
        .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
    if rest.is_empty()
        || rest.contains(['/', '?', '#', '@'])
        || http::HeaderValue::from_str(s).is_err()
        || !has_host
    {
        return Err(SHAPE);
    }
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("must be in lower case, as browsers send it");
    }
    if rest.ends_with(default_port) {
        return Err("names its scheme's default port, which browsers leave out: drop it");
    }
    Ok(())
}

/// An IP address (a range of one) or a CIDR range.
fn parse_trusted_proxy(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// `logging.level` as a `tracing` filter. Python's level names, which M-FastGate took, are
/// mapped (`WARNING` → `warn`, `CRITICAL` → `error`); a bare word that is not a level is an
/// error (`tracing` would read it as a module name and switch every other log off).
pub fn log_filter(level: &str) -> Result<String, String> {
    let level_name = |word: &str| -> Option<&'static str> {
        match word.trim().to_ascii_lowercase().as_str() {
            "trace" => Some("trace"),
            "debug" => Some("debug"),
            "info" => Some("info"),
            "warn" | "warning" => Some("warn"),
            "error" | "critical" | "fatal" => Some("error"),
            "off" | "none" => Some("off"),
            _ => None,
        }
    };
    let mut out = Vec::new();
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        // The level's `=` is the last one outside a span filter's `[…]`.
        let outside = directive.rfind(']').map_or(0, |i| i + 1);
        let split = directive[outside..]
            .rfind('=')
            .map(|i| (&directive[..outside + i], &directive[outside + i + 1..]));
        if split.is_none() && directive.contains('[') {
            out.push(directive.to_owned()); // a span filter without a level: tracing's syntax
            continue;
        }
        match split {
            Some((target, lvl)) => match level_name(lvl) {
                Some(l) => out.push(format!("{}={l}", target.trim())),
                None => return Err(format!("unknown level {lvl:?} in {directive:?}")),
            },
            None => match level_name(directive) {
                Some(l) => out.push(l.to_owned()),
                None => {
                    return Err(format!(
                        "unknown level {directive:?} (trace, debug, info, warn(ing), error, \
                         critical, off; or target=level)"
                    ));
                }
            },
        }
    }
    if out.is_empty() {
        return Err("must name a level, e.g. info".into());
    }
    let filter = out.join(",");
    tracing_subscriber::EnvFilter::try_new(&filter).map_err(|e| format!("{filter:?}: {e}"))?;
    Ok(filter)
}

/// Warnings for M-FastGate settings FastGate accepts but does not act on.
fn mfastgate_warnings(c: &Config) -> Vec<String> {
    let mut w = Vec::new();
    let g = &c.api_gateway;
    if g.max_retries.is_some_and(|n| n > 0) {
        w.push(
            "api_gateway.max_retries has no effect: FastGate does not retry requests (a retried \
             completion is generated and paid for twice)"
                .to_owned(),
        );
    }
    if g.audit_full_request == Some(true) || g.audit_full_response == Some(true) {
        w.push(
            "api_gateway.audit_full_request / audit_full_response have no effect: the audit log \
             never records request or response headers and bodies"
                .to_owned(),
        );
    }
    if c.rate_limiting.as_ref().is_some_and(|r| r.enabled) {
        w.push(
            "rate_limiting is not enforced by FastGate yet (per-key limits are planned)".to_owned(),
        );
    }
    for (section, present) in [
        ("cloud_proxy", c.cloud_proxy.is_some()),
        ("model_routing", c.model_routing.is_some()),
    ] {
        if present {
            w.push(format!(
                "{section}: this M-FastGate section is not supported and is ignored"
            ));
        }
    }
    w
}

/// Why an admin token is weak (never showing it), if it is.
fn weak_admin_token(token: &str) -> Option<&'static str> {
    if token == "admin_secret_token_dev" {
        Some("is the sample token from M-FastGate's README")
    } else if token.starts_with("set-FASTGATE__") || token.eq_ignore_ascii_case("changeme") {
        Some("is a placeholder")
    } else if token.chars().count() < 16 {
        Some("is shorter than 16 characters")
    } else {
        None
    }
}

fn validate(path: &Path, c: &Config) -> Result<(), ConfigError> {
    let err = |key: &str, msg: String| Err(ConfigError::new(path, key, msg));
    let token = c.security.admin_token.expose();
    if token.trim().is_empty() {
        return err(
            "security.admin_token",
            "no value: it is empty (set here or by FASTGATE__SECURITY__ADMIN_TOKEN)".into(),
        );
    }
    if token.chars().any(char::is_control) {
        // No header can carry it: every admin call would be refused.
        return err(
            "security.admin_token",
            "contains a control character, such as the line end a YAML block scalar (`|`, `>`) \
             adds (value not shown): write it on one line, in quotes"
                .into(),
        );
    }
    if token.trim() != token {
        // Clients' header values are read without the spaces around them (HTTP's rule): it
        // would never match.
        return err(
            "security.admin_token",
            "has spaces around it, which no header can carry (value not shown): remove them".into(),
        );
    }
    let prefix = &c.security.key_prefix;
    if prefix.is_empty()
        || prefix.len() > 16
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return err(
            "security.key_prefix",
            "must be 1 to 16 characters of A-Z, a-z, 0-9, '_' or '-'".into(),
        );
    }
    if c.security.default_expiry_days == 0 || c.security.default_expiry_days > 36_500 {
        return err(
            "security.default_expiry_days",
            "must be between 1 and 36500".into(),
        );
    }
    if let Err(e) = fastgate_store::parse_database_url(&c.database.url) {
        return err("database.url", e.to_string());
    }
    // New keys get it by default: an empty one (or one with spaces around it) would never
    // match, and `*` would open every route to every such key. Other characters the admin API
    // refuses are warned about (M-FastGate never checked permissions: imported keys may hold
    // them).
    let p = &c.api_gateway.permission;
    if p.trim().is_empty() || p.trim() != p || p.contains('*') {
        return err(
            "api_gateway.permission",
            "must not be empty, have spaces around it or hold '*' (new keys get it)".into(),
        );
    }
    if c.database.max_connections == 0 {
        return err("database.max_connections", "must be at least 1".into());
    }
    if !c.api_gateway.strip_body_fields.is_empty() {
        return err(
            "api_gateway.strip_body_fields",
            "removing fields from request bodies is not supported by FastGate; remove them in \
             the client, or set an empty list"
                .into(),
        );
    }
    if let Some(level) = &c.logging.level {
        log_filter(level).map_err(|m| ConfigError::new(path, "logging.level", m))?;
    }
    parse_backend_url(&c.api_gateway.backend_url)
        .map_err(|m| ConfigError::new(path, "api_gateway.backend_url", m))?;
    check_backend_path(&c.api_gateway.backend_path)
        .map_err(|m| ConfigError::new(path, "api_gateway.backend_path", m))?;
    if c.api_gateway.backend_path.ends_with("/*") {
        return Err(ConfigError::new(
            path,
            "api_gateway.backend_path",
            "must not end with /* (the unified endpoint is one path; a prefix route belongs in \
             the routes file)",
        ));
    }
    for (i, h) in c.api_gateway.strip_headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            return err(
                &format!("api_gateway.strip_headers[{i}]"),
                format!("{h:?} is not a valid header name"),
            );
        }
    }
    if http::HeaderName::from_bytes(c.api_gateway.key_header.as_bytes()).is_err() {
        return err(
            "api_gateway.key_header",
            "is not a valid header name".into(),
        );
    }
    for (key, v) in [
        ("api_gateway.timeout", c.api_gateway.timeout),
        ("api_gateway.connect_timeout", c.api_gateway.connect_timeout),
        ("api_gateway.idle_timeout", c.api_gateway.idle_timeout),
    ] {
        if v == 0 || v > 86_400 {
            return err(key, "must be between 1 and 86400 seconds".into());
        }
    }
    let idle = c.api_gateway.pool_idle_timeout;
    if !(0.1..=3600.0).contains(&idle) {
        return err(
            "api_gateway.pool_idle_timeout",
            "must be between 0.1 and 3600 seconds".into(),
        );
    }
    if c.api_gateway.max_body_bytes == 0 {
        return err("api_gateway.max_body_bytes", "must be at least 1".into());
    }
    for (i, p) in c.app.trusted_proxies.iter().enumerate() {
        if parse_trusted_proxy(p).is_none() {
            return err(
                &format!("app.trusted_proxies[{i}]"),
                format!("{p:?} is not an IP address or CIDR range (e.g. 10.0.0.0/8)"),
            );
        }
    }
    for (i, origin) in c.app.cors_allow_origins.iter().enumerate() {
        let key = format!("app.cors_allow_origins[{i}]");
        if origin == "*" {
            if c.app.cors_allow_origins.len() > 1 {
                return err(
                    &key,
                    "\"*\" allows every origin and cannot be listed with others".into(),
                );
            }
        } else if let Err(why) = check_origin(origin) {
            return err(&key, format!("{origin:?} {why}"));
        }
    }
    if c.app.header_read_timeout == 0 {
        return err(
            "app.header_read_timeout",
            "must be at least 1 (seconds)".into(),
        );
    }
    if c.audit.queue_capacity == 0 {
        return err("audit.queue_capacity", "must be at least 1".into());
    }
    if c.audit.retention_days > 36_500 {
        return err(
            "audit.retention_days",
            "must be at most 36500 (100 years); 0 keeps everything".into(),
        );
    }
    if c.audit.batch_size == 0 || c.audit.batch_size > 5_000 {
        return err("audit.batch_size", "must be between 1 and 5000".into());
    }
    if let Some(level) = &c.logging.level
        && tracing_subscriber::EnvFilter::try_new(level).is_err()
    {
        return err("logging.level", format!("{level:?} is not a valid filter"));
    }
    Ok(())
}

fn parse_backend_url(url: &str) -> Result<http::Uri, String> {
    // The library's check; its message never shows a user name or password from the URL.
    fastgate_layer::Backend::parse_base_url(url).map_err(|e| e.to_string())
}

fn check_path(p: &str) -> Result<(), String> {
    // Shown without what follows a `?` or `#` (`/v1?api_key=…` may hold a secret), as the
    // backend_url check hides a URL's query.
    let shown = match p.find(['?', '#']) {
        Some(at) => format!("{}{}***", &p[..at], &p[at..=at]),
        None => p.to_owned(),
    };
    if !p.starts_with('/') {
        return Err(format!("{shown:?} must start with '/'"));
    }
    if p.contains('?') || p.contains('#') {
        return Err(format!(
            "{shown:?} is not a valid path: it holds a query string or fragment"
        ));
    }
    if p.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(format!("{shown:?} is not a valid path"));
    }
    Ok(())
}

/// A `backend_path` (of a route, or `api_gateway.backend_path`): a path ([`check_path`]) that
/// cannot leave the backend's base path: no leading `//` (`//evil.example/v1` is a host to a URL
/// parser, and to some backends) and no `.` or `..` segment, written out or percent-encoded
/// (`/v1/..`, `/v1/%2e%2e`).
fn check_backend_path(p: &str) -> Result<(), String> {
    check_path(p)?;
    if p.starts_with("//") {
        return Err(format!(
            "{p:?} starts with '//': write the path with a single '/' (a host belongs in \
             backend_url)"
        ));
    }
    let dot_segment = p.split('/').any(|segment| {
        let bare = segment.split(';').next().unwrap_or_default();
        let decoded = percent_decode_str(bare).decode_utf8_lossy();
        decoded == "." || decoded == ".."
    });
    if dot_segment {
        return Err(format!(
            "{p:?} holds a '.' or '..' segment (also percent-encoded): write the path it \
             stands for"
        ));
    }
    Ok(())
}

/// The prefix of a prefix route (its `path` without the final `/*`): `/proxy` or below it, in
/// plain segments, as requests are matched on the path as received.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.contains(['*', '%']) {
        return Err(format!(
            "{prefix:?}/* is not a valid prefix route: a '*' only as the last segment, /*, \
             and no percent-escapes (paths are matched as received)"
        ));
    }
    if prefix.ends_with('/') {
        return Err(format!(
            "{prefix:?}/* ends with an empty segment: write {:?}",
            format!("{}/*", prefix.trim_end_matches('/'))
        ));
    }
    if let Err(why) = fastgate_layer::PathSuffix::new(prefix) {
        return Err(format!("{prefix:?}/* is not a valid prefix route: {why}"));
    }
    Ok(())
}

/// The backend path of a prefix route: what the rest of the request path is appended to.
fn check_prefix_backend_path(p: &str) -> Result<(), String> {
    if p.contains('*') {
        return Err(format!(
            "{p:?}: the backend path of a prefix route takes no '*' (the rest of the request \
             path is appended to it: /v1, not /v1/*)"
        ));
    }
    if p.ends_with("//") {
        return Err(format!(
            "{p:?} ends with an empty segment: the rest of the request path would follow \
             after '//'"
        ));
    }
    // What a request's path is appended to holds what the request's path may hold.
    if let Err(why) = fastgate_layer::PathSuffix::new(p) {
        return Err(format!(
            "{p:?} is not a valid backend path for a prefix route: {}",
            why.to_string().replace("the path", "it")
        ));
    }
    Ok(())
}

/// `p` as given when absolute, else relative to the directory of the config file.
pub(crate) fn relative_to_config(config_path: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        config_path.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn routes_file_path(config_path: &Path, c: &Config) -> Option<PathBuf> {
    match &c.api_gateway.routes_file {
        Some(p) if !p.is_empty() => Some(relative_to_config(config_path, p)),
        Some(_) => None,
        None => {
            let beside = config_path
                .parent()
                .unwrap_or(Path::new("."))
                .join("routes.yaml");
            beside.is_file().then_some(beside)
        }
    }
}

/// A real key must fit in an HTTP header: otherwise every request would go to the backend
/// without it. The message never shows the key.
fn check_real_key(key: &Secret) -> Result<(), String> {
    match http::HeaderValue::from_str(key.expose()) {
        Ok(_) => Ok(()),
        Err(_) => Err(
            "is not a valid HTTP header value: it holds a line break or another \
                       control character (a trailing newline from a secrets file?); the value is \
                       not shown"
                .to_owned(),
        ),
    }
}

/// A route's `real_api_key_env`: the variable's value, read as a config variable's is
/// ([`read_env_value`]). Unset, empty, `""`, `null` or `~` is no key, and so an error, as a list
/// or mapping is; the message never shows the value.
fn route_key_from_env(var: &str) -> Result<Secret, &'static str> {
    match std::env::var(var) {
        Ok(raw) => route_key(&raw),
        Err(std::env::VarError::NotPresent) => Err("is not set"),
        Err(std::env::VarError::NotUnicode(_)) => Err("is not valid UTF-8"),
    }
}

/// Whether `s` can be an environment variable's name (POSIX: `[A-Za-z_][A-Za-z0-9_]*`).
fn is_variable_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An upper-case variable name of at most 64 characters (`OPENAI_API_KEY`): safe to print.
fn is_conventional_variable_name(s: &str) -> bool {
    is_variable_name(s)
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// [`route_key_from_env`] of a value that is set.
fn route_key(raw: &str) -> Result<Secret, &'static str> {
    match read_env_value(raw)? {
        EnvValue::Plain(key) => Ok(Secret::new(key)),
        EnvValue::Yaml(Value::String(key)) if !key.is_empty() => Ok(Secret::new(key)),
        EnvValue::Yaml(Value::String(_) | Value::Null) => {
            Err("has no value (empty, \"\", ~ or null)")
        }
        EnvValue::Yaml(_) => Err("is not text (a list or a mapping; value not shown)"),
    }
}

/// The name of a variable M-FastGate's settings (pydantic, names in any case, no prefix) read
/// for `field` when its YAML left the key out, if one is set with a value. FastGate does not
/// read it: the name is only used to point at the variable FastGate reads. Only names, never
/// values, are returned.
fn mfastgate_variable<'a>(env: &'a [(String, String)], field: &str) -> Option<&'a str> {
    env.iter()
        .find(|(k, v)| k.eq_ignore_ascii_case(field) && !v.trim().is_empty())
        .map(|(k, _)| k.as_str())
}

/// Whether the YAML file at `path` is FastGate's routes format: a mapping with a `routes` key, or,
/// when it does not even parse (an indentation mistake), a line that starts with `routes:`.
/// M-FastGate's own `config/routes.yaml` also has a top-level `routes:`, but its entries have
/// `path_prefix` and `targets` (its route manager's format): that file is not FastGate's.
fn has_routes_key(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) {
        Ok(v) => v.get("routes").is_some_and(|routes| {
            !routes.as_sequence().is_some_and(|entries| {
                entries.iter().any(|entry| {
                    entry.get("path").is_none()
                        && (entry.get("path_prefix").is_some() || entry.get("targets").is_some())
                })
            })
        }),
        Err(_) => text.lines().any(|l| l.starts_with("routes:")),
    }
}

fn load_routes_file(path: &Path) -> Result<RoutesFile, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, "(file)", format!("cannot read: {e}")))?;
    if text.trim().is_empty() {
        return Ok(RoutesFile::default());
    }
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let at = err.path().to_string();
        let mut message = without_path(&at, &strip_location(&err.inner().to_string()));
        // M-FastGate's first routes.yaml (route_manager.py) had `path_prefix` and `targets`.
        if ["unknown field `path_prefix`", "unknown field `targets`"]
            .iter()
            .any(|m| message.contains(m))
        {
            message.push_str(
                " (M-FastGate's path_prefix/targets format: FastGate writes a prefix route as \
                 path: /proxy/<prefix>/* with backend_url and backend_path)",
            );
        }
        ConfigError {
            file: path.to_path_buf(),
            line: err.inner().location().map(|l| l.line()),
            key: display_path(&at),
            message,
        }
    })
}

/// What a prefix route opens that another route guards differently: a prefix route forwards
/// every path below its backend path, so another route (exact or prefix, the unified endpoint
/// included) whose backend path is that path or below it on the same backend is reachable
/// through the prefix route, with the prefix route's permission and real key. A warning, not an
/// error: one API behind one route with its own permission for one endpoint is a legitimate
/// setup when the keys that hold the prefix route's permission may reach that endpoint too.
/// Also a prefix route that opens its backend's every path. Names routes and permissions only,
/// never a URL (it may hold a password) or a key.
/// `unified` is the unified endpoint's path (`/proxy` + `api_gateway.backend_path`).
fn prefix_route_warnings(routes: &HashMap<String, RouteConfig>, unified: &str) -> Vec<String> {
    let shown = |key: &str| {
        if key == unified {
            format!("the unified endpoint {key} (api_gateway)")
        } else {
            format!("route {key}")
        }
    };
    let mut keys: Vec<&String> = routes.keys().collect();
    keys.sort_unstable();
    let mut warnings = Vec::new();
    for &p_key in keys.iter().filter(|k| k.ends_with("/*")) {
        let p = &routes[p_key];
        let Some((p_origin, p_path)) = backend_target(&p.backend) else {
            continue;
        };
        let p_dir = p_path.trim_end_matches('/');
        if p_dir.is_empty() {
            warnings.push(format!(
                "prefix {} forwards every path of its backend (its full backend path is '/'): \
                 any endpoint of that backend is reachable with the permission {:?}; give it \
                 a backend_path such as /v1",
                shown(p_key),
                &*p.permission
            ));
        }
        for &e_key in &keys {
            if e_key == p_key {
                continue;
            }
            let e = &routes[e_key];
            let Some((e_origin, e_path)) = backend_target(&e.backend) else {
                continue;
            };
            let below = e_path
                .strip_prefix(p_dir)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            if e_origin != p_origin || !below {
                continue;
            }
            let other_key = p.backend.api_key.as_ref().map(Secret::expose)
                != e.backend.api_key.as_ref().map(Secret::expose);
            let why = if p.permission != e.permission {
                format!(
                    "a key with the permission {:?} reaches {} without {:?}",
                    &*p.permission,
                    shown(e_key),
                    &*e.permission
                )
            } else if other_key {
                format!(
                    "requests through it reach {} with another real key than that route's",
                    shown(e_key)
                )
            } else {
                continue;
            };
            warnings.push(format!(
                "prefix {} covers the backend path of {} (same backend URL): {why}, by a path \
                 below the prefix; give the stricter endpoint its own backend_url (another \
                 host or port) or replace the prefix route by longer ones that leave it out",
                shown(p_key),
                shown(e_key)
            ));
        }
    }
    warnings
}

/// A backend's origin (scheme, host and port, without user name or password, the port filled
/// in from the scheme) and the path requests are sent to (the base URL's path and the backend
/// path, as the forward service joins them), percent-decoded and lowercased: the forms in which
/// two routes may reach the same endpoint of a backend that decodes or ignores case.
fn backend_target(b: &Backend) -> Option<((String, String, u16), String)> {
    let scheme = b.base_url.scheme_str()?.to_ascii_lowercase();
    let authority = b.base_url.authority()?;
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let host = authority.host().to_ascii_lowercase();
    let base = b.base_url.path().trim_end_matches('/');
    let sep = if b.path.starts_with('/') || b.path.is_empty() {
        ""
    } else {
        "/"
    };
    let path = format!("{base}{sep}{}", b.path);
    let path = percent_decode_str(&path)
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    Some(((scheme, host, port), path))
}

fn build_routes(
    config_path: &Path,
    routes_path: Option<&Path>,
    c: &Config,
    extra: &RoutesFile,
) -> Result<HashMap<String, RouteConfig>, ConfigError> {
    let g = &c.api_gateway;
    let key_header = |h: &str, file: &Path, key: &str| {
        http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
            .map_err(|_| ConfigError::new(file, key, "is not a valid header name"))
    };
    if let Some(key) = &g.real_api_key {
        check_real_key(key).map_err(|m| {
            ConfigError::new(
                config_path,
                "api_gateway.real_api_key",
                format!("{m} (set here or by FASTGATE__API_GATEWAY__REAL_API_KEY)"),
            )
        })?;
    }
    let main_path = format!("/proxy{}", g.backend_path);
    let main = RouteConfig {
        name: Arc::from("default"),
        permission: Arc::from(g.permission.as_str()),
        backend: Arc::new(Backend {
            base_url: parse_backend_url(&g.backend_url)
                .map_err(|m| ConfigError::new(config_path, "api_gateway.backend_url", m))?,
            path: g.backend_path.clone(),
            api_key: g.real_api_key.clone(),
            key_header: key_header(&g.key_header, config_path, "api_gateway.key_header")?,
            connect_timeout: Duration::from_secs(g.connect_timeout),
            response_timeout: Duration::from_secs(g.timeout),
            idle_timeout: Duration::from_secs(g.idle_timeout),
        }),
    };
    let mut routes = HashMap::new();
    routes.insert(main_path, main);
    let file = routes_path.unwrap_or(config_path);
    for (i, r) in extra.routes.iter().enumerate() {
        let k = |field: &str| format!("routes[{i}].{field}");
        if !r.path.starts_with("/proxy/") {
            return Err(ConfigError::new(file, k("path"), "must start with /proxy/"));
        }
        check_path(&r.path).map_err(|m| ConfigError::new(file, k("path"), m))?;
        check_backend_path(&r.backend_path)
            .map_err(|m| ConfigError::new(file, k("backend_path"), m))?;
        if let Some(prefix) = r.path.strip_suffix("/*") {
            check_prefix(prefix).map_err(|m| ConfigError::new(file, k("path"), m))?;
            check_prefix_backend_path(&r.backend_path)
                .map_err(|m| ConfigError::new(file, k("backend_path"), m))?;
        } else if r.path.contains('*') {
            return Err(ConfigError::new(
                file,
                k("path"),
                "a '*' is only allowed as the last segment, /*, of a prefix route \
                 (/proxy/openai/* matches /proxy/openai and every path below it)",
            ));
        }
        let base_url = parse_backend_url(&r.backend_url)
            .map_err(|m| ConfigError::new(file, k("backend_url"), m))?;
        let api_key = match (&r.real_api_key, &r.real_api_key_env) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    file,
                    k("real_api_key_env"),
                    "set either real_api_key or real_api_key_env, not both",
                ));
            }
            (Some(key), None) if key.expose().is_empty() => None,
            (Some(key), None) => Some(key.clone()),
            (None, Some(var)) if !is_variable_name(var) => {
                // Not a name: most likely the key itself, written in the wrong field.
                return Err(ConfigError::new(
                    file,
                    k("real_api_key_env"),
                    "must name an environment variable (letters, digits and _, not starting \
                     with a digit); the value is not shown: was the key itself written here?",
                ));
            }
            (None, Some(var)) => Some(route_key_from_env(var).map_err(|m| {
                // An upper-case name is shown; anything else could be a key that happens to
                // be a valid name (sk_live_…).
                let named = if is_conventional_variable_name(var) {
                    format!("environment variable {var} {m}")
                } else {
                    format!(
                        "the environment variable it names {m} (its name is not shown: it is \
                         not an upper-case name, and could be a key written in the wrong field)"
                    )
                };
                ConfigError::new(file, k("real_api_key_env"), named)
            })?),
            (None, None) => g.real_api_key.clone(),
        };
        if let Some(key) = &api_key {
            let field = if r.real_api_key_env.is_some() {
                "real_api_key_env"
            } else {
                "real_api_key"
            };
            check_real_key(key).map_err(|m| ConfigError::new(file, k(field), m))?;
        }
        let timeout = r.timeout.unwrap_or(g.timeout);
        if timeout == 0 || timeout > 86_400 {
            return Err(ConfigError::new(
                file,
                k("timeout"),
                "must be between 1 and 86400 seconds",
            ));
        }
        if let Some(p) = r.permission.as_deref()
            && (p.trim().is_empty() || p.trim() != p)
        {
            return Err(ConfigError::new(
                file,
                k("permission"),
                "must not be empty or have spaces around it (no key would match)",
            ));
        }
        let route = RouteConfig {
            name: Arc::from(r.name.as_deref().unwrap_or(&r.path)),
            permission: Arc::from(r.permission.as_deref().unwrap_or("chat")),
            backend: Arc::new(Backend {
                base_url,
                path: r.backend_path.clone(),
                api_key,
                key_header: key_header(
                    r.key_header.as_deref().unwrap_or(&g.key_header),
                    file,
                    &k("key_header"),
                )?,
                connect_timeout: Duration::from_secs(g.connect_timeout),
                response_timeout: Duration::from_secs(timeout),
                idle_timeout: Duration::from_secs(g.idle_timeout.max(timeout)),
            }),
        };
        if routes.insert(r.path.clone(), route).is_some() {
            return Err(ConfigError::new(
                file,
                k("path"),
                format!("{} is already routed", r.path),
            ));
        }
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_errors_name_the_key_once() {
        use super::without_path;
        assert_eq!(
            without_path("app.port", "app.port: invalid type: string"),
            "invalid type: string"
        );
        assert_eq!(
            without_path("database.pool_size", "database: unknown field `pool_size`"),
            "unknown field `pool_size`"
        );
        assert_eq!(
            without_path("routes[0].bogus", "routes[0]: unknown field `bogus`"),
            "unknown field `bogus`"
        );
        assert_eq!(without_path("app.port", "missing field"), "missing field");
    }

    use super::*;

    const SEED: &str = r#"
app:
  name: "M-FastGate"
  version: "0.1.0"
  debug: true
  host: "0.0.0.0"
  port: 8514

database:
  url: "sqlite:///./fastgate.db"
  echo: true

security:
  admin_token: "admin_secret_token_dev"
  key_prefix: "fg_"
  default_expiry_days: 365

api_gateway:
  backend_url: "http://127.0.0.1:9000"
  backend_path: "/miniai/v2/chat/completions"
  real_api_key: "your_real_api_key_here"
  strip_headers:
    - "host"
    - "x-api-key"
    - "authorization"
    - "x-forwarded-for"
  async_audit: true
  timeout: 60
"#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        parse_config(
            Path::new("test.yaml"),
            text,
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    /// M-FastGate's settings read `REAL_API_KEY` / `ADMIN_TOKEN` (any case, no prefix) for keys
    /// its YAML left out. FastGate reads only `FASTGATE__…`, and says so instead of silently
    /// sending requests without a real key; neither message shows a value.
    #[test]
    fn mfastgate_style_secret_variables_are_pointed_at() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        let no_key = SEED.replace("  real_api_key: \"your_real_api_key_here\"\n", "");
        assert_ne!(no_key, SEED);
        std::fs::write(&cfg, &no_key).unwrap();
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let s = Settings::load_with_env(&cfg, env(&[("real_api_key", "sk-secret-value")])).unwrap();
        let w = s
            .warnings
            .iter()
            .find(|w| w.contains("real_api_key is set but not read"))
            .unwrap_or_else(|| panic!("no warning in {:?}", s.warnings));
        assert!(w.contains("FASTGATE__API_GATEWAY__REAL_API_KEY"), "{w}");
        assert!(!w.contains("sk-secret-value"), "{w}");
        // Set the FastGate way as well: nothing to say.
        let s = Settings::load_with_env(
            &cfg,
            env(&[
                ("REAL_API_KEY", "sk-secret-value"),
                ("FASTGATE__API_GATEWAY__REAL_API_KEY", "sk-secret-value"),
            ]),
        )
        .unwrap();
        assert!(
            !s.warnings.iter().any(|w| w.contains("REAL_API_KEY is set")),
            "{:?}",
            s.warnings
        );
        // No admin token in the file: the start stops, and the error names the variable to use.
        let no_token = SEED.replace("  admin_token: \"admin_secret_token_dev\"\n", "");
        assert_ne!(no_token, SEED);
        std::fs::write(&cfg, &no_token).unwrap();
        let e =
            Settings::load_with_env(&cfg, env(&[("ADMIN_TOKEN", "tok-secret-value-123456789")]))
                .unwrap_err()
                .to_string();
        assert!(e.contains("ADMIN_TOKEN is set"), "{e}");
        assert!(e.contains("FASTGATE__SECURITY__ADMIN_TOKEN"), "{e}");
        assert!(!e.contains("tok-secret-value"), "{e}");
        let e = Settings::load_with_env(&cfg, Vec::new())
            .unwrap_err()
            .to_string();
        assert!(!e.contains("ADMIN_TOKEN is set"), "{e}");
    }

    #[test]
    fn seed_file_parses_with_its_keys() {
        let c = parse(SEED, &[]).unwrap();
        assert_eq!(c.app.port, 8514);
        assert_eq!(c.security.admin_token.expose(), "admin_secret_token_dev");
        assert_eq!(c.api_gateway.timeout, 60);
        assert_eq!(c.api_gateway.strip_headers.len(), 4);
        let s = Settings::from_config(Path::new("/nonexistent/dev.yaml"), c).unwrap();
        assert!(s.routes.contains_key("/proxy/miniai/v2/chat/completions"));
    }

    #[test]
    fn a_backend_url_with_a_password_is_warned_about_without_showing_it() {
        let settings = |url: &str| {
            let c = parse(SEED, &[("FASTGATE__API_GATEWAY__BACKEND_URL", url)]).unwrap();
            Settings::from_config(Path::new("/nonexistent/dev.yaml"), c).unwrap()
        };
        let s = settings("http://user:s3cret-pw@127.0.0.1:9000");
        let warning = s
            .warnings
            .iter()
            .find(|w| w.contains("user name or password"))
            .expect("a warning");
        assert!(
            warning.contains("/proxy/miniai/v2/chat/completions"),
            "{warning}"
        );
        assert!(!warning.contains("s3cret-pw"), "{warning}");
        let s = settings("http://127.0.0.1:9000");
        assert!(
            !s.warnings
                .iter()
                .any(|w| w.contains("user name or password"))
        );
    }

    #[test]
    fn cors_origins_are_any_a_list_or_none_and_checked() {
        let settings = |env: &[(&str, &str)]| {
            Settings::from_config(
                Path::new("/nonexistent/dev.yaml"),
                parse(SEED, env).unwrap(),
            )
        };
        // M-FastGate's behaviour by default: every origin.
        assert!(settings(&[]).unwrap().cors().is_some());
        let var = "FASTGATE__APP__CORS_ALLOW_ORIGINS";
        for ok in [
            "[\"https://chat.example.com\", \"http://127.0.0.1:3000\"]",
            "[\"http://[::1]:8080\"]",
            "[\"https://a.example:8443\"]",
        ] {
            assert!(settings(&[(var, ok)]).unwrap().cors().is_some(), "{ok}");
        }
        assert!(settings(&[(var, "[]")]).unwrap().cors().is_none());
        for (bad, why) in [
            (
                "[\"*\", \"https://a.example\"]",
                "cannot be listed with others",
            ),
            ("[\"https://a.example/\"]", "is not an origin"),
            ("[\"https://a.example/app\"]", "is not an origin"),
            ("[\"a.example\"]", "is not an origin"),
            ("[\"ftp://a.example\"]", "is not an origin"),
            ("[\"https://\"]", "is not an origin"),
            ("[\"https://user@a.example\"]", "is not an origin"),
            ("[\"https://Chat.Example.com\"]", "lower case"),
            ("[\"https://a.example:443\"]", "default port"),
            ("[\"http://a.example:80\"]", "default port"),
            ("[\"https://*.example.com\"]", "wildcard"),
        ] {
            let Err(e) = settings(&[(var, bad)]) else {
                panic!("{bad} was accepted");
            };
            let e = e.to_string();
            assert!(
                e.contains("app.cors_allow_origins[") && e.contains(why),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn env_overrides_win_and_keep_types() {
        let c = parse(
            SEED,
            &[
                ("FASTGATE__API_GATEWAY__REAL_API_KEY", "12345"),
                ("FASTGATE__APP__PORT", "9999"),
                ("FASTGATE__API_GATEWAY__STRIP_HEADERS", "[x-a, x-b]"),
                ("FASTGATE__SECURITY__ADMIN_TOKEN", "true"),
                ("OTHER__APP__PORT", "1"),
            ],
        )
        .unwrap();
        assert_eq!(c.app.port, 9999);
        assert_eq!(c.api_gateway.real_api_key.unwrap().expose(), "12345");
        assert_eq!(c.api_gateway.strip_headers, ["x-a", "x-b"]);
        assert_eq!(c.security.admin_token.expose(), "true");
    }

    #[test]
    fn the_default_strip_list_removes_every_client_address_header() {
        let c = parse(
            "security:\n  admin_token: \"a-test-token-0123456789\"\napi_gateway:\n  backend_url: \"http://127.0.0.1:9\"\n  backend_path: \"/v1\"\n",
            &[],
        )
        .unwrap();
        for h in ["x-forwarded-for", "forwarded", "x-real-ip", "x-api-key"] {
            assert!(c.api_gateway.strip_headers.iter().any(|s| s == h), "{h}");
        }
    }

    #[test]
    fn a_boolean_that_is_not_one_says_what_is_accepted() {
        for (text, env) in [
            (SEED.replace("  echo: true", "  echo: yes"), vec![]),
            (SEED.to_owned(), vec![("FASTGATE__DATABASE__ECHO", "1")]),
            (SEED.to_owned(), vec![("FASTGATE__DATABASE__ECHO", "on")]),
        ] {
            let e = parse(&text, &env).unwrap_err();
            assert_eq!(e.key, "database.echo", "{e}");
            assert!(e.message.contains("true or false"), "{e}");
        }
        let c = parse(SEED, &[("FASTGATE__DATABASE__ECHO", "false")]).unwrap();
        assert!(!c.database.echo);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = SEED.replace("  echo: true", "  echo: true\n  pool_size: 3");
        let e = parse(&text, &[]).unwrap_err();
        assert_eq!(e.key, "database.pool_size");
        assert!(e.message.contains("pool_size"), "{e}");
        assert_eq!(e.line, Some(12));
    }

    #[test]
    fn bad_yaml_reports_a_line() {
        let e = parse("app:\n  port: [1, 2\n", &[]).unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn wrong_type_from_env_names_the_variable() {
        let e = parse(SEED, &[("FASTGATE__APP__PORT", "eighty")]).unwrap_err();
        assert_eq!(e.key, "app.port");
        assert!(e.message.contains("FASTGATE__APP__PORT"), "{e}");
        // Named as it was set, in whatever case.
        let e = parse(SEED, &[("FASTGATE__app__port", "eighty")]).unwrap_err();
        assert!(e.message.contains("(set by FASTGATE__app__port)"), "{e}");
    }

    #[test]
    fn env_names_are_read_in_any_case_and_refused_when_they_name_no_key() {
        for var in [
            "FASTGATE__app__port",
            "fastgate__App__Port",
            "FASTGATE__APP__PORT",
        ] {
            let c = parse(SEED, &[(var, "18611"), ("FASTGATE__app__debug", "false")])
                .unwrap_or_else(|e| panic!("{var}: {e}"));
            assert_eq!(c.app.port, 18611, "{var}");
            assert!(!c.app.debug, "{var}");
        }
        // An empty segment named no key and was ignored (the default port served).
        for var in [
            "FASTGATE__APP____PORT",
            "FASTGATE__APP__PORT__",
            "FASTGATE____APP__PORT",
            "FASTGATE__",
            "FASTGATE____",
        ] {
            let e = parse(SEED, &[(var, "1")]).unwrap_err();
            assert!(e.to_string().contains(var), "{var}: {e}");
            assert!(e.message.contains("empty segment"), "{var}: {e}");
        }
        // Two names for one key: which one won depended on the environment's order, and the
        // error named a variable that was not set.
        let e = parse(
            SEED,
            &[
                ("FASTGATE__APP__PORT", "18610"),
                ("FASTGATE__app__port", "18611"),
            ],
        )
        .unwrap_err();
        assert_eq!(e.key, "app.port", "{e}");
        assert!(
            e.message
                .contains("FASTGATE__APP__PORT and FASTGATE__app__port"),
            "{e}"
        );
        assert!(!e.message.contains("1861"), "{e}");
        // Other variables are not the config's.
        let c = parse(
            SEED,
            &[("FASTGATE_APP__PORT", "1"), ("FASTGATEX__APP__PORT", "1")],
        )
        .unwrap();
        assert_eq!(c.app.port, 8514);
    }

    #[test]
    fn missing_required_key_may_come_from_env() {
        let text = SEED.replace("  admin_token: \"admin_secret_token_dev\"\n", "");
        assert!(parse(&text, &[]).is_err());
        let c = parse(&text, &[("FASTGATE__SECURITY__ADMIN_TOKEN", "from-env")]).unwrap();
        assert_eq!(c.security.admin_token.expose(), "from-env");
    }

    #[test]
    fn invalid_values_are_named() {
        for (from, to, key) in [
            (
                "http://127.0.0.1:9000",
                "ftp://x",
                "api_gateway.backend_url",
            ),
            (
                "\"/miniai/v2/chat/completions\"",
                "\"miniai\"",
                "api_gateway.backend_path",
            ),
            ("sqlite:///./fastgate.db", "mysql://x/y", "database.url"),
            (
                "  timeout: 60",
                "  timeout: 60\n  pool_idle_timeout: 0",
                "api_gateway.pool_idle_timeout",
            ),
            (
                "  timeout: 60",
                "  timeout: 60\n  pool_idle_timeout: .nan",
                "api_gateway.pool_idle_timeout",
            ),
        ] {
            let c = parse(&SEED.replace(from, to), &[]).unwrap();
            let e = Settings::from_config(Path::new("/x/dev.yaml"), c).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }

    /// Secrets in places the masking missed: a backend URL's lone user name (a token), database
    /// URL parameters named like a misspelled password, a query string in a backend path.
    #[test]
    fn url_tokens_misspelled_password_parameters_and_path_queries_are_masked() {
        let settings = |env: &[(&str, &str)]| {
            Settings::from_config(
                Path::new("/nonexistent/dev.yaml"),
                parse(SEED, env).unwrap(),
            )
        };
        let s = settings(&[
            ("FASTGATE__API_GATEWAY__BACKEND_URL", "http://tok-S3CRET1@127.0.0.1:9000"),
            (
                "FASTGATE__DATABASE__URL",
                "postgresql://fg@db/fastgate?passwd=S3CRET2&pwd=S3CRET3&Password=S3CRET4&sslmode=disable",
            ),
        ])
        .unwrap();
        let shown = format!("{} {:?}", s.redacted_json(), s.config);
        for secret in ["S3CRET1", "S3CRET2", "S3CRET3", "S3CRET4"] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
        assert!(shown.contains("http://******@127.0.0.1:9000"), "{shown}");
        assert!(shown.contains("sslmode=disable"), "{shown}");

        for path in ["/d?api_key=S3CRET5", "d?api_key=S3CRET5", "/d#S3CRET5"] {
            let e = settings(&[("FASTGATE__API_GATEWAY__BACKEND_PATH", path)]).unwrap_err();
            assert_eq!(e.key, "api_gateway.backend_path");
            let msg = e.to_string();
            assert!(!msg.contains("S3CRET5"), "{msg}");
            assert!(msg.contains("d?***") || msg.contains("d#***"), "{msg}");
        }
    }

    #[test]
    fn secrets_never_serialize() {
        let text = SEED.replace(
            "sqlite:///./fastgate.db",
            "postgresql://fastgate:pg-secret@127.0.0.1/fastgate",
        );
        let c = parse(&text, &[]).unwrap();
        let s = Settings::from_config(Path::new("/x/dev.yaml"), c).unwrap();
        let json = s.redacted_json().to_string();
        for secret in [
            "admin_secret_token_dev",
            "your_real_api_key_here",
            "pg-secret",
        ] {
            assert!(!json.contains(secret), "{secret} leaked: {json}");
        }
        assert!(json.contains(MASK));
        assert!(!format!("{s:?}").contains("your_real_api_key_here"));
    }

    #[test]
    fn routes_file_adds_routes_and_rejects_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        std::fs::write(
            dir.path().join("routes.yaml"),
            "routes:\n  - path: /proxy/v1/embeddings\n    backend_url: http://127.0.0.1:9001\n    backend_path: /v1/embeddings\n    permission: embed\n",
        )
        .unwrap();
        let s = Settings::load_with_env(&cfg, Vec::new()).unwrap();
        let r = &s.routes["/proxy/v1/embeddings"];
        assert_eq!(&*r.permission, "embed");
        assert_eq!(
            r.backend.api_key.as_ref().unwrap().expose(),
            "your_real_api_key_here"
        );

        std::fs::write(
            dir.path().join("routes.yaml"),
            "routes:\n  - path: /proxy/miniai/v2/chat/completions\n    backend_url: http://127.0.0.1:9001\n    backend_path: /x\n",
        )
        .unwrap();
        let e = Settings::load_with_env(&cfg, Vec::new()).unwrap_err();
        assert_eq!(e.key, "routes[0].path");
    }

    #[test]
    fn prefix_routes_are_checked_and_shown_under_their_star_path() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        let routes = |path: &str, backend_path: &str| {
            std::fs::write(
                dir.path().join("routes.yaml"),
                format!(
                    "routes:\n  - path: {path}\n    backend_url: http://127.0.0.1:9001\n    \
                     backend_path: {backend_path}\n    permission: models\n    timeout: 7\n"
                ),
            )
            .unwrap();
        };
        for (path, backend_path) in [
            ("/proxy/openai/*", "/v1"),
            ("/proxy/*", "/"),
            ("/proxy/a/b/*", "/v1/"),
        ] {
            routes(path, backend_path);
            let s = Settings::load_with_env(&cfg, Vec::new()).unwrap();
            let r = &s.routes[path];
            assert_eq!((&*r.permission, &*r.backend.path), ("models", backend_path));
            assert_eq!(r.backend.response_timeout, Duration::from_secs(7));
            let shown = s.redacted_json();
            let shown = shown["routes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["path"] == path)
                .unwrap();
            assert_eq!(shown["backend_path"], backend_path, "{shown}");
        }
        for (path, backend_path, key, want) in [
            (
                "/proxy/openai/**",
                "/v1",
                "path",
                "only allowed as the last segment",
            ),
            (
                "/proxy/*/x",
                "/v1",
                "path",
                "only allowed as the last segment",
            ),
            (
                "/proxy/openai*",
                "/v1",
                "path",
                "only allowed as the last segment",
            ),
            (
                "/proxy/open*/x/*",
                "/v1",
                "path",
                "not a valid prefix route",
            ),
            ("/proxy/openai//*", "/v1", "path", "empty segment"),
            ("/proxy/a/../b/*", "/v1", "path", "'.' or '..'"),
            ("/proxy/%6fpenai/*", "/v1", "path", "no percent-escapes"),
            ("/other/*", "/v1", "path", "must start with /proxy/"),
            ("/proxy/openai/*", "/v1/*", "backend_path", "takes no '*'"),
            ("/proxy/openai/*", "/v1//", "backend_path", "empty segment"),
        ] {
            routes(path, backend_path);
            let e = Settings::load_with_env(&cfg, Vec::new()).unwrap_err();
            assert_eq!(
                e.key,
                format!("routes[0].{key}"),
                "{path} {backend_path}: {e}"
            );
            assert!(e.to_string().contains(want), "{path} {backend_path}: {e}");
        }
        // M-FastGate's first routes format gets a pointer to this one.
        std::fs::write(
            dir.path().join("routes.yaml"),
            "routes:\n  - name: x\n    path_prefix: /api/v1/example\n    targets:\n      - url: http://localhost:8001\n",
        )
        .unwrap();
        // Found beside the config (M-FastGate ships this file as config/routes.yaml), it is
        // ignored with a warning that says how to write it; named by routes_file, it stops the
        // start.
        let s = Settings::load_with_env(&cfg, Vec::new()).unwrap();
        let warning = s
            .warnings
            .iter()
            .find(|w| w.starts_with("ignoring "))
            .unwrap_or_else(|| panic!("no warning in {:?}", s.warnings));
        assert!(warning.contains("path: /proxy/<prefix>/*"), "{warning}");
        assert!(!s.routes.keys().any(|p| p.contains("example")));
        let explicit = dir.path().join("explicit.yaml");
        std::fs::write(&explicit, format!("{SEED}  routes_file: routes.yaml\n")).unwrap();
        let e = Settings::load_with_env(&explicit, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("path: /proxy/<prefix>/*"), "{e}");
        // A FastGate routes file with one M-FastGate-style entry among its routes is FastGate's:
        // the mistake stops the start.
        std::fs::write(
            dir.path().join("routes.yaml"),
            "routes:\n  - path: /proxy/v1/embeddings\n    backend_url: http://127.0.0.1:9001\n    backend_path: /v1/embeddings\n  - path: /proxy/x/*\n    path_prefix: /x\n",
        )
        .unwrap();
        assert!(Settings::load_with_env(&cfg, Vec::new()).is_err());
        // The unified endpoint is one path.
        std::fs::remove_file(dir.path().join("routes.yaml")).unwrap();
        let yaml = SEED.replace(
            "backend_path: \"/miniai/v2/chat/completions\"",
            "backend_path: \"/miniai/v2/*\"",
        );
        assert_ne!(yaml, SEED);
        std::fs::write(&cfg, yaml).unwrap();
        let e = Settings::load_with_env(&cfg, Vec::new()).unwrap_err();
        assert_eq!(e.key, "api_gateway.backend_path", "{e}");
    }

    /// A prefix route forwards every path below its backend path: another route of another
    /// permission (or real key) at or below that path on the same backend is reachable through
    /// it. Warned about at load (check-config, start, reload), naming both routes, no secret.
    #[test]
    fn a_prefix_route_covering_a_stricter_route_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        let load = |routes: &str| {
            std::fs::write(dir.path().join("routes.yaml"), format!("routes:\n{routes}")).unwrap();
            Settings::load_with_env(&cfg, Vec::new()).unwrap().warnings
        };
        let route = |path: &str, url: &str, backend_path: &str, extra: &str| {
            format!(
                "  - path: {path}\n    backend_url: {url}\n    backend_path: {backend_path}\n{extra}"
            )
        };
        let about = |warnings: &[String], a: &str, b: &str| {
            warnings
                .iter()
                .filter(|w| w.contains(a) && w.contains(b))
                .count()
        };
        let openai = route(
            "/proxy/openai/*",
            "http://user:pw-SECRET@127.0.0.1:9001",
            "/v1",
            "    permission: chat\n",
        );
        // The review's case: fine-tuning jobs behind their own permission.
        let w = load(&format!(
            "{openai}{}",
            route(
                "/proxy/ft",
                "http://127.0.0.1:9001/",
                "/v1/fine_tuning/jobs",
                "    permission: files\n"
            )
        ));
        assert_eq!(about(&w, "/proxy/openai/*", "/proxy/ft"), 1, "{w:?}");
        let shown = w.join("\n");
        assert!(
            shown.contains("\"files\"") && shown.contains("\"chat\""),
            "{shown}"
        );
        assert!(shown.contains("own backend_url"), "{shown}");
        assert!(!shown.contains("SECRET") && !shown.contains("your_real_api_key_here"));
        // The same endpoint spelt another way (encoded, in another case, through a base path
        // and the default port), and a longer prefix route of another permission.
        for other in [
            route(
                "/proxy/e",
                "HTTP://127.0.0.1:9001/v1",
                "/%65mbeddings",
                "    permission: embed\n",
            ),
            route(
                "/proxy/e/*",
                "http://127.0.0.1:9001",
                "/V1/embeddings",
                "    permission: embed\n",
            ),
        ] {
            let w = load(&format!("{openai}{other}"));
            assert_eq!(
                about(&w, "/proxy/openai/*", "/proxy/e"),
                1,
                "{other}: {w:?}"
            );
        }
        let w = load(&route(
            "/proxy/p/*",
            "http://127.0.0.1:80/x",
            "/",
            "    permission: chat\n",
        ));
        assert!(w.iter().all(|w| !w.contains("/proxy/p/*")), "{w:?}");
        // The scheme's port written out or not.
        let w = load(&format!(
            "{}{}",
            route(
                "/proxy/p/*",
                "http://127.0.0.1",
                "/x/y",
                "    permission: chat\n"
            ),
            route(
                "/proxy/q",
                "http://127.0.0.1:80",
                "/x/y/z",
                "    permission: z\n"
            )
        ));
        assert_eq!(about(&w, "/proxy/p/*", "/proxy/q"), 1, "{w:?}");
        // Another real key on the same permission.
        let w = load(&format!(
            "{}{}",
            route(
                "/proxy/k/*",
                "http://127.0.0.1:9001",
                "/v1",
                "    real_api_key: sk-a-SECRET\n"
            ),
            route(
                "/proxy/k2",
                "http://127.0.0.1:9001",
                "/v1/x",
                "    real_api_key: sk-b-SECRET\n"
            )
        ));
        assert_eq!(about(&w, "/proxy/k/*", "/proxy/k2"), 1, "{w:?}");
        assert!(w.iter().all(|w| !w.contains("SECRET")), "{w:?}");
        // The unified endpoint (permission chat by default) once a prefix route covers it.
        let w = load(&route(
            "/proxy/miniai/*",
            "http://127.0.0.1:9000",
            "/miniai",
            "    permission: cheap\n",
        ));
        assert_eq!(
            about(
                &w,
                "/proxy/miniai/*",
                "unified endpoint /proxy/miniai/v2/chat/completions"
            ),
            1,
            "{w:?}"
        );
        // A prefix route opening the whole backend.
        let w = load(&route(
            "/proxy/*",
            "http://127.0.0.1:9002",
            "/",
            "    permission: chat\n",
        ));
        assert_eq!(
            about(&w, "/proxy/*", "every path of its backend"),
            1,
            "{w:?}"
        );
        // Not warned: the same permission and key, another port or host, a sibling path.
        for quiet in [
            format!(
                "{openai}{}",
                route(
                    "/proxy/m",
                    "http://127.0.0.1:9001",
                    "/v1/models",
                    "    permission: chat\n"
                )
            ),
            format!(
                "{openai}{}",
                route(
                    "/proxy/ft",
                    "http://127.0.0.1:9002",
                    "/v1/fine_tuning/jobs",
                    "    permission: files\n"
                )
            ),
            format!(
                "{openai}{}",
                route(
                    "/proxy/ft",
                    "http://localhost:9001",
                    "/v1/fine_tuning/jobs",
                    "    permission: files\n"
                )
            ),
            format!(
                "{openai}{}",
                route(
                    "/proxy/ft",
                    "http://127.0.0.1:9001",
                    "/v10/x",
                    "    permission: files\n"
                )
            ),
        ] {
            let w = load(&quiet);
            assert_eq!(about(&w, "/proxy/openai/*", "covers"), 0, "{quiet}: {w:?}");
        }
    }

    #[test]
    fn backend_paths_that_leave_the_backends_path_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        let routes = |path: &str, backend_path: &str| {
            std::fs::write(
                dir.path().join("routes.yaml"),
                format!(
                    "routes:\n  - path: {path}\n    backend_url: http://127.0.0.1:9001\n    \
                     backend_path: \"{backend_path}\"\n"
                ),
            )
            .unwrap();
            Settings::load_with_env(&cfg, Vec::new())
        };
        for path in ["/proxy/x", "/proxy/x/*"] {
            for (backend_path, want) in [
                ("/v1/..", "'.' or '..'"),
                ("/v1/../admin", "'.' or '..'"),
                ("/v1/./x", "'.' or '..'"),
                ("/v1/%2e%2E/admin", "'.' or '..'"),
                ("/v1/.%2e", "'.' or '..'"),
                ("//evil.example/v1", "starts with '//'"),
            ] {
                let e = routes(path, backend_path).unwrap_err();
                assert_eq!(
                    e.key, "routes[0].backend_path",
                    "{path} {backend_path}: {e}"
                );
                assert!(e.to_string().contains(want), "{path} {backend_path}: {e}");
            }
        }
        // A prefix route's backend path is checked as what follows it would be.
        for backend_path in ["/v1;x", "/v1%3Bx", "/%761", "/v1/...", "/v1.", "/v1\\\\x"] {
            let e = routes("/proxy/x/*", backend_path).unwrap_err();
            assert_eq!(e.key, "routes[0].backend_path", "{backend_path}: {e}");
            assert!(
                e.to_string().contains("prefix route"),
                "{backend_path}: {e}"
            );
        }
        for backend_path in ["/v1", "/v1/", "/", "/v1/a.b/c", "/models/gpt-4.1"] {
            routes("/proxy/x/*", backend_path).unwrap();
        }
        for backend_path in ["/v1/chat/completions", "/v1/x;y", "/a%20b"] {
            routes("/proxy/x", backend_path).unwrap();
        }
        // And the unified endpoint's.
        std::fs::remove_file(dir.path().join("routes.yaml")).unwrap();
        for backend_path in ["/v1/../admin", "//evil.example/v1", "/v1/%2E"] {
            let yaml = SEED.replace("/miniai/v2/chat/completions", backend_path);
            std::fs::write(&cfg, yaml).unwrap();
            let e = Settings::load_with_env(&cfg, Vec::new()).unwrap_err();
            assert_eq!(e.key, "api_gateway.backend_path", "{backend_path}: {e}");
        }
    }

    #[test]
    fn the_shipped_configs_still_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        for name in ["development.yaml", "production.example.yaml"] {
            let path = root.join(name);
            let env = [
                (
                    "FASTGATE__SECURITY__ADMIN_TOKEN",
                    "a-long-admin-token-for-the-test-0123",
                ),
                ("FASTGATE__API_GATEWAY__REAL_API_KEY", "sk-test"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
            if let Err(e) = Settings::load_with_env(&path, env) {
                panic!("{name}: {e}");
            }
        }
    }

    #[test]
    fn a_permission_keys_could_not_hold_is_refused() {
        for bad in ["", " chat", "chat ", "*", "llm:*"] {
            let yaml = SEED.replace(
                "  async_audit: true",
                &format!("  async_audit: true\n  permission: \"{bad}\""),
            );
            let e = Settings::from_config(Path::new("test.yaml"), parse(&yaml, &[]).unwrap())
                .unwrap_err();
            assert_eq!(e.key, "api_gateway.permission", "{bad:?}: {e}");
        }
        let yaml = SEED.replace(
            "  async_audit: true",
            "  async_audit: true\n  permission: \"llm:chat\"",
        );
        let s = Settings::from_config(Path::new("test.yaml"), parse(&yaml, &[]).unwrap()).unwrap();
        assert_eq!(s.config.api_gateway.permission, "llm:chat");
        assert!(
            s.warnings.iter().all(|w| !w.contains("permission")),
            "{:?}",
            s.warnings
        );
        // One an imported M-FastGate key may hold, though the admin API would refuse it: loads,
        // with a warning.
        let yaml = SEED.replace(
            "  async_audit: true",
            "  async_audit: true\n  permission: \"llm/chat completions\"",
        );
        let s = Settings::from_config(Path::new("test.yaml"), parse(&yaml, &[]).unwrap()).unwrap();
        assert!(
            s.warnings
                .iter()
                .any(|w| w.starts_with("api_gateway.permission")),
            "{:?}",
            s.warnings
        );
    }

    /// Unquoted secrets YAML would read as numbers or booleans, in spellings whose value would
    /// print differently (`0x1F` is 31, `+123` is 123, `1.50` is 1.5, `True` is true).
    const SECRETS_YAML_READS_AS_OTHER_TYPES: [&str; 22] = [
        "12345678",
        "0x1F",
        "0o17",
        "0b101",
        "+123",
        "-0x1f",
        "0123",
        "-0",
        "1_000",
        "123456789012345678901234567890123456789012",
        "12e3",
        "1.50",
        "8.5e-3",
        ".inf",
        "-.Inf",
        ".NaN",
        "true",
        "True",
        "FALSE",
        "yes",
        "on",
        "2001-12-14",
    ];

    #[test]
    fn unquoted_secrets_are_taken_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        for spelled in SECRETS_YAML_READS_AS_OTHER_TYPES {
            let text = SEED
                .replace("\"admin_secret_token_dev\"", spelled)
                .replace("\"your_real_api_key_here\"", spelled);
            let c = parse(&text, &[]).unwrap_or_else(|e| panic!("{spelled}: {e}"));
            assert_eq!(c.security.admin_token.expose(), spelled);
            assert_eq!(c.api_gateway.real_api_key.unwrap().expose(), spelled);
            // With another key from the environment (merged through a `Value`), likewise.
            let c = parse(&text, &[("FASTGATE__APP__PORT", "9999")]).unwrap();
            assert_eq!(c.security.admin_token.expose(), spelled);
            // M-FastGate's model_routing.app_key and a route's key in the routes file, too.
            let text = format!("{text}model_routing:\n  app_key: {spelled}\n  enabled: true\n");
            let c = parse(&text, &[]).unwrap();
            let app_key = c.model_routing.unwrap().app_key.unwrap();
            assert_eq!(app_key.expose(), spelled);
            std::fs::write(&cfg, &text).unwrap();
            let routes = format!(
                "routes:\n  - path: /proxy/v1/embeddings\n    backend_url: http://127.0.0.1:9000\n    \
                 backend_path: /v1/embeddings\n    real_api_key: {spelled}\n"
            );
            std::fs::write(dir.path().join("routes.yaml"), routes).unwrap();
            let s = Settings::load_with_env(&cfg, Vec::new()).unwrap();
            let key = s.routes["/proxy/v1/embeddings"].backend.api_key.as_ref();
            assert_eq!(key.unwrap().expose(), spelled);
        }
        // The environment still wins over the file.
        let text = SEED.replace("\"admin_secret_token_dev\"", "0x1F");
        let c = parse(&text, &[("FASTGATE__SECURITY__ADMIN_TOKEN", "0x20")]).unwrap();
        assert_eq!(c.security.admin_token.expose(), "0x20");
        let quoted = parse(&SEED.replace("\"admin_secret_token_dev\"", "\"12e3\""), &[]).unwrap();
        assert_eq!(quoted.security.admin_token.expose(), "12e3");
    }

    #[test]
    fn secrets_that_are_not_text_are_refused_without_their_value() {
        for (spelled, needle) in [
            ("[\"s3cr3t-in-a-list\"]", "expected a string"),
            ("{s3cr3t: 1}", "expected a string"),
        ] {
            let e = parse(&SEED.replace("\"admin_secret_token_dev\"", spelled), &[]).unwrap_err();
            let shown = e.to_string();
            assert_eq!(e.key, "security.admin_token", "{shown}");
            assert!(shown.contains(needle), "{spelled}: {shown}");
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
        // YAML's null is no value: the required token is missing, not the text `null`; the
        // optional real key is none (as `""`).
        for null in ["~", "null", "Null", ""] {
            let text = SEED.replace("\"admin_secret_token_dev\"", null);
            let e = parse(&text, &[]).unwrap_err();
            assert_eq!(e.key, "security.admin_token", "{null:?}: {e}");
            assert!(e.message.contains("no value"), "{null:?}: {e}");
            let text = SEED.replace("\"your_real_api_key_here\"", null);
            let c = parse(&text, &[]).unwrap();
            assert!(c.api_gateway.real_api_key.is_none(), "{null:?}");
        }
        // In quotes, `~` is a token like any other.
        let c = parse(&SEED.replace("\"admin_secret_token_dev\"", "\"~\""), &[]).unwrap();
        assert_eq!(c.security.admin_token.expose(), "~");
        // From the environment, the same: `null` was the token `null` (and `""`, from docker's
        // `--env-file`, the two quotes), the real key `null` sent as `Bearer null`.
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        let load = |var: &str, v: &str| Settings::load_with_env(&cfg, [(var.into(), v.into())]);
        let token = "FASTGATE__SECURITY__ADMIN_TOKEN";
        let real_key = "FASTGATE__API_GATEWAY__REAL_API_KEY";
        for null in [
            "~", "null", "Null", "NULL", " null ", "", "  ", "\"\"", "''", " '' ",
        ] {
            let e = load(token, null).unwrap_err();
            assert_eq!(e.key, "security.admin_token", "{null:?}: {e}");
            assert!(e.message.contains("no value"), "{null:?}: {e}");
            assert!(
                e.message.contains(&format!("(set by {token})")),
                "{null:?}: {e}"
            );
            let s = load(real_key, null).unwrap_or_else(|e| panic!("{null:?}: {e}"));
            assert!(s.config.api_gateway.real_api_key.is_none(), "{null:?}");
            assert!(
                s.routes.values().all(|r| r.backend.api_key.is_none()),
                "{null:?}"
            );
        }
        for (var, key) in [
            (token, "security.admin_token"),
            (real_key, "api_gateway.real_api_key"),
        ] {
            for not_text in [
                "[s3cr3t]",
                "{s3cr3t: 1}",
                " [s3cr3t, x]",
                "[s3cr3t",
                "{s3cr3t",
                "\"s3cr3t",
                "'s3cr3t",
                "\"s3cr3t\" # x",
                "\"s3cr3t\"x\"",
            ] {
                let e = load(var, not_text).unwrap_err();
                let shown = e.to_string();
                assert_eq!(e.key, key, "{not_text:?}: {shown}");
                assert!(shown.contains(var), "{not_text:?}: {shown}");
                assert!(!shown.contains("s3cr3t"), "{not_text:?}: {shown}");
            }
        }
        // Integers beyond 64 bits, which YAML's value tree cannot hold (serde's message quoted
        // them, in decimal).
        for (quoted, big) in [
            (
                "\"admin_secret_token_dev\"",
                "123456789012345678901234567890",
            ),
            ("\"admin_secret_token_dev\"", "-9223372036854775809"),
            ("\"your_real_api_key_here\"", "0x1F00000000000000000000"),
        ] {
            let e = parse(&SEED.replace(quoted, big), &[]).unwrap_err();
            let shown = e.to_string();
            assert!(shown.contains("put it in quotes"), "{shown}");
            assert!(
                !shown.contains("1234567890") && !shown.contains("9223372036854775809"),
                "{shown}"
            );
            assert!(
                !shown.contains("0x1F") && !shown.contains("3659"),
                "{shown}"
            );
        }
        // A block scalar ends with a line end: no header could carry that admin token.
        let block = "|\n    s3cr3t-admin-token-on-its-own-line";
        let c = parse(&SEED.replace("\"admin_secret_token_dev\"", block), &[]).unwrap();
        let e = Settings::from_config(Path::new("test.yaml"), c).unwrap_err();
        assert_eq!(e.key, "security.admin_token", "{e}");
        assert!(e.message.contains("control character"), "{e}");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }

    #[test]
    fn python_level_names_are_mapped_and_unknown_ones_refused() {
        assert_eq!(log_filter("INFO").unwrap(), "info");
        assert_eq!(log_filter("WARNING").unwrap(), "warn");
        assert_eq!(log_filter("CRITICAL").unwrap(), "error");
        assert_eq!(
            log_filter("fastgate=DEBUG, warning").unwrap(),
            "fastgate=debug,warn"
        );
        assert_eq!(log_filter("fastgate = debug").unwrap(), "fastgate=debug");
        assert_eq!(
            log_filter("fastgate[req{id=7}]=debug").unwrap(),
            "fastgate[req{id=7}]=debug"
        );
        assert_eq!(log_filter("[req{id=7}]").unwrap(), "[req{id=7}]");
        assert!(log_filter("WARNINGS").unwrap_err().contains("WARNINGS"));
        assert!(log_filter("fastgate=loud").is_err());
        assert!(log_filter(" , ").is_err());
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        let e = Settings::load_with_env(
            &cfg,
            vec![("FASTGATE__LOGGING__LEVEL".into(), "verbose".into())],
        )
        .unwrap_err();
        assert_eq!(e.key, "logging.level");
        // An empty file name from the environment switches a configured file off.
        std::fs::write(&cfg, format!("{SEED}logging:\n  file: logs/x.log\n")).unwrap();
        let s = Settings::load_with_env(
            &cfg,
            vec![("FASTGATE__LOGGING__FILE".into(), String::new())],
        )
        .unwrap();
        assert_eq!(s.config.logging.file, None);
    }

    /// A config file as M-FastGate's own repository ships it (every key its `config.py` knows),
    /// with a real key of its own shape.
    const MFASTGATE_FULL: &str = r#"
app:
  name: "M-FastGate"
  version: "0.0.1"
  debug: true
  host: "0.0.0.0"
  port: 8514
database:
  url: "sqlite:///./app/data/fastgate.db"
  echo: false
logging:
  level: "INFO"
  format: "json"
  file: "logs/fastgate.log"
security:
  admin_token: "admin_secret_token_dev"
  key_prefix: "fg_"
  default_expiry_days: 365
rate_limiting:
  enabled: true
  default_requests_per_minute: 100
cloud_proxy:
  host: "10.101.32.14"
  port: 34094
  base_path: "/openapi/proxy"
model_routing:
  enabled: true
  app_key: "model-routing-app-key-7f3a"
  system_source: "support"
  config_path: "config/model_routes.yaml"
api_gateway:
  backend_url: "http://172.16.99.204:3398"
  backend_path: "/v1/chat/completions"
  real_api_key: "sk-upstream-5b9e"
  timeout: 30
  max_retries: 3
  strip_headers: ["host", "x-api-key", "authorization", "x-forwarded-for", "x-real-ip"]
  strip_body_fields: []
  async_audit: true
  audit_full_request: true
  audit_full_response: true
"#;

    #[test]
    fn every_key_of_mfastgates_own_config_is_accepted_and_the_unused_ones_are_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("development.yaml");
        std::fs::write(&cfg, MFASTGATE_FULL).unwrap();
        let s = Settings::load_with_env(&cfg, Vec::new()).unwrap();
        assert_eq!(s.config.logging.file.as_deref(), Some("logs/fastgate.log"));
        assert_eq!(s.config.logging.format, LogFormat::Json);
        for needle in [
            "max_retries",
            "audit_full_request",
            "rate_limiting",
            "cloud_proxy",
            "model_routing",
        ] {
            assert!(
                s.warnings.iter().any(|w| w.contains(needle)),
                "no warning about {needle}: {:?}",
                s.warnings
            );
        }
        // The ignored sections are never shown (model_routing holds a key), nor debug-printed.
        let shown = s.redacted_json().to_string();
        assert!(!shown.contains("model-routing-app-key-7f3a"), "{shown}");
        assert!(!shown.contains("sk-upstream-5b9e"), "{shown}");
        let debug = format!("{:?}", s.config);
        assert!(!debug.contains("model-routing-app-key-7f3a"), "{debug}");
        assert!(!debug.contains("sk-upstream-5b9e"), "{debug}");
        // An unknown key inside an ignored section is still a typo.
        std::fs::write(
            &cfg,
            MFASTGATE_FULL.replace("system_source", "system_sauce"),
        )
        .unwrap();
        let e = Settings::load_with_env(&cfg, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("system_sauce"), "{e}");

        // Fields to strip from bodies cannot be silently forwarded.
        std::fs::write(
            &cfg,
            MFASTGATE_FULL.replace("strip_body_fields: []", "strip_body_fields: [\"user\"]"),
        )
        .unwrap();
        let e = Settings::load_with_env(&cfg, Vec::new()).unwrap_err();
        assert_eq!(e.key, "api_gateway.strip_body_fields");
        // A typo is still an error.
        std::fs::write(&cfg, MFASTGATE_FULL.replace("max_retries", "max_retrys")).unwrap();
        let e = Settings::load_with_env(&cfg, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("max_retrys"), "{e}");
    }

    #[test]
    fn async_audit_false_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        let s = Settings::load_with_env(&cfg, Vec::new()).unwrap();
        assert!(
            !s.warnings.iter().any(|w| w.contains("async_audit")),
            "{:?}",
            s.warnings
        );
        let s = Settings::load_with_env(
            &cfg,
            vec![("FASTGATE__API_GATEWAY__ASYNC_AUDIT".into(), "false".into())],
        )
        .unwrap();
        assert!(
            s.warnings.iter().any(|w| w.contains("async_audit")),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn a_foreign_routes_yaml_beside_the_config_is_ignored_but_an_explicit_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        std::fs::write(dir.path().join("routes.yaml"), "miniai:\n  prefix: /v2\n").unwrap();
        let s = Settings::load_with_env(&cfg, Vec::new()).unwrap();
        assert_eq!(s.routes.len(), 1);
        assert!(s.routes_path.is_none());
        assert!(s.warnings[0].contains("routes.yaml"), "{:?}", s.warnings);
        let e = Settings::load_with_env(
            &cfg,
            vec![(
                "FASTGATE__API_GATEWAY__ROUTES_FILE".into(),
                dir.path().join("routes.yaml").display().to_string(),
            )],
        )
        .unwrap_err();
        assert!(e.message.contains("miniai"), "{e}");
    }

    #[test]
    fn a_relative_path_from_the_environment_is_relative_to_the_working_directory() {
        // Tests run in the package's directory, `server/`: `../config/routes.yaml` is the
        // shipped one from there, and nothing beside a config in a temporary directory.
        let cwd = std::env::current_dir().unwrap();
        let shipped = cwd.join("../config/routes.yaml");
        assert!(shipped.is_file());
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        let var = |k: &str, v: &str| (format!("FASTGATE__API_GATEWAY__{k}"), v.to_owned());
        // `FASTGATE_CONFIG=/dev/null`, everything by environment, resolved it to /dev/….
        let s = Settings::load_with_env(&cfg, [var("ROUTES_FILE", "../config/routes.yaml")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.routes_path.as_deref(), Some(shipped.as_path()));
        assert!(s.routes.contains_key("/proxy/v1/chat/completions"));
        // Also quoted, and the TLS files likewise (made absolute: /admin/config shows them so).
        let c = parse(
            SEED,
            &[
                ("FASTGATE__API_GATEWAY__ROUTES_FILE", "\"r.yaml\""),
                ("FASTGATE__API_GATEWAY__TLS__CA_FILE", "ca.pem"),
                ("FASTGATE__API_GATEWAY__TLS__CLIENT_CERT_FILE", "tls/c.pem"),
                ("FASTGATE__API_GATEWAY__TLS__CLIENT_KEY_FILE", "/abs/k.pem"),
            ],
        )
        .unwrap();
        let tls = &c.api_gateway.tls;
        let at = |p: &str| Some(cwd.join(p).display().to_string());
        assert_eq!(c.api_gateway.routes_file, at("r.yaml"));
        assert_eq!(tls.ca_file, at("ca.pem"));
        assert_eq!(tls.client_cert_file, at("tls/c.pem"));
        assert_eq!(tls.client_key_file.as_deref(), Some("/abs/k.pem"));
        // `""` is still none; written in the file, a relative path is still the file's
        // directory's.
        let c = parse(SEED, &[("FASTGATE__API_GATEWAY__ROUTES_FILE", "")]).unwrap();
        assert_eq!(c.api_gateway.routes_file.as_deref(), Some(""));
        let text = format!("{SEED}  routes_file: r.yaml\n  tls:\n    ca_file: ca.pem\n");
        let c = parse(&text, &[("FASTGATE__APP__PORT", "1")]).unwrap();
        assert_eq!(c.api_gateway.routes_file.as_deref(), Some("r.yaml"));
        assert_eq!(c.api_gateway.tls.ca_file.as_deref(), Some("ca.pem"));
        std::fs::write(dir.path().join("r.yaml"), "routes: []\n").unwrap();
        std::fs::write(&cfg, &text).unwrap();
        let s = Settings::load_with_env(&cfg, []).unwrap();
        assert_eq!(s.routes_path, Some(dir.path().join("r.yaml")));
    }

    #[test]
    fn a_real_key_that_cannot_be_a_header_stops_the_start_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        let env = |v: &str| {
            vec![(
                "FASTGATE__API_GATEWAY__REAL_API_KEY".to_owned(),
                v.to_owned(),
            )]
        };
        let e = Settings::load_with_env(&cfg, env("sk-SECRET-1\n")).unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("api_gateway.real_api_key"), "{shown}");
        assert!(
            shown.contains("FASTGATE__API_GATEWAY__REAL_API_KEY"),
            "{shown}"
        );
        assert!(!shown.contains("SECRET"), "{shown}");
        // A route's own key, likewise.
        let routes = "routes:\n  - path: /proxy/v1/embeddings\n    backend_url: http://127.0.0.1:9000\n    \
                      backend_path: /v1/embeddings\n    real_api_key: \"sk-SECRET-2\\r\"\n";
        std::fs::write(dir.path().join("routes.yaml"), routes).unwrap();
        let e = Settings::load_with_env(&cfg, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("routes[0].real_api_key"), "{e}");
        assert!(!e.to_string().contains("SECRET"), "{e}");
        std::fs::remove_file(dir.path().join("routes.yaml")).unwrap();
        // An empty one means none (a backend without keys).
        let empty = SEED.replace("\"your_real_api_key_here\"", "\"\"");
        assert_ne!(empty, SEED);
        std::fs::write(&cfg, empty).unwrap();
        let s = Settings::load_with_env(&cfg, Vec::new()).unwrap();
        assert!(s.routes.values().all(|r| r.backend.api_key.is_none()));
    }

    #[test]
    fn weak_admin_tokens_are_warned_about_without_being_shown() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        let token = |v: &str| vec![("FASTGATE__SECURITY__ADMIN_TOKEN".to_owned(), v.to_owned())];
        let warned = |s: &Settings| {
            s.warnings
                .iter()
                .any(|w| w.contains("security.admin_token"))
        };
        // The seed's own token is M-FastGate's public sample.
        let s = Settings::load_with_env(&cfg, Vec::new()).unwrap();
        assert!(warned(&s), "{:?}", s.warnings);
        assert!(
            !s.warnings
                .iter()
                .any(|w| w.contains("admin_secret_token_dev"))
        );
        for weak in ["short-Tok3n", "set-FASTGATE__SECURITY__ADMIN_TOKEN"] {
            let s = Settings::load_with_env(&cfg, token(weak)).unwrap();
            assert!(warned(&s), "{weak}: {:?}", s.warnings);
            assert!(
                !s.warnings.iter().any(|w| w.contains(weak)),
                "{:?}",
                s.warnings
            );
        }
        let s = Settings::load_with_env(&cfg, token("9f2c4e7a1b8d3f6e0a5c2b9d")).unwrap();
        assert!(!warned(&s), "{:?}", s.warnings);
        // The production example does not start without a token of its own.
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../config/production.example.yaml");
        let e = Settings::load_with_env(&example, Vec::new()).unwrap_err();
        assert!(
            e.to_string().contains("FASTGATE__SECURITY__ADMIN_TOKEN"),
            "{e}"
        );
    }

    #[test]
    fn a_route_with_an_empty_real_key_sends_none_and_one_without_inherits() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        let routes = "routes:\n  - path: /proxy/own\n    backend_url: http://127.0.0.1:9000\n    \
                      backend_path: /v1/a\n    real_api_key: \"\"\n  - path: /proxy/inherit\n    \
                      backend_url: http://127.0.0.1:9000\n    backend_path: /v1/b\n";
        std::fs::write(dir.path().join("routes.yaml"), routes).unwrap();
        let s = Settings::load_with_env(&cfg, Vec::new()).unwrap();
        assert!(s.routes["/proxy/own"].backend.api_key.is_none());
        let inherited = s.routes["/proxy/inherit"].backend.api_key.as_ref().unwrap();
        assert_eq!(inherited.expose(), "your_real_api_key_here");
    }

    #[test]
    fn a_value_refused_after_parsing_names_the_variable_that_set_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        for (var, value) in [
            ("FASTGATE__API_GATEWAY__TIMEOUT", "0"),
            ("FASTGATE__DATABASE__URL", "mysql://db/x"),
            ("FASTGATE__LOGGING__LEVEL", "loud"),
            ("FASTGATE__APP__TRUSTED_PROXIES", "[x]"),
        ] {
            let e = Settings::load_with_env(&cfg, vec![(var.to_owned(), value.to_owned())])
                .unwrap_err();
            assert!(e.to_string().contains(var), "{var}: {e}");
        }
        // Named as it was set (names are read in any case).
        let e = Settings::load_with_env(
            &cfg,
            vec![("fastgate__Api_Gateway__timeout".to_owned(), "0".to_owned())],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("(set by fastgate__Api_Gateway__timeout)"),
            "{e}"
        );
        // A hint naming the variable gives way to the variable that did set it.
        let e = Settings::load_with_env(
            &cfg,
            vec![("FASTGATE__security__admin_token".to_owned(), String::new())],
        )
        .unwrap_err();
        assert!(
            e.message
                .ends_with("(set by FASTGATE__security__admin_token)"),
            "{e}"
        );
        assert!(!e.message.contains("set here"), "{e}");
        // Set in the file: the file is named, no variable.
        std::fs::write(&cfg, SEED.replace("timeout: 60", "timeout: 0")).unwrap();
        let e = Settings::load_with_env(&cfg, Vec::new()).unwrap_err();
        assert!(!e.to_string().contains("FASTGATE__"), "{e}");
    }

    #[test]
    fn a_typo_in_fastgates_own_routes_yaml_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        let routes = "routes:\n  - name: extra\n    path: /proxy/v1/embeddings\n    \
                      backend_url: http://127.0.0.1:9000\n    backend_path: /v1/embeddings\n";
        std::fs::write(dir.path().join("routes.yaml"), routes).unwrap();
        let s = Settings::load_with_env(&cfg, Vec::new()).unwrap();
        assert_eq!(s.routes.len(), 2);
        // `permisions`: refused with the file, line and key named, not ignored with a warning.
        let typo = format!("{routes}    permisions: chat\n");
        std::fs::write(dir.path().join("routes.yaml"), typo).unwrap();
        let e = Settings::load_with_env(&cfg, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("permisions"), "{e}");
        assert!(e.file.ends_with("routes.yaml"), "{e}");
        // Indentation that does not even parse, likewise.
        let broken = routes.replace("    backend_url", "  backend_url");
        std::fs::write(dir.path().join("routes.yaml"), broken).unwrap();
        assert!(Settings::load_with_env(&cfg, Vec::new()).is_err());
        // A route without its backend_url, likewise.
        let missing = routes.replace("    backend_url: http://127.0.0.1:9000\n", "");
        std::fs::write(dir.path().join("routes.yaml"), missing).unwrap();
        let e = Settings::load_with_env(&cfg, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("backend_url"), "{e}");
    }

    #[test]
    fn env_strings_are_taken_verbatim() {
        let c = parse(
            SEED,
            &[
                ("FASTGATE__SECURITY__ADMIN_TOKEN", "s3cr3t #tail-part"),
                ("FASTGATE__API_GATEWAY__REAL_API_KEY", "&anchor 'q' "),
            ],
        )
        .unwrap();
        assert_eq!(c.security.admin_token.expose(), "s3cr3t #tail-part");
        assert_eq!(c.api_gateway.real_api_key.unwrap().expose(), "&anchor 'q' ");
        // What YAML would read as something else than its text, unquoted in the file, is the
        // text (as the file's secrets are), in the environment too; no comment, anchor or tag.
        let extra = [
            "abc:def", "#x", "a: b", "*alias", "!tag x", "|", "- x", "x\"y'",
        ];
        for spelled in SECRETS_YAML_READS_AS_OTHER_TYPES.iter().chain(&extra) {
            let c = parse(
                SEED,
                &[
                    ("FASTGATE__SECURITY__ADMIN_TOKEN", spelled),
                    ("FASTGATE__API_GATEWAY__REAL_API_KEY", spelled),
                    ("FASTGATE__APP__NAME", spelled),
                ],
            )
            .unwrap_or_else(|e| panic!("{spelled}: {e}"));
            assert_eq!(c.security.admin_token.expose(), *spelled);
            assert_eq!(c.api_gateway.real_api_key.unwrap().expose(), *spelled);
            assert_eq!(c.app.name, *spelled);
        }
        // A value in quotes is the quoted string, as in the file (docker's `--env-file` keeps
        // the quotes of `KEY="…"`): to mean `null` or `~`, or to keep spaces or a `[`.
        for (spelled, text) in [
            ("\"abc\"", "abc"),
            ("'abc'", "abc"),
            ("\"null\"", "null"),
            ("'~'", "~"),
            ("  \"[x]\" ", "[x]"),
            ("'it''s #1'", "it's #1"),
            ("\"a\\u0041\"", "aA"),
            ("\"0x1F\"", "0x1F"),
        ] {
            let c = parse(SEED, &[("FASTGATE__API_GATEWAY__REAL_API_KEY", spelled)])
                .unwrap_or_else(|e| panic!("{spelled}: {e}"));
            assert_eq!(
                c.api_gateway.real_api_key.unwrap().expose(),
                text,
                "{spelled}"
            );
        }
        // And where a key wants a number, a boolean or a list, a quoted value is a string, as
        // in the file.
        let e = parse(SEED, &[("FASTGATE__APP__PORT", "\"9999\"")]).unwrap_err();
        assert_eq!(e.key, "app.port", "{e}");
        let c = parse(SEED, &[("FASTGATE__APP__CORS_ALLOW_ORIGINS", "[]")]).unwrap();
        assert!(c.app.cors_allow_origins.is_empty());
        // An empty value is the empty string (`FASTGATE__LOGGING__FILE=`: none), also for a
        // string that is not optional.
        let c = parse(SEED, &[("FASTGATE__APP__NAME", "")]).unwrap();
        assert_eq!(c.app.name, "");
    }

    #[test]
    fn an_admin_token_with_spaces_around_it_is_refused_without_being_shown() {
        // Header values are read without the spaces around them: such a token never matched.
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        for (text, env) in [
            (
                SEED.replace("admin_secret_token_dev", " s3cr3t-admin-token-0123"),
                None,
            ),
            (
                SEED.replace("admin_secret_token_dev", "s3cr3t-admin-token-0123  "),
                None,
            ),
            (SEED.to_owned(), Some("s3cr3t-admin-token-0123 ")),
            (SEED.to_owned(), Some("\" s3cr3t-admin-token-0123\"")),
        ] {
            std::fs::write(&cfg, &text).unwrap();
            let env = env.map(|v| ("FASTGATE__SECURITY__ADMIN_TOKEN".to_owned(), v.to_owned()));
            let e = Settings::load_with_env(&cfg, env.clone()).unwrap_err();
            let shown = e.to_string();
            assert_eq!(e.key, "security.admin_token", "{shown}");
            assert!(shown.contains("spaces around it"), "{shown}");
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert_eq!(
                shown.contains("FASTGATE__SECURITY__ADMIN_TOKEN"),
                env.is_some(),
                "{shown}"
            );
        }
        // A real key keeps them (a backend reads its header without them, as FastGate does).
        std::fs::write(&cfg, SEED).unwrap();
        let env = [(
            "FASTGATE__API_GATEWAY__REAL_API_KEY".to_owned(),
            " sk-x ".to_owned(),
        )];
        let s = Settings::load_with_env(&cfg, env).unwrap();
        assert_eq!(
            s.config.api_gateway.real_api_key.unwrap().expose(),
            " sk-x "
        );
    }

    #[test]
    fn a_routes_real_key_from_the_environment_is_read_as_a_config_variable() {
        assert_eq!(route_key("sk-abc #1").unwrap().expose(), "sk-abc #1");
        assert_eq!(route_key("\"sk-abc\"").unwrap().expose(), "sk-abc");
        assert_eq!(route_key("'null'").unwrap().expose(), "null");
        for none in ["", "\"\"", "''", "null", "~", " "] {
            let e = route_key(none).map(|_| ()).unwrap_err();
            assert!(e.contains("no value"), "{none:?}: {e}");
        }
        for not_text in ["[sk]", "{sk: 1}", "\"sk"] {
            assert!(route_key(not_text).is_err(), "{not_text:?}");
        }
    }

    /// A key written in `real_api_key_env` (instead of `real_api_key`), or pasted into a number
    /// field, was quoted back in the error (on the console and, at a reload, in the log file).
    #[test]
    fn a_key_in_the_wrong_field_is_not_quoted_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dev.yaml");
        std::fs::write(&cfg, SEED).unwrap();
        let with_env_name = |name: &str| {
            std::fs::write(
                dir.path().join("routes.yaml"),
                format!(
                    "routes:\n  - path: /proxy/emb\n    backend_url: http://127.0.0.1:9\n    \
                     backend_path: /v1/embeddings\n    real_api_key_env: {name}\n"
                ),
            )
            .unwrap();
            Settings::load_with_env(&cfg, Vec::new())
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        for secret in [
            "sk-proj-ENVMISTAKE-abc123",
            "sk_live_ENVMISTAKE123",
            "9ENVMISTAKE",
        ] {
            let e = with_env_name(secret);
            assert!(!e.contains("ENVMISTAKE"), "{e}");
            assert!(e.contains("real_api_key_env"), "{e}");
        }
        // A variable's conventional name is still shown, so that the operator can set it.
        let e = with_env_name("FASTGATE_TEST_UNSET_VARIABLE_7F3A");
        assert!(
            e.contains("FASTGATE_TEST_UNSET_VARIABLE_7F3A is not set"),
            "{e}"
        );
        // A string where a number belongs, from the file or from the environment.
        let e = parse(&SEED.replace("timeout: 60", "timeout: sk-FILESECRET"), &[]).unwrap_err();
        assert!(!e.to_string().contains("FILESECRET"), "{e}");
        assert!(e.to_string().contains("a string (not shown)"), "{e}");
        let e = parse(SEED, &[("FASTGATE__API_GATEWAY__TIMEOUT", "sk-ENVSECRET")]).unwrap_err();
        assert!(!e.to_string().contains("ENVSECRET"), "{e}");
    }

    #[test]
    fn backend_and_database_passwords_are_redacted_everywhere() {
        let text = SEED
            .replace(
                "http://127.0.0.1:9000",
                "http://bkuser:bkPASSWORD@127.0.0.1:9000",
            )
            .replace(
                "sqlite:///./fastgate.db",
                "postgresql://fg@127.0.0.1/db?password=pgPASSWORD",
            );
        let c = parse(&text, &[]).unwrap();
        let s = Settings::from_config(Path::new("/x/dev.yaml"), c).unwrap();
        let shown = format!("{} {:?} {:?}", s.redacted_json(), s.config, s);
        assert!(
            !shown.contains("bkPASSWORD") && !shown.contains("pgPASSWORD"),
            "{shown}"
        );
    }

    #[test]
    fn redacts_url_passwords() {
        assert_eq!(
            redact_url_password("postgres://u:p@h:5432/db"),
            "postgres://u:******@h:5432/db"
        );
        assert_eq!(redact_url_password("sqlite:///./x.db"), "sqlite:///./x.db");
    }
}
