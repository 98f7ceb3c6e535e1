//! Audit records: batched inserts with their per-minute rollups, queries, retention.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fastgate_layer::audit::AuditBatch;
use fastgate_layer::{AuditEvent, AuditSink, Outcome};

use crate::metrics::latency_bucket;
use crate::model::{AuditFilter, AuditPage, AuditPosition, AuditRecord};
use crate::{Arg, Counters, Store, StoreError, from_ms, from_us, to_i64, to_ms, to_u64, to_us};

type FastHash = foldhash::fast::RandomState;

pub(crate) const MINUTE_MS: i64 = 60_000;
pub(crate) const HOUR_MS: i64 = 3_600_000;

/// [`AuditSink`] that writes into the store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StoreAuditSink {
    store: Store,
}

impl AuditSink for StoreAuditSink {
    type Error = StoreError;

    fn write_batch(
        &mut self,
        events: &AuditBatch,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.store.insert_audit_batch(events)
    }
}

/// A completed request below 400.
pub(crate) fn is_success(outcome: Outcome, status: u16) -> bool {
    outcome == Outcome::Completed && status < 400
}

#[derive(Debug, Default)]
pub(crate) struct Rollup {
    pub(crate) source_path: String,
    pub(crate) requests: i64,
    pub(crate) errors: i64,
    pub(crate) streams: i64,
    /// Requests summed in `duration_sum_us` and the histogram: all but FastGate's own 4xx refusals.
    pub(crate) latency_count: i64,
    pub(crate) duration_sum_us: i64,
    pub(crate) ttfb_sum_us: i64,
    pub(crate) ttfb_count: i64,
    pub(crate) prompt_tokens: i64,
    pub(crate) completion_tokens: i64,
    pub(crate) total_tokens: i64,
}

/// (bucket start, key id, model); key id and model are `""` when absent.
pub(crate) type RollupKey<'a> = (i64, &'a str, &'a str);
/// (bucket start, histogram bucket) → count.
pub(crate) type HistRow = ((i64, i32), i64);

/// The SQLite statements (`?` placeholders) for the rusqlite audit writer: the row insert for
/// each chunk size, the one-row rollup upserts.
pub(crate) struct SqliteStatements {
    /// Row inserts; pick with [`SqliteStatements::insert_for`].
    insert: &'static [String],
    pub(crate) roll_minute: &'static str,
    pub(crate) roll_hour: &'static str,
    pub(crate) hist_minute: &'static str,
    pub(crate) hist_hour: &'static str,
}

impl SqliteStatements {
    /// The row insert for a chunk of `rows` rows (a size from [`fixed_chunks`]).
    pub(crate) fn insert_for(&self, rows: usize) -> &'static str {
        sql_for(self.insert, rows)
    }

    pub(crate) fn get() -> Self {
        let sql = AuditSql::get(true);
        Self {
            insert: &sql.insert,
            roll_minute: sql_for(&sql.roll_minute, 1),
            roll_hour: sql_for(&sql.roll_hour, 1),
            hist_minute: sql_for(&sql.hist_minute, 1),
            hist_hour: sql_for(&sql.hist_hour, 1),
        }
    }
}

/// The rollup rows (per bucket, key and model) and latency-histogram rows of one batch at one
/// granularity.
pub(crate) fn rollups(
    events: &[AuditEvent],
    granularity_ms: i64,
) -> (Vec<(RollupKey<'_>, Rollup)>, Vec<HistRow>) {
    // foldhash instead of SipHash: four lookups per event, on keys that come from our own
    // events (no attacker chooses them); SipHash was ~3% of the gateway's instructions here.
    let mut roll: HashMap<RollupKey<'_>, Rollup, FastHash> = HashMap::default();
    let mut hist: HashMap<(i64, i32), i64, FastHash> = HashMap::default();
    for e in events {
        let minute = to_ms(e.started_at).div_euclid(granularity_ms) * granularity_ms;
        let key = (
            minute,
            e.key_id.as_deref().unwrap_or(""),
            e.model.as_deref().unwrap_or(""),
        );
        let r = roll.entry(key).or_default();
        if let Some(sp) = e.source_path.as_deref() {
            sp.clone_into(&mut r.source_path);
        }
        r.requests += 1;
        r.errors += i64::from(!is_success(e.outcome, e.status));
        r.streams += i64::from(e.is_stream);
        // FastGate's own refusals of the client (bad key, unknown route, body too large: 4xx)
        // take microseconds: they count as requests and errors, but stay out of the latency and
        // TTFB figures. Its 5xx answers (database unavailable, bad backend) stay in.
        let timed = !(e.outcome == Outcome::Rejected && e.status < 500);
        if timed {
            r.latency_count += 1;
            r.duration_sum_us = r.duration_sum_us.saturating_add(to_us(e.duration));
            if let Some(t) = e.ttfb {
                r.ttfb_sum_us = r.ttfb_sum_us.saturating_add(to_us(t));
                r.ttfb_count += 1;
            }
        }
        if let Some(u) = e.usage {
            // A count the backend did not report adds nothing (SQL's SUM skips NULL alike).
            r.prompt_tokens = r
                .prompt_tokens
                .saturating_add(to_i64(u.prompt_tokens.unwrap_or(0)));
            r.completion_tokens = r
                .completion_tokens
                .saturating_add(to_i64(u.completion_tokens.unwrap_or(0)));
            r.total_tokens = r.total_tokens.saturating_add(to_i64(u.total_tokens));
        }
        if timed {
            *hist
                .entry((minute, latency_bucket(e.duration)))
                .or_default() += 1;
        }
    }
    // Sorted by the conflict key: every writer (this process or another instance on the same
    // PostgreSQL) then locks the rollup rows it shares with another batch in the same order.
    // In hash-map order, two concurrent batches touching the same rows deadlocked.
    let mut roll: Vec<_> = roll.into_iter().collect();
    roll.sort_unstable_by_key(|(key, _)| *key);
    let mut hist: Vec<_> = hist.into_iter().collect();
    hist.sort_unstable_by_key(|(key, _)| *key);
    (roll, hist)
}

#[derive(Debug, sqlx::FromRow)]
struct AuditRow {
    id: i64,
    request_id: String,
    started_at: i64,
    key_id: Option<String>,
    source_path: Option<String>,
    client_ip: Option<String>,
    user_agent: Option<String>,
    method: String,
    path: String,
    target_url: Option<String>,
    status: i32,
    is_stream: bool,
    model: Option<String>,
    request_bytes: i64,
    response_bytes: i64,
    ttfb_us: Option<i64>,
    duration_us: i64,
    outcome: String,
    error_code: Option<String>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    total_tokens: Option<i64>,
}

const AUDIT_COLUMNS: &str = "request_id, started_at, key_id, source_path, client_ip, user_agent, \
     method, path, target_url, status, is_stream, model, request_bytes, response_bytes, ttfb_us, \
     duration_us, outcome, error_code, prompt_tokens, completion_tokens, total_tokens";

impl AuditRow {
    fn into_record(self) -> AuditRecord {
        AuditRecord {
            request_id: self.request_id,
            started_at: from_ms(self.started_at),
            key_id: self.key_id,
            source_path: self.source_path,
            client_ip: self.client_ip,
            user_agent: self.user_agent,
            method: self.method,
            path: self.path,
            target_url: self.target_url,
            status: u16::try_from(self.status).unwrap_or(0),
            is_stream: self.is_stream,
            model: self.model,
            request_bytes: to_u64(self.request_bytes),
            response_bytes: to_u64(self.response_bytes),
            ttfb: self.ttfb_us.map(from_us),
            duration: from_us(self.duration_us),
            outcome: self.outcome,
            error_code: self.error_code,
            prompt_tokens: self.prompt_tokens.map(to_u64),
            completion_tokens: self.completion_tokens.map(to_u64),
            total_tokens: self.total_tokens.map(to_u64),
        }
    }
}

fn encode_cursor(started_at: i64, id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{started_at}:{id}"))
}

fn decode_cursor(cursor: &str) -> Result<(i64, i64), StoreError> {
    const BAD: StoreError = StoreError::InvalidInput("invalid cursor");
    let raw = URL_SAFE_NO_PAD.decode(cursor.as_bytes()).map_err(|_| BAD)?;
    let text = std::str::from_utf8(&raw).map_err(|_| BAD)?;
    let (a, b) = text.split_once(':').ok_or(BAD)?;
    Ok((a.parse().map_err(|_| BAD)?, b.parse().map_err(|_| BAD)?))
}

/// Rows per multi-row statement. A batch is cut greedily into chunks of these sizes (500 rows =
/// 7 × 64 + 3 × 16 + 1 × 4), so every statement text is one of a few fixed ones that each
/// connection prepares once and keeps in its statement cache: a text per batch size would be
/// parsed and planned again for nearly every batch. 64 rows × 21 binds stays far below SQLite's
/// 32 766 and PostgreSQL's 65 535 bind limits.
const CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// `items` cut greedily into slices whose lengths are in [`CHUNKS`].
pub(crate) fn fixed_chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let n = CHUNKS.iter().copied().find(|&c| c <= items.len())?;
        let (head, tail) = items.split_at(n);
        items = tail;
        Some(head)
    })
}

/// The statements of one backend, built once (`CHUNKS.len()` sizes each).
struct AuditSql {
    insert: Vec<String>,
    roll_minute: Vec<String>,
    roll_hour: Vec<String>,
    hist_minute: Vec<String>,
    hist_hour: Vec<String>,
}

impl AuditSql {
    fn get(sqlite: bool) -> &'static Self {
        static SQLITE: OnceLock<AuditSql> = OnceLock::new();
        static POSTGRES: OnceLock<AuditSql> = OnceLock::new();
        if sqlite {
            SQLITE.get_or_init(|| Self::build(true))
        } else {
            POSTGRES.get_or_init(|| Self::build(false))
        }
    }

    fn build(sqlite: bool) -> Self {
        // `OR FAIL` (SQLite only): a failing row stops the statement without undoing the rows it
        // already wrote, which the default `ABORT` must be able to do, so SQLite writes no
        // statement journal. The caller rolls the whole transaction back on any error anyway.
        let insert = if sqlite {
            "INSERT OR FAIL INTO"
        } else {
            "INSERT INTO"
        };
        let sized = |head: &str, cols: usize, tail: &str| -> Vec<String> {
            CHUNKS
                .iter()
                .map(|&rows| {
                    let mut sql = String::with_capacity(head.len() + tail.len() + rows * cols * 6);
                    sql.push_str(head);
                    sql.push_str(" VALUES ");
                    let mut n = 0;
                    for r in 0..rows {
                        sql.push_str(if r == 0 { "(" } else { ", (" });
                        for c in 0..cols {
                            n += 1;
                            if c > 0 {
                                sql.push_str(", ");
                            }
                            // Positional `?` on SQLite: sqlx binds it without looking its name up.
                            if sqlite {
                                sql.push('?');
                            } else {
                                sql.push_str(&format!("${n}"));
                            }
                        }
                        sql.push(')');
                    }
                    sql.push_str(tail);
                    sql
                })
                .collect()
        };
        let rollup = |table: &str, col: &str| {
            sized(
                &format!(
                    "{insert} {table} ({col}, key_id, model, source_path, requests, errors, streams, \
                     duration_sum_us, ttfb_sum_us, ttfb_count, prompt_tokens, completion_tokens, \
                     total_tokens, latency_count)"
                ),
                14,
                &format!(
                    " ON CONFLICT ({col}, key_id, model) DO UPDATE SET \
                     source_path = CASE WHEN excluded.source_path = '' THEN {table}.source_path ELSE excluded.source_path END, \
                     requests = {table}.requests + excluded.requests, \
                     errors = {table}.errors + excluded.errors, \
                     streams = {table}.streams + excluded.streams, \
                     duration_sum_us = {table}.duration_sum_us + excluded.duration_sum_us, \
                     ttfb_sum_us = {table}.ttfb_sum_us + excluded.ttfb_sum_us, \
                     ttfb_count = {table}.ttfb_count + excluded.ttfb_count, \
                     prompt_tokens = {table}.prompt_tokens + excluded.prompt_tokens, \
                     completion_tokens = {table}.completion_tokens + excluded.completion_tokens, \
                     total_tokens = {table}.total_tokens + excluded.total_tokens, \
                     latency_count = COALESCE({table}.latency_count, {table}.requests) + excluded.latency_count"
                ),
            )
        };
        let hist = |table: &str, col: &str| {
            sized(
                &format!("{insert} {table} ({col}, bucket, count)"),
                3,
                &format!(
                    " ON CONFLICT ({col}, bucket) DO UPDATE SET count = {table}.count + excluded.count"
                ),
            )
        };
        Self {
            insert: sized(&format!("{insert} audit_events ({AUDIT_COLUMNS})"), 21, ""),
            roll_minute: rollup("audit_rollup_minute", "minute"),
            roll_hour: rollup("audit_rollup_hour", "hour"),
            hist_minute: hist("audit_latency_minute", "minute"),
            hist_hour: hist("audit_latency_hour", "hour"),
        }
    }
}

/// The statement of `sqls` (one per [`CHUNKS`] size) for a chunk of `rows` rows.
fn sql_for(sqls: &[String], rows: usize) -> &str {
    let i = CHUNKS.iter().position(|&c| c == rows).unwrap_or(0);
    &sqls[i]
}

/// Runs the multi-row inserts of one batch inside an open transaction `$tx`.
macro_rules! insert_batch {
    ($tx:expr, $sql:expr, $events:expr) => {{
        for chunk in fixed_chunks($events) {
            let mut q = sqlx::query(sql_for(&$sql.insert, chunk.len()));
            for e in chunk {
                q = q
                    .bind(e.request_id.as_str())
                    .bind(to_ms(e.started_at))
                    .bind(e.key_id.as_deref())
                    .bind(e.source_path.as_deref())
                    .bind(e.client_ip.as_deref())
                    .bind(e.user_agent.as_deref())
                    .bind(e.method.as_str())
                    .bind(e.path.as_str())
                    .bind(e.target_url.as_deref())
                    .bind(i32::from(e.status))
                    .bind(e.is_stream)
                    .bind(e.model.as_deref())
                    .bind(to_i64(e.request_bytes))
                    .bind(to_i64(e.response_bytes))
                    .bind(e.ttfb.map(to_us))
                    .bind(to_us(e.duration))
                    .bind(e.outcome.as_str())
                    .bind(e.error_code)
                    .bind(e.usage.and_then(|u| u.prompt_tokens).map(to_i64))
                    .bind(e.usage.and_then(|u| u.completion_tokens).map(to_i64))
                    .bind(e.usage.map(|u| to_i64(u.total_tokens)));
            }
            q.execute(&mut *$tx).await?;
        }
    }};
}

/// Upserts one granularity of rollups inside an open transaction `$tx`.
macro_rules! upsert_rollups {
    ($tx:expr, $roll_sql:expr, $hist_sql:expr, $roll:expr, $hist:expr) => {{
        for chunk in fixed_chunks(&$roll) {
            let mut q = sqlx::query(sql_for(&$roll_sql, chunk.len()));
            for ((minute, key_id, model), r) in chunk {
                q = q
                    .bind(*minute)
                    .bind(*key_id)
                    .bind(*model)
                    .bind(r.source_path.as_str())
                    .bind(r.requests)
                    .bind(r.errors)
                    .bind(r.streams)
                    .bind(r.duration_sum_us)
                    .bind(r.ttfb_sum_us)
                    .bind(r.ttfb_count)
                    .bind(r.prompt_tokens)
                    .bind(r.completion_tokens)
                    .bind(r.total_tokens)
                    .bind(r.latency_count);
            }
            q.execute(&mut *$tx).await?;
        }
        for chunk in fixed_chunks(&$hist) {
            let mut q = sqlx::query(sql_for(&$hist_sql, chunk.len()));
            for ((minute, bucket), count) in chunk {
                q = q.bind(*minute).bind(*bucket).bind(*count);
            }
            q.execute(&mut *$tx).await?;
        }
    }};
}

impl Store {
    /// The [`AuditSink`] for the audit worker.
    pub fn audit_sink(&self) -> StoreAuditSink {
        StoreAuditSink {
            store: self.clone(),
        }
    }

    /// Insert a batch of audit events and update the rollups, all in one transaction (safe to
    /// retry after an error).
    pub async fn insert_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        // Only the SQLite writer, which needs the events on its own thread, copies them.
        self.insert_audit_any(events, None).await
    }

    /// [`insert_audit`](Self::insert_audit) for a shared batch, which the SQLite writer takes to
    /// its thread without copying the events.
    pub async fn insert_audit_batch(&self, events: &AuditBatch) -> Result<(), StoreError> {
        self.insert_audit_any(events, Some(events)).await
    }

    /// Writes `events` (through the SQLite writer when there is one, which needs `shared`) and
    /// counts the outcome once.
    async fn insert_audit_any(
        &self,
        events: &[AuditEvent],
        shared: Option<&AuditBatch>,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let result: Result<(), StoreError> = match (&self.inner.sqlite_audit, shared) {
            (Some(writer), Some(shared)) => writer.write(shared.clone()).await.map_err(Into::into),
            (Some(writer), None) => writer
                .write(AuditBatch::from(events))
                .await
                .map_err(Into::into),
            (None, _) => self.insert_audit_sqlx(events).await.map_err(Into::into),
        };
        match &result {
            Ok(()) => Counters::add(&self.inner.counters.audit_rows_written, events.len() as u64),
            Err(_) => Counters::add(&self.inner.counters.audit_batches_failed, 1),
        }
        result
    }

    /// The sqlx path of [`insert_audit`](Self::insert_audit): PostgreSQL and `:memory:`.
    async fn insert_audit_sqlx(&self, events: &[AuditEvent]) -> Result<(), sqlx::Error> {
        let (roll_m, hist_m) = rollups(events, MINUTE_MS);
        let (roll_h, hist_h) = rollups(events, HOUR_MS);
        let sql = AuditSql::get(matches!(self.inner.db, crate::Db::Sqlite(_)));
        on_pool!(&self.inner.db, |pool| {
            async {
                let mut tx = pool.begin().await?;
                insert_batch!(tx, sql, events);
                upsert_rollups!(tx, sql.roll_minute, sql.hist_minute, roll_m, hist_m);
                upsert_rollups!(tx, sql.roll_hour, sql.hist_hour, roll_h, hist_h);
                tx.commit().await
            }
            .await
        })
    }

    /// Audit records matching `filter`, newest first, with a cursor for the next page.
    pub async fn query_audit(&self, filter: &AuditFilter) -> Result<AuditPage, StoreError> {
        let mut cond = String::from(" WHERE 1 = 1");
        let mut args = Vec::new();
        let push = |args: &mut Vec<Arg>, cond: &mut String, arg: Arg, sql: &str| {
            args.push(arg);
            cond.push_str(&sql.replace('?', &format!("${}", args.len())));
        };
        if let Some(v) = &filter.key_id {
            push(
                &mut args,
                &mut cond,
                Arg::Text(v.clone()),
                " AND key_id = ?",
            );
        }
        if let Some(v) = &filter.source_path {
            push(
                &mut args,
                &mut cond,
                Arg::Text(v.clone()),
                " AND source_path = ?",
            );
        }
        if let Some(class) = filter.status_class {
            if !(2..=5).contains(&class) {
                return Err(StoreError::InvalidInput("status class must be 2..=5"));
            }
            let lo = i64::from(class) * 100;
            push(&mut args, &mut cond, Arg::I64(lo), " AND status >= ?");
            push(&mut args, &mut cond, Arg::I64(lo + 100), " AND status < ?");
        }
        if let Some(code) = filter.status {
            if !(100..=599).contains(&code) {
                return Err(StoreError::InvalidInput("status code must be 100..=599"));
            }
            push(
                &mut args,
                &mut cond,
                Arg::I64(i64::from(code)),
                " AND status = ?",
            );
        }
        if let Some(v) = &filter.method {
            push(
                &mut args,
                &mut cond,
                Arg::Text(v.clone()),
                " AND method = ?",
            );
        }
        if let Some(v) = filter.is_stream {
            push(&mut args, &mut cond, Arg::Bool(v), " AND is_stream = ?");
        }
        if let Some(v) = &filter.model {
            push(&mut args, &mut cond, Arg::Text(v.clone()), " AND model = ?");
        }
        if let Some(v) = &filter.path {
            push(&mut args, &mut cond, Arg::Text(v.clone()), " AND path = ?");
        }
        if let Some(AuditPosition(id)) = filter.stored_by {
            push(&mut args, &mut cond, Arg::I64(id), " AND id <= ?");
        }
        if let Some(v) = filter.since {
            push(
                &mut args,
                &mut cond,
                Arg::I64(to_ms(v)),
                " AND started_at >= ?",
            );
        }
        if let Some(v) = filter.until {
            push(
                &mut args,
                &mut cond,
                Arg::I64(to_ms(v)),
                " AND started_at < ?",
            );
        }
        if let Some(c) = &filter.cursor {
            let (at, id) = decode_cursor(c)?;
            args.push(Arg::I64(at));
            let n_at = args.len();
            args.push(Arg::I64(id));
            let n_id = args.len();
            cond.push_str(&format!(
                " AND (started_at < ${n_at} OR (started_at = ${n_at} AND id < ${n_id}))"
            ));
        }
        let limit = match filter.limit {
            0 => 50,
            n => n.min(10_000),
        };
        let sql = format!(
            "SELECT id, {AUDIT_COLUMNS} FROM audit_events{cond} ORDER BY started_at DESC, id DESC LIMIT {} OFFSET {}",
            limit + 1,
            filter.offset
        );
        let mut rows: Vec<AuditRow> = on_pool!(&self.inner.db, |pool| {
            bind_args!(sqlx::query_as(&sql), args)
                .fetch_all(pool)
                .await?
        });
        let next_cursor = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| encode_cursor(r.started_at, r.id))
        } else {
            None
        };
        Ok(AuditPage {
            items: rows.into_iter().map(AuditRow::into_record).collect(),
            next_cursor,
        })
    }

    /// How far the audit table is written now: a filter with
    /// [`stored_by`](AuditFilter::stored_by) set to it leaves out every record stored later.
    /// Record ids grow with every insert; on PostgreSQL a batch still committing elsewhere when
    /// this is read can hold smaller ids, so the cut is exact only per instance.
    pub async fn audit_position(&self) -> Result<AuditPosition, StoreError> {
        let row: (Option<i64>,) = on_pool!(&self.inner.db, |pool| {
            sqlx::query_as("SELECT MAX(id) FROM audit_events")
                .fetch_one(pool)
                .await?
        });
        Ok(AuditPosition(row.0.unwrap_or(0)))
    }

    /// The record of one request (the newest, should a client have reused a request id).
    pub async fn get_audit(&self, request_id: &str) -> Result<Option<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT id, {AUDIT_COLUMNS} FROM audit_events WHERE request_id = $1 ORDER BY id DESC LIMIT 1"
        );
        let row: Option<AuditRow> = on_pool!(&self.inner.db, |pool| {
            sqlx::query_as(&sql)
                .bind(request_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(AuditRow::into_record))
    }

    /// Number of audit records.
    pub async fn count_audit(&self) -> Result<u64, StoreError> {
        let row: (i64,) = on_pool!(&self.inner.db, |pool| {
            sqlx::query_as("SELECT COUNT(*) FROM audit_events")
                .fetch_one(pool)
                .await?
        });
        Ok(to_u64(row.0))
    }

    /// Delete audit records started before `cutoff`, `batch` rows per transaction (so writers
    /// are never blocked for long), and the rollup minutes wholly before it. Returns the number of
    /// audit records deleted.
    pub async fn purge_audit_older_than(
        &self,
        cutoff: SystemTime,
        batch: u32,
    ) -> Result<u64, StoreError> {
        let cutoff = to_ms(cutoff);
        let batch = i64::from(batch.max(1));
        let mut total = 0u64;
        loop {
            let n = on_pool!(&self.inner.db, |pool| {
                sqlx::query(
                    "DELETE FROM audit_events WHERE id IN \
                     (SELECT id FROM audit_events WHERE started_at < $1 ORDER BY started_at LIMIT $2)",
                )
                .bind(cutoff)
                .bind(batch)
                .execute(pool)
                .await?
                .rows_affected()
            });
            total += n;
            Counters::add(&self.inner.counters.audit_rows_purged, n);
            if n < batch.unsigned_abs() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let minute_cut = cutoff.div_euclid(MINUTE_MS) * MINUTE_MS;
        let hour_cut = cutoff.div_euclid(HOUR_MS) * HOUR_MS;
        on_pool!(&self.inner.db, |pool| {
            sqlx::query("DELETE FROM audit_rollup_hour WHERE hour < $1")
                .bind(hour_cut)
                .execute(pool)
                .await?;
            sqlx::query("DELETE FROM audit_latency_hour WHERE hour < $1")
                .bind(hour_cut)
                .execute(pool)
                .await?;
            sqlx::query("DELETE FROM audit_rollup_minute WHERE minute < $1")
                .bind(minute_cut)
                .execute(pool)
                .await?;
            sqlx::query("DELETE FROM audit_latency_minute WHERE minute < $1")
                .bind(minute_cut)
                .execute(pool)
                .await?;
        });
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn rollups_leave_fastgates_own_refusals_out_of_latency() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let ev = |status: u16, outcome: Outcome, ms: u64| {
            let mut e = AuditEvent::new("r", "POST", "/proxy/x");
            e.started_at = at;
            e.status = status;
            e.outcome = outcome;
            e.duration = std::time::Duration::from_millis(ms);
            e.ttfb = Some(std::time::Duration::from_millis(ms));
            e
        };
        let events = [
            ev(200, Outcome::Completed, 10),
            ev(401, Outcome::Rejected, 1),
            ev(404, Outcome::Rejected, 1),
            // The database was unavailable for the key check: slow, and the gateway's fault.
            ev(503, Outcome::Rejected, 2_000),
            ev(502, Outcome::UpstreamError, 30),
        ];
        let (roll, hist) = rollups(&events, MINUTE_MS);
        assert_eq!(roll.len(), 1);
        let r = &roll[0].1;
        assert_eq!((r.requests, r.errors), (5, 4));
        assert_eq!(r.latency_count, 3);
        assert_eq!(r.duration_sum_us, 2_040_000);
        assert_eq!((r.ttfb_count, r.ttfb_sum_us), (3, 2_040_000));
        assert_eq!(hist.iter().map(|(_, n)| n).sum::<i64>(), 3);
    }

    #[test]
    fn rollup_rows_come_sorted_by_their_conflict_key() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let mut events = Vec::new();
        for i in 0..200u64 {
            let mut e = AuditEvent::new("r", "POST", "/proxy/x");
            e.started_at = at + std::time::Duration::from_secs((i * 7919) % 600);
            e.key_id = Some(format!("k_{}", (i * 31) % 17).into());
            e.model = (i % 3 != 0).then(|| format!("m{}", i % 5));
            e.duration = std::time::Duration::from_micros(1 + (i * 104_729) % 5_000_000);
            events.push(e);
        }
        for granularity in [MINUTE_MS, HOUR_MS] {
            for batch in [events.clone(), events.iter().rev().cloned().collect()] {
                let (roll, hist) = rollups(&batch, granularity);
                assert!(roll.len() > 1 && hist.len() > 1);
                assert!(roll.windows(2).all(|w| w[0].0 < w[1].0));
                assert!(hist.windows(2).all(|w| w[0].0 < w[1].0));
            }
        }
    }

    #[test]
    fn fixed_chunks_cover_every_row_in_order_with_fixed_sizes() {
        for n in [0usize, 1, 3, 4, 5, 63, 64, 65, 500, 512, 1000] {
            let items: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = fixed_chunks(&items).collect();
            assert!(chunks.iter().all(|c| CHUNKS.contains(&c.len())), "{n}");
            assert_eq!(chunks.concat(), items, "{n}");
        }
        assert_eq!(fixed_chunks(&[0u8; 512]).count(), 8);
        // Every size has its statement, with as many placeholders as binds.
        for sqlite in [true, false] {
            let sql = AuditSql::get(sqlite);
            for (i, rows) in CHUNKS.iter().enumerate() {
                let binds = |s: &str| {
                    if sqlite {
                        s.matches('?').count()
                    } else {
                        s.matches('$').count()
                    }
                };
                assert_eq!(binds(&sql.insert[i]), rows * 21);
                assert_eq!(binds(&sql.roll_minute[i]), rows * 14);
                assert_eq!(binds(&sql.hist_hour[i]), rows * 3);
            }
        }
    }

    #[test]
    fn cursor_round_trip_and_garbage() {
        let c = encode_cursor(1_700_000_000_123, 42);
        assert_eq!(decode_cursor(&c).unwrap(), (1_700_000_000_123, 42));
        for bad in [
            "",
            "!!!",
            "bm90LWEtY3Vyc29y",
            &URL_SAFE_NO_PAD.encode("1:x"),
        ] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}
