//! A refused upload is read to its end before the connection is reused or closed.
//!
//! When the gateway answers before it has read a request's body (a wrong key, an unknown route,
//! a body over the limit, an unreachable backend), the stack drops the body. hyper then reads
//! what is already buffered and, if the body is not complete, closes the connection as soon as
//! the answer is written. The client is usually still sending: the kernel answers its next
//! segments with a reset, and a client that writes its whole body before it reads (Python's
//! `http.client`, so `requests`) gets a broken pipe instead of the 401 or 413, and the connection
//! it meant to reuse is gone.
//!
//! [`LingeringBody`] wraps hyper's request body: dropped unread on an HTTP/1 connection, it hands
//! the body to a task that reads and discards it (as nginx's lingering close does), for at most
//! [`LINGER_TOTAL`] and [`LINGER_IDLE`] between reads. A body read to its end leaves the
//! connection usable for the next request; one that takes longer is dropped and hyper closes the
//! connection as before. A body the stack had begun to read and then dropped (a stalled upload
//! answered 408, a streamed body cut at the size limit, a backend that answered mid-upload) is
//! left to hyper, as before. Not for HTTP/2 (a stream is reset on its own, the connection lives
//! on) nor for a request that asked `Expect: 100-continue` (hyper then never invites the body,
//! and a client waiting for the invitation should not be made to send it).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// The longest a refused upload is read for.
pub const LINGER_TOTAL: Duration = Duration::from_secs(30);
/// The longest wait for the next piece of a refused upload.
pub const LINGER_IDLE: Duration = Duration::from_secs(5);

/// hyper's request body, read to its end in the background if it is dropped unread.
#[derive(Debug)]
pub struct LingeringBody {
    inner: Option<Incoming>,
    /// Cleared at the first read: only a body nobody began to read lingers.
    linger: bool,
}

impl LingeringBody {
    /// Wrap the body of `req`; whether it lingers is decided from its version and headers.
    pub fn wrap(req: Request<Incoming>) -> Request<Self> {
        let linger = matches!(req.version(), Version::HTTP_11 | Version::HTTP_10)
            && !req.body().is_end_stream()
            && !req.headers().contains_key(header::EXPECT);
        req.map(|body| LingeringBody {
            inner: Some(body),
            linger,
        })
    }
}

impl Body for LingeringBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        this.linger = false;
        Pin::new(inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for LingeringBody {
    fn drop(&mut self) {
        if !self.linger {
            return;
        }
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        // Outside a runtime (never in the server) the body is simply dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(discard(body));
        }
    }
}

/// Read `body` to its end, or until it stalls or takes too long, and throw it away.
async fn discard(mut body: Incoming) {
    let deadline = tokio::time::Instant::now() + LINGER_TOTAL;
    loop {
        let until = deadline.min(tokio::time::Instant::now() + LINGER_IDLE);
        match tokio::time::timeout_at(until, body.frame()).await {
            Ok(Some(Ok(_))) => {}
            // The end, a broken body, a stall or the deadline.
            Ok(None | Some(Err(_))) | Err(_) => return,
        }
    }
}
