//! [`AuditGuard`]: the one place an audit event is emitted, exactly once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::Response;
use tokio::sync::mpsc;

use super::decode::{ContentCoding, DecodingScanner};
use super::layer::StatsInner;
use super::scan::UsageScanner;
use super::{AuditEvent, Outcome, TokenUsage};
use crate::extensions::{KeyIdentity, Rejected, TargetUrl};
use crate::forward::BodyKind;

/// Facts the request body wrapper learns while the request streams, and what the inner layers
/// learn before the response exists (the key, the upstream target): a request the client drops
/// before the response head is still audited with them.
#[derive(Debug, Default)]
pub(crate) struct RequestStats {
    pub(crate) bytes: AtomicU64,
    pub(crate) model: OnceLock<String>,
    /// The request body asks for a stream (a top-level `"stream": true`).
    pub(crate) stream: std::sync::atomic::AtomicBool,
    /// `key_id` and `source_path`, set by the auth layer once the key is accepted.
    pub(crate) key: OnceLock<(Arc<str>, Arc<str>)>,
    /// The audit-safe upstream target, set by the forward service.
    pub(crate) target: OnceLock<Arc<str>>,
    /// When the request body ended (its last frame passed, it failed, or it was dropped).
    pub(crate) body_done: OnceLock<tokio::time::Instant>,
    /// The request body's last poll was waiting for the client (not for the upstream to pull).
    pub(crate) client_pending: std::sync::atomic::AtomicBool,
    /// The request body failed on the client's side (gone mid-upload, broken chunked body).
    pub(crate) body_failed: std::sync::atomic::AtomicBool,
    /// The request body passed the size limit: set by the limit layer's
    /// [`LimitedBody`](crate::limit::LimitedBody), which wraps the audit's request body and
    /// whose failure this body never sees. What then fails (the forward, or an answer already
    /// streaming) is the client's doing, not the backend's.
    pub(crate) too_large: std::sync::atomic::AtomicBool,
}

/// Request extension through which the inner layers report to the audit guard (see
/// [`RequestStats`]). Absent when the stack has no audit layer.
#[derive(Clone, Debug)]
pub(crate) struct AuditSlot(pub(crate) Arc<RequestStats>);

impl AuditSlot {
    /// The accepted key of this request.
    pub(crate) fn key(&self, identity: &KeyIdentity) {
        let _ = self.0.key.set((
            Arc::clone(&identity.key_id),
            Arc::clone(&identity.source_path),
        ));
    }

    /// The upstream target of this request.
    pub(crate) fn target(&self, target: &TargetUrl) {
        let _ = self.0.target.set(Arc::clone(&target.0));
    }

    /// The request body passed the size limit (see [`RequestStats::too_large`]).
    pub(crate) fn too_large(&self) -> bool {
        self.0.too_large.load(Ordering::Acquire)
    }

    /// How far the client's upload has come.
    pub(crate) fn upload(&self) -> UploadState {
        UploadState {
            bytes: self.0.bytes.load(Ordering::Relaxed),
            ended: self.0.body_done.get().copied(),
            waiting_on_client: self.0.client_pending.load(Ordering::Relaxed),
            failed: self.0.body_failed.load(Ordering::Relaxed),
        }
    }
}

/// The client's upload as the audit layer saw it (see [`AuditSlot::upload`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct UploadState {
    /// Bytes passed so far.
    pub(crate) bytes: u64,
    /// When the body ended, if it has.
    pub(crate) ended: Option<tokio::time::Instant>,
    /// The last poll of the body waited for the client.
    pub(crate) waiting_on_client: bool,
    /// The body failed on the client's side.
    pub(crate) failed: bool,
}

/// Holds the event until the request ends; emits it on `finish` or, failing that, on drop
/// (as `ClientAborted`). Never blocks: `try_send`, and a full queue counts a drop.
pub(crate) struct AuditGuard {
    event: Option<AuditEvent>,
    start: Instant,
    tx: Option<mpsc::Sender<AuditEvent>>,
    stats: Arc<StatsInner>,
    request: Arc<RequestStats>,
    rejected: Option<Rejected>,
    scanner: Option<Scan>,
}

/// How the response body is read for token usage.
#[derive(Debug)]
enum Scan {
    /// As it passes (no `Content-Encoding`, or `identity`).
    Plain(UsageScanner),
    /// Through a decoder (`gzip`, `deflate`); boxed: the decoder's state is large, and only
    /// compressed answers pay for it.
    Decoded(Box<DecodingScanner>),
}

impl Scan {
    /// A scanner for a body that `headers` describe, if its coding can be read.
    fn new(scanner: UsageScanner, headers: &http::HeaderMap) -> Option<Self> {
        // The hot path (no Content-Encoding) costs this one lookup.
        if !headers.contains_key(http::header::CONTENT_ENCODING) {
            return Some(Self::Plain(scanner));
        }
        match ContentCoding::of(headers)? {
            ContentCoding::Identity => Some(Self::Plain(scanner)),
            coding => Some(Self::Decoded(Box::new(DecodingScanner::new(
                coding, scanner,
            )))),
        }
    }

    /// The stream's terminal event has passed (see [`UsageScanner::terminal`]).
    fn terminal(&self) -> bool {
        match self {
            Self::Plain(s) => s.terminal(),
            Self::Decoded(s) => s.terminal(),
        }
    }

    /// The body ended (or was cut): the usage found.
    fn usage(self) -> Option<TokenUsage> {
        match self {
            Self::Plain(mut s) => {
                s.finish();
                s.usage()
            }
            Self::Decoded(mut s) => {
                s.finish();
                s.usage()
            }
        }
    }
}

impl std::fmt::Debug for AuditGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditGuard")
            .field("pending", &self.event.is_some())
            .finish_non_exhaustive()
    }
}

impl AuditGuard {
    pub(crate) fn new(
        event: AuditEvent,
        start: Instant,
        tx: mpsc::Sender<AuditEvent>,
        stats: Arc<StatsInner>,
        request: Arc<RequestStats>,
    ) -> Self {
        Self {
            event: Some(event),
            start,
            tx: Some(tx),
            stats,
            request,
            rejected: None,
            scanner: None,
        }
    }

    /// Record what the response head says.
    pub(crate) fn on_response<B>(&mut self, res: &Response<B>) {
        let Some(event) = self.event.as_mut() else {
            return;
        };
        event.status = res.status().as_u16();
        let ext = res.extensions();
        if let Some(id) = ext.get::<KeyIdentity>() {
            event.key_id = Some(Arc::clone(&id.key_id));
            event.source_path = Some(Arc::clone(&id.source_path));
        }
        if let Some(target) = ext.get::<TargetUrl>() {
            event.target_url = Some(Arc::clone(&target.0));
        }
        if let Some(rejected) = ext.get::<Rejected>() {
            event.error_code = Some(rejected.code);
            // A gRPC refusal is HTTP 200 on the wire: recorded as the refusal it is.
            if let Some(status) = rejected.audit_status {
                event.status = status.as_u16();
            }
            self.rejected = Some(*rejected);
        }
        let kind = BodyKind::of(res.headers());
        event.is_stream = kind.is_stream();
        let scanner = if kind == BodyKind::EventStream {
            Some(UsageScanner::sse())
        } else if self.rejected.is_none() && kind == BodyKind::Ndjson {
            // NDJSON (Ollama's native streams) is read as one JSON text: the last counts win.
            Some(UsageScanner::ndjson())
        } else if self.rejected.is_none() && kind == BodyKind::Json {
            Some(UsageScanner::json())
        } else {
            None
        };
        // A coding the scanner cannot read (br, zstd…) leaves the usage unknown: its bytes are
        // not JSON text, and must not be read as such.
        self.scanner = scanner.and_then(|s| Scan::new(s, res.headers()));
    }

    /// A data frame of `len` bytes passed; `chunk` is its first contiguous part; `last` when the
    /// body says it ends with this frame.
    pub(crate) fn on_data(&mut self, chunk: &[u8], len: usize, last: bool) {
        let start = self.start;
        let Some(event) = self.event.as_mut() else {
            return;
        };
        event.ttfb.get_or_insert_with(|| start.elapsed());
        event.response_bytes += len as u64;
        match self.scanner.as_mut() {
            Some(Scan::Plain(scanner)) => {
                if last && chunk.len() == len {
                    // Often the whole JSON body in one frame: scanned in place, without a copy.
                    scanner.push_complete(chunk);
                } else {
                    scanner.push(chunk);
                }
            }
            Some(Scan::Decoded(scanner)) => {
                if chunk.len() == len {
                    scanner.push(chunk);
                } else {
                    // Part of the frame is out of sight: the rest of the stream cannot be
                    // decoded (never the case for hyper's bodies, whose frames are `Bytes`).
                    self.scanner = None;
                }
            }
            None => {}
        }
    }

    /// The request body passed the size limit (see [`RequestStats::too_large`]).
    pub(crate) fn request_too_large(&self) -> bool {
        self.request.too_large.load(Ordering::Acquire)
    }

    /// Emit the event (once). `code` overrides the error code (body failures).
    pub(crate) fn finish(&mut self, outcome: Outcome, code: Option<&'static str>) {
        let Some(mut event) = self.event.take() else {
            return;
        };
        event.outcome = match (outcome, self.rejected) {
            (Outcome::Completed, Some(rejected)) => rejected.outcome,
            (outcome, _) => outcome,
        };
        if code.is_some() {
            event.error_code = code;
        }
        event.duration = self.start.elapsed();
        event.request_bytes = self.request.bytes.load(Ordering::Relaxed);
        event.model = self.request.model.get().cloned();
        // A streamed request that failed before any stream started is still a stream.
        event.is_stream |= self.request.stream.load(Ordering::Relaxed);
        // No response head (the client left first): what the inner layers reported.
        if event.key_id.is_none()
            && let Some((key_id, source_path)) = self.request.key.get()
        {
            event.key_id = Some(Arc::clone(key_id));
            event.source_path = Some(Arc::clone(source_path));
        }
        if event.target_url.is_none()
            && let Some(target) = self.request.target.get()
        {
            event.target_url = Some(Arc::clone(target));
        }
        if let Some(scanner) = self.scanner.take() {
            event.usage = scanner.usage();
        }
        self.stats.note_upstream(&event);
        // Runs inside poll_frame and Drop: never block, never await. Dropping the sender here
        // lets the worker finish while a finished body is still alive.
        let Some(tx) = self.tx.take() else {
            return;
        };
        match tx.try_send(event) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                self.stats.note_loss(1, false);
                if matches!(err, mpsc::error::TrySendError::Closed(_))
                    && !self.stats.closed_warned.swap(true, Ordering::Relaxed)
                {
                    tracing::error!(
                        "audit events are being dropped: the audit worker is not running \
                         (was the AuditWorker from AuditLayer::pair dropped instead of run?)"
                    );
                }
            }
        }
    }
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        if self.event.is_none() {
            return;
        }
        // A stream whose terminal event (`data: [DONE]`, `response.completed`, `message_stop`,
        // Ollama's `"done":true` line; see `UsageScanner::terminal`) was passed on was
        // delivered: a client may hang up as soon as it has read it, before the backend ends
        // its body (openai-python does).
        let outcome = if self.scanner.as_ref().is_some_and(Scan::terminal) {
            Outcome::Completed
        } else if self.stats.cutting.load(Ordering::Relaxed) {
            Outcome::Interrupted
        } else {
            Outcome::ClientAborted
        };
        self.finish(outcome, None);
    }
}
