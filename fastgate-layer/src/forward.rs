//! [`ForwardService`]: the leaf service that streams a request to its backend and the answer back.
//!
//! Reads the [`RouteConfig`] from the request extensions (inserted by
//! [`RouteLayer`](crate::route::RouteLayer) or by the embedding application), rewrites the URI to
//! `backend.base_url` + `backend.path` (keeping the query string) and sends the request upstream
//! with TCP_NODELAY. Bodies are streamed both ways, never collected.
//!
//! Plain `http://` backends get HTTP/1.1 connections pooled per upstream (authority and connect
//! timeout: backends on one upstream share them) that are driven by the request using them (no
//! task per connection, no hop between tasks; see the `upstream` module).
//! `https://` backends go through hyper-util's pooled client with rustls (HTTP/1.1, or HTTP/2
//! when the upstream offers it through ALPN). Their certificates are checked against Mozilla's
//! roots (`webpki-roots`), or against the roots of the `rustls::ClientConfig` given with
//! [`ForwardConfig::tls_client_config`] (a private CA, a client certificate for mutual TLS),
//! which an [`UpstreamTls`] handle can replace while the service runs (certificate rotation).
//! With [`ForwardConfig::egress_proxy`], `https://` connections whose host the proxy rules match
//! go through an HTTP proxy's `CONNECT` tunnel (TLS end to end with the backend); loopback hosts
//! never do.
//!
//! Timeouts: the backend's `connect_timeout` for opening a connection (TCP and TLS; a timeout
//! counts as unreachable), its `response_timeout` from sending the request up to the response
//! headers (connecting included), and its `idle_timeout` between two response body frames. There
//! is never a total timeout on a stream. An upload still going on after the answer (the backend
//! answered before it had the whole body) is bounded like one before it: a plain `http://`
//! backend's connection is closed when the upload makes no progress for `response_timeout`, or
//! is still going on ten of them after the answer. Behind an [`AuditLayer`](crate::audit::AuditLayer)
//! (enabled or [disabled](crate::audit::AuditLayer::disabled): every
//! [`Gateway`](crate::Gateway) has one), which follows the client's upload, the
//! `response_timeout` counts from the end of the upload
//! (a large body over a slow link is not the backend's delay), and an upload left waiting on
//! the client for that long (or taking more than ten times as long in all) is answered 408.
//!
//! | failure | response | [`Rejected`](crate::Rejected) code / outcome |
//! |---|---|---|
//! | no `RouteConfig` in the extensions | 500 | `no_route` / `rejected` |
//! | the backend's URL with the request's path and query is over 65,534 bytes | 414 | `uri_too_long` / `rejected` |
//! | connection refused / DNS / TLS | 502 | `upstream_unreachable` / `upstream_error` |
//! | no file descriptor for the connection (`EMFILE`, `ENFILE`: the gateway's own limit) | 503 | `gateway_overloaded` / `rejected` |
//! | the request body passes a [`RequestSizeLimit`](crate::limit::RequestSizeLimit) while sent (no `Content-Length`; behind an `AuditLayer`) | 413 | `request_too_large` / `rejected` |
//! | the request body fails while sent (client gone mid-upload, broken chunked body; behind an `AuditLayer`) | 400 | `request_body_error` / `client_aborted` |
//! | other failure before the headers | 502 | `upstream_error` / `upstream_error` |
//! | headers later than `response_timeout` | 504 | `upstream_timeout` / `upstream_timeout` |
//! | the upload waits on the client for `response_timeout`, or takes over 10 of them (behind an `AuditLayer`) | 408 | `request_body_timeout` / `client_aborted` |
//!
//! Upstream statuses and bodies (4xx and 5xx included) pass unchanged. On `text/event-stream`
//! responses the service sets `Cache-Control: no-cache` and `X-Accel-Buffering: no` so that a
//! buffering reverse proxy in front of FastGate does not hold events back. The response carries
//! [`TargetUrl`] in its extensions.
//!
//! # Example
//!
//! ```
//! use fastgate_layer::forward::ForwardService;
//! use http_body_util::Full;
//! use bytes::Bytes;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let forward: ForwardService<Full<Bytes>> = ForwardService::new();
//! # let _ = forward;
//! # }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Intercept;
pub use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioExecutor;
use pin_project_lite::pin_project;
use tower::Service;

use crate::audit::{AuditSlot, Outcome};
use crate::backend_cache::BackendCache;
use crate::body::{GatewayBody, deadline_after};
use crate::error::{BoxError, ErrorChain, rejection};
use crate::extensions::{Backend, PathSuffix, RouteConfig, TargetUrl};
use crate::log_throttle::LogThrottle;
use crate::scrub::remove_hop_by_hop;
use crate::upstream::{HostPool, PoolSettings, PooledConn, SendError, Sent};

/// Settings of the pooled client behind [`ForwardService`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ForwardConfig {
    /// Not used: every route's `Backend::connect_timeout` applies to its own requests.
    #[deprecated(note = "each route's `Backend::connect_timeout` applies; this value is unused")]
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept (default 4 s: below the 5 s after which
    /// uvicorn, and so vLLM, and Node close idle keep-alive connections themselves; a request
    /// sent on a connection the backend is closing fails, and the service never resends one).
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per upstream: authority and connect timeout (`http://`), or
    /// host (`https://`) (default 64).
    pub pool_max_idle_per_host: usize,
    /// TLS client settings for `https://` backends; `None` (the default): Mozilla's roots
    /// (`webpki-roots`) and no client certificate. Set with
    /// [`tls_client_config`](Self::tls_client_config) or [`upstream_tls`](Self::upstream_tls).
    pub tls: Option<UpstreamTls>,
    /// Proxy rules for `https://` backends (e.g. the environment's `HTTPS_PROXY` and
    /// `NO_PROXY`); `None` (the default): every connection is direct. Set with
    /// [`egress_proxy`](Self::egress_proxy).
    pub egress_proxy: Option<Arc<Matcher>>,
}

impl Default for ForwardConfig {
    #[allow(deprecated)]
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(4),
            pool_max_idle_per_host: 64,
            tls: None,
            egress_proxy: None,
        }
    }
}

impl ForwardConfig {
    /// Use `config` for every `https://` backend: its root certificates decide which upstream
    /// certificates are trusted (for a private CA, add it to the roots), and its client
    /// certificate, if any, is presented (mutual TLS). Its `alpn_protocols` are replaced: the
    /// service offers `h2` and `http/1.1` itself.
    #[must_use]
    pub fn tls_client_config(self, config: rustls::ClientConfig) -> Self {
        self.upstream_tls(UpstreamTls::new(config))
    }

    /// Open `https://` connections through the HTTP proxy `rules` names for their host (a
    /// `CONNECT` tunnel, with `Proxy-Authorization: Basic` when the proxy URL has credentials);
    /// hosts the rules exclude, and loopback hosts, connect directly. Only `http://` proxy URLs
    /// are supported: a connection whose proxy has another scheme fails (502). Plain `http://`
    /// backends are not proxied.
    #[must_use]
    pub fn egress_proxy(mut self, rules: impl Into<Arc<Matcher>>) -> Self {
        self.egress_proxy = Some(rules.into());
        self
    }

    /// Use the settings of `tls` for every `https://` backend, and whatever later replaces them
    /// through a clone of the handle.
    #[must_use]
    pub fn upstream_tls(mut self, tls: UpstreamTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Not used: every route's `Backend::connect_timeout` applies to its own requests.
    #[deprecated(note = "each route's `Backend::connect_timeout` applies; this value is unused")]
    #[allow(deprecated)]
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

type HttpsClient<B> = Client<TimedConnector<HttpsConnect>, B>;

/// The start of a `rustls::ClientConfig` as FastGate builds its own: the `ring` crypto provider
/// and rustls' safe default protocol versions (TLS 1.2 and 1.3). Add roots and client
/// authentication, then hand the result to [`UpstreamTls::new`] or
/// [`ForwardConfig::tls_client_config`]. Unlike `rustls::ClientConfig::builder()`, it does not
/// depend on a process-wide default provider, which is ambiguous when a dependency enables a
/// second one. The error is rustls' own, should the provider not support those versions (ring
/// supports both).
pub fn tls_config_builder()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
}

/// The TLS client settings of `https://` backends, replaceable while the service runs.
///
/// Clones share the settings: give one to [`ForwardConfig::upstream_tls`] and keep another to
/// call [`replace`](Self::replace), e.g. on a configuration reload that rotates a client
/// certificate or a CA. After a replacement, requests use new connections opened with the new
/// settings; connections opened before are not used again (requests in flight on them finish).
#[derive(Clone)]
pub struct UpstreamTls {
    inner: Arc<TlsInner>,
}

struct TlsInner {
    current: std::sync::RwLock<Arc<rustls::ClientConfig>>,
    /// Bumped by every [`UpstreamTls::replace`]: clients (and their pools) built before are
    /// dropped, so that no connection opened with the old settings is used again.
    generation: std::sync::atomic::AtomicU64,
}

impl UpstreamTls {
    /// These settings; their `alpn_protocols` are replaced by `h2` and `http/1.1`.
    pub fn new(config: rustls::ClientConfig) -> Self {
        Self {
            inner: Arc::new(TlsInner {
                current: std::sync::RwLock::new(with_alpn(config)),
                generation: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Mozilla's roots (`webpki-roots`), no client certificate: the settings used when none are
    /// given.
    pub fn mozilla_roots() -> Self {
        use hyper_rustls::ConfigBuilderExt as _;
        let builder = match tls_config_builder() {
            Ok(builder) => builder,
            // Not expected (see `tls_config_builder`): the process-wide default provider.
            Err(_) => rustls::ClientConfig::builder(),
        };
        Self::new(builder.with_webpki_roots().with_no_client_auth())
    }

    /// From now on, use `config` (its ALPN list replaced as in [`new`](Self::new)). Pooled
    /// connections opened with the old settings are not used for new requests (requests in
    /// flight on them finish).
    pub fn replace(&self, config: rustls::ClientConfig) {
        let mut current = self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *current = with_alpn(config);
        self.inner
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn current(&self) -> Arc<rustls::ClientConfig> {
        let current = self
            .inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&current)
    }

    fn generation(&self) -> u64 {
        self.inner
            .generation
            .load(std::sync::atomic::Ordering::Acquire)
    }
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls").finish_non_exhaustive()
    }
}

fn with_alpn(mut config: rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// hyper-rustls's connector with the TLS settings its client was built for (a replacement
/// builds a new client, see `Shared::client`), through the egress proxy when one applies.
#[derive(Clone)]
struct HttpsConnect {
    http: HttpConnector,
    tls: Arc<rustls::ClientConfig>,
    proxy: Option<Arc<Matcher>>,
}

/// The proxy a connection to `uri` goes through, if any: `https://` only, never to loopback.
pub(crate) fn egress_intercept(rules: &Matcher, uri: &Uri) -> Option<Intercept> {
    if uri.scheme_str() != Some("https") {
        return None;
    }
    if is_loopback_host(uri.host()?) {
        return None;
    }
    rules.intercept(uri)
}

/// `localhost`, or a loopback address (`127.0.0.0/8`, `::1`, with or without brackets): hosts
/// never reached through an egress proxy.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host of the proxy a connection to `uri` goes through under `rules` (see
/// [`ForwardConfig::egress_proxy`]), or `None` for a direct connection. For diagnostics: it
/// never returns the proxy's credentials.
pub fn egress_proxy_host(rules: &Matcher, uri: &Uri) -> Option<String> {
    egress_intercept(rules, uri).and_then(|i| i.uri().host().map(str::to_owned))
}

/// The egress proxy's scheme is not `http://`.
#[derive(Debug, thiserror::Error)]
#[error("egress proxy scheme {0:?} is not supported (only http:// proxies)")]
pub struct UnsupportedProxy(String);

impl Service<Uri> for HttpsConnect {
    type Response = <HttpsConnector<HttpConnector> as Service<Uri>>::Response;
    type Error = BoxError;
    type Future = <HttpsConnector<HttpConnector> as Service<Uri>>::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // HttpConnector is always ready; each call uses its own connector.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = Arc::clone(&self.tls);
        if let Some(intercept) = self
            .proxy
            .as_deref()
            .and_then(|rules| egress_intercept(rules, &uri))
        {
            let scheme = intercept.uri().scheme_str().unwrap_or("");
            if scheme != "http" {
                let err = UnsupportedProxy(scheme.to_owned());
                return Box::pin(async move { Err(Box::new(err) as BoxError) });
            }
            let mut tunnel = Tunnel::new(intercept.uri().clone(), self.http.clone());
            if let Some(auth) = intercept.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            return HttpsConnector::from((tunnel, tls)).call(uri);
        }
        // Plain `http://` URIs also work here (hyper-util is used for them only when an
        // embedder routes them this way).
        HttpsConnector::from((self.http.clone(), tls)).call(uri)
    }
}

/// What a backend's requests need, built once per backend.
struct Prepared<B> {
    /// Absolute upstream URI without query (the hyper-util path).
    uri: Uri,
    /// The same, origin-form (path only), for the pooled HTTP/1 path.
    origin: Uri,
    /// The text of the URI `via` sends (`origin` or `uri`), which a prefix route's suffix is
    /// appended to.
    base: Box<str>,
    target: TargetUrl,
    /// How the requests go: a pool of plain `http://` connections of this backend, or
    /// hyper-util (TLS, HTTP/2).
    via: Via<B>,
}

enum Via<B> {
    Pool(Arc<HostPool<B>>),
    /// hyper-util's client for the backend's connect timeout, looked up per request (it is
    /// rebuilt when the TLS settings change).
    Client,
}

/// Leaf service that forwards a request to the backend of its [`RouteConfig`].
///
/// Generic over the request body `B`; cloning is cheap (the connection pool is shared) and needs
/// no `B: Clone`. See the [module docs](self) for details.
pub struct ForwardService<B> {
    /// One pointer: the auth layer clones the services below it for every request, and the
    /// futures that hold those clones are moved around while they run.
    shared: Arc<Shared<B>>,
}

struct Shared<B> {
    /// hyper-util clients, one per connect timeout in use: a client's connector has one timeout,
    /// so two `https://` routes to one host with different timeouts get different clients (and
    /// pools).
    /// Each with the [`UpstreamTls`] generation it was built for.
    clients: Mutex<HashMap<Duration, (u64, HttpsClient<B>)>>,
    /// The TLS client settings of [`ForwardConfig::tls`], or Mozilla's roots.
    tls: UpstreamTls,
    /// [`ForwardConfig::egress_proxy`].
    egress_proxy: Option<Arc<Matcher>>,
    pool_settings: PoolSettings,
    /// The upstream URI (without query), audit target and connection pool of each backend.
    targets: BackendCache<Option<Arc<Prepared<B>>>>,
    /// The connection pools of plain `http://` upstreams by authority and connect timeout:
    /// backends on one upstream (many routes of a routes file, a reloaded configuration)
    /// share its connections. Weak: a pool lives while a memoised backend (or a connection of
    /// its own) uses it. Read only when a backend is first seen.
    pools: Mutex<Vec<SharedPool<B>>>,
}

/// A pool in [`Shared::pools`]: the upstream's authority, the connect and response timeouts, the pool.
type SharedPool<B> = (Box<str>, (Duration, Duration), Weak<HostPool<B>>);

impl<B> Clone for ForwardService<B> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<B> fmt::Debug for ForwardService<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardService").finish_non_exhaustive()
    }
}

impl<B> Default for ForwardService<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<B> ForwardService<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A forward service with [`ForwardConfig::default`].
    pub fn new() -> Self {
        Self::with_config(&ForwardConfig::default())
    }

    /// A forward service with its own connection pool configured by `config`.
    pub fn with_config(config: &ForwardConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                clients: Mutex::default(),
                tls: config
                    .tls
                    .clone()
                    .unwrap_or_else(UpstreamTls::mozilla_roots),
                egress_proxy: config.egress_proxy.clone(),
                pool_settings: PoolSettings {
                    idle_timeout: config.pool_idle_timeout,
                    max_idle: config.pool_max_idle_per_host,
                },
                targets: BackendCache::default(),
                pools: Mutex::default(),
            }),
        }
    }
}

impl<B> Shared<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// The hyper-util client whose connector allows `connect_timeout` (built on first use).
    fn client(&self, connect_timeout: Duration) -> HttpsClient<B> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        // Read under the lock: a request that read an older generation cannot put back a client
        // built for it after a newer one was stored.
        let generation = self.tls.generation();
        if let Some((built_for, client)) = clients.get(&connect_timeout)
            && *built_for == generation
        {
            return client.clone();
        }
        // New settings (or first use): a new client and pool; the old one goes with its last
        // request.
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        // Read after the generation: a replacement in between only causes one more rebuild.
        let https = HttpsConnect {
            http,
            tls: self.tls.current(),
            proxy: self.egress_proxy.clone(),
        };
        let connector = TimedConnector {
            inner: https,
            timeout: connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.pool_settings.idle_timeout)
            .pool_max_idle_per_host(self.pool_settings.max_idle)
            .http1_max_buf_size(crate::upstream::UPSTREAM_MAX_BUF)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        clients.insert(connect_timeout, (generation, client.clone()));
        client
    }
}

impl<B> Shared<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// The pool of `uri`'s upstream for `connect_timeout` (a plain `http://` URI), shared with
    /// the other backends on that upstream; `None` for other URIs.
    fn pool(
        &self,
        uri: &Uri,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Option<Arc<HostPool<B>>> {
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return None;
        }
        let authority = uri.authority()?.as_str();
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = pools
            .iter()
            .find(|(a, t, _)| &**a == authority && *t == (connect_timeout, response_timeout))
            .and_then(|(_, _, pool)| pool.upgrade())
        {
            return Some(pool);
        }
        let pool = HostPool::for_uri(uri, connect_timeout, response_timeout, self.pool_settings)?;
        pools.retain(|(_, _, pool)| pool.strong_count() > 0);
        pools.push((
            authority.into(),
            (connect_timeout, response_timeout),
            Arc::downgrade(&pool),
        ));
        Some(pool)
    }
}

impl<B> Service<Request<B>> for ForwardService<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(route) = req.extensions().get::<RouteConfig>() else {
            tracing::error!("request reached ForwardService without a RouteConfig");
            return ResponseFuture::ready(rejection(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no_route",
                "no route configured for this request",
                Outcome::Rejected,
            ));
        };
        let backend = Arc::clone(&route.backend);
        let shared = &*self.shared;
        let prepared = shared.targets.get_or_insert_with(&backend, || {
            let (uri, target) = upstream_uri(&backend, None)?;
            let origin = uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .parse::<Uri>()
                .ok()?;
            let via = match shared.pool(&uri, backend.connect_timeout, backend.response_timeout) {
                Some(pool) => Via::Pool(pool),
                None => Via::Client,
            };
            let base = match via {
                Via::Pool(_) => origin.to_string(),
                Via::Client => uri.to_string(),
            };
            Some(Arc::new(Prepared {
                uri,
                origin,
                base: base.into(),
                target,
                via,
            }))
        });
        let Some(prepared) = prepared else {
            tracing::error!(route = %route.name, "backend URL of route is not usable");
            return ResponseFuture::ready(rejection(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bad_backend",
                "the backend of this route is misconfigured",
                Outcome::Rejected,
            ));
        };
        // A prefix route's request: the rest of its path goes after the backend's path.
        let suffix = req.extensions().get::<PathSuffix>();
        let uri = match (suffix, req.uri().query()) {
            (None, None) => Some(match prepared.via {
                Via::Pool(_) => prepared.origin.clone(),
                Via::Client => prepared.uri.clone(),
            }),
            // The query string is kept; only then is a URI built per request.
            (None, Some(q)) => format!("{}?{q}", prepared.base).parse::<Uri>().ok(),
            (Some(suffix), q) => {
                let mut uri = join_suffix(&prepared.base, suffix);
                if let Some(q) = q {
                    uri.push('?');
                    uri.push_str(q);
                }
                uri.parse::<Uri>().ok()
            }
        };
        // The backend's URI was usable, and the path and query were as received: only the
        // length limit of a URI (65,534 bytes) fails them. The client's doing, not the
        // backend's: no 500, and no log line a client could fill the log with.
        let Some(uri) = uri else {
            tracing::debug!(route = %route.name, "upstream URI too long");
            return ResponseFuture::ready(rejection(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                "the request URI is too long for this route's backend",
                Outcome::Rejected,
            ));
        };
        let target = match suffix {
            None => prepared.target.clone(),
            Some(suffix) => TargetUrl(join_suffix(&prepared.target.0, suffix).into()),
        };
        let (mut parts, body) = req.into_parts();
        // The client's upload, followed through the audit layer's counters (when there is one
        // and a body to come): the response timeout counts from its end.
        let mut upload = None;
        if let Some(slot) = parts.extensions.get::<AuditSlot>() {
            slot.target(&target);
            if !body.is_end_stream() {
                upload = Some(slot.clone());
            }
        }
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        // hyper's HTTP/1.1 client sends a GET or HEAD body of unknown length (an HTTP/2
        // client's, which needs no Content-Length) as no body at all, unless the request says
        // `Transfer-Encoding: chunked`: the backend would answer without the bytes the client
        // sent. A GET without a body (the common one) costs the method check.
        if matches!(parts.method, Method::GET | Method::HEAD)
            && !body.is_end_stream()
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            parts.headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        let req = Request::from_parts(parts, body);
        let fut = match &prepared.via {
            Via::Pool(pool) => Sending::Pooled(Box::pin(Arc::clone(pool).send(req))),
            Via::Client => Sending::Client(shared.client(backend.connect_timeout).request(req)),
        };
        // Bounds connecting and waiting for the headers together; never the response body.
        let wait = backend.response_timeout;
        ResponseFuture {
            state: State::Waiting {
                fut,
                sleep: tokio::time::sleep(wait),
                wait,
                since: None,
                upload,
                uploaded: 0,
                target: Some(target),
                idle: backend.idle_timeout,
            },
        }
    }
}

/// Opening a connection took longer than the backend's connect timeout.
#[derive(Debug, thiserror::Error)]
#[error("connecting to the upstream timed out after {0:?}")]
pub struct ConnectTimeout(Duration);

/// Connector wrapper that bounds connecting (TCP and TLS) by a connect timeout.
#[derive(Clone, Debug)]
struct TimedConnector<C> {
    inner: C,
    timeout: Duration,
}

impl<C> Service<Uri> for TimedConnector<C>
where
    C: Service<Uri> + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = self.timeout;
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimeout(timeout)) as BoxError),
            }
        })
    }
}

/// `base` (a backend's URI or target URL, without query) followed by a prefix route's `suffix`;
/// a `/` that ends `base` is not doubled (a backend path of `/` or `/v1/`).
fn join_suffix(base: &str, suffix: &PathSuffix) -> String {
    let suffix = suffix.as_str();
    let base = if suffix.is_empty() {
        base
    } else {
        base.strip_suffix('/').unwrap_or(base)
    };
    let mut joined = String::with_capacity(base.len() + suffix.len() + 16);
    joined.push_str(base);
    joined.push_str(suffix);
    joined
}

/// Build the upstream URI (and the audit-safe target URL, without query) for a request whose
/// query string is `query`.
fn upstream_uri(backend: &Backend, query: Option<&str>) -> Option<(Uri, TargetUrl)> {
    let scheme = backend.base_url.scheme_str()?;
    // Never carry `user:password@` into the upstream URI, the audit record or a log line.
    let authority = backend.base_url.authority()?.as_str();
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let base_path = backend.base_url.path().trim_end_matches('/');
    let path = backend.path.as_str();
    let sep = if path.starts_with('/') || path.is_empty() {
        ""
    } else {
        "/"
    };
    let target = format!("{scheme}://{authority}{base_path}{sep}{path}");
    let full = match query {
        Some(q) => format!("{target}?{q}"),
        None => target.clone(),
    };
    let uri = full.parse::<Uri>().ok()?;
    Some((uri, TargetUrl(target.into())))
}

pin_project! {
    /// Response future for [`ForwardService`].
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Ready { res: Option<Response<GatewayBody>> },
        Waiting {
            #[pin]
            fut: Sending,
            #[pin]
            sleep: tokio::time::Sleep,
            wait: Duration,
            // When the wait began: noted at the first expiry (no clock read per request).
            since: Option<tokio::time::Instant>,
            // The audit layer's view of the upload; `uploaded`: its byte count at the last check.
            upload: Option<AuditSlot>,
            uploaded: u64,
            target: Option<TargetUrl>,
            idle: Duration,
        },
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("forward::ResponseFuture")
            .finish_non_exhaustive()
    }
}

impl ResponseFuture {
    fn ready(res: Response<GatewayBody>) -> Self {
        Self {
            state: State::Ready { res: Some(res) },
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<GatewayBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Ready { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
            StateProj::Waiting {
                mut fut,
                mut sleep,
                wait,
                since,
                upload,
                uploaded,
                target,
                idle,
            } => {
                let result = loop {
                    if let Poll::Ready(result) = fut.as_mut().poll(cx) {
                        break Ok(result);
                    }
                    std::task::ready!(sleep.as_mut().poll(cx));
                    // The wait is for the upstream: it starts when the client's upload has
                    // ended (a large prompt over a slow link is not the backend's delay). An
                    // upload that makes no progress for as long is the client's stall.
                    let Some(slot) = upload.as_ref() else {
                        break Err(Late::Upstream);
                    };
                    let now = tokio::time::Instant::now();
                    // Checked arithmetic here and below: an embedder may give `Duration::MAX`
                    // to mean "no limit" (the sleep then ends decades away, see
                    // `deadline_after`), and `Instant ± Duration` panics on overflow.
                    let since =
                        *since.get_or_insert_with(|| wait_began(sleep.deadline(), *wait, now));
                    let state = slot.upload();
                    match state.ended {
                        Some(ended) => {
                            let deadline = deadline_after(ended, *wait);
                            if deadline <= now {
                                break Err(Late::Upstream);
                            }
                            sleep.as_mut().reset(deadline);
                        }
                        // Still uploading: the wait restarts while bytes move, up to
                        // UPLOAD_WAITS waits in all (a client trickling a byte at a time must
                        // not hold an upstream connection for ever).
                        None if state.bytes != *uploaded && upload_may_go_on(since, *wait, now) => {
                            *uploaded = state.bytes;
                            sleep.as_mut().reset(deadline_after(now, *wait));
                        }
                        // Nothing moved: the client's stall if the body was waiting for it,
                        // else the upstream's (connecting, or not reading what it was sent).
                        None if state.waiting_on_client || state.bytes != *uploaded => {
                            break Err(Late::Upload);
                        }
                        None => break Err(Late::Upstream),
                    }
                };
                let target = target.take().expect("polled after completion");
                let mut res = match result {
                    // FastGate never forwards `Upgrade`: a 101 is the backend's mistake, and
                    // relayed it would leave the client a switched connection with nothing on it.
                    Ok(Ok((res, _))) if res.status() == StatusCode::SWITCHING_PROTOCOLS => {
                        if let Some(skipped) = FAILED_LOG.allow() {
                            tracing::warn!(upstream = %target.0, skipped, "upstream answered 101 Switching Protocols to a request that asked for no upgrade");
                        }
                        no_retry(rejection(
                            StatusCode::BAD_GATEWAY,
                            "upstream_error",
                            "the upstream switched protocols unasked",
                            Outcome::UpstreamError,
                        ))
                    }
                    Ok(Ok((res, conn))) => upstream_response(res, *idle, conn),
                    // The gateway's own resource exhaustion, not the backend's failure: nothing
                    // reached the backend, so a retry is fine (no `x-should-retry: false`).
                    Ok(Err(err)) if out_of_descriptors(&err) => {
                        if let Some(skipped) = NO_DESCRIPTOR_LOG.allow() {
                            tracing::warn!(upstream = %target.0, error = %ErrorChain(&err), skipped, "no file descriptor left to connect to the upstream (the open files limit, RLIMIT_NOFILE, is reached): answered 503 gateway_overloaded");
                        }
                        rejection(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "gateway_overloaded",
                            "the gateway is out of connections (open files); try again later",
                            Outcome::Rejected,
                        )
                    }
                    Ok(Err(err)) if err.is_connect() => {
                        if let Some(skipped) = UNREACHABLE_LOG.allow() {
                            tracing::warn!(upstream = %target.0, error = %ErrorChain(&err), skipped, "upstream unreachable");
                        }
                        rejection(
                            StatusCode::BAD_GATEWAY,
                            "upstream_unreachable",
                            "the upstream could not be reached",
                            Outcome::UpstreamError,
                        )
                    }
                    // The size limit cut the upload (a body without Content-Length): the
                    // client's 413 (the limit layer answers it), not a backend failure to warn
                    // about, and not one to take a line of FAILED_LOG's allowance.
                    Ok(Err(err)) if upload.as_ref().is_some_and(AuditSlot::too_large) => {
                        tracing::debug!(upstream = %target.0, error = %ErrorChain(&err), "the request body passed the size limit while it was forwarded");
                        rejection(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "request_too_large",
                            "the request body is too large",
                            Outcome::Rejected,
                        )
                    }
                    Ok(Err(err)) if upload.as_ref().is_some_and(|s| s.upload().failed) => {
                        tracing::debug!(upstream = %target.0, error = %ErrorChain(&err), "the client's request body failed while it was forwarded");
                        rejection(
                            StatusCode::BAD_REQUEST,
                            "request_body_error",
                            "the request body could not be read to its end",
                            Outcome::ClientAborted,
                        )
                    }
                    Ok(Err(err)) => {
                        if let Some(skipped) = FAILED_LOG.allow() {
                            tracing::warn!(upstream = %target.0, error = %ErrorChain(&err), skipped, "upstream request failed");
                        }
                        no_retry(rejection(
                            StatusCode::BAD_GATEWAY,
                            "upstream_error",
                            "the upstream failed before answering",
                            Outcome::UpstreamError,
                        ))
                    }
                    Err(Late::Upstream) => {
                        if let Some(skipped) = TIMEOUT_LOG.allow() {
                            tracing::warn!(upstream = %target.0, skipped, "upstream response timed out");
                        }
                        let res = rejection(
                            StatusCode::GATEWAY_TIMEOUT,
                            "upstream_timeout",
                            "the upstream did not answer in time",
                            Outcome::UpstreamTimeout,
                        );
                        // Nothing of the body went out (still connecting, a `timeout` shorter
                        // than `connect_timeout`): the backend has not got the request, and a
                        // retry costs nothing. Without an audit slot, not known: not retried.
                        let reached = upload.as_ref().is_none_or(|s| {
                            let state = s.upload();
                            state.bytes > 0 || state.ended.is_some()
                        });
                        if reached { no_retry(res) } else { res }
                    }
                    Err(Late::Upload) => {
                        tracing::debug!(upstream = %target.0, "the client's upload stalled");
                        rejection(
                            StatusCode::REQUEST_TIMEOUT,
                            "request_body_timeout",
                            "the request body stopped arriving",
                            Outcome::ClientAborted,
                        )
                    }
                };
                res.extensions_mut().insert(target);
                Poll::Ready(Ok(res))
            }
        }
    }
}

/// How many response timeouts an upload may take in all while it keeps making progress (before
/// the answer here, after it in the `upstream` module).
pub(crate) const UPLOAD_WAITS: u32 = 10;

/// When a wait of `wait` that ends at `deadline` began (`now` if that is before the clock's
/// origin: a huge wait, whose deadline `deadline_after` moved to decades from now).
fn wait_began(
    deadline: tokio::time::Instant,
    wait: Duration,
    now: tokio::time::Instant,
) -> tokio::time::Instant {
    deadline.checked_sub(wait).unwrap_or(now)
}

/// Whether an upload that began waiting at `since` may still take more time at `now`: less
/// than [`UPLOAD_WAITS`] waits have passed. A total that does not fit the clock is no limit.
fn upload_may_go_on(
    since: tokio::time::Instant,
    wait: Duration,
    now: tokio::time::Instant,
) -> bool {
    wait.checked_mul(UPLOAD_WAITS)
        .and_then(|all| since.checked_add(all))
        .is_none_or(|end| now < end)
}

/// Whose wait ran out: the upstream's (no response headers in time after the upload ended) or
/// the client's (its upload made no progress for as long).
enum Late {
    Upstream,
    Upload,
}

/// `EMFILE` and `ENFILE` (the same numbers on Linux, the BSDs and macOS).
const TOO_MANY_OPEN_FILES: [i32; 2] = [24, 23];

/// Whether `err` (or an error it was caused by) is the process or the system running out of
/// file descriptors (`EMFILE`, `ENFILE`): the gateway could not open a socket, the backend was
/// never asked.
fn out_of_descriptors(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| TOO_MANY_OPEN_FILES.contains(&code))
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// The request on its way: through a pooled HTTP/1 connection, or through hyper-util.
enum Sending {
    Pooled(Pin<Box<dyn Future<Output = Result<Sent, SendError>> + Send>>),
    Client(hyper_util::client::legacy::ResponseFuture),
}

/// Why no response headers came back.
#[derive(Debug, thiserror::Error)]
enum SendFailure {
    #[error(transparent)]
    Pooled(#[from] SendError),
    #[error(transparent)]
    Client(#[from] hyper_util::client::legacy::Error),
}

impl SendFailure {
    fn is_connect(&self) -> bool {
        match self {
            Self::Pooled(err) => err.is_connect(),
            Self::Client(err) => err.is_connect(),
        }
    }
}

impl Future for Sending {
    type Output = Result<(Response<Incoming>, Option<PooledConn>), SendFailure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both variants are Unpin (boxed futures).
        match self.get_mut() {
            Self::Pooled(fut) => fut.as_mut().poll(cx).map(|r| r.map_err(Into::into)),
            Self::Client(fut) => Pin::new(fut)
                .poll(cx)
                .map(|r| r.map(|res| (res, None)).map_err(Into::into)),
        }
    }
}

// At most one WARN line per second for each kind of upstream failure: a backend outage under
// load would otherwise write a line per request. Each line says how many were not written since
// the one before (`skipped`); every failure is still audited and counted in `/health`.
static UNREACHABLE_LOG: LogThrottle = LogThrottle::new();
static FAILED_LOG: LogThrottle = LogThrottle::new();
static TIMEOUT_LOG: LogThrottle = LogThrottle::new();
static NO_DESCRIPTOR_LOG: LogThrottle = LogThrottle::new();

/// Marks a failure after which the backend may have done the request's work (it timed out after
/// the request went out, or the connection broke once it was sent) as not to be retried: the official OpenAI
/// SDKs retry 5xx answers twice by default unless `x-should-retry: false` says otherwise, and a
/// retried completion is generated (and paid) again. An unreachable backend saw nothing: its 502
/// leaves the SDK's retries alone.
fn no_retry<B>(mut res: Response<B>) -> Response<B> {
    res.headers_mut().insert(
        HeaderName::from_static("x-should-retry"),
        HeaderValue::from_static("false"),
    );
    res
}

fn upstream_response(
    res: Response<Incoming>,
    idle: Duration,
    conn: Option<PooledConn>,
) -> Response<GatewayBody> {
    let (mut parts, body) = res.into_parts();
    // A message with both framings is framed by Transfer-Encoding (hyper reads it so); the
    // Content-Length must not reach the client (RFC 9112 6.1), or it would cut the body there.
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        parts.headers.remove(header::CONTENT_LENGTH);
    } else if let Some(length) = parts.headers.get(header::CONTENT_LENGTH)
        && length.as_bytes().contains(&b',')
    {
        // A list of equal values (`5, 5`), which hyper read as one length: clients refuse the
        // list (node), wait for the connection's end (Python) or reset the stream (HTTP/2).
        // RFC 9112 6.3: pass one value.
        match body.size_hint().exact() {
            Some(n) => {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            None => {
                parts.headers.remove(header::CONTENT_LENGTH);
            }
        }
    }
    remove_hop_by_hop(&mut parts.headers);
    if BodyKind::of(&parts.headers).is_stream() {
        parts
            .headers
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        parts.headers.insert(
            http::HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
    }
    let body = match conn {
        Some(conn) => GatewayBody::upstream_pooled(body, idle, conn),
        None => GatewayBody::upstream(body, idle),
    };
    Response::from_parts(parts, body)
}

/// What a response's `Content-Type` says about its body, read once per use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// `text/event-stream`.
    EventStream,
    /// `application/x-ndjson` or `application/ndjson`: Ollama's native API streams its answers
    /// as one JSON object per line.
    Ndjson,
    /// `application/json` or a `+json` type.
    Json,
    /// Anything else, or no `Content-Type`.
    Other,
}

impl BodyKind {
    pub(crate) fn of(headers: &http::HeaderMap) -> Self {
        let Some(ct) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        else {
            return Self::Other;
        };
        let ct = ct.trim_start();
        let starts = |p: &str| ct.get(..p.len()).is_some_and(|c| c.eq_ignore_ascii_case(p));
        if starts("text/event-stream") {
            return Self::EventStream;
        }
        if starts("application/json") {
            return Self::Json;
        }
        let essence = ct.split(';').next().unwrap_or(ct).trim_end();
        if essence.eq_ignore_ascii_case("application/x-ndjson")
            || essence.eq_ignore_ascii_case("application/ndjson")
        {
            Self::Ndjson
        } else if ct.contains("+json") {
            Self::Json
        } else {
            Self::Other
        }
    }

    /// A stream of events or lines: audited as a stream, never buffered by a proxy in front.
    pub(crate) fn is_stream(self) -> bool {
        matches!(self, Self::EventStream | Self::Ndjson)
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<ForwardService<http_body_util::Full<Bytes>>>();
    check::<ForwardService<hyper::body::Incoming>>();
    fn check_send<T: Send + 'static>() {}
    check_send::<ResponseFuture>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extensions::Backend;
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    fn backend(base: &str, path: &str) -> Backend {
        Backend {
            base_url: base.parse().unwrap(),
            path: path.into(),
            api_key: None,
            key_header: header::AUTHORIZATION,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn uri_joins_base_path_and_keeps_query() {
        let b = backend("http://127.0.0.1:9/v1/", "/chat/completions");
        let (uri, target) = upstream_uri(&b, Some("a=1&b=2")).unwrap();
        assert_eq!(uri, "http://127.0.0.1:9/v1/chat/completions?a=1&b=2");
        assert_eq!(&*target.0, "http://127.0.0.1:9/v1/chat/completions");
        let b = backend("http://user:secret@127.0.0.1:9", "/x");
        let (uri, target) = upstream_uri(&b, None).unwrap();
        assert_eq!(uri, "http://127.0.0.1:9/x");
        assert!(!target.0.contains("secret"));
        let b = backend("https://api.example.com", "v2/x");
        let (uri, _) = upstream_uri(&b, None).unwrap();
        assert_eq!(uri, "https://api.example.com/v2/x");
    }

    #[test]
    fn a_suffix_is_joined_without_doubling_a_slash() {
        let s = |s: &str| PathSuffix::new(s).unwrap();
        assert_eq!(join_suffix("/v1", &s("/models/m")), "/v1/models/m");
        assert_eq!(join_suffix("/v1", &s("")), "/v1");
        assert_eq!(join_suffix("/v1", &s("/")), "/v1/");
        assert_eq!(join_suffix("/", &s("/models")), "/models");
        assert_eq!(join_suffix("/", &s("")), "/");
        assert_eq!(
            join_suffix("http://h:1/", &s("/models")),
            "http://h:1/models"
        );
        assert_eq!(join_suffix("/v1/", &s("/models")), "/v1/models");
    }

    #[test]
    fn running_out_of_file_descriptors_is_told_from_an_unreachable_backend() {
        let failure =
            |code| SendFailure::Pooled(SendError::Connect(std::io::Error::from_raw_os_error(code)));
        assert!(out_of_descriptors(&failure(24))); // EMFILE
        assert!(out_of_descriptors(&failure(23))); // ENFILE
        assert!(!out_of_descriptors(&failure(111))); // ECONNREFUSED
        assert!(!out_of_descriptors(&SendFailure::Pooled(SendError::Closed)));
        // Deeper in a chain (hyper-util's connect error wraps the I/O error).
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        assert!(out_of_descriptors(&Outer(
            std::io::Error::from_raw_os_error(24)
        )));
    }

    #[test]
    fn event_stream_detection() {
        let mut h = http::HeaderMap::new();
        assert_eq!(BodyKind::of(&h), BodyKind::Other);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Text/Event-Stream; charset=utf-8"),
        );
        assert_eq!(BodyKind::of(&h), BodyKind::EventStream);
        for (ct, kind) in [
            ("application/x-ndjson", BodyKind::Ndjson),
            ("Application/NDJSON; charset=utf-8", BodyKind::Ndjson),
            ("application/json; charset=utf-8", BodyKind::Json),
            ("application/problem+json", BodyKind::Json),
            ("text/plain", BodyKind::Other),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(BodyKind::of(&h), kind, "{ct}");
        }
    }

    #[tokio::test]
    async fn connector_gives_up_after_its_timeout() {
        let never = tower::service_fn(|_uri: Uri| {
            std::future::pending::<Result<tokio::net::TcpStream, std::io::Error>>()
        });
        let mut connector = TimedConnector {
            inner: never,
            timeout: Duration::from_millis(20),
        };
        let started = std::time::Instant::now();
        let err = connector
            .call("http://slow.example:80/x".parse().unwrap())
            .await
            .unwrap_err();
        assert!(err.is::<ConnectTimeout>());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Two `https://` routes to one host, with different connect timeouts, each keep their own:
    /// the upstream accepts TCP and never answers the TLS handshake.
    #[tokio::test]
    async fn https_routes_to_one_host_keep_their_own_connect_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        let route = |name: &str, connect_ms: u64| {
            let mut b = backend(&format!("https://127.0.0.1:{port}"), "/v1/chat/completions");
            b.connect_timeout = Duration::from_millis(connect_ms);
            b.response_timeout = Duration::from_secs(20);
            RouteConfig {
                name: name.into(),
                permission: "chat".into(),
                backend: Arc::new(b),
            }
        };
        let (quick, slow) = (route("quick", 200), route("slow", 2500));
        let svc = ForwardService::<Full<Bytes>>::new();
        let send = |route: &RouteConfig| {
            let mut req = Request::new(Full::new(Bytes::new()));
            req.extensions_mut().insert(route.clone());
            let svc = svc.clone();
            async move {
                let started = std::time::Instant::now();
                let res = svc.oneshot(req).await.unwrap();
                (res.status(), started.elapsed())
            }
        };
        // Both routes are seen before either is measured.
        let (first_quick, first_slow) = tokio::join!(send(&quick), send(&slow));
        let (again_quick, again_slow) = tokio::join!(send(&quick), send(&slow));
        for (status, took) in [first_quick, again_quick] {
            assert_eq!(status, StatusCode::BAD_GATEWAY);
            assert!(
                took >= Duration::from_millis(150) && took < Duration::from_millis(1500),
                "the 200 ms route gave up after {took:?}"
            );
        }
        for (status, took) in [first_slow, again_slow] {
            assert_eq!(status, StatusCode::BAD_GATEWAY);
            assert!(
                took >= Duration::from_millis(2400),
                "the 2.5 s route gave up after {took:?}"
            );
        }
    }

    /// A path below a prefix route that makes the upstream URI longer than `http` allows is the
    /// client's 414, not the backend's 500 `bad_backend`; nothing is sent.
    #[tokio::test]
    async fn a_too_long_upstream_uri_is_414_not_bad_backend() {
        let route = RouteConfig {
            name: "prefix".into(),
            permission: "chat".into(),
            // Nothing listens there: the request must not get as far as connecting.
            backend: Arc::new(backend("http://127.0.0.1:9", "/v1/base")),
        };
        let svc = ForwardService::<Full<Bytes>>::new();
        let send = |suffix: Option<String>, query: &str| {
            let mut req = Request::get(format!("/x?{query}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            req.extensions_mut().insert(route.clone());
            if let Some(suffix) = suffix {
                req.extensions_mut()
                    .insert(PathSuffix::new(&suffix).unwrap());
            }
            svc.clone().oneshot(req)
        };
        // A request URI (`/x?` and the query) is at most 65,534 bytes, as the upstream's.
        for (suffix, query) in [
            (Some(format!("/{}", "a".repeat(65_600))), "q=1"),
            (
                Some(format!("/{}", "a".repeat(40_000))),
                &*"b".repeat(30_000),
            ),
            (None, &*format!("q={}", "a".repeat(65_528))),
        ] {
            let res = send(suffix, query).await.unwrap();
            assert_eq!(res.status(), StatusCode::URI_TOO_LONG);
            let rejected = res.extensions().get::<crate::Rejected>().copied().unwrap();
            assert_eq!(rejected.code, "uri_too_long");
            assert_eq!(rejected.outcome, Outcome::Rejected);
        }
        // Just short enough: forwarded (the backend is unreachable: 502).
        let res = send(Some(format!("/{}", "a".repeat(65_500))), "q=1")
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    }

    /// A `response_timeout` of `Duration::MAX` (an embedder's "no limit"): the checks made when
    /// the wait ends do not overflow the clock. (End to end the wait never ends in a test: on a
    /// paused clock, tokio would step through the pool's once-a-second reaper for 30 years.)
    #[test]
    fn a_huge_response_timeout_does_not_overflow_the_clock() {
        let now = tokio::time::Instant::now();
        let far = deadline_after(now, Duration::MAX);
        assert!(far > now + Duration::from_secs(86_400 * 365));
        assert_eq!(wait_began(far, Duration::MAX, now), now);
        assert!(upload_may_go_on(now, Duration::MAX, now));
        let wait = Duration::from_secs(10);
        let since = wait_began(now + wait, wait, now);
        assert_eq!(since, now);
        assert!(upload_may_go_on(since, wait, now + wait * 9));
        assert!(!upload_may_go_on(since, wait, now + wait * UPLOAD_WAITS));
    }

    #[tokio::test]
    async fn without_route_answers_500_no_route() {
        let svc = ForwardService::<Full<Bytes>>::new();
        let res = svc
            .oneshot(Request::new(Full::new(Bytes::new())))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let rejected = res.extensions().get::<crate::Rejected>().copied().unwrap();
        assert_eq!(rejected.code, "no_route");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(std::str::from_utf8(&body).unwrap().contains("no_route"));
    }
}
