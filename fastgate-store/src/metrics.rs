//! Dashboard aggregates, computed from the rollups (never from the audit table): the 1 h window
//! reads the per-minute tables, the 24 h and 7 d windows the hourly ones from their first whole
//! hour on and the per-minute ones for the part of an hour before it, so every window is exact
//! to the minute.
//!
//! Latency percentiles come from a per-minute histogram with fixed geometric buckets: bucket 0
//! holds durations below 1 ms, bucket `i ≥ 1` holds `[1.1^(i-1), 1.1^i)` ms, and the last
//! bucket everything from about an hour up. A percentile is interpolated (geometrically) inside
//! the bucket that holds it, so it is within 10 % (relative) of the exact value, or within 1 ms
//! below 1 ms.

use std::time::{Duration, SystemTime};

use crate::audit::{HOUR_MS, MINUTE_MS};
use crate::model::{KeyUsage, Metrics, MetricsWindow, ModelUsage, PeriodMetrics, SeriesPoint};
use crate::{Store, StoreError, from_ms, to_ms, to_u64};

const RATIO: f64 = 1.1;
const MAX_BUCKET: i32 = 160;

/// Histogram bucket of a duration.
pub(crate) fn latency_bucket(d: Duration) -> i32 {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        0
    } else {
        // ln(ms) / ln(1.1) ≤ 160 for every duration up to ~4.4 days; beyond, the cap applies.
        ((ms.ln() / RATIO.ln()).floor() as i32 + 1).clamp(1, MAX_BUCKET)
    }
}

fn bucket_bounds(b: i32) -> (f64, f64) {
    if b <= 0 {
        (0.0, 1.0)
    } else {
        (RATIO.powi(b - 1), RATIO.powi(b))
    }
}

/// Estimated `q` quantile (0..=1) in ms from `(bucket, count)` pairs sorted by bucket.
pub(crate) fn quantile_ms(hist: &[(i32, i64)], q: f64) -> f64 {
    let total: i64 = hist.iter().map(|(_, c)| *c).sum();
    if total <= 0 {
        return 0.0;
    }
    // Rank of the wanted sample, 1-based ("nearest rank"), then interpolate inside its bucket.
    let rank = (q * total as f64).ceil().max(1.0);
    let mut seen = 0.0;
    for &(b, c) in hist {
        let c = c as f64;
        if c <= 0.0 {
            continue;
        }
        if seen + c >= rank {
            let frac = ((rank - seen) - 0.5) / c;
            let frac = frac.clamp(0.0, 1.0);
            let (lo, hi) = bucket_bounds(b);
            return if b <= 0 {
                lo + (hi - lo) * frac
            } else {
                lo * (hi / lo).powf(frac)
            };
        }
        seen += c;
    }
    bucket_bounds(hist.last().map_or(0, |(b, _)| *b)).1
}

#[derive(Debug, sqlx::FromRow)]
struct AggRow {
    /// The group: series bucket index (as text), key id or model.
    g: String,
    source_path: String,
    requests: i64,
    errors: i64,
    streams: i64,
    latency_count: i64,
    duration_sum_us: i64,
    ttfb_sum_us: i64,
    ttfb_count: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    total_tokens: i64,
}

const SUMS: &str = "MAX(source_path) AS source_path, \
     CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(errors) AS BIGINT) AS errors, \
     CAST(SUM(streams) AS BIGINT) AS streams, CAST(SUM(COALESCE(latency_count, requests)) AS BIGINT) AS latency_count, \
     CAST(SUM(duration_sum_us) AS BIGINT) AS duration_sum_us, \
     CAST(SUM(ttfb_sum_us) AS BIGINT) AS ttfb_sum_us, CAST(SUM(ttfb_count) AS BIGINT) AS ttfb_count, \
     CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens, \
     CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens, \
     CAST(SUM(total_tokens) AS BIGINT) AS total_tokens";

/// The rollup rows of a window as one relation `r` with time column `t`: rows of the coarse
/// table (`coarse`, time column `col`: hourly or per-minute) from `$1` (aligned to its
/// granularity) to `$2` (until), plus the per-minute rows from `$3` (the window's start) up to
/// `$1`, which cover the window's first, partial hour exactly.
fn window_rows(coarse: &str, col: &str, fine: &str, columns: &str) -> String {
    format!(
        "(SELECT {col} AS t, {columns} FROM {coarse} WHERE {col} >= $1 AND {col} <= $2 \
         UNION ALL SELECT minute AS t, {columns} FROM {fine} WHERE minute >= $3 AND minute < $1) r"
    )
}

const ROLLUP_COLUMNS: &str = "key_id, model, source_path, requests, errors, streams, \
     latency_count, duration_sum_us, ttfb_sum_us, ttfb_count, prompt_tokens, completion_tokens, \
     total_tokens";

/// Sums per series bucket. Binds: coarse start, until, window start, series origin, bucket
/// width. The database does the grouping, so only one row per bucket comes back.
fn series_sql(coarse: &str, col: &str) -> String {
    let rows = window_rows(coarse, col, "audit_rollup_minute", ROLLUP_COLUMNS);
    let b = "CAST((t - $4) / $5 AS BIGINT)";
    format!("SELECT CAST({b} AS TEXT) AS g, {SUMS} FROM {rows} GROUP BY {b}")
}

/// Sums per `group` column (`key_id` or `model`), rows without one left out. Binds: coarse
/// start, until, window start.
fn group_sql(coarse: &str, col: &str, group: &str) -> String {
    let rows = window_rows(coarse, col, "audit_rollup_minute", ROLLUP_COLUMNS);
    format!("SELECT {group} AS g, {SUMS} FROM {rows} WHERE {group} <> '' GROUP BY {group}")
}

/// The latency histogram of the window. Binds: coarse start, until, window start.
fn hist_sql(coarse: &str, col: &str) -> String {
    let rows = window_rows(coarse, col, "audit_latency_minute", "bucket, count");
    format!("SELECT bucket, CAST(SUM(count) AS BIGINT) FROM {rows} GROUP BY bucket ORDER BY bucket")
}

const KEYS_SQL: &str = "SELECT COUNT(*), CAST(COALESCE(SUM(CASE WHEN active = $1 AND \
     (expires_at IS NULL OR expires_at > $2) THEN 1 ELSE 0 END), 0) AS BIGINT) FROM api_keys";

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

impl Store {
    /// Aggregates over `window` ending at `now` (see [`Metrics`] for the bucket alignment).
    pub async fn metrics(
        &self,
        window: MetricsWindow,
        now: SystemTime,
    ) -> Result<Metrics, StoreError> {
        let bucket_ms = i64::try_from(window.bucket().as_millis()).unwrap_or(i64::MAX);
        let window_ms = i64::try_from(window.duration().as_millis()).unwrap_or(i64::MAX);
        let now_ms = to_ms(now);
        // The window, to the minute (the finest rollup); the series starts at the bucket that
        // holds it, so its first bucket is partial.
        let start_ms = (now_ms - window_ms).div_euclid(MINUTE_MS) * MINUTE_MS;
        let since_ms = start_ms.div_euclid(bucket_ms) * bucket_ms;
        let n_buckets = usize::try_from((now_ms - since_ms).div_euclid(bucket_ms) + 1).unwrap_or(0);

        // Hour-wide buckets (24 h, 7 d) read the hourly rollups from the first whole hour of
        // the window on, and the per-minute rollups before it.
        let (table, col, hist_table, coarse_ms) = if bucket_ms % HOUR_MS == 0 {
            ("audit_rollup_hour", "hour", "audit_latency_hour", HOUR_MS)
        } else {
            (
                "audit_rollup_minute",
                "minute",
                "audit_latency_minute",
                MINUTE_MS,
            )
        };
        let coarse_start = (start_ms + coarse_ms - 1).div_euclid(coarse_ms) * coarse_ms;
        let (series_q, key_q, model_q) = (
            series_sql(table, col),
            group_sql(table, col, "key_id"),
            group_sql(table, col, "model"),
        );
        let hist_q = hist_sql(hist_table, col);
        let (by_bucket, by_key, by_model, hist, keys) = on_pool!(&self.inner.db, |pool| {
            let by_bucket: Vec<AggRow> = sqlx::query_as(&series_q)
                .bind(coarse_start)
                .bind(now_ms)
                .bind(start_ms)
                .bind(since_ms)
                .bind(bucket_ms)
                .fetch_all(pool)
                .await?;
            let by_key: Vec<AggRow> = sqlx::query_as(&key_q)
                .bind(coarse_start)
                .bind(now_ms)
                .bind(start_ms)
                .fetch_all(pool)
                .await?;
            let by_model: Vec<AggRow> = sqlx::query_as(&model_q)
                .bind(coarse_start)
                .bind(now_ms)
                .bind(start_ms)
                .fetch_all(pool)
                .await?;
            let hist: Vec<(i32, i64)> = sqlx::query_as(&hist_q)
                .bind(coarse_start)
                .bind(now_ms)
                .bind(start_ms)
                .fetch_all(pool)
                .await?;
            let keys: (i64, i64) = sqlx::query_as(KEYS_SQL)
                .bind(true)
                .bind(now_ms)
                .fetch_one(pool)
                .await?;
            (by_bucket, by_key, by_model, hist, keys)
        });

        let mut series: Vec<SeriesPoint> = (0..n_buckets)
            .map(|i| SeriesPoint {
                ts: from_ms(since_ms + bucket_ms * i as i64),
                requests: 0,
                errors: 0,
                total_tokens: 0,
            })
            .collect();
        let (mut total, mut errors, mut streams, mut dur_us, mut ttfb_us, mut ttfb_n) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        let mut timed = 0u64;
        let (mut prompt, mut completion, mut tokens) = (0u64, 0u64, 0u64);
        for r in by_bucket {
            let (req, err, tok) = (to_u64(r.requests), to_u64(r.errors), to_u64(r.total_tokens));
            total += req;
            errors += err;
            streams += to_u64(r.streams);
            timed += to_u64(r.latency_count);
            dur_us = dur_us.saturating_add(to_u64(r.duration_sum_us));
            ttfb_us = ttfb_us.saturating_add(to_u64(r.ttfb_sum_us));
            ttfb_n += to_u64(r.ttfb_count);
            prompt = prompt.saturating_add(to_u64(r.prompt_tokens));
            completion = completion.saturating_add(to_u64(r.completion_tokens));
            tokens = tokens.saturating_add(tok);
            if let Some(p) = r.g.parse::<usize>().ok().and_then(|i| series.get_mut(i)) {
                p.requests += req;
                p.errors += err;
                p.total_tokens = p.total_tokens.saturating_add(tok);
            }
        }
        let mut per_key: Vec<KeyUsage> = by_key
            .into_iter()
            .map(|r| KeyUsage {
                key_id: r.g,
                source_path: r.source_path,
                requests: to_u64(r.requests),
                errors: to_u64(r.errors),
                total_tokens: to_u64(r.total_tokens),
            })
            .collect();
        let mut per_model: Vec<ModelUsage> = by_model
            .into_iter()
            .map(|r| ModelUsage {
                model: r.g,
                requests: to_u64(r.requests),
                total_tokens: to_u64(r.total_tokens),
            })
            .collect();
        per_key.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.key_id.cmp(&b.key_id))
        });
        per_model.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.model.cmp(&b.model))
        });

        let success = total - errors.min(total);
        Ok(Metrics {
            window,
            since: from_ms(start_ms),
            until: now,
            bucket: window.bucket(),
            total_requests: total,
            success_count: success,
            error_count: errors,
            success_rate: ratio(success, total),
            avg_latency_ms: ratio(dur_us, timed) / 1000.0,
            p50_latency_ms: quantile_ms(&hist, 0.50),
            p95_latency_ms: quantile_ms(&hist, 0.95),
            avg_ttfb_ms: ratio(ttfb_us, ttfb_n) / 1000.0,
            latency_samples: timed,
            ttfb_samples: ttfb_n,
            stream_requests: streams,
            stream_share: ratio(streams, total),
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: tokens,
            active_keys: to_u64(keys.1),
            total_keys: to_u64(keys.0),
            per_key,
            per_model,
            series,
        })
    }

    /// The last `count` periods up to `now`, oldest first, every one listed (empty ones with
    /// zeros); the last one is the current, partial period. Read from the hourly rollups, so
    /// periods start on whole hours: a day starts at midnight of `utc_offset_hours` (−12 to
    /// +14; other values are [`StoreError::InvalidInput`]).
    pub async fn periods(
        &self,
        period: Period,
        count: u32,
        utc_offset_hours: i32,
        now: SystemTime,
    ) -> Result<Vec<PeriodMetrics>, StoreError> {
        if count > 100_000 {
            return Err(StoreError::InvalidInput("at most 100,000 periods"));
        }
        if !(-12..=14).contains(&utc_offset_hours) {
            return Err(StoreError::InvalidInput(
                "the UTC offset must be whole hours from -12 to +14",
            ));
        }
        let width = match period {
            Period::Hour => HOUR_MS,
            Period::Day => 24 * HOUR_MS,
        };
        let offset = i64::from(utc_offset_hours) * HOUR_MS;
        let now_ms = to_ms(now);
        let current = (now_ms + offset).div_euclid(width) * width - offset;
        let count = count.max(1);
        let first = current - width * i64::from(count - 1);
        let (sums_q, hist_q) = (period_sql(), period_hist_sql());
        let (sums, hist) = on_pool!(&self.inner.db, |pool| {
            let sums: Vec<AggRow> = sqlx::query_as(&sums_q)
                .bind(first)
                .bind(now_ms)
                .bind(width)
                .fetch_all(pool)
                .await?;
            let hist: Vec<(i64, i32, i64)> = sqlx::query_as(&hist_q)
                .bind(first)
                .bind(now_ms)
                .bind(width)
                .fetch_all(pool)
                .await?;
            (sums, hist)
        });
        let mut out: Vec<PeriodMetrics> = (0..i64::from(count))
            .map(|i| PeriodMetrics {
                start: from_ms(first + width * i),
                requests: 0,
                errors: 0,
                streams: 0,
                latency_samples: 0,
                avg_latency_ms: None,
                p50_latency_ms: None,
                p95_latency_ms: None,
                prompt_tokens: 0,
                completion_tokens: 0,
                total_tokens: 0,
            })
            .collect();
        for r in sums {
            let Some(p) = r.g.parse::<usize>().ok().and_then(|i| out.get_mut(i)) else {
                continue;
            };
            p.requests = to_u64(r.requests);
            p.errors = to_u64(r.errors);
            p.streams = to_u64(r.streams);
            p.latency_samples = to_u64(r.latency_count);
            p.prompt_tokens = to_u64(r.prompt_tokens);
            p.completion_tokens = to_u64(r.completion_tokens);
            p.total_tokens = to_u64(r.total_tokens);
            p.avg_latency_ms = (p.latency_samples > 0)
                .then(|| ratio(to_u64(r.duration_sum_us), p.latency_samples) / 1000.0);
        }
        for group in hist.chunk_by(|a, b| a.0 == b.0) {
            let buckets: Vec<(i32, i64)> = group.iter().map(|h| (h.1, h.2)).collect();
            if let Some(p) = usize::try_from(group[0].0)
                .ok()
                .and_then(|g| out.get_mut(g))
                && p.latency_samples > 0
            {
                p.p50_latency_ms = Some(quantile_ms(&buckets, 0.50));
                p.p95_latency_ms = Some(quantile_ms(&buckets, 0.95));
            }
        }
        Ok(out)
    }
}

/// Sums per period of the hourly rollups. Binds: first period's start, until, period width.
fn period_sql() -> String {
    let p = "CAST((hour - $1) / $3 AS BIGINT)";
    format!(
        "SELECT CAST({p} AS TEXT) AS g, {SUMS} FROM audit_rollup_hour \
         WHERE hour >= $1 AND hour <= $2 GROUP BY {p}"
    )
}

/// Latency histogram per period of the hourly histograms. Same binds as [`period_sql`].
fn period_hist_sql() -> String {
    let p = "CAST((hour - $1) / $3 AS BIGINT)";
    format!(
        "SELECT {p} AS g, bucket, CAST(SUM(count) AS BIGINT) FROM audit_latency_hour \
         WHERE hour >= $1 AND hour <= $2 GROUP BY {p}, bucket ORDER BY {p}, bucket"
    )
}

/// Periods of [`Store::periods`]: `Hour` or `Day`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    /// Whole hours.
    Hour,
    /// Whole days, starting at midnight of the given UTC offset.
    Day,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn buckets_are_monotonic_and_bounded() {
        let mut last = 0;
        for ms in [
            0.0, 0.5, 1.0, 1.05, 1.2, 10.0, 99.0, 100.0, 1000.0, 60_000.0, 1e9,
        ] {
            let b = latency_bucket(Duration::from_secs_f64(ms / 1000.0));
            assert!(b >= last, "{ms}");
            last = b;
            if b > 0 && b < MAX_BUCKET {
                let (lo, hi) = bucket_bounds(b);
                assert!(
                    lo <= ms * 1.000_001 && ms < hi * 1.000_001,
                    "{ms} not in [{lo},{hi})"
                );
            }
        }
        assert_eq!(latency_bucket(Duration::from_secs(1_000_000)), MAX_BUCKET);
    }

    #[test]
    fn quantiles_are_within_ten_percent() {
        // 1..=1000 ms uniformly: exact p50 = 500, p95 = 950.
        let mut hist: HashMap<i32, i64> = HashMap::new();
        for ms in 1..=1000u64 {
            *hist
                .entry(latency_bucket(Duration::from_millis(ms)))
                .or_default() += 1;
        }
        let mut hist: Vec<(i32, i64)> = hist.into_iter().collect();
        hist.sort_unstable();
        for (q, exact) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0), (0.01, 10.0)] {
            let est = quantile_ms(&hist, q);
            assert!(
                (est - exact).abs() / exact <= 0.10,
                "q{q}: {est} vs {exact}"
            );
        }
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }
}
