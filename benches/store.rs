//! fastgate-store benchmarks: audit insert throughput (SQLite, and PostgreSQL when
//! `FASTGATE_TEST_DATABASE_URL` is set), key validation cached vs uncached, and the 24 h metrics
//! query over 1,000,000 audit rows on SQLite.
//!
//! `cargo bench -p fastgate-store --bench store` (bounded: about two minutes, most of it spent
//! generating the million rows). `FG_BENCH_ROWS` overrides the row count of the metrics bench.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fastgate_layer::audit::AuditBatch;
use fastgate_layer::{AuditEvent, AuditSink, KeyResolver, Outcome, PresentedKey, TokenUsage};
use fastgate_store::{MetricsWindow, NewKey, Store, StoreOptions};

const BATCH: usize = 500;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A realistic event: 20 keys, 4 models, 10 % errors, 40 % streams, lognormal-ish latency.
fn event(i: u64, at: SystemTime) -> AuditEvent {
    let mut e = AuditEvent::new(
        format!("0193a4b2-{i:012x}"),
        "POST",
        "/proxy/miniai/v2/chat/completions",
    );
    e.started_at = at;
    let key = i % 20;
    e.key_id = Some(Arc::from(format!("k_bench{key:02}").as_str()));
    e.source_path = Some(Arc::from(format!("user{key}").as_str()));
    e.client_ip = Some("10.0.0.7".to_owned());
    e.user_agent = Some("python-httpx/0.27".to_owned());
    e.target_url = Some(Arc::from(
        "http://127.0.0.1:1030/miniai/v2/chat/completions",
    ));
    // (i / 20) % 4: every key uses every model, so each minute has 80 key × model rollup rows.
    e.model = Some(
        ["gpt-3.5-turbo", "gpt-4o", "qwen2-72b", "llama3-8b"][((i / 20) % 4) as usize].to_owned(),
    );
    e.is_stream = i % 5 < 2;
    e.status = if i.is_multiple_of(10) { 502 } else { 200 };
    e.outcome = if i.is_multiple_of(10) {
        Outcome::UpstreamError
    } else {
        Outcome::Completed
    };
    e.request_bytes = 300 + i % 500;
    e.response_bytes = 2_000 + i % 20_000;
    let ms = 20 + (i * 7919 % 997) * (1 + i % 3);
    e.duration = Duration::from_millis(ms);
    e.ttfb = Some(Duration::from_millis(ms / 8 + 1));
    e.usage = Some(TokenUsage {
        prompt_tokens: Some(40),
        completion_tokens: Some(100 + i % 200),
        total_tokens: 140 + i % 200,
    });
    e
}

struct Db {
    url: String,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

async fn sqlite_db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    Db {
        url: format!("sqlite:{}", dir.path().join("bench.db").display()),
        _dir: Some(dir),
        pg: None,
    }
}

async fn pg_db(admin: &str, tag: &str) -> Db {
    let name = format!("fgb_{}_{tag}", std::process::id());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(admin)
        .await
        .unwrap();
    sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let (base, q) = admin
        .split_once('?')
        .map_or((admin, None), |(b, q)| (b, Some(q)));
    let slash = base.rfind('/').unwrap();
    let url = format!(
        "{}/{name}{}",
        &base[..slash],
        q.map(|q| format!("?{q}")).unwrap_or_default()
    );
    Db {
        url,
        _dir: None,
        pg: Some((admin.to_owned(), name)),
    }
}

async fn drop_db(db: &Db) {
    if let Some((admin, name)) = &db.pg {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(admin)
            .await
            .unwrap();
        let _ = sqlx::Executor::execute(
            &mut conn,
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
        )
        .await;
    }
}

fn backends() -> Vec<&'static str> {
    let mut v = vec!["sqlite"];
    if std::env::var("FASTGATE_TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        v.push("postgres");
    }
    v
}

async fn open(backend: &str, tag: &str, opts: StoreOptions) -> (Db, Store) {
    let db = match backend {
        "sqlite" => sqlite_db().await,
        _ => pg_db(&std::env::var("FASTGATE_TEST_DATABASE_URL").unwrap(), tag).await,
    };
    let store = Store::connect(&db.url, opts).await.unwrap();
    (db, store)
}

fn audit_insert(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("audit_insert");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(BATCH as u64));
    for backend in backends() {
        let (db, store) = rt.block_on(open(backend, "insert", StoreOptions::default()));
        let mut sink = store.audit_sink();
        let mut n = 0u64;
        group.bench_function(BenchmarkId::new(backend, format!("batch{BATCH}")), |b| {
            b.iter_custom(|iters| {
                let now = SystemTime::now();
                let batches: Vec<AuditBatch> = (0..iters)
                    .map(|_| {
                        (0..BATCH)
                            .map(|_| {
                                n += 1;
                                event(n, now - Duration::from_millis(n % 86_400_000))
                            })
                            .collect()
                    })
                    .collect();
                let start = Instant::now();
                rt.block_on(async {
                    for batch in &batches {
                        sink.write_batch(batch).await.unwrap();
                    }
                });
                start.elapsed()
            });
        });
        rt.block_on(async {
            store.close().await;
            drop_db(&db).await;
        });
    }
    group.finish();
}

fn key_validation(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("key_validation");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    for backend in backends() {
        for (label, ttl) in [
            ("cached", Duration::from_secs(60)),
            ("uncached", Duration::ZERO),
        ] {
            let opts = StoreOptions {
                cache_ttl: ttl,
                ..StoreOptions::default()
            };
            let (db, store) = rt.block_on(open(backend, label, opts));
            let secret = rt.block_on(async {
                // Some keys so the lookup is not on a one-row table.
                for i in 0..999 {
                    store
                        .create_key(NewKey {
                            source_path: format!("u{i}"),
                            permissions: vec!["chat".into()],
                            ..NewKey::default()
                        })
                        .await
                        .unwrap();
                }
                store
                    .create_key(NewKey {
                        source_path: "bench".into(),
                        permissions: vec!["chat".into()],
                        ..NewKey::default()
                    })
                    .await
                    .unwrap()
                    .secret
            });
            let resolver = store.key_resolver();
            let key = PresentedKey::parse(&secret).unwrap();
            group.bench_function(BenchmarkId::new(backend, label), |b| {
                b.to_async(&rt).iter(|| {
                    let r = resolver.clone();
                    let k = key.clone();
                    async move { black_box(r.resolve(k).await.unwrap()) }
                });
            });
            rt.block_on(async {
                store.close().await;
                drop_db(&db).await;
            });
        }
    }
    group.finish();
}

fn metrics_1m(c: &mut Criterion) {
    let rows: u64 = std::env::var("FG_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = runtime();
    let (db, store) = rt.block_on(open("sqlite", "metrics", StoreOptions::default()));
    let now = SystemTime::now();
    let start = Instant::now();
    rt.block_on(async {
        for i in 0..20 {
            let _ = store
                .create_key(NewKey {
                    source_path: format!("user{i}"),
                    permissions: vec!["chat".into()],
                    ..NewKey::default()
                })
                .await;
        }
        // Rows spread evenly over the last 24 h, inserted in time order as a gateway would.
        let step_ns = 86_400_000_000_000u64 / rows;
        let mut i = 0u64;
        while i < rows {
            let batch: Vec<AuditEvent> = (i..(i + 5_000).min(rows))
                .map(|j| event(j, now - Duration::from_nanos((rows - j) * step_ns)))
                .collect();
            store.insert_audit(&batch).await.unwrap();
            i += batch.len() as u64;
        }
    });
    let took = start.elapsed();
    let count = rt.block_on(store.count_audit()).unwrap();
    eprintln!(
        "metrics bench: generated {count} audit rows in {:.1} s ({:.0} rows/s, rollups included)",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64()
    );
    let m = rt.block_on(store.metrics(MetricsWindow::Day, now)).unwrap();
    eprintln!(
        "metrics bench: 24h → {} requests, {} errors, p50 {:.1} ms, p95 {:.1} ms, {} keys, {} models, {} buckets",
        m.total_requests,
        m.error_count,
        m.p50_latency_ms,
        m.p95_latency_ms,
        m.per_key.len(),
        m.per_model.len(),
        m.series.len()
    );
    let mut group = c.benchmark_group("metrics");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(6));
    for window in [MetricsWindow::Hour, MetricsWindow::Day, MetricsWindow::Week] {
        group.bench_function(
            BenchmarkId::new(format!("sqlite_{rows}_rows"), window.as_str()),
            |b| {
                b.to_async(&rt).iter(|| {
                    let s = store.clone();
                    async move { black_box(s.metrics(window, now).await.unwrap()) }
                });
            },
        );
    }
    group.finish();
    rt.block_on(store.close());
    drop(db);
}

criterion_group!(benches, audit_insert, key_validation, metrics_1m);
criterion_main!(benches);
