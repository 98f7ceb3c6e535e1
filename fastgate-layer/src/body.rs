//! [`GatewayBody`]: the one response body type the whole stack returns.
//!
//! A response either streams from the upstream (a hyper [`Incoming`] body guarded by an idle
//! timeout between frames) or was produced locally (a JSON error, a 413, a 404). Keeping both in one
//! concrete enum, with a concrete error type, is what lets poem's `compat()` and hyper accept the
//! stack without boxing: the body is `Send + Sync` and its error implements
//! [`std::error::Error`].
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use fastgate_layer::body::GatewayBody;
//! use http_body_util::BodyExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let body = GatewayBody::from(Bytes::from_static(b"{}"));
//! assert_eq!(body.collect().await.unwrap().to_bytes(), "{}");
//! # }
//! ```

use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::audit::Outcome;
use crate::upstream::PooledConn;

/// Why a [`GatewayBody`] stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayBodyError {
    /// The upstream failed mid-body (connection reset, protocol error).
    #[error("upstream body failed")]
    Upstream(#[source] hyper::Error),
    /// The upstream sent nothing for longer than the idle timeout.
    #[error("upstream body went idle for longer than {0:?}")]
    IdleTimeout(Duration),
}

impl GatewayBodyError {
    /// Stable error code for audit and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Upstream(_) => "upstream_error",
            Self::IdleTimeout(_) => "upstream_timeout",
        }
    }

    /// The audit outcome this failure maps to.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Upstream(_) => Outcome::UpstreamError,
            Self::IdleTimeout(_) => Outcome::UpstreamTimeout,
        }
    }
}

/// Response body of the gateway: an upstream stream with an idle timeout, or local bytes.
///
/// Frames pass through unchanged; [`is_end_stream`](Body::is_end_stream) and
/// [`size_hint`](Body::size_hint) are exact.
pub struct GatewayBody {
    inner: Inner,
}

enum Inner {
    Upstream {
        body: Incoming,
        idle: Duration,
        /// Created at the first `Pending`: a body that is ready at once (a small JSON answer)
        /// never allocates or registers a timer.
        timer: Option<Pin<Box<Sleep>>>,
        /// The timer measures the current wait (armed at the first `Pending` after a frame), so
        /// time the client spends not reading never counts as upstream silence.
        armed: bool,
        /// The pooled upstream connection that reads `body` (plain `http://` upstreams; with
        /// hyper-util's client the connection runs in a task of its own and this is `None`).
        conn: Option<PooledConn>,
        /// The upstream's error, held back for one poll: see [`Body::poll_frame`].
        failed: Option<hyper::Error>,
    },
    Local(Option<Bytes>),
}

impl GatewayBody {
    /// An empty body.
    pub fn empty() -> Self {
        Self {
            inner: Inner::Local(None),
        }
    }

    /// Stream `body` from the upstream; fail with [`GatewayBodyError::IdleTimeout`] when no frame
    /// arrives for `idle`. There is no total timeout.
    pub fn upstream(body: Incoming, idle: Duration) -> Self {
        Self::upstream_with(body, idle, None)
    }

    /// Like [`upstream`](Self::upstream), for a body read through a pooled connection that this
    /// body drives and hands back to its pool once the body has ended.
    pub(crate) fn upstream_pooled(body: Incoming, idle: Duration, mut conn: PooledConn) -> Self {
        if body.is_end_stream() {
            conn.set_ended();
        }
        Self::upstream_with(body, idle, Some(conn))
    }

    fn upstream_with(body: Incoming, idle: Duration, conn: Option<PooledConn>) -> Self {
        Self {
            inner: Inner::Upstream {
                body,
                idle,
                timer: None,
                armed: false,
                failed: None,
                conn,
            },
        }
    }
}

impl From<Bytes> for GatewayBody {
    fn from(bytes: Bytes) -> Self {
        Self {
            inner: Inner::Local((!bytes.is_empty()).then_some(bytes)),
        }
    }
}

impl Default for GatewayBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for GatewayBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Upstream { idle, .. } => f
                .debug_struct("GatewayBody::Upstream")
                .field("idle", idle)
                .finish_non_exhaustive(),
            Inner::Local(bytes) => f
                .debug_struct("GatewayBody::Local")
                .field("len", &bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = GatewayBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, GatewayBodyError>>> {
        // Every field is Unpin (the timer is boxed), so no projection is needed.
        match &mut self.get_mut().inner {
            Inner::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream {
                body,
                idle,
                timer,
                armed,
                conn,
                failed,
            } => {
                if let Some(err) = failed.take() {
                    return Poll::Ready(Some(Err(GatewayBodyError::Upstream(err))));
                }
                if let Some(conn) = conn.as_mut() {
                    conn.drive(cx);
                }
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if let Some(conn) = conn.as_mut() {
                    match &polled {
                        Poll::Ready(None) => conn.set_ended(),
                        Poll::Ready(Some(Ok(_))) if body.is_end_stream() => conn.set_ended(),
                        _ => {}
                    }
                }
                match polled {
                    // An error is given one poll later: hyper's HTTP/1 server writes out what
                    // it holds (the response head, the frames before) when the body is pending,
                    // but closes the connection without writing when the body fails. A backend
                    // that fails right after its head would leave the client with no answer at
                    // all, not even the status, and an SDK would retry a request the backend
                    // had taken. Only a failing body pays for this.
                    Poll::Ready(Some(Err(err))) => {
                        *failed = Some(err);
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    Poll::Ready(frame) => {
                        *armed = false;
                        Poll::Ready(frame.map(|r| r.map_err(GatewayBodyError::Upstream)))
                    }
                    Poll::Pending => {
                        let timer =
                            timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(*idle)));
                        if !*armed {
                            *armed = true;
                            timer.as_mut().reset(deadline_after(Instant::now(), *idle));
                        }
                        ready!(timer.as_mut().poll(cx));
                        Poll::Ready(Some(Err(GatewayBodyError::IdleTimeout(*idle))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream { body, .. } => body.is_end_stream(),
            Inner::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream { body, .. } => body.size_hint(),
            Inner::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// `from + wait`, or a deadline about 30 years away when that sum does not fit the clock: an
/// embedder may give `Duration::MAX` to mean "no limit", and `Instant + Duration` panics on
/// overflow (tokio's own `sleep` makes the same substitution).
pub(crate) fn deadline_after(from: Instant, wait: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    from.checked_add(wait)
        .or_else(|| from.checked_add(FAR))
        .unwrap_or(from)
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<GatewayBody>();
    check::<GatewayBodyError>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn local_body_yields_once_with_exact_hint() {
        let mut body = GatewayBody::from(Bytes::from_static(b"hello"));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn empty_body_is_end_stream_at_once() {
        let body = GatewayBody::from(Bytes::new());
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(
            GatewayBody::empty()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
    }

    /// A response head whose chunked body never comes: `Incoming` that stays pending.
    async fn pending_upstream_body() -> (Incoming, tokio::io::DuplexStream) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (client, mut server) = tokio::io::duplex(4096);
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let res = tokio::spawn(async move {
            tx.ready().await?;
            tx.send_request(req).await
        });
        // The answer comes once the request was written (hyper refuses an unasked one).
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0; 1];
            server.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        server
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let res = res.await.unwrap().unwrap();
        (res.into_body(), server)
    }

    /// An embedder's `Duration::MAX` (meaning "no idle timeout") arms no timer that overflows
    /// the clock: the body just waits.
    #[tokio::test]
    async fn a_huge_idle_timeout_waits_instead_of_panicking() {
        let (incoming, _server) = pending_upstream_body().await;
        let mut body = GatewayBody::upstream(incoming, Duration::MAX);
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        assert!(polled.is_pending());
        // Still waiting a while later (the timer is far in the future, not expired).
        let waited = tokio::time::timeout(Duration::from_millis(50), body.frame()).await;
        assert!(waited.is_err());
    }

    #[test]
    fn error_codes_map_to_outcomes() {
        let e = GatewayBodyError::IdleTimeout(Duration::from_secs(1));
        assert_eq!(e.code(), "upstream_timeout");
        assert_eq!(e.outcome(), Outcome::UpstreamTimeout);
    }
}
