//! The contract between layers: which request and response extensions each layer reads and writes.
//!
//! | extension | written by | read by |
//! |---|---|---|
//! | [`RouteConfig`] (request) | [`RouteLayer`](crate::route::RouteLayer), or the embedding application | auth (required permission), inject (upstream key), forward (backend) |
//! | [`ClientAddr`] (request) | the embedding application (accept loop / poem middleware) | audit |
//! | [`KeyIdentity`] (request and response) | auth | inject (later: per-key policy), audit |
//! | [`Rejected`] (response) | any layer that answers on its own (route, limit, auth, forward) | audit |
//! | [`TargetUrl`] (response) | forward | audit |

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::secret::Secret;

/// Who is calling: the result of resolving a presented gateway key.
///
/// Nothing in it is secret: `key_id` is a public identifier that is safe to log and store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyIdentity {
    /// Public key id, safe to log (never the key itself).
    pub key_id: Arc<str>,
    /// The owner / tenant label of the key (`source_path` in M-FastGate).
    pub source_path: Arc<str>,
    /// Permissions granted to the key, e.g. `chat`.
    pub permissions: Arc<[String]>,
    /// When the key stops being valid; `None` means never.
    pub expires_at: Option<SystemTime>,
}

impl KeyIdentity {
    /// Whether the key grants `permission`. The permission `*` grants everything.
    pub fn allows(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission || p == "*")
    }

    /// Whether the key has expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The client's address, as seen by the accept loop. Inserted by the embedding application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Marks a response that a FastGate layer produced itself instead of the upstream.
///
/// Carries the stable error code (`invalid_api_key`, `upstream_timeout`, …) and the outcome
/// audit should record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Stable, low-cardinality error code, as in the JSON error body.
    pub code: &'static str,
    /// What audit should record for this request.
    pub outcome: crate::audit::Outcome,
}

/// The full upstream URL a request was sent to (no credentials in it). Inserted by forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUrl(pub Arc<str>);

/// Per-route settings that the inner layers read from the request extensions.
///
/// One route today has one backend; the type is shaped so that a later version can hold several
/// (failover) without changing the layers that read the permission and the key.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// Route name, for logs and audit.
    pub name: Arc<str>,
    /// Permission a key needs to use this route (`chat` by default).
    pub permission: Arc<str>,
    /// The backend requests are forwarded to.
    pub backend: Arc<Backend>,
}

/// One upstream: where requests go, the credential to present, and timeouts.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Scheme, authority and optional base path, e.g. `http://127.0.0.1:1030`.
    pub base_url: http::Uri,
    /// Path appended to `base_url`, e.g. `/miniai/v2/chat/completions`.
    pub path: String,
    /// The real upstream credential; `None` forwards without one.
    pub api_key: Option<Secret>,
    /// Header carrying the credential. `authorization` gets `Bearer <key>`; any other header gets the bare key.
    pub key_header: http::HeaderName,
    /// Time allowed to open a connection.
    pub connect_timeout: std::time::Duration,
    /// Time allowed until the response headers arrive.
    pub response_timeout: std::time::Duration,
    /// Longest silence allowed between two body chunks of the response (never a total timeout).
    pub idle_timeout: std::time::Duration,
}
