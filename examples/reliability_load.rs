//! A small load generator for FastGate's soak and load scripts (`scripts/soak.sh`,
//! `scripts/load-100k.sh`; not the performance session's `loadgen`). Loopback only: it refuses any host but 127.0.0.1 / localhost.
//!
//! ```text
//! cargo run --release --example reliability_load -- --url http://127.0.0.1:8514/proxy/miniai/v2/chat/completions \
//!     --key fg_… --requests 100000 --concurrency 64
//! cargo run --release --example reliability_load -- … --rate 200 --duration 600     # steady rate
//! cargo run --release --example reliability_load -- … --open-streams 1000           # concurrent streams
//! ```
//!
//! Prints one JSON line: requests sent, 2xx, errors, elapsed seconds, rate, latency percentiles.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// The proxied endpoint.
    #[arg(long)]
    url: String,
    /// Gateway key (X-API-Key).
    #[arg(long)]
    key: String,
    /// Total requests (closed loop, as fast as `concurrency` allows); 0 with --duration.
    #[arg(long, default_value_t = 0)]
    requests: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Steady rate (requests per second) for --duration seconds.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to run at --rate.
    #[arg(long, default_value_t = 0)]
    duration: u64,
    /// Every Nth request streams (0: none).
    #[arg(long, default_value_t = 0)]
    stream_every: u64,
    /// Open this many streams at once, wait until all are open, then read them all.
    #[arg(long, default_value_t = 0)]
    open_streams: usize,
}

fn body(stream: bool) -> String {
    format!(
        r#"{{"model":"gpt-3.5-turbo","messages":[{{"role":"user","content":"Hello"}}],"stream":{stream}}}"#
    )
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    lat_us: std::sync::Mutex<Vec<u64>>,
}

async fn one(client: &reqwest::Client, args: &Args, stream: bool, tally: &Tally) {
    tally.sent.fetch_add(1, Ordering::Relaxed);
    let t = Instant::now();
    let res = client
        .post(&args.url)
        .header("X-API-Key", &args.key)
        .header("content-type", "application/json")
        .body(body(stream))
        .send()
        .await;
    let ok = match res {
        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
        _ => false,
    };
    if ok {
        tally.ok.fetch_add(1, Ordering::Relaxed);
        let us = t.elapsed().as_micros() as u64;
        tally.lat_us.lock().unwrap().push(us);
    } else {
        tally.errors.fetch_add(1, Ordering::Relaxed);
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let host = reqwest::Url::parse(&args.url)
        .expect("--url")
        .host_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        host == "127.0.0.1" || host == "localhost",
        "loadgen only sends to loopback"
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.concurrency.max(args.open_streams))
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let tally = Arc::new(Tally::default());
    let started = Instant::now();

    if args.open_streams > 0 {
        // All streams open at once: each reads its headers, waits for every other one to be open,
        // then reads its body to the end.
        let opened = Arc::new(tokio::sync::Barrier::new(args.open_streams + 1));
        let mut tasks = Vec::new();
        for _ in 0..args.open_streams {
            let (client, args, tally, opened) =
                (client.clone(), args.clone(), tally.clone(), opened.clone());
            tasks.push(tokio::spawn(async move {
                tally.sent.fetch_add(1, Ordering::Relaxed);
                let res = client
                    .post(&args.url)
                    .header("X-API-Key", &args.key)
                    .body(body(true))
                    .send()
                    .await;
                opened.wait().await;
                match res {
                    Ok(r) if r.status().is_success() => match r.text().await {
                        Ok(t) if t.ends_with("data: [DONE]\n\n") => {
                            tally.ok.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => tally.errors.fetch_add(1, Ordering::Relaxed),
                    },
                    _ => tally.errors.fetch_add(1, Ordering::Relaxed),
                };
            }));
        }
        opened.wait().await;
        let all_open = started.elapsed().as_secs_f64();
        // Signal to a script sampling RSS that every stream is open.
        eprintln!("ALL_STREAMS_OPEN after {all_open:.2}s");
        if let Ok(wait) = std::env::var("LOADGEN_HOLD_MS") {
            tokio::time::sleep(Duration::from_millis(wait.parse().unwrap_or(0))).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
    } else if args.rate > 0 {
        let period = Duration::from_secs_f64(1.0 / args.rate as f64);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = Instant::now() + Duration::from_secs(args.duration);
        let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
        let mut n = 0u64;
        while Instant::now() < end {
            tick.tick().await;
            n += 1;
            let stream = args.stream_every > 0 && n.is_multiple_of(args.stream_every);
            let permit = limit.clone().acquire_owned().await.unwrap();
            let (client, args, tally) = (client.clone(), args.clone(), tally.clone());
            tokio::spawn(async move {
                one(&client, &args, stream, &tally).await;
                drop(permit);
            });
        }
        let _ = limit.acquire_many(args.concurrency as u32).await;
    } else {
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let (client, args, tally, next) =
                (client.clone(), args.clone(), tally.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= args.requests {
                        break;
                    }
                    let stream = args.stream_every > 0 && (n + 1).is_multiple_of(args.stream_every);
                    one(&client, &args, stream, &tally).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = tally.lat_us.lock().unwrap().clone();
    lat.sort_unstable();
    let ok = tally.ok.load(Ordering::Relaxed);
    println!(
        "{{\"sent\":{},\"ok\":{ok},\"errors\":{},\"elapsed_s\":{elapsed:.2},\"rate_per_s\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2}}}",
        tally.sent.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        ok as f64 / elapsed,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
    );
}
