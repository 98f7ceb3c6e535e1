//! Audit inserts on a SQLite file through a dedicated `rusqlite` connection.
//!
//! sqlx's SQLite driver copies every bound value into an owned argument list, sends it to its
//! worker thread and re-binds it there; for an audit row of 21 columns that bookkeeping cost more
//! CPU than SQLite's own insert (callgrind: ~15k of ~29k instructions per row). This writer keeps
//! one connection of its own, binds the event's fields in place with statements prepared once
//! (`prepare_cached`), and runs on tokio's blocking pool. Same tables, same statements (the
//! 64/16/4/1-row inserts and one-row upserts of `AuditSql`), same transaction: a batch is
//! written whole or not at all, rollups included. Everything else (reads, keys, migrations, PostgreSQL, `:memory:`)
//! stays on sqlx.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fastgate_layer::AuditEvent;
use rusqlite::{Connection, OpenFlags, Statement, TransactionBehavior, params};

use crate::audit::{SqliteStatements, rollups};
use crate::{to_i64, to_ms, to_us};

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
    conn: Arc<Mutex<Option<Connection>>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
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
    /// The batch is copied for that. Writing in place through `block_in_place` saved ~2.5% of
    /// the instructions per request but cost more CPU in the load benchmark (47.2 vs 43.1 µs per
    /// request incl. the mock, one A/B run: the runtime hands its worker to another thread for
    /// every batch) and more memory (38 vs 29 MiB), so the copy stays.
    pub(crate) async fn write(&self, events: &[AuditEvent]) -> Result<(), SqliteAuditError> {
        let events = events.to_vec();
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
            None => guard.insert(self.open()?),
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
        // As on the sqlx connections (the audit tables have no foreign keys today).
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(conn)
    }
}

fn write_batch(conn: &mut Connection, events: &[AuditEvent]) -> Result<(), rusqlite::Error> {
    let sql = SqliteStatements::get();
    // IMMEDIATE: take the write lock up front (waiting up to busy_timeout for another writer)
    // instead of failing on a read-to-write upgrade half-way through the batch.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Multi-row statements (64/16/4/1 rows): SQLite updates `sqlite_sequence` (AUTOINCREMENT)
    // and sets up the statement once per execution, not once per row.
    for chunk in crate::audit::fixed_chunks(events) {
        let mut insert = tx.prepare_cached(sql.insert_for(chunk.len()))?;
        for (i, e) in chunk.iter().enumerate() {
            bind_row(&mut insert, i * 21, e)?;
        }
        insert.raw_execute()?;
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
            ])?;
        }
        let mut upsert = tx.prepare_cached(hist_sql)?;
        for ((bucket_start, bucket), count) in &hist {
            upsert.execute(params![bucket_start, bucket, count])?;
        }
    }
    tx.commit()
}

/// Bind the 21 columns of `e` to parameters `base + 1 ..= base + 21` of `stmt`, in the order of
/// `AUDIT_COLUMNS` (as `insert_batch!` in `audit.rs` does for sqlx). The store tests read every
/// field back from a SQLite file, so a column out of order fails them.
fn bind_row(stmt: &mut Statement<'_>, base: usize, e: &AuditEvent) -> Result<(), rusqlite::Error> {
    let mut n = base;
    let mut bind = |value: &dyn rusqlite::ToSql| {
        n += 1;
        stmt.raw_bind_parameter(n, value)
    };
    bind(&e.request_id.as_str())?;
    bind(&to_ms(e.started_at))?;
    bind(&e.key_id.as_deref())?;
    bind(&e.source_path.as_deref())?;
    bind(&e.client_ip.as_deref())?;
    bind(&e.user_agent.as_deref())?;
    bind(&e.method.as_str())?;
    bind(&e.path.as_str())?;
    bind(&e.target_url.as_deref())?;
    bind(&i32::from(e.status))?;
    bind(&e.is_stream)?;
    bind(&e.model.as_deref())?;
    bind(&to_i64(e.request_bytes))?;
    bind(&to_i64(e.response_bytes))?;
    bind(&e.ttfb.map(to_us))?;
    bind(&to_us(e.duration))?;
    bind(&e.outcome.as_str())?;
    bind(&e.error_code)?;
    bind(&e.usage.map(|u| to_i64(u.prompt_tokens)))?;
    bind(&e.usage.map(|u| to_i64(u.completion_tokens)))?;
    bind(&e.usage.map(|u| to_i64(u.total_tokens)))?;
    Ok(())
}
