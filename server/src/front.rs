//! The HTTP front of the server: one hyper accept loop for the whole port.
//!
//! `/proxy` and everything under it goes straight to the `fastgate-layer` stack: the request body
//! stays hyper's `Incoming`, the response body is the stack's own, nothing is boxed and no poem
//! routing, middleware or body conversion runs on the hot path. Every other path is handed to the
//! poem app (admin API, `/docs`, `/openapi.json`, `/health`, dashboard) through poem's own
//! conversion of a hyper request.
//!
//! A request that carries `Origin` (a browser script's) takes a boxed path of its own: tower-http's
//! CORS layer where `app.cors_allow_origins` applies (`/proxy`, `/health`, the admin app with
//! `app.cors_admin_api`), and the backend's own `Access-Control-*` headers removed. Servers and
//! SDKs send no `Origin` and pay one header lookup for this.
//!
//! Connections get `TCP_NODELAY` (an SSE event or a body written after its headers leaves at
//! once), HTTP/1.1 with keep-alive or HTTP/2 (h2c, detected from the preface), and a limit for
//! reading a request's headers (`app.header_read_timeout`, 60 s by default), which hyper counts
//! from the moment the connection waits for its next request: a client that sends nothing,
//! trickles headers, or leaves an HTTP/1.1 connection idle that long between requests is closed
//! (nginx closes idle keep-alive connections after 75 s). Every connection, HTTP/2 included, is
//! also shut down gracefully once it has had no request in flight for 1 to 1.5 times that long
//! (an HTTP/2 client gets a GOAWAY whatever PINGs it sends, and is dropped if it then does not
//! let the connection close), so idle HTTP/2 connections do not pile up; a request in flight (a
//! slow answer, a stream with long pauses) keeps its connection, keep-alive included, unless its
//! client stops reading: a connection with a response under way and nothing written to it for 1
//! to 1.5 times that long, its socket full (HTTP/1) or a response frame held for flow-control
//! window the client does not give (HTTP/2, where the socket never fills), is dropped, and with
//! it the upstream connections of its responses (HTTP/2: at most 128 streams a connection). On
//! shutdown the listener closes, every connection (including one that has not sent its first
//! byte yet) finishes its in-flight request (HTTP/1.1) or gets a GOAWAY (HTTP/2), and whatever
//! is still open after the grace period is aborted, which lets the audit layer record those
//! requests as interrupted.
//!
//! A request hyper's HTTP/1 parser refuses before any service sees it (a malformed request line or
//! header, a head over 64 KiB) gets the OpenAI-shaped JSON error in hyper's answer, written in its
//! place by the client socket's writer (`parse_refusal.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastgate_layer::ClientAddr;
use fastgate_layer::audit::{AuditBody, AuditStats};
use fastgate_layer::body::GatewayBody;
use fastgate_layer::log_throttle::LogThrottle;
use fastgate_layer::request_id::X_REQUEST_ID;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use ipnet::IpNet;
use pin_project_lite::pin_project;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::util::Oneshot;
use tower::{Layer, ServiceExt};
use tower_http::cors::CorsLayer;

use crate::config::ForwardedHeader;
use crate::linger::{self, LingeringBody};

/// The proxy stack as the server assembles it: store-backed keys, hyper's request body (read to
/// its end in the background if the stack refuses it unread, see [`LingeringBody`]).
pub type ProxyService = fastgate_layer::Gateway<fastgate_store::StoreKeyResolver, LingeringBody>;

/// Body of the poem app's responses (poem's own boxed body).
type AppBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Body of every response the front writes.
pub type FrontBody = Either<AuditBody<GatewayBody>, AppBody>;

/// The poem app behind the front (everything but `/proxy`).
pub type App = Arc<poem::endpoint::BoxEndpoint<'static>>;

/// Whether `path` belongs to the proxy (`/proxy` itself or anything below `/proxy/`).
fn is_proxy_path(path: &str) -> bool {
    path.strip_prefix("/proxy")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

struct Shared {
    proxy: ProxyService,
    app: App,
    local: LocalAddr,
    trusted: Box<[IpNet]>,
    /// The header trusted proxies name the client in.
    forwarded_header: ForwardedHeader,
    /// CORS for browser requests (`app.cors_allow_origins`); `None`: off.
    cors: Option<CorsLayer>,
    /// CORS covers the admin app too (`app.cors_admin_api`), not only `/proxy` and `/health`.
    cors_admin_api: bool,
    /// Stops the reading of refused uploads when shutdown begins.
    lingering: linger::Shutdown,
}

/// The per-connection hyper service: dispatches by path.
#[derive(Clone)]
struct ConnService {
    shared: Arc<Shared>,
    remote: SocketAddr,
    /// The peer is a trusted proxy: its requests name their client in `X-Forwarded-For` (or
    /// `Forwarded`, per `app.forwarded_header`).
    peer_trusted: bool,
    /// Requests started and in flight on this connection, for the idle check.
    activity: Arc<Activity>,
}

/// What the idle check of one connection reads.
#[derive(Default)]
struct Activity {
    /// Set when a request starts and when it ends; the check clears it.
    touched: AtomicBool,
    /// Requests whose response (body included) has not ended yet.
    in_flight: AtomicUsize,
    /// Bytes written to the client (wrapping; only compared with an earlier value).
    written: AtomicU64,
    /// The last write to the client's socket found it full (the client is not reading).
    blocked: AtomicBool,
    /// A response body ended and its last bytes may not be written yet (hyper drops a body
    /// before it writes out what it queued): cleared by the next completed flush.
    unflushed: AtomicBool,
    /// HTTP/2 response bodies whose last frame hyper took and has not asked for the next one
    /// (see [`InFlight::park`]): it holds it until the client gives flow-control window.
    parked: AtomicUsize,
    /// Frames HTTP/2 response bodies handed to hyper (wrapping; only compared with an earlier
    /// value).
    passed: AtomicU64,
}

pin_project! {
    /// The client's socket, noting for the check in [`Drive`] whether writes to it make progress.
    struct Watched {
        #[pin]
        inner: tokio::net::TcpStream,
        activity: Arc<Activity>,
        // hyper's own answer to a request it could not parse, being written as JSON instead.
        replacing: Option<Box<Replacing>>,
    }
}

/// The JSON answer written in place of hyper's (see [`crate::parse_refusal`]).
struct Replacing {
    answer: Vec<u8>,
    written: usize,
    /// The length of hyper's answer, reported as written once `answer` is.
    replaces: usize,
}

impl Watched {
    fn note(activity: &Activity, written: &Poll<std::io::Result<usize>>) {
        // Plain loads and stores (no read-modify-write): the check only needs "it changed".
        match written {
            Poll::Ready(Ok(n)) => {
                let total = activity.written.load(Ordering::Relaxed);
                activity
                    .written
                    .store(total.wrapping_add(*n as u64), Ordering::Relaxed);
                if activity.blocked.load(Ordering::Relaxed) {
                    activity.blocked.store(false, Ordering::Relaxed);
                }
            }
            Poll::Pending => activity.blocked.store(true, Ordering::Relaxed),
            Poll::Ready(Err(_)) => {}
        }
    }

    /// When no request is in flight and `buf` is hyper's own answer to a request it could not
    /// parse, writes the JSON answer instead; `None` for every other write.
    fn poll_replace(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Option<Poll<std::io::Result<usize>>> {
        let mut this = self.project();
        if this.replacing.is_none() {
            // Not while a response (its last queued bytes included) may still be going out:
            // hyper's own answer is only written with nothing else in progress.
            if !crate::parse_refusal::may_be_refusal(buf)
                || this.activity.in_flight.load(Ordering::Acquire) != 0
                || this.activity.unflushed.load(Ordering::Relaxed)
            {
                return None;
            }
            *this.replacing = Some(Box::new(Replacing {
                answer: crate::parse_refusal::replacement(buf)?,
                written: 0,
                replaces: buf.len(),
            }));
        }
        let replacing = this.replacing.as_mut()?;
        while replacing.written < replacing.answer.len() {
            let rest = &replacing.answer[replacing.written..];
            let written = tokio::io::AsyncWrite::poll_write(this.inner.as_mut(), cx, rest);
            Self::note(this.activity, &written);
            match written {
                Poll::Ready(Ok(0)) => {
                    return Some(Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => replacing.written += n,
                other => return Some(other),
            }
        }
        let replaces = replacing.replaces;
        *this.replacing = None;
        Some(Poll::Ready(Ok(replaces)))
    }
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(replaced) = self.as_mut().poll_replace(cx, buf) {
            return replaced;
        }
        let this = self.project();
        let written = this.inner.poll_write(cx, buf);
        Self::note(this.activity, &written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // hyper writes its own answers as one slice.
        if let [only] = bufs
            && let Some(replaced) = self.as_mut().poll_replace(cx, only)
        {
            return replaced;
        }
        let this = self.project();
        let written = this.inner.poll_write_vectored(cx, bufs);
        Self::note(this.activity, &written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let flushed = this.inner.poll_flush(cx);
        // hyper flushes once it has written everything it buffered.
        if matches!(flushed, Poll::Ready(Ok(()))) && this.activity.unflushed.load(Ordering::Relaxed)
        {
            this.activity.unflushed.store(false, Ordering::Relaxed);
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// One request in flight: counted from `call` until its response body ends or is dropped.
struct InFlight {
    activity: Arc<Activity>,
    /// An HTTP/2 request: its body's frames are followed (see [`park`](Self::park)).
    http2: bool,
    /// Counted in `Activity::parked`.
    parked: bool,
}

impl InFlight {
    fn new(activity: &Arc<Activity>, version: http::Version) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            activity: Arc::clone(activity),
            http2: version == http::Version::HTTP_2,
            parked: false,
        }
    }

    /// The body handed a frame to hyper. Over HTTP/2 hyper holds a frame it has no
    /// flow-control window for and polls the body again only once the client gives some: a
    /// client that never does leaves nothing written and its socket never full, so the check
    /// for a client that stopped reading (in [`Drive`]) looks at frames held this way instead.
    /// HTTP/1 is left alone (no atomic per frame): there the socket fills.
    fn park(&mut self) {
        if self.http2 && !self.parked {
            self.parked = true;
            self.activity.parked.fetch_add(1, Ordering::Relaxed);
            // A plain load and store: the check only needs "it changed".
            let passed = self.activity.passed.load(Ordering::Relaxed);
            self.activity
                .passed
                .store(passed.wrapping_add(1), Ordering::Relaxed);
        }
    }

    /// hyper asked for the next frame (or the body is gone).
    fn resume(&mut self) {
        if self.parked {
            self.parked = false;
            self.activity.parked.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.resume();
        // Idleness counts from the end of the last request, not from its last check.
        self.activity.touched.store(true, Ordering::Relaxed);
        self.activity.unflushed.store(true, Ordering::Relaxed);
        self.activity.in_flight.fetch_sub(1, Ordering::Release);
    }
}

pin_project! {
    /// A response body that keeps its request counted as in flight until it is dropped.
    pub struct Tracked {
        #[pin]
        inner: FrontBody,
        in_flight: Option<InFlight>,
        // The access log line, written when the body ends or is dropped.
        log: Option<Box<AccessLog>>,
    }
}

/// An empty body, not counted in flight: what the CORS layer answers a preflight with.
impl Default for Tracked {
    fn default() -> Self {
        Self {
            inner: Either::Right(AppBody::default()),
            in_flight: None,
            log: None,
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = <FrontBody as hyper::body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if let Some(in_flight) = this.in_flight.as_mut() {
            in_flight.resume();
        }
        let frame = this.inner.as_mut().poll_frame(cx);
        match &frame {
            Poll::Ready(None) => {
                // Ended: no longer in flight, even if hyper keeps the body a while.
                this.in_flight.take();
                if let Some(mut log) = this.log.take() {
                    log.complete = true;
                }
            }
            Poll::Ready(Some(Ok(_))) => {
                // Until hyper asks again (or drops the body); the last frame too, which an
                // HTTP/2 stream holds as long as any other while it waits for window.
                if let Some(in_flight) = this.in_flight.as_mut() {
                    in_flight.park();
                }
                // hyper stops polling a body that says it has ended (a known length reached).
                if this.log.is_some()
                    && this.inner.is_end_stream()
                    && let Some(mut log) = this.log.take()
                {
                    log.complete = true;
                }
            }
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// `Forwarded` (RFC 7239).
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The client a request from a trusted proxy was forwarded for, from the header the proxies set
/// (`app.forwarded_header`: `X-Forwarded-For`, or the `for=` parameters of RFC 7239's
/// `Forwarded`); the other header is ignored, so a client cannot slip its own past a proxy that
/// only writes one of them. Walking the list from its end (each proxy appends the address it
/// received the request from), the first address that is not itself a trusted proxy. When every
/// address is trusted, the first one; when an entry is not an address (`unknown`, an obfuscated
/// `_name`, garbage) or the header is missing, the last trusted hop, at worst `peer`.
fn forwarded_client(
    trusted: &[IpNet],
    peer: IpAddr,
    headers: &HeaderMap,
    header: ForwardedHeader,
) -> IpAddr {
    // Header values are read as bytes: an obs-text byte (0x80-0xFF) a client put into its own
    // entry must not hide the entries the proxies appended after it.
    match header {
        ForwardedHeader::XForwardedFor => {
            let hops = headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .rev()
                .flat_map(|value| value.as_bytes().rsplit(|b| *b == b','))
                .map(<[u8]>::trim_ascii)
                // Empty list elements are allowed (RFC 9110 list syntax) and name nobody.
                .filter(|entry| !entry.is_empty())
                .map(|entry| std::str::from_utf8(entry).ok().and_then(forwarded_ip));
            nearest_untrusted(trusted, peer, hops)
        }
        ForwardedHeader::Forwarded => {
            let hops = headers
                .get_all(FORWARDED)
                .iter()
                .rev()
                .flat_map(|value| forwarded_for(value.as_bytes()).into_iter().rev());
            nearest_untrusted(trusted, peer, hops)
        }
    }
}

/// Walk `hops` (nearest first; `None` for an entry that names no address): the first address
/// that is not a trusted proxy, else the last trusted one, else `peer`.
fn nearest_untrusted(
    trusted: &[IpNet],
    peer: IpAddr,
    hops: impl Iterator<Item = Option<IpAddr>>,
) -> IpAddr {
    let mut client = peer;
    for hop in hops {
        let Some(ip) = hop else {
            return client;
        };
        if !is_trusted(trusted, ip) {
            return ip;
        }
        client = ip;
    }
    client
}

/// RFC 7230 `tchar`: what a parameter name (and an unquoted value) is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The `for=` address of each element of one `Forwarded` header value, in order: `None` for an
/// element without one, with two, or whose value is not an address (`unknown`, an obfuscated
/// `_name`). Elements are separated by `,`, pairs by `;` (empty elements and pairs are allowed
/// and skipped); names are case-insensitive; values are tokens or quoted strings (as an IPv6
/// address must be: `for="[2001:db8::1]:4711"`); an obfuscated port (`:_p1`) is ignored. A value
/// that breaks this grammar anywhere (a stray or unterminated quote, a pair without `=`, text
/// after a value) reads as a single `None`: nothing in it is trusted, so a client's malformed
/// text cannot swallow the element a proxy appended after it (nor hide its own address).
fn forwarded_for(value: &[u8]) -> Vec<Option<IpAddr>> {
    let malformed = || vec![None];
    let mut out = Vec::new();
    // The element being read: whether it has a pair yet, its `for` address, its `for` pairs.
    let (mut has_pair, mut address, mut fors) = (false, None, 0u8);
    let mut rest = value;
    loop {
        rest = rest.trim_ascii_start();
        match rest.split_first() {
            None => {
                if has_pair {
                    out.push(if fors > 1 { None } else { address });
                }
                return out;
            }
            Some((b',', tail)) => {
                if has_pair {
                    out.push(if fors > 1 { None } else { address });
                }
                (has_pair, address, fors) = (false, None, 0);
                rest = tail;
                continue;
            }
            Some((b';', tail)) => {
                rest = tail;
                continue;
            }
            Some(_) => {}
        }
        let name_len = rest.iter().take_while(|b| is_tchar(**b)).count();
        let (name, tail) = rest.split_at(name_len);
        let Some(tail) = tail.trim_ascii_start().strip_prefix(b"=") else {
            return malformed();
        };
        if name.is_empty() {
            return malformed();
        }
        let tail = tail.trim_ascii_start();
        let (val, tail) = if let Some(quoted) = tail.strip_prefix(b"\"") {
            let mut escaped = false;
            let Some(end) = quoted.iter().position(|&c| {
                let close = c == b'"' && !escaped;
                escaped = c == b'\\' && !escaped;
                close
            }) else {
                return malformed();
            };
            (&quoted[..end], &quoted[end + 1..])
        } else {
            // A token; `:` and brackets too, for the unquoted addresses some proxies send.
            let len = tail
                .iter()
                .take_while(|b| is_tchar(**b) || matches!(b, b':' | b'[' | b']'))
                .count();
            if len == 0 {
                return malformed();
            }
            tail.split_at(len)
        };
        rest = tail.trim_ascii_start();
        if !matches!(rest.first(), None | Some(b',' | b';')) {
            return malformed();
        }
        has_pair = true;
        if name.eq_ignore_ascii_case(b"for") {
            fors = fors.saturating_add(1);
            address = std::str::from_utf8(val).ok().and_then(|val| {
                let host = match val.rsplit_once(':') {
                    Some((host, port)) if port.starts_with('_') => host,
                    _ => val,
                };
                forwarded_ip(host)
            });
        }
    }
}

/// `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]`, `203.0.113.7:4711` or `[2001:db8::1]:4711`.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
        .map(|ip: IpAddr| ip.to_canonical())
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = FrontFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // A plain store (no read-modify-write): the idle check only needs "some request began".
        self.activity.touched.store(true, Ordering::Relaxed);
        let in_flight = Some(InFlight::new(&self.activity, req.version()));
        let client = if self.peer_trusted {
            forwarded_client(
                &self.shared.trusted,
                self.remote.ip(),
                req.headers(),
                self.shared.forwarded_header,
            )
        } else {
            self.remote.ip()
        };
        let log = tracing::enabled!(target: "fastgate::access", tracing::Level::DEBUG)
            .then(|| Box::new(AccessLog::new(&req, client)));
        // A browser's request (it carries `Origin`) takes a boxed path of its own: the CORS
        // layer where it applies, and never the backend's own CORS headers (FastGate decides).
        // Servers and SDKs keep the unboxed path, with nothing added.
        let kind = if req.headers().contains_key(http::header::ORIGIN) {
            let dispatch = Dispatch {
                shared: Arc::clone(&self.shared),
                client,
                port: self.remote.port(),
            };
            let fut: BrowserFuture = match &self.shared.cors {
                Some(cors) if self.shared.cors_applies(&req) => {
                    Box::pin(cors.layer(dispatch).oneshot(req))
                }
                _ => Box::pin(dispatch.oneshot(req)),
            };
            Kind::Browser { fut }
        } else {
            dispatch(&self.shared, client, self.remote.port(), req)
        };
        FrontFuture {
            kind,
            log,
            in_flight,
        }
    }
}

/// `/proxy/...` to the layer stack, everything else to the poem app.
fn dispatch(shared: &Shared, client: IpAddr, port: u16, mut req: Request<Incoming>) -> Kind {
    if is_proxy_path(req.uri().path()) {
        req.extensions_mut().insert(ClientAddr(client));
        Kind::Proxy {
            fut: Oneshot::new(
                shared.proxy.clone(),
                LingeringBody::wrap(req, &shared.lingering),
            ),
        }
    } else {
        let req = poem::Request::from((
            req,
            shared.local.clone(),
            RemoteAddr(poem::Addr::SocketAddr(SocketAddr::new(client, port))),
            http::uri::Scheme::HTTP,
        ));
        let app = Arc::clone(&shared.app);
        Kind::App {
            fut: Box::pin(async move { poem::Endpoint::get_response(&*app, req).await }),
        }
    }
}

impl Shared {
    /// Whether the CORS layer answers this request, which carries `Origin`: on `/proxy/...` and
    /// `/health` (everywhere with `app.cors_admin_api`), an `OPTIONS` only as a preflight (with
    /// `Access-Control-Request-Method`; any other `OPTIONS` goes its normal way). Requests
    /// without `Origin` (servers, SDKs, curl) never reach the layer.
    fn cors_applies(&self, req: &Request<Incoming>) -> bool {
        let path = req.uri().path();
        (self.cors_admin_api || is_proxy_path(path) || path == "/health")
            && (req.method() != http::Method::OPTIONS
                || req
                    .headers()
                    .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD))
    }
}

/// Remove the `Access-Control-*` headers a backend set itself: for a browser, FastGate's CORS
/// settings decide alone (`[]` means none, a list means only those origins).
fn strip_backend_cors(headers: &mut HeaderMap) {
    while let Some(name) = headers
        .keys()
        .find(|name| name.as_str().starts_with("access-control-"))
        .cloned()
    {
        headers.remove(&name);
    }
}

/// The front's dispatch as a tower service for a browser's request (the CORS layer wraps it):
/// the backend's `Access-Control-*` headers are removed from the answer.
struct Dispatch {
    shared: Arc<Shared>,
    client: IpAddr,
    port: u16,
}

impl tower::Service<Request<Incoming>> for Dispatch {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = BrowserFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> BrowserFuture {
        let fut = FrontFuture {
            kind: dispatch(&self.shared, self.client, self.port, req),
            log: None,
            in_flight: None,
        };
        Box::pin(async move {
            let Ok(mut res) = fut.await;
            strip_backend_cors(res.headers_mut());
            Ok(res)
        })
    }
}

/// The future of a browser's request: the front's own, stripped of the backend's CORS headers,
/// inside the CORS layer's where it applies.
type BrowserFuture = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

pin_project! {
    /// Response future of the front: the proxy stack's own future, unboxed, or the poem app's.
    struct FrontFuture {
        #[pin]
        kind: Kind,
        log: Option<Box<AccessLog>>,
        in_flight: Option<InFlight>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Proxy { #[pin] fut: Oneshot<ProxyService, Request<LingeringBody>> },
        App { fut: Pin<Box<dyn Future<Output = poem::Response> + Send>> },
        Browser { fut: BrowserFuture },
    }
}

impl Future for FrontFuture {
    type Output = Result<Response<Tracked>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let untracked = |inner| Tracked {
            inner,
            in_flight: None,
            log: None,
        };
        let mut res = match this.kind.project() {
            KindProj::Proxy { fut } => match std::task::ready!(fut.poll(cx)) {
                Ok(res) => res.map(|body| untracked(Either::Left(body))),
                Err(never) => match never {},
            },
            KindProj::App { fut } => {
                let res: Response<AppBody> = std::task::ready!(fut.as_mut().poll(cx)).into();
                res.map(|body| untracked(Either::Right(body)))
            }
            KindProj::Browser { fut } => {
                let Ok(res) = std::task::ready!(fut.as_mut().poll(cx));
                res
            }
        };
        if let Some(mut log) = this.log.take() {
            log.head(&res);
            if hyper::body::Body::is_end_stream(res.body()) {
                // Nothing to send after the head (hyper will not poll it).
                log.complete = true;
                drop(log);
            } else {
                res.body_mut().log = Some(log);
            }
        }
        res.body_mut().in_flight = this.in_flight.take();
        Poll::Ready(Ok(res))
    }
}

/// One debug line per request, written when its response body has ended (or was dropped:
/// the client left, the stream was cut): method, path (never the query string, which may hold
/// the admin token), client, status, request id, the time to the response head and to the end
/// of the body, and whether the body was sent whole. Built only when the `fastgate::access`
/// debug event is enabled, so the hot path copies nothing for it otherwise.
struct AccessLog {
    started: Instant,
    method: http::Method,
    path: String,
    client: std::net::IpAddr,
    /// Set with the response head.
    status: Option<http::StatusCode>,
    request_id: Option<HeaderValue>,
    head: Option<Duration>,
    /// The body ended (not dropped before its end).
    complete: bool,
}

impl AccessLog {
    fn new(req: &Request<Incoming>, client: IpAddr) -> Self {
        Self {
            started: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            client,
            status: None,
            request_id: None,
            head: None,
            complete: false,
        }
    }

    fn head<B>(&mut self, res: &Response<B>) {
        self.status = Some(res.status());
        self.request_id = res.headers().get(&X_REQUEST_ID).cloned();
        self.head = Some(self.started.elapsed());
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
        tracing::debug!(
            target: "fastgate::access",
            method = %self.method,
            path = self.path,
            status = self.status.map(|s| s.as_u16()),
            client = %self.client,
            request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok()),
            head_ms = self.head.map(ms),
            elapsed_ms = ms(self.started.elapsed()),
            complete = self.complete,
            "request"
        );
    }
}

/// Connection settings of the front.
#[derive(Clone, Debug)]
pub struct FrontConfig {
    /// Time allowed to read a request's headers (see the module docs).
    pub header_read_timeout: Duration,
    /// Time in-flight requests get after the shutdown signal.
    pub grace: Duration,
    /// Ends the grace period early (a second SIGTERM or Ctrl-C): see [`Cut`].
    pub cut: Cut,
    /// Peers whose forwarding header names the client (`app.trusted_proxies`).
    pub trusted_proxies: Vec<IpNet>,
    /// That header (`app.forwarded_header`).
    pub forwarded_header: ForwardedHeader,
    /// CORS for browser requests (`app.cors_allow_origins`); `None`: off.
    pub cors: Option<CorsLayer>,
    /// CORS for the admin app too (`app.cors_admin_api`).
    pub cors_admin_api: bool,
    /// `api_gateway.max_body_bytes`: bounds how much of a refused upload is read.
    pub max_body_bytes: u64,
    /// Told when the grace period ends, so that the responses cut then are audited as
    /// interrupted, not as the clients' aborts.
    pub audit: AuditStats,
}

/// Accept connections on `listener` and serve them until `shutdown` resolves; then stop
/// accepting, let in-flight requests finish for up to `config.grace`, and abort what is left.
pub async fn serve(
    listener: TcpListener,
    proxy: ProxyService,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
    config: FrontConfig,
) -> std::io::Result<()> {
    let grace = config.grace;
    let cut = config.cut;
    let audit = config.audit;
    let local = LocalAddr(poem::Addr::SocketAddr(listener.local_addr()?));
    let shared = Arc::new(Shared {
        proxy,
        app,
        local,
        trusted: config.trusted_proxies.into(),
        forwarded_header: config.forwarded_header,
        cors: config.cors,
        cors_admin_api: config.cors_admin_api,
        lingering: linger::Shutdown::new(config.header_read_timeout, config.max_body_bytes),
    });
    let lingering = shared.lingering.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // hyper's default (~400 KiB) for the read buffer and the queue of unsent response
        // bytes: a client that stops reading a fast stream held ~1 MiB per stream with the
        // upstream's buffer. Request heads up to 64 KiB still fit (nginx allows 32 KiB).
        .max_buf_size(64 * 1024)
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    // As for HTTP/1 above: at most 64 KiB queued per stream for a client that does not read.
    // Streams per connection: nginx's default (`http2_max_concurrent_streams`) rather than
    // hyper's 200. Each stream holds an upstream connection, and a client that reads one stream
    // keeps the others open without window as long as it likes (the stall check in `Drive`
    // sees a connection that makes progress), as an HTTP/1 client reading slowly does; this
    // bounds what one connection can hold that way.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_send_buf_size(64 * 1024)
        .max_concurrent_streams(128);
    // Set, then notified, when the shutdown signal comes: every connection closes gracefully.
    let closing = Closing::default();
    let accept_failed_log = LogThrottle::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors (EMFILE) and the like: back off instead of
                        // spinning (the connection stays in the listen queue and is taken once
                        // a descriptor is free), and log once a second, not at each retry.
                        if let Some(skipped) = accept_failed_log.allow() {
                            tracing::warn!(error = %e, skipped, "accepting a connection failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!("TCP_NODELAY not set on an accepted connection: {e}");
                }
                let peer_trusted = is_trusted(&shared.trusted, remote.ip());
                let activity = Arc::new(Activity::default());
                let service = ConnService {
                    shared: Arc::clone(&shared),
                    remote,
                    peer_trusted,
                    activity: Arc::clone(&activity),
                };
                let builder = builder.clone();
                // Taken before the task starts: a shutdown from now on reaches it.
                let mut notified = Box::pin(Arc::clone(&closing.notify).notified_owned());
                let closing_flag = Arc::clone(&closing.flag);
                let idle = config.header_read_timeout;
                connections.spawn(async move {
                    // hyper's header timer starts once the protocol is known (after the first
                    // bytes): a connection that sends nothing at all is closed here instead.
                    let mut probe = [0u8; 1];
                    let first = tokio::select! {
                        first = tokio::time::timeout(idle, stream.peek(&mut probe)) => first,
                        () = notified.as_mut() => return,
                    };
                    if !matches!(first, Ok(Ok(1..))) {
                        tracing::debug!(client = %remote.ip(), "closing a connection that sent nothing");
                        return;
                    }
                    let stream = Watched {
                        inner: stream,
                        activity: Arc::clone(&activity),
                        replacing: None,
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let drive = Drive::new(conn, activity, idle, notified, closing_flag);
                    if let Err(e) = drive.await {
                        tracing::debug!(client = %remote.ip(), "connection ended with an error: {e}");
                    }
                });
            }
        }
    }
    drop(listener);
    drop(shared);
    lingering.begin();
    closing.flag.store(true, Ordering::Release);
    closing.notify.notify_waiters();
    let drained = async { while connections.join_next().await.is_some() {} };
    tokio::select! {
        () = drained => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(
                open = connections.len(),
                "connections still open after the shutdown grace period; closing them"
            );
            audit.cutting();
        }
        () = cut.0.notified() => {
            tracing::warn!(
                open = connections.len(),
                "shutdown grace period ended early; closing the connections still open"
            );
            audit.cutting();
        }
    }
    connections.shutdown().await;
    Ok(())
}

/// Ends a shutdown's grace period at once: what is still in flight is cut (and audited
/// `interrupted`) and the server stops. Cloned handles share it; a cut asked for before the
/// grace period begins takes effect when it does.
#[derive(Clone, Debug, Default)]
pub struct Cut(Arc<tokio::sync::Notify>);

impl Cut {
    /// End the grace period now.
    pub fn now(&self) {
        self.0.notify_one();
    }
}

/// The server's shutdown signal, as the connections see it.
#[derive(Default)]
struct Closing {
    /// Set when shutdown begins (before `notify`).
    flag: Arc<AtomicBool>,
    /// Wakes every connection once `flag` is set.
    notify: Arc<tokio::sync::Notify>,
}

/// After a graceful shutdown began, how long a connection with no request in flight may take to
/// close by itself (an HTTP/2 client answering the shutdown PING) before it is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

pin_project! {
    /// Serves a connection to its end. It is shut down gracefully (requests in flight finish, no
    /// new ones start) when the server shuts down, or when it was idle (no request in flight, none
    /// started or ended) at two checks `period` apart after one that saw activity, so for between
    /// 2 and 3 × `period` after its last request ended: an idle
    /// HTTP/2 connection gets a GOAWAY whatever PINGs its client sends. An idle connection that
    /// still has no request in flight `CLOSE_WAIT` (at most `period`) after that is dropped: an
    /// HTTP/2 client that never answers the shutdown PING cannot keep it open.
    ///
    /// Hand-written rather than a `select!` loop: the shutdown notification and the check timer
    /// are polled to register only when armed, then read through an atomic flag and
    /// `Sleep::is_elapsed` on each of the connection's wake-ups, so serving a request costs no
    /// timer or `Notify` poll. They are (re-)armed before the connection is polled, while the
    /// task's cooperative budget is whole (an exhausted budget makes `Sleep` return `Pending`
    /// without registering).
    struct Drive<C> {
        #[pin]
        conn: C,
        #[pin]
        check: tokio::time::Sleep,
        period: Duration,
        activity: Arc<Activity>,
        quiet_checks: u8,
        // Checks in a row that found the client not reading: its socket full (HTTP/1), or a
        // frame held for flow-control window (HTTP/2), with nothing written since the previous
        // check (and, for the latter, no frame passed).
        stalled_checks: u8,
        written_seen: u64,
        passed_seen: u64,
        closing: Pin<Box<tokio::sync::futures::OwnedNotified>>,
        closing_flag: Arc<AtomicBool>,
        armed: bool,
        shutting_down: bool,
        idle_shutdown: bool,
    }
}

impl<C: GracefulConnection> Drive<C> {
    /// `idle`: how long without a request before the connection is closed (checked every
    /// `idle / 2`).
    fn new(
        conn: C,
        activity: Arc<Activity>,
        idle: Duration,
        closing: Pin<Box<tokio::sync::futures::OwnedNotified>>,
        closing_flag: Arc<AtomicBool>,
    ) -> Self {
        let period = (idle / 2).max(Duration::from_millis(1));
        Self {
            conn,
            check: tokio::time::sleep(period),
            period,
            activity,
            quiet_checks: 0,
            stalled_checks: 0,
            written_seen: 0,
            passed_seen: 0,
            closing,
            closing_flag,
            armed: false,
            shutting_down: false,
            idle_shutdown: false,
        }
    }
}

/// Set `check` to fire `after` from now and register the task with it.
fn rearm(mut check: Pin<&mut tokio::time::Sleep>, after: Duration, cx: &mut Context<'_>) {
    check.as_mut().reset(tokio::time::Instant::now() + after);
    if check.poll(cx).is_ready() {
        // Already due (this thread was descheduled): nothing else would wake us for it.
        cx.waker().wake_by_ref();
    }
}

impl<C: GracefulConnection> Future for Drive<C> {
    type Output = Result<(), C::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if !*this.armed {
            // Register this task with the notification and the timer; from here on they wake
            // it, and the checks below read their state without polling them.
            *this.armed = true;
            let _ = this.closing.as_mut().poll(cx);
            let _ = this.check.as_mut().poll(cx);
        }
        let due = this.check.is_elapsed();
        let idle_now = || this.activity.in_flight.load(Ordering::Acquire) == 0;
        if *this.shutting_down {
            // Only after an idle shutdown: the server's own shutdown has its grace period, and a
            // response still being flushed to a slow reader must not be cut short by this.
            if due && *this.idle_shutdown {
                if idle_now() {
                    tracing::debug!("dropping a connection that did not close after its shutdown");
                    return Poll::Ready(Ok(()));
                }
                rearm(this.check.as_mut(), (*this.period).min(CLOSE_WAIT), cx);
            }
        } else {
            let mut shut_down = this.closing_flag.load(Ordering::Acquire);
            if !shut_down && due {
                let touched = this.activity.touched.swap(false, Ordering::Relaxed);
                if touched || !idle_now() {
                    *this.quiet_checks = 0;
                } else {
                    *this.quiet_checks += 1;
                }
                // A client that stopped reading: its socket has been full, with no write to it
                // succeeding, since the previous check (as nginx's `send_timeout`). Dropped, and with
                // it the upstream connection of its response (a generation nobody reads). An
                // HTTP/2 client that gives no flow-control window leaves the socket empty: there
                // hyper holding a frame of a response, with nothing written and no other frame
                // passed since the previous check, is the same stall.
                let written = this.activity.written.load(Ordering::Relaxed);
                let passed = this.activity.passed.load(Ordering::Relaxed);
                let stuck = this.activity.blocked.load(Ordering::Relaxed)
                    || (this.activity.parked.load(Ordering::Relaxed) != 0
                        && passed == *this.passed_seen);
                *this.passed_seen = passed;
                if stuck && !idle_now() && written == *this.written_seen {
                    *this.stalled_checks += 1;
                    if *this.stalled_checks >= 2 {
                        tracing::debug!("closing a connection whose client stopped reading");
                        return Poll::Ready(Ok(()));
                    }
                } else {
                    *this.stalled_checks = 0;
                }
                *this.written_seen = written;
                shut_down = *this.quiet_checks >= 2;
                if shut_down {
                    *this.idle_shutdown = true;
                    tracing::debug!("closing an idle connection");
                } else {
                    rearm(this.check.as_mut(), *this.period, cx);
                }
            }
            if shut_down {
                *this.shutting_down = true;
                this.conn.as_mut().graceful_shutdown();
                if *this.idle_shutdown {
                    rearm(this.check.as_mut(), (*this.period).min(CLOSE_WAIT), cx);
                }
            }
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{ForwardedHeader, forwarded_client, is_proxy_path, is_trusted};
    use http::HeaderMap;
    use ipnet::IpNet;
    use std::net::IpAddr;

    fn client(trusted: &[&str], peer: &str, xff: &[&str]) -> IpAddr {
        client_from(
            trusted,
            peer,
            &[("x-forwarded-for", xff)],
            ForwardedHeader::XForwardedFor,
        )
    }

    fn client_from(
        trusted: &[&str],
        peer: &str,
        headers: &[(&str, &[&str])],
        which: ForwardedHeader,
    ) -> IpAddr {
        let trusted: Vec<IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        let mut map = HeaderMap::new();
        for (name, values) in headers {
            for v in *values {
                map.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
        }
        forwarded_client(&trusted, peer.parse().unwrap(), &map, which)
    }

    #[test]
    fn forwarded_header_names_the_client_when_chosen() {
        let t = ["127.0.0.1/32", "10.0.0.0/8"];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let fwd = |values: &[&str]| {
            client_from(
                &t,
                "127.0.0.1",
                &[("forwarded", values)],
                ForwardedHeader::Forwarded,
            )
        };
        assert_eq!(fwd(&["for=203.0.113.7"]), ip("203.0.113.7"));
        // Parameters, case-insensitive names, spaces, the right-most untrusted element.
        assert_eq!(
            fwd(&["for=1.1.1.1, For=203.0.113.7;proto=https;by=10.0.0.9, for=10.0.0.1"]),
            ip("203.0.113.7")
        );
        // IPv6 is quoted, with or without a port; a quoted value may hold , ; and \".
        assert_eq!(
            fwd(&[r#"for="[2001:db8:cafe::17]:4711""#]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            fwd(&[r#"for="203.0.113.8";by="a,b;c\"d", for=10.0.0.2"#]),
            ip("203.0.113.8")
        );
        // Obfuscated ports are ignored; obfuscated and unknown nodes name no address.
        assert_eq!(fwd(&[r#"for="203.0.113.7:_p1""#]), ip("203.0.113.7"));
        assert_eq!(fwd(&["for=unknown, for=10.0.0.4"]), ip("10.0.0.4"));
        assert_eq!(fwd(&["for=_hidden"]), ip("127.0.0.1"));
        // Several header lines: later ones were appended later.
        assert_eq!(fwd(&["for=203.0.113.9", "for=10.0.0.3"]), ip("203.0.113.9"));
        // An element without `for` stops at the last trusted hop.
        assert_eq!(fwd(&["for=203.0.113.7, proto=http"]), ip("127.0.0.1"));
        // Malformed text from the client cannot swallow the element the proxy appended after it
        // (in the same value): the whole value names no address.
        assert_eq!(
            fwd(&[r#"for=6.6.6.6;x=", for=203.0.113.50"#]),
            ip("127.0.0.1")
        );
        assert_eq!(fwd(&[r#"for=x", for=203.0.113.50"#]), ip("127.0.0.1"));
        assert_eq!(
            fwd(&["for=6.6.6.6;junk, for=203.0.113.50"]),
            ip("127.0.0.1")
        );
        assert_eq!(
            fwd(&[r#"for="6.6.6.6"x, for=203.0.113.50"#]),
            ip("127.0.0.1")
        );
        // A proxy's own line after the client's malformed one is still read.
        assert_eq!(
            fwd(&[r#"for="6.6.6.6"#, "for=203.0.113.51"]),
            ip("203.0.113.51")
        );
        // Empty elements and pairs are allowed: the proxy's element is still read.
        for client_part in [
            "for=1.1.1.1,",
            ", for=1.1.1.1",
            "for=6.6.6.6;",
            "for=a;;proto=http",
            ";for=6.6.6.6",
        ] {
            let value = format!("{client_part}, for=203.0.113.5");
            assert_eq!(fwd(&[&value]), ip("203.0.113.5"), "{value}");
        }
        // Two `for` in one element name nobody.
        assert_eq!(
            fwd(&["for=6.6.6.6;for=203.0.113.5, for=10.0.0.1"]),
            ip("10.0.0.1")
        );
        // Only the chosen header is read: the other one is the client's own.
        let both: &[(&str, &[&str])] = &[
            ("forwarded", &["for=198.51.100.1"]),
            ("x-forwarded-for", &["6.6.6.6"]),
        ];
        assert_eq!(
            client_from(&t, "127.0.0.1", both, ForwardedHeader::Forwarded),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_from(&t, "127.0.0.1", both, ForwardedHeader::XForwardedFor),
            ip("6.6.6.6")
        );
        assert_eq!(
            client_from(
                &t,
                "127.0.0.1",
                &[("forwarded", &["for=198.51.100.1"])],
                ForwardedHeader::XForwardedFor
            ),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn obs_text_in_a_clients_entry_does_not_hide_the_proxys() {
        let t: Vec<IpNet> = ["127.0.0.1/32".parse().unwrap()].into();
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let header = |name: &'static str, value: &[u8]| {
            let mut map = HeaderMap::new();
            map.insert(name, http::HeaderValue::from_bytes(value).unwrap());
            map
        };
        let xff = header("x-forwarded-for", b"6.6.6.\xff, , 203.0.113.5");
        assert_eq!(
            forwarded_client(&t, peer, &xff, ForwardedHeader::XForwardedFor),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        let fwd = header("forwarded", b"for=\"6.6.6.\xff\";by=x, for=203.0.113.6");
        assert_eq!(
            forwarded_client(&t, peer, &fwd, ForwardedHeader::Forwarded),
            "203.0.113.6".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn forwarded_client_is_the_right_most_untrusted_address() {
        let t = ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client(&t, "127.0.0.1", &[]), ip("127.0.0.1"));
        assert_eq!(client(&t, "127.0.0.1", &["203.0.113.7"]), ip("203.0.113.7"));
        // A client's own (spoofed) entries are left of the one the proxy appended.
        assert_eq!(
            client(&t, "127.0.0.1", &["1.1.1.1, 203.0.113.7, 10.9.9.9"]),
            ip("203.0.113.7")
        );
        // Several headers: later ones were appended later.
        assert_eq!(
            client(&t, "127.0.0.1", &["1.1.1.1", "203.0.113.9, 10.0.0.1"]),
            ip("203.0.113.9")
        );
        // Every hop trusted: the first one.
        assert_eq!(
            client(&t, "127.0.0.1", &["10.0.0.2, 10.0.0.1"]),
            ip("10.0.0.2")
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            client(&t, "127.0.0.1", &["203.0.113.7, junk, 10.0.0.3"]),
            ip("10.0.0.3")
        );
        assert_eq!(client(&t, "127.0.0.1", &["unknown"]), ip("127.0.0.1"));
        // Ports and brackets; IPv4-mapped IPv6 is matched as IPv4.
        assert_eq!(
            client(&t, "127.0.0.1", &["203.0.113.7:4711"]),
            ip("203.0.113.7")
        );
        assert_eq!(
            client(&t, "127.0.0.1", &["[2001:db8::1]:80"]),
            ip("2001:db8::1")
        );
        assert_eq!(
            client(&t, "127.0.0.1", &["[2001:db8::2]"]),
            ip("2001:db8::2")
        );
        assert_eq!(
            client(&t, "127.0.0.1", &["203.0.113.7, ::ffff:10.0.0.4"]),
            ip("203.0.113.7")
        );
        let nets: Vec<IpNet> = t.iter().map(|s| s.parse().unwrap()).collect();
        assert!(is_trusted(&nets, ip("::ffff:127.0.0.1")));
        assert!(!is_trusted(&nets, ip("127.0.0.2")));
    }

    #[test]
    fn proxy_paths() {
        assert!(is_proxy_path("/proxy"));
        assert!(is_proxy_path("/proxy/"));
        assert!(is_proxy_path("/proxy/miniai/v2/chat/completions"));
        assert!(!is_proxy_path("/proxyx"));
        assert!(!is_proxy_path("/admin/proxy/x"));
        assert!(!is_proxy_path("/"));
    }
}
