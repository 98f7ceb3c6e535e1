//! The key-resolution port: how the auth layer turns a presented key into a [`KeyIdentity`].

use std::fmt;
use std::future::Future;

use crate::error::BoxError;
use crate::extensions::KeyIdentity;

/// A gateway key as presented by a client, already checked for shape (visible ASCII, bounded length).
///
/// `Debug` prints a mask; the value is reachable only through [`PresentedKey::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey(String);

impl PresentedKey {
    /// Longest key accepted; longer values are rejected before any lookup.
    pub const MAX_LEN: usize = 256;

    /// Validate and wrap a key: non-empty, at most [`Self::MAX_LEN`] bytes, visible ASCII only.
    pub fn parse(value: &str) -> Option<Self> {
        let ok = !value.is_empty()
            && value.len() <= Self::MAX_LEN
            && value.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Self(value.to_owned()))
    }

    /// The key itself. Hash it; never log or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresentedKey(******)")
    }
}

/// Why a key could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// Unknown (never issued, deleted, malformed), or disabled or revoked when the resolver does
    /// not say whose key it is. Clients get one answer for every invalid key, so that they cannot
    /// probe which keys exist.
    #[error("invalid API key")]
    Invalid,
    /// A known key that is refused: disabled, or an old secret whose rotation grace period
    /// ended. Answered exactly as [`Invalid`](Self::Invalid) (same status, code and message);
    /// the identity only lets the audit record name the key that was tried, so that an admin
    /// sees who still uses a revoked key. Its permissions and expiry are not meaningful.
    #[error("invalid API key")]
    Refused(KeyIdentity),
    /// The resolver could not answer (e.g. the database is down).
    #[error("key lookup unavailable")]
    Unavailable(#[source] BoxError),
}

/// Resolves a presented key to the identity behind it.
///
/// Expiry and permissions are checked by the auth layer from the returned [`KeyIdentity`], so a
/// resolver only answers "who is this" (or [`ResolveError::Invalid`] for unknown keys and
/// [`ResolveError::Refused`] for disabled and revoked ones). Implemented by `fastgate-store`; [`StaticKeys`](super::StaticKeys) is an
/// in-memory implementation for tests and examples.
pub trait KeyResolver: Clone + Send + Sync + 'static {
    /// The future returned by [`resolve`](Self::resolve).
    type Future: Future<Output = Result<KeyIdentity, ResolveError>> + Send + 'static;

    /// Look the key up.
    fn resolve(&self, key: PresentedKey) -> Self::Future;
}
