//! [`AuditLayer`], [`Audit`], [`AuditConfig`], [`AuditStats`] and the response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use http::{Request, Response, header};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::sync::mpsc;
use tower::{Layer, Service};

use super::body::{AuditBody, AuditRequestBody};
use super::decode::narrow_accept_encoding;
use super::guard::{AuditGuard, AuditSlot, RequestStats};
use super::worker::AuditWorker;
use super::{AuditEvent, AuditSink, Outcome};
use crate::extensions::ClientAddr;
use crate::request_id::X_REQUEST_ID;

/// Settings of the audit queue and worker.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AuditConfig {
    /// Events the queue holds before new ones are dropped (default 65 536).
    pub capacity: usize,
    /// Most events per [`AuditSink::write_batch`] call (default 512).
    pub max_batch: usize,
    /// Longest time an event waits for its batch to fill (default 200 ms).
    pub max_delay: Duration,
    /// Retries of a failed batch before its events are counted as lost (default 5).
    pub max_retries: u32,
    /// Wait before the first retry; doubles each time (default 100 ms).
    pub retry_backoff: Duration,
    /// Upper bound of the wait between retries (default 5 s).
    pub max_retry_backoff: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            max_batch: 512,
            max_delay: Duration::from_millis(200),
            max_retries: 5,
            retry_backoff: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(5),
        }
    }
}

impl AuditConfig {
    /// Set [`capacity`](Self::capacity).
    #[must_use]
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }
    /// Set [`max_batch`](Self::max_batch).
    #[must_use]
    pub fn max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch;
        self
    }
    /// Set [`max_delay`](Self::max_delay).
    #[must_use]
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }
    /// Set [`max_retries`](Self::max_retries).
    #[must_use]
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }
    /// Set the first and the largest wait between retries.
    #[must_use]
    pub fn retry_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.retry_backoff = first;
        self.max_retry_backoff = max;
        self
    }
}

/// Counters shared by the layer, its services and the worker.
#[derive(Debug, Default)]
pub(crate) struct StatsInner {
    pub(crate) capacity: usize,
    /// Events sent into the queue (the worker subtracts what it takes out).
    pub(crate) queued: AtomicU64,
    pub(crate) taken: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) written: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) lost: AtomicU64,
    /// The worker is retrying a batch the sink refused (cleared when it is written or given up).
    pub(crate) failing: AtomicBool,
    /// When an event was last dropped or lost: milliseconds since the Unix epoch, 0 for never.
    pub(crate) last_loss_ms: AtomicU64,
    /// The same on the monotonic clock: milliseconds since [`process_start`] plus one, 0 for
    /// never (a wall clock stepped back must not make an old loss look recent).
    pub(crate) last_loss_mono: AtomicU64,
    /// Set by [`AuditStats::cutting`]: responses dropped from now on were cut by the host.
    pub(crate) cutting: AtomicBool,
    /// Requests the backend failed (see [`AuditStats::upstream_failures`]).
    pub(crate) upstream_failures: AtomicU64,
    pub(crate) last_upstream_failure: Mutex<Option<UpstreamFailure>>,
    /// An event found the queue closed (the worker dropped or never run): said once in the log.
    pub(crate) closed_warned: AtomicBool,
}

/// The most recent request a backend failed, for a status page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamFailure {
    /// When the request ended.
    pub at: SystemTime,
    /// The status the client got (502, 504, or the backend's own 5xx).
    pub status: u16,
    /// FastGate's error code (`upstream_unreachable`, `upstream_timeout`, …); `None` for a
    /// backend's own 5xx answer.
    pub code: Option<&'static str>,
}

impl StatsInner {
    /// Count `n` events as dropped (`lost == false`) or lost, and note when.
    pub(crate) fn note_loss(&self, n: u64, lost: bool) {
        let counter = if lost { &self.lost } else { &self.dropped };
        counter.fetch_add(n, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
            });
        self.last_loss_ms.store(now, Ordering::Relaxed);
        self.last_loss_mono.store(mono_ms(), Ordering::Relaxed);
    }

    /// Count `event` if the backend failed it: unreachable, reset, silent, or answered 5xx.
    /// Runs when an event is finished; costs a lock only for such failures.
    pub(crate) fn note_upstream(&self, event: &AuditEvent) {
        let failed = match event.outcome {
            Outcome::UpstreamError | Outcome::UpstreamTimeout => true,
            // A refusal of FastGate's own is never `Completed` (the guard takes its outcome).
            Outcome::Completed => event.status >= 500 && event.target_url.is_some(),
            _ => false,
        };
        if !failed {
            return;
        }
        self.upstream_failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_upstream_failure.lock() {
            *last = Some(UpstreamFailure {
                at: SystemTime::now(),
                status: event.status,
                code: event.error_code,
            });
        }
    }
}

/// When the process first asked: the origin of [`mono_ms`].
fn process_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds since [`process_start`], plus one (0 stays "never").
pub(crate) fn mono_ms() -> u64 {
    u64::try_from(process_start().elapsed().as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

/// A cheap, cloneable view of the audit counters (for `/health` and metrics).
#[derive(Clone, Debug)]
pub struct AuditStats {
    inner: Arc<StatsInner>,
}

impl AuditStats {
    /// Events waiting in the queue.
    pub fn queue_depth(&self) -> u64 {
        let queued = self.inner.queued.load(Ordering::Relaxed);
        let taken = self.inner.taken.load(Ordering::Relaxed);
        queued.saturating_sub(taken)
    }
    /// Queue capacity.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }
    /// Events dropped because the queue was full or the worker had stopped.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
    /// Events the sink accepted.
    pub fn written(&self) -> u64 {
        self.inner.written.load(Ordering::Relaxed)
    }
    /// Batch write attempts that were retried.
    pub fn retried(&self) -> u64 {
        self.inner.retried.load(Ordering::Relaxed)
    }
    /// Events in batches given up on after the last retry.
    pub fn lost(&self) -> u64 {
        self.inner.lost.load(Ordering::Relaxed)
    }

    /// Whether the worker is retrying a batch the sink refused (a batch given up on counts as
    /// [`lost`](Self::lost) instead). A sink that keeps what it cannot write
    /// (a [`SpoolSink`](super::SpoolSink)) reports its own state in
    /// [`SpoolStats::failing`](super::SpoolStats::failing).
    pub fn failing(&self) -> bool {
        self.inner.failing.load(Ordering::Relaxed)
    }

    /// How long ago an event was last [`dropped`](Self::dropped) or [`lost`](Self::lost), on
    /// the monotonic clock; `None` if never.
    pub fn since_last_loss(&self) -> Option<Duration> {
        match self.inner.last_loss_mono.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(mono_ms().saturating_sub(at))),
        }
    }

    /// When an event was last [`dropped`](Self::dropped) or [`lost`](Self::lost) (wall clock,
    /// for display); `None` if never.
    pub fn last_loss(&self) -> Option<SystemTime> {
        match self.inner.last_loss_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// Requests a backend failed since start: unreachable, reset or silent (outcomes
    /// `upstream_error`, `upstream_timeout`), or answered with a 5xx status.
    pub fn upstream_failures(&self) -> u64 {
        self.inner.upstream_failures.load(Ordering::Relaxed)
    }

    /// The most recent of [`upstream_failures`](Self::upstream_failures).
    pub fn last_upstream_failure(&self) -> Option<UpstreamFailure> {
        self.inner
            .last_upstream_failure
            .lock()
            .ok()
            .and_then(|last| last.clone())
    }

    /// The host is about to cut the responses still running (at the end of its shutdown grace
    /// period): from now on a response dropped before its end is recorded as
    /// [`Outcome::Interrupted`](crate::audit::Outcome::Interrupted), not `ClientAborted`.
    pub fn cutting(&self) {
        self.inner.cutting.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct Shared {
    tx: mpsc::Sender<AuditEvent>,
    stats: Arc<StatsInner>,
}

/// Layer that applies [`Audit`]. Create it with [`AuditLayer::pair`].
///
/// Dropping every clone of the layer (and of the services it made) closes the queue; the worker
/// then writes what is left and returns.
#[derive(Clone)]
pub struct AuditLayer {
    shared: Option<Shared>,
}

impl fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLayer")
            .field("enabled", &self.shared.is_some())
            .finish()
    }
}

impl AuditLayer {
    /// The layer and the worker that drains its events into `sink`.
    ///
    /// The worker is a plain future: the caller decides where to run it. If it is dropped
    /// without running, every event is counted in [`AuditStats::dropped`] and the first one
    /// logs an error.
    pub fn pair<W: AuditSink>(sink: W, config: AuditConfig) -> (Self, AuditWorker<W>) {
        let capacity = config.capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let stats = Arc::new(StatsInner {
            capacity,
            ..StatsInner::default()
        });
        let worker = AuditWorker::new(rx, sink, config, Arc::clone(&stats));
        (
            Self {
                shared: Some(Shared { tx, stats }),
            },
            worker,
        )
    }

    /// A layer that audits nothing: no event is made. It still follows the client's upload, for
    /// the forward service's response timeout (see [`forward`](crate::forward)).
    pub fn disabled() -> Self {
        Self { shared: None }
    }

    /// Counters of this layer's queue and worker (all zero when disabled).
    pub fn stats(&self) -> AuditStats {
        AuditStats {
            inner: self
                .shared
                .as_ref()
                .map_or_else(Arc::default, |s| Arc::clone(&s.stats)),
        }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Middleware that emits exactly one [`AuditEvent`] per request.
///
/// See the [module docs](super) for details.
#[derive(Clone)]
pub struct Audit<S> {
    inner: S,
    shared: Option<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for Audit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit")
            .field("inner", &self.inner)
            .field("enabled", &self.shared.is_some())
            .finish()
    }
}

impl<S> Audit<S> {
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for Audit<S>
where
    S: Service<Request<AuditRequestBody<ReqB>>, Response = Response<ResB>>,
    ResB: Body,
{
    type Response = Response<AuditBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let Some(shared) = &self.shared else {
            // Nothing is audited, but the client's upload is still followed: the forward
            // service's response timeout counts from its end (a slow upload is not the
            // backend's delay) whether or not the stack audits.
            let request = Arc::new(RequestStats::default());
            req.extensions_mut().insert(AuditSlot(Arc::clone(&request)));
            let req = req.map(|b| AuditRequestBody::new(b, Some(request)));
            return ResponseFuture {
                inner: self.inner.call(req),
                guard: None,
            };
        };
        let start = Instant::now();
        // The backend must answer in a coding the usage scanner reads (see `decode`).
        narrow_accept_encoding(req.headers_mut());
        let event = start_event(&req);
        let request = Arc::new(RequestStats::default());
        // Boxed: the guard holds the whole event (~400 bytes), and the response future and
        // body it travels in are moved through every layer above; a pointer is cheaper to move.
        let guard = Box::new(AuditGuard::new(
            event,
            start,
            shared.tx.clone(),
            Arc::clone(&shared.stats),
            Arc::clone(&request),
        ));
        req.extensions_mut().insert(AuditSlot(Arc::clone(&request)));
        let req = req.map(|b| AuditRequestBody::new(b, Some(request)));
        ResponseFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

pub(crate) fn start_event<B>(req: &Request<B>) -> AuditEvent {
    let headers = req.headers();
    let text = |name: &header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // The path only: a query string may carry credentials meant for the upstream.
    let path = capped(req.uri().path());
    let mut event = AuditEvent::new(
        text(&X_REQUEST_ID).unwrap_or_default(),
        req.method().as_str(),
        path,
    );
    // A User-Agent with bytes outside ASCII (UTF-8 text such as `café`) is kept, read as UTF-8
    // (any byte that is not is replaced) without control characters (C1 ones such as U+0085
    // would reach CSV and log readers), not dropped.
    event.user_agent = headers.get(header::USER_AGENT).map(|v| match v.to_str() {
        Ok(ascii) => capped(ascii),
        Err(_) => {
            let text: String = String::from_utf8_lossy(v.as_bytes())
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            capped(&text)
        }
    });
    event.client_ip = req.extensions().get::<ClientAddr>().map(|a| ip_text(a.0));
    event
}

/// Longest path or `User-Agent` an audit record keeps, in bytes: anyone can send a 20 KB path
/// (refused, but audited), and the table must not grow by that much per request.
pub(crate) const AUDIT_TEXT_MAX: usize = 1024;

/// `text`, or its first [`AUDIT_TEXT_MAX`] bytes (cut at a character boundary) and `…`.
pub(crate) fn capped(text: &str) -> String {
    if text.len() <= AUDIT_TEXT_MAX {
        return text.to_owned();
    }
    let mut end = AUDIT_TEXT_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `ip` as text, as `Display` writes it. IPv4 is written by hand: `Display` (which supports
/// width and padding) cost ~1.4k instructions per request, about 1.7% of the whole request.
fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

#[cfg(test)]
mod ip_tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::ip_text;

    #[test]
    fn ip_text_matches_display() {
        for octet in 0..=255u8 {
            for ip in [
                Ipv4Addr::new(octet, 0, 7, 255),
                Ipv4Addr::new(10, octet, 100, 9),
                Ipv4Addr::new(192, 168, octet, 99),
                Ipv4Addr::new(1, 10, 100, octet),
            ] {
                assert_eq!(ip_text(IpAddr::V4(ip)), ip.to_string());
            }
        }
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_eq!(ip_text(v6), "2001:db8::1");
        let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(ip_text(mapped), mapped.to_string());
    }
}

pin_project! {
    /// Response future for [`Audit`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<Box<AuditGuard>>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("audit::ResponseFuture")
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<AuditBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut guard = this.guard.take();
        match result {
            Ok(res) => {
                if let Some(guard) = guard.as_mut() {
                    guard.on_response(&res);
                }
                Poll::Ready(Ok(res.map(|body| AuditBody::new(body, guard))))
            }
            Err(err) => {
                if let Some(guard) = guard.as_mut() {
                    guard.finish(Outcome::UpstreamError, Some("service_error"));
                }
                Poll::Ready(Err(err))
            }
        }
    }
}
