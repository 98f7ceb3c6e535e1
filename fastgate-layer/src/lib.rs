//! FastGate's gateway as reusable tower layers (work in progress: see the crate README).

pub mod audit;
pub mod auth;
pub mod error;
pub mod extensions;
pub mod secret;

pub use audit::{AuditEvent, AuditSink, Outcome, TokenUsage};
pub use auth::{KeyResolver, PresentedKey, ResolveError};
pub use error::{BoxError, json_error};
pub use extensions::{Backend, ClientAddr, KeyIdentity, Rejected, RouteConfig, TargetUrl};
pub use secret::Secret;
