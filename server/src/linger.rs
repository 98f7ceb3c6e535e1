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
//! Over HTTP/2 the stream is reset (`NO_ERROR`) after the answer, which RFC 9113 allows but
//! which curl and httpx report as a stream error instead of the answer.
//!
//! [`LingeringBody`] wraps hyper's request body: dropped unread, it hands the body to a task that
//! reads and discards it (as nginx's lingering close does), for at most [`LINGER_TOTAL`] (or the
//! connection idle limit, `app.header_read_timeout`, if that is shorter) and [`LINGER_IDLE`]
//! between reads, for at most twice `max_body_bytes`, and not past the start of a shutdown
//! ([`Shutdown`]). A body read to its end leaves the connection usable for the next request (the
//! stream ends normally); one that takes longer or is larger is dropped and hyper closes the
//! connection (resets the stream) as before. A body the stack had begun to read and then dropped
//! (a stalled upload answered 408, a streamed body cut at the size limit, a backend that answered
//! mid-upload) is left to hyper, as before; so is an HTTP/1 request that asked
//! `Expect: 100-continue` (hyper then never invites the body, and a client waiting for the
//! invitation should not be made to send it).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// How long refused bodies are read, and the server's shutdown as they see it: once it begins,
/// they stop reading.
#[derive(Clone, Debug)]
pub struct Shutdown(Arc<ShutdownState>);

#[derive(Debug)]
struct ShutdownState {
    begun: AtomicBool,
    notify: tokio::sync::Notify,
    total: Duration,
    max_bytes: u64,
}

impl Shutdown {
    /// Refused bodies are read for at most `limit` (and [`LINGER_TOTAL`]): the connection's
    /// idle limit, which does not count a lingering read as a request in flight. At most
    /// twice `max_body_bytes` (1 MiB at least) of one is read: a client slightly over the
    /// limit gets its 413, while a body declared larger is not read at all and one that goes
    /// on is cut there (as before: the connection closes), so that a refused upload cannot keep
    /// the gateway discarding at full speed.
    pub fn new(limit: Duration, max_body_bytes: u64) -> Self {
        Self(Arc::new(ShutdownState {
            begun: AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
            total: LINGER_TOTAL.min(limit),
            max_bytes: max_body_bytes.saturating_mul(2).max(1 << 20),
        }))
    }

    /// Stop every lingering body now and from now on.
    pub fn begin(&self) {
        self.0.begun.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    /// Resolves once [`begin`](Self::begin) was called.
    async fn begun(&self) {
        let notified = self.0.notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a `begin` in between is not missed.
        notified.as_mut().enable();
        if self.0.begun.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

/// hyper's request body, read to its end in the background if it is dropped unread.
#[derive(Debug)]
pub struct LingeringBody {
    inner: Option<Incoming>,
    /// Taken at the first read: only a body nobody began to read lingers.
    linger: Option<Shutdown>,
}

impl LingeringBody {
    /// Wrap the body of `req`; whether it may linger is decided from its headers.
    pub fn wrap(req: Request<Incoming>, shutdown: &Shutdown) -> Request<Self> {
        let body = req.body();
        // An HTTP/1 client that asked `Expect: 100-continue` is never invited to send the body
        // of a refused request; an HTTP/2 one sends it anyway after its wait (hyper answers no
        // 100 over HTTP/2).
        let expect = req.version() < Version::HTTP_2 && req.headers().contains_key(header::EXPECT);
        let linger = (!body.is_end_stream()
            && !expect
            && body
                .size_hint()
                .exact()
                .is_none_or(|len| len <= shutdown.0.max_bytes))
        .then(|| shutdown.clone());
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
        this.linger = None;
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
        let (Some(shutdown), Some(body)) = (self.linger.take(), self.inner.take()) else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        // Outside a runtime (never in the server) the body is simply dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::select! {
                    () = discard(body, shutdown.0.total, shutdown.0.max_bytes) => {}
                    () = shutdown.begun() => {}
                }
            });
        }
    }
}

/// Read `body` to its end, or until it stalls or takes too long, and throw it away.
async fn discard(mut body: Incoming, total: Duration, max_bytes: u64) {
    let deadline = tokio::time::Instant::now() + total;
    let mut read = 0u64;
    loop {
        let until = deadline.min(tokio::time::Instant::now() + LINGER_IDLE);
        match tokio::time::timeout_at(until, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    read = read.saturating_add(data.len() as u64);
                    if read > max_bytes {
                        return;
                    }
                }
            }
            // The end, a broken body, a stall or the deadline.
            Ok(None | Some(Err(_))) | Err(_) => return,
        }
    }
}
