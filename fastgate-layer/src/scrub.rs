//! Strip client credentials and hop-by-hop headers before a request leaves the gateway.
//!
//! [`ScrubHeadersLayer`] removes a configurable list ([`default_strip_headers`]: `host`,
//! `x-api-key`, `authorization`, and the client-address headers `x-forwarded-for`, `forwarded`,
//! `x-real-ip`) and **always** the client's credentials
//! (`authorization`, `x-api-key`: the gateway key must never reach the upstream, whatever the
//! configured list says) with OpenAI's account selectors (`openai-organization`,
//! `openai-project`: they choose which organization and project the shared real key bills), the
//! RFC 9110 hop-by-hop headers (`connection`, `keep-alive`,
//! `proxy-connection`, `te`, `trailer`, `transfer-encoding`, `upgrade`, `proxy-authorization`,
//! `proxy-authenticate`) plus every header named in `Connection`, and `Expect` (the client's
//! `100-continue` is answered by the server the gateway runs in, when the body is first read;
//! the backend gets the body without being asked, as nginx forwards it). It adds no
//! `X-Forwarded-For` or `Forwarded` of its own. Every other header, unknown ones included,
//! passes unchanged here; the one header changed elsewhere is `Accept-Encoding`, which an
//! enabled [audit layer](crate::audit#compressed-answers-and-accept-encoding) narrows to the
//! codings its usage scanner reads.
//!
//! Place it after auth (auth needs the client's key) and before
//! [`InjectUpstreamKeyLayer`](crate::inject::InjectUpstreamKeyLayer) (which sets the real one).
//!
//! # Example
//!
//! ```
//! use fastgate_layer::scrub::{ScrubHeadersLayer, default_strip_headers};
//! use http::{HeaderName, Request};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let extra = HeaderName::from_static("x-internal");
//! let svc = ServiceBuilder::new()
//!     .layer(ScrubHeadersLayer::new(default_strip_headers().into_iter().chain([extra])))
//!     .service(service_fn(|req: Request<()>| async move {
//!         Ok::<_, std::convert::Infallible>(req.headers().len())
//!     }));
//! let req = Request::builder()
//!     .header("x-api-key", "sk-client")
//!     .header("x-internal", "1")
//!     .header("x-custom", "kept")
//!     .body(())
//!     .unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap(), 1);
//! # }
//! ```

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, Request, header};
use tower::{Layer, Service};

/// The seed's default list of headers removed before forwarding.
pub fn default_strip_headers() -> Vec<HeaderName> {
    vec![
        header::HOST,
        HeaderName::from_static("x-api-key"),
        header::AUTHORIZATION,
        HeaderName::from_static("x-forwarded-for"),
        // The other ways a client can claim an address: a backend that trusts them (its own
        // rate limits, logs) would take the client's word for it.
        HeaderName::from_static("forwarded"),
        HeaderName::from_static("x-real-ip"),
    ]
}

/// The RFC 9110 hop-by-hop headers, always removed (`proxy-connection` included).
pub fn hop_by_hop_headers() -> [HeaderName; 9] {
    [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ]
}

/// The names to strip, with a mask of their lengths so that most request headers are ruled out
/// by one bit test instead of comparisons against every name.
#[derive(Debug)]
struct StripSet {
    names: Box<[HeaderName]>,
    /// Bit `n` set when some name has length `n`; bit 127 for lengths of 127 and more.
    len_mask: u128,
}

impl StripSet {
    fn new(names: Vec<HeaderName>) -> Self {
        let len_mask = names.iter().fold(0u128, |m, n| m | len_bit(n.as_str()));
        Self {
            names: names.into(),
            len_mask,
        }
    }

    fn position(&self, name: &HeaderName) -> Option<usize> {
        let s = name.as_str();
        if self.len_mask & len_bit(s) == 0 {
            return None;
        }
        self.names.iter().position(|n| n.as_str() == s)
    }
}

fn len_bit(name: &str) -> u128 {
    1u128 << name.len().min(127)
}

/// Layer that applies [`ScrubHeaders`].
#[derive(Clone, Debug)]
pub struct ScrubHeadersLayer {
    headers: Arc<StripSet>,
}

impl ScrubHeadersLayer {
    /// Remove `headers` (e.g. [`default_strip_headers`]) plus the client's credentials, the
    /// hop-by-hop headers and `Expect`.
    pub fn new(headers: impl IntoIterator<Item = HeaderName>) -> Self {
        let mut list: Vec<HeaderName> = headers.into_iter().collect();
        let credentials = [
            header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
            // They pick the account the injected real key bills (OpenAI's organization and
            // project): a user of the shared key must not choose them.
            HeaderName::from_static("openai-organization"),
            HeaderName::from_static("openai-project"),
            header::EXPECT,
        ];
        for h in credentials.into_iter().chain(hop_by_hop_headers()) {
            if !list.contains(&h) {
                list.push(h);
            }
        }
        Self {
            headers: Arc::new(StripSet::new(list)),
        }
    }

    /// Remove [`default_strip_headers`] plus the hop-by-hop headers.
    pub fn with_defaults() -> Self {
        Self::new(default_strip_headers())
    }

    /// The headers this layer removes (hop-by-hop ones included).
    pub fn headers(&self) -> &[HeaderName] {
        &self.headers.names
    }
}

impl Default for ScrubHeadersLayer {
    fn default() -> Self {
        Self::with_defaults()
    }
}

impl<S> Layer<S> for ScrubHeadersLayer {
    type Service = ScrubHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ScrubHeaders {
            inner,
            headers: Arc::clone(&self.headers),
        }
    }
}

/// Middleware that removes client credentials and hop-by-hop headers.
///
/// See the [module docs](self) for details.
#[derive(Clone, Debug)]
pub struct ScrubHeaders<S> {
    inner: S,
    headers: Arc<StripSet>,
}

impl<S> ScrubHeaders<S> {
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

impl<S, B> Service<Request<B>> for ScrubHeaders<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        scrub(req.headers_mut(), &self.headers);
        self.inner.call(req)
    }
}

/// Remove the headers named in `Connection`, then `always`.
///
/// One pass over the (few) request headers with cheap name comparisons, then a removal only for
/// the names actually present: much cheaper than hashing every name of `always` per request.
fn scrub(headers: &mut HeaderMap, always: &StripSet) {
    remove_connection_listed(headers);
    if always.names.len() > 64 {
        for name in always.names.iter() {
            headers.remove(name);
        }
        return;
    }
    // Bit i set when `always.names[i]` is present; nothing is cloned or allocated.
    let mut hits: u64 = 0;
    for name in headers.keys() {
        if let Some(i) = always.position(name) {
            hits |= 1 << i;
        }
    }
    while hits != 0 {
        let i = hits.trailing_zeros() as usize;
        hits &= hits - 1;
        headers.remove(&always.names[i]);
    }
}

/// Remove headers named in `Connection` (RFC 9110 §7.6.1). Allocates only when there are some.
fn remove_connection_listed(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CONNECTION) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
}

/// Remove hop-by-hop headers (and those named in `Connection`) from an upstream response.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_connection_listed(headers);
    for name in hop_by_hop_headers() {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    async fn seen(req: Request<()>) -> HeaderMap {
        let svc = ServiceBuilder::new()
            .layer(ScrubHeadersLayer::with_defaults())
            .service(service_fn(|req: Request<()>| async move {
                Ok::<_, Infallible>(req.headers().clone())
            }));
        svc.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn removes_defaults_hop_by_hop_and_connection_listed() {
        let req = Request::builder()
            .header("host", "gateway")
            .header("x-api-key", "sk-client")
            .header("authorization", "Bearer sk-client")
            .header("x-forwarded-for", "10.0.0.1")
            .header("forwarded", "for=10.0.0.2")
            .header("x-real-ip", "10.0.0.3")
            .header("connection", "keep-alive, X-Secret-Hop")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("te", "trailers")
            .header("trailer", "x")
            .header("upgrade", "h2c")
            .header("proxy-authorization", "Basic x")
            .header("proxy-authenticate", "Basic")
            .header("expect", "100-continue")
            .header("x-secret-hop", "1")
            .header("x-custom", "kept")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let h = seen(req).await;
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(h["x-custom"], "kept");
        assert_eq!(h["content-type"], "application/json");
    }

    #[tokio::test]
    async fn custom_list_and_no_forwarded_added() {
        let svc = ServiceBuilder::new()
            .layer(ScrubHeadersLayer::new([HeaderName::from_static("x-drop")]))
            .service(service_fn(|req: Request<()>| async move {
                Ok::<_, Infallible>(req.headers().clone())
            }));
        let req = Request::builder()
            .header("x-drop", "1")
            .header("x-api-key", "fg_client-key")
            .header("authorization", "Bearer fg_client-key")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap();
        let h = svc.oneshot(req).await.unwrap();
        assert!(h.get("x-drop").is_none());
        // Credentials go whatever the configured list says; x-forwarded-for was not listed.
        assert!(h.get("x-api-key").is_none() && h.get("authorization").is_none());
        assert_eq!(
            h["x-forwarded-for"], "10.0.0.1",
            "passed through as received"
        );
        assert!(h.get("forwarded").is_none(), "none added");
    }

    #[test]
    fn response_hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("x-ok", "1".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }
}
