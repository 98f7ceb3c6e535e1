//! Request ids: accept a well-formed `X-Request-Id` or generate a UUID v7, send it upstream and
//! return it on every response.
//!
//! An incoming id is kept when it is 1 to 128 characters of `[A-Za-z0-9._:-]`; anything else is
//! replaced by a fresh UUID v7 (so a client cannot inject arbitrary text into logs and audit rows).
//! The id is written into the request's `x-request-id` header (which the scrub layer lets through
//! to the upstream, and which [`AuditLayer`](crate::audit::AuditLayer) records) and set on the
//! response, overriding any id the upstream sent, so that error responses carry it too.
//!
//! tower-http's `SetRequestIdLayer` keeps any incoming id without validating it, so this crate has
//! its own small layer. Place it outermost.
//!
//! # Example
//!
//! ```
//! use fastgate_layer::request_id::RequestIdLayer;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(RequestIdLayer::new())
//!     .service(service_fn(|_req: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(()))
//!     }));
//! let req = Request::builder().header("x-request-id", "abc-123").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"], "abc-123");
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest accepted incoming id.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether `id` is an acceptable incoming request id (1..=128 of `[A-Za-z0-9._:-]`).
pub fn is_valid_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A fresh UUID v7 as a header value.
///
/// The random bits come from the thread-local generator of `rand` rather than a `getrandom`
/// system call per id (request ids must be unique, not secret).
pub fn generate_request_id() -> HeaderValue {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let random: [u8; 10] = rand::random();
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    let text = id.hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Layer that applies [`RequestId`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestIdLayer {
    _priv: (),
}

impl RequestIdLayer {
    /// Accept valid incoming ids, generate UUID v7 otherwise.
    pub fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

/// Middleware that assigns and propagates request ids. See the [module docs](self) for details.
#[derive(Clone, Debug)]
pub struct RequestId<S> {
    inner: S,
}

impl<S> RequestId<S> {
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequestId<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) if is_valid_request_id(v.as_bytes()) => v.clone(),
            _ => generate_request_id(),
        };
        // `insert` also drops any further `x-request-id` values the client sent.
        req.headers_mut().insert(X_REQUEST_ID, id.clone());
        ResponseFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project! {
    /// Response future for [`RequestId`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            res.headers_mut().insert(X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    async fn roundtrip(incoming: Option<&str>) -> (String, String) {
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer::new())
            .service(service_fn(|req: Request<()>| async move {
                let seen = req.headers()["x-request-id"].to_str().unwrap().to_owned();
                let mut res = Response::new(seen);
                res.headers_mut()
                    .insert("x-request-id", HeaderValue::from_static("upstream-id"));
                Ok::<_, Infallible>(res)
            }));
        let mut req = Request::new(());
        if let Some(id) = incoming {
            req.headers_mut()
                .insert("x-request-id", HeaderValue::from_str(id).unwrap());
        }
        let res = svc.oneshot(req).await.unwrap();
        let returned = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        (res.into_body(), returned)
    }

    #[tokio::test]
    async fn valid_incoming_id_is_kept_both_ways() {
        let (up, back) = roundtrip(Some("client.id:42_x-y")).await;
        assert_eq!(up, "client.id:42_x-y");
        assert_eq!(back, "client.id:42_x-y");
    }

    #[tokio::test]
    async fn missing_or_invalid_id_is_replaced_by_uuid_v7() {
        for incoming in [None, Some("has space"), Some("<script>"), Some("")] {
            let (up, back) = roundtrip(incoming).await;
            assert_eq!(up, back);
            let uuid = uuid::Uuid::parse_str(&up).unwrap();
            assert_eq!(uuid.get_version_num(), 7);
        }
        let long = "a".repeat(129);
        let (up, _) = roundtrip(Some(&long)).await;
        assert_ne!(up, long);
    }
}
