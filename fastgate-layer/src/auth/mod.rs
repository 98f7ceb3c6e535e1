//! API-key authentication.
//!
//! [`ApiKeyAuthLayer`] takes the gateway key from `X-API-Key` or `Authorization: Bearer <key>`
//! (the scheme matched case-insensitively), checks its shape with [`PresentedKey::parse`] *before*
//! any lookup, resolves it through a [`KeyResolver`] and then checks expiry and the route's
//! permission. Every refusal is an OpenAI-shaped JSON response (never an `Err`):
//!
//! | case | status | code |
//! |---|---|---|
//! | no key | 401 | `missing_api_key` |
//! | malformed, unknown, disabled or revoked key (one message for all; a [`ResolveError::Refused`] key is named in the audit record) | 401 | `invalid_api_key` |
//! | expired ([`KeyIdentity::expires_at`](crate::KeyIdentity::expires_at)) | 401 | `expired_api_key` |
//! | key lacks [`RouteConfig::permission`](crate::RouteConfig::permission) (`chat` without a route) | 403 | `permission_denied` |
//! | [`ResolveError::Unavailable`] | 503 | `auth_unavailable` |
//!
//! A gRPC call (a `Content-Type` of `application/grpc`, `application/grpc+proto`, … see
//! [`is_grpc`](crate::error::is_grpc)) is refused in gRPC's form instead: a Trailers-Only
//! response, HTTP 200 with `grpc-status` 16 `UNAUTHENTICATED` (the 401 cases), 7
//! `PERMISSION_DENIED` (403) or 14 `UNAVAILABLE` (503) and the message in `grpc-message`, no body
//! ([`grpc_rejection`](crate::error::grpc_rejection)), in the request's own gRPC media type
//! (`application/grpc-web+proto` for a gRPC-Web call, `application/grpc+json` for a JSON-coded
//! one; see [`GrpcContentType`](crate::error::GrpcContentType)). A gRPC client would read a JSON
//! body as a gRPC frame (tonic reports `INTERNAL`, "invalid compression flag"); this way it gets
//! the status. The key goes in the call's metadata, under the same two names. Its audit record
//! shows the HTTP status of the JSON form (401, 403, 503), not the wire's 200
//! ([`Rejected::audit_status`](crate::Rejected::audit_status)).
//!
//! Extensions: reads [`RouteConfig`](crate::RouteConfig) from the request; writes
//! [`KeyIdentity`](crate::KeyIdentity) into the request (for inner layers) and into the response
//! (for audit, which sits outside), and [`Rejected`](crate::Rejected) on refusals. The presented
//! key is never echoed, logged or stored.
//!
//! Copies of the presented key are removed from the request so that they are not forwarded: query
//! parameters whose (percent-decoded) value is the key or `Bearer <key>` (`?api_key=…`), and
//! headers other than `X-API-Key` and `Authorization` (which
//! [`ScrubHeadersLayer`](crate::scrub::ScrubHeadersLayer) always removes) whose value is the key
//! or `Bearer <key>` (`api-key: <key>`, Azure's convention). A value that merely contains the key
//! is left alone. The header check costs a length comparison per header.
//!
//! # Example
//!
//! ```
//! use std::time::SystemTime;
//! use fastgate_layer::{KeyIdentity, auth::{ApiKeyAuthLayer, StaticKeys}};
//! use http::{Request, Response, StatusCode};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let keys = StaticKeys::new([("sk-client-1", KeyIdentity {
//!     key_id: "key-1".into(),
//!     source_path: "team-a".into(),
//!     permissions: vec!["chat".to_owned()].into(),
//!     expires_at: None,
//! })]);
//! let svc = ServiceBuilder::new()
//!     .layer(ApiKeyAuthLayer::new(keys))
//!     .service(service_fn(|req: Request<()>| async move {
//!         let who = req.extensions().get::<KeyIdentity>().unwrap().key_id.clone();
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(who.to_string()))))
//!     }));
//!
//! let ok = Request::builder().header("authorization", "bearer sk-client-1").body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(ok).await.unwrap().status(), StatusCode::OK);
//! let missing = Request::new(());
//! assert_eq!(svc.oneshot(missing).await.unwrap().status(), StatusCode::UNAUTHORIZED);
//! # }
//! ```

mod resolver;
mod service;
mod static_keys;

pub use resolver::{KeyResolver, PresentedKey, ResolveError};
pub use service::{
    ApiKeyAuth, ApiKeyAuthLayer, AuthError, DEFAULT_PERMISSION, ResponseFuture, extract_key,
};
pub use static_keys::StaticKeys;
