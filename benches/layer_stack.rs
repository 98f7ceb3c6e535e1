//! Criterion benchmarks of `fastgate-layer`:
//!
//! * `stack/*`: the full layer stack (request id, audit, route, auth, size limit, scrub, inject)
//!   in front of an in-memory service, per request (target ≤ 10 µs);
//! * `sse_body/*`: a 10,000-chunk SSE response through the audit body wrapper (byte counting,
//!   TTFB, usage scanning) versus the bare body, reported per chunk (target ≤ 100 ns added).
//!
//! ```text
//! cargo bench -p fastgate-layer --bench layer_stack -- --warm-up-time 1 --measurement-time 3
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fastgate_layer::audit::{AuditBatch, AuditConfig, AuditLayer, AuditSink};
use fastgate_layer::auth::StaticKeys;
use fastgate_layer::body::GatewayBody;
use fastgate_layer::gateway::UpstreamBody;
use fastgate_layer::route::RouteTable;
use fastgate_layer::{Backend, GatewayBuilder, KeyIdentity, RouteConfig, Secret};
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

/// A sink that only counts, so that the benchmark measures the request path, not storage.
#[derive(Clone, Default)]
struct CountingSink(Arc<AtomicU64>);

impl AuditSink for CountingSink {
    type Error = Infallible;

    async fn write_batch(&mut self, events: &AuditBatch) -> Result<(), Infallible> {
        self.0.fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

const ROUTE: &str = "/proxy/bench/v1/chat/completions";
const REQUEST: &str = r#"{"model":"bench-model","messages":[{"role":"user","content":"hello"}]}"#;
const RESPONSE: &str = r#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;

fn routes() -> RouteTable {
    let backend = Arc::new(Backend {
        base_url: "http://127.0.0.1:9".parse().expect("static url"),
        path: "/v1/chat/completions".into(),
        api_key: Some(Secret::new("sk-upstream-bench")),
        key_header: header::AUTHORIZATION,
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
    });
    RouteTable::new(HashMap::from([(
        ROUTE.to_owned(),
        RouteConfig {
            name: "bench".into(),
            permission: "chat".into(),
            backend,
        },
    )]))
}

fn keys() -> StaticKeys {
    StaticKeys::new([(
        "sk-bench-client",
        KeyIdentity {
            key_id: "bench".into(),
            source_path: "bench".into(),
            permissions: vec!["chat".to_owned()].into(),
            expires_at: None,
        },
    )])
}

fn request() -> Request<Full<Bytes>> {
    Request::post(ROUTE)
        .header("authorization", "Bearer sk-bench-client")
        .header("content-type", "application/json")
        .header("user-agent", "bench")
        .header("x-forwarded-for", "10.0.0.1")
        .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
        .expect("static request")
}

fn bench_stack(c: &mut Criterion) {
    // One thread: requests and the audit worker share it, as on a gateway pinned to one core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();

    // An in-memory "upstream" that reads the request body, as a forward would.
    let inner = service_fn(|req: Request<UpstreamBody<Full<Bytes>>>| async move {
        let _ = req.into_body().collect().await;
        let mut res = Response::new(GatewayBody::from(Bytes::from_static(RESPONSE.as_bytes())));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        Ok::<_, Infallible>(res)
    });

    let sink = CountingSink::default();
    let (audit, worker) = AuditLayer::pair(sink, AuditConfig::default());
    rt.spawn(worker.run());
    let audited = GatewayBuilder::new(keys(), routes())
        .audit(audit)
        .layer()
        .layer(inner);
    let plain = GatewayBuilder::new(keys(), routes()).layer().layer(inner);

    let mut group = c.benchmark_group("stack");
    group.throughput(Throughput::Elements(1));
    group.bench_function("full_with_audit", |b| {
        b.to_async(&rt).iter(|| {
            let svc = audited.clone();
            async move {
                let res = svc.oneshot(request()).await.expect("infallible");
                res.into_body().collect().await.expect("body")
            }
        });
    });
    group.bench_function("full_without_audit", |b| {
        b.to_async(&rt).iter(|| {
            let svc = plain.clone();
            async move {
                let res = svc.oneshot(request()).await.expect("infallible");
                res.into_body().collect().await.expect("body")
            }
        });
    });
    group.bench_function("inner_service_only", |b| {
        b.to_async(&rt).iter(|| {
            let svc = ServiceBuilder::new()
                .map_request(|req: Request<Full<Bytes>>| {
                    req.map(|b| {
                        fastgate_layer::limit::LimitedBody::new(
                            fastgate_layer::audit::AuditRequestBody::unaudited(b),
                            u64::MAX,
                        )
                    })
                })
                .service(inner);
            async move {
                let res = svc.oneshot(request()).await.expect("infallible");
                res.into_body().collect().await.expect("body")
            }
        });
    });
    group.finish();
}

const CHUNKS: usize = 10_000;

fn sse_chunks() -> Vec<Bytes> {
    let mut chunks: Vec<Bytes> = (0..CHUNKS - 2)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i}\"}}}}],\"usage\":null}}\n\n"
            ))
        })
        .collect();
    chunks.push(Bytes::from_static(
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":9998,\"total_tokens\":10007}}\n\n",
    ));
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    chunks
}

type Frames = Vec<Result<Frame<Bytes>, Infallible>>;
type ChunkBody =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// The frames of one response (built in the untimed setup of each batch).
fn frames(chunks: &[Bytes]) -> Frames {
    chunks.iter().cloned().map(|b| Ok(Frame::data(b))).collect()
}

async fn drain<B: http_body::Body + Unpin>(mut body: B) -> usize
where
    B::Error: std::fmt::Debug,
{
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if frame.expect("frame").is_data() {
            n += 1;
        }
    }
    n
}

fn bench_sse_body(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let chunks = sse_chunks();

    let (audit, worker) = AuditLayer::pair(CountingSink::default(), AuditConfig::default());
    rt.spawn(worker.run());
    // The in-memory service answers with the frames the timed routine put here.
    let slot: Arc<std::sync::Mutex<Option<Frames>>> = Arc::default();
    let svc = {
        let slot = Arc::clone(&slot);
        ServiceBuilder::new()
            .layer(audit)
            .service(service_fn(move |_req: Request<_>| {
                let frames = slot
                    .lock()
                    .expect("slot")
                    .take()
                    .expect("frames for this request");
                let mut res: Response<ChunkBody> =
                    Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/event-stream"),
                );
                async move { Ok::<_, Infallible>(res) }
            }))
    };

    let mut group = c.benchmark_group("sse_body");
    group.throughput(Throughput::Elements(CHUNKS as u64));
    group.bench_function("bare_10k_chunks", |b| {
        b.to_async(&rt).iter_batched(
            || frames(&chunks),
            |frames| async move {
                let body: ChunkBody = StreamBody::new(futures_util::stream::iter(frames));
                assert_eq!(drain(body).await, CHUNKS);
            },
            BatchSize::LargeInput,
        );
    });
    group.bench_function("audited_10k_chunks", |b| {
        b.to_async(&rt).iter_batched(
            || frames(&chunks),
            |frames| {
                *slot.lock().expect("slot") = Some(frames);
                let svc = svc.clone();
                async move {
                    let res = svc
                        .oneshot(Request::new(Full::new(Bytes::new())))
                        .await
                        .expect("infallible");
                    assert_eq!(drain(res.into_body()).await, CHUNKS);
                }
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, bench_stack, bench_sse_body);
}
criterion_main!(group::benches);
