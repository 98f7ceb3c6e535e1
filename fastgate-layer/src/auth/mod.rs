//! API-key authentication (ports only so far).
mod resolver;
pub use resolver::{KeyResolver, PresentedKey, ResolveError};
