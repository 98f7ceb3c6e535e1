//! Audit inserts on a SQLite file through a dedicated `rusqlite` connection.
//!
//! sqlx's SQLite driver copies every bound value into an owned argument list, sends it to its
//! worker thread and re-binds it there; for an audit row of 21 columns that bookkeeping cost more
//! CPU than SQLite's own insert (callgrind: ~15k of ~29k instructions per row). This writer keeps
//! one connection of its own and runs on tokio's blocking pool. The row inserts go through
//! SQLite's C API with the event's strings bound in place (module `raw`: rusqlite would copy each
//! one); the rollup upserts, a few per batch, use rusqlite's cached statements. Same tables, same
//! statements (the 64/16/4/1-row inserts and one-row upserts of `AuditSql`), same transaction: a
//! batch is written whole or not at all, rollups included. Everything else (reads, keys,
//! migrations, PostgreSQL, `:memory:`) stays on sqlx.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fastgate_layer::AuditEvent;
use fastgate_layer::audit::AuditBatch;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use crate::audit::{SqliteStatements, rollups};

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub enum SqliteAuditError {
    /// SQLite refused the batch (busy past the timeout, disk full, I/O error, …).
    #[error("SQLite audit write failed")]
    Sqlite(#[from] rusqlite::Error),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The blocking task was cancelled or panicked.
    #[error("SQLite audit writer task failed")]
    Task,
}

/// The writer: one lazily opened connection, reopened after a failure.
#[derive(Clone, Debug)]
pub(crate) struct SqliteAuditWriter {
    path: PathBuf,
    busy_timeout: Duration,
    conn: Arc<Mutex<Option<WriterConn>>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

/// The writer's connection and its raw insert statements (one per chunk size, prepared on first
/// use). Field order matters: the statements are finalized before the connection closes.
struct WriterConn {
    inserts: Vec<(usize, raw::Insert)>,
    conn: Connection,
}

impl Drop for WriterConn {
    fn drop(&mut self) {
        // Finalize the statements before the connection closes, whatever the field order.
        self.inserts.clear();
    }
}

impl std::fmt::Debug for WriterConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterConn")
            .field("prepared_inserts", &self.inserts.len())
            .finish_non_exhaustive()
    }
}

impl SqliteAuditWriter {
    pub(crate) fn new(path: PathBuf, busy_timeout: Duration) -> Self {
        Self {
            path,
            busy_timeout,
            conn: Arc::default(),
            closed: Arc::default(),
        }
    }

    /// Close the connection; every later write fails with [`SqliteAuditError::Closed`].
    pub(crate) fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Write `events` and their rollups in one transaction, on tokio's blocking pool.
    ///
    /// The shared batch goes to the blocking thread as is (no copy of the events). Writing on
    /// the runtime's own thread through `block_in_place` cost more CPU in the load benchmark
    /// (the runtime hands its worker to another thread for every batch) and more memory.
    pub(crate) async fn write(&self, events: AuditBatch) -> Result<(), SqliteAuditError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.write_blocking(&events))
            .await
            .map_err(|_| SqliteAuditError::Task)?
    }

    fn write_blocking(&self, events: &[AuditEvent]) -> Result<(), SqliteAuditError> {
        let mut guard = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(SqliteAuditError::Closed);
        }
        let conn = match guard.as_mut() {
            Some(conn) => conn,
            None => guard.insert(WriterConn {
                inserts: Vec::new(),
                conn: self.open()?,
            }),
        };
        let result = write_batch(conn, events);
        if result.is_err() {
            // Start over with a fresh connection next time (a broken handle stays broken).
            *guard = None;
        }
        result.map_err(SqliteAuditError::from)
    }

    fn open(&self) -> Result<Connection, rusqlite::Error> {
        // The file exists and is migrated: the sqlx pool opened it first.
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "journal_size_limit", crate::SQLITE_JOURNAL_SIZE_LIMIT)?;
        // As on the sqlx connections (the audit tables have no foreign keys today).
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(conn)
    }
}

fn write_batch(w: &mut WriterConn, events: &[AuditEvent]) -> Result<(), rusqlite::Error> {
    let sql = SqliteStatements::get();
    let WriterConn { inserts, conn } = w;
    // IMMEDIATE: take the write lock up front (waiting up to busy_timeout for another writer)
    // instead of failing on a read-to-write upgrade half-way through the batch.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Multi-row statements (64/16/4/1 rows): SQLite updates `sqlite_sequence` (AUTOINCREMENT)
    // and sets up the statement once per execution, not once per row.
    for chunk in crate::audit::fixed_chunks(events) {
        let at = match inserts.iter().position(|(rows, _)| *rows == chunk.len()) {
            Some(at) => at,
            None => {
                inserts.push((
                    chunk.len(),
                    raw::Insert::prepare(&tx, sql.insert_for(chunk.len()))?,
                ));
                inserts.len() - 1
            }
        };
        inserts[at].1.execute(chunk)?;
    }
    for (granularity, roll_sql, hist_sql) in [
        (crate::audit::MINUTE_MS, sql.roll_minute, sql.hist_minute),
        (crate::audit::HOUR_MS, sql.roll_hour, sql.hist_hour),
    ] {
        let (roll, hist) = rollups(events, granularity);
        let mut upsert = tx.prepare_cached(roll_sql)?;
        for ((bucket_start, key_id, model), r) in &roll {
            upsert.execute(params![
                bucket_start,
                key_id,
                model,
                r.source_path.as_str(),
                r.requests,
                r.errors,
                r.streams,
                r.duration_sum_us,
                r.ttfb_sum_us,
                r.ttfb_count,
                r.prompt_tokens,
                r.completion_tokens,
                r.total_tokens,
                r.latency_count,
            ])?;
        }
        let mut upsert = tx.prepare_cached(hist_sql)?;
        for ((bucket_start, bucket), count) in &hist {
            upsert.execute(params![bucket_start, bucket, count])?;
        }
    }
    tx.commit()
}

/// Audit inserts through SQLite's C API, binding text in place.
///
/// rusqlite binds every text value with `SQLITE_TRANSIENT`, so SQLite copies each string into an
/// allocation of its own and frees it again when the statement is reset: about ten strings per
/// audit row, ~7.5k of the ~90k instructions of a proxied request (callgrind). Here the strings
/// are bound with `SQLITE_STATIC`: SQLite reads them where they are, which is sound because they
/// are borrowed for the whole call and the statement is reset and unbound before it returns.
/// This is the workspace's one `unsafe` module.
pub(crate) use raw::in_transaction;

#[allow(unsafe_code)]
mod raw {
    use std::ffi::{CStr, c_int};
    use std::ptr;

    use fastgate_layer::AuditEvent;
    use rusqlite::{Connection, ffi};

    use crate::{to_i64, to_ms, to_us};

    /// Whether the connection behind `handle` is inside a transaction (not in autocommit mode).
    pub(crate) fn in_transaction(handle: &mut sqlx::sqlite::LockedSqliteHandle<'_>) -> bool {
        let db = handle.as_raw_handle();
        // SAFETY: `db` is a live connection, locked for this thread by `handle` for the call;
        // sqlite3_get_autocommit only reads a flag of it.
        unsafe { ffi::sqlite3_get_autocommit(db.as_ptr()) == 0 }
    }

    /// A prepared multi-row `INSERT INTO audit_events`, owned by the connection it was prepared on.
    pub(super) struct Insert {
        db: *mut ffi::sqlite3,
        stmt: *mut ffi::sqlite3_stmt,
    }

    // SAFETY: the statement and its connection are only used by the thread that holds the
    // writer's mutex (the connection is opened with SQLITE_OPEN_NO_MUTEX, SQLite's multi-thread
    // mode: one thread at a time per connection).
    unsafe impl Send for Insert {}

    impl Insert {
        /// Prepare `sql` on `conn`. The caller keeps the statement beside `conn` and drops it
        /// first (`WriterConn`'s field order).
        pub(super) fn prepare(conn: &Connection, sql: &str) -> Result<Self, rusqlite::Error> {
            let len = c_int::try_from(sql.len()).map_err(|_| too_big())?;
            // SAFETY: the handle is valid while `conn` lives, and the statement never outlives
            // the connection (see above).
            let db = unsafe { conn.handle() };
            let mut stmt = ptr::null_mut();
            // SAFETY: `sql` is valid for `len` bytes; `stmt` receives the new statement.
            let rc = unsafe {
                ffi::sqlite3_prepare_v3(
                    db,
                    sql.as_ptr().cast(),
                    len,
                    ffi::SQLITE_PREPARE_PERSISTENT,
                    &mut stmt,
                    ptr::null_mut(),
                )
            };
            if rc != ffi::SQLITE_OK {
                return Err(error(db, rc));
            }
            if stmt.is_null() {
                return Err(rusqlite::Error::InvalidQuery);
            }
            Ok(Self { db, stmt })
        }

        /// Insert `rows` (exactly as many as the statement was prepared for).
        pub(super) fn execute(&mut self, rows: &[AuditEvent]) -> Result<(), rusqlite::Error> {
            // Reset and unbind on every way out (return, `?`, unwind), so no pointer into `rows`
            // stays bound once the borrow ends.
            let _unbind = Unbind(self.stmt);
            self.bind_and_step(rows)
        }

        /// Bind the 21 columns of each row in the order of `AUDIT_COLUMNS` (as `insert_batch!`
        /// in `audit.rs` does for sqlx), then run the statement. The store tests read every field
        /// back from a SQLite file, so a column out of order fails them.
        fn bind_and_step(&mut self, rows: &[AuditEvent]) -> Result<(), rusqlite::Error> {
            let mut at: c_int = 0;
            for e in rows {
                self.text(&mut at, Some(&e.request_id))?;
                self.int(&mut at, Some(to_ms(e.started_at)))?;
                self.text(&mut at, e.key_id.as_deref())?;
                self.text(&mut at, e.source_path.as_deref())?;
                self.text(&mut at, e.client_ip.as_deref())?;
                self.text(&mut at, e.user_agent.as_deref())?;
                self.text(&mut at, Some(&e.method))?;
                self.text(&mut at, Some(&e.path))?;
                self.text(&mut at, e.target_url.as_deref())?;
                self.int(&mut at, Some(i64::from(e.status)))?;
                self.int(&mut at, Some(i64::from(e.is_stream)))?;
                self.text(&mut at, e.model.as_deref())?;
                self.int(&mut at, Some(to_i64(e.request_bytes)))?;
                self.int(&mut at, Some(to_i64(e.response_bytes)))?;
                self.int(&mut at, e.ttfb.map(to_us))?;
                self.int(&mut at, Some(to_us(e.duration)))?;
                self.text(&mut at, Some(e.outcome.as_str()))?;
                self.text(&mut at, e.error_code)?;
                self.int(&mut at, e.usage.and_then(|u| u.prompt_tokens).map(to_i64))?;
                self.int(
                    &mut at,
                    e.usage.and_then(|u| u.completion_tokens).map(to_i64),
                )?;
                self.int(&mut at, e.usage.map(|u| to_i64(u.total_tokens)))?;
            }
            // SAFETY: a valid statement whose parameters are all bound to live values.
            let rc = unsafe { ffi::sqlite3_step(self.stmt) };
            if rc == ffi::SQLITE_DONE {
                Ok(())
            } else {
                Err(error(self.db, rc))
            }
        }

        fn text(&mut self, at: &mut c_int, value: Option<&str>) -> Result<(), rusqlite::Error> {
            *at += 1;
            let rc = match value {
                // SAFETY: a valid statement and parameter index.
                None => unsafe { ffi::sqlite3_bind_null(self.stmt, *at) },
                Some(s) => {
                    // An empty string is bound as a real (static) empty C string, as rusqlite
                    // does, rather than as `str`'s dangling pointer.
                    let (ptr, len) = if s.is_empty() {
                        (c"".as_ptr(), 0)
                    } else {
                        let len = c_int::try_from(s.len()).map_err(|_| too_big())?;
                        (s.as_ptr().cast(), len)
                    };
                    // SAFETY: `ptr` is valid for `len` bytes and outlives the statement's use
                    // of it: `execute` steps and then resets and unbinds before `s`'s borrow
                    // ends.
                    unsafe {
                        ffi::sqlite3_bind_text(self.stmt, *at, ptr, len, ffi::SQLITE_STATIC())
                    }
                }
            };
            self.check(rc)
        }

        fn int(&mut self, at: &mut c_int, value: Option<i64>) -> Result<(), rusqlite::Error> {
            *at += 1;
            // SAFETY: a valid statement and parameter index.
            let rc = unsafe {
                match value {
                    None => ffi::sqlite3_bind_null(self.stmt, *at),
                    Some(v) => ffi::sqlite3_bind_int64(self.stmt, *at, v),
                }
            };
            self.check(rc)
        }

        fn check(&self, rc: c_int) -> Result<(), rusqlite::Error> {
            if rc == ffi::SQLITE_OK {
                Ok(())
            } else {
                Err(error(self.db, rc))
            }
        }
    }

    /// Resets and unbinds a statement when dropped.
    struct Unbind(*mut ffi::sqlite3_stmt);

    impl Drop for Unbind {
        fn drop(&mut self) {
            // SAFETY: a valid statement (the `Insert` it belongs to outlives this guard).
            unsafe {
                ffi::sqlite3_reset(self.0);
                ffi::sqlite3_clear_bindings(self.0);
            }
        }
    }

    impl Drop for Insert {
        fn drop(&mut self) {
            // SAFETY: a valid statement, finalized once, before its connection closes.
            unsafe {
                ffi::sqlite3_finalize(self.stmt);
            }
        }
    }

    /// SQLite's error for `rc`, with the connection's message (which names tables and
    /// constraints, never bound values).
    fn error(db: *mut ffi::sqlite3, rc: c_int) -> rusqlite::Error {
        // SAFETY: `db` is a valid connection; the message is copied before any other call.
        let message = unsafe {
            let msg = ffi::sqlite3_errmsg(db);
            (!msg.is_null()).then(|| CStr::from_ptr(msg).to_string_lossy().into_owned())
        };
        rusqlite::Error::SqliteFailure(ffi::Error::new(rc), message)
    }

    fn too_big() -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_TOOBIG), None)
    }
}
