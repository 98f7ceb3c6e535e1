//! Admin-token check for `/admin/*` (the dashboard files excepted): token from `?token=`,
//! `Authorization: Bearer` or `X-Admin-Token`, compared in constant time; repeated failures from
//! one address are answered with 429.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::state::AppState;

/// The header the admin token may come in. Never forwarded to a backend (the gateway adds it to
/// `api_gateway.strip_headers`).
pub const ADMIN_TOKEN_HEADER: &str = "x-admin-token";

const WINDOW: Duration = Duration::from_secs(60);
const MAX_TRACKED: usize = 10_000;

/// Middleware that applies [`AdminGuardEndpoint`].
#[derive(Debug, Clone)]
pub struct AdminGuard {
    state: Arc<AppState>,
    failures: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
}

impl AdminGuard {
    /// Guard over the shared state (the token is read per request, so reloads apply).
    pub fn new(state: Arc<AppState>) -> Self {
        Self {
            state,
            failures: Arc::default(),
        }
    }
}

impl<E: Endpoint> Middleware<E> for AdminGuard {
    type Output = AdminGuardEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        AdminGuardEndpoint {
            inner: ep,
            guard: self.clone(),
        }
    }
}

/// Endpoint wrapped by [`AdminGuard`].
#[derive(Debug)]
pub struct AdminGuardEndpoint<E> {
    inner: E,
    guard: AdminGuard,
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn presented_token(req: &Request) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get(ADMIN_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        return Some(v.trim().to_owned());
    }
    if let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim_start();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim().to_owned());
        }
    }
    req.params::<TokenQuery>().ok().and_then(|q| q.token)
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(fastgate_layer::error::error_body(message, code).to_vec())
}

impl<E: Endpoint> Endpoint for AdminGuardEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Self::Output> {
        let path = req.uri().path();
        let protected = (path == "/admin" || path.starts_with("/admin/"))
            && !(path == "/admin/ui" || path.starts_with("/admin/ui/"));
        if !protected {
            return self.inner.call(req).await.map(IntoResponse::into_response);
        }
        let ip = req
            .remote_addr()
            .as_socket_addr()
            .map(std::net::SocketAddr::ip);
        let limit = self
            .guard
            .state
            .settings()
            .config
            .security
            .admin_max_failures_per_minute;
        let now = Instant::now();
        if let (Some(ip), Ok(map)) = (ip, self.guard.failures.lock())
            && let Some((since, count)) = map.get(&ip)
            && limit > 0
            && now.duration_since(*since) < WINDOW
            && *count >= limit
        {
            let retry = WINDOW
                .saturating_sub(now.duration_since(*since))
                .as_secs()
                .max(1);
            let mut res = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                "too many failed admin logins from this address; try again later",
            );
            if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Ok(res);
        }
        let expected = digest(
            self.guard
                .state
                .settings()
                .config
                .security
                .admin_token
                .expose(),
        );
        let ok = presented_token(&req)
            .map(|t| bool::from(digest(&t).ct_eq(&expected)))
            .unwrap_or(false);
        if !ok {
            if let (Some(ip), Ok(mut map)) = (ip, self.guard.failures.lock()) {
                if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
                    map.retain(|_, (since, _)| now.duration_since(*since) < WINDOW);
                }
                // Bounded memory: past MAX_TRACKED live addresses, new ones are not tracked.
                if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
                    tracing::warn!("admin failure table full; not tracking another address");
                } else {
                    let entry = map.entry(ip).or_insert((now, 0));
                    if now.duration_since(entry.0) >= WINDOW {
                        *entry = (now, 0);
                    }
                    entry.1 += 1;
                }
            }
            tracing::warn!(
                client = ip.map(tracing::field::display),
                path,
                "rejected admin request: invalid admin token"
            );
            return Ok(error(
                StatusCode::UNAUTHORIZED,
                "invalid_admin_token",
                "invalid admin token",
            ));
        }
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}
