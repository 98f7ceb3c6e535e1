//! The HTTP front of the server: one hyper accept loop for the whole port.
//!
//! `/proxy` and everything under it goes straight to the `fastgate-layer` stack: the request body
//! stays hyper's `Incoming`, the response body is the stack's own, nothing is boxed and no poem
//! routing, middleware or body conversion runs on the hot path. Every other path is handed to the
//! poem app (admin API, `/docs`, `/openapi.json`, `/health`, dashboard) through poem's own
//! conversion of a hyper request.
//!
//! Connections get `TCP_NODELAY` (an SSE event or a body written after its headers leaves at
//! once), HTTP/1.1 with keep-alive or HTTP/2 (h2c, detected from the preface), and a limit for
//! reading a request's headers (`app.header_read_timeout`, 60 s by default), which hyper counts
//! from the moment the connection waits for its next request: a client that sends nothing,
//! trickles headers, or leaves an HTTP/1.1 connection idle that long between requests is closed
//! (nginx closes idle keep-alive connections after 75 s). Every connection, HTTP/2 included, is
//! also shut down gracefully when no request has started on it for 1 to 1.5 times that long (an
//! HTTP/2 client gets a GOAWAY whatever PINGs it sends; an HTTP/1.1 connection serving one long
//! request closes after the response), so idle HTTP/2 connections do not pile up, while a
//! request in flight (a slow answer, a stream with long pauses) still runs to its end. On
//! shutdown the listener closes, every connection (including one that has not sent its first
//! byte yet) finishes its in-flight request (HTTP/1.1) or gets a GOAWAY (HTTP/2), and whatever
//! is still open after the grace period is aborted, which lets the audit layer record those
//! requests as interrupted.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastgate_layer::ClientAddr;
use fastgate_layer::audit::AuditBody;
use fastgate_layer::body::GatewayBody;
use http::{HeaderMap, HeaderName, Request, Response};
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

use crate::config::ForwardedHeader;

/// The proxy stack as the server assembles it: store-backed keys, hyper's request body.
pub type ProxyService = fastgate_layer::Gateway<fastgate_store::StoreKeyResolver, Incoming>;

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
}

/// The per-connection hyper service: dispatches by path.
#[derive(Clone)]
struct ConnService {
    shared: Arc<Shared>,
    remote: SocketAddr,
    /// The peer is a trusted proxy: its requests name their client in `X-Forwarded-For` (or
    /// `Forwarded`, per `app.forwarded_header`).
    peer_trusted: bool,
    /// Set by every request this connection starts; the idle check clears it.
    requests: Arc<AtomicBool>,
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
    match header {
        ForwardedHeader::XForwardedFor => {
            let hops = headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .rev()
                .flat_map(|value| {
                    header_text(value)
                        .rsplit(',')
                        .map(|e| forwarded_ip(e.trim()))
                });
            nearest_untrusted(trusted, peer, hops)
        }
        ForwardedHeader::Forwarded => {
            let hops = headers
                .get_all(FORWARDED)
                .iter()
                .rev()
                .flat_map(|value| forwarded_for(header_text(value)).into_iter().rev());
            nearest_untrusted(trusted, peer, hops)
        }
    }
}

/// A header value as text; one that is not visible ASCII reads as one entry naming no address.
fn header_text(value: &http::HeaderValue) -> &str {
    value.to_str().unwrap_or("-")
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
/// element without one or whose value is not an address (`unknown`, an obfuscated `_name`).
/// Elements are separated by `,`, parameters by `;`; names are case-insensitive; values are
/// tokens or quoted strings (as an IPv6 address must be: `for="[2001:db8::1]:4711"`); an
/// obfuscated port (`:_p1`) is ignored. A value that breaks this grammar anywhere (a stray or
/// unterminated quote, a parameter without `=`) reads as a single `None`: nothing in it is
/// trusted, so a client's malformed text cannot swallow the element a proxy appended after it.
fn forwarded_for(value: &str) -> Vec<Option<IpAddr>> {
    let malformed = || vec![None];
    let mut out = Vec::new();
    let mut current = None;
    let mut rest = value;
    loop {
        let Some((name, after)) = rest.split_once('=') else {
            return malformed();
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return malformed();
        }
        let after = after.trim_start();
        let (val, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let mut escaped = false;
            let Some(end) = quoted.char_indices().find_map(|(i, c)| {
                let close = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                close.then_some(i)
            }) else {
                return malformed();
            };
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find([',', ';']).unwrap_or(after.len());
            let token = after[..end].trim_end();
            if token.is_empty() || !token.bytes().all(|b| is_tchar(b) || b == b':') {
                return malformed();
            }
            (token, &after[end..])
        };
        if name.eq_ignore_ascii_case("for") {
            let host = match val.rsplit_once(':') {
                Some((host, port)) if port.starts_with('_') => host,
                _ => val,
            };
            current = forwarded_ip(host);
        }
        let tail = tail.trim_start();
        match tail.as_bytes().first() {
            None => {
                out.push(current);
                return out;
            }
            Some(b';') => rest = &tail[1..],
            Some(b',') => {
                out.push(current.take());
                rest = &tail[1..];
            }
            Some(_) => return malformed(),
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
    type Response = Response<FrontBody>;
    type Error = Infallible;
    type Future = FrontFuture;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        // A plain store (no read-modify-write): the idle check only needs "some request began".
        self.requests.store(true, Ordering::Relaxed);
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
            .then(|| AccessLog::new(&req, client));
        let kind = if is_proxy_path(req.uri().path()) {
            req.extensions_mut().insert(ClientAddr(client));
            Kind::Proxy {
                fut: Oneshot::new(self.shared.proxy.clone(), req),
            }
        } else {
            let req = poem::Request::from((
                req,
                self.shared.local.clone(),
                RemoteAddr(poem::Addr::SocketAddr(SocketAddr::new(
                    client,
                    self.remote.port(),
                ))),
                http::uri::Scheme::HTTP,
            ));
            let app = Arc::clone(&self.shared.app);
            Kind::App {
                fut: Box::pin(async move { poem::Endpoint::get_response(&*app, req).await }),
            }
        };
        FrontFuture { kind, log }
    }
}

pin_project! {
    /// Response future of the front: the proxy stack's own future, unboxed, or the poem app's.
    struct FrontFuture {
        #[pin]
        kind: Kind,
        log: Option<AccessLog>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Proxy { #[pin] fut: Oneshot<ProxyService, Request<Incoming>> },
        App { fut: Pin<Box<dyn Future<Output = poem::Response> + Send>> },
    }
}

impl Future for FrontFuture {
    type Output = Result<Response<FrontBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match this.kind.project() {
            KindProj::Proxy { fut } => match std::task::ready!(fut.poll(cx)) {
                Ok(res) => res.map(Either::Left),
                Err(never) => match never {},
            },
            KindProj::App { fut } => {
                let res: Response<AppBody> = std::task::ready!(fut.as_mut().poll(cx)).into();
                res.map(Either::Right)
            }
        };
        if let Some(log) = this.log.take() {
            log.finish(res.status());
        }
        Poll::Ready(Ok(res))
    }
}

/// One debug line per request: method, path (never the query string, which may hold the admin
/// token), status and duration. Built only when the `fastgate::access` debug event is enabled,
/// so the hot path copies nothing for it otherwise.
struct AccessLog {
    started: Instant,
    method: http::Method,
    path: String,
    client: std::net::IpAddr,
}

impl AccessLog {
    fn new(req: &Request<Incoming>, client: IpAddr) -> Self {
        Self {
            started: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            client,
        }
    }

    fn finish(self, status: http::StatusCode) {
        tracing::debug!(
            target: "fastgate::access",
            method = %self.method,
            path = self.path,
            status = status.as_u16(),
            client = %self.client,
            elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0,
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
    /// Peers whose forwarding header names the client (`app.trusted_proxies`).
    pub trusted_proxies: Vec<IpNet>,
    /// That header (`app.forwarded_header`).
    pub forwarded_header: ForwardedHeader,
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
    let local = LocalAddr(poem::Addr::SocketAddr(listener.local_addr()?));
    let shared = Arc::new(Shared {
        proxy,
        app,
        local,
        trusted: config.trusted_proxies.into(),
        forwarded_header: config.forwarded_header,
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    // Set, then notified, when the shutdown signal comes: every connection closes gracefully.
    let closing = Closing::default();
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
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!("TCP_NODELAY not set on an accepted connection: {e}");
                }
                let peer_trusted = is_trusted(&shared.trusted, remote.ip());
                let requests = Arc::new(AtomicBool::new(false));
                let service = ConnService {
                    shared: Arc::clone(&shared),
                    remote,
                    peer_trusted,
                    requests: Arc::clone(&requests),
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
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let drive = Drive::new(conn, requests, idle, notified, closing_flag);
                    if let Err(e) = drive.await {
                        tracing::debug!(client = %remote.ip(), "connection ended with an error: {e}");
                    }
                });
            }
        }
    }
    drop(listener);
    drop(shared);
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
        }
    }
    connections.shutdown().await;
    Ok(())
}

/// The server's shutdown signal, as the connections see it.
#[derive(Default)]
struct Closing {
    /// Set when shutdown begins (before `notify`).
    flag: Arc<AtomicBool>,
    /// Wakes every connection once `flag` is set.
    notify: Arc<tokio::sync::Notify>,
}

pin_project! {
    /// Serves a connection to its end. It is shut down gracefully (requests in flight finish, no
    /// new ones start) when the server shuts down, or when no request started on it during two
    /// checks `period` apart (so for between 2 and 3 × `period`): an idle HTTP/2 connection gets
    /// a GOAWAY even if its client keeps it busy with PINGs, and an HTTP/1.1 connection serving
    /// one long request closes after its response.
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
        requests: Arc<AtomicBool>,
        quiet_checks: u8,
        closing: Pin<Box<tokio::sync::futures::OwnedNotified>>,
        closing_flag: Arc<AtomicBool>,
        armed: bool,
        shutting_down: bool,
    }
}

impl<C: GracefulConnection> Drive<C> {
    /// `idle`: how long without a new request before the connection is closed (checked every
    /// `idle / 2`).
    fn new(
        conn: C,
        requests: Arc<AtomicBool>,
        idle: Duration,
        closing: Pin<Box<tokio::sync::futures::OwnedNotified>>,
        closing_flag: Arc<AtomicBool>,
    ) -> Self {
        let period = (idle / 2).max(Duration::from_millis(1));
        Self {
            conn,
            check: tokio::time::sleep(period),
            period,
            requests,
            quiet_checks: 0,
            closing,
            closing_flag,
            armed: false,
            shutting_down: false,
        }
    }
}

impl<C: GracefulConnection> Future for Drive<C> {
    type Output = Result<(), C::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if !*this.shutting_down {
            if !*this.armed {
                // Register this task with the notification and the timer; from here on they
                // wake it, and the checks below read their state without polling them.
                *this.armed = true;
                let _ = this.closing.as_mut().poll(cx);
                let _ = this.check.as_mut().poll(cx);
            }
            let mut shut_down = this.closing_flag.load(Ordering::Acquire);
            if !shut_down && this.check.is_elapsed() {
                if this.requests.swap(false, Ordering::Relaxed) {
                    *this.quiet_checks = 0;
                } else {
                    *this.quiet_checks += 1;
                }
                shut_down = *this.quiet_checks >= 2;
                if shut_down {
                    tracing::debug!("closing a connection on which no request started");
                } else {
                    let next = tokio::time::Instant::now() + *this.period;
                    this.check.as_mut().reset(next);
                    if this.check.as_mut().poll(cx).is_ready() {
                        // Already due (this thread was descheduled): nothing else would wake us.
                        cx.waker().wake_by_ref();
                    }
                }
            }
            if shut_down {
                *this.shutting_down = true;
                this.conn.as_mut().graceful_shutdown();
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
