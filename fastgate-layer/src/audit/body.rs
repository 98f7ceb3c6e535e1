//! Body wrappers of the audit layer: [`AuditBody`] (response) and [`AuditRequestBody`] (request).

use std::any::Any;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::Outcome;
use super::guard::{AuditGuard, RequestStats};
use super::scan::ModelScanner;
use crate::body::GatewayBodyError;

pin_project! {
    /// Response body for [`Audit`](super::Audit). Forwards every frame unchanged while counting
    /// bytes, timing the first byte and reading token usage; emits the audit event exactly once
    /// (end, error, or drop).
    pub struct AuditBody<B> {
        #[pin]
        inner: B,
        guard: Option<Box<AuditGuard>>,
    }
}

impl<B> fmt::Debug for AuditBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditBody")
            .field("auditing", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body> AuditBody<B> {
    pub(crate) fn new(inner: B, mut guard: Option<Box<AuditGuard>>) -> Self {
        if inner.is_end_stream() {
            // HEAD, 204, 304 or an empty local body: the client may never poll.
            if let Some(guard) = guard.as_mut() {
                guard.finish(Outcome::Completed, None);
            }
        }
        Self { inner, guard }
    }

    /// A body that is not audited.
    pub fn unaudited(inner: B) -> Self {
        Self { inner, guard: None }
    }
}

impl<B> Body for AuditBody<B>
where
    B: Body,
    B::Error: 'static,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let Some(guard) = this.guard.as_mut() else {
            return Poll::Ready(frame);
        };
        match &frame {
            Some(Ok(f)) => {
                let ended = this.inner.is_end_stream();
                if let Some(data) = f.data_ref() {
                    guard.on_data(data.chunk(), data.remaining(), ended);
                }
                // With an exact Content-Length the client may never poll again.
                if f.is_trailers() || ended {
                    guard.finish(Outcome::Completed, None);
                }
            }
            Some(Err(err)) => {
                // An answer cut because the upload passed the size limit after the upstream
                // had answered (full duplex): the client's doing. The connection's failure
                // reaches this body as a generic one, so the limit's flag tells.
                let (outcome, code) = if guard.request_too_large() {
                    (Outcome::Rejected, "request_too_large")
                } else {
                    classify(err)
                };
                guard.finish(outcome, Some(code));
            }
            None => guard.finish(Outcome::Completed, None),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub(super) fn classify<E: 'static>(err: &E) -> (Outcome, &'static str) {
    match (err as &dyn Any).downcast_ref::<GatewayBodyError>() {
        Some(e) => (e.outcome(), e.code()),
        None => (Outcome::UpstreamError, "upstream_error"),
    }
}

pin_project! {
    /// Request body for [`Audit`](super::Audit): counts bytes and reads the top-level `model`
    /// (and whether a top-level `"stream": true` asks for a stream) wherever it is in the body,
    /// with a [`ModelScanner`] (a few hundred bytes of state, no body bytes kept), without
    /// holding back or changing any byte.
    pub struct AuditRequestBody<B> {
        #[pin]
        inner: B,
        sniffer: Option<ModelSniffer>,
    }
}

impl<B> fmt::Debug for AuditRequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditRequestBody").finish_non_exhaustive()
    }
}

impl<B> AuditRequestBody<B> {
    pub(crate) fn new(inner: B, stats: Option<Arc<RequestStats>>) -> Self {
        Self {
            inner,
            sniffer: stats.map(|stats| ModelSniffer {
                scan: ModelScanner::new(),
                done: false,
                stats,
            }),
        }
    }

    /// A request body that is not audited.
    pub fn unaudited(inner: B) -> Self {
        Self {
            inner,
            sniffer: None,
        }
    }
}

impl<B: Body> Body for AuditRequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) else {
            if let Some(sniffer) = this.sniffer.as_ref() {
                sniffer.stats.client_pending.store(true, Ordering::Relaxed);
            }
            return Poll::Pending;
        };
        if let Some(sniffer) = this.sniffer.as_mut() {
            sniffer.stats.client_pending.store(false, Ordering::Relaxed);
            let last = match &frame {
                Some(Ok(f)) => {
                    let last =
                        this.inner.is_end_stream() || this.inner.size_hint().exact() == Some(0);
                    if let Some(data) = f.data_ref() {
                        sniffer.on_data(data.chunk(), data.remaining(), last);
                    }
                    last
                }
                Some(Err(_)) => {
                    sniffer.stats.body_failed.store(true, Ordering::Relaxed);
                    sniffer.finish();
                    true
                }
                None => {
                    sniffer.finish();
                    true
                }
            };
            if last {
                sniffer.ended();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts request bytes and finds `model` as the body streams.
struct ModelSniffer {
    scan: ModelScanner,
    done: bool,
    stats: Arc<RequestStats>,
}

impl ModelSniffer {
    /// Note when the body ended (once: the clock is read only then).
    fn ended(&self) {
        if self.stats.body_done.get().is_none() {
            let _ = self.stats.body_done.set(tokio::time::Instant::now());
        }
    }

    fn on_data(&mut self, chunk: &[u8], len: usize, last: bool) {
        self.stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
        if self.done {
            return;
        }
        if last && chunk.len() == len {
            self.scan.push_last(chunk);
        } else {
            self.scan.push(chunk);
        }
        // `chunk.len() < len`: a frame in several pieces (never from hyper, whose frames are
        // `Bytes`); only its first piece was seen, so the scanner cannot follow the rest.
        if last || self.scan.is_done() || chunk.len() < len {
            self.finish();
        } else {
            // Known as soon as they are read (the scanner may go on for the other): an answer
            // that comes before the upload ends is audited with them.
            if let Some(model) = self.scan.take_model() {
                let _ = self.stats.model.set(model);
            }
            if self.scan.stream() {
                self.stats.stream.store(true, Ordering::Relaxed);
            }
        }
    }

    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if let Some(model) = self.scan.take_model() {
            let _ = self.stats.model.set(model);
        }
        if self.scan.stream() {
            self.stats.stream.store(true, Ordering::Relaxed);
        }
    }
}

/// A body dropped is a body over, for the upstream's timeout too: hyper may stop polling once
/// it has sent the declared length, before the body itself says it has ended.
impl Drop for ModelSniffer {
    fn drop(&mut self) {
        self.finish();
        self.ended();
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<AuditBody<crate::body::GatewayBody>>();
    check::<AuditRequestBody<hyper::body::Incoming>>();
}
