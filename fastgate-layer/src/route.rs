//! Path routing: pick the [`RouteConfig`] for a request, or answer 404.
//!
//! [`RouteTable`] maps a request path (e.g. `/proxy/miniai/v2/chat/completions`) to a
//! [`RouteConfig`]; a path that has no route of its own takes the one FastAPI (which M-FastGate
//! ran on) would have found: percent-encoded characters decoded, one trailing slash dropped
//! ([`RouteTable::get_like_fastapi`]). It is cheap to clone and shared: [`RouteTable::replace`] swaps the whole map
//! atomically (for a configuration reload) while requests already routed keep the config they got.
//! [`RouteLayer`] inserts the match into the request extensions (read by auth, inject and forward)
//! or answers 404 JSON `route_not_found`, marked [`Rejected`](crate::Rejected).
//!
//! # Prefix routes
//!
//! A key ending in `/*` (`/proxy/openai/*`) is a prefix route: it matches the prefix itself
//! (`/proxy/openai`) and every path below it at a `/` (`/proxy/openai/models/gpt-4`, not
//! `/proxy/openaix`). The part after the prefix (empty, or starting with `/`) is inserted as a
//! [`PathSuffix`] beside the [`RouteConfig`], and the forward service appends it to the backend's
//! path (`/v1` → `/v1/models/gpt-4`; the prefix itself → `/v1`, with a trailing slash → `/v1/`).
//! The order, which no spelling of a path can get around:
//!
//! 1. the exact route of the path ([`RouteTable::get`]): nothing more than before is done for it;
//! 2. the exact route FastAPI would have found ([`RouteTable::get_like_fastapi`]), so that
//!    `/proxy/v1/embeddings/` and `/proxy/v1/%65mbeddings` reach the exact route
//!    `/proxy/v1/embeddings` (and need its permission), not a prefix route above it;
//! 3. the longest prefix route matching the path as received, when the table has any
//!    ([`RouteTable::get_prefix`]). Its suffix must not be able to leave the backend's path:
//!    a `.` or `..` segment, an empty one (`//`), one ending with a dot or a space (`...`,
//!    `..%20`, fullwidth dots, `embeddings.`), a backslash, a `;` (`%3B` too: servlet containers
//!    drop `;x`), or a percent-escape of `/`, `\`, `%`, a control character or of a character
//!    that needs none (`%2e`, `%65`), is answered
//!    400 JSON `invalid_path` (marked [`Rejected`](crate::Rejected)), never forwarded. That is what keeps
//!    `/proxy/v1/%65mbeddings/x` from reaching a stricter prefix route's backend path
//!    (`/proxy/v1/embeddings/*`) under a looser one's permission, as the backend would decode it.
//!
//! Prefix routes match the path as received: an encoded spelling of the prefix itself
//! (`/proxy/%6fpenai/x`) is a 404.
//!
//! It also refuses the methods that must never reach a backend, whatever the path: `TRACE` and
//! `TRACK` (a backend that honours them, as Apache does by default, echoes the request head
//! back, and with it the real upstream key the gateway injected) and `CONNECT` (a tunnel, not a
//! request). They are matched ignoring case and answered 405 JSON `method_not_allowed` with an
//! `Allow` header, marked [`Rejected`](crate::Rejected), before anything else is done (no key
//! lookup, nothing forwarded). Every other method, extension methods included, is routed.
//!
//! A route holds one backend today; [`RouteConfig::backend`] is an `Arc`, so a later version can
//! hold several (failover) in the table without changing how the layers read it.
//!
//! # Example
//!
//! ```
//! use std::{collections::HashMap, sync::Arc, time::Duration};
//! use fastgate_layer::{Backend, RouteConfig, route::{RouteLayer, RouteTable}};
//! use http::{Request, Response, StatusCode, header};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let backend = Arc::new(Backend {
//!     base_url: "http://127.0.0.1:1030".parse().unwrap(),
//!     path: "/v1/chat/completions".into(),
//!     api_key: None,
//!     key_header: header::AUTHORIZATION,
//!     connect_timeout: Duration::from_secs(5),
//!     response_timeout: Duration::from_secs(60),
//!     idle_timeout: Duration::from_secs(60),
//! });
//! let table = RouteTable::new(HashMap::from([(
//!     "/proxy/chat".to_owned(),
//!     RouteConfig { name: "chat".into(), permission: "chat".into(), backend },
//! )]));
//! let svc = ServiceBuilder::new()
//!     .layer(RouteLayer::new(table.clone()))
//!     .service(service_fn(|req: Request<()>| async move {
//!         let name = req.extensions().get::<RouteConfig>().unwrap().name.to_string();
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(name))))
//!     }));
//! let res = svc.clone().oneshot(Request::get("/proxy/chat").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! let res = svc.oneshot(Request::get("/nope").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::NOT_FOUND);
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use percent_encoding::percent_decode_str;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::audit::Outcome;
use crate::error::rejection;
use crate::extensions::{InvalidPathSuffix, PathSuffix, RouteConfig};

/// A shared, swappable map from request path to [`RouteConfig`]: exact paths, and prefixes
/// written `/prefix/*` (see [Prefix routes](self#prefix-routes)).
#[derive(Clone, Default)]
pub struct RouteTable {
    routes: Arc<RwLock<Arc<Table>>>,
}

/// The routes as given, split into exact paths and prefixes.
#[derive(Default)]
struct Table {
    /// Every route by the key it was given under (`/*` keys included), for [`RouteTable::snapshot`].
    all: Arc<HashMap<String, RouteConfig>>,
    /// Routes by exact path.
    exact: HashMap<String, RouteConfig>,
    /// Prefix routes by their prefix (the key without `/*`), longest first.
    prefixes: Vec<(Box<str>, RouteConfig)>,
}

impl Table {
    fn new(routes: HashMap<String, RouteConfig>) -> Self {
        let mut exact = HashMap::with_capacity(routes.len());
        let mut prefixes: Vec<(Box<str>, RouteConfig)> = Vec::new();
        for (key, route) in &routes {
            match key.strip_suffix("/*") {
                Some(prefix) => prefixes.push((Box::from(prefix), route.clone())),
                None => {
                    exact.insert(key.clone(), route.clone());
                }
            }
        }
        prefixes.sort_unstable_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Self {
            all: Arc::new(routes),
            exact,
            prefixes,
        }
    }
}

impl RouteTable {
    /// A table holding `routes`. A key ending in `/*` is a prefix route (see
    /// [Prefix routes](self#prefix-routes)); every other key an exact path.
    pub fn new(routes: HashMap<String, RouteConfig>) -> Self {
        Self {
            routes: Arc::new(RwLock::new(Arc::new(Table::new(routes)))),
        }
    }

    /// Replace every route at once. Requests already routed are unaffected; every clone of this
    /// table sees the new map from its next lookup on.
    pub fn replace(&self, routes: HashMap<String, RouteConfig>) {
        let new = Arc::new(Table::new(routes));
        *self.routes.write().unwrap_or_else(PoisonError::into_inner) = new;
    }

    /// A snapshot of the current map, as given (prefix routes under their `/*` keys).
    pub fn snapshot(&self) -> Arc<HashMap<String, RouteConfig>> {
        Arc::clone(
            &self
                .routes
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .all,
        )
    }

    /// The exact route for `path`, if any.
    pub fn get(&self, path: &str) -> Option<RouteConfig> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .exact
            .get(path)
            .cloned()
    }

    /// The prefix route with the longest prefix that `path` (as received, not decoded) is, or
    /// continues at a `/`, with the rest of the path as a [`PathSuffix`], or the reason that rest
    /// is refused ([`PathSuffix::new`]). `None` when no prefix route matches (and at once when
    /// the table has none). [`RouteLayer`] asks only after [`get`](Self::get) and
    /// [`get_like_fastapi`](Self::get_like_fastapi) found nothing.
    pub fn get_prefix(
        &self,
        path: &str,
    ) -> Option<(RouteConfig, Result<PathSuffix, InvalidPathSuffix>)> {
        let table = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        table.prefixes.iter().find_map(|(prefix, route)| {
            let rest = path.strip_prefix(&**prefix)?;
            (rest.is_empty() || rest.starts_with('/'))
                .then(|| (route.clone(), PathSuffix::new(rest)))
        })
    }

    /// The route FastAPI (which M-FastGate ran on) would have found for a `path` that has none
    /// of its own: percent-encoded characters decoded, and `/x/` taken as `/x` (FastAPI
    /// redirected it there). Only asked on a miss, so exact paths cost nothing more.
    pub fn get_like_fastapi(&self, path: &str) -> Option<RouteConfig> {
        let decoded = percent_decode_str(path).decode_utf8().ok()?;
        let trimmed = decoded.strip_suffix('/').filter(|p| !p.is_empty());
        [Some(&*decoded), trimmed]
            .into_iter()
            .flatten()
            .filter(|p| *p != path)
            .find_map(|p| self.get(p))
    }

    /// Number of routes (exact and prefix).
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.snapshot();
        let mut paths: Vec<&String> = snapshot.keys().collect();
        paths.sort();
        f.debug_struct("RouteTable").field("paths", &paths).finish()
    }
}

/// Layer that applies [`Route`].
#[derive(Clone, Debug)]
pub struct RouteLayer {
    table: RouteTable,
}

impl RouteLayer {
    /// Route requests with `table`.
    pub fn new(table: RouteTable) -> Self {
        Self { table }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Route {
            inner,
            table: self.table.clone(),
        }
    }
}

/// Middleware that inserts the request's [`RouteConfig`] or answers 404.
///
/// See the [module docs](self) for details.
#[derive(Clone, Debug)]
pub struct Route<S> {
    inner: S,
    table: RouteTable,
}

impl<S> Route<S> {
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for Route<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        if is_refused_method(req.method()) {
            let mut res = rejection(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "TRACE, TRACK and CONNECT requests are not forwarded",
                Outcome::Rejected,
            );
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
            return ResponseFuture {
                state: State::Refused { res: Some(res) },
            };
        }
        let path = req.uri().path();
        if let Some(route) = self.table.get(path) {
            req.extensions_mut().insert(route);
            return ResponseFuture {
                state: State::Inner {
                    fut: self.inner.call(req),
                },
            };
        }
        // A miss: an exact route in FastAPI's spelling first, then prefix routes.
        if let Some(route) = self.table.get_like_fastapi(path) {
            req.extensions_mut().insert(route);
            return ResponseFuture {
                state: State::Inner {
                    fut: self.inner.call(req),
                },
            };
        }
        let refusal = match self.table.get_prefix(path) {
            Some((route, Ok(suffix))) => {
                let extensions = req.extensions_mut();
                extensions.insert(route);
                extensions.insert(suffix);
                return ResponseFuture {
                    state: State::Inner {
                        fut: self.inner.call(req),
                    },
                };
            }
            Some((route, Err(why))) => {
                tracing::debug!(route = %route.name, %why, "path below a prefix route refused");
                rejection(
                    StatusCode::BAD_REQUEST,
                    "invalid_path",
                    &format!("invalid path below this route: {why}"),
                    Outcome::Rejected,
                )
            }
            None => rejection(
                StatusCode::NOT_FOUND,
                "route_not_found",
                "no route matches this path",
                Outcome::Rejected,
            ),
        };
        ResponseFuture {
            state: State::Refused { res: Some(refusal) },
        }
    }
}

/// The `Allow` header of a 405: the standard methods the gateway forwards.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// `TRACE`, `TRACK` or `CONNECT`, in any case: methods never forwarded (see the
/// [module docs](self)). A length test rules out every other standard method but `PATCH`.
#[inline]
fn is_refused_method(method: &Method) -> bool {
    let m = method.as_str();
    match m.len() {
        5 => m.eq_ignore_ascii_case("TRACE") || m.eq_ignore_ascii_case("TRACK"),
        7 => m.eq_ignore_ascii_case("CONNECT"),
        _ => false,
    }
}

pin_project! {
    /// Response future for [`Route`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Refused { res: Option<Response<B>> },
        Inner { #[pin] fut: F },
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("route::ResponseFuture")
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
            StateProj::Inner { fut } => fut.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extensions::{Backend, Rejected};
    use http_body_util::Full;
    use std::convert::Infallible;
    use std::time::Duration;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    fn route(name: &str) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            permission: "chat".into(),
            backend: Arc::new(Backend {
                base_url: "http://127.0.0.1:1".parse().unwrap(),
                path: "/x".into(),
                api_key: None,
                key_header: http::header::AUTHORIZATION,
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
            }),
        }
    }

    async fn name_for(table: &RouteTable, uri: &str) -> Response<Full<Bytes>> {
        let svc = ServiceBuilder::new()
            .layer(RouteLayer::new(table.clone()))
            .service(service_fn(|req: Request<()>| async move {
                let name = req
                    .extensions()
                    .get::<RouteConfig>()
                    .unwrap()
                    .name
                    .to_string();
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
            }));
        svc.oneshot(Request::get(uri).body(()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn exact_match_query_ignored_and_404() {
        let table = RouteTable::new(HashMap::from([("/proxy/a".to_owned(), route("a"))]));
        assert_eq!(
            name_for(&table, "/proxy/a?x=1").await.status(),
            StatusCode::OK
        );
        let res = name_for(&table, "/proxy/a/b").await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            res.extensions().get::<Rejected>().unwrap().code,
            "route_not_found"
        );
    }

    #[tokio::test]
    async fn trace_track_and_connect_are_refused_before_routing() {
        let table = RouteTable::new(HashMap::from([("/proxy/a".to_owned(), route("a"))]));
        for method in ["TRACE", "TRACK", "CONNECT", "trace", "Track", "connect"] {
            for uri in ["/proxy/a", "/nope"] {
                let svc = ServiceBuilder::new()
                    .layer(RouteLayer::new(table.clone()))
                    .service(service_fn(|_req: Request<()>| async move {
                        panic!("a refused method reached the inner service");
                        #[allow(unreachable_code)]
                        Ok::<Response<Full<Bytes>>, Infallible>(Response::new(Full::default()))
                    }));
                let req = Request::builder()
                    .method(Method::from_bytes(method.as_bytes()).unwrap())
                    .uri(uri)
                    .body(())
                    .unwrap();
                let res = svc.oneshot(req).await.unwrap();
                assert_eq!(
                    res.status(),
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri}"
                );
                assert_eq!(res.headers()[header::ALLOW], ALLOWED_METHODS);
                let rejected = res.extensions().get::<Rejected>().copied().unwrap();
                assert_eq!(rejected.code, "method_not_allowed");
                assert_eq!(rejected.outcome, Outcome::Rejected);
                let body = http_body_util::BodyExt::collect(res.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(json["error"]["code"], "method_not_allowed");
                assert_eq!(json["error"]["type"], "fastgate_error");
            }
        }
        // Every other method is routed, extension methods included.
        for method in [
            "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACES", "PROPFIND",
        ] {
            let svc = ServiceBuilder::new()
                .layer(RouteLayer::new(table.clone()))
                .service(service_fn(|_req: Request<()>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }));
            let req = Request::builder()
                .method(Method::from_bytes(method.as_bytes()).unwrap())
                .uri("/proxy/a")
                .body(())
                .unwrap();
            assert_eq!(
                svc.oneshot(req).await.unwrap().status(),
                StatusCode::OK,
                "{method}"
            );
        }
    }

    #[tokio::test]
    async fn replace_is_seen_by_clones() {
        let table = RouteTable::new(HashMap::new());
        let clone = table.clone();
        assert_eq!(name_for(&clone, "/p").await.status(), StatusCode::NOT_FOUND);
        let before = clone.snapshot();
        table.replace(HashMap::from([("/p".to_owned(), route("p"))]));
        assert_eq!(name_for(&clone, "/p").await.status(), StatusCode::OK);
        assert!(before.is_empty(), "old snapshot unaffected");
        assert_eq!(table.len(), 1);
    }

    fn named(name: &str, permission: &str) -> RouteConfig {
        RouteConfig {
            permission: permission.into(),
            ..route(name)
        }
    }

    /// Status, and for a routed request `name permission suffix` (`-` without a suffix); for a
    /// refusal its code. The inner service never sees a refused request.
    async fn matched(table: &RouteTable, uri: &str) -> (StatusCode, String) {
        let svc = ServiceBuilder::new()
            .layer(RouteLayer::new(table.clone()))
            .service(service_fn(|req: Request<()>| async move {
                let route = req.extensions().get::<RouteConfig>().unwrap();
                let suffix = req.extensions().get::<PathSuffix>();
                let text = format!(
                    "{} {} {}",
                    route.name,
                    route.permission,
                    suffix.map_or("-", PathSuffix::as_str)
                );
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
            }));
        let res = svc
            .oneshot(Request::get(uri).body(()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        if let Some(rejected) = res.extensions().get::<Rejected>() {
            return (status, rejected.code.to_owned());
        }
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn prefix_table() -> RouteTable {
        RouteTable::new(HashMap::from([
            ("/proxy/v1/*".to_owned(), named("v1", "chat")),
            ("/proxy/v1/embeddings".to_owned(), named("emb", "embed")),
            ("/proxy/v1/files/*".to_owned(), named("files", "files")),
            ("/proxy/v1/files/special".to_owned(), named("special", "x")),
        ]))
    }

    #[tokio::test]
    async fn exact_routes_win_then_the_longest_prefix_at_a_segment_boundary() {
        let table = prefix_table();
        let ok = |s: &str| (StatusCode::OK, s.to_owned());
        for (uri, want) in [
            // Exact routes, also below a prefix route.
            ("/proxy/v1/embeddings", ok("emb embed -")),
            ("/proxy/v1/files/special?x=1", ok("special x -")),
            // The longest prefix.
            ("/proxy/v1/models/gpt-4", ok("v1 chat /models/gpt-4")),
            ("/proxy/v1/models/gpt-4?x=1", ok("v1 chat /models/gpt-4")),
            (
                "/proxy/v1/files/file-abc/content",
                ok("files files /file-abc/content"),
            ),
            ("/proxy/v1/files", ok("files files ")),
            ("/proxy/v1/files/", ok("files files /")),
            ("/proxy/v1/filesx", ok("v1 chat /filesx")),
            ("/proxy/v1/embeddings/x", ok("v1 chat /embeddings/x")),
            // The prefix itself, with and without a trailing slash.
            ("/proxy/v1", ok("v1 chat ")),
            ("/proxy/v1/", ok("v1 chat /")),
            ("/proxy/v1/models/", ok("v1 chat /models/")),
            // Escapes that need one, and UTF-8, pass.
            (
                "/proxy/v1/models/a%20b%3Ac",
                ok("v1 chat /models/a%20b%3Ac"),
            ),
            (
                "/proxy/v1/models/caf%C3%A9",
                ok("v1 chat /models/caf%C3%A9"),
            ),
            (
                "/proxy/v1/models/ft:gpt-4:org::id",
                ok("v1 chat /models/ft:gpt-4:org::id"),
            ),
            // Only at a segment boundary, and only as received.
            (
                "/proxy/v1x/models",
                (StatusCode::NOT_FOUND, "route_not_found".into()),
            ),
            (
                "/proxy/%761/models",
                (StatusCode::NOT_FOUND, "route_not_found".into()),
            ),
            ("/proxy", (StatusCode::NOT_FOUND, "route_not_found".into())),
        ] {
            assert_eq!(matched(&table, uri).await, want, "{uri}");
        }
        // Prefix routes are tried only on a miss: an exact route's path never gets a suffix.
        assert_eq!(table.len(), 4);
        assert!(table.snapshot().contains_key("/proxy/v1/*"));
        assert!(
            table.get("/proxy/v1/*").is_none(),
            "a `/*` key is no exact path"
        );
    }

    #[tokio::test]
    async fn fastapi_spellings_of_an_exact_route_reach_it_before_a_prefix_route() {
        let table = prefix_table();
        // Not the prefix route's `chat`: the exact route's `embed` (or a refusal).
        for uri in [
            "/proxy/v1/embeddings/",
            "/proxy/v1/%65mbeddings",
            "/proxy/v1/%65mbeddings/",
            "/proxy/v1/embeddings%2F",
            "/proxy/v1/files/%73pecial",
        ] {
            let (status, text) = matched(&table, uri).await;
            assert!(
                text.starts_with("emb embed") || text.starts_with("special x"),
                "{uri}: {status} {text}"
            );
        }
        // Below it, the decoded spelling of a stricter prefix is refused, not sent with the
        // looser prefix route's permission to a backend that would decode it.
        for uri in ["/proxy/v1/%66iles/file-1", "/proxy/v1/fi%6Ces/file-1"] {
            assert_eq!(
                matched(&table, uri).await,
                (StatusCode::BAD_REQUEST, "invalid_path".into()),
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn paths_that_could_leave_the_backend_path_are_refused() {
        let table = prefix_table();
        for uri in [
            "/proxy/v1/..",
            "/proxy/v1/../admin",
            "/proxy/v1/./models",
            "/proxy/v1/models/.",
            "/proxy/v1/models/..",
            "/proxy/v1/models/../../x",
            "/proxy/v1/files/../embeddings",
            "/proxy/v1/..;/x",
            "/proxy/v1/%2e%2e/x",
            "/proxy/v1/%2E%2E/x",
            "/proxy/v1/.%2e/x",
            "/proxy/v1/%2e./x",
            "/proxy/v1/%2e",
            "/proxy/v1/a%2fb",
            "/proxy/v1/a%2Fb",
            "/proxy/v1/a%5cb",
            "/proxy/v1/a%5Cb",
            "/proxy/v1/a\\b",
            "/proxy/v1/..\\x",
            "/proxy/v1/a%00b",
            "/proxy/v1/a%0a",
            "/proxy/v1/a%zz",
            "/proxy/v1/a%2",
            "/proxy/v1/%c0%ae%c0%ae/x",
            "/proxy/v1/%ff",
            "/proxy/v1/%252e%252e/x",
            "/proxy/v1/a%25b",
            "/proxy/v1//models",
            "/proxy/v1/models//x",
            "/proxy/v1//",
            "/proxy/v1/models//",
        ] {
            assert_eq!(
                matched(&table, uri).await,
                (StatusCode::BAD_REQUEST, "invalid_path".into()),
                "{uri}"
            );
        }
    }

    /// `;` path parameters (dropped by servlet containers: `embeddings;x` is the exact route's
    /// path to them) and segments some backends take for `..` or strip a dot or space from.
    #[tokio::test]
    async fn path_parameters_and_dot_like_segments_are_refused() {
        let table = prefix_table();
        for uri in [
            "/proxy/v1/embeddings;x",
            "/proxy/v1/embeddings;",
            "/proxy/v1/embeddings%3Bx",
            "/proxy/v1/embeddings%3bx",
            "/proxy/v1/models;x/y",
            "/proxy/v1/..%3b/x",
            "/proxy/v1/..%20/x",
            "/proxy/v1/...",
            "/proxy/v1/.../x",
            "/proxy/v1/%20",
            "/proxy/v1/%ef%bc%8e%ef%bc%8e/x",
            "/proxy/v1/%EF%BC%8E/x",
            "/proxy/v1/%e2%80%a5/x",
            "/proxy/v1/embeddings.",
            "/proxy/v1/embeddings%20",
            "/proxy/v1/embeddings%ef%bc%8e",
            "/proxy/v1/files/file-1./content",
            "/proxy/v1/models/gpt-4.",
        ] {
            assert_eq!(
                matched(&table, uri).await,
                (StatusCode::BAD_REQUEST, "invalid_path".into()),
                "{uri}"
            );
        }
        // Ids as OpenAI-compatible APIs write them keep working.
        for (uri, want) in [
            ("/proxy/v1/models/gpt-4.1", "v1 chat /models/gpt-4.1"),
            (
                "/proxy/v1/models/ft:gpt-4o:org:name:id",
                "v1 chat /models/ft:gpt-4o:org:name:id",
            ),
            (
                "/proxy/v1/files/file-abc123/content",
                "files files /file-abc123/content",
            ),
            (
                "/proxy/v1/responses/resp_67ccd2b",
                "v1 chat /responses/resp_67ccd2b",
            ),
            ("/proxy/v1/models/.hidden", "v1 chat /models/.hidden"),
            ("/proxy/v1/models/a%20b", "v1 chat /models/a%20b"),
            (
                "/proxy/v1/models/Llama-3.1-8B",
                "v1 chat /models/Llama-3.1-8B",
            ),
        ] {
            assert_eq!(
                matched(&table, uri).await,
                (StatusCode::OK, want.to_owned()),
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn a_table_without_prefix_routes_and_replacing_prefix_routes() {
        let table = RouteTable::new(HashMap::from([("/proxy/a".to_owned(), route("a"))]));
        assert!(table.get_prefix("/proxy/a/b").is_none());
        assert_eq!(
            matched(&table, "/proxy/a/../b").await,
            (StatusCode::NOT_FOUND, "route_not_found".into())
        );
        table.replace(HashMap::from([("/proxy/a/*".to_owned(), route("p"))]));
        assert_eq!(
            matched(&table, "/proxy/a/b").await,
            (StatusCode::OK, "p chat /b".into())
        );
        assert_eq!(
            format!("{table:?}"),
            r#"RouteTable { paths: ["/proxy/a/*"] }"#
        );
    }
}
