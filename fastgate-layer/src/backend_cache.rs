//! A small per-[`Backend`] memo: values derived from a backend once (the upstream URI prefix, the
//! credential header value) instead of on every request.
//!
//! Keyed by the backend's `Arc` allocation. Entries hold a [`Weak`], so a backend that was
//! replaced (configuration reload) is recognised as gone, its entry dropped on the next insert,
//! and its address cannot be mistaken for a new backend's while the entry exists (a `Weak` keeps
//! the allocation). Routes are few, so a short vector scanned under a read lock beats hashing.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, Weak};

use crate::extensions::Backend;

/// Entries kept at most; past this one entry, picked at random, makes room for the new one.
/// Random, not the oldest or least recently used: a routes file with more backends than this,
/// used round robin, would otherwise miss on every request (each miss evicting the entry the
/// next request needs), where a random eviction keeps most of them.
const MAX_ENTRIES: usize = 256;

/// One memoised value and the backend it was derived from.
type Entry<T> = (Weak<Backend>, T);

pub(crate) struct BackendCache<T> {
    entries: Arc<RwLock<Vec<Entry<T>>>>,
}

impl<T> Clone for BackendCache<T> {
    fn clone(&self) -> Self {
        Self {
            entries: Arc::clone(&self.entries),
        }
    }
}

impl<T> Default for BackendCache<T> {
    fn default() -> Self {
        Self {
            entries: Arc::default(),
        }
    }
}

impl<T> fmt::Debug for BackendCache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendCache").finish_non_exhaustive()
    }
}

impl<T: Clone> BackendCache<T> {
    /// The value memoised for `backend`, computing it with `make` the first time.
    pub(crate) fn get_or_insert_with(&self, backend: &Arc<Backend>, make: impl FnOnce() -> T) -> T {
        let ptr = Arc::as_ptr(backend);
        {
            let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, value)) = entries.iter().find(|(w, _)| w.as_ptr() == ptr) {
                return value.clone();
            }
        }
        let value = make();
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|(w, _)| w.strong_count() > 0);
        if entries.len() >= MAX_ENTRIES {
            // Only on a miss; hits stay a scan under the read lock.
            let victim = rand::random_range(0..entries.len());
            entries.swap_remove(victim);
        }
        if !entries.iter().any(|(w, _)| w.as_ptr() == ptr) {
            entries.push((Arc::downgrade(backend), value.clone()));
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn backend(path: &str) -> Arc<Backend> {
        Arc::new(Backend {
            base_url: "http://127.0.0.1:1".parse().unwrap(),
            path: path.into(),
            api_key: None,
            key_header: http::header::AUTHORIZATION,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn computes_once_per_backend_and_forgets_replaced_ones() {
        let cache = BackendCache::default();
        let (a, b) = (backend("/a"), backend("/b"));
        let mut calls = 0;
        for _ in 0..3 {
            assert_eq!(
                cache.get_or_insert_with(&a, || {
                    calls += 1;
                    a.path.clone()
                }),
                "/a"
            );
        }
        assert_eq!(calls, 1);
        assert_eq!(cache.get_or_insert_with(&b, || b.path.clone()), "/b");
        drop(a);
        // A new backend never gets the old one's value, even if it reuses the address.
        let c = backend("/c");
        assert_eq!(cache.get_or_insert_with(&c, || c.path.clone()), "/c");
        let live = cache.entries.read().unwrap();
        assert_eq!(live.len(), 2, "the dropped backend's entry is pruned");
    }

    #[test]
    fn a_full_memo_evicts_one_entry_not_all() {
        let cache = BackendCache::default();
        let backends: Vec<_> = (0..=MAX_ENTRIES)
            .map(|i| backend(&format!("/{i}")))
            .collect();
        for b in &backends {
            cache.get_or_insert_with(b, || b.path.clone());
        }
        // One entry made room for the newest; the others are all still there (a full memo
        // used to start over with the newest alone).
        let entries = cache.entries.read().unwrap();
        assert_eq!(entries.len(), MAX_ENTRIES);
        let newest = Arc::as_ptr(&backends[MAX_ENTRIES]);
        assert!(entries.iter().any(|(w, _)| w.as_ptr() == newest));
    }
}
