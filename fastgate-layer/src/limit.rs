//! Request body size limit.
//!
//! [`RequestSizeLimitLayer`] answers 413 JSON `request_too_large` (marked
//! [`Rejected`](crate::Rejected)) at once when `Content-Length` exceeds the limit. A body without
//! `Content-Length` is counted as it streams: the [`LimitedBody`] fails once the limit is passed,
//! which makes the forward fail, and the layer then answers 413 instead of whatever the inner
//! service produced (the response headers have not been sent at that point). Nothing is buffered.
//! Behind an [`AuditLayer`](crate::audit::AuditLayer) the forward service knows the failure for
//! the client's (413 `request_too_large`, `rejected`, no warning about the backend), and an
//! answer the upstream had already begun (it answered before reading the whole body) is cut and
//! audited `rejected` / `request_too_large`, not as the backend's failure.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use fastgate_layer::limit::RequestSizeLimitLayer;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(RequestSizeLimitLayer::new(4))
//!     .service(service_fn(|_req| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
//!     }));
//! let req = Request::builder()
//!     .header("content-length", "5")
//!     .body(Full::new(Bytes::from_static(b"12345")))
//!     .unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap().status(), StatusCode::PAYLOAD_TOO_LARGE);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::{Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::audit::{AuditSlot, Outcome, RequestStats};
use crate::error::{BoxError, rejection};

/// The request body was larger than the configured limit.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub struct BodyTooLarge {
    limit: u64,
}

/// Layer that applies [`RequestSizeLimit`].
#[derive(Clone, Copy, Debug)]
pub struct RequestSizeLimitLayer {
    max_bytes: u64,
}

impl RequestSizeLimitLayer {
    /// Refuse request bodies larger than `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self { max_bytes }
    }
}

impl<S> Layer<S> for RequestSizeLimitLayer {
    type Service = RequestSizeLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSizeLimit {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

/// Middleware that limits the request body size. See the [module docs](self) for details.
#[derive(Clone, Debug)]
pub struct RequestSizeLimit<S> {
    inner: S,
    max_bytes: u64,
}

impl<S> RequestSizeLimit<S> {
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequestSizeLimit<S>
where
    S: Service<Request<LimitedBody<ReqB>>, Response = Response<ResB>>,
    ReqB: Body,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_bytes)
            || req.body().size_hint().lower() > self.max_bytes
        {
            return ResponseFuture {
                state: State::TooLarge {
                    res: Some(too_large()),
                },
            };
        }
        // Behind an audit layer (every `Gateway` has one) the flag is the request's audit
        // record's, which the forward service and the audit read too: a cut upload is then
        // the client's 413, never logged or counted as a backend failure. This lookup replaces
        // an allocation of the flag's own.
        let exceeded = match req.extensions().get::<AuditSlot>() {
            Some(slot) => Exceeded::Audit(Arc::clone(&slot.0)),
            None => Exceeded::Own(Arc::new(AtomicBool::new(false))),
        };
        let req = req.map(|inner| LimitedBody {
            inner,
            remaining: self.max_bytes,
            limit: self.max_bytes,
            exceeded: exceeded.clone(),
        });
        ResponseFuture {
            state: State::Inner {
                fut: self.inner.call(req),
                exceeded,
            },
        }
    }
}

fn too_large<B: From<Bytes>>() -> Response<B> {
    rejection(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        "the request body is too large",
        Outcome::Rejected,
    )
}

pin_project! {
    /// Response future for [`RequestSizeLimit`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        TooLarge { res: Option<Response<B>> },
        Inner { #[pin] fut: F, exceeded: Exceeded },
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("limit::ResponseFuture")
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<Bytes>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::TooLarge { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
            StateProj::Inner { fut, exceeded } => {
                let res = ready!(fut.poll(cx))?;
                if exceeded.get() {
                    // The inner answer (usually a 502 from the failed forward) is replaced.
                    return Poll::Ready(Ok(too_large()));
                }
                Poll::Ready(Ok(res))
            }
        }
    }
}

/// Where a [`LimitedBody`] notes that it passed the limit, for its layer to answer 413.
#[derive(Clone)]
enum Exceeded {
    /// The audit layer's record of the request (see `RequestStats::too_large`).
    Audit(Arc<RequestStats>),
    /// A flag of its own (no audit layer outside).
    Own(Arc<AtomicBool>),
}

impl Exceeded {
    fn set(&self) {
        match self {
            Self::Audit(stats) => stats.too_large.store(true, Ordering::Release),
            Self::Own(flag) => flag.store(true, Ordering::Release),
        }
    }

    fn get(&self) -> bool {
        match self {
            Self::Audit(stats) => stats.too_large.load(Ordering::Acquire),
            Self::Own(flag) => flag.load(Ordering::Acquire),
        }
    }
}

pin_project! {
    /// Request body for [`RequestSizeLimit`]: counts bytes and fails past the limit.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        remaining: u64,
        limit: u64,
        exceeded: Exceeded,
    }
}

impl<B> fmt::Debug for LimitedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitedBody")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl<B> LimitedBody<B> {
    /// Limit `inner` to `limit` bytes (outside of the layer, e.g. in tests and benches).
    pub fn new(inner: B, limit: u64) -> Self {
        Self {
            inner,
            remaining: limit,
            limit,
            exceeded: Exceeded::Own(Arc::default()),
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        let frame = match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let len = data.remaining() as u64;
            if len > *this.remaining {
                this.exceeded.set();
                *this.remaining = 0;
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: *this.limit }))));
            }
            *this.remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extensions::Rejected;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    type Chunks = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn run(req: Request<Chunks>) -> Response<Full<Bytes>> {
        // The inner service reads the whole body, like a forward does, and fails on error.
        let svc = ServiceBuilder::new()
            .layer(RequestSizeLimitLayer::new(8))
            .service(service_fn(|req: Request<LimitedBody<Chunks>>| async move {
                let status = match req.into_body().collect().await {
                    Ok(_) => StatusCode::OK,
                    Err(_) => StatusCode::BAD_GATEWAY,
                };
                let mut res = Response::new(Full::new(Bytes::new()));
                *res.status_mut() = status;
                Ok::<_, Infallible>(res)
            }));
        svc.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn within_limit_passes() {
        let res = run(Request::new(chunks(&[b"1234", b"5678"]))).await;
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn declared_length_over_limit_is_413_at_once() {
        let req = Request::builder()
            .header("content-length", "9")
            .body(chunks(&[]))
            .unwrap();
        let res = run(req).await;
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            res.extensions().get::<Rejected>().unwrap().code,
            "request_too_large"
        );
    }

    #[tokio::test]
    async fn streamed_body_over_limit_is_413() {
        let res = run(Request::new(chunks(&[b"12345", b"6789"]))).await;
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(
            std::str::from_utf8(&body)
                .unwrap()
                .contains("request_too_large")
        );
    }

    #[tokio::test]
    async fn limited_body_passes_trailers_on() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let body = LimitedBody::new(StreamBody::new(futures_util::stream::iter(frames)), 2);
        let got = body.collect().await.unwrap();
        assert_eq!(got.trailers(), Some(&trailers));
        assert_eq!(got.to_bytes(), "ab");
    }

    #[tokio::test]
    async fn limited_body_counts_and_errors() {
        let mut body = LimitedBody::new(Full::new(Bytes::from_static(b"abc")), 2);
        assert!(body.frame().await.unwrap().is_err());
        let body = LimitedBody::new(Full::new(Bytes::from_static(b"ab")), 2);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ab");
    }
}
