//! A small load generator for `benches/load.sh`: the measurements `wrk` cannot make.
//!
//! ```text
//! loadgen rate   --url A [--url B] --rate 500 --seconds 10   # open loop, latency from the scheduled send time
//! loadgen stream --url A --url B [--url C…] --count 20       # SSE: TTFB and per-event arrival, each URL vs A, interleaved
//! loadgen hold   --url A --count 1000 --hold-ms 3000         # N concurrent open streams, prints READY
//! loadgen count  --url A --count 100000 --connections 32     # exactly N requests, closed loop, all must be 2xx
//! ```
//!
//! Every request is a `POST` with `--body` and the `--header name:value` headers. Output is
//! `key=value` lines for the script to parse. Loopback use only; every loop is bounded.
//! (Owned by the performance work on issue 6; `benches/load.sh` depends on it.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Parser, Debug)]
#[command(about = "load generator for benches/load.sh")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
    /// Target URL (repeat for an interleaved comparison where the mode supports it).
    #[arg(long, global = true)]
    url: Vec<String>,
    /// Extra request header `name:value` (repeatable).
    #[arg(long, global = true)]
    header: Vec<String>,
    /// Request body.
    #[arg(
        long,
        global = true,
        default_value = r#"{"model":"gpt-3.5-turbo","messages":[{"role":"user","content":"Hello"}]}"#
    )]
    body: String,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Open loop at a fixed rate; latency from the scheduled send time (no coordinated omission).
    Rate {
        #[arg(long, default_value_t = 500)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Warm-up seconds at the same rate, not recorded.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
    },
    /// Sequential streaming requests, alternating between the URLs. With `--serve PORT` this
    /// process is also the SSE upstream on 127.0.0.1:PORT: every event carries its send instant,
    /// so the delay each event picks up on the way is measured exactly, per event.
    Stream {
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Serve the SSE upstream on this loopback port.
        #[arg(long)]
        serve: Option<u16>,
        /// Events per stream (served upstream).
        #[arg(long, default_value_t = 8)]
        events: usize,
        /// Milliseconds between events (served upstream).
        #[arg(long, default_value_t = 50)]
        gap_ms: u64,
    },
    /// Open `count` streams at once, wait until each has its first event, hold, then close.
    Hold {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 3000)]
        hold_ms: u64,
    },
    /// Exactly `count` requests over `connections` concurrent workers.
    Count {
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Target {
    client: HttpClient,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    body: Bytes,
}

impl Target {
    fn request(&self, url: &str) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut b = Request::post(url).header("content-type", "application/json");
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        Ok(b.body(Full::new(self.body.clone()))?)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(!args.url.is_empty(), "--url is required");
    for u in &args.url {
        anyhow::ensure!(
            u.starts_with("http://127.0.0.1:"),
            "loopback only: {u} is not http://127.0.0.1:PORT/…"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut headers = Vec::new();
    for h in &args.header {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--header wants name:value, got {h}"))?;
        headers.push((
            http::HeaderName::from_bytes(k.trim().as_bytes())?,
            http::HeaderValue::from_str(v.trim())?,
        ));
    }
    let _guard = rt.enter();
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(2048)
        .build(conn);
    let target = Arc::new(Target {
        client,
        headers,
        body: Bytes::from(args.body.clone()),
    });
    match args.mode {
        Mode::Rate {
            rate,
            seconds,
            warmup,
        } => {
            for url in &args.url {
                if warmup > 0 {
                    rate_run(&rt, &target, url, rate, warmup)?;
                }
                let mut lat = rate_run(&rt, &target, url, rate, seconds)?;
                print_percentiles(url, &mut lat);
            }
            Ok(())
        }
        Mode::Stream {
            count,
            serve,
            events,
            gap_ms,
        } => {
            let epoch = Instant::now();
            if let Some(port) = serve {
                let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))?;
                rt.spawn(serve_sse(
                    listener,
                    epoch,
                    events,
                    Duration::from_millis(gap_ms),
                ));
            }
            rt.block_on(stream_run(&target, &args.url, count, epoch))
        }
        Mode::Hold { count, hold_ms } => {
            rt.block_on(hold_run(&target, &args.url[0], count, hold_ms))
        }
        Mode::Count { count, connections } => {
            rt.block_on(count_run(&target, &args.url[0], count, connections))
        }
    }
}

/// One request, body read to the end; `Ok(true)` for a 2xx.
async fn one(target: &Target, url: &str) -> anyhow::Result<bool> {
    let res = target.client.request(target.request(url)?).await?;
    let ok = res.status().is_success();
    res.into_body().collect().await?;
    Ok(ok)
}

/// Open loop: a dispatcher thread sleeps to each scheduled instant (nanosleep, not the runtime's
/// millisecond timer) and spawns the request; latency runs from the scheduled instant.
fn rate_run(
    rt: &tokio::runtime::Runtime,
    target: &Arc<Target>,
    url: &str,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Vec<u64>> {
    let n = rate.max(1) * seconds;
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, bool)>();
    let start = Instant::now() + Duration::from_millis(20);
    let handle = rt.handle().clone();
    for i in 0..n {
        let at = start + period * u32::try_from(i)?;
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let (t, u, tx) = (target.clone(), url.to_owned(), tx.clone());
        handle.spawn(async move {
            let ok = matches!(one(&t, &u).await, Ok(true));
            let _ = tx.send((at.elapsed().as_nanos() as u64, ok));
        });
    }
    drop(tx);
    let mut lat = Vec::with_capacity(n as usize);
    let mut errors = 0u64;
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Ok(Some((ns, ok))) = tokio::time::timeout_at(deadline, rx.recv()).await {
            lat.push(ns);
            if !ok {
                errors += 1;
            }
        }
    });
    anyhow::ensure!(
        errors == 0 && lat.len() as u64 == n,
        "{url}: {errors} errors, {} of {n} answered",
        lat.len()
    );
    Ok(lat)
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn print_percentiles(url: &str, lat: &mut [u64]) {
    lat.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    println!(
        "rate url={url} n={} p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1}",
        lat.len(),
        us(pct(lat, 0.50)),
        us(pct(lat, 0.90)),
        us(pct(lat, 0.99)),
        us(pct(lat, 0.999)),
        us(*lat.last().unwrap_or(&0)),
    );
}

/// The served SSE upstream: `events` events `gap` apart (a dedicated thread sleeps to each
/// instant, so the runtime's millisecond timer does not blur the schedule), each carrying
/// `"t_ns"`, its send instant since `epoch`; then `data: [DONE]`.
async fn serve_sse(
    listener: tokio::net::TcpListener,
    epoch: Instant,
    events: usize,
    gap: Duration,
) {
    use hyper::body::Frame;
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                move |req: Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(events + 2);
                    std::thread::spawn(move || {
                        let start = Instant::now();
                        for i in 0..events {
                            let at = start + gap * u32::try_from(i).unwrap_or(0);
                            let now = Instant::now();
                            if at > now {
                                std::thread::sleep(at - now);
                            }
                            let t = epoch.elapsed().as_nanos();
                            let ev = format!(
                                "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}}}}],\"t_ns\":{t}}}\n\n"
                            );
                            if tx.blocking_send(Bytes::from(ev)).is_err() {
                                return;
                            }
                        }
                        let _ = tx.blocking_send(Bytes::from_static(b"data: [DONE]\n\n"));
                    });
                    let body = http_body_util::StreamBody::new(futures_util::stream::unfold(
                        rx,
                        |mut rx| async move {
                            rx.recv()
                                .await
                                .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
                        },
                    ));
                    let mut res = hyper::Response::new(body);
                    res.headers_mut().insert(
                        "content-type",
                        http::HeaderValue::from_static("text/event-stream"),
                    );
                    Ok::<_, std::convert::Infallible>(res)
                },
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `"t_ns":N` in an event, if present.
fn event_t_ns(event: &[u8]) -> Option<u128> {
    let key = b"\"t_ns\":";
    let at = event.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = event[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// For each SSE event of one streamed request: its arrival (from the send) and, when the event
/// carries its send instant, the transit time (arrival minus send instant).
async fn stream_once(
    target: &Target,
    url: &str,
    epoch: Instant,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let sent = Instant::now();
    let res = target.client.request(target.request(url)?).await?;
    anyhow::ensure!(res.status().is_success(), "{url}: status {}", res.status());
    let mut body = res.into_body();
    let mut arrivals = Vec::new();
    let mut transits = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let at = sent.elapsed();
        let since_epoch = epoch.elapsed().as_nanos();
        if let Some(data) = frame.data_ref() {
            tail.extend_from_slice(data);
            while let Some(pos) = tail.windows(2).position(|w| w == b"\n\n") {
                arrivals.push(at);
                if let Some(t) = event_t_ns(&tail[..pos]) {
                    let ns = since_epoch.saturating_sub(t);
                    transits.push(Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)));
                }
                tail.drain(..pos + 2);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{url}: stream longer than 10 s");
    }
    Ok((arrivals, transits))
}

async fn stream_run(
    target: &Target,
    urls: &[String],
    count: usize,
    epoch: Instant,
) -> anyhow::Result<()> {
    // Per URL: per event index, the arrival offsets over all requests; all transit times.
    let mut per_url: Vec<Vec<Vec<Duration>>> = vec![Vec::new(); urls.len()];
    let mut transit: Vec<Vec<Duration>> = vec![Vec::new(); urls.len()];
    for _ in 0..2 {
        for url in urls {
            stream_once(target, url, epoch).await?; // warm-up: connections, caches
        }
    }
    for _ in 0..count {
        for (u, url) in urls.iter().enumerate() {
            let (arrivals, transits) = stream_once(target, url, epoch).await?;
            transit[u].extend(transits);
            let slots = &mut per_url[u];
            if slots.len() < arrivals.len() {
                slots.resize(arrivals.len(), Vec::new());
            }
            for (i, a) in arrivals.into_iter().enumerate() {
                slots[i].push(a);
            }
        }
    }
    let median = |v: &Vec<Duration>| {
        let mut v = v.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (u, url) in urls.iter().enumerate() {
        let slots = &per_url[u];
        let ttfb = slots.first().map(median).unwrap_or_default();
        let ttfb_max = slots
            .first()
            .and_then(|v| v.iter().max().copied())
            .unwrap_or_default();
        let offsets: Vec<String> = slots
            .iter()
            .map(|v| format!("{:.2}", ms(median(v))))
            .collect();
        let mut tr = transit[u].clone();
        tr.sort_unstable();
        println!(
            "stream url={url} events={} ttfb_p50_ms={:.3} ttfb_max_ms={:.3} transit_n={} transit_p50_ms={:.3} transit_p99_ms={:.3} transit_max_ms={:.3} event_offsets_p50_ms={}",
            slots.len(),
            ms(ttfb),
            ms(ttfb_max),
            tr.len(),
            ms(tr.get(tr.len() / 2).copied().unwrap_or_default()),
            ms(tr.get(tr.len() * 99 / 100).copied().unwrap_or_default()),
            ms(tr.last().copied().unwrap_or_default()),
            offsets.join(",")
        );
    }
    // Delay each later URL adds to each event over the first: per request pair, the largest
    // per-event difference; report the median and the maximum over the pairs.
    let a = &per_url[0];
    for (u, url) in urls.iter().enumerate().skip(1) {
        let b = &per_url[u];
        let events = a.len().min(b.len());
        let mut worst_per_pair = Vec::new();
        for r in 0..count {
            let mut worst = f64::MIN;
            for (sa, sb) in a.iter().zip(b) {
                if let (Some(x), Some(y)) = (sa.get(r), sb.get(r)) {
                    worst = worst.max(ms(*y) - ms(*x));
                }
            }
            worst_per_pair.push(worst);
        }
        worst_per_pair.sort_by(f64::total_cmp);
        let med_offsets: Vec<f64> = (0..events)
            .map(|i| ms(median(&b[i])) - ms(median(&a[i])))
            .collect();
        let max_med = med_offsets.iter().copied().fold(f64::MIN, f64::max);
        println!(
            "stream_added url={url} ttfb_added_ms={:.3} max_event_added_p50_ms={:.3} max_event_added_pairs_p50_ms={:.3} max_event_added_pairs_max_ms={:.3}",
            med_offsets.first().copied().unwrap_or_default(),
            max_med,
            worst_per_pair
                .get(worst_per_pair.len() / 2)
                .copied()
                .unwrap_or_default(),
            worst_per_pair.last().copied().unwrap_or_default(),
        );
    }
    Ok(())
}

async fn hold_run(
    target: &Arc<Target>,
    url: &str,
    count: usize,
    hold_ms: u64,
) -> anyhow::Result<()> {
    let ready = Arc::new(AtomicU64::new(0));
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (t, u, ready, mut release) = (
            target.clone(),
            url.to_owned(),
            ready.clone(),
            release_rx.clone(),
        );
        tasks.spawn(async move {
            let res = t.client.request(t.request(&u)?).await?;
            anyhow::ensure!(res.status().is_success(), "status {}", res.status());
            let mut body = res.into_body();
            // First event received: the stream is open end to end.
            if let Some(f) = body.frame().await {
                f?;
            }
            ready.fetch_add(1, Ordering::Relaxed);
            let _ = release.wait_for(|r| *r).await;
            drop(body); // close mid-stream
            Ok(())
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready.load(Ordering::Relaxed) < count as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {count} streams opened in 30 s",
            ready.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("READY open_streams={count}");
    tokio::time::sleep(Duration::from_millis(hold_ms)).await;
    let _ = release_tx.send(true);
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    println!("DONE");
    Ok(())
}

async fn count_run(
    target: &Arc<Target>,
    url: &str,
    count: u64,
    connections: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (t, u, next, ok) = (target.clone(), url.to_owned(), next.clone(), ok.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                if matches!(one(&t, &u).await, Ok(true)) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let secs = started.elapsed().as_secs_f64();
    println!(
        "count sent={count} ok={} seconds={secs:.2} rps={:.0}",
        ok.load(Ordering::Relaxed),
        count as f64 / secs
    );
    Ok(())
}
