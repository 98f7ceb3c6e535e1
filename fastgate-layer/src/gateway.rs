//! [`GatewayBuilder`]: the whole stack, assembled in the documented order.
//!
//! Outermost first: request id → audit → route → auth → size limit → scrub → inject → forward.
//!
//! * request id first, so that every response (errors too) carries `X-Request-Id` and audit
//!   records the same text;
//! * audit next, so that every refusal below it is audited exactly once;
//! * route before auth, because auth checks the route's permission;
//! * auth before the size limit, so that a caller without a valid key gets 401 whatever it
//!   sends (not 413), and a 413 is audited with the key that sent it;
//! * scrub after auth (auth reads the client's key) and before inject (which sets the real one).
//!
//! [`GatewayBuilder::build`] puts a [`ForwardService`] at the bottom; [`GatewayBuilder::layer`]
//! returns the same stack as a [`GatewayLayer`] for any inner service (tests, benchmarks, custom
//! forwarders).
//!
//! # Example
//!
//! ```
//! use std::collections::HashMap;
//! use fastgate_layer::{GatewayBuilder, auth::StaticKeys, route::RouteTable};
//! use fastgate_layer::audit::{AuditConfig, AuditLayer, MemorySink};
//! use bytes::Bytes;
//! use http_body_util::Full;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (audit, worker) = AuditLayer::pair(MemorySink::default(), AuditConfig::default());
//! let gateway = GatewayBuilder::new(StaticKeys::default(), RouteTable::new(HashMap::new()))
//!     .audit(audit)
//!     .max_body_bytes(1 << 20)
//!     .build::<Full<Bytes>>();
//! # let _ = (gateway, worker);
//! # }
//! ```

use std::fmt;

use http::HeaderName;
use tower::Layer;

use crate::audit::{Audit, AuditLayer, AuditRequestBody};
use crate::auth::{ApiKeyAuth, ApiKeyAuthLayer, KeyResolver};
use crate::error::BoxError;
use crate::forward::{ForwardConfig, ForwardService};
use crate::inject::{InjectUpstreamKey, InjectUpstreamKeyLayer};
use crate::limit::{LimitedBody, RequestSizeLimit, RequestSizeLimitLayer};
use crate::request_id::{RequestId, RequestIdLayer};
use crate::route::{Route, RouteLayer, RouteTable};
use crate::scrub::{ScrubHeaders, ScrubHeadersLayer, default_strip_headers};

/// Default request body limit: 10 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// The request body type the inner service (forward) receives for a client body `B`.
pub type UpstreamBody<B> = LimitedBody<AuditRequestBody<B>>;

/// The layer stack around an inner service `S`, outermost first.
pub type GatewayStack<S, R> =
    RequestId<Audit<Route<ApiKeyAuth<RequestSizeLimit<ScrubHeaders<InjectUpstreamKey<S>>>, R>>>>;

/// What [`GatewayBuilder::build`] returns for request bodies `B`.
///
/// It implements `Service<http::Request<B>, Response = http::Response<AuditBody<GatewayBody>>,
/// Error = Infallible> + Clone + Send + Sync + 'static` (see [`AuditBody`](crate::audit::AuditBody),
/// [`GatewayBody`](crate::body::GatewayBody)).
pub type Gateway<R, B> = GatewayStack<ForwardService<UpstreamBody<B>>, R>;

/// Assembles the gateway stack. See the [module docs](self).
#[must_use]
pub struct GatewayBuilder<R> {
    resolver: R,
    routes: RouteTable,
    audit: Option<AuditLayer>,
    strip: Vec<HeaderName>,
    max_body_bytes: u64,
    forward: ForwardConfig,
}

impl<R> fmt::Debug for GatewayBuilder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("routes", &self.routes)
            .field("audit", &self.audit)
            .field("strip", &self.strip)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl<R: KeyResolver> GatewayBuilder<R> {
    /// A builder with no auditing, [`default_strip_headers`] and a 10 MiB body limit.
    pub fn new(resolver: R, routes: RouteTable) -> Self {
        Self {
            resolver,
            routes,
            audit: None,
            strip: default_strip_headers(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            forward: ForwardConfig::default(),
        }
    }

    /// Audit with `layer` (from [`AuditLayer::pair`]). Without it nothing is audited.
    pub fn audit(mut self, layer: AuditLayer) -> Self {
        self.audit = Some(layer);
        self
    }

    /// Headers removed before forwarding, replacing [`default_strip_headers`]. Hop-by-hop
    /// headers are always removed as well.
    pub fn strip_headers(mut self, list: impl IntoIterator<Item = HeaderName>) -> Self {
        self.strip = list.into_iter().collect();
        self
    }

    /// Largest request body accepted (413 beyond it).
    pub fn max_body_bytes(mut self, max: u64) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// Settings of the forward service's connection pool.
    pub fn forward_config(mut self, config: ForwardConfig) -> Self {
        self.forward = config;
        self
    }

    /// The stack without the forward service, as a layer.
    pub fn layer(&self) -> GatewayLayer<R> {
        GatewayLayer {
            resolver: self.resolver.clone(),
            routes: self.routes.clone(),
            audit: self.audit.clone().unwrap_or_else(AuditLayer::disabled),
            scrub: ScrubHeadersLayer::new(self.strip.iter().cloned()),
            limit: RequestSizeLimitLayer::new(self.max_body_bytes),
        }
    }

    /// The full stack in front of a [`ForwardService`], for request bodies `B`.
    ///
    /// `B` must yield [`Bytes`](bytes::Bytes) and be `Unpin` (hyper's `Incoming`, `Full<Bytes>`,
    /// a boxed body), as the forward service needs.
    pub fn build<B>(self) -> Gateway<R, B>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let forward = ForwardService::with_config(&self.forward);
        self.layer().layer(forward)
    }
}

/// The gateway stack as a [`Layer`]. Created by [`GatewayBuilder::layer`].
#[derive(Clone, Debug)]
pub struct GatewayLayer<R> {
    resolver: R,
    routes: RouteTable,
    audit: AuditLayer,
    scrub: ScrubHeadersLayer,
    limit: RequestSizeLimitLayer,
}

impl<S, R: Clone> Layer<S> for GatewayLayer<R> {
    type Service = GatewayStack<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = InjectUpstreamKeyLayer::new().layer(inner);
        let inner = self.scrub.layer(inner);
        let inner = self.limit.layer(inner);
        let inner = ApiKeyAuthLayer::new(self.resolver.clone()).layer(inner);
        let inner = RouteLayer::new(self.routes.clone()).layer(inner);
        let inner = self.audit.layer(inner);
        RequestIdLayer::new().layer(inner)
    }
}

#[allow(dead_code)]
fn _assert_gateway_bounds() {
    use std::convert::Infallible;
    use tower::Service;

    type Res = http::Response<crate::audit::AuditBody<crate::body::GatewayBody>>;
    fn check<S, B>(_: &S)
    where
        S: Service<http::Request<B>, Response = Res, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
    }
    fn gateway<B>() -> Gateway<crate::auth::StaticKeys, B>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        GatewayBuilder::new(crate::auth::StaticKeys::default(), RouteTable::default()).build()
    }
    type PoemBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>;
    check::<_, PoemBody>(&gateway::<PoemBody>());
    check::<_, hyper::body::Incoming>(&gateway::<hyper::body::Incoming>());
    // The request body type is inferred from how the service is used.
    let inferred =
        GatewayBuilder::new(crate::auth::StaticKeys::default(), RouteTable::default()).build();
    check::<_, PoemBody>(&inferred);
}
