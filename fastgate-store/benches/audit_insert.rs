//! CPU cost per audit row of `Store::insert_audit` on a SQLite file (WAL), as the gateway's audit
//! worker drives it: batches of up to 512 realistic rows (uuid request ids, a few keys and
//! models, timestamps advancing at ~15 k req/s), rollups and histograms in the same transaction.
//!
//! `cargo bench -p fastgate-store --bench audit_insert`
//!
//! Besides criterion's wall-clock figure (µs per row = time / 512), a CPU pass prints, per row:
//! the CPU of the whole process (`/proc/self/stat` utime+stime) and of sqlx's SQLite worker
//! threads alone (`/proc/self/task/*/schedstat`, threads named `sqlx-sqlite-*`), for full
//! 512-row batches and for batches of varying size (1..=512). `FG_BENCH_CPU_BATCHES` sets the
//! number of batches of each CPU pass (default 300), `FG_BENCH_CPU_PASSES` which passes run
//! (`full,mixed` by default; `none` for criterion's figure alone). `FG_BENCH_DATABASE_URL` runs
//! it on another database instead (e.g. an empty PostgreSQL one; the worker figure is then 0).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fastgate_layer::{AuditEvent, Outcome, TokenUsage};
use fastgate_store::{Store, StoreOptions};

const BATCH: usize = 512;
/// 15 k req/s → one request every ~67 µs.
const STEP_US: u64 = 67;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

struct Gen {
    n: u64,
    t0: SystemTime,
    keys: Vec<(Arc<str>, Arc<str>)>,
    target: Arc<str>,
}

impl Gen {
    fn new() -> Self {
        Self {
            n: 0,
            t0: SystemTime::now(),
            keys: (0..4)
                .map(|i| {
                    (
                        Arc::from(format!("k_{}", uuid::Uuid::now_v7()).as_str()),
                        Arc::from(format!("user{i}").as_str()),
                    )
                })
                .collect(),
            target: Arc::from("http://127.0.0.1:1030/miniai/v2/chat/completions"),
        }
    }

    fn event(&mut self) -> AuditEvent {
        let i = self.n;
        self.n += 1;
        let mut e = AuditEvent::new(
            uuid::Uuid::now_v7().to_string(),
            "POST",
            "/proxy/miniai/v2/chat/completions",
        );
        e.started_at = self.t0 + Duration::from_micros(i * STEP_US);
        let (key, sp) = &self.keys[(i % 4) as usize];
        e.key_id = Some(key.clone());
        e.source_path = Some(sp.clone());
        e.client_ip = Some("127.0.0.1".to_owned());
        e.user_agent = Some("python-httpx/0.27.0".to_owned());
        e.target_url = Some(self.target.clone());
        e.model = Some(
            if i.is_multiple_of(3) {
                "gpt-4o"
            } else {
                "qwen2-72b"
            }
            .to_owned(),
        );
        e.is_stream = i % 5 < 2;
        e.status = if i.is_multiple_of(50) { 502 } else { 200 };
        e.outcome = if i.is_multiple_of(50) {
            Outcome::UpstreamError
        } else {
            Outcome::Completed
        };
        e.request_bytes = 300 + i % 500;
        e.response_bytes = 2_000 + i % 20_000;
        let ms = 2 + (i * 7919 % 97);
        e.duration = Duration::from_millis(ms);
        e.ttfb = Some(Duration::from_millis(ms / 4 + 1));
        e.usage = Some(TokenUsage {
            prompt_tokens: Some(40),
            completion_tokens: Some(100 + i % 200),
            total_tokens: 140 + i % 200,
        });
        e
    }

    fn batch(&mut self, n: usize) -> Vec<AuditEvent> {
        (0..n).map(|_| self.event()).collect()
    }
}

/// CPU time of the whole process (all threads, dead ones included), in µs.
fn process_cpu_us() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks * 10_000.0 // USER_HZ = 100
}

/// CPU time of the live sqlx SQLite worker threads, in µs.
fn sqlite_worker_cpu_us() -> f64 {
    let mut total = 0.0;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.starts_with("sqlx-sqlite") {
            let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1000.0;
        }
    }
    total
}

fn open(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = std::env::var("FG_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite:{}", dir.path().join("bench.db").display()));
    let store = rt
        .block_on(Store::connect(&url, StoreOptions::default()))
        .unwrap();
    (dir, store)
}

fn cpu_pass(rt: &tokio::runtime::Runtime, label: &str, sizes: &[usize]) {
    let (_dir, store) = open(rt);
    let mut g = Gen::new();
    // Warm up: a table that already holds rows, caches filled.
    rt.block_on(async {
        for _ in 0..40 {
            store.insert_audit(&g.batch(BATCH)).await.unwrap();
        }
    });
    let batches: Vec<Vec<AuditEvent>> = sizes.iter().map(|&n| g.batch(n)).collect();
    let rows: usize = sizes.iter().sum();
    let (p0, w0, t0) = (process_cpu_us(), sqlite_worker_cpu_us(), Instant::now());
    rt.block_on(async {
        for b in &batches {
            store.insert_audit(b).await.unwrap();
        }
    });
    let wall = t0.elapsed().as_secs_f64() * 1e6;
    let (p1, w1) = (process_cpu_us(), sqlite_worker_cpu_us());
    let rows_f = rows as f64;
    eprintln!(
        "audit_insert cpu [{label}]: {rows} rows in {} batches: wall {:.2} µs/row, process CPU {:.2} µs/row, sqlite worker CPU {:.2} µs/row",
        sizes.len(),
        wall / rows_f,
        (p1 - p0) / rows_f,
        (w1 - w0) / rows_f,
    );
    rt.block_on(store.close());
}

fn audit_insert(c: &mut Criterion) {
    let rt = runtime();
    let n_batches: usize = std::env::var("FG_BENCH_CPU_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let passes = std::env::var("FG_BENCH_CPU_PASSES").unwrap_or_else(|_| "full,mixed".into());
    if passes.contains("full") {
        cpu_pass(&rt, "512-row batches", &vec![BATCH; n_batches]);
    }
    if passes.contains("mixed") {
        // Deterministic pseudo-random sizes 1..=512 (a lighter, bursty load).
        let mixed: Vec<usize> = (0..n_batches as u64)
            .map(|i| (i * 2_654_435_761 % 512 + 1) as usize)
            .collect();
        cpu_pass(&rt, "1..=512-row batches", &mixed);
    }

    let (_dir, store) = open(&rt);
    let mut g = Gen::new();
    let mut group = c.benchmark_group("audit_insert_sqlite");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("batch512", |b| {
        b.iter_custom(|iters| {
            let batches: Vec<Vec<AuditEvent>> = (0..iters).map(|_| g.batch(BATCH)).collect();
            let start = Instant::now();
            rt.block_on(async {
                for batch in &batches {
                    store.insert_audit(batch).await.unwrap();
                }
            });
            start.elapsed()
        });
    });
    group.finish();
    rt.block_on(store.close());
}

criterion_group!(benches, audit_insert);
criterion_main!(benches);
