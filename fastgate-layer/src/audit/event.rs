//! The audit record: one per request, whatever happened to it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The response was delivered in full (whatever its status code), or, for a stream, its
    /// terminal event was (`data: [DONE]`, the Responses API's `response.completed`, Anthropic's
    /// `message_stop`, Ollama's `"done":true` line; see [`UsageScanner::terminal`]) and the client
    /// hung up before the backend ended the body.
    ///
    /// [`UsageScanner::terminal`]: super::scan::UsageScanner::terminal
    Completed,
    /// The client went away before the response was complete.
    ClientAborted,
    /// The upstream was unreachable, failed or reset mid-response.
    UpstreamError,
    /// The upstream did not answer (or went silent) in time.
    UpstreamTimeout,
    /// FastGate refused the request itself (auth, size limit, unknown route).
    Rejected,
    /// The host cut the response while it was still running: it was stopping, and the request
    /// outlived the shutdown grace period (see [`AuditStats::cutting`](crate::audit::AuditStats::cutting)).
    Interrupted,
}

impl Outcome {
    /// Stable lower-case name, as stored in the audit table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::ClientAborted => "client_aborted",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Rejected => "rejected",
            Self::Interrupted => "interrupted",
        }
    }

    /// Parse a name produced by [`Outcome::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "completed" => Self::Completed,
            "client_aborted" => Self::ClientAborted,
            "upstream_error" => Self::UpstreamError,
            "upstream_timeout" => Self::UpstreamTimeout,
            "rejected" => Self::Rejected,
            "interrupted" => Self::Interrupted,
            _ => return None,
        })
    }
}

/// Token usage as reported by the upstream (`usage` in a JSON response or in an SSE chunk).
///
/// A count the backend did not report is `None` (an embeddings answer has no completion
/// tokens), not 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// `usage.prompt_tokens`, or `usage.input_tokens` (OpenAI's Responses API, Anthropic's
    /// Messages API).
    pub prompt_tokens: Option<u64>,
    /// `usage.completion_tokens`, or `usage.output_tokens`.
    pub completion_tokens: Option<u64>,
    /// `usage.total_tokens`; when the backend does not report it (Anthropic), the sum of the
    /// two counts above.
    pub total_tokens: u64,
}

/// One audit record. Contains no secret: keys appear only as their public id.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    /// Same text as the `X-Request-Id` header the client received.
    pub request_id: String,
    /// When the request reached the audit layer.
    pub started_at: SystemTime,
    /// Public id of the key, when one was resolved.
    pub key_id: Option<Arc<str>>,
    /// The key's `source_path`, when one was resolved.
    pub source_path: Option<Arc<str>>,
    /// Client IP address, when the application provided [`ClientAddr`](crate::ClientAddr).
    pub client_ip: Option<String>,
    /// `User-Agent` of the client.
    pub user_agent: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Path as received by the gateway (without the query string, which may hold credentials).
    pub path: String,
    /// Upstream URL the request was forwarded to, if it was.
    pub target_url: Option<Arc<str>>,
    /// Status code sent to the client; for a refusal that names another
    /// ([`Rejected::audit_status`](crate::Rejected::audit_status): a gRPC refusal, HTTP 200 on
    /// the wire), that one (401, 403, 503).
    pub status: u16,
    /// Whether the request asked for a stream (a top-level `"stream": true` in its JSON body) or
    /// the response was one (`text/event-stream`, NDJSON): a streamed request refused by the
    /// backend (429) or timed out before its stream began is a stream too.
    pub is_stream: bool,
    /// `model` from the request JSON, if present.
    pub model: Option<String>,
    /// Request body bytes received from the client.
    pub request_bytes: u64,
    /// Response body bytes sent to the client.
    pub response_bytes: u64,
    /// Time from the request's arrival to the first response body byte.
    pub ttfb: Option<Duration>,
    /// Time from the request's arrival to the end of the response (or its abort).
    pub duration: Duration,
    /// How the request ended.
    pub outcome: Outcome,
    /// Stable error code when FastGate answered with an error, or the stream failed.
    pub error_code: Option<&'static str>,
    /// Token usage, when the upstream reported it.
    pub usage: Option<TokenUsage>,
}

impl AuditEvent {
    /// An event with the given id, method and path; every other field empty. For tests and sinks.
    pub fn new(
        request_id: impl Into<String>,
        method: impl Into<String>,
        path: impl Into<String>,
    ) -> Self {
        Self {
            request_id: request_id.into(),
            started_at: SystemTime::now(),
            key_id: None,
            source_path: None,
            client_ip: None,
            user_agent: None,
            method: method.into(),
            path: path.into(),
            target_url: None,
            status: 0,
            is_stream: false,
            model: None,
            request_bytes: 0,
            response_bytes: 0,
            ttfb: None,
            duration: Duration::ZERO,
            outcome: Outcome::Completed,
            error_code: None,
            usage: None,
        }
    }
}
