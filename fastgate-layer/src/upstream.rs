//! HTTP/1.1 connections to plain `http://` upstreams, pooled per upstream (authority and connect
//! timeout; the forward service shares a pool between the backends on one upstream) and driven
//! by the request that uses them.
//!
//! hyper-util's pooled client runs each upstream connection as a task of its own: a request is
//! handed to that task through a channel and its response handed back, the pool is a mutex-guarded
//! hash map keyed by scheme and authority, and after every HTTP/1 response one more task is
//! spawned to wait until the connection is idle again. Here a connection is a plain value. The
//! request's future polls it while waiting for the headers, then the response body
//! ([`GatewayBody`](crate::body::GatewayBody)) polls it while streaming, and when the body has
//! ended the connection goes back to its upstream's idle list. No task switch, no spawn, no hash
//! map; an idle connection costs no task either. For a bare proxy this cut the instructions per
//! request from 39.1k to 29.5k (callgrind, `examples/bare_proxy.rs` against the same loop on this
//! module's design).
//!
//! One exception: when the upstream answers before it has the whole request body, the upload must
//! go on while the response body may be polled only as fast as the client reads it, so such a
//! connection is handed to a task of its own (as hyper-util does for every connection) and pooled
//! by that task when the exchange is over. That task gives up (and closes the connection) when the
//! upload makes no progress for the backend's `response_timeout`, or is still going on
//! [`UPLOAD_WAITS`] of them after the answer: an upstream that answered and stopped reading, or a
//! client that stopped sending, would otherwise hold the connection and the request body for ever.
//!
//! Semantics kept from hyper-util: idle connections expire after the pool's idle timeout (a task
//! per pool closes expired ones and ones the upstream closed, also without traffic) and at most
//! `max_idle` are kept; a connection is reused only once its response has been read to the end
//! (a body dropped early closes it); a request that failed on a reused connection before any of
//! it was written (the upstream had closed the connection) is retried on another one; `Host` is
//! set to the upstream's authority unless the request already carries one. TLS and HTTP/2
//! upstreams still go through hyper-util (see [`ForwardService`](crate::forward::ForwardService)).

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, Uri, header};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use sync_wrapper::SyncWrapper;
use tokio::net::TcpStream;

use crate::error::BoxError;
use crate::forward::UPLOAD_WAITS;

/// Largest read buffer of an upstream connection (hyper's default is ~400 KiB). A client that
/// stops reading a fast stream leaves this much buffered here, per stream, besides what the
/// server side buffers; response heads larger than this are refused.
pub(crate) const UPSTREAM_MAX_BUF: usize = 64 * 1024;

/// Response headers, and the connection that the body must drive (`None` when a task of its own
/// drives it: the request body was still being uploaded when the headers came).
pub(crate) type Sent = (Response<Incoming>, Option<PooledConn>);

/// Attempts on reused connections that the upstream had closed before the request was written.
const MAX_STALE_RETRIES: usize = 2;

/// Why a request got no response headers from the upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The TCP connection could not be opened.
    #[error("connecting to the upstream failed: {0}")]
    Connect(#[source] std::io::Error),
    /// Opening the TCP connection took longer than the backend's connect timeout.
    #[error("connecting to the upstream timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The connection failed while the request was sent or the response read.
    #[error("upstream request failed: {0}")]
    Request(#[source] hyper::Error),
    /// The connection closed before the response headers arrived.
    #[error("the upstream closed the connection before answering")]
    Closed,
}

impl SendError {
    /// Whether the upstream was never reached (refused, unresolvable, connect timeout).
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::ConnectTimeout(_))
    }
}

/// The idle connections to one upstream (authority and connect timeout), and how to open new
/// ones.
pub(crate) struct HostPool<B> {
    /// Host to connect to (IPv6 literals without brackets) and port.
    host: String,
    port: u16,
    /// `Host` header for requests that carry none.
    host_header: HeaderValue,
    connect_timeout: Duration,
    /// The backend's response timeout: bounds an upload still going on after the answer (see
    /// [`drive_to_idle`]).
    response_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Idle connections, most recently used last, with the instant each became idle.
    idle: Mutex<Vec<(Box<Conn<B>>, Instant)>>,
}

impl<B> fmt::Debug for HostPool<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostPool")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Pool settings shared by every backend of one forward service.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolSettings {
    pub(crate) idle_timeout: Duration,
    pub(crate) max_idle: usize,
}

/// The I/O half of a connection (hyper's `Connection`), boxed once per connection so that the
/// pool's types need no `Body` bound.
type ConnFuture = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One upstream connection: the request sender and the connection future that does its I/O.
struct Conn<B> {
    tx: SendRequest<Upload<B>>,
    conn: ConnFuture,
    /// The connection future has completed (closed or failed): never poll it again.
    done: bool,
    /// How far hyper has taken the current request body.
    upload: Arc<UploadProgress>,
    pool: Weak<HostPool<B>>,
}

/// How far hyper has taken a connection's current request body.
#[derive(Debug, Default)]
struct UploadProgress {
    /// Set once hyper has taken the last frame.
    ended: AtomicBool,
    /// Frames hyper has taken (wrapping; only compared with an earlier value).
    frames: AtomicU64,
}

/// A request body as the connection sees it: records the frames hyper takes, and the last one.
struct Upload<B> {
    inner: B,
    progress: Arc<UploadProgress>,
}

impl<B> Body for Upload<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let finished = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => {
                // Only one task polls the body: a plain load and store.
                let frames = this.progress.frames.load(Ordering::Relaxed);
                this.progress
                    .frames
                    .store(frames.wrapping_add(1), Ordering::Relaxed);
                this.inner.is_end_stream()
            }
            _ => false,
        };
        if finished {
            this.progress.ended.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> HostPool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A pool for `uri`'s authority when it is a plain `http://` URI; `None` otherwise. Inside a
    /// tokio runtime a task closes its idle connections that expired or that the upstream closed,
    /// also while no request comes; it ends with the pool.
    pub(crate) fn for_uri(
        uri: &Uri,
        connect_timeout: Duration,
        response_timeout: Duration,
        settings: PoolSettings,
    ) -> Option<Arc<Self>> {
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return None;
        }
        let host = uri.host()?;
        let port = uri.port_u16();
        let host_header = match port {
            Some(p) if p != 80 => HeaderValue::from_str(&format!("{host}:{p}")).ok()?,
            _ => HeaderValue::from_str(host).ok()?,
        };
        let pool = Arc::new(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: port.unwrap_or(80),
            host_header,
            connect_timeout,
            response_timeout,
            idle_timeout: settings.idle_timeout,
            max_idle: settings.max_idle,
            idle: Mutex::default(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(reap_idle(Arc::downgrade(&pool)));
        }
        Some(pool)
    }

    /// Send `req` (origin-form URI) and wait for the response headers.
    ///
    /// The returned [`PooledConn`] must travel with the response body: it is what reads it.
    pub(crate) async fn send(self: Arc<Self>, mut req: Request<B>) -> Result<Sent, SendError> {
        req.headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| self.host_header.clone());
        let mut stale_retries = 0;
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            let progress = Arc::clone(&conn.upload);
            progress
                .ended
                .store(req.body().is_end_stream(), Ordering::Release);
            let mut sent = std::pin::pin!(
                conn.tx
                    .try_send_request(req.map(|inner| Upload { inner, progress }))
            );
            let first = poll_fn(|cx| {
                conn.drive(cx);
                match sent.as_mut().poll(cx) {
                    Poll::Ready(result) => Poll::Ready(Some(result)),
                    // The connection ended with the request still queued: dropping it hands the
                    // request back through `sent`.
                    Poll::Pending if conn.done => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            let mut err = match first {
                Some(Ok(res)) if conn.upload.ended.load(Ordering::Acquire) => {
                    return Ok((res, Some(PooledConn::new(conn))));
                }
                Some(Ok(res)) => {
                    // The upstream answered before it had the whole request body. The body of
                    // the response may only be polled while the client can take it, and the
                    // upload must go on regardless: a task of its own drives the connection.
                    tokio::spawn(drive_to_idle(conn, self.response_timeout));
                    return Ok((res, None));
                }
                Some(Err(err)) => err,
                None => {
                    drop(conn);
                    match sent.await {
                        Err(err) => err,
                        // Not expected once the connection is gone; a failure all the same.
                        Ok(_) => return Err(SendError::Closed),
                    }
                }
            };
            match err.take_message() {
                Some(message) if reused && stale_retries < MAX_STALE_RETRIES => {
                    stale_retries += 1;
                    req = message.map(|upload| upload.inner);
                }
                _ => return Err(SendError::Request(err.into_error())),
            }
        }
    }

    /// The most recently used idle connection that is still open, if any.
    fn checkout(&self) -> Option<Box<Conn<B>>> {
        loop {
            let (mut conn, since) = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()?;
            // Checked (and a stale one closed) outside the lock.
            if since.elapsed() < self.idle_timeout && conn.is_open() {
                return Some(conn);
            }
        }
    }

    /// Close the idle connections that expired or that the upstream closed.
    fn reap(&self) {
        let entries =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        let now = Instant::now();
        let kept: Vec<_> = entries
            .into_iter()
            .filter_map(|(mut conn, since)| {
                (now.duration_since(since) < self.idle_timeout && conn.is_open())
                    .then_some((conn, since))
            })
            .collect();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // Connections put back meanwhile are newer: the kept ones go in front of them.
        idle.splice(0..0, kept);
    }

    /// Put a connection whose exchange has completed back into the idle list.
    fn put(&self, conn: Box<Conn<B>>) {
        let now = Instant::now();
        let mut evicted = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            // The oldest idle connections are at the front.
            let expired = idle
                .iter()
                .take_while(|(_, since)| now.duration_since(*since) >= self.idle_timeout)
                .count();
            evicted.extend(idle.drain(..expired).map(|(conn, _)| conn));
            if idle.len() < self.max_idle {
                idle.push((conn, now));
            } else {
                evicted.push(conn);
            }
        }
        drop(evicted);
    }

    async fn connect(self: &Arc<Self>) -> Result<Box<Conn<B>>, SendError> {
        let connecting = async {
            let stream = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(SendError::Connect)?;
            stream.set_nodelay(true).map_err(SendError::Connect)?;
            let (tx, conn) = Builder::new()
                .max_buf_size(UPSTREAM_MAX_BUF)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(SendError::Request)?;
            Ok(Box::new(Conn {
                tx,
                conn: Box::pin(conn) as ConnFuture,
                done: false,
                upload: Arc::default(),
                pool: Arc::downgrade(self),
            }))
        };
        tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| SendError::ConnectTimeout(self.connect_timeout))?
    }
}

/// Drive a connection whose request body is still being uploaded until the exchange is over,
/// then pool it (or drop it if it closed).
///
/// The request's future and its timeouts ended with the answer, so the upload is bounded here:
/// when hyper has taken no frame of it for `stall` (the backend's response timeout, as for an
/// upload before the answer), or it is still going on [`UPLOAD_WAITS`] × `stall` after the
/// answer, the connection is closed and the request body dropped. An upstream that answered
/// and stopped reading, or a client that stopped sending, held both for ever before. Once the
/// upload has ended, what is left is the response body, bounded by whoever reads it (hyper
/// closes the connection when that body is dropped). Off the hot path: only an upload still
/// going on after the answer gets this task and its timer.
async fn drive_to_idle<B>(mut conn: Box<Conn<B>>, stall: Duration)
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let progress = Arc::clone(&conn.upload);
    let give_up = tokio::time::Instant::now() + stall * UPLOAD_WAITS;
    let mut frames = progress.frames.load(Ordering::Relaxed);
    let check = tokio::time::sleep(stall);
    tokio::pin!(check);
    let over = poll_fn(|cx| {
        conn.drive(cx);
        if conn.done || conn.tx.is_ready() {
            return Poll::Ready(true);
        }
        if progress.ended.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        while check.as_mut().poll(cx).is_ready() {
            let now = tokio::time::Instant::now();
            let taken = progress.frames.load(Ordering::Relaxed);
            if taken == frames || now >= give_up {
                return Poll::Ready(false);
            }
            frames = taken;
            check.as_mut().reset(now + stall);
        }
        Poll::Pending
    })
    .await;
    if over {
        conn.release();
    } else {
        tracing::debug!(
            "closing an upstream connection whose request body stalled after the answer"
        );
        drop(conn);
    }
}

/// Every so often, close the pool's idle connections that expired or were closed by the upstream
/// (they would otherwise linger in CLOSE_WAIT until the next request). Ends with the pool.
async fn reap_idle<B>(pool: Weak<HostPool<B>>)
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let every = match pool.upgrade() {
        Some(pool) => pool
            .idle_timeout
            .clamp(Duration::from_secs(1), Duration::from_secs(30)),
        None => return,
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.reap(),
            None => return,
        }
    }
}

impl<B> Conn<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Let the connection do its I/O (write the request, read the response, notice a close).
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.done && self.conn.as_mut().poll(cx).is_ready() {
            self.done = true;
        }
    }

    /// Whether an idle connection can take a request (polls it once to notice a close).
    fn is_open(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()));
        !self.done && self.tx.is_ready()
    }
}

/// Type-erased connection travelling with a response body.
trait Drive: Send {
    fn drive(&mut self, cx: &mut Context<'_>);
    /// The response was read to the end: return the connection to its pool if it can be reused.
    fn release(self: Box<Self>);
}

impl<B> Drive for Conn<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn drive(&mut self, cx: &mut Context<'_>) {
        Conn::drive(self, cx);
    }

    fn release(mut self: Box<Self>) {
        if self.is_open()
            && let Some(pool) = self.pool.upgrade()
        {
            pool.put(self);
        }
    }
}

/// The upstream connection of a response whose body is still being read.
///
/// Poll it ([`drive`](Self::drive)) before polling the body; mark the end of the body with
/// [`set_ended`](Self::set_ended). Dropped after the end, it returns the connection to its pool;
/// dropped earlier, it closes the connection.
pub(crate) struct PooledConn {
    conn: Option<SyncWrapper<Box<dyn Drive>>>,
    ended: bool,
}

impl PooledConn {
    fn new<B>(conn: Box<Conn<B>>) -> Self
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        Self {
            conn: Some(SyncWrapper::new(conn)),
            ended: false,
        }
    }

    pub(crate) fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = self.conn.as_mut() {
            conn.get_mut().drive(cx);
        }
    }

    pub(crate) fn set_ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.ended
        {
            conn.into_inner().release();
        }
    }
}

impl fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConn")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
