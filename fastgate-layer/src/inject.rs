//! Set the real upstream credential on the outgoing request.
//!
//! [`InjectUpstreamKeyLayer::new`] reads the [`RouteConfig`] from the request extensions and, when
//! its backend has an `api_key`, sets `Authorization: Bearer <key>` (or, for another
//! `key_header`, that header with the bare key). [`InjectUpstreamKeyLayer::bearer`] sets one fixed
//! key for embedders without a `RouteConfig`. The header value is marked
//! [sensitive](http::HeaderValue::set_sensitive) so that HTTP/2 never indexes it and header
//! loggers mask it. The key itself lives in a [`Secret`] and is never logged.
//!
//! Place it after [`ScrubHeadersLayer`](crate::scrub::ScrubHeadersLayer), which removes the
//! client's own credentials.
//!
//! # Example
//!
//! ```
//! use fastgate_layer::{Secret, inject::InjectUpstreamKeyLayer};
//! use http::Request;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(InjectUpstreamKeyLayer::bearer(Secret::new("sk-real")))
//!     .service(service_fn(|req: Request<()>| async move {
//!         Ok::<_, std::convert::Infallible>(req.headers()["authorization"].clone())
//!     }));
//! let value = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(value, "Bearer sk-real");
//! assert!(value.is_sensitive());
//! # }
//! ```

use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use tower::{Layer, Service};

use crate::backend_cache::BackendCache;

use crate::extensions::RouteConfig;
use crate::secret::Secret;

/// Layer that applies [`InjectUpstreamKey`].
#[derive(Clone, Debug, Default)]
pub struct InjectUpstreamKeyLayer {
    fixed: Option<(HeaderName, HeaderValue)>,
    credentials: BackendCache<Option<HeaderValue>>,
}

impl InjectUpstreamKeyLayer {
    /// Take the key from the request's [`RouteConfig`] backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Always send `Authorization: Bearer <key>`, whatever the route. An empty or unusable key
    /// (control characters) sets nothing.
    pub fn bearer(key: Secret) -> Self {
        Self::header(header::AUTHORIZATION, key)
    }

    /// Always send `key` in `name` (`Bearer <key>` when `name` is `authorization`).
    pub fn header(name: HeaderName, key: Secret) -> Self {
        Self {
            fixed: credential_value(&name, &key).map(|v| (name, v)),
            credentials: BackendCache::default(),
        }
    }
}

impl<S> Layer<S> for InjectUpstreamKeyLayer {
    type Service = InjectUpstreamKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InjectUpstreamKey {
            inner,
            fixed: self.fixed.clone(),
            credentials: self.credentials.clone(),
        }
    }
}

/// Middleware that sets the upstream credential. See the [module docs](self) for details.
#[derive(Clone)]
pub struct InjectUpstreamKey<S> {
    inner: S,
    fixed: Option<(HeaderName, HeaderValue)>,
    /// Each backend's header value, built once (not a `format!` and a copy per request).
    credentials: BackendCache<Option<HeaderValue>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for InjectUpstreamKey<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InjectUpstreamKey")
            .field("inner", &self.inner)
            .field("fixed", &self.fixed.as_ref().map(|(n, _)| n))
            .finish()
    }
}

impl<S> InjectUpstreamKey<S> {
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

impl<S, B> Service<Request<B>> for InjectUpstreamKey<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some((name, value)) = &self.fixed {
            req.headers_mut().insert(name.clone(), value.clone());
        } else if let Some(route) = req.extensions().get::<RouteConfig>() {
            let backend = &route.backend;
            if let Some(key) = &backend.api_key {
                let value = self
                    .credentials
                    .get_or_insert_with(backend, || credential_value(&backend.key_header, key));
                let name = backend.key_header.clone();
                set(req.headers_mut(), &name, value);
            }
        }
        self.inner.call(req)
    }
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(v) => {
            headers.insert(name.clone(), v);
        }
        None => tracing::warn!(header = %name, "upstream key is empty or not a valid header value"),
    }
}

fn credential_value(name: &HeaderName, key: &Secret) -> Option<HeaderValue> {
    if key.is_empty() {
        return None;
    }
    let mut value = if name == header::AUTHORIZATION {
        HeaderValue::try_from(format!("Bearer {}", key.expose())).ok()?
    } else {
        HeaderValue::from_str(key.expose()).ok()?
    };
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extensions::Backend;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::Duration;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    fn route(key: Option<&str>, key_header: HeaderName) -> RouteConfig {
        RouteConfig {
            name: "r".into(),
            permission: "chat".into(),
            backend: Arc::new(Backend {
                base_url: "http://127.0.0.1:1".parse().unwrap(),
                path: "/x".into(),
                api_key: key.map(Secret::new),
                key_header,
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
            }),
        }
    }

    async fn run(layer: InjectUpstreamKeyLayer, route: Option<RouteConfig>) -> HeaderMap {
        let svc =
            ServiceBuilder::new()
                .layer(layer)
                .service(service_fn(|req: Request<()>| async move {
                    Ok::<_, Infallible>(req.headers().clone())
                }));
        let mut req = Request::new(());
        if let Some(r) = route {
            req.extensions_mut().insert(r);
        }
        svc.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn bearer_from_route() {
        let h = run(
            InjectUpstreamKeyLayer::new(),
            Some(route(Some("sk-up"), header::AUTHORIZATION)),
        )
        .await;
        assert_eq!(h["authorization"], "Bearer sk-up");
        assert!(h["authorization"].is_sensitive());
    }

    #[tokio::test]
    async fn named_header_gets_bare_key() {
        let name = HeaderName::from_static("api-key");
        let h = run(
            InjectUpstreamKeyLayer::new(),
            Some(route(Some("sk-up"), name)),
        )
        .await;
        assert_eq!(h["api-key"], "sk-up");
        assert!(h.get("authorization").is_none());
    }

    #[tokio::test]
    async fn no_key_or_no_route_sets_nothing() {
        let h = run(
            InjectUpstreamKeyLayer::new(),
            Some(route(None, header::AUTHORIZATION)),
        )
        .await;
        assert!(h.is_empty());
        assert!(run(InjectUpstreamKeyLayer::new(), None).await.is_empty());
        let h = run(
            InjectUpstreamKeyLayer::bearer(Secret::new("bad\nkey")),
            None,
        )
        .await;
        assert!(h.is_empty());
    }

    #[test]
    fn debug_does_not_print_key() {
        let layer = InjectUpstreamKeyLayer::bearer(Secret::new("sk-very-secret"));
        let svc = layer.layer(());
        assert!(!format!("{svc:?}").contains("sk-very-secret"));
    }
}
