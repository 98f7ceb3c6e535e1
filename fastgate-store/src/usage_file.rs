//! [`UsageFile`]: key usage counts kept on disk across a stop while the database cannot take them.
//!
//! Usage (`request_count`, `last_used_at`) is counted in memory and written by
//! [`Store::flush_usage`]; a flush that fails keeps the counts for the next one. Without a usage
//! file, the counts still waiting when the process stops are lost. With one
//! ([`Store::keep_usage_in`]), the final flush of [`Store::background`] that fails writes them
//! to the file instead ([`Store::save_pending_usage`]), and the next process to open that file
//! adds them to its own counts and writes them with its first flush that reaches the database.
//!
//! The file holds key ids, counts and times (unix milliseconds), no secret:
//! `{"fastgate_key_usage":1,"keys":[{"id":"…","count":3,"last_used_at":1700000000000}]}`.
//! It is written whole or not at all (a `<file>.tmp` of mode 0600, `fsync`ed, renamed over the
//! file, the directory `fsync`ed), and locked (`<file>.lock`) by one process at a time.
//!
//! Exactly once, or lost as a crash loses counts, never twice: while the file exists, the
//! counts in it are also in the store's memory. A flush removes the file (and `fsync`s the
//! directory) inside its transaction, after every row is updated and before the commit. So a
//! flush that fails before that point leaves the file in place (a crash then loses nothing), one
//! that fails at the commit has its counts back in memory (saved again at the stop), and only a
//! crash between the removal and the commit loses them, as a crash loses the counts in memory.
//! A count is never both in the database and in the file. A file that cannot be read or parsed
//! is renamed to `<file>.bad` (a warning names it) and the store starts without its counts.
//!
//! A file that cannot be removed (its directory made read-only) is emptied in place instead
//! (truncated to no bytes and `fsync`ed, which needs only the file to be writable; an empty file
//! holds no counts). One that can be neither removed nor emptied holds its counts back: each
//! flush then writes every other count, and keeps the file's (in memory, and still in the file)
//! until a flush can remove or empty it, or the next process loads them. Either way a warning
//! names the file, and [`StoreStats::usage_file_errors`](crate::StoreStats::usage_file_errors)
//! counts those flushes: usage keeps reaching the database, and the file's counts are written
//! once (before, every flush failed on the file and no usage was written again).
//!
//! Several instances sharing one PostgreSQL database each keep their own file: the counts are
//! increments, so whichever instance loads a file adds them rightly. A key deleted meanwhile
//! updates no row, and its count is dropped.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Store;

/// Usage counts by key id: (count, last use in unix ms).
type Counts = HashMap<Arc<str>, (u64, i64)>;

/// The format version written in the file.
const FORMAT: u32 = 1;

/// Errors of a [`UsageFile`]. Messages name the file, never a key's secret (the file holds none).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageFileError {
    /// The file could be neither removed nor emptied after its counts were written (see the
    /// [module docs](self)): the flush holds its counts back.
    #[error("key usage file {path:?} can be neither removed ({remove}) nor emptied ({empty})")]
    Stuck {
        /// The usage file.
        path: PathBuf,
        /// Why it could not be removed.
        remove: io::Error,
        /// Why it could not be emptied in place.
        empty: io::Error,
    },
    /// Another process holds the file's lock (`<file>.lock`).
    #[error("key usage file {path:?} is in use by another process")]
    Busy {
        /// The usage file.
        path: PathBuf,
    },
    /// Reading, writing or removing the file failed.
    #[error("key usage file {path:?}: {error}")]
    Io {
        /// The file that could not be used (the usage file, its lock, temporary or `.bad` file).
        path: PathBuf,
        /// What failed.
        error: io::Error,
    },
    /// The store already keeps its usage in a file.
    #[error("this store already keeps its key usage in a file")]
    AlreadySet,
}

impl UsageFileError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |error| Self::Io {
            path: path.to_owned(),
            error,
        }
    }
}

/// The file that keeps a store's usage counts across a stop (see the [module docs](self)).
#[derive(Debug)]
pub struct UsageFile {
    path: PathBuf,
    tmp_path: PathBuf,
    /// Held locked for the file's life: one process per usage file.
    _lock: std::fs::File,
    /// The file exists and its counts are in the store's memory.
    holds_counts: bool,
    /// The counts the file holds (while `holds_counts`).
    counts: Counts,
    /// The last flush could not remove or empty the file and held its counts back.
    held_back: bool,
}

/// How [`UsageFile::forget_counts`] made the file's counts go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forgotten {
    /// It held none, or was removed.
    Removed,
    /// It could not be removed and was emptied in place.
    Emptied,
}

/// `path` with `suffix` added to its name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// What the file holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    fastgate_key_usage: u32,
    keys: Vec<SavedKey>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedKey {
    id: String,
    count: u64,
    last_used_at: i64,
}

/// Why a file's content could not be used.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("unreadable: {0}")]
    Read(io::Error),
    #[error("not a key usage file: {0}")]
    Parse(serde_json::Error),
    #[error("format version {0} is not known to this binary")]
    Version(u32),
    #[error("a key with an empty id")]
    EmptyId,
}

/// Counts of keys and requests, as saved or loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageTotals {
    /// Keys with a count.
    pub keys: usize,
    /// Requests counted, over all those keys.
    pub requests: u64,
}

impl UsageTotals {
    fn of<'a>(counts: impl IntoIterator<Item = &'a (u64, i64)>) -> Self {
        counts.into_iter().fold(Self::default(), |t, &(n, _)| Self {
            keys: t.keys + 1,
            requests: t.requests.saturating_add(n),
        })
    }
}

impl UsageFile {
    /// Lock the usage file at `path` (`<path>.lock` is created, mode 0600, and held until this is
    /// dropped; a second process gets [`UsageFileError::Busy`]). Nothing is read yet: the counts
    /// a file holds are loaded by [`Store::keep_usage_in`].
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, UsageFileError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = path.into();
        let lock_path = sibling(&path, ".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(UsageFileError::io(&lock_path))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => UsageFileError::Busy { path: path.clone() },
            std::fs::TryLockError::Error(error) => UsageFileError::Io {
                path: lock_path.clone(),
                error,
            },
        })?;
        let tmp_path = sibling(&path, ".tmp");
        // A write cut by a crash: the file itself is whole (the old one, or none).
        match std::fs::remove_file(&tmp_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(UsageFileError::io(&tmp_path)(e)),
        }
        Ok(Self {
            path,
            tmp_path,
            _lock: lock,
            holds_counts: false,
            counts: HashMap::new(),
            held_back: false,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The counts in the file; an empty map when there is no file.
    async fn read(&self) -> Result<HashMap<Arc<str>, (u64, i64)>, Unusable> {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(Unusable::Read(e)),
        };
        if bytes.is_empty() {
            // Emptied in place by a flush that could not remove it.
            return Ok(HashMap::new());
        }
        let saved: Saved = serde_json::from_slice(&bytes).map_err(Unusable::Parse)?;
        if saved.fastgate_key_usage != FORMAT {
            return Err(Unusable::Version(saved.fastgate_key_usage));
        }
        let mut counts = HashMap::with_capacity(saved.keys.len());
        for key in saved.keys {
            if key.id.is_empty() {
                return Err(Unusable::EmptyId);
            }
            if key.count == 0 {
                continue;
            }
            let e = counts
                .entry(Arc::from(key.id))
                .or_insert((0u64, key.last_used_at));
            e.0 = e.0.saturating_add(key.count);
            e.1 = e.1.max(key.last_used_at);
        }
        Ok(counts)
    }

    /// Move an unusable file aside: `<file>.bad`, or `<file>.bad.<n>` when that is taken.
    async fn set_aside(&self) -> Result<PathBuf, UsageFileError> {
        let mut bad = sibling(&self.path, ".bad");
        let mut n = 1u32;
        while tokio::fs::try_exists(&bad).await.unwrap_or(false) && n < 1000 {
            bad = sibling(&self.path, &format!(".bad.{n}"));
            n += 1;
        }
        tokio::fs::rename(&self.path, &bad)
            .await
            .map_err(UsageFileError::io(&self.path))?;
        self.sync_dir().await?;
        Ok(bad)
    }

    /// Replace the file with `rows` (whole or not at all).
    async fn save(&mut self, rows: &[(Arc<str>, (u64, i64))]) -> Result<(), UsageFileError> {
        use tokio::io::AsyncWriteExt as _;
        let saved = Saved {
            fastgate_key_usage: FORMAT,
            keys: rows
                .iter()
                .map(|(id, (count, last))| SavedKey {
                    id: id.to_string(),
                    count: *count,
                    last_used_at: *last,
                })
                .collect(),
        };
        let mut bytes = serde_json::to_vec(&saved).map_err(|e| UsageFileError::Io {
            path: self.path.clone(),
            error: io::Error::other(e),
        })?;
        bytes.push(b'\n');
        let written = async {
            // Created fresh, so that its mode is 0600 whatever an earlier file had.
            match tokio::fs::remove_file(&self.tmp_path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&self.tmp_path)
                .await?;
            file.write_all(&bytes).await?;
            // tokio's `File` writes in the background: a failed write is reported by `flush`.
            file.flush().await?;
            file.sync_all().await
        }
        .await;
        if let Err(error) = written {
            let _ = tokio::fs::remove_file(&self.tmp_path).await;
            return Err(UsageFileError::Io {
                path: self.tmp_path.clone(),
                error,
            });
        }
        tokio::fs::rename(&self.tmp_path, &self.path)
            .await
            .map_err(UsageFileError::io(&self.path))?;
        self.holds_counts = true;
        self.counts = rows.iter().map(|(id, v)| (Arc::clone(id), *v)).collect();
        self.sync_dir().await
    }

    /// Remove the file if it holds counts (they are being written to the database); one that
    /// cannot be removed is emptied in place instead. An error means that the file may still
    /// hold its counts: they must not be written ([`UsageFileError::Stuck`] when neither worked).
    pub(crate) async fn forget_counts(&mut self) -> Result<Forgotten, UsageFileError> {
        if !self.holds_counts {
            return Ok(Forgotten::Removed);
        }
        let how = match tokio::fs::remove_file(&self.path).await {
            Ok(()) => Forgotten::Removed,
            // Removed by an earlier try whose future was dropped before it learnt so.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Forgotten::Removed,
            Err(remove) => {
                // A read-only directory: the file itself may still be writable. No bytes is no
                // counts (`read`), and a truncation is whole or not at all.
                if let Err(empty) = self.empty_in_place().await {
                    return Err(UsageFileError::Stuck {
                        path: self.path.clone(),
                        remove,
                        empty,
                    });
                }
                tracing::warn!(
                    path = %self.path.display(),
                    error = %remove,
                    "key usage file could not be removed after its counts were written; emptied it in place instead (remove it, or make its directory writable)"
                );
                Forgotten::Emptied
            }
        };
        if how == Forgotten::Removed
            && let Err(e) = self.sync_dir().await
        {
            // The removal should be on disk before the commit: after a power cut, a file that
            // came back would be counted again. But the file is gone: holding its counts back
            // now would lose them at the stop (nothing would save them again).
            tracing::warn!(error = %e, "key usage file removed, but its directory could not be synced; a power cut before the next sync could bring it back");
        }
        self.holds_counts = false;
        self.counts.clear();
        Ok(how)
    }

    /// Truncate the file to no bytes, durably.
    async fn empty_in_place(&self) -> io::Result<()> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .await?;
        file.set_len(0).await?;
        file.sync_all().await
    }

    /// Split a flush's `batch` (which holds the file's counts: they are in memory while the file
    /// holds them) into what may be written now and the file's counts, held back because the
    /// file could not be removed or emptied after `error`. Logs the first time in a row.
    pub(crate) fn hold_back(
        &mut self,
        mut batch: Counts,
        error: &UsageFileError,
    ) -> (Counts, Counts) {
        let mut held = HashMap::new();
        if self.holds_counts {
            for (id, &(count, last)) in &self.counts {
                let Some(entry) = batch.get_mut(id) else {
                    continue; // a key deleted meanwhile: its count was dropped from memory
                };
                let n = count.min(entry.0);
                entry.0 -= n;
                if n > 0 {
                    held.insert(Arc::clone(id), (n, last));
                }
            }
            batch.retain(|_, (count, _)| *count > 0);
        }
        let totals = UsageTotals::of(held.values());
        if self.held_back {
            tracing::debug!(path = %self.path.display(), error = %error, keys = totals.keys, requests = totals.requests, "key usage file still cannot be removed; its counts are still held back");
        } else {
            tracing::warn!(
                path = %self.path.display(),
                error = %error,
                keys = totals.keys,
                requests = totals.requests,
                "key usage file cannot be removed or emptied after its counts were written; the other counts are written, and the file's are held back until it can be (or the next start loads them)"
            );
        }
        self.held_back = true;
        (batch, held)
    }

    /// A flush wrote the file's counts (or it holds none): log the end of a hold-back.
    pub(crate) fn written(&mut self) {
        if std::mem::take(&mut self.held_back) {
            tracing::info!(path = %self.path.display(), "key usage file removed or emptied; the counts it held back are written");
        }
    }

    /// `fsync` the file's directory (a rename or removal is durable only then).
    async fn sync_dir(&self) -> Result<(), UsageFileError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        async { tokio::fs::File::open(dir).await?.sync_all().await }
            .await
            .map_err(UsageFileError::io(dir))
    }
}

impl Store {
    /// Keep this store's unwritten usage counts in `file` when the last flush fails (see the
    /// [`usage_file`](crate::usage_file) docs). The counts the file holds (left by an earlier
    /// process) are added to this store's own, and written by the next flush that reaches the
    /// database; a file that cannot be read is renamed to `<file>.bad`, with a warning.
    /// Returns what was loaded.
    pub async fn keep_usage_in(&self, mut file: UsageFile) -> Result<UsageTotals, UsageFileError> {
        let mut slot = self.inner.usage_file.lock().await;
        if slot.is_some() {
            return Err(UsageFileError::AlreadySet);
        }
        let counts = match file.read().await {
            Ok(counts) => counts,
            Err(why) => {
                // An error only if it cannot even be moved aside: left in place, it would be
                // replaced by the next save (or removed by a flush) and its counts lost unseen.
                let bad = file.set_aside().await?;
                tracing::warn!(
                    path = %file.path.display(),
                    moved_to = %bad.display(),
                    "key usage file {why}; moved aside, its counts (if any) are not loaded"
                );
                HashMap::new()
            }
        };
        let totals = UsageTotals::of(counts.values());
        if counts.is_empty() {
            // A file without counts (or none at all): nothing to keep.
            file.holds_counts = true;
            file.forget_counts().await?;
        } else {
            file.counts.clone_from(&counts);
            self.inner.usage.restore(counts);
            file.holds_counts = true;
        }
        *slot = Some(file);
        Ok(totals)
    }

    /// Write the counts not yet in the database to the usage file set by
    /// [`keep_usage_in`](Self::keep_usage_in), replacing what it held (those counts are among
    /// them). `None` when there is no usage file. The counts stay in memory too: a later flush
    /// writes them and removes the file.
    pub async fn save_pending_usage(&self) -> Result<Option<UsageTotals>, UsageFileError> {
        let mut slot = self.inner.usage_file.lock().await;
        let Some(file) = slot.as_mut() else {
            return Ok(None);
        };
        let rows = self.inner.usage.snapshot();
        if rows.is_empty() {
            return Ok(Some(UsageTotals::default()));
        }
        file.save(&rows).await?;
        Ok(Some(UsageTotals::of(rows.iter().map(|(_, v)| v))))
    }

    /// Keys and requests counted in memory, not yet written to the database.
    pub fn pending_usage(&self) -> UsageTotals {
        let rows = self.inner.usage.snapshot();
        UsageTotals::of(rows.iter().map(|(_, v)| v))
    }

    /// The last flush failed with `error`: keep the counts in the usage file, or say they are lost.
    pub(crate) async fn keep_after_final_flush_failed(&self, error: &crate::StoreError) {
        let pending = self.pending_usage();
        if pending.requests == 0 {
            return;
        }
        match self.save_pending_usage().await {
            Ok(Some(saved)) => {
                let path = self
                    .inner
                    .usage_file
                    .lock()
                    .await
                    .as_ref()
                    .map(|f| f.path.display().to_string())
                    .unwrap_or_default();
                tracing::warn!(
                    error = %error,
                    keys = saved.keys,
                    requests = saved.requests,
                    path,
                    "final key usage flush failed; the counts are kept in the usage file and written by the next start"
                );
            }
            Ok(None) => tracing::warn!(
                error = %error,
                keys = pending.keys,
                requests = pending.requests,
                "final key usage flush failed; these counts are lost (no usage file: FastGate keeps one beside audit.spool_file)"
            ),
            Err(e) => {
                // A file that could not be removed still holds the counts it had: the next
                // start loads them. Only the others are lost.
                let kept = match self.inner.usage_file.lock().await.as_ref() {
                    Some(f) if f.holds_counts => UsageTotals::of(f.counts.values()),
                    _ => UsageTotals::default(),
                };
                tracing::error!(
                    error = %error,
                    keys = pending.keys,
                    requests = pending.requests.saturating_sub(kept.requests),
                    still_in_file = kept.requests,
                    "final key usage flush failed and the usage file could not be written ({e}); these counts are lost (those still in the file are loaded by the next start)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::Duration;

    use super::*;
    use crate::{NewKey, StoreOptions};

    fn chat_key(source_path: &str) -> NewKey {
        NewKey {
            source_path: source_path.to_owned(),
            permissions: vec!["chat".to_owned()],
            expires_at: None,
            name: None,
        }
    }

    async fn open_store(dir: &Path) -> Store {
        let url = format!("sqlite:{}", dir.join("fastgate.db").display());
        Store::connect(
            &url,
            StoreOptions {
                sqlite_busy_timeout: Duration::from_millis(200),
                acquire_timeout: Duration::from_secs(1),
                ..StoreOptions::default()
            },
        )
        .await
        .unwrap()
    }

    /// Another connection holding the SQLite file's write lock: every flush fails.
    async fn lock_db(dir: &Path) -> sqlx::SqliteConnection {
        use sqlx::Connection as _;
        let url = format!("sqlite://{}", dir.join("fastgate.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .unwrap();
        conn
    }

    async fn stored_count(store: &Store, id: &str) -> u64 {
        let crate::Db::Sqlite(pool) = &store.inner.db else {
            unreachable!()
        };
        let n: i64 = sqlx::query_scalar("SELECT request_count FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
        u64::try_from(n).unwrap()
    }

    /// Counts that a failed last flush saved are written once by the next store, also when its
    /// own first flush fails; the file goes with the flush that writes them.
    #[tokio::test]
    async fn counts_saved_at_a_failed_stop_are_written_once_by_the_next_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage");
        let store = open_store(dir.path()).await;
        let key = store.create_key(chat_key("u")).await.unwrap();
        let gone = store.create_key(chat_key("gone")).await.unwrap();
        assert_eq!(
            store
                .keep_usage_in(UsageFile::open(&path).unwrap())
                .await
                .unwrap(),
            UsageTotals::default()
        );
        for _ in 0..3 {
            store.resolve_key(&key.secret).await.unwrap();
        }
        store.resolve_key(&gone.secret).await.unwrap();
        let lock = lock_db(dir.path()).await;
        assert!(store.flush_usage().await.is_err());
        assert!(!path.exists(), "no file before the stop");
        let saved = store.save_pending_usage().await.unwrap().unwrap();
        assert_eq!((saved.keys, saved.requests), (2, 4));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&key.record.id), "{text}");
        for secret in [&key.secret, &gone.secret] {
            assert!(
                !text.contains(secret.as_str()),
                "a secret in the usage file"
            );
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second process cannot take the file while this one holds it.
        assert!(matches!(
            UsageFile::open(&path),
            Err(UsageFileError::Busy { .. })
        ));
        store.close().await;
        drop(store);

        // The next store, the database still locked: the counts are loaded, its flush fails,
        // and the file stays (a crash now would lose nothing).
        let next = open_store(dir.path()).await;
        let loaded = next
            .keep_usage_in(UsageFile::open(&path).unwrap())
            .await
            .unwrap();
        assert_eq!((loaded.keys, loaded.requests), (2, 4));
        next.resolve_key(&key.secret).await.unwrap();
        assert_eq!(
            next.get_key(&key.record.id)
                .await
                .unwrap()
                .unwrap()
                .request_count,
            4
        );
        assert!(next.flush_usage().await.is_err());
        assert!(path.exists());
        // A key deleted meanwhile: its count is dropped, the others are written.
        let mut lock = lock;
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
        next.delete_key(&gone.record.id).await.unwrap();
        assert_eq!(next.flush_usage().await.unwrap(), 1);
        assert!(
            !path.exists(),
            "the file goes with the flush that writes its counts"
        );
        assert_eq!(stored_count(&next, &key.record.id).await, 4);
        // Nothing left to write twice.
        assert_eq!(next.flush_usage().await.unwrap(), 0);
        assert_eq!(
            next.save_pending_usage().await.unwrap(),
            Some(UsageTotals::default())
        );
        assert!(!path.exists());
        next.close().await;
        drop(next);
        let last = open_store(dir.path()).await;
        let loaded = last
            .keep_usage_in(UsageFile::open(&path).unwrap())
            .await
            .unwrap();
        assert_eq!(loaded, UsageTotals::default());
        last.flush_usage().await.unwrap();
        assert_eq!(stored_count(&last, &key.record.id).await, 4);
        last.close().await;
    }

    /// A flush that fails after the file was removed (at the commit) has the counts back in
    /// memory, and the next save writes them again: once.
    #[tokio::test]
    async fn counts_of_a_flush_that_fails_are_saved_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage");
        let store = open_store(dir.path()).await;
        let key = store.create_key(chat_key("u")).await.unwrap();
        std::fs::write(
            &path,
            format!(
                r#"{{"fastgate_key_usage":1,"keys":[{{"id":"{}","count":5,"last_used_at":1000}}]}}"#,
                key.record.id
            ),
        )
        .unwrap();
        store
            .keep_usage_in(UsageFile::open(&path).unwrap())
            .await
            .unwrap();
        // As if the file had gone and the commit then failed.
        {
            let mut slot = store.inner.usage_file.lock().await;
            slot.as_mut().unwrap().forget_counts().await.unwrap();
        }
        assert!(!path.exists());
        store.resolve_key(&key.secret).await.unwrap();
        let saved = store.save_pending_usage().await.unwrap().unwrap();
        assert_eq!(saved.requests, 6);
        store.flush_usage().await.unwrap();
        assert!(!path.exists());
        assert_eq!(stored_count(&store, &key.record.id).await, 6);
        let rec = store.get_key(&key.record.id).await.unwrap().unwrap();
        assert_eq!(rec.request_count, 6);
        store.close().await;
    }

    /// A flush dropped before its commit (a database that does not answer within the limit)
    /// keeps its counts, and leaves the file in place.
    #[tokio::test]
    async fn a_flush_dropped_before_its_commit_keeps_its_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage");
        let store = open_store(dir.path()).await;
        let key = store.create_key(chat_key("u")).await.unwrap();
        store
            .keep_usage_in(UsageFile::open(&path).unwrap())
            .await
            .unwrap();
        store.resolve_key(&key.secret).await.unwrap();
        store.resolve_key(&key.secret).await.unwrap();
        store.save_pending_usage().await.unwrap();
        let lock = lock_db(dir.path()).await;
        let cut = tokio::time::timeout(Duration::from_millis(50), store.flush_usage()).await;
        assert!(cut.is_err(), "the flush waits for the lock");
        assert_eq!(store.pending_usage().requests, 2);
        assert!(path.exists());
        let mut lock = lock;
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
        assert_eq!(store.flush_usage().await.unwrap(), 1);
        assert!(!path.exists());
        assert_eq!(stored_count(&store, &key.record.id).await, 2);
        store.close().await;
    }

    /// A usage file as an earlier process left it: `count` uses of key `id`.
    fn leave_usage_file(path: &Path, id: &str, count: u64) {
        std::fs::write(
            path,
            format!(
                r#"{{"fastgate_key_usage":1,"keys":[{{"id":"{id}","count":{count},"last_used_at":1000}}]}}"#
            ),
        )
        .unwrap();
    }

    /// A usage file that can be neither removed nor emptied (here a non-empty directory took its
    /// place, which stops root too) holds back only its own counts: every other count keeps
    /// reaching the database, and the file's are written once it can be removed. (Before, every
    /// flush failed on the file, forever.)
    #[tokio::test]
    async fn a_file_that_cannot_be_removed_holds_back_only_its_own_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage");
        let store = open_store(dir.path()).await;
        let key = store.create_key(chat_key("u")).await.unwrap();
        let other = store.create_key(chat_key("o")).await.unwrap();
        leave_usage_file(&path, &key.record.id, 5);
        let loaded = store
            .keep_usage_in(UsageFile::open(&path).unwrap())
            .await
            .unwrap();
        assert_eq!(loaded.requests, 5);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), "x").unwrap();
        for _ in 0..2 {
            store.resolve_key(&key.secret).await.unwrap();
        }
        store.resolve_key(&other.secret).await.unwrap();

        assert_eq!(store.flush_usage().await.unwrap(), 2);
        assert_eq!(stored_count(&store, &key.record.id).await, 2);
        assert_eq!(stored_count(&store, &other.record.id).await, 1);
        let held = store.pending_usage();
        assert_eq!((held.keys, held.requests), (1, 5), "the file's counts wait");
        assert_eq!(store.stats().usage_file_errors, 1);
        assert_eq!(store.stats().usage_flush_errors, 0);
        // Still so at the next flush: new counts go, the file's wait.
        store.resolve_key(&other.secret).await.unwrap();
        assert_eq!(store.flush_usage().await.unwrap(), 1);
        assert_eq!(stored_count(&store, &other.record.id).await, 2);
        assert_eq!(stored_count(&store, &key.record.id).await, 2);
        assert_eq!(store.stats().usage_file_errors, 2);
        // Shown as used meanwhile (pending counts are merged in).
        let rec = store.get_key(&key.record.id).await.unwrap().unwrap();
        assert_eq!(rec.request_count, 7);

        // The file can go again: the flush that removes it writes its counts, once.
        std::fs::remove_dir_all(&path).unwrap();
        assert_eq!(store.flush_usage().await.unwrap(), 1);
        assert_eq!(stored_count(&store, &key.record.id).await, 7);
        assert_eq!(store.pending_usage(), UsageTotals::default());
        assert_eq!(store.flush_usage().await.unwrap(), 0);
        assert_eq!(stored_count(&store, &key.record.id).await, 7);
        assert_eq!(store.stats().usage_file_errors, 2);
        store.close().await;
    }

    /// A usage file in a directory made read-only is emptied in place once its counts are
    /// written (a file of no bytes holds none): written once, not again by the next start.
    /// Needs a user that the directory's mode stops (skipped as root: it is not).
    #[tokio::test]
    async fn a_file_in_a_read_only_directory_is_emptied_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        let path = spool.join("usage");
        let store = open_store(dir.path()).await;
        let key = store.create_key(chat_key("u")).await.unwrap();
        leave_usage_file(&path, &key.record.id, 5);
        store
            .keep_usage_in(UsageFile::open(&path).unwrap())
            .await
            .unwrap();
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o500)).unwrap();
        let writable = std::fs::write(spool.join("probe"), "").is_ok();
        if writable {
            std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700)).unwrap();
            eprintln!("skipped: a directory's mode does not stop this user (root)");
            store.close().await;
            return;
        }
        store.resolve_key(&key.secret).await.unwrap();
        assert_eq!(store.flush_usage().await.unwrap(), 1);
        assert_eq!(stored_count(&store, &key.record.id).await, 6);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "emptied");
        assert_eq!(store.stats().usage_file_errors, 1);
        store.close().await;
        drop(store);
        let next = open_store(dir.path()).await;
        let loaded = next
            .keep_usage_in(UsageFile::open(&path).unwrap())
            .await
            .unwrap();
        assert_eq!(loaded, UsageTotals::default());
        assert_eq!(next.flush_usage().await.unwrap(), 0);
        assert_eq!(stored_count(&next, &key.record.id).await, 6);
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700)).unwrap();
        next.close().await;
    }

    /// A file that is not a usage file is moved aside, with a warning; the store starts.
    #[tokio::test]
    async fn a_corrupt_file_is_moved_aside_and_the_store_starts_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage");
        let store = open_store(dir.path()).await;
        std::fs::write(dir.path().join("usage.bad"), "older").unwrap();
        std::fs::write(&path, r#"{"fastgate_key_usage":1,"keys":[{"id":"k","cou"#).unwrap();
        let loaded = store
            .keep_usage_in(UsageFile::open(&path).unwrap())
            .await
            .unwrap();
        assert_eq!(loaded, UsageTotals::default());
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("usage.bad.1")).unwrap(),
            r#"{"fastgate_key_usage":1,"keys":[{"id":"k","cou"#
        );
        assert_eq!(store.pending_usage(), UsageTotals::default());
        // A newer format is not guessed at either.
        drop(store.inner.usage_file.lock().await.take());
        std::fs::write(&path, r#"{"fastgate_key_usage":2,"keys":[]}"#).unwrap();
        std::fs::write(sibling(&path, ".tmp"), "cut by a crash").unwrap();
        store
            .keep_usage_in(UsageFile::open(&path).unwrap())
            .await
            .unwrap();
        assert!(dir.path().join("usage.bad.2").exists());
        assert!(!sibling(&path, ".tmp").exists());
        assert!(matches!(
            store
                .keep_usage_in(UsageFile::open(dir.path().join("other")).unwrap())
                .await,
            Err(UsageFileError::AlreadySet)
        ));
        store.close().await;
    }
}
