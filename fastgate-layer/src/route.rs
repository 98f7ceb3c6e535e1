//! Exact-path routing: pick the [`RouteConfig`] for a request, or answer 404.
//!
//! [`RouteTable`] maps a request path (e.g. `/proxy/miniai/v2/chat/completions`) to a
//! [`RouteConfig`]; a path that has no route of its own takes the one FastAPI (which M-FastGate
//! ran on) would have found: percent-encoded characters decoded, one trailing slash dropped
//! ([`RouteTable::get_like_fastapi`]). It is cheap to clone and shared: [`RouteTable::replace`] swaps the whole map
//! atomically (for a configuration reload) while requests already routed keep the config they got.
//! [`RouteLayer`] inserts the match into the request extensions (read by auth, inject and forward)
//! or answers 404 JSON `route_not_found`, marked [`Rejected`](crate::Rejected).
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
use crate::extensions::RouteConfig;

/// A shared, swappable map from exact request path to [`RouteConfig`].
#[derive(Clone, Default)]
pub struct RouteTable {
    routes: Arc<RwLock<Arc<HashMap<String, RouteConfig>>>>,
}

impl RouteTable {
    /// A table holding `routes`.
    pub fn new(routes: HashMap<String, RouteConfig>) -> Self {
        Self {
            routes: Arc::new(RwLock::new(Arc::new(routes))),
        }
    }

    /// Replace every route at once. Requests already routed are unaffected; every clone of this
    /// table sees the new map from its next lookup on.
    pub fn replace(&self, routes: HashMap<String, RouteConfig>) {
        let new = Arc::new(routes);
        *self.routes.write().unwrap_or_else(PoisonError::into_inner) = new;
    }

    /// A snapshot of the current map.
    pub fn snapshot(&self) -> Arc<HashMap<String, RouteConfig>> {
        Arc::clone(&self.routes.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The route for `path`, if any.
    pub fn get(&self, path: &str) -> Option<RouteConfig> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .cloned()
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

    /// Number of routes.
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
        let route = self
            .table
            .get(path)
            .or_else(|| self.table.get_like_fastapi(path));
        match route {
            Some(route) => {
                req.extensions_mut().insert(route);
                ResponseFuture {
                    state: State::Inner {
                        fut: self.inner.call(req),
                    },
                }
            }
            None => ResponseFuture {
                state: State::Refused {
                    res: Some(rejection(
                        StatusCode::NOT_FOUND,
                        "route_not_found",
                        "no route matches this path",
                        Outcome::Rejected,
                    )),
                },
            },
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
}
