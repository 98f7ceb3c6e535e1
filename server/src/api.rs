//! The admin API (`/admin/...`) and `/health`, as a typed poem-openapi service.
//!
//! The admin token itself is checked by [`crate::guard`] before a request reaches these handlers;
//! the security schemes here document the three ways to present it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, FixedOffset, Offset, SecondsFormat, Utc};
use fastgate_layer::audit::SpoolStats;
use fastgate_store::{
    AuditFilter, AuditRecord, KeyFilter, KeyRecord, KeyUpdate, MetricsWindow, NewKey, Period,
    PeriodMetrics, StoreError,
};
use poem_openapi::auth::{ApiKey, Bearer};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, ResponseContent, SecurityScheme, Tags};

use crate::export;

use crate::state::AppState;

// === security schemes (documentation; the guard enforces them) ===

/// Admin token in the `token` query parameter (M-FastGate's way).
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_name = "token", key_in = "query")]
#[allow(dead_code)]
pub(crate) struct AdminQuery(ApiKey);

/// Admin token in the `X-Admin-Token` header.
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_name = "X-Admin-Token", key_in = "header")]
#[allow(dead_code)]
pub(crate) struct AdminHeader(ApiKey);

/// Admin token as `Authorization: Bearer <token>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
#[allow(dead_code)]
pub(crate) struct AdminBearer(Bearer);

/// Any one of the three ways to present the admin token.
#[derive(SecurityScheme)]
#[allow(dead_code)]
pub(crate) enum AdminAuth {
    /// `?token=`
    Query(AdminQuery),
    /// `X-Admin-Token`
    Header(AdminHeader),
    /// `Authorization: Bearer`
    Bearer(AdminBearer),
}

#[derive(Tags)]
enum ApiTags {
    /// Gateway API keys
    Keys,
    /// Audit records of proxied requests
    Logs,
    /// Aggregated metrics for the dashboard
    Metrics,
    /// Health and configuration
    System,
}

// === shared objects ===

/// OpenAI-shaped error body.
#[derive(Object, Debug)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Details of an error.
#[derive(Object, Debug)]
pub struct ErrorDetail {
    /// Human-readable message (never contains a secret).
    pub message: String,
    /// Always `fastgate_error`.
    #[oai(rename = "type")]
    pub kind: String,
    /// Stable machine-readable code.
    pub code: String,
}

impl ErrorBody {
    /// Build an error body.
    pub fn new(code: &str, message: impl Into<String>) -> Json<Self> {
        Json(Self {
            error: ErrorDetail {
                message: message.into(),
                kind: fastgate_layer::error::ERROR_TYPE.into(),
                code: code.into(),
            },
        })
    }
}

/// RFC 3339 in UTC with milliseconds, as the admin API writes times (the CLI too).
pub fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(name: &str, s: &str) -> Result<SystemTime, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| SystemTime::from(t.with_timezone(&Utc)))
        .map_err(|_| {
            format!(
                "{name} must be an RFC 3339 timestamp with a UTC offset, e.g. 2026-01-31T08:00:00Z"
            )
        })
}

/// A key's `expires_at`: an RFC 3339 timestamp whose UTC instant lies in the years 1970–9999
/// (year 0 was accepted and then answered as `-0001-12-31T…`, which no RFC 3339 parser reads:
/// a generated client failed on the whole list of keys).
fn parse_expiry(s: &str) -> Result<SystemTime, String> {
    let t = parse_time("expires_at", s)?;
    let utc = DateTime::<Utc>::from(t);
    if (1970..=9999).contains(&chrono::Datelike::year(&utc)) {
        Ok(t)
    } else {
        Err("expires_at must lie between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z".into())
    }
}

/// `since` / `start_time` and `until` / `end_time`, each parsed under the name the caller used;
/// FastGate's and M-FastGate's name for one bound may both be given when they name the same
/// instant.
fn time_bounds(
    [since, start_time]: [Option<String>; 2],
    [until, end_time]: [Option<String>; 2],
) -> Result<(Option<SystemTime>, Option<SystemTime>), String> {
    let time = |name: &str, v: Option<String>| {
        v.map(|s| parse_time(name, &unescaped_plus(&s))).transpose()
    };
    let since = either(
        "since",
        "start_time",
        time("since", since)?,
        time("start_time", start_time)?,
    )?;
    let until = either(
        "until",
        "end_time",
        time("until", until)?,
        time("end_time", end_time)?,
    )?;
    Ok((since, until))
}

/// A time from a query string whose `+08:00` offset was written unescaped and so arrived as
/// ` 08:00`: that one space (six characters from the end, before `HH:MM`) is read as `+`. A
/// space between date and time, which RFC 3339 allows, stays.
fn unescaped_plus(s: &str) -> std::borrow::Cow<'_, str> {
    let b = s.as_bytes();
    let n = b.len();
    let is_offset = n > 6
        && b[n - 6] == b' '
        && b[n - 5..n - 3].iter().all(u8::is_ascii_digit)
        && b[n - 3] == b':'
        && b[n - 2..].iter().all(u8::is_ascii_digit);
    if is_offset {
        std::borrow::Cow::Owned(format!("{}+{}", &s[..n - 6], &s[n - 5..]))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// A parameter that FastGate calls `name` and M-FastGate called `alias`: either may be given, both
/// only with the same value (an alias is never silently ignored).
fn either<T: PartialEq>(
    name: &str,
    alias: &str,
    value: Option<T>,
    alias_value: Option<T>,
) -> Result<Option<T>, String> {
    match (value, alias_value) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "{name} and {alias} (M-FastGate's name for it) differ; give one of them"
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// The record filters `GET /admin/logs` and `GET /admin/logs/export` share, as given (empty
/// values count as absent).
struct LogFilters {
    key_id: Option<String>,
    source_path: Option<String>,
    status: Option<String>,
    status_code: Option<u16>,
    method: Option<String>,
    is_stream: Option<bool>,
    model: Option<String>,
    path: Option<String>,
    /// `[[since, start_time], [until, end_time]]`.
    times: [[Option<String>; 2]; 2],
    api_key: Option<String>,
}

impl LogFilters {
    /// The store's filter (first page, no cursor or offset), or the message of a 400.
    fn into_filter(self) -> Result<AuditFilter, String> {
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        if nonempty(self.api_key).is_some() {
            return Err("api_key is not accepted: a key's secret does not belong in a URL; filter by key_id (GET /admin/keys lists the ids)".into());
        }
        let status_class = match nonempty(self.status) {
            None => None,
            Some(s) => match s.to_ascii_lowercase().as_str() {
                "2xx" => Some(2),
                "3xx" => Some(3),
                "4xx" => Some(4),
                "5xx" => Some(5),
                _ => return Err("status must be 2xx, 3xx, 4xx or 5xx".into()),
            },
        };
        if let (Some(class), Some(code)) = (status_class, self.status_code)
            && code / 100 != class
        {
            return Err(format!(
                "status_code {code} is outside the status class {class}xx"
            ));
        }
        let [since, until] = self.times;
        let (since, until) = time_bounds(since.map(nonempty), until.map(nonempty))?;
        Ok(AuditFilter {
            key_id: nonempty(self.key_id),
            source_path: nonempty(self.source_path),
            status_class,
            status: self.status_code,
            method: nonempty(self.method).map(|m| m.to_ascii_uppercase()),
            is_stream: self.is_stream,
            model: nonempty(self.model),
            path: nonempty(self.path),
            stored_by: None,
            since,
            until,
            cursor: None,
            offset: 0,
            limit: 50,
        })
    }
}

/// A gateway API key (never the key itself, only its display form).
#[derive(Object, Debug)]
pub struct KeyInfo {
    /// Public key id, safe to log.
    pub id: String,
    /// Optional label.
    #[oai(nullable)]
    pub name: Option<String>,
    /// Owner / tenant label.
    pub source_path: String,
    /// Permissions, e.g. `chat`.
    pub permissions: Vec<String>,
    /// Shortened form for display: prefix, first characters, last four.
    pub display: String,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
    /// Expiry (RFC 3339), or null for never.
    #[oai(nullable)]
    pub expires_at: Option<String>,
    /// Whether the key is enabled.
    pub active: bool,
    /// `active`, `disabled` or `expired`.
    pub status: String,
    /// Last successful use (RFC 3339), updated in batches.
    #[oai(nullable)]
    pub last_used_at: Option<String>,
    /// Requests made with this key, updated in batches.
    pub request_count: u64,
    /// M-FastGate's name for `id`.
    #[oai(deprecated)]
    pub key_id: String,
    /// M-FastGate's name for `active`.
    #[oai(deprecated)]
    pub is_active: bool,
    /// M-FastGate's name for `request_count`.
    #[oai(deprecated)]
    pub usage_count: u64,
}

impl KeyInfo {
    fn from_record(r: KeyRecord, now: SystemTime) -> Self {
        Self {
            status: r.status(now).to_owned(),
            key_id: r.id.clone(),
            id: r.id,
            name: r.name,
            source_path: r.source_path,
            permissions: r.permissions,
            display: r.display,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            expires_at: r.expires_at.map(rfc3339),
            active: r.active,
            last_used_at: r.last_used_at.map(rfc3339),
            request_count: r.request_count,
            is_active: r.active,
            usage_count: r.request_count,
        }
    }
}

/// The answer to a deletion (M-FastGate's shape: a message).
#[derive(Debug, Object)]
pub struct DeletedKey {
    /// `API key deleted`.
    pub message: String,
}

/// A key together with its secret, shown this once.
#[derive(Object)]
pub struct CreatedKey {
    /// The key's details.
    #[oai(flatten)]
    pub key: KeyInfo,
    /// The full gateway key. It is not stored and cannot be shown again.
    pub api_key: String,
    /// M-FastGate's name for `api_key` (the same secret, in this answer only).
    #[oai(deprecated)]
    pub key_value: String,
}

impl CreatedKey {
    fn new(key: KeyInfo, secret: String) -> Self {
        Self {
            key,
            key_value: secret.clone(),
            api_key: secret,
        }
    }
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("key", &self.key)
            .field("api_key", &"******")
            .field("key_value", &"******")
            .finish()
    }
}

/// Body of `POST /admin/keys` (M-FastGate's fields, plus `name` and `never_expires`). An unknown
/// field is a 400: a misspelt one must not be dropped without a word.
#[derive(Object, Debug)]
#[oai(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Owner / tenant label, e.g. `user1`.
    #[oai(validator(min_length = 1, max_length = 200))]
    pub source_path: String,
    /// Permissions; defaults to the one the unified endpoint needs (`api_gateway.permission`,
    /// `chat` unless configured otherwise).
    #[oai(validator(max_items = 32))]
    pub permissions: Option<Vec<String>>,
    /// Days until expiry; defaults to `security.default_expiry_days`.
    #[oai(validator(minimum(value = "1"), maximum(value = "36500")))]
    pub expires_days: Option<i64>,
    /// Create a key that never expires (conflicts with `expires_days`).
    pub never_expires: Option<bool>,
    /// Optional label.
    #[oai(validator(max_length = 200))]
    pub name: Option<String>,
    /// M-FastGate's per-key limit: accepted and not enforced (M-FastGate only stored it).
    #[oai(deprecated)]
    pub rate_limit: Option<i64>,
}

/// Optional body of `POST /admin/keys/{id}/rotate`, the same as its query parameter. An unknown
/// field is a 400 (a misspelt grace period must not cut the old key off without a word). Read
/// by hand: poem-openapi's JSON payload refuses a request without `Content-Type` (a bare `curl
/// -X POST`), so the spec declares it in [`crate::spec`].
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RotateKeyRequest {
    grace_seconds: Option<u64>,
}

/// Longest grace period a rotation takes (30 days).
const MAX_GRACE_SECONDS: u64 = 2_592_000;

/// How long a dropped or lost audit record keeps `/health` degraded: long enough for a
/// probe polling every few seconds to see it, short enough to clear once the cause has gone.
const LOSS_DEGRADES_FOR: Duration = Duration::from_secs(60);

/// Every reason `/health` can give for `degraded`, in the order it lists them.
pub(crate) const HEALTH_REASONS: [&str; 5] = [
    "draining",
    "database_unreachable",
    "audit_writes_failing",
    "audit_records_lost",
    "audit_spool_unusable",
];

/// The values of `/health`'s `audit.spool`.
pub(crate) const SPOOL_STATES: [&str; 3] = ["active", "none", "unusable"];

/// The grace period in a rotate body: `None` for no body (or `null`, `{}`).
fn rotate_body_grace(raw: &[u8]) -> Result<Option<u64>, String> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let body: Option<RotateKeyRequest> = serde_json::from_slice(raw)
        .map_err(|e| format!("the body is not a rotate request: {e}"))?;
    let grace = body.and_then(|b| b.grace_seconds);
    if grace.is_some_and(|g| g > MAX_GRACE_SECONDS) {
        return Err(format!("grace_seconds must be at most {MAX_GRACE_SECONDS}"));
    }
    Ok(grace)
}

/// Body of `PATCH` (or `PUT`) `/admin/keys/{id}`: every field optional. An unknown field is a
/// 400: a misspelt one must not leave the key unchanged without a word.
#[derive(Object, Debug)]
#[oai(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    /// New label (empty string clears it).
    #[oai(validator(max_length = 200))]
    pub name: Option<String>,
    /// New owner / tenant label.
    #[oai(validator(min_length = 1, max_length = 200))]
    pub source_path: Option<String>,
    /// New permissions.
    #[oai(validator(max_items = 32))]
    pub permissions: Option<Vec<String>>,
    /// New expiry, in days from now.
    #[oai(validator(minimum(value = "1"), maximum(value = "36500")))]
    pub expires_days: Option<i64>,
    /// Remove the expiry.
    pub never_expires: Option<bool>,
    /// New expiry as a point in time (RFC 3339 with a UTC offset; M-FastGate's field). A time in
    /// the past expires the key at once. Conflicts with `expires_days` and `never_expires`.
    pub expires_at: Option<String>,
    /// Enable or disable the key (takes effect at once).
    pub active: Option<bool>,
    /// M-FastGate's name for `active`.
    #[oai(deprecated)]
    pub is_active: Option<bool>,
    /// M-FastGate's per-key limit: accepted and not enforced (M-FastGate only stored it).
    #[oai(deprecated)]
    pub rate_limit: Option<i64>,
}

/// A page of keys.
#[derive(Object, Debug)]
pub struct KeyList {
    /// The keys, newest first.
    pub items: Vec<KeyInfo>,
    /// Keys matching the filters.
    pub total: u64,
    /// Page size used.
    pub limit: u32,
    /// Offset used.
    pub offset: u32,
}

/// One audit record.
#[derive(Object, Debug)]
pub struct AuditEntry {
    /// Request id, as in the `X-Request-Id` header.
    pub request_id: String,
    /// When the request arrived (RFC 3339).
    pub timestamp: String,
    /// Public id of the key used, if any.
    #[oai(nullable)]
    pub key_id: Option<String>,
    /// The key's owner label.
    #[oai(nullable)]
    pub source_path: Option<String>,
    /// Client address.
    #[oai(nullable)]
    pub client_ip: Option<String>,
    /// Client user agent.
    #[oai(nullable)]
    pub user_agent: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Path called on the gateway.
    pub path: String,
    /// Backend URL the request went to.
    #[oai(nullable)]
    pub target_url: Option<String>,
    /// Status sent to the client.
    pub status: u16,
    /// Whether the request asked for a stream (a top-level `"stream": true` in its JSON body)
    /// or the response was one (SSE, NDJSON): a streamed request that failed before its stream
    /// began (a backend's 429, `upstream_timeout`) is a stream too.
    pub is_stream: bool,
    /// Model named in the request.
    #[oai(nullable)]
    pub model: Option<String>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// Time to first byte, ms.
    #[oai(nullable)]
    pub ttfb_ms: Option<f64>,
    /// Total duration, ms.
    pub duration_ms: f64,
    /// `completed`, `client_aborted`, `upstream_error`, `upstream_timeout`, `rejected` or
    /// `interrupted` (cut by FastGate at the end of its shutdown grace period). A stream whose
    /// terminal event (`data: [DONE]`, Ollama's `"done":true` line) reached the client is
    /// `completed` even if the client hung up before the backend ended its body.
    pub outcome: String,
    /// Error code, when the request failed.
    #[oai(nullable)]
    pub error_code: Option<String>,
    /// Prompt tokens reported by the backend (`usage.prompt_tokens`, or `usage.input_tokens` of
    /// the Responses and Anthropic Messages APIs); null when it reported none.
    #[oai(nullable)]
    pub prompt_tokens: Option<u64>,
    /// Completion tokens reported by the backend (`completion_tokens` or `output_tokens`); null
    /// when it reported none (embeddings).
    #[oai(nullable)]
    pub completion_tokens: Option<u64>,
    /// Total tokens reported by the backend; when it reports counts but no total, their sum.
    /// Null when it reported no usage.
    #[oai(nullable)]
    pub total_tokens: Option<u64>,
}

/// Milliseconds with microsecond precision, printed as such (`510.758`, not the
/// `510.75800000000004` that seconds times 1000 gives).
fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

impl From<AuditRecord> for AuditEntry {
    fn from(r: AuditRecord) -> Self {
        Self {
            request_id: r.request_id,
            timestamp: rfc3339(r.started_at),
            key_id: r.key_id,
            source_path: r.source_path,
            client_ip: r.client_ip,
            user_agent: r.user_agent,
            method: r.method,
            path: r.path,
            target_url: r.target_url,
            status: r.status,
            is_stream: r.is_stream,
            model: r.model,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            ttfb_ms: r.ttfb.map(ms),
            duration_ms: ms(r.duration),
            outcome: r.outcome,
            error_code: r.error_code,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            total_tokens: r.total_tokens,
        }
    }
}

/// A page of audit records.
#[derive(Object, Debug)]
pub struct AuditList {
    /// Records, newest first.
    pub items: Vec<AuditEntry>,
    /// Pass as `cursor` to get the next (older) page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// Metrics window.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last hour (1-minute buckets).
    #[oai(rename = "1h")]
    Hour,
    /// The last 24 hours (1-hour buckets).
    #[oai(rename = "24h")]
    Day,
    /// The last 7 days (6-hour buckets).
    #[oai(rename = "7d")]
    Week,
    /// The last 30 days (1-day buckets, UTC days).
    #[oai(rename = "30d")]
    Month,
}

/// Requests and tokens of one key.
#[derive(Object, Debug)]
pub struct KeyUsageEntry {
    /// Key id.
    pub key_id: String,
    /// Owner label.
    #[oai(nullable)]
    pub source_path: Option<String>,
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Tokens.
    pub total_tokens: u64,
}

/// Requests and tokens of one model.
#[derive(Object, Debug)]
pub struct ModelUsageEntry {
    /// Model name.
    pub model: String,
    /// Requests.
    pub requests: u64,
    /// Tokens.
    pub total_tokens: u64,
}

/// One bucket of the trend series.
#[derive(Object, Debug)]
pub struct SeriesEntry {
    /// Bucket start (RFC 3339).
    pub ts: String,
    /// Requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Tokens.
    pub total_tokens: u64,
}

/// Aggregates over a window, for the dashboard.
#[derive(Object, Debug)]
pub struct MetricsReport {
    /// The window.
    pub window: Window,
    /// Window start (RFC 3339).
    pub since: String,
    /// Window end (RFC 3339).
    pub until: String,
    /// Width of a series bucket.
    pub bucket_seconds: u64,
    /// Requests in the window.
    pub total_requests: u64,
    /// Completed with status < 400.
    pub success_count: u64,
    /// Everything else.
    pub error_count: u64,
    /// success_count / total_requests (0 when there were none).
    pub success_rate: f64,
    /// Mean duration, ms. Requests FastGate refused itself as the client's fault (outcome
    /// `rejected` with a 4xx: bad key, unknown route, body too large) count in the totals but
    /// not in the latency figures; its own 5xx answers do.
    pub avg_latency_ms: f64,
    /// Median duration, ms (4xx refusals left out).
    pub p50_latency_ms: f64,
    /// 95th percentile duration, ms (4xx refusals left out).
    pub p95_latency_ms: f64,
    /// Mean time to first byte, ms (4xx refusals left out).
    pub avg_ttfb_ms: f64,
    /// Requests the latency figures are computed over (total_requests minus the 4xx refusals).
    /// When 0, the latency figures are 0 for want of data: show them as "no data".
    pub latency_samples: u64,
    /// Requests avg_ttfb_ms is computed over (those that received a first byte).
    pub ttfb_samples: u64,
    /// Streamed requests (asked for with `"stream": true`, or answered with a stream).
    pub stream_requests: u64,
    /// stream_requests / total_requests.
    pub stream_share: f64,
    /// Prompt tokens (summed over the counts backends reported; a request without one adds 0).
    pub prompt_tokens: u64,
    /// Completion tokens (the same; embeddings report none).
    pub completion_tokens: u64,
    /// All tokens.
    pub total_tokens: u64,
    /// Keys that are enabled and not expired.
    pub active_keys: u64,
    /// All keys.
    pub total_keys: u64,
    /// Per key, busiest first.
    pub per_key: Vec<KeyUsageEntry>,
    /// Per model, busiest first.
    pub per_model: Vec<ModelUsageEntry>,
    /// Trend series over the whole window.
    pub series: Vec<SeriesEntry>,
}

/// Database status in `/health`.
#[derive(Object, Debug)]
pub struct DatabaseHealth {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Whether a trivial query succeeded just now.
    pub reachable: bool,
}

/// Audit pipeline status in `/health`.
#[derive(Object, Debug)]
pub struct AuditHealth {
    /// Events waiting to be written.
    pub queue_depth: u64,
    /// Queue capacity.
    pub queue_capacity: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Events written to the database or, during an outage, to the spool file (those wait in
    /// `spool_waiting` until they reach the database).
    pub written: u64,
    /// Batch writes retried.
    pub retried: u64,
    /// Events lost after the retries ran out.
    pub lost: u64,
    /// Events in the spool file (`audit.spool_file`), waiting for the database.
    pub spool_waiting: u64,
    /// Events written from the spool file to the database since start.
    pub spool_replayed: u64,
    /// Events of the spool file lost since start: lines that could not be read back (torn by a
    /// crash), or the file removed or cut by hand while it held events.
    pub spool_lost: u64,
    /// Whether audit records are not reaching the database right now: they wait in the spool
    /// file and its last write failed, or a batch is being retried.
    pub failing: bool,
    /// When an event was last dropped or lost (RFC 3339); null if never. (A loss from the
    /// spool file, `spool_lost`, is not timed here, but degrades `status` for a minute too.)
    #[oai(nullable)]
    pub last_loss_at: Option<String>,
    /// The spool file (`audit.spool_file`): `active` (in use), `none` (set to `""`), or
    /// `unusable` (set, but its directory was not writable or another process held its lock at
    /// start: the gateway runs without one, and audit records of a database outage longer than
    /// about 40 s are lost; `status` is `degraded`, `audit_spool_unusable`).
    pub spool: String,
}

/// Key-lookup counters (since start).
#[derive(Object, Debug)]
pub struct KeyLookupHealth {
    /// Lookups answered from the cache.
    pub cache_hits: u64,
    /// Lookups that queried the database.
    pub cache_misses: u64,
    /// Lookups answered from a stale cache entry because the database failed.
    pub stale_served: u64,
    /// Lookups that failed on the database.
    pub lookup_errors: u64,
    /// Key usage flushes that failed (their counts are kept and written by a later one).
    pub usage_flush_errors: u64,
    /// Key usage flushes that could not remove the usage file (`<audit.spool_file>.usage`)
    /// after writing its counts: it was emptied in place, or its counts were held back while
    /// the others were written (the log names the file).
    pub usage_file_errors: u64,
    /// Key hashes currently cached (valid keys and refused ones: disabled, rotated out).
    pub cached: u64,
}

/// Backend failures in `/health` (since start). Without the backend's address: `/health` needs
/// no token, and the audit log (which does) has it for each request.
#[derive(Object, Debug)]
pub struct UpstreamHealth {
    /// Requests a backend failed: unreachable, reset, silent past the timeouts, or answered
    /// with a 5xx status.
    pub failures: u64,
    /// When the most recent one ended (RFC 3339); null without failures.
    #[oai(nullable)]
    pub last_failure_at: Option<String>,
    /// The status its client got (502, 504, or the backend's own 5xx).
    #[oai(nullable)]
    pub last_failure_status: Option<u16>,
    /// FastGate's error code (`upstream_unreachable`, `upstream_error`, `upstream_timeout`,
    /// …); null for a backend's own 5xx answer.
    #[oai(nullable)]
    pub last_failure_code: Option<String>,
}

/// `GET /health`.
#[derive(Object, Debug)]
pub struct Health {
    /// `healthy` (M-FastGate's word), or `degraded` when the gateway is stopping or the
    /// database is unreachable (with a 503), audit writes are failing, or audit records were
    /// dropped or lost in the last minute (with a 200).
    pub status: String,
    /// Why the status is `degraded` (empty when healthy): `draining` (a SIGTERM/SIGINT came:
    /// still serving during `app.shutdown_accept_grace`, then stopping), `database_unreachable`,
    /// `audit_writes_failing`, `audit_records_lost`, `audit_spool_unusable` (the configured
    /// spool file could not be used: running without one).
    pub reasons: Vec<String>,
    /// FastGate version.
    pub version: String,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Database status.
    pub database: DatabaseHealth,
    /// Audit pipeline status.
    pub audit: AuditHealth,
    /// Key lookups: how many were answered from the cache and how many asked the database.
    pub keys: KeyLookupHealth,
    /// Requests the backends failed. A failing backend does not make FastGate unhealthy (a
    /// load balancer must not take the gateway out for it): `status` stays `healthy`.
    pub upstream: UpstreamHealth,
    /// The most recent internal error, if any (never contains a secret).
    #[oai(nullable)]
    pub last_error: Option<String>,
}

// === responses ===

#[derive(ApiResponse)]
enum HealthResponse {
    /// The gateway serves: `status` is `healthy`, or `degraded` for audit trouble only
    /// (`reasons` says which).
    #[oai(status = 200)]
    Ok(Json<Health>),
    /// The gateway is stopping (`draining`) or the database is unreachable (`status` is
    /// `degraded`).
    #[oai(status = 503)]
    Degraded(Json<Health>),
}

#[derive(ApiResponse)]
#[allow(clippy::large_enum_variant)] // built once per admin call; boxing buys nothing
enum CreateKeyResponse {
    /// Created; `api_key` is shown this once. 200, not 201: M-FastGate answered 200, and its
    /// scripts (`create_api_keys.py`) check for it.
    #[oai(status = 200)]
    Created(Json<CreatedKey>),
    /// Invalid input.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No `Content-Type: application/json` on the body (answered before the handler runs).
    #[oai(status = 415)]
    #[allow(dead_code)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// The database is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
enum KeyListResponse {
    /// The keys.
    #[oai(status = 200)]
    Ok(Json<KeyList>),
    /// Invalid input.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The database is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

// One per admin request: the size of the Ok variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(ApiResponse)]
enum KeyResponse {
    /// The key.
    #[oai(status = 200)]
    Ok(Json<KeyInfo>),
    /// Invalid input.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No `Content-Type: application/json` on the body (answered before the handler runs).
    #[oai(status = 415)]
    #[allow(dead_code)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// No such key.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The database is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
#[allow(clippy::large_enum_variant)] // built once per admin call; boxing buys nothing
enum RotateResponse {
    /// Rotated; `api_key` is the new key, shown this once.
    #[oai(status = 200)]
    Ok(Json<CreatedKey>),
    /// Invalid input (`grace_seconds` not a number in range, an unknown body field, or the
    /// query and the body giving two different grace periods).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No such key.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The database is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
enum DeleteResponse {
    /// Deleted; the key stops working at once. 200 with a message, as M-FastGate answered.
    #[oai(status = 200)]
    Deleted(Json<DeletedKey>),
    /// A control character in the id (answered before the handler runs).
    #[oai(status = 400)]
    #[allow(dead_code)]
    BadRequest(Json<ErrorBody>),
    /// No such key.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The database is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
enum LogsResponse {
    /// A page of records.
    #[oai(status = 200)]
    Ok(Json<AuditList>),
    /// Invalid input.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The database is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
#[allow(clippy::large_enum_variant)] // built once per admin call; boxing buys nothing
enum LogResponse {
    /// The record.
    #[oai(status = 200)]
    Ok(Json<AuditEntry>),
    /// A control character in the request id (answered before the handler runs).
    #[oai(status = 400)]
    #[allow(dead_code)]
    BadRequest(Json<ErrorBody>),
    /// No such record.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The database is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// `format` of `GET /admin/logs/export`.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum ExportFormat {
    /// CSV with a header line (RFC 4180).
    Csv,
    /// One JSON array.
    Json,
    /// One JSON object per line.
    Ndjson,
}

/// The exported records.
#[derive(ResponseContent)]
enum ExportContent {
    /// CSV: a header line with the JSON field names, then one record per line. Text cells that
    /// a spreadsheet would run as a formula (first character `=`, `+`, `-`, `@`, tab or CR) get
    /// a leading `'`.
    #[oai(content_type = "text/csv; charset=utf-8")]
    Csv(Binary<poem::Body>),
    /// A JSON array of audit records (the objects of `GET /admin/logs`).
    #[oai(actual_type = "Json<Vec<AuditEntry>>")]
    Json(Binary<poem::Body>),
    /// One audit record object per line.
    #[oai(content_type = "application/x-ndjson")]
    Ndjson(Binary<poem::Body>),
}

#[derive(ApiResponse)]
enum ExportResponse {
    /// The records, newest first, streamed as a download.
    #[oai(status = 200)]
    Ok(
        ExportContent,
        /// `attachment; filename="audit_logs.csv"` (or `.json`, `.ndjson`).
        #[oai(header = "Content-Disposition")]
        String,
    ),
    /// Invalid input.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The database is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// Aggregates of one hour or day.
#[derive(Object, Debug)]
pub struct PeriodEntry {
    /// Start of the period (RFC 3339 at the requested UTC offset). The last period is the
    /// current one, still running.
    pub start: String,
    /// Requests.
    pub total_requests: u64,
    /// Requests that ended in an error (status ≥ 400, or no response).
    pub error_count: u64,
    /// Share of requests without an error, `0.0` to `1.0` (M-FastGate: a percentage); null
    /// without requests.
    #[oai(nullable)]
    pub success_rate: Option<f64>,
    /// Streamed requests.
    pub stream_requests: u64,
    /// Requests with a latency figure (FastGate's own refusals of a client's request have none).
    pub latency_samples: u64,
    /// Mean duration, ms (M-FastGate: `avg_response_time`); null without samples.
    #[oai(nullable)]
    pub avg_latency_ms: Option<f64>,
    /// Median duration, ms (within 10 %); null without samples.
    #[oai(nullable)]
    pub p50_latency_ms: Option<f64>,
    /// 95th percentile duration, ms (within 10 %); null without samples.
    #[oai(nullable)]
    pub p95_latency_ms: Option<f64>,
    /// Prompt tokens reported by the backend.
    pub prompt_tokens: u64,
    /// Completion tokens reported by the backend.
    pub completion_tokens: u64,
    /// Total tokens reported by the backend.
    pub total_tokens: u64,
}

impl PeriodEntry {
    fn new(p: PeriodMetrics, offset: FixedOffset) -> Self {
        Self {
            start: DateTime::<Utc>::from(p.start)
                .with_timezone(&offset)
                .to_rfc3339_opts(SecondsFormat::Secs, true),
            total_requests: p.requests,
            error_count: p.errors,
            success_rate: (p.requests > 0)
                .then(|| (p.requests - p.errors.min(p.requests)) as f64 / p.requests as f64),
            stream_requests: p.streams,
            latency_samples: p.latency_samples,
            avg_latency_ms: p.avg_latency_ms,
            p50_latency_ms: p.p50_latency_ms,
            p95_latency_ms: p.p95_latency_ms,
            prompt_tokens: p.prompt_tokens,
            completion_tokens: p.completion_tokens,
            total_tokens: p.total_tokens,
        }
    }
}

/// Hour-by-hour or day-by-day aggregates, oldest first; every period is listed, empty ones
/// with zeros.
#[derive(Object, Debug)]
pub struct PeriodReport {
    /// `hour` or `day`.
    pub period: String,
    /// The UTC offset days start at and times are written in.
    pub utc_offset: String,
    /// Start of the first period (RFC 3339).
    pub since: String,
    /// End of the report: now (RFC 3339).
    pub until: String,
    /// `now − audit.retention_days`: records and rollups older than this are purged (hourly),
    /// so periods that start earlier count only what is left. Null when retention is off
    /// (`retention_days: 0`).
    #[oai(nullable)]
    pub retained_since: Option<String>,
    /// The periods, oldest first.
    pub items: Vec<PeriodEntry>,
}

#[derive(ApiResponse)]
enum PeriodsResponse {
    /// Aggregates per period.
    #[oai(status = 200)]
    Ok(Json<PeriodReport>),
    /// Invalid input.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// The database is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// A UTC offset in whole hours: `+08:00`, `-05:00`, `8`, `Z`. A `+` sent unescaped in a query
/// string arrives as a space, so a missing sign means `+`.
fn parse_utc_offset(s: &str) -> Result<i32, String> {
    const MESSAGE: &str =
        "utc_offset must be whole hours from -12:00 to +14:00, e.g. %2B08:00 (+08:00) or -05:00";
    let s = s.trim();
    if s.eq_ignore_ascii_case("z") {
        return Ok(0);
    }
    let (sign, rest) = match s.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let hours = match rest.split_once(':') {
        None => rest,
        Some((hours, "00")) => hours,
        Some(_) => return Err(MESSAGE.into()),
    };
    let hours: i32 = match hours.len() {
        1 | 2 if hours.bytes().all(|b| b.is_ascii_digit()) => hours.parse().map_err(|_| MESSAGE)?,
        _ => return Err(MESSAGE.into()),
    };
    let offset = sign * hours;
    if (-12..=14).contains(&offset) {
        Ok(offset)
    } else {
        Err(MESSAGE.into())
    }
}

#[derive(ApiResponse)]
enum MetricsResponse {
    /// Aggregates.
    #[oai(status = 200)]
    Ok(Json<Box<MetricsReport>>),
    /// Invalid input (unknown `window`; answered before the handler runs).
    #[oai(status = 400)]
    #[allow(dead_code)]
    BadRequest(Json<ErrorBody>),
    /// The database is unavailable.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

#[derive(ApiResponse)]
enum ConfigResponse {
    /// The effective configuration, secrets replaced by `******`.
    #[oai(status = 200)]
    Ok(Json<serde_json::Value>),
    /// A control character in the URL's query (answered before the handler runs).
    #[oai(status = 400)]
    #[allow(dead_code)]
    BadRequest(Json<ErrorBody>),
}

macro_rules! unavailable {
    ($state:expr, $variant:path, $err:expr) => {{
        let err: StoreError = $err;
        $state.record_error("store", &err);
        $variant(ErrorBody::new(
            "store_unavailable",
            "the database could not be reached or failed the request (the gateway's log says why)",
        ))
    }};
}

fn bad_request(message: impl Into<String>) -> Json<ErrorBody> {
    ErrorBody::new("bad_request", message)
}

fn not_found(what: &str) -> Json<ErrorBody> {
    ErrorBody::new("not_found", format!("{what} not found"))
}

/// What [`permission`] asks of each permission, as the admin API and the CLI say it.
pub const PERMISSION_RULE: &str =
    "permissions must be 1 to 64 characters of A-Z, a-z, 0-9, _ - . : *";

/// One permission as given to the admin API or `fastgate keys create --permission`: trimmed, and
/// [`PERMISSION_RULE`] when it breaks the rule.
pub fn permission(p: &str) -> Result<String, String> {
    let p = p.trim();
    if p.is_empty()
        || p.len() > 64
        || !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:*".contains(&b))
    {
        return Err(PERMISSION_RULE.into());
    }
    Ok(p.to_owned())
}

/// A list of permissions checked with [`permission`], duplicates dropped (the first kept);
/// `None` stays `None` (the caller's default).
pub fn clean_permissions(p: Option<Vec<String>>) -> Result<Option<Vec<String>>, String> {
    let Some(list) = p else { return Ok(None) };
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for p in list {
        let p = permission(&p)?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(Some(out))
}

fn expiry(
    days: Option<i64>,
    never: Option<bool>,
    now: SystemTime,
) -> Result<Option<Option<SystemTime>>, String> {
    match (days, never.unwrap_or(false)) {
        (Some(_), true) => Err("expires_days and never_expires cannot both be set".into()),
        (None, true) => Ok(Some(None)),
        (Some(d), false) => {
            let d = u64::try_from(d).map_err(|_| "expires_days must be positive".to_string())?;
            Ok(Some(Some(now + Duration::from_secs(d * 86_400))))
        }
        (None, false) => Ok(None),
    }
}

// === the API ===

/// `/health`.
#[derive(Debug)]
pub struct SystemApi {
    state: Arc<AppState>,
}

impl SystemApi {
    /// The system endpoints over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

#[OpenApi(tag = "ApiTags::System")]
impl SystemApi {
    /// Health: version, uptime, database reachability, audit queue.
    ///
    /// `status` is `degraded` when the gateway is stopping (`draining`, after SIGTERM/SIGINT:
    /// with a 503, so that a load balancer takes it out while it still serves during
    /// `app.shutdown_accept_grace`), when the database is unreachable (then with a 503; cached
    /// keys keep working meanwhile), when audit records are not reaching it (kept in the spool file
    /// or retried), when audit records were dropped or lost in the last minute, or when the
    /// configured spool file could not be used at start (all three with a 200: requests are
    /// still served); `reasons` lists which. Backend failures never make it degraded.
    #[oai(path = "/health", method = "get", operation_id = "get_health")]
    async fn health(&self) -> HealthResponse {
        let s = &self.state;
        let reachable = s.db_reachable().await;
        let stats = s.audit_stats();
        let failing = stats.failing() || s.spool_stats().is_some_and(SpoolStats::failing);
        let last_loss = stats.last_loss();
        let spool_loss = s.spool_stats().and_then(SpoolStats::since_last_loss);
        let recent_loss = [stats.since_last_loss(), spool_loss]
            .into_iter()
            .flatten()
            .any(|ago| ago < LOSS_DEGRADES_FOR);
        let draining = s.draining();
        let spool_unusable = s.spool_unusable();
        let reasons: Vec<String> = [draining, !reachable, failing, recent_loss, spool_unusable]
            .into_iter()
            .zip(HEALTH_REASONS)
            .filter(|&(on, _)| on)
            .map(|(_, reason)| reason.to_owned())
            .collect();
        let health = Health {
            status: if reasons.is_empty() {
                "healthy"
            } else {
                "degraded"
            }
            .into(),
            reasons,
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: s.started.elapsed().as_secs(),
            database: DatabaseHealth {
                backend: s.store.backend().as_str().into(),
                reachable,
            },
            audit: AuditHealth {
                queue_depth: stats.queue_depth(),
                queue_capacity: stats.capacity() as u64,
                dropped: stats.dropped(),
                written: stats.written(),
                retried: stats.retried(),
                lost: stats.lost(),
                spool_waiting: s.spool_stats().map_or(0, SpoolStats::waiting),
                spool_replayed: s.spool_stats().map_or(0, SpoolStats::replayed),
                spool_lost: s.spool_stats().map_or(0, SpoolStats::lost),
                failing,
                last_loss_at: last_loss.map(rfc3339),
                spool: match (s.spool_stats(), spool_unusable) {
                    (Some(_), _) => SPOOL_STATES[0],
                    (None, false) => SPOOL_STATES[1],
                    (None, true) => SPOOL_STATES[2],
                }
                .into(),
            },
            keys: {
                let k = s.store.stats();
                KeyLookupHealth {
                    cache_hits: k.cache_hits,
                    cache_misses: k.cache_misses,
                    stale_served: k.stale_served,
                    lookup_errors: k.lookup_errors,
                    usage_flush_errors: k.usage_flush_errors,
                    usage_file_errors: k.usage_file_errors,
                    cached: s.store.cached_keys() as u64,
                }
            },
            upstream: {
                let last = stats.last_upstream_failure();
                UpstreamHealth {
                    failures: stats.upstream_failures(),
                    last_failure_at: last.as_ref().map(|f| rfc3339(f.at)),
                    last_failure_status: last.as_ref().map(|f| f.status),
                    last_failure_code: last.and_then(|f| f.code).map(str::to_owned),
                }
            },
            last_error: s.last_error(),
        };
        // Only an unreachable database is a 503: audit trouble alone leaves requests served
        // (the records wait in the spool), and a load balancer that took out every instance
        // sharing a database refusing inserts, or each instance that dropped a record in a
        // burst, would turn it into an outage. `status` and `reasons` still say it. A gateway
        // that is stopping answers 503 too: a load balancer takes it out before it stops
        // accepting (`app.shutdown_accept_grace`).
        if reachable && !draining {
            HealthResponse::Ok(Json(health))
        } else {
            HealthResponse::Degraded(Json(health))
        }
    }
}

/// `/admin/...`.
#[derive(Debug)]
pub struct AdminApi {
    state: Arc<AppState>,
}

impl AdminApi {
    /// The admin endpoints over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    async fn periods(
        &self,
        period: Period,
        count: u32,
        utc_offset: Option<&str>,
    ) -> PeriodsResponse {
        let offset_hours = match utc_offset.map(parse_utc_offset).transpose() {
            Ok(o) => o.unwrap_or(0),
            Err(m) => return PeriodsResponse::BadRequest(bad_request(m)),
        };
        let now = SystemTime::now();
        let offset = FixedOffset::east_opt(offset_hours * 3600).unwrap_or(Utc.fix());
        let at_offset = |t: SystemTime, format: SecondsFormat| {
            DateTime::<Utc>::from(t)
                .with_timezone(&offset)
                .to_rfc3339_opts(format, true)
        };
        let retention = u64::from(self.state.settings().config.audit.retention_days);
        let retained_since = (retention > 0)
            .then(|| now.checked_sub(Duration::from_secs(retention * 86_400)))
            .flatten()
            .map(|t| at_offset(t, SecondsFormat::Millis));
        match self
            .state
            .store
            .periods(period, count, offset_hours, now)
            .await
        {
            Ok(periods) => {
                let items: Vec<PeriodEntry> = periods
                    .into_iter()
                    .map(|p| PeriodEntry::new(p, offset))
                    .collect();
                PeriodsResponse::Ok(Json(PeriodReport {
                    period: match period {
                        Period::Hour => "hour",
                        Period::Day => "day",
                    }
                    .into(),
                    utc_offset: offset.to_string(),
                    since: items
                        .first()
                        .map_or_else(|| rfc3339(now), |p| p.start.clone()),
                    until: at_offset(now, SecondsFormat::Millis),
                    retained_since,
                    items,
                }))
            }
            Err(StoreError::InvalidInput(m)) => PeriodsResponse::BadRequest(bad_request(m)),
            Err(e) => unavailable!(self.state, PeriodsResponse::Unavailable, e),
        }
    }
}

#[OpenApi(prefix_path = "/admin")]
impl AdminApi {
    /// Create a gateway API key
    ///
    /// The full key is in `api_key` of the response and is shown only this once.
    #[oai(
        path = "/keys",
        method = "post",
        operation_id = "create_key",
        tag = "ApiTags::Keys"
    )]
    async fn create_key(
        &self,
        _auth: AdminAuth,
        body: Json<CreateKeyRequest>,
    ) -> CreateKeyResponse {
        let now = SystemTime::now();
        let body = body.0;
        // Read once: a SIGHUP may swap the settings in between.
        let settings = self.state.settings();
        let permissions = match clean_permissions(body.permissions) {
            Ok(p) => p.unwrap_or_else(|| vec![settings.config.api_gateway.permission.clone()]),
            Err(m) => return CreateKeyResponse::BadRequest(bad_request(m)),
        };
        let default_days = u64::from(settings.config.security.default_expiry_days);
        let expires_at = match expiry(body.expires_days, body.never_expires, now) {
            Ok(Some(at)) => at,
            Ok(None) => Some(now + Duration::from_secs(default_days * 86_400)),
            Err(m) => return CreateKeyResponse::BadRequest(bad_request(m)),
        };
        let source_path = body.source_path.trim().to_owned();
        if source_path.is_empty() {
            return CreateKeyResponse::BadRequest(bad_request("source_path must not be empty"));
        }
        let new = NewKey {
            name: body.name.filter(|n| !n.trim().is_empty()),
            source_path,
            permissions,
            expires_at,
        };
        match self.state.store.create_key(new).await {
            Ok(created) => {
                tracing::info!(key_id = %created.record.id, "key created");
                CreateKeyResponse::Created(Json(CreatedKey::new(
                    KeyInfo::from_record(created.record, now),
                    created.secret,
                )))
            }
            Err(StoreError::InvalidInput(m)) => CreateKeyResponse::BadRequest(bad_request(m)),
            Err(e) => unavailable!(self.state, CreateKeyResponse::Unavailable, e),
        }
    }

    /// List gateway API keys
    #[oai(
        path = "/keys",
        method = "get",
        operation_id = "list_keys",
        tag = "ApiTags::Keys"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn list_keys(
        &self,
        _auth: AdminAuth,
        /// Only enabled (`true`) or disabled (`false`) keys.
        active: Query<Option<bool>>,
        /// Only keys of this owner.
        source_path: Query<Option<String>>,
        /// Only expired (`true`) or unexpired (`false`) keys.
        expired: Query<Option<bool>>,
        /// Page size, 1 to 1000 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// Keys to skip.
        #[oai(validator(maximum(value = "10000000")))]
        offset: Query<Option<u32>>,
        /// M-FastGate's name for `offset`.
        #[oai(deprecated, validator(maximum(value = "10000000")))]
        skip: Query<Option<u32>>,
        /// M-FastGate's name for `active`.
        #[oai(deprecated)]
        is_active: Query<Option<bool>>,
    ) -> KeyListResponse {
        let now = SystemTime::now();
        let (active, offset) = match (
            either("active", "is_active", active.0, is_active.0),
            either("offset", "skip", offset.0, skip.0),
        ) {
            (Ok(active), Ok(offset)) => (active, offset),
            (Err(m), _) | (_, Err(m)) => return KeyListResponse::BadRequest(bad_request(m)),
        };
        let filter = KeyFilter {
            active,
            source_path: source_path.0.filter(|s| !s.is_empty()),
            expired: expired.0,
            limit: limit.0.unwrap_or(50),
            offset: offset.unwrap_or(0),
        };
        match self.state.store.list_keys(&filter).await {
            Ok(page) => KeyListResponse::Ok(Json(KeyList {
                items: page
                    .items
                    .into_iter()
                    .map(|r| KeyInfo::from_record(r, now))
                    .collect(),
                total: page.total,
                limit: filter.limit,
                offset: filter.offset,
            })),
            Err(e) => unavailable!(self.state, KeyListResponse::Unavailable, e),
        }
    }

    /// Get one key
    #[oai(
        path = "/keys/:id",
        method = "get",
        operation_id = "get_key",
        tag = "ApiTags::Keys"
    )]
    async fn get_key(&self, _auth: AdminAuth, id: Path<String>) -> KeyResponse {
        match self.state.store.get_key(&id.0).await {
            Ok(Some(r)) => KeyResponse::Ok(Json(KeyInfo::from_record(r, SystemTime::now()))),
            Ok(None) => KeyResponse::NotFound(not_found("key")),
            Err(e) => unavailable!(self.state, KeyResponse::Unavailable, e),
        }
    }

    /// Update a key (name, owner, permissions, expiry, enabled)
    ///
    /// Disabling a key or taking a permission away takes effect at once on this instance, and
    /// within 2 seconds on other instances sharing the PostgreSQL database.
    ///
    /// `PUT` (M-FastGate's method) is the same partial update. (Operation ids `update_key` and
    /// `update_key_put`, given in `spec.rs`: poem-openapi gives one handler one id.)
    #[oai(
        path = "/keys/:id",
        method = "patch",
        method = "put",
        tag = "ApiTags::Keys"
    )]
    async fn update_key(
        &self,
        _auth: AdminAuth,
        id: Path<String>,
        body: Json<UpdateKeyRequest>,
    ) -> KeyResponse {
        let now = SystemTime::now();
        let body = body.0;
        let permissions = match clean_permissions(body.permissions) {
            Ok(p) => p,
            Err(m) => return KeyResponse::BadRequest(bad_request(m)),
        };
        let at = body.expires_at.filter(|t| !t.is_empty());
        let expires_at = match (at, expiry(body.expires_days, body.never_expires, now)) {
            (None, by_days) => by_days,
            (Some(t), Ok(None)) => parse_expiry(&t).map(|t| Some(Some(t))),
            (Some(_), Ok(Some(_))) => {
                Err("expires_at cannot be combined with expires_days or never_expires".into())
            }
            (Some(_), Err(m)) => Err(m),
        };
        let expires_at = match expires_at {
            Ok(e) => e,
            Err(m) => return KeyResponse::BadRequest(bad_request(m)),
        };
        let active = match either("active", "is_active", body.active, body.is_active) {
            Ok(a) => a,
            Err(m) => return KeyResponse::BadRequest(bad_request(m)),
        };
        let source_path = match body.source_path.map(|s| s.trim().to_owned()) {
            Some(s) if s.is_empty() => {
                return KeyResponse::BadRequest(bad_request("source_path must not be empty"));
            }
            other => other,
        };
        let update = KeyUpdate {
            name: body
                .name
                .map(|n| Some(n.trim().to_owned()).filter(|n| !n.is_empty())),
            source_path,
            permissions,
            expires_at,
            active,
        };
        match self.state.store.update_key(&id.0, update).await {
            Ok(Some(r)) => {
                tracing::info!(key_id = %r.id, "key updated");
                KeyResponse::Ok(Json(KeyInfo::from_record(r, now)))
            }
            Ok(None) => KeyResponse::NotFound(not_found("key")),
            Err(StoreError::InvalidInput(m)) => KeyResponse::BadRequest(bad_request(m)),
            Err(e) => unavailable!(self.state, KeyResponse::Unavailable, e),
        }
    }

    /// Delete a key
    #[oai(
        path = "/keys/:id",
        method = "delete",
        operation_id = "delete_key",
        tag = "ApiTags::Keys"
    )]
    async fn delete_key(&self, _auth: AdminAuth, id: Path<String>) -> DeleteResponse {
        match self.state.store.delete_key(&id.0).await {
            Ok(true) => {
                tracing::info!(key_id = %id.0, "key deleted");
                DeleteResponse::Deleted(Json(DeletedKey {
                    message: "API key deleted".to_owned(),
                }))
            }
            Ok(false) => DeleteResponse::NotFound(not_found("key")),
            Err(e) => unavailable!(self.state, DeleteResponse::Unavailable, e),
        }
    }

    /// Rotate a key: issue a new secret for the same key id
    ///
    /// The old secret keeps working for `grace_seconds` (default 0).
    #[oai(
        path = "/keys/:id/rotate",
        method = "post",
        operation_id = "rotate_key",
        tag = "ApiTags::Keys"
    )]
    async fn rotate_key(
        &self,
        _auth: AdminAuth,
        id: Path<String>,
        /// Seconds the old secret keeps working (default 0: it stops at once).
        #[oai(validator(maximum(value = "2592000")))]
        grace_seconds: Query<Option<u64>>,
        body: Vec<u8>,
    ) -> RotateResponse {
        let in_body = match rotate_body_grace(&body) {
            Ok(grace) => grace,
            Err(message) => return RotateResponse::BadRequest(bad_request(message)),
        };
        let grace = match (grace_seconds.0, in_body) {
            (Some(q), Some(b)) if q != b => {
                return RotateResponse::BadRequest(bad_request(
                    "grace_seconds is given twice (query and body) with different values",
                ));
            }
            (q, b) => q.or(b).unwrap_or(0),
        };
        match self
            .state
            .store
            .rotate_key(&id.0, Duration::from_secs(grace))
            .await
        {
            Ok(Some(created)) => {
                tracing::info!(key_id = %created.record.id, grace, "key rotated");
                RotateResponse::Ok(Json(CreatedKey::new(
                    KeyInfo::from_record(created.record, SystemTime::now()),
                    created.secret,
                )))
            }
            Ok(None) => RotateResponse::NotFound(not_found("key")),
            Err(e) => unavailable!(self.state, RotateResponse::Unavailable, e),
        }
    }

    /// Audit log, newest first
    #[oai(
        path = "/logs",
        method = "get",
        operation_id = "list_logs",
        tag = "ApiTags::Logs"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn logs(
        &self,
        _auth: AdminAuth,
        /// Records per page, 1 to 10,000 (default 50; M-FastGate's cap).
        #[oai(validator(minimum(value = "1"), maximum(value = "10000")))]
        limit: Query<Option<u32>>,
        /// Only this key id.
        key_id: Query<Option<String>>,
        /// Only this owner.
        source_path: Query<Option<String>>,
        /// Status class: `2xx`, `3xx`, `4xx` or `5xx`.
        status: Query<Option<String>>,
        /// Only streamed (`true`) or plain (`false`) requests.
        is_stream: Query<Option<bool>>,
        /// Only this model.
        model: Query<Option<String>>,
        /// Only this gateway path, e.g. `/proxy/miniai/v2/chat/completions`.
        path: Query<Option<String>>,
        /// Not before (RFC 3339).
        since: Query<Option<String>>,
        /// Before (RFC 3339).
        until: Query<Option<String>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Only this exact status code, e.g. `429` (`status` takes a class).
        #[oai(validator(minimum(value = "100"), maximum(value = "599")))]
        status_code: Query<Option<u16>>,
        /// Only this HTTP method, e.g. `POST` (the value is upper-cased first).
        method: Query<Option<String>>,
        /// Records to skip, counted from `cursor` when one is given (cursors page deep logs
        /// without a scan of the skipped records).
        #[oai(validator(maximum(value = "10000000")))]
        offset: Query<Option<u32>>,
        /// M-FastGate's name for `offset`.
        #[oai(deprecated, validator(maximum(value = "10000000")))]
        skip: Query<Option<u32>>,
        /// M-FastGate's name for `since`.
        #[oai(deprecated)]
        start_time: Query<Option<String>>,
        /// M-FastGate's name for `until`.
        #[oai(deprecated)]
        end_time: Query<Option<String>>,
        /// M-FastGate's filter by a key's secret. Refused: a secret does not belong in a URL (use
        /// `key_id`).
        #[oai(deprecated)]
        api_key: Query<Option<String>>,
    ) -> LogsResponse {
        let filters = LogFilters {
            key_id: key_id.0,
            source_path: source_path.0,
            status: status.0,
            status_code: status_code.0,
            method: method.0,
            is_stream: is_stream.0,
            model: model.0,
            path: path.0,
            times: [[since.0, start_time.0], [until.0, end_time.0]],
            api_key: api_key.0,
        };
        let mut filter = match filters.into_filter() {
            Ok(f) => f,
            Err(m) => return LogsResponse::BadRequest(bad_request(m)),
        };
        filter.offset = match either("offset", "skip", offset.0, skip.0) {
            Ok(o) => o.unwrap_or(0),
            Err(m) => return LogsResponse::BadRequest(bad_request(m)),
        };
        filter.cursor = cursor.0.filter(|s| !s.is_empty());
        filter.limit = limit.0.unwrap_or(50);
        match self.state.store.query_audit(&filter).await {
            Ok(page) => LogsResponse::Ok(Json(AuditList {
                items: page.items.into_iter().map(AuditEntry::from).collect(),
                next_cursor: page.next_cursor,
            })),
            Err(StoreError::InvalidInput(m)) => LogsResponse::BadRequest(bad_request(m)),
            Err(e) => unavailable!(self.state, LogsResponse::Unavailable, e),
        }
    }

    /// Export audit records as CSV, JSON or NDJSON
    ///
    /// Every record matching the filters (those of `GET /admin/logs`), newest first, streamed as
    /// a download; `limit` caps the count. The export holds the records stored when it started;
    /// those written while it runs are left out. If the database fails part-way, the transfer
    /// is cut off (no final chunk), so a truncated file is never taken for a complete one.
    #[oai(
        path = "/logs/export",
        method = "get",
        operation_id = "export_logs",
        tag = "ApiTags::Logs"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn export_logs(
        &self,
        _auth: AdminAuth,
        /// `csv` (default), `json` or `ndjson`.
        format: Query<Option<ExportFormat>>,
        /// At most this many records (default: all that match).
        #[oai(validator(minimum(value = "1")))]
        limit: Query<Option<u64>>,
        /// Only this key id.
        key_id: Query<Option<String>>,
        /// Only this owner.
        source_path: Query<Option<String>>,
        /// Status class: `2xx`, `3xx`, `4xx` or `5xx`.
        status: Query<Option<String>>,
        /// Only this exact status code, e.g. `429`.
        #[oai(validator(minimum(value = "100"), maximum(value = "599")))]
        status_code: Query<Option<u16>>,
        /// Only this HTTP method, e.g. `POST` (the value is upper-cased first).
        method: Query<Option<String>>,
        /// Only streamed (`true`) or plain (`false`) requests.
        is_stream: Query<Option<bool>>,
        /// Only this model.
        model: Query<Option<String>>,
        /// Only this gateway path, e.g. `/proxy/miniai/v2/chat/completions`.
        path: Query<Option<String>>,
        /// Not before (RFC 3339).
        since: Query<Option<String>>,
        /// Before (RFC 3339).
        until: Query<Option<String>>,
        /// M-FastGate's name for `since`.
        #[oai(deprecated)]
        start_time: Query<Option<String>>,
        /// M-FastGate's name for `until`.
        #[oai(deprecated)]
        end_time: Query<Option<String>>,
        /// M-FastGate's filter by a key's secret. Refused (use `key_id`).
        #[oai(deprecated)]
        api_key: Query<Option<String>>,
        /// M-FastGate's request/response header columns. FastGate does not record headers:
        /// `true` is refused.
        #[oai(deprecated)]
        include_headers: Query<Option<bool>>,
        /// M-FastGate's request/response body columns. FastGate does not record bodies: `true`
        /// is refused.
        #[oai(deprecated)]
        include_body: Query<Option<bool>>,
        /// CSV only: start with a UTF-8 byte order mark, so that Excel reads non-ASCII text
        /// (Chinese owner names, models) as UTF-8. Default `false`.
        bom: Query<Option<bool>>,
        /// Not accepted (`GET /admin/logs` pages; the export takes every matching record, up
        /// to `limit`): any value but `0` or empty is a 400, rather than an export that
        /// silently ignores it.
        #[oai(deprecated)]
        cursor: Query<Option<String>>,
        /// Not accepted, as `cursor`.
        #[oai(deprecated)]
        offset: Query<Option<String>>,
        /// Not accepted, as `cursor` (M-FastGate's name for `offset`).
        #[oai(deprecated)]
        skip: Query<Option<String>>,
    ) -> ExportResponse {
        // `0` or empty (what a generated client may send by default) is no paging.
        let paging = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty() && v != "0");
        if paging(&cursor.0) || paging(&offset.0) || paging(&skip.0) {
            return ExportResponse::BadRequest(bad_request(
                "the export takes no cursor, offset or skip: it writes every matching record \
                 (newest first, up to limit); narrow it with since/until instead",
            ));
        }
        if include_headers.0 == Some(true) || include_body.0 == Some(true) {
            return ExportResponse::BadRequest(bad_request(
                "include_headers and include_body are not supported: FastGate does not record request or response headers and bodies",
            ));
        }
        let filters = LogFilters {
            key_id: key_id.0,
            source_path: source_path.0,
            status: status.0,
            status_code: status_code.0,
            method: method.0,
            is_stream: is_stream.0,
            model: model.0,
            path: path.0,
            times: [[since.0, start_time.0], [until.0, end_time.0]],
            api_key: api_key.0,
        };
        let mut filter = match filters.into_filter() {
            Ok(f) => f,
            Err(m) => return ExportResponse::BadRequest(bad_request(m)),
        };
        let limit = limit.0.unwrap_or(u64::MAX);
        filter.limit = u32::try_from(limit).map_or(export::PAGE, |l| l.min(export::PAGE));
        // The records stored when the export starts, whatever is written while it runs.
        filter.stored_by = match self.state.store.audit_position().await {
            Ok(position) => Some(position),
            Err(e) => return unavailable!(self.state, ExportResponse::Unavailable, e),
        };
        let first = match self.state.store.query_audit(&filter).await {
            Ok(page) => page,
            Err(StoreError::InvalidInput(m)) => return ExportResponse::BadRequest(bad_request(m)),
            Err(e) => return unavailable!(self.state, ExportResponse::Unavailable, e),
        };
        let (format, content): (_, fn(_) -> _) = match format.0.unwrap_or(ExportFormat::Csv) {
            ExportFormat::Csv => (export::Format::Csv, ExportContent::Csv),
            ExportFormat::Json => (export::Format::Json, ExportContent::Json),
            ExportFormat::Ndjson => (export::Format::Ndjson, ExportContent::Ndjson),
        };
        let bom = bom.0 == Some(true) && format == export::Format::Csv;
        let body = export::body(self.state.clone(), filter, first, format, limit, bom);
        ExportResponse::Ok(content(Binary(body)), format.disposition())
    }

    /// One audit record by request id
    #[oai(
        path = "/logs/:request_id",
        method = "get",
        operation_id = "get_log",
        tag = "ApiTags::Logs"
    )]
    async fn log(&self, _auth: AdminAuth, request_id: Path<String>) -> LogResponse {
        match self.state.store.get_audit(&request_id.0).await {
            Ok(Some(r)) => LogResponse::Ok(Json(r.into())),
            Ok(None) => LogResponse::NotFound(not_found("audit record")),
            Err(e) => unavailable!(self.state, LogResponse::Unavailable, e),
        }
    }

    /// Aggregated metrics for a window (what the dashboard shows)
    #[oai(
        path = "/metrics",
        method = "get",
        operation_id = "get_metrics",
        tag = "ApiTags::Metrics"
    )]
    async fn metrics(
        &self,
        _auth: AdminAuth,
        /// `1h`, `24h` (default), `7d` or `30d`.
        window: Query<Option<Window>>,
    ) -> MetricsResponse {
        let window = window.0.unwrap_or(Window::Day);
        let w = match window {
            Window::Hour => MetricsWindow::Hour,
            Window::Day => MetricsWindow::Day,
            Window::Week => MetricsWindow::Week,
            Window::Month => MetricsWindow::Month,
        };
        match self.state.store.metrics(w, SystemTime::now()).await {
            Ok(m) => MetricsResponse::Ok(Json(Box::new(MetricsReport {
                window,
                since: rfc3339(m.since),
                until: rfc3339(m.until),
                bucket_seconds: m.bucket.as_secs(),
                total_requests: m.total_requests,
                success_count: m.success_count,
                error_count: m.error_count,
                success_rate: m.success_rate,
                avg_latency_ms: m.avg_latency_ms,
                p50_latency_ms: m.p50_latency_ms,
                p95_latency_ms: m.p95_latency_ms,
                avg_ttfb_ms: m.avg_ttfb_ms,
                latency_samples: m.latency_samples,
                ttfb_samples: m.ttfb_samples,
                stream_requests: m.stream_requests,
                stream_share: m.stream_share,
                prompt_tokens: m.prompt_tokens,
                completion_tokens: m.completion_tokens,
                total_tokens: m.total_tokens,
                active_keys: m.active_keys,
                total_keys: m.total_keys,
                per_key: m
                    .per_key
                    .into_iter()
                    .map(|k| KeyUsageEntry {
                        key_id: k.key_id,
                        source_path: Some(k.source_path).filter(|s| !s.is_empty()),
                        requests: k.requests,
                        errors: k.errors,
                        total_tokens: k.total_tokens,
                    })
                    .collect(),
                per_model: m
                    .per_model
                    .into_iter()
                    .map(|k| ModelUsageEntry {
                        model: k.model,
                        requests: k.requests,
                        total_tokens: k.total_tokens,
                    })
                    .collect(),
                series: m
                    .series
                    .into_iter()
                    .map(|p| SeriesEntry {
                        ts: rfc3339(p.ts),
                        requests: p.requests,
                        errors: p.errors,
                        total_tokens: p.total_tokens,
                    })
                    .collect(),
            }))),
            Err(e) => unavailable!(self.state, MetricsResponse::Unavailable, e),
        }
    }

    /// Hour by hour (M-FastGate's hourly metrics)
    ///
    /// The last `hours` whole hours, the current one included, from the hourly rollups.
    #[oai(
        path = "/metrics/hourly",
        method = "get",
        operation_id = "get_hourly_metrics",
        tag = "ApiTags::Metrics"
    )]
    async fn metrics_hourly(
        &self,
        _auth: AdminAuth,
        /// Hours, 1 to 168 (default 24).
        #[oai(validator(minimum(value = "1"), maximum(value = "168")))]
        hours: Query<Option<u32>>,
        /// The UTC offset the times are written in, whole hours from `-12:00` to `+14:00`
        /// (default `+00:00`; `%2B08:00` for China time).
        utc_offset: Query<Option<String>>,
    ) -> PeriodsResponse {
        let hours = hours.0.unwrap_or(24);
        self.periods(Period::Hour, hours, utc_offset.0.as_deref())
            .await
    }

    /// Day by day (M-FastGate's daily metrics)
    ///
    /// The last `days` days, today included; a day starts at midnight of `utc_offset` (M-FastGate
    /// counted China days: `utc_offset=%2B08:00`).
    #[oai(
        path = "/metrics/daily",
        method = "get",
        operation_id = "get_daily_metrics",
        tag = "ApiTags::Metrics"
    )]
    async fn metrics_daily(
        &self,
        _auth: AdminAuth,
        /// Days, 1 to 365 (default 30).
        #[oai(validator(minimum(value = "1"), maximum(value = "365")))]
        days: Query<Option<u32>>,
        /// Where days start: a UTC offset in whole hours, `-12:00` to `+14:00` (default
        /// `+00:00`). Write `+` as `%2B` in a URL.
        utc_offset: Query<Option<String>>,
    ) -> PeriodsResponse {
        let days = days.0.unwrap_or(30);
        self.periods(Period::Day, days, utc_offset.0.as_deref())
            .await
    }

    /// The effective configuration, every secret redacted
    #[oai(
        path = "/config",
        method = "get",
        operation_id = "get_config",
        tag = "ApiTags::System"
    )]
    async fn config(&self, _auth: AdminAuth) -> ConfigResponse {
        ConfigResponse::Ok(Json(self.state.settings().redacted_json()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_print_without_float_noise() {
        for (micros, text) in [(510_758, "510.758"), (1_055_408, "1055.408"), (7, "0.007")] {
            let v = ms(Duration::from_micros(micros));
            assert_eq!(serde_json::json!(v).to_string(), text);
        }
        // Sub-microsecond parts are dropped, not rounded into noise.
        assert_eq!(ms(Duration::from_nanos(510_758_999)).to_string(), "510.758");
    }

    #[test]
    fn an_unescaped_plus_offset_is_read_and_a_space_separator_kept() {
        for (given, read) in [
            ("2026-01-31T08:00:00 08:00", "2026-01-31T08:00:00+08:00"),
            ("2026-01-31 08:00:00 08:00", "2026-01-31 08:00:00+08:00"),
            ("2026-01-31 08:00:00Z", "2026-01-31 08:00:00Z"),
            ("2026-01-31 08:00:00+08:00", "2026-01-31 08:00:00+08:00"),
            ("2026-01-31T08:00:00-05:00", "2026-01-31T08:00:00-05:00"),
            (" 08:00", " 08:00"),
            ("é 08:00", "é+08:00"),
        ] {
            assert_eq!(unescaped_plus(given), read, "{given:?}");
        }
        let since = |t: &str| time_bounds([Some(t.into()), None], [None, None]).map(|b| b.0);
        let at = since("2026-01-31T00:00:00Z").unwrap();
        assert_eq!(since("2026-01-31 08:00:00 08:00").unwrap(), at);
        assert_eq!(since("2026-01-31 00:00:00Z").unwrap(), at);
        assert!(since("2026-01-31T08:00:00").is_err());
        // Bodies are not URL-decoded: a space there is not a `+`.
        assert!(parse_time("expires_at", "2026-01-31 08:00:00Z").is_ok());
        assert!(parse_time("expires_at", "2026-01-31T08:00:00 08:00").is_err());
    }

    #[test]
    fn an_expiry_outside_the_years_1970_to_9999_is_refused() {
        for bad in [
            "0000-01-01T00:00:00Z",
            "0000-01-01T00:00:00+14:00",
            "1969-12-31T23:59:59Z",
            "9999-12-31T23:59:59-01:00",
        ] {
            assert!(parse_expiry(bad).is_err(), "{bad}");
        }
        for good in [
            "1970-01-01T00:00:00Z",
            "2026-01-31T08:00:00+08:00",
            "9999-12-31T23:59:59Z",
        ] {
            assert!(parse_expiry(good).is_ok(), "{good}");
        }
    }
}
