//! [`StaticKeys`]: an in-memory [`KeyResolver`] for tests, examples and small deployments.

use std::collections::HashMap;
use std::fmt;
use std::future::{Ready, ready};
use std::sync::Arc;

use super::resolver::{KeyResolver, PresentedKey, ResolveError};
use crate::extensions::KeyIdentity;

/// An in-memory [`KeyResolver`]: a map from key string to [`KeyIdentity`].
///
/// Cloning is cheap (the map is shared). `Debug` prints the key ids, never the keys.
#[derive(Clone, Default)]
pub struct StaticKeys {
    keys: Arc<HashMap<String, KeyIdentity>>,
}

impl StaticKeys {
    /// Build from `(key, identity)` pairs.
    pub fn new<K: Into<String>>(keys: impl IntoIterator<Item = (K, KeyIdentity)>) -> Self {
        Self {
            keys: Arc::new(keys.into_iter().map(|(k, v)| (k.into(), v)).collect()),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.values().map(|k| &k.key_id))
            .finish()
    }
}

impl KeyResolver for StaticKeys {
    type Future = Ready<Result<KeyIdentity, ResolveError>>;

    fn resolve(&self, key: PresentedKey) -> Self::Future {
        ready(
            self.keys
                .get(key.expose())
                .cloned()
                .ok_or(ResolveError::Invalid),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_known_and_rejects_unknown() {
        let id = KeyIdentity {
            key_id: "k1".into(),
            source_path: "s".into(),
            permissions: vec!["chat".to_owned()].into(),
            expires_at: None,
        };
        let keys = StaticKeys::new([("sk-1", id.clone())]);
        let found = keys.resolve(PresentedKey::parse("sk-1").unwrap()).await;
        assert_eq!(found.unwrap(), id);
        let missing = keys.resolve(PresentedKey::parse("sk-2").unwrap()).await;
        assert!(matches!(missing, Err(ResolveError::Invalid)));
        assert!(!format!("{keys:?}").contains("sk-1"));
    }
}
