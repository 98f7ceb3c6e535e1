//! FastGate's API gateway as reusable tower layers over a streaming forward service.
//!
//! Each concern is one tower layer, usable on its own; [`GatewayBuilder`] assembles them in this
//! order (outermost first):
//!
//! | # | layer | reads | writes | answers itself | wraps body |
//! |---|---|---|---|---|---|
//! | 1 | [`RequestIdLayer`](request_id::RequestIdLayer) | `x-request-id` | `x-request-id` on request and response | never | no |
//! | 2 | [`AuditLayer`](audit::AuditLayer) | req ext [`ClientAddr`]; resp ext [`KeyIdentity`], [`Rejected`], [`TargetUrl`] | one [`AuditEvent`] → queue → [`AuditSink`]; narrows `accept-encoding` to `gzip`/`deflate`/`identity` ([why](audit#compressed-answers-and-accept-encoding)) | never | [`AuditBody`](audit::AuditBody), [`AuditRequestBody`](audit::AuditRequestBody) |
//! | 3 | [`RouteLayer`](route::RouteLayer) | method, path, [`RouteTable`](route::RouteTable) | req ext [`RouteConfig`], and [`PathSuffix`] for a prefix route | 404 `route_not_found`; 400 `invalid_path` (a prefix route's path that could leave its backend path); 405 `method_not_allowed` (`TRACE`, `TRACK`, `CONNECT`) | no |
//! | 4 | [`ApiKeyAuthLayer`](auth::ApiKeyAuthLayer) | `x-api-key` / `authorization: Bearer`, [`RouteConfig::permission`] | req + resp ext [`KeyIdentity`]; removes copies of the key from the query and other headers | 401 / 403 / 503 (to gRPC callers: `grpc-status` 16 / 7 / 14) | no |
//! | 5 | [`RequestSizeLimitLayer`](limit::RequestSizeLimitLayer) | `content-length`, body | — | 413 `request_too_large` | [`LimitedBody`](limit::LimitedBody) |
//! | 6 | [`ScrubHeadersLayer`](scrub::ScrubHeadersLayer) | headers | removes credentials, hop-by-hop, `Connection`-listed | never | no |
//! | 7 | [`InjectUpstreamKeyLayer`](inject::InjectUpstreamKeyLayer) | [`Backend::api_key`] | `authorization` (sensitive) | never | no |
//! | 8 | [`ForwardService`](forward::ForwardService) | [`RouteConfig::backend`], [`PathSuffix`] | resp ext [`TargetUrl`] | 500 / 502 / 504; 414 `uri_too_long` | [`GatewayBody`](body::GatewayBody) |
//!
//! Every refusal is an OpenAI-shaped JSON body `{"error":{"message","type","code"}}` marked with
//! [`Rejected`] (auth answers a gRPC call in gRPC's form instead, see [`auth`]), never an `Err`:
//! the assembled service's error type is
//! [`Infallible`](std::convert::Infallible). The audit worker is a future the caller runs; the
//! forward service needs a Tokio runtime, on which it spawns the tasks of its upstream
//! connections and of its pool's idle reaper (and the spool's file writes go to Tokio's blocking
//! pool). It reads no configuration files and no environment variables.
//!
//! The embedding application provides the client address by inserting [`ClientAddr`] into the
//! request extensions before calling the stack (from its accept loop, or a poem middleware).
//!
//! # Example
//!
//! The stack in front of an in-memory service, without any network:
//!
//! ```
//! use std::{collections::HashMap, sync::Arc, time::Duration};
//! use bytes::Bytes;
//! use fastgate_layer::{Backend, GatewayBuilder, KeyIdentity, RouteConfig, Secret};
//! use fastgate_layer::audit::{AuditConfig, AuditLayer, MemorySink, Outcome};
//! use fastgate_layer::{auth::StaticKeys, body::GatewayBody, gateway::UpstreamBody, route::RouteTable};
//! use http::{Request, Response, header};
//! use http_body_util::{BodyExt, Full};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let keys = StaticKeys::new([("sk-client", KeyIdentity {
//!     key_id: "key-1".into(),
//!     source_path: "team-a".into(),
//!     permissions: vec!["chat".to_owned()].into(),
//!     expires_at: None,
//! })]);
//! let backend = Arc::new(Backend {
//!     base_url: "http://127.0.0.1:1030".parse().unwrap(),
//!     path: "/v1/chat/completions".into(),
//!     api_key: Some(Secret::new("sk-upstream")),
//!     key_header: header::AUTHORIZATION,
//!     connect_timeout: Duration::from_secs(5),
//!     response_timeout: Duration::from_secs(60),
//!     idle_timeout: Duration::from_secs(60),
//! });
//! let routes = RouteTable::new(HashMap::from([("/proxy/chat".to_owned(), RouteConfig {
//!     name: "chat".into(),
//!     permission: "chat".into(),
//!     backend,
//! })]));
//! let sink = MemorySink::default();
//! let (audit, worker) = AuditLayer::pair(sink.clone(), AuditConfig::default());
//!
//! // An in-memory "upstream" that reads the body and echoes the credential it received.
//! let upstream = service_fn(|req: Request<UpstreamBody<Full<Bytes>>>| async move {
//!     let auth = req.headers()[header::AUTHORIZATION].to_str().unwrap().to_owned();
//!     req.into_body().collect().await.unwrap();
//!     Ok::<_, std::convert::Infallible>(Response::new(GatewayBody::from(Bytes::from(auth))))
//! });
//! let gateway = GatewayBuilder::new(keys, routes).audit(audit).layer().layer(upstream);
//!
//! let req = Request::post("/proxy/chat")
//!     .header("x-api-key", "sk-client")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"m"}"#)))
//!     .unwrap();
//! let res = gateway.oneshot(req).await.unwrap();
//! assert!(res.headers().contains_key("x-request-id"));
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "Bearer sk-upstream");
//!
//! worker.run().await; // every sender is gone: drains and returns
//! let event = &sink.events()[0];
//! assert_eq!((event.outcome, event.model.as_deref()), (Outcome::Completed, Some("m")));
//! # }
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod audit;
pub mod auth;
mod backend_cache;
pub mod body;
pub mod error;
pub mod extensions;
pub mod forward;
pub mod gateway;
pub mod inject;
pub mod limit;
pub mod log_throttle;
pub mod request_id;
pub mod route;
pub mod scrub;
pub mod secret;
mod upstream;

#[cfg(test)]
mod test_util;

pub use audit::{AuditBatch, AuditEvent, AuditSink, Outcome, TokenUsage};
pub use auth::{KeyResolver, PresentedKey, ResolveError};
pub use error::{BoxError, ErrorChain, json_error};
pub use extensions::{
    Backend, BackendUrlError, ClientAddr, InvalidPathSuffix, KeyIdentity, PathSuffix, Rejected,
    RouteConfig, TargetUrl,
};
pub use gateway::{Gateway, GatewayBuilder, GatewayLayer};
pub use secret::Secret;
