//! The store's public data types.

use std::time::{Duration, SystemTime};

/// A key to create.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewKey {
    /// Free-form label.
    pub name: Option<String>,
    /// Owner / tenant label (`source_path` in M-FastGate). Must not be empty.
    pub source_path: String,
    /// Permissions, e.g. `chat`.
    pub permissions: Vec<String>,
    /// When the key stops working; `None` = never.
    pub expires_at: Option<SystemTime>,
}

/// A created (or rotated) key: the record and the secret, which is shown this once.
#[derive(Clone, PartialEq, Eq)]
pub struct CreatedKey {
    /// The stored record (no secret in it).
    pub record: KeyRecord,
    /// The full key. Give it to the caller once; never log or store it.
    pub secret: String,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("record", &self.record)
            .field("secret", &"******")
            .finish()
    }
}

/// A key brought over from another gateway with its existing secret (see
/// [`Store::import_key`](crate::Store::import_key)).
#[derive(Clone, PartialEq, Eq)]
pub struct ImportedKey {
    /// Public id, kept as the other gateway had it (e.g. M-FastGate's `fg_…`).
    pub id: String,
    /// The secret clients already use. Only its SHA-256 is stored.
    pub secret: String,
    /// Owner / tenant label. Must not be empty.
    pub source_path: String,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Creation time.
    pub created_at: SystemTime,
    /// Expiry; `None` = never.
    pub expires_at: Option<SystemTime>,
    /// Enabled flag.
    pub active: bool,
    /// Last use.
    pub last_used_at: Option<SystemTime>,
    /// Uses so far.
    pub request_count: u64,
}

impl std::fmt::Debug for ImportedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportedKey")
            .field("id", &self.id)
            .field("secret", &"******")
            .field("source_path", &self.source_path)
            .field("permissions", &self.permissions)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// What [`Store::import_key`](crate::Store::import_key) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The key was added.
    Imported,
    /// This key (same id, same secret) was imported before, and may have been deleted since:
    /// nothing changed.
    AlreadyImported,
    /// Its id belongs to another key, or its secret to a key with another id: nothing changed.
    Conflict,
}

/// Changes to a key; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyUpdate {
    /// New name (`Some(None)` clears it).
    pub name: Option<Option<String>>,
    /// New owner label (not empty).
    pub source_path: Option<String>,
    /// New permission list.
    pub permissions: Option<Vec<String>>,
    /// New expiry (`Some(None)` = never).
    pub expires_at: Option<Option<SystemTime>>,
    /// Enable or disable.
    pub active: Option<bool>,
}

impl KeyUpdate {
    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.source_path.is_none()
            && self.permissions.is_none()
            && self.expires_at.is_none()
            && self.active.is_none()
    }
}

/// Key listing filter. `limit` 0 means the default (50); it is capped at 1000.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyFilter {
    /// Only enabled (`true`) or disabled (`false`) keys.
    pub active: Option<bool>,
    /// Only keys of this owner.
    pub source_path: Option<String>,
    /// Only expired (`true`) or not expired (`false`) keys, at the time of the query.
    pub expired: Option<bool>,
    /// Page size.
    pub limit: u32,
    /// Rows to skip.
    pub offset: u32,
}

/// One page of keys, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPage {
    /// The keys on this page.
    pub items: Vec<KeyRecord>,
    /// Keys matching the filter, over all pages.
    pub total: u64,
}

/// A stored key. Contains no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// Public id (`k_…`), safe to log.
    pub id: String,
    /// Free-form label.
    pub name: Option<String>,
    /// Owner / tenant label.
    pub source_path: String,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Display form of the secret: prefix, first 4 characters, `…`, last 4 (`fg_AbCd…wxYz`).
    pub display: String,
    /// Creation time.
    pub created_at: SystemTime,
    /// Last change through the admin API (not usage).
    pub updated_at: SystemTime,
    /// Expiry; `None` = never.
    pub expires_at: Option<SystemTime>,
    /// Enabled flag.
    pub active: bool,
    /// Last successful resolution (flushed in batches; includes this instance's unflushed uses).
    pub last_used_at: Option<SystemTime>,
    /// Number of successful resolutions (same batching as `last_used_at`).
    pub request_count: u64,
}

impl KeyRecord {
    /// `"disabled"` when not active, else `"expired"` when expired at `now`, else `"active"`.
    pub fn status(&self, now: SystemTime) -> &'static str {
        if !self.active {
            "disabled"
        } else if self.is_expired_at(now) {
            "expired"
        } else {
            "active"
        }
    }

    /// Whether the key has expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Audit query filter. `limit` 0 means the default (50); it is capped at 10,000 (M-FastGate's cap).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this key id.
    pub key_id: Option<String>,
    /// Only this owner.
    pub source_path: Option<String>,
    /// Status class 2..=5 (`2` = 2xx). Other values are rejected.
    pub status_class: Option<u16>,
    /// Only this exact status code (100..=599; other values are rejected).
    pub status: Option<u16>,
    /// Only this HTTP method, compared as stored (as the client sent it, e.g. `POST`).
    pub method: Option<String>,
    /// Only streamed (`true`) or plain (`false`) responses.
    pub is_stream: Option<bool>,
    /// Only this model.
    pub model: Option<String>,
    /// Only this gateway path (as called, without the query string).
    pub path: Option<String>,
    /// Only records stored by then (see [`Store::audit_position`](crate::Store::audit_position)):
    /// pages read one after another then hold the records of one moment, whatever is written
    /// meanwhile.
    pub stored_by: Option<AuditPosition>,
    /// Only records started at or after this time.
    pub since: Option<SystemTime>,
    /// Only records started before this time.
    pub until: Option<SystemTime>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Records to skip (after the cursor, when one is given). Deep offsets cost a scan of the
    /// skipped records; cursors do not.
    pub offset: u32,
    /// Page size.
    pub limit: u32,
}

/// How far the audit table was written at one moment, from
/// [`Store::audit_position`](crate::Store::audit_position).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditPosition(pub(crate) i64);

/// One page of audit records, newest first.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditPage {
    /// Records on this page.
    pub items: Vec<AuditRecord>,
    /// Opaque cursor for the next (older) page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A stored audit record: every [`AuditEvent`](fastgate_layer::AuditEvent) field.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRecord {
    /// Request id (`X-Request-Id`).
    pub request_id: String,
    /// Arrival time (millisecond precision).
    pub started_at: SystemTime,
    /// Public key id.
    pub key_id: Option<String>,
    /// Key owner.
    pub source_path: Option<String>,
    /// Client IP.
    pub client_ip: Option<String>,
    /// Client `User-Agent`.
    pub user_agent: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// Upstream URL.
    pub target_url: Option<String>,
    /// Status sent to the client.
    pub status: u16,
    /// Event-stream response.
    pub is_stream: bool,
    /// Model from the request.
    pub model: Option<String>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// Time to first byte (microsecond precision).
    pub ttfb: Option<Duration>,
    /// Total duration (microsecond precision).
    pub duration: Duration,
    /// `completed`, `client_aborted`, `upstream_error`, `upstream_timeout`, `rejected` or
    /// `interrupted` (cut by FastGate at the end of its shutdown grace period).
    pub outcome: String,
    /// Stable error code.
    pub error_code: Option<String>,
    /// `usage.prompt_tokens`.
    pub prompt_tokens: Option<u64>,
    /// `usage.completion_tokens`.
    pub completion_tokens: Option<u64>,
    /// `usage.total_tokens`.
    pub total_tokens: Option<u64>,
}

impl AuditRecord {
    /// A completed request with a status below 400.
    pub fn is_success(&self) -> bool {
        self.outcome == "completed" && self.status < 400
    }
}

/// Metrics window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricsWindow {
    /// 1 hour, 60 s buckets.
    Hour,
    /// 24 hours, 1 h buckets.
    Day,
    /// 7 days, 6 h buckets.
    Week,
    /// 30 days, 1-day buckets (UTC days).
    Month,
}

impl MetricsWindow {
    /// Length of the window.
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Self::Hour => 3600,
            Self::Day => 86_400,
            Self::Week => 7 * 86_400,
            Self::Month => 30 * 86_400,
        })
    }

    /// Width of one series bucket.
    pub fn bucket(self) -> Duration {
        Duration::from_secs(match self {
            Self::Hour => 60,
            Self::Day => 3600,
            Self::Week => 21_600,
            Self::Month => 86_400,
        })
    }

    /// `1h`, `24h`, `7d` or `30d`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "1h",
            Self::Day => "24h",
            Self::Week => "7d",
            Self::Month => "30d",
        }
    }

    /// Parse `1h`, `24h` or `7d`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "1h" => Some(Self::Hour),
            "24h" => Some(Self::Day),
            "7d" => Some(Self::Week),
            _ => None,
        }
    }
}

/// Aggregates over a window.
///
/// The window is exact to the minute: it covers `since` (= `until - window`, rounded down to the
/// minute) to `until`. The series starts at the bucket that holds `since`, so its first bucket
/// only counts from `since` on and its last one ends at `until`; every other bucket is whole. Latency percentiles come from a
/// fixed geometric histogram (bucket ratio 1.1) and are accurate to within ±10 % (relative).
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// The window asked for.
    pub window: MetricsWindow,
    /// Start of the window (`until - window`, rounded down to the minute).
    pub since: SystemTime,
    /// `now`.
    pub until: SystemTime,
    /// Series bucket width.
    pub bucket: Duration,
    /// Requests in the window.
    pub total_requests: u64,
    /// Completed with status < 400.
    pub success_count: u64,
    /// Everything else.
    pub error_count: u64,
    /// `success_count / total_requests` (0 when there are none).
    pub success_rate: f64,
    /// Mean duration, ms. Latency figures leave out the requests FastGate refused itself as the
    /// client's fault (outcome `rejected` with a 4xx: bad key, unknown route, body too large),
    /// which take microseconds; its own 5xx answers stay in.
    pub avg_latency_ms: f64,
    /// Median duration, ms (approximate, see above; 4xx refusals left out).
    pub p50_latency_ms: f64,
    /// 95th percentile duration, ms (approximate, see above; 4xx refusals left out).
    pub p95_latency_ms: f64,
    /// Mean time to first byte over requests that had one, 4xx refusals left out, ms.
    pub avg_ttfb_ms: f64,
    /// Requests the latency figures are computed over (`total_requests` minus the 4xx
    /// refusals; rollup rows written before migration 0003 count every request). When 0, the
    /// latency figures are 0 for want of data, not because requests took no time.
    pub latency_samples: u64,
    /// Requests `avg_ttfb_ms` is computed over (those that received a first byte).
    pub ttfb_samples: u64,
    /// Streamed responses.
    pub stream_requests: u64,
    /// `stream_requests / total_requests`.
    pub stream_share: f64,
    /// Sum of prompt tokens.
    pub prompt_tokens: u64,
    /// Sum of completion tokens.
    pub completion_tokens: u64,
    /// Sum of total tokens.
    pub total_tokens: u64,
    /// Keys enabled and not expired now.
    pub active_keys: u64,
    /// All keys.
    pub total_keys: u64,
    /// Per key (requests without a key are left out), most requests first.
    pub per_key: Vec<KeyUsage>,
    /// Per model (requests without a model are left out), most requests first.
    pub per_model: Vec<ModelUsage>,
    /// One point per bucket, oldest first, empty buckets included.
    pub series: Vec<SeriesPoint>,
}

/// Usage of one key in a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyUsage {
    /// Key id.
    pub key_id: String,
    /// The key's owner as recorded by the most recent request.
    pub source_path: String,
    /// Requests.
    pub requests: u64,
    /// Errors.
    pub errors: u64,
    /// Total tokens.
    pub total_tokens: u64,
}

/// Usage of one model in a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelUsage {
    /// Model name.
    pub model: String,
    /// Requests.
    pub requests: u64,
    /// Total tokens.
    pub total_tokens: u64,
}

/// One series bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesPoint {
    /// Bucket start.
    pub ts: SystemTime,
    /// Requests.
    pub requests: u64,
    /// Errors.
    pub errors: u64,
    /// Total tokens.
    pub total_tokens: u64,
}

/// Aggregates of one period (an hour or a day) of [`Store::periods`](crate::Store::periods).
#[derive(Clone, Debug, PartialEq)]
pub struct PeriodMetrics {
    /// Start of the period.
    pub start: SystemTime,
    /// Requests.
    pub requests: u64,
    /// Requests that ended in an error (status ≥ 400 or no response).
    pub errors: u64,
    /// Streamed requests.
    pub streams: u64,
    /// Requests with a latency figure (FastGate's own refusals of a client's request have none).
    pub latency_samples: u64,
    /// Mean duration, ms; `None` without samples.
    pub avg_latency_ms: Option<f64>,
    /// Median duration, ms (within 10 %, from the latency histogram); `None` without samples.
    pub p50_latency_ms: Option<f64>,
    /// 95th percentile duration, ms; `None` without samples.
    pub p95_latency_ms: Option<f64>,
    /// Prompt tokens reported by the backend.
    pub prompt_tokens: u64,
    /// Completion tokens reported by the backend.
    pub completion_tokens: u64,
    /// Total tokens reported by the backend.
    pub total_tokens: u64,
}
