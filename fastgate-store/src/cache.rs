//! The key cache in front of lookups, the resolver port, and batched usage counting.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use fastgate_layer::{KeyIdentity, KeyResolver, PresentedKey, ResolveError};

use crate::keys::{decode_permissions, hash_key, lookup_hash};
use crate::{Counters, Store, StoreError, from_ms, to_ms};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the maps inconsistent (single inserts/removes).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone, Debug)]
struct Entry {
    identity: KeyIdentity,
    fetched: Instant,
    /// End of the rotation grace period for this hash; `None` = current secret.
    valid_until: Option<SystemTime>,
    /// Set when change notifications may have been missed: the entry must be re-validated, but
    /// is still served if the database cannot answer.
    stale: bool,
    /// The database knows this hash but refuses it: the key is disabled, or this is a rotated-out
    /// secret past its grace period. Answered `Refused` (with the identity, for the audit record)
    /// without a query while fresh; kept in this map (not in `unknown`) so that every invalidation of the key
    /// (re-enabling it, here or on another instance) drops it.
    rejected: bool,
}

/// Resolved keys by SHA-256 hash.
#[derive(Debug)]
pub(crate) struct KeyCache {
    map: Mutex<HashMap<String, Entry>>,
    /// Bumped by every invalidation; a lookup that raced with one does not fill the cache.
    generation: AtomicU64,
    capacity: usize,
    /// Until when stale entries are served without asking the database (after a failure).
    db_failed_until: Mutex<Option<Instant>>,
    /// Lookups re-validating a stale entry, by key hash, with when each began ([`ProbeGuard`]).
    /// One per key at a time: other requests for that key get its stale entry meanwhile (a
    /// lookup's time, normally). A lookup in flight longer than [`SLOW_PROBE`] means the
    /// database is not answering: until it ends, every stale entry is served as it is, instead
    /// of each waiting for the pool's acquire timeout before `db_failed_until` is set.
    probing: Mutex<HashMap<String, Instant>>,
    /// Hashes the database did not know, with when that was seen. Safe to cache: a generated
    /// secret cannot be presented before it exists (256 random bits). An imported key's secret
    /// can (a client of the old gateway may try it before the import), so an import here, and
    /// any change seen from another instance (which may be an import), empties this map. Disabled keys
    /// are not in here but in `map` as rejected entries, which their key's invalidations reach.
    unknown: Mutex<HashMap<String, Instant>>,
}

impl KeyCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            capacity: capacity.max(1),
            db_failed_until: Mutex::new(None),
            probing: Mutex::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
        }
    }

    fn is_known_unknown(&self, hash: &str, ttl: std::time::Duration) -> bool {
        lock(&self.unknown)
            .get(hash)
            .is_some_and(|seen| seen.elapsed() < ttl)
    }

    /// Remember `hash` as unknown, unless an invalidation or [`forget_unknown`](Self::forget_unknown)
    /// happened since the lookup began (`generation`): the answer may predate an import.
    fn remember_unknown(&self, hash: &str, ttl: std::time::Duration, generation: u64) {
        let mut map = lock(&self.unknown);
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if map.len() >= self.capacity {
            map.retain(|_, seen| seen.elapsed() < ttl);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(hash.to_owned(), Instant::now());
    }

    fn get(&self, hash: &str) -> Option<Entry> {
        lock(&self.map).get(hash).cloned()
    }

    fn insert(&self, hash: String, entry: Entry, generation: u64, ttl: std::time::Duration) {
        let mut map = lock(&self.map);
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if map.len() >= self.capacity && !map.contains_key(&hash) {
            let now = Instant::now();
            map.retain(|_, e| now.duration_since(e.fetched) < ttl);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(hash, entry);
    }

    fn remove(&self, hash: &str) {
        lock(&self.map).remove(hash);
    }

    /// Drop every entry of one key.
    pub(crate) fn invalidate_key(&self, key_id: &str) {
        let mut map = lock(&self.map);
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.retain(|_, e| &*e.identity.key_id != key_id);
    }

    /// Forget every hash remembered as unknown (a key with an existing secret was imported).
    /// Bumps the generation under the same lock, so a lookup that began before cannot put its
    /// stale "unknown" back.
    pub(crate) fn forget_unknown(&self) {
        let mut unknown = lock(&self.unknown);
        self.generation.fetch_add(1, Ordering::AcqRel);
        unknown.clear();
    }

    /// Keep every entry, but make the next lookup of each ask the database (serving the entry
    /// only if the database fails).
    pub(crate) fn mark_stale(&self) {
        let mut map = lock(&self.map);
        self.generation.fetch_add(1, Ordering::AcqRel);
        for e in map.values_mut() {
            e.stale = true;
        }
        lock(&self.unknown).clear();
    }

    /// Drop everything.
    pub(crate) fn clear(&self) {
        let mut map = lock(&self.map);
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.clear();
        lock(&self.unknown).clear();
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

/// Usage accumulated in memory until the next flush: key id → (count, last use in unix ms).
#[derive(Debug, Default)]
pub(crate) struct UsageBuffer {
    map: Mutex<HashMap<Arc<str>, (u64, i64)>>,
}

impl UsageBuffer {
    /// Count a use of `identity` at `wall`, unless the key has expired by then: its request is
    /// refused (401 `expired_api_key`), as a disabled key's is, and neither counts as a use.
    fn record_use(&self, identity: &KeyIdentity, wall: SystemTime) {
        if identity.expires_at.is_some_and(|t| t <= wall) {
            return;
        }
        self.record(&identity.key_id, to_ms(wall));
    }

    fn record(&self, key_id: &Arc<str>, at_ms: i64) {
        let mut map = lock(&self.map);
        let e = map.entry(Arc::clone(key_id)).or_insert((0, at_ms));
        e.0 += 1;
        e.1 = e.1.max(at_ms);
    }

    pub(crate) fn pending(&self, key_id: &str) -> Option<(u64, i64)> {
        lock(&self.map).get(key_id).copied()
    }

    pub(crate) fn forget(&self, key_id: &str) {
        lock(&self.map).remove(key_id);
    }

    fn take(&self) -> HashMap<Arc<str>, (u64, i64)> {
        std::mem::take(&mut *lock(&self.map))
    }

    /// A copy of what is pending, ordered by key id.
    pub(crate) fn snapshot(&self) -> Vec<(Arc<str>, (u64, i64))> {
        let mut rows: Vec<_> = lock(&self.map)
            .iter()
            .map(|(id, &v)| (Arc::clone(id), v))
            .collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Add `batch` back (counts added, the later time kept).
    pub(crate) fn restore(&self, batch: HashMap<Arc<str>, (u64, i64)>) {
        let mut map = lock(&self.map);
        for (k, (n, at)) in batch {
            let e = map.entry(k).or_insert((0, at));
            e.0 += n;
            e.1 = e.1.max(at);
        }
    }
}

/// [`KeyResolver`] backed by the store, with the TTL cache. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StoreKeyResolver {
    store: Store,
}

impl KeyResolver for StoreKeyResolver {
    type Future = ResolveFuture;

    fn resolve(&self, key: PresentedKey) -> Self::Future {
        // Hash right away: the secret goes no further.
        let hash = hash_key(key.expose());
        drop(key);
        // A cache hit (or a known-unknown key) is answered without boxing a future.
        match self.store.resolve_cached(&hash) {
            Cached::Done(result) => ResolveFuture {
                inner: ResolveInner::Ready(Some(result)),
            },
            Cached::Miss(miss) => {
                let store = self.store.clone();
                ResolveFuture {
                    inner: ResolveInner::Lookup(Box::pin(async move {
                        store.resolve_uncached(&hash, miss).await
                    })),
                }
            }
        }
    }
}

/// Future of [`StoreKeyResolver::resolve`]: ready at once on a cache hit, a database lookup
/// otherwise.
pub struct ResolveFuture {
    inner: ResolveInner,
}

enum ResolveInner {
    Ready(Option<Result<KeyIdentity, ResolveError>>),
    Lookup(Pin<Box<dyn Future<Output = Result<KeyIdentity, ResolveError>> + Send>>),
}

impl std::fmt::Debug for ResolveFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolveFuture").finish_non_exhaustive()
    }
}

impl Future for ResolveFuture {
    type Output = Result<KeyIdentity, ResolveError>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.get_mut().inner {
            ResolveInner::Ready(result) => std::task::Poll::Ready(
                result
                    .take()
                    .expect("ResolveFuture polled after completion"),
            ),
            ResolveInner::Lookup(fut) => fut.as_mut().poll(cx),
        }
    }
}

/// What the cache alone can say about a key hash.
enum Cached {
    /// The answer (hit, known-unknown key, or the database is known to be failing).
    Done(Result<KeyIdentity, ResolveError>),
    /// The database must be asked; carries what the cache knew.
    Miss(Miss),
}

/// State carried from the cache check to the database lookup.
struct Miss {
    cached: Option<Entry>,
    now: Instant,
    wall: SystemTime,
    /// Held while re-validating a stale entry; released when the lookup ends or is dropped.
    probe: Option<ProbeGuard>,
}

/// How long a re-validating lookup may take before the database counts as not answering.
const SLOW_PROBE: std::time::Duration = std::time::Duration::from_millis(250);

/// The in-flight re-validation of one key's stale entry (`KeyCache::probing`); removed when
/// dropped, also when the lookup's future is dropped before it ends.
struct ProbeGuard {
    store: Store,
    hash: String,
}

impl ProbeGuard {
    /// This request re-validates `hash` (`Some`), or its stale entry is served (`None`): the
    /// key's own lookup is in flight, or some lookup has been for longer than [`SLOW_PROBE`].
    fn acquire(store: &Store, hash: &str, now: Instant) -> Option<Self> {
        let mut probing = lock(&store.inner.cache.probing);
        if probing.contains_key(hash)
            || probing
                .values()
                .any(|began| now.saturating_duration_since(*began) >= SLOW_PROBE)
        {
            return None;
        }
        probing.insert(hash.to_owned(), now);
        Some(Self {
            store: store.clone(),
            hash: hash.to_owned(),
        })
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        lock(&self.store.inner.cache.probing).remove(&self.hash);
    }
}

impl Store {
    /// The [`KeyResolver`] for the auth layer.
    pub fn key_resolver(&self) -> StoreKeyResolver {
        StoreKeyResolver {
            store: self.clone(),
        }
    }

    /// Resolve a presented key (what [`StoreKeyResolver`] does), for CLI tools and tests.
    pub async fn resolve_key(&self, secret: &str) -> Result<KeyIdentity, ResolveError> {
        self.resolve_hash(&hash_key(secret)).await
    }

    async fn resolve_hash(&self, hash: &str) -> Result<KeyIdentity, ResolveError> {
        match self.resolve_cached(hash) {
            Cached::Done(result) => result,
            Cached::Miss(miss) => self.resolve_uncached(hash, miss).await,
        }
    }

    /// The cache's answer for `hash`, if it has one (counted as a hit, negative hit or stale
    /// serve); otherwise what the database lookup needs.
    fn resolve_cached(&self, hash: &str) -> Cached {
        let inner = &self.inner;
        let ttl = inner.opts.cache_ttl;
        let now = Instant::now();
        let wall = SystemTime::now();
        let cached = if ttl.is_zero() {
            None
        } else {
            inner.cache.get(hash)
        };
        let cached = match cached {
            // A secret whose grace period ended while cached: ask the database (which then
            // caches it as rejected).
            Some(e) if !e.rejected && e.valid_until.is_some_and(|t| t <= wall) => {
                inner.cache.remove(hash);
                None
            }
            other => other,
        };
        if !ttl.is_zero() && cached.is_none() && inner.cache.is_known_unknown(hash, ttl) {
            Counters::add(&inner.counters.negative_hits, 1);
            return Cached::Done(Err(ResolveError::Invalid));
        }
        let db_failing = lock(&inner.cache.db_failed_until).is_some_and(|until| now < until);
        let mut probe = None;
        if let Some(e) = &cached {
            let fresh = !e.stale && now.duration_since(e.fetched) < ttl;
            // A stale entry is re-validated by one lookup per key at a time: meanwhile that
            // key's other requests get its entry, and so does every stale key once a lookup has
            // hung for SLOW_PROBE (a database that does not answer), as after a failed lookup.
            let serve = fresh
                || db_failing
                || match ProbeGuard::acquire(self, hash, now) {
                    Some(guard) => {
                        probe = Some(guard);
                        false
                    }
                    None => true,
                };
            if serve {
                if e.rejected {
                    Counters::add(&inner.counters.negative_hits, 1);
                    return Cached::Done(Err(ResolveError::Refused(e.identity.clone())));
                }
                Counters::add(
                    if fresh {
                        &inner.counters.cache_hits
                    } else {
                        &inner.counters.stale_served
                    },
                    1,
                );
                inner.usage.record_use(&e.identity, wall);
                return Cached::Done(Ok(e.identity.clone()));
            }
        }
        if db_failing && cached.is_none() {
            // The database failed moments ago: answer at once rather than queue every unknown
            // key behind the pool's acquire timeout. One lookup per interval probes it again.
            return Cached::Done(Err(ResolveError::Unavailable(Box::new(
                StoreError::Unavailable,
            ))));
        }
        Cached::Miss(Miss {
            cached,
            now,
            wall,
            probe,
        })
    }

    /// Ask the database about `hash` (after [`Self::resolve_cached`] had no answer).
    async fn resolve_uncached(&self, hash: &str, miss: Miss) -> Result<KeyIdentity, ResolveError> {
        let Miss {
            cached,
            now,
            wall,
            probe: _probe,
        } = miss;
        let inner = &self.inner;
        let ttl = inner.opts.cache_ttl;
        Counters::add(&inner.counters.cache_misses, 1);
        let generation = inner.cache.generation.load(Ordering::Acquire);
        // Bounded: a connection that hangs mid-query must fail the lookup like an unreachable
        // database does (the pool's acquire timeout covers only getting a connection).
        let looked_up =
            tokio::time::timeout(inner.opts.acquire_timeout, lookup_hash(&inner.db, hash))
                .await
                .unwrap_or(Err(StoreError::Unavailable));
        match looked_up {
            Ok(Some(row)) => {
                let valid_until = row.valid_until.map(from_ms);
                if !row.active || valid_until.is_some_and(|t| t <= wall) {
                    // Refused, but named (for the audit record); remembered, so that a client
                    // retrying with a disabled or rotated-out key does not cost a query per
                    // request.
                    let identity = KeyIdentity {
                        key_id: row.id.into(),
                        source_path: row.source_path.into(),
                        permissions: Arc::new([]),
                        expires_at: None,
                    };
                    if ttl.is_zero() {
                        inner.cache.remove(hash);
                    } else {
                        let entry = Entry {
                            identity: identity.clone(),
                            fetched: now,
                            valid_until,
                            stale: false,
                            rejected: true,
                        };
                        inner.cache.insert(hash.to_owned(), entry, generation, ttl);
                    }
                    *lock(&inner.cache.db_failed_until) = None;
                    return Err(ResolveError::Refused(identity));
                }
                let permissions = decode_permissions(&row.permissions)
                    .map_err(|e| ResolveError::Unavailable(Box::new(e)))?;
                let identity = KeyIdentity {
                    key_id: row.id.into(),
                    source_path: row.source_path.into(),
                    permissions: permissions.into(),
                    expires_at: row.expires_at.map(from_ms),
                };
                if !ttl.is_zero() {
                    let entry = Entry {
                        identity: identity.clone(),
                        fetched: now,
                        valid_until,
                        stale: false,
                        rejected: false,
                    };
                    inner.cache.insert(hash.to_owned(), entry, generation, ttl);
                }
                *lock(&inner.cache.db_failed_until) = None;
                inner.usage.record_use(&identity, wall);
                Ok(identity)
            }
            Ok(None) => {
                inner.cache.remove(hash);
                if !ttl.is_zero() {
                    inner.cache.remember_unknown(hash, ttl, generation);
                }
                Err(ResolveError::Invalid)
            }
            Err(err) => {
                Counters::add(&inner.counters.lookup_errors, 1);
                *lock(&inner.cache.db_failed_until) =
                    Some(Instant::now() + inner.opts.stale_retry_interval);
                match cached {
                    // Last known state: refused. Keep refusing while the database is down (the
                    // lookup was attempted, so this is a miss and an error, not a negative hit).
                    Some(e) if e.rejected => Err(ResolveError::Refused(e.identity)),
                    Some(e) => {
                        tracing::warn!(key_id = %e.identity.key_id, error = %fastgate_layer::ErrorChain(&err), "key lookup failed; serving cached identity");
                        Counters::add(&inner.counters.stale_served, 1);
                        inner.usage.record_use(&e.identity, wall);
                        Ok(e.identity)
                    }
                    None => {
                        tracing::warn!(error = %fastgate_layer::ErrorChain(&err), "key lookup failed");
                        Err(ResolveError::Unavailable(Box::new(err)))
                    }
                }
            }
        }
    }

    /// Drop a key from this instance's cache (done by every change made through this store).
    pub fn invalidate_key(&self, key_id: &str) {
        Counters::add(&self.inner.counters.invalidations, 1);
        self.inner.cache.invalidate_key(key_id);
    }

    /// Re-validate every cached key on its next use, but keep serving the cached identity while
    /// the database cannot answer (used when change notifications may have been missed).
    pub fn expire_all(&self) {
        Counters::add(&self.inner.counters.invalidations, 1);
        self.inner.cache.mark_stale();
    }

    /// Drop the whole key cache.
    pub fn invalidate_all(&self) {
        Counters::add(&self.inner.counters.invalidations, 1);
        self.inner.cache.clear();
    }

    /// Key hashes currently cached: valid keys and refused ones (disabled, rotated out).
    pub fn cached_keys(&self) -> usize {
        self.inner.cache.len()
    }

    /// Write accumulated usage (`request_count`, `last_used_at`) in one transaction. On failure
    /// the counts are kept for the next flush, also when the future is dropped before the commit
    /// (dropped during the commit, its batch is forgotten: it may have been written). Counts
    /// loaded from the usage file ([`Store::keep_usage_in`]) are in the batch: the file is
    /// removed (or emptied) inside the transaction, just before the commit; if it can be neither,
    /// the transaction is rolled back and the other counts are written in a second one, the
    /// file's held back (see the [`usage_file`](crate::usage_file) docs). On PostgreSQL a row
    /// locked by another transaction is waited for at most [`USAGE_FLUSH_LOCK_TIMEOUT`]. Returns
    /// how many keys were updated.
    pub async fn flush_usage(&self) -> Result<usize, StoreError> {
        // One flush at a time: the usage file is removed by the flush that writes its counts.
        let mut file = self.inner.usage_file.lock().await;
        let batch = self.inner.usage.take();
        if batch.is_empty() {
            return Ok(0);
        }
        let mut in_flight = InFlight {
            usage: &self.inner.usage,
            batch: Some(batch),
        };
        let mut result = self.write_usage(&mut in_flight, file.as_mut()).await;
        if let (Err(FlushError::File(error)), Some(f)) = (&result, file.as_mut()) {
            // Rolled back before the commit: the whole batch is still in flight. The file's
            // counts stay in memory (and in the file); every other count is written.
            Counters::add(&self.inner.counters.usage_file_errors, 1);
            let batch = in_flight.batch.take().unwrap_or_default();
            let (rest, held) = f.hold_back(batch, error);
            self.inner.usage.restore(held);
            result = if rest.is_empty() {
                Ok(0)
            } else {
                in_flight.batch = Some(rest);
                self.write_usage(&mut in_flight, None).await
            };
        }
        drop(in_flight); // a batch not yet committing goes back
        match result {
            Ok(keys) => Ok(keys),
            Err(e) => {
                Counters::add(&self.inner.counters.usage_flush_errors, 1);
                Err(match e {
                    FlushError::Database(e) => e.into(),
                    FlushError::File(e) => e.into(),
                })
            }
        }
    }

    /// One flush transaction: the batch in flight, and the removal of `file` when given.
    /// Returns how many keys were updated.
    async fn write_usage(
        &self,
        in_flight: &mut InFlight<'_>,
        mut file: Option<&mut crate::UsageFile>,
    ) -> Result<usize, FlushError> {
        // In key-id order: another instance flushing the same keys at the same time locks the
        // rows in the same order (in hash-map order, the two deadlocked on PostgreSQL).
        let rows = in_flight
            .batch
            .as_ref()
            .map(sorted_usage)
            .unwrap_or_default();
        const SQL: &str = "UPDATE api_keys SET request_count = request_count + $1, \
             last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < $2 THEN $2 ELSE last_used_at END \
             WHERE id = $3";
        on_pool!(&self.inner.db, |pool| {
            async {
                let mut tx = pool.begin().await?;
                if matches!(self.inner.db, crate::Db::Postgres(_)) {
                    // A row locked by another transaction (an admin's, another instance's)
                    // fails the flush after this wait, its counts kept, instead of holding it
                    // (and the counts) for as long as that transaction lasts. On SQLite the
                    // busy timeout bounds the wait.
                    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
                        .bind(USAGE_FLUSH_LOCK_TIMEOUT.as_millis().to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                for &(ref id, (count, last)) in &rows {
                    sqlx::query(SQL)
                        .bind(crate::to_i64(count))
                        .bind(last)
                        .bind(&**id)
                        .execute(&mut *tx)
                        .await?;
                }
                // The database answers: the file's counts are in this transaction, so the file
                // goes now. A crash before the commit loses them, as a crash loses the counts in
                // memory; after the commit, a file still there would count them twice.
                if let Some(file) = file.as_deref_mut()
                    && file.forget_counts().await? == crate::usage_file::Forgotten::Emptied
                {
                    Counters::add(&self.inner.counters.usage_file_errors, 1);
                }
                let batch = in_flight.batch.take();
                if let Err(e) = tx.commit().await {
                    if let Some(batch) = batch {
                        self.inner.usage.restore(batch);
                    }
                    return Err(e.into());
                }
                if let Some(file) = file {
                    file.written();
                }
                Ok(rows.len())
            }
            .await
        })
    }
}

/// Longest a usage flush waits for a row lock on PostgreSQL (`lock_timeout`, for its
/// transaction only): past it the flush fails and keeps its counts for the next one.
pub const USAGE_FLUSH_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a usage flush failed.
enum FlushError {
    Database(sqlx::Error),
    File(crate::UsageFileError),
}

impl From<sqlx::Error> for FlushError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

impl From<crate::UsageFileError> for FlushError {
    fn from(e: crate::UsageFileError) -> Self {
        Self::File(e)
    }
}

/// The batch of a flush until its commit begins: put back into the buffer if the flush fails or
/// its future is dropped before then.
struct InFlight<'a> {
    usage: &'a UsageBuffer,
    batch: Option<HashMap<Arc<str>, (u64, i64)>>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            self.usage.restore(batch);
        }
    }
}

/// The usage rows of one flush, ordered by key id (the order their rows are updated in).
fn sorted_usage(batch: &HashMap<Arc<str>, (u64, i64)>) -> Vec<(Arc<str>, (u64, i64))> {
    let mut rows: Vec<_> = batch.iter().map(|(id, &v)| (Arc::clone(id), v)).collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    rows
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A new key of `source_path` with the `chat` permission, never expiring.
    fn chat_key(source_path: &str) -> crate::NewKey {
        crate::NewKey {
            source_path: source_path.to_owned(),
            permissions: vec!["chat".to_owned()],
            expires_at: None,
            name: None,
        }
    }

    /// A database that does not answer (every pooled connection taken, as when it hangs): a
    /// stale key's other requests are answered from its entry while its one lookup waits, and
    /// once that lookup has hung for SLOW_PROBE, every stale key is (instead of each request
    /// waiting for the pool's acquire timeout).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_keys_are_served_at_once_while_one_lookup_probes_a_hanging_database() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("fastgate.db").display());
        let store = Store::connect(
            &url,
            crate::StoreOptions {
                cache_ttl: std::time::Duration::from_millis(50),
                max_connections: 2,
                acquire_timeout: std::time::Duration::from_secs(1),
                ..crate::StoreOptions::default()
            },
        )
        .await
        .unwrap();
        let mut secrets = Vec::new();
        for i in 0..4 {
            let key = store
                .create_key(chat_key(&format!("user{i}")))
                .await
                .unwrap();
            store.resolve_key(&key.secret).await.unwrap();
            secrets.push(key.secret);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await; // all stale now
        let crate::Db::Sqlite(pool) = &store.inner.db else {
            unreachable!()
        };
        let held = [pool.acquire().await.unwrap(), pool.acquire().await.unwrap()];

        let resolver = store.key_resolver();
        let spawn = |secret: String| {
            let resolver = resolver.clone();
            tokio::spawn(async move {
                let start = std::time::Instant::now();
                let key = fastgate_layer::PresentedKey::parse(&secret).unwrap();
                let result = resolver.resolve(key).await;
                (result.is_ok(), start.elapsed())
            })
        };
        // Five requests for one key at once: one lookup, the others served its entry.
        let first: Vec<_> = (0..5).map(|_| spawn(secrets[0].clone())).collect();
        // Once that lookup has hung for longer than SLOW_PROBE, the other keys are served too.
        tokio::time::sleep(SLOW_PROBE + std::time::Duration::from_millis(50)).await;
        let later: Vec<_> = (0..15).map(|i| spawn(secrets[1 + i % 3].clone())).collect();
        let mut slow = 0;
        for task in first.into_iter().chain(later) {
            let (ok, took) = task.await.unwrap();
            assert!(ok, "a stale key is served");
            if took >= std::time::Duration::from_millis(500) {
                slow += 1;
            } else {
                assert!(took < std::time::Duration::from_millis(200), "{took:?}");
            }
        }
        assert_eq!(slow, 1, "requests that waited for the database");
        assert!(store.stats().lookup_errors <= 1);
        assert!(store.stats().stale_served >= 19);

        // The database answers again: the next lookup after the retry interval re-validates.
        drop(held);
        tokio::time::sleep(store.options().stale_retry_interval).await;
        let misses = store.stats().cache_misses;
        store.resolve_key(&secrets[0]).await.unwrap();
        assert_eq!(store.stats().cache_misses, misses + 1);
        assert!(lock(&store.inner.cache.probing).is_empty());
        store.close().await;
    }

    /// On a database that answers, a stale key is re-validated by its own next request, whatever
    /// other keys' lookups are in flight: a key disabled meanwhile is refused at once.
    #[tokio::test]
    async fn a_stale_key_is_not_served_because_another_keys_lookup_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("fastgate.db").display());
        let store = Store::connect(&url, crate::StoreOptions::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let key = store.create_key(chat_key("u")).await.unwrap();
        store.resolve_key(&key.secret).await.unwrap();
        // Disabled behind the cache's back (as by another process), then every entry marked
        // for re-reading (as the watermark poll does), with another key's lookup in flight.
        let crate::Db::Sqlite(pool) = &store.inner.db else {
            unreachable!()
        };
        sqlx::query("UPDATE api_keys SET active = 0 WHERE id = $1")
            .bind(&key.record.id)
            .execute(pool)
            .await
            .unwrap();
        store.expire_all();
        let other = ProbeGuard::acquire(&store, "another-key-hash", Instant::now());
        assert!(other.is_some());
        assert!(
            store.resolve_key(&key.secret).await.is_err(),
            "a disabled key was served"
        );
        drop(other);
        store.close().await;
    }

    #[test]
    fn usage_rows_are_flushed_in_key_id_order() {
        let buffer = UsageBuffer::default();
        let ids: Vec<Arc<str>> = (0..100)
            .map(|i| Arc::from(format!("k_{:03}", (i * 37) % 100)))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            buffer.record(id, i64::try_from(i).unwrap());
        }
        let batch = buffer.take();
        let rows = sorted_usage(&batch);
        assert_eq!(rows.len(), 100);
        assert!(rows.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
