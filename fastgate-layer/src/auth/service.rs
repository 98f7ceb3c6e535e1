//! [`ApiKeyAuthLayer`], [`ApiKeyAuth`] and their [`ResponseFuture`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::resolver::{KeyResolver, PresentedKey, ResolveError};
use crate::audit::{AuditSlot, Outcome};
use crate::error::{GrpcContentType, grpc_rejection, rejection};
use crate::extensions::{KeyIdentity, RouteConfig};

/// Permission required when the request carries no [`RouteConfig`].
pub const DEFAULT_PERMISSION: &str = "chat";

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No key in `authorization` or `x-api-key`.
    #[error("missing API key")]
    Missing,
    /// Malformed, unknown, disabled or revoked. Deliberately one case with one message.
    #[error("invalid API key")]
    Invalid,
    /// The key has expired.
    #[error("expired API key")]
    Expired,
    /// The key does not grant the route's permission.
    #[error("the API key is not allowed to use this route")]
    PermissionDenied,
    /// The resolver could not answer.
    #[error("API key lookup is unavailable")]
    Unavailable,
}

impl AuthError {
    /// HTTP status of the JSON response, and the status the audit record of a gRPC refusal
    /// shows (its wire status is 200).
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing | Self::Invalid | Self::Expired => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// gRPC status code of the refusal sent to a gRPC caller: 16 `UNAUTHENTICATED`, 7
    /// `PERMISSION_DENIED` or 14 `UNAVAILABLE` (the gRPC mapping of [`status`](Self::status)).
    pub fn grpc_status(&self) -> u8 {
        match self {
            Self::Missing | Self::Invalid | Self::Expired => 16,
            Self::PermissionDenied => 7,
            Self::Unavailable => 14,
        }
    }

    /// Stable error code, as in the JSON body and the audit record.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing_api_key",
            Self::Invalid => "invalid_api_key",
            Self::Expired => "expired_api_key",
            Self::PermissionDenied => "permission_denied",
            Self::Unavailable => "auth_unavailable",
        }
    }
}

/// Layer that applies [`ApiKeyAuth`]. See the [module docs](super) for an example.
#[derive(Clone, Debug)]
pub struct ApiKeyAuthLayer<R> {
    resolver: R,
}

impl<R> ApiKeyAuthLayer<R> {
    /// Authenticate requests with keys resolved by `resolver`.
    pub fn new(resolver: R) -> Self {
        Self { resolver }
    }
}

impl<S, R: Clone> Layer<S> for ApiKeyAuthLayer<R> {
    type Service = ApiKeyAuth<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyAuth {
            inner,
            resolver: self.resolver.clone(),
        }
    }
}

/// Middleware that authenticates the gateway key. See the [module docs](super) for details.
#[derive(Clone, Debug)]
pub struct ApiKeyAuth<S, R> {
    inner: S,
    resolver: R,
}

impl<S, R> ApiKeyAuth<S, R> {
    /// Wrap `inner`, resolving keys with `resolver`.
    pub fn new(inner: S, resolver: R) -> Self {
        Self { inner, resolver }
    }
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Consume `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R, ReqB, ResB> Service<Request<ReqB>> for ApiKeyAuth<S, R>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    R: KeyResolver,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, R::Future, ReqB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let key = match presented_key(req.headers()) {
            Ok(key) => key,
            Err(err) => return ResponseFuture::rejected(err, GrpcContentType::of(req.headers())),
        };
        // A client that also put its gateway key in the query string (`?api_key=…`) must not
        // have it forwarded: the parameters holding it are removed.
        if let Some(uri) = without_key_in_query(req.uri(), key.expose()) {
            *req.uri_mut() = uri;
        }
        // Nor a copy in another header (`api-key: <key>`, Azure's convention).
        remove_key_copies(req.headers_mut(), key.expose());
        let lookup = self.resolver.resolve(key);
        // Move the service that `poll_ready` readied into the future; keep the clone.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Lookup { lookup },
            service: Some(ready),
            request: Some(req),
            rejection: None,
        }
    }
}

/// `uri` without the query parameters whose value is `key` (or `Bearer <key>`), percent-decoded;
/// `None` when none is (the usual case: a substring search or two when there is a query).
fn without_key_in_query(uri: &http::Uri, key: &str) -> Option<http::Uri> {
    let query = uri.query()?;
    if !query.contains(key) && !query.contains('%') {
        return None;
    }
    let holds_key = |pair: &&str| {
        let value = pair
            .split_once('=')
            .map_or(*pair, |(_, v)| v)
            .replace('+', " ");
        let value = percent_encoding::percent_decode_str(&value).decode_utf8_lossy();
        let value = value.trim();
        value == key || strip_bearer(value).is_some_and(|token| token.trim() == key)
    };
    if !query.split('&').any(|pair| holds_key(&pair)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|pair| !holds_key(pair)).collect();
    let path = uri.path();
    let path_and_query = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

/// Remove every header other than `x-api-key` and `authorization` (which the scrub layer always
/// removes) whose value is `key` or `Bearer <key>`. A length comparison per header rules out
/// almost every value; nothing is allocated unless a copy is found.
fn remove_key_copies(headers: &mut HeaderMap, key: &str) {
    let is_copy = |name: &HeaderName, value: &HeaderValue| {
        !is_key_header(name) && holds_key(value.as_bytes(), key)
    };
    if !headers.iter().any(|(name, value)| is_copy(name, value)) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .iter()
        .filter(|(name, value)| is_copy(name, value))
        .map(|(name, _)| name.clone())
        .collect();
    for name in names {
        // Other values of the same header are kept.
        let kept: Vec<HeaderValue> = headers
            .get_all(&name)
            .iter()
            .filter(|v| !holds_key(v.as_bytes(), key))
            .cloned()
            .collect();
        headers.remove(&name);
        for value in kept {
            headers.append(name.clone(), value);
        }
    }
}

/// Whether a header value is `key` or `Bearer <key>` (surrounding whitespace ignored).
#[inline]
fn holds_key(value: &[u8], key: &str) -> bool {
    let value = value.trim_ascii();
    if value.len() == key.len() {
        return value == key.as_bytes();
    }
    // `Bearer` and at least one space, a few more at most.
    if value.len() < key.len() + 7 || value.len() > key.len() + 16 {
        return false;
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(strip_bearer)
        .is_some_and(|token| token.trim() == key)
}

fn is_key_header(name: &HeaderName) -> bool {
    name == header::AUTHORIZATION || name.as_str() == "x-api-key"
}

/// Extract and shape-check the presented key, as [`ApiKeyAuth`] does before any lookup.
///
/// `X-API-Key` wins over `Authorization`; `Authorization` must use the `Bearer` scheme (matched
/// case-insensitively). Errors are [`AuthError::Missing`] or [`AuthError::Invalid`]. Public so that
/// it can be fuzzed and reused.
///
/// ```
/// use fastgate_layer::auth::{AuthError, extract_key};
/// use http::HeaderMap;
///
/// let mut headers = HeaderMap::new();
/// assert!(matches!(extract_key(&headers), Err(AuthError::Missing)));
/// headers.insert("authorization", "BEARER sk-1".parse().unwrap());
/// assert_eq!(extract_key(&headers).unwrap().expose(), "sk-1");
/// headers.insert("authorization", "Token sk-1".parse().unwrap());
/// assert!(matches!(extract_key(&headers), Err(AuthError::Invalid)));
/// ```
pub fn extract_key(headers: &HeaderMap) -> Result<PresentedKey, AuthError> {
    presented_key(headers)
}

fn presented_key(headers: &HeaderMap) -> Result<PresentedKey, AuthError> {
    let raw = if let Some(v) = headers.get("x-api-key") {
        v.to_str().map_err(|_| AuthError::Invalid)?.trim()
    } else if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| AuthError::Invalid)?;
        strip_bearer(v).ok_or(AuthError::Invalid)?.trim()
    } else {
        return Err(AuthError::Missing);
    };
    PresentedKey::parse(raw).ok_or(AuthError::Invalid)
}

/// `Bearer <token>` with the scheme matched case-insensitively; `None` for any other scheme.
fn strip_bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    // At least one space between the scheme and the token.
    let token = rest.strip_prefix(' ')?;
    Some(token)
}

pin_project! {
    /// Response future for [`ApiKeyAuth`].
    pub struct ResponseFuture<S, L, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<L, S::Future>,
        service: Option<S>,
        request: Option<Request<ReqB>>,
        // A refusal decided in `call`, and the request's gRPC media type if it is a gRPC call.
        rejection: Option<(AuthError, Option<GrpcContentType>)>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<L, F> {
        Rejected,
        Lookup { #[pin] lookup: L },
        Inner { #[pin] fut: F, identity: Option<KeyIdentity> },
    }
}

impl<S, L, ReqB> fmt::Debug for ResponseFuture<S, L, ReqB>
where
    S: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("auth::ResponseFuture")
            .finish_non_exhaustive()
    }
}

impl<S, L, ReqB> ResponseFuture<S, L, ReqB>
where
    S: Service<Request<ReqB>>,
{
    fn rejected(err: AuthError, grpc: Option<GrpcContentType>) -> Self {
        Self {
            state: State::Rejected,
            service: None,
            request: None,
            rejection: Some((err, grpc)),
        }
    }
}

impl<S, L, ReqB, ResB> Future for ResponseFuture<S, L, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    L: Future<Output = Result<KeyIdentity, ResolveError>>,
    ResB: From<Bytes>,
{
    type Output = Result<Response<ResB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Rejected => {
                    let (err, grpc) = this.rejection.take().expect("polled after completion");
                    return Poll::Ready(Ok(reject(&err, None, grpc)));
                }
                StateProj::Lookup { lookup } => {
                    let looked_up = ready!(lookup.poll(cx));
                    let mut req = this.request.take().expect("polled after completion");
                    let identity = match looked_up {
                        Ok(identity) => identity,
                        Err(ResolveError::Invalid) => {
                            let grpc = GrpcContentType::of(req.headers());
                            return Poll::Ready(Ok(reject(&AuthError::Invalid, None, grpc)));
                        }
                        // The same answer as an unknown key; the audit record names the key.
                        Err(ResolveError::Refused(identity)) => {
                            let grpc = GrpcContentType::of(req.headers());
                            return Poll::Ready(Ok(reject(
                                &AuthError::Invalid,
                                Some(identity),
                                grpc,
                            )));
                        }
                        Err(ResolveError::Unavailable(source)) => {
                            // Once a second at most: during a database outage every request
                            // with a key not in the cache comes here.
                            static UNAVAILABLE_LOG: crate::log_throttle::LogThrottle =
                                crate::log_throttle::LogThrottle::new();
                            if let Some(skipped) = UNAVAILABLE_LOG.allow() {
                                tracing::warn!(error = %crate::ErrorChain(&*source), skipped, "key resolver unavailable");
                            }
                            let grpc = GrpcContentType::of(req.headers());
                            return Poll::Ready(Ok(reject(&AuthError::Unavailable, None, grpc)));
                        }
                    };
                    if identity.is_expired_at(SystemTime::now()) {
                        let grpc = GrpcContentType::of(req.headers());
                        return Poll::Ready(Ok(reject(&AuthError::Expired, Some(identity), grpc)));
                    }
                    let permission = req
                        .extensions()
                        .get::<RouteConfig>()
                        .map_or(DEFAULT_PERMISSION, |r| &*r.permission);
                    if !identity.allows(permission) {
                        return Poll::Ready(Ok(reject(
                            &AuthError::PermissionDenied,
                            Some(identity),
                            GrpcContentType::of(req.headers()),
                        )));
                    }
                    if let Some(slot) = req.extensions().get::<AuditSlot>() {
                        slot.key(&identity);
                    }
                    req.extensions_mut().insert(identity.clone());
                    let fut = this
                        .service
                        .take()
                        .expect("polled after completion")
                        .call(req);
                    this.state.set(State::Inner {
                        fut,
                        identity: Some(identity),
                    });
                }
                StateProj::Inner { fut, identity } => {
                    let mut res = ready!(fut.poll(cx))?;
                    if let Some(identity) = identity.take() {
                        res.extensions_mut().insert(identity);
                    }
                    return Poll::Ready(Ok(res));
                }
            }
        }
    }
}

/// The refusal of `err`: in gRPC's form, with the request's media type, for a gRPC call.
fn reject<B: From<Bytes>>(
    err: &AuthError,
    identity: Option<KeyIdentity>,
    grpc: Option<GrpcContentType>,
) -> Response<B> {
    tracing::debug!(
        code = err.code(),
        grpc = grpc.is_some(),
        "request rejected by auth"
    );
    let mut res = if let Some(content_type) = grpc {
        grpc_rejection(
            &content_type,
            err.grpc_status(),
            err.status(),
            err.code(),
            &err.to_string(),
            Outcome::Rejected,
        )
    } else {
        rejection(
            err.status(),
            err.code(),
            &err.to_string(),
            Outcome::Rejected,
        )
    };
    if let Some(identity) = identity {
        res.extensions_mut().insert(identity);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::StaticKeys;
    use crate::extensions::{Backend, Rejected};
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    fn identity(perms: &[&str], expires_at: Option<SystemTime>) -> KeyIdentity {
        KeyIdentity {
            key_id: "key-1".into(),
            source_path: "team".into(),
            permissions: perms.iter().map(|p| (*p).to_owned()).collect(),
            expires_at,
        }
    }

    type Res = Response<Full<Bytes>>;

    async fn call<R: KeyResolver>(resolver: R, req: Request<()>) -> Res {
        let svc = ServiceBuilder::new()
            .layer(ApiKeyAuthLayer::new(resolver))
            .service(service_fn(|req: Request<()>| async move {
                let id = req
                    .extensions()
                    .get::<KeyIdentity>()
                    .unwrap()
                    .key_id
                    .clone();
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(id.to_string()))))
            }));
        svc.oneshot(req).await.unwrap()
    }

    fn keys() -> StaticKeys {
        StaticKeys::new([
            ("sk-good", identity(&["chat"], None)),
            (
                "sk-old",
                identity(&["chat"], Some(SystemTime::now() - Duration::from_secs(1))),
            ),
            ("sk-embed", identity(&["embeddings"], None)),
        ])
    }

    fn req(name: &str, value: &[u8]) -> Request<()> {
        Request::builder()
            .header(name, http::HeaderValue::from_bytes(value).unwrap())
            .body(())
            .unwrap()
    }

    async fn code(res: Res) -> (StatusCode, String, Option<Rejected>) {
        let status = res.status();
        let rejected = res.extensions().get::<Rejected>().copied();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap(), rejected)
    }

    #[tokio::test]
    async fn both_header_styles_accepted() {
        for (name, value) in [
            ("x-api-key", &b"sk-good"[..]),
            ("authorization", b"Bearer sk-good"),
            ("authorization", b"bEaReR sk-good"),
        ] {
            let res = call(keys(), req(name, value)).await;
            assert_eq!(res.status(), StatusCode::OK, "{name}");
            assert_eq!(
                &*res.extensions().get::<KeyIdentity>().unwrap().key_id,
                "key-1"
            );
        }
    }

    #[tokio::test]
    async fn missing_key_is_401_missing() {
        let (status, body, rejected) = code(call(keys(), Request::new(())).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("missing_api_key"));
        assert_eq!(rejected.unwrap().outcome, Outcome::Rejected);
        // A JSON refusal's audit status is its own.
        assert_eq!(rejected.unwrap().audit_status, None);
    }

    #[tokio::test]
    async fn malformed_and_unknown_share_one_message_and_never_echo() {
        let counted = CountingResolver::default();
        let cases: [(&str, &[u8]); 6] = [
            ("x-api-key", b"sk-unknown"),
            ("authorization", b"Basic abc"),
            ("authorization", b"Bearer "),
            ("authorization", b"Bearersk-good"),
            ("x-api-key", b"sk with space"),
            ("x-api-key", &[b'a'; 300]),
        ];
        let mut bodies = Vec::new();
        for (name, value) in cases {
            let (status, body, _) = code(call(counted.clone(), req(name, value)).await).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(body.contains("invalid_api_key"), "{body}");
            assert!(!body.contains("sk-"));
            bodies.push(body);
        }
        assert!(bodies.windows(2).all(|w| w[0] == w[1]));
        // Only the well-shaped unknown key reached the resolver.
        assert_eq!(counted.0.load(Ordering::SeqCst), 1);
        let non_ascii = call(keys(), req("x-api-key", "sk-ü".as_bytes())).await;
        assert_eq!(non_ascii.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn expired_and_permission() {
        let (status, body, _) = code(call(keys(), req("x-api-key", b"sk-old")).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("expired_api_key"));

        let res = call(keys(), req("x-api-key", b"sk-embed")).await;
        assert!(res.extensions().get::<KeyIdentity>().is_some());
        let (status, body, _) = code(res).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("permission_denied"));

        let mut r = req("x-api-key", b"sk-embed");
        r.extensions_mut().insert(RouteConfig {
            name: "emb".into(),
            permission: "embeddings".into(),
            backend: Arc::new(Backend {
                base_url: "http://127.0.0.1:1".parse().unwrap(),
                path: "/".into(),
                api_key: None,
                key_header: header::AUTHORIZATION,
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
            }),
        });
        assert_eq!(call(keys(), r).await.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn unavailable_resolver_is_503() {
        #[derive(Clone)]
        struct Down;
        impl KeyResolver for Down {
            type Future = std::future::Ready<Result<KeyIdentity, ResolveError>>;
            fn resolve(&self, _key: PresentedKey) -> Self::Future {
                std::future::ready(Err(ResolveError::Unavailable("db down".into())))
            }
        }
        let (status, body, _) = code(call(Down, req("x-api-key", b"sk-good")).await).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("auth_unavailable"));
    }

    #[tokio::test]
    async fn grpc_callers_get_a_grpc_status() {
        #[derive(Clone)]
        struct Down;
        impl KeyResolver for Down {
            type Future = std::future::Ready<Result<KeyIdentity, ResolveError>>;
            fn resolve(&self, _key: PresentedKey) -> Self::Future {
                std::future::ready(Err(ResolveError::Unavailable("db down".into())))
            }
        }
        let grpc = |content_type: &str, key: Option<&str>| {
            let mut req = Request::builder().header("content-type", content_type);
            if let Some(key) = key {
                req = req.header("x-api-key", key);
            }
            req.body(()).unwrap()
        };
        // Each refusal answers with the request's own gRPC media type, normalised: a gRPC-Web
        // client fails a call answered in another family or codec. Every path a refusal takes
        // (before the lookup, after it, after the identity checks) is covered.
        let cases = [
            (
                call(keys(), grpc("application/grpc+proto", None)).await,
                "application/grpc+proto",
                "16",
                StatusCode::UNAUTHORIZED,
                "missing API key",
                "missing_api_key",
            ),
            (
                call(keys(), grpc("application/grpc-web+proto", Some("sk-nope"))).await,
                "application/grpc-web+proto",
                "16",
                StatusCode::UNAUTHORIZED,
                "invalid API key",
                "invalid_api_key",
            ),
            (
                call(
                    keys(),
                    grpc("Application/gRPC-Web-Text; charset=x", Some("sk-old")),
                )
                .await,
                "application/grpc-web-text",
                "16",
                StatusCode::UNAUTHORIZED,
                "expired API key",
                "expired_api_key",
            ),
            (
                call(keys(), grpc("application/grpc+json", Some("sk-embed"))).await,
                "application/grpc+json",
                "7",
                StatusCode::FORBIDDEN,
                "the API key is not allowed to use this route",
                "permission_denied",
            ),
            (
                call(Down, grpc("application/grpc-web", Some("sk-good"))).await,
                "application/grpc-web",
                "14",
                StatusCode::SERVICE_UNAVAILABLE,
                "API key lookup is unavailable",
                "auth_unavailable",
            ),
        ];
        for (res, content_type, grpc_status, status, message, code) in cases {
            // Trailers-Only: HTTP 200, the status in the headers, no body.
            assert_eq!(res.status(), StatusCode::OK, "{code}");
            assert_eq!(res.headers()["content-type"], content_type, "{code}");
            assert_eq!(res.headers()["grpc-status"], grpc_status, "{code}");
            assert_eq!(res.headers()["grpc-message"], message, "{code}");
            let rejected = res.extensions().get::<Rejected>().copied().unwrap();
            assert_eq!((rejected.code, rejected.outcome), (code, Outcome::Rejected));
            // Audit records the status the JSON refusal would have had, not the wire's 200.
            assert_eq!(rejected.audit_status, Some(status), "{code}");
            let (_, body, _) = self::code(res).await;
            assert!(body.is_empty(), "{code}: {body}");
        }
        // A key accepted for a gRPC call reaches the service as for any other.
        let res = call(keys(), grpc("application/grpc", Some("sk-good"))).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("grpc-status").is_none());
    }

    /// The headers the inner service received for `req`.
    async fn forwarded_headers(req: Request<()>) -> HeaderMap {
        let svc = ServiceBuilder::new()
            .layer(ApiKeyAuthLayer::new(keys()))
            .service(service_fn(|req: Request<()>| async move {
                let headers = serde_json::to_string(
                    &req.headers()
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
                        .collect::<Vec<_>>(),
                )
                .unwrap();
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(headers))))
            }));
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let pairs: Vec<(String, String)> = serde_json::from_slice(&body).unwrap();
        let mut headers = HeaderMap::new();
        for (n, v) in pairs {
            headers.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        headers
    }

    #[tokio::test]
    async fn copies_of_the_key_in_other_headers_are_removed() {
        for (name, value) in [
            ("x-api-key", "sk-good"),
            ("authorization", "Bearer sk-good"),
        ] {
            let req = Request::builder()
                .header(name, value)
                .header("api-key", "sk-good")
                .header("x-copy", " Bearer  sk-good ")
                .header("x-copy", "kept")
                .header("x-lower", "bearer sk-good")
                .header("x-longer", "sk-good2")
                .header("x-contains", "a sk-good b")
                .header("x-other", "1")
                .body(())
                .unwrap();
            let h = forwarded_headers(req).await;
            assert!(h.get("api-key").is_none(), "{name}: {h:?}");
            assert!(h.get("x-lower").is_none(), "{name}: {h:?}");
            let copies: Vec<_> = h.get_all("x-copy").iter().collect();
            assert_eq!(copies, ["kept"], "{name}");
            assert_eq!(h["x-longer"], "sk-good2");
            assert_eq!(h["x-contains"], "a sk-good b");
            assert_eq!(h["x-other"], "1");
            // The key headers themselves are the scrub layer's to remove.
            assert_eq!(h[name], value);
        }
    }

    #[derive(Clone, Default)]
    struct CountingResolver(Arc<AtomicUsize>);
    impl KeyResolver for CountingResolver {
        type Future = std::future::Ready<Result<KeyIdentity, ResolveError>>;
        fn resolve(&self, _key: PresentedKey) -> Self::Future {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err(ResolveError::Invalid))
        }
    }
}
