//! FastGate's storage: API keys and audit records on SQLite (one file, zero setup) or PostgreSQL
//! (shared by several gateway instances).
//!
//! - [`Store::connect`] takes M-FastGate's SQLAlchemy-style URLs ([`parse_database_url`]) and
//!   applies the migrations of `migrations/sqlite` or `migrations/postgres` (same numbering).
//! - Keys are `prefix + 43 base64url chars` (32 CSPRNG bytes); only their SHA-256 is stored.
//! - [`Store::key_resolver`] implements [`fastgate_layer::KeyResolver`] with a TTL cache keyed by
//!   the hash, stale-if-error when the database fails, and usage counted in memory.
//! - [`Store::audit_sink`] implements [`fastgate_layer::AuditSink`]: one transaction per batch,
//!   multi-row `VALUES`, and per-minute rollups maintained in the same transaction so
//!   [`Store::metrics`] never scans the audit table.
//! - [`Store::background`] is the one long-running task (the library never spawns): usage flush,
//!   cross-instance key invalidation (PostgreSQL `LISTEN/NOTIFY` plus a change-watermark poll that
//!   also covers other processes on SQLite), and retention purge.
//!
//! One SQL dialect serves both backends (`$N` placeholders, BIGINT unix-millisecond times,
//! runtime `query_as`); a private `on_pool!` macro runs a statement on whichever pool the store holds.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Runs the same code against whichever pool the store holds. The SQL must be valid on both.
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            crate::Db::Sqlite($pool) => $body,
            crate::Db::Postgres($pool) => $body,
        }
    };
}

/// Binds a list of [`Arg`](crate::Arg)s to a query, in order.
macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut q = $query;
        for arg in $args {
            q = match arg {
                crate::Arg::I64(v) => q.bind(v),
                crate::Arg::OptI64(v) => q.bind(v),
                crate::Arg::Text(v) => q.bind(v),
                crate::Arg::OptText(v) => q.bind(v),
                crate::Arg::Bool(v) => q.bind(v),
            };
        }
        q
    }};
}

/// Bytes a SQLite file's `-wal` is cut back to after a checkpoint has emptied it (SQLite's
/// default keeps the file at its largest size: a burst or a long reader could leave hundreds of
/// megabytes beside a small database). Set on every connection, the audit writer's included.
pub(crate) const SQLITE_JOURNAL_SIZE_LIMIT: &str = "67108864";

mod audit;
mod background;
mod cache;
mod error;
mod keys;
mod metrics;
pub mod mfastgate;
mod model;
mod sqlite_audit;
mod url;
pub mod usage_file;

pub use audit::StoreAuditSink;
pub use background::BackgroundOptions;
pub use cache::{ResolveFuture, StoreKeyResolver, USAGE_FLUSH_LOCK_TIMEOUT};
pub use error::StoreError;
pub use keys::hash_key;
pub use metrics::Period;
pub use model::{
    AuditFilter, AuditPage, AuditPosition, AuditRecord, CreatedKey, ImportOutcome, ImportedKey,
    KeyFilter, KeyPage, KeyRecord, KeyUpdate, KeyUsage, Metrics, MetricsWindow, ModelUsage, NewKey,
    PeriodMetrics, SeriesPoint,
};
pub use sqlite_audit::SqliteAuditError;
pub use url::{DatabaseUrl, PostgresUrl, SqliteLocation, parse_database_url, redact_url};
pub use usage_file::{UsageFile, UsageFileError, UsageTotals};

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// SQLite (embedded file).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Connection and cache settings.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Prefix of generated keys (`fg_`).
    pub key_prefix: String,
    /// How long a resolved key is served from memory without asking the database. Zero disables
    /// the cache (every resolution queries the database).
    pub cache_ttl: Duration,
    /// Most keys kept in the cache.
    pub cache_capacity: usize,
    /// After a failed lookup, how long stale cache entries are served without retrying the
    /// database (so a down database costs one slow lookup per interval, not one per request).
    pub stale_retry_interval: Duration,
    /// Pool size.
    pub max_connections: u32,
    /// Longest wait for a pooled connection (this bounds how long a lookup waits on a down database).
    pub acquire_timeout: Duration,
    /// SQLite `busy_timeout`.
    pub sqlite_busy_timeout: Duration,
    /// Apply pending migrations in [`Store::connect`].
    pub migrate: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            key_prefix: "fg_".to_owned(),
            cache_ttl: Duration::from_secs(30),
            cache_capacity: 100_000,
            stale_retry_interval: Duration::from_secs(1),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(3),
            sqlite_busy_timeout: Duration::from_secs(5),
            migrate: true,
        }
    }
}

/// Counters for `/health` and metrics. All monotonic since the store was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Resolutions answered from the cache while fresh.
    pub cache_hits: u64,
    /// Resolutions that queried the database.
    pub cache_misses: u64,
    /// Unknown, disabled or rotated-out keys answered from the cache (no database query).
    pub negative_hits: u64,
    /// Resolutions answered from a stale entry because the database failed, or because another
    /// lookup was re-validating a stale entry at that moment (one at a time).
    pub stale_served: u64,
    /// Lookups that failed on the database.
    pub lookup_errors: u64,
    /// Cache invalidations (local changes, notifications, watermark changes).
    pub invalidations: u64,
    /// Audit rows committed.
    pub audit_rows_written: u64,
    /// Audit batches that failed (the caller retries them).
    pub audit_batches_failed: u64,
    /// Usage flushes that failed (their counts are kept and retried).
    pub usage_flush_errors: u64,
    /// Usage flushes that could not remove the key usage file after writing its counts: the
    /// file was emptied in place instead or, when that failed too, its counts were held back
    /// (kept in memory and in the file) while the other counts were written. Each is logged
    /// with the file's path.
    pub usage_file_errors: u64,
    /// Audit rows removed by retention.
    pub audit_rows_purged: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_misses: AtomicU64,
    pub(crate) negative_hits: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) lookup_errors: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) audit_rows_written: AtomicU64,
    pub(crate) audit_batches_failed: AtomicU64,
    pub(crate) usage_flush_errors: AtomicU64,
    pub(crate) usage_file_errors: AtomicU64,
    pub(crate) audit_rows_purged: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The connection pool, by backend.
#[derive(Clone, Debug)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A value bound to a dynamically built statement.
#[derive(Debug)]
pub(crate) enum Arg {
    I64(i64),
    OptI64(Option<i64>),
    Text(String),
    OptText(Option<String>),
    Bool(bool),
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) db: Db,
    pub(crate) opts: StoreOptions,
    pub(crate) cache: cache::KeyCache,
    pub(crate) usage: cache::UsageBuffer,
    /// Where unwritten usage goes when the last flush fails ([`Store::keep_usage_in`]); locked
    /// by each flush for its whole length.
    pub(crate) usage_file: tokio::sync::Mutex<Option<usage_file::UsageFile>>,
    pub(crate) counters: Counters,
    /// Audit inserts on a SQLite file go through their own rusqlite connection.
    pub(crate) sqlite_audit: Option<sqlite_audit::SqliteAuditWriter>,
}

/// Handle to the database, the key cache and the counters. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl Store {
    /// Connect by URL (see [`parse_database_url`]) and, unless `opts.migrate` is false, apply
    /// pending migrations. A SQLite file is created if missing; its directory must exist.
    pub async fn connect(url: &str, opts: StoreOptions) -> Result<Self, StoreError> {
        let parsed = parse_database_url(url)?;
        Self::connect_parsed(&parsed, opts).await
    }

    /// [`Store::connect`] with an already parsed URL.
    pub async fn connect_parsed(url: &DatabaseUrl, opts: StoreOptions) -> Result<Self, StoreError> {
        let mut sqlite_audit = None;
        let db = match url {
            DatabaseUrl::Sqlite(loc) => {
                // The file, named in a connection error (`None` in memory).
                let mut file = None;
                let (conn, pool) = match loc {
                    SqliteLocation::Memory => (
                        SqliteConnectOptions::from_str("sqlite::memory:")?,
                        // Each connection to :memory: is its own database: keep exactly one forever.
                        SqlitePoolOptions::new()
                            .max_connections(1)
                            .min_connections(1)
                            .idle_timeout(None)
                            .max_lifetime(None),
                    ),
                    SqliteLocation::File(path) => {
                        if let Some(dir) = path.parent()
                            && !dir.as_os_str().is_empty()
                            && !dir.is_dir()
                        {
                            return Err(StoreError::DirectoryMissing {
                                dir: dir.to_owned(),
                            });
                        }
                        // Checked read-only before the pool connects: connecting would switch
                        // M-FastGate's file to WAL, which is a change to it.
                        if path.exists() && mfastgate::sqlite_file_is_mfastgate(path).await? {
                            return Err(StoreError::MFastGateDatabase);
                        }
                        // A new file is made readable by its owner and group only (0640, as
                        // `logging.file`): it holds client addresses and key ids. SQLite gives
                        // its `-wal` and `-shm` files the database file's permissions.
                        create_private(path).map_err(|source| StoreError::SqliteFile {
                            path: path.clone(),
                            source: sqlx::Error::Io(source),
                        })?;
                        file = Some(path.clone());
                        sqlite_audit = Some(sqlite_audit::SqliteAuditWriter::new(
                            path.clone(),
                            opts.sqlite_busy_timeout,
                        ));
                        (
                            SqliteConnectOptions::new()
                                .filename(path)
                                .create_if_missing(true)
                                .journal_mode(SqliteJournalMode::Wal),
                            SqlitePoolOptions::new().max_connections(opts.max_connections.max(1)),
                        )
                    }
                };
                let conn = conn
                    .synchronous(SqliteSynchronous::Normal)
                    .pragma("journal_size_limit", SQLITE_JOURNAL_SIZE_LIMIT)
                    .busy_timeout(opts.sqlite_busy_timeout)
                    .foreign_keys(true);
                // Not for `:memory:`: closing its one connection would lose the database.
                let pool = if file.is_none() {
                    pool
                } else {
                    pool.after_release(|conn, _| {
                        Box::pin(async move {
                            // A COMMIT that failed (SQLITE_FULL on a full disk) can leave the
                            // connection inside its transaction, holding the database's write
                            // lock until the process ends: such a connection is closed, not
                            // pooled (closing rolls the transaction back).
                            let mut handle = conn.lock_handle().await?;
                            if sqlite_audit::in_transaction(&mut handle) {
                                tracing::warn!(
                                    "a SQLite connection came back inside a transaction \
                                     (a failed COMMIT?); closing it"
                                );
                                return Ok(false);
                            }
                            Ok(true)
                        })
                    })
                };
                let pool = pool
                    .acquire_timeout(opts.acquire_timeout)
                    .connect_with(conn)
                    .await
                    .map_err(|source| match file {
                        Some(path) => StoreError::SqliteFile { path, source },
                        None => StoreError::Connect {
                            backend: "sqlite",
                            source,
                        },
                    })?;
                Db::Sqlite(pool)
            }
            DatabaseUrl::Postgres(pg) => {
                for parameter in pg.ignored_parameters() {
                    tracing::warn!(
                        "the database URL's query parameter {parameter} is not one the PostgreSQL driver knows: ignored"
                    );
                }
                let pool = PgPoolOptions::new()
                    .max_connections(opts.max_connections.max(2))
                    .acquire_timeout(opts.acquire_timeout)
                    .connect(pg.expose())
                    .await
                    .map_err(|source| StoreError::Connect {
                        backend: "postgres",
                        source,
                    })?;
                Db::Postgres(pool)
            }
        };
        let migrate = opts.migrate;
        let store = Self {
            inner: Arc::new(Inner {
                db,
                cache: cache::KeyCache::new(opts.cache_capacity),
                usage: cache::UsageBuffer::default(),
                usage_file: tokio::sync::Mutex::new(None),
                counters: Counters::default(),
                sqlite_audit,
                opts,
            }),
        };
        if migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// Apply pending migrations (idempotent).
    ///
    /// Refuses ([`StoreError::MFastGateDatabase`]) a database that holds M-FastGate's own
    /// `api_keys` table, whose name FastGate's schema also uses; that database is left unchanged.
    ///
    /// A database already migrated further by a newer FastGate (a rolling upgrade of instances
    /// sharing one PostgreSQL) is used as it is when the newer migrations keep older binaries
    /// working (logged once at WARN), and refused with [`StoreError::SchemaTooNew`] when one of
    /// them marked it incompatible (`store_state.requires_migration`, migration 0005).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        if mfastgate::holds_mfastgate_tables(self).await? {
            return Err(StoreError::MFastGateDatabase);
        }
        self.run_migrations().await?;
        self.check_schema_compat().await
    }

    /// The migrator for this database, tolerant of migrations newer than this binary (checked
    /// afterwards by [`Self::check_schema_compat`]).
    fn migrator(&self) -> sqlx::migrate::Migrator {
        let mut m = match &self.inner.db {
            Db::Sqlite(_) => sqlx::migrate!("./migrations/sqlite"),
            Db::Postgres(_) => sqlx::migrate!("./migrations/postgres"),
        };
        m.set_ignore_missing(true);
        m
    }

    /// After the migrations: refuse a database migrated past what this binary can use.
    async fn check_schema_compat(&self) -> Result<(), StoreError> {
        let known = self.migrator().iter().map(|m| m.version).max().unwrap_or(0);
        let (applied,): (Option<i64>,) = on_pool!(&self.inner.db, |pool| {
            sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(pool)
                .await?
        });
        let applied = applied.unwrap_or(0);
        if applied <= known {
            return Ok(());
        }
        let (requires,): (i64,) = on_pool!(&self.inner.db, |pool| {
            sqlx::query_as("SELECT requires_migration FROM store_state WHERE id = 1")
                .fetch_one(pool)
                .await?
        });
        if requires > known {
            return Err(StoreError::SchemaTooNew {
                applied,
                requires,
                known,
            });
        }
        tracing::warn!(
            database_schema = applied,
            binary_schema = known,
            "the database was migrated by a newer FastGate; its migrations keep this binary \
             working, but upgrade it"
        );
        Ok(())
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        let migrator = self.migrator();
        match &self.inner.db {
            Db::Sqlite(pool) => {
                // PostgreSQL serialises concurrent migrations with an advisory lock; SQLite has
                // none, so two processes starting on a new file race (one fails with "table
                // already exists" or a busy database). Each migration runs in a transaction,
                // so trying again sees what the other process applied.
                let mut attempt = 0;
                loop {
                    match migrator.run(pool).await {
                        Ok(()) => break,
                        Err(
                            e @ (sqlx::migrate::MigrateError::Execute(_)
                            | sqlx::migrate::MigrateError::ExecuteMigration(..)),
                        ) if attempt < 10 => {
                            attempt += 1;
                            tracing::debug!(error = %e, attempt, "migration raced; trying again");
                            tokio::time::sleep(std::time::Duration::from_millis(100 * attempt))
                                .await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Db::Postgres(pool) => migrator.run(pool).await?,
        }
        Ok(())
    }

    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        match self.inner.db {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Check that the database answers (`SELECT 1`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(&self.inner.db, |pool| {
            sqlx::query("SELECT 1").execute(pool).await.map(drop)?
        });
        Ok(())
    }

    /// Close the pool: every later database call fails (cached keys keep resolving). For
    /// shutdown, and for tests that simulate a database that went away.
    pub async fn close(&self) {
        on_pool!(&self.inner.db, |pool| pool.close().await);
        if let Some(writer) = &self.inner.sqlite_audit {
            writer.close();
        }
    }

    /// The options the store was created with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.opts
    }

    /// Counter snapshot.
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            cache_hits: get(&c.cache_hits),
            cache_misses: get(&c.cache_misses),
            negative_hits: get(&c.negative_hits),
            stale_served: get(&c.stale_served),
            lookup_errors: get(&c.lookup_errors),
            invalidations: get(&c.invalidations),
            audit_rows_written: get(&c.audit_rows_written),
            audit_batches_failed: get(&c.audit_batches_failed),
            usage_flush_errors: get(&c.usage_flush_errors),
            usage_file_errors: get(&c.usage_file_errors),
            audit_rows_purged: get(&c.audit_rows_purged),
        }
    }
}

/// Unix milliseconds (negative before 1970, saturating).
pub(crate) fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// Inverse of [`to_ms`].
pub(crate) fn from_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// Microseconds, saturating.
pub(crate) fn to_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Inverse of [`to_us`] (negative values read as zero).
pub(crate) fn from_us(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// u64 → BIGINT, saturating.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// BIGINT → u64 (negative values read as zero).
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Create `path` empty with mode 0640 unless it exists (then it is left as it is).
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A connection that comes back to the pool inside a transaction (as after a COMMIT that
    /// failed on a full disk) would hold the file's write lock until the process ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_left_inside_a_transaction_is_closed_not_pooled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let opts = StoreOptions {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(5),
            sqlite_busy_timeout: Duration::from_millis(500),
            ..StoreOptions::default()
        };
        let store = Store::connect(&format!("sqlite:{}", path.display()), opts)
            .await
            .unwrap();
        let Db::Sqlite(pool) = &store.inner.db else {
            panic!("not SQLite");
        };
        {
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        // Another process's writer gets the lock (the release runs in the background).
        let other = rusqlite::Connection::open(&path).unwrap();
        other.busy_timeout(Duration::from_secs(3)).unwrap();
        other.execute_batch("BEGIN IMMEDIATE; COMMIT;").unwrap();
        drop(other);
        // And the store writes through its (new) pooled connection.
        store
            .create_key(NewKey {
                name: None,
                source_path: "u".into(),
                permissions: vec!["chat".into()],
                expires_at: None,
            })
            .await
            .unwrap();
        store.close().await;
    }
}
