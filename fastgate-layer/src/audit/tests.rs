use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::body::{GatewayBody, GatewayBodyError};
use crate::extensions::{ClientAddr, KeyIdentity, Rejected};
use crate::test_util::{MockBody, Step};

fn config() -> AuditConfig {
    AuditConfig::default()
        .max_delay(Duration::from_millis(5))
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(2))
}

/// Serve one request whose response body is `body`; return the response.
async fn respond<B: Body + Send + 'static, RB>(
    layer: &AuditLayer,
    req: Request<RB>,
    make: impl FnOnce() -> Response<B> + Send + 'static,
) -> Response<AuditBody<B>>
where
    RB: Body + Send + 'static,
    RB::Error: std::fmt::Debug,
{
    let make = Arc::new(Mutex::new(Some(make)));
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(move |req: Request<AuditRequestBody<RB>>| {
            let make = Arc::clone(&make);
            async move {
                // Read the request body like a forward would.
                req.into_body().collect().await.unwrap();
                let make = make.lock().unwrap().take().unwrap();
                Ok::<_, Infallible>(make())
            }
        }));
    svc.oneshot(req).await.unwrap()
}

async fn events_after(
    layer: AuditLayer,
    worker: AuditWorker<MemorySink>,
    sink: &MemorySink,
) -> Vec<AuditEvent> {
    drop(layer);
    tokio::time::timeout(Duration::from_secs(5), worker.run())
        .await
        .unwrap();
    sink.events()
}

fn request() -> Request<Full<Bytes>> {
    let mut req = Request::post("/proxy/chat?x=1")
        .header("x-request-id", "rid-1")
        .header("user-agent", "test-agent")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-test","messages":[]}"#,
        )))
        .unwrap();
    req.extensions_mut()
        .insert(ClientAddr("127.0.0.9".parse().unwrap()));
    req
}

#[tokio::test]
async fn normal_end_fills_every_field() {
    let sink = MemorySink::default();
    let (layer, worker) = AuditLayer::pair(sink.clone(), config());
    let res = respond(&layer, request(), || {
        let mut res = Response::new(MockBody::new([
            Step::Data(b"{\"usage\":{\"prompt_tokens\":1,"),
            Step::Data(b"\"completion_tokens\":2,\"total_tokens\":3}}"),
        ]));
        res.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        res.extensions_mut().insert(KeyIdentity {
            key_id: "k1".into(),
            source_path: "team".into(),
            permissions: Arc::from(Vec::<String>::new()),
            expires_at: None,
        });
        res
    })
    .await;
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let events = events_after(layer, worker, &sink).await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.request_id, "rid-1");
    assert_eq!(e.method, "POST");
    assert_eq!(e.path, "/proxy/chat", "the query string is not recorded");
    assert_eq!(e.user_agent.as_deref(), Some("test-agent"));
    assert_eq!(e.client_ip.as_deref(), Some("127.0.0.9"));
    assert_eq!(e.key_id.as_deref(), Some("k1"));
    assert_eq!(e.source_path.as_deref(), Some("team"));
    assert_eq!(e.status, 200);
    assert_eq!(e.outcome, Outcome::Completed);
    assert_eq!(e.response_bytes, body.len() as u64);
    assert_eq!(e.request_bytes, 34);
    assert_eq!(e.model.as_deref(), Some("gpt-test"));
    assert!(e.ttfb.is_some());
    assert!(!e.is_stream);
    assert_eq!(e.usage.unwrap().total_tokens, 3);
}

/// openai-python writes `messages` before `model`: with a long conversation or an image the model
/// came after the first 64 KiB, and the record had none.
#[tokio::test]
async fn model_after_a_megabyte_of_messages_in_any_framing() {
    let content = "An image, then a question about \\\"model\\\": é😀 ".repeat(25_000);
    let body = Bytes::from(format!(
        r#"{{"messages":[{{"role":"user","content":"{content}"}},{{"role":"assistant","model":"no"}}],"model":"gpt-late","stream":false}}"#
    ));
    assert!(body.len() > 1_000_000);
    let mut models = Vec::new();
    for frame in [body.len(), 65_537, 4096, 7] {
        let sink = MemorySink::default();
        let (layer, worker) = AuditLayer::pair(sink.clone(), config());
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..body.len())
            .step_by(frame)
            .map(|at| Ok(Frame::data(body.slice(at..body.len().min(at + frame)))))
            .collect();
        let req = Request::post("/proxy/chat")
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap();
        let res = respond(&layer, req, || {
            Response::new(Full::new(Bytes::from_static(b"{}")))
        })
        .await;
        res.into_body().collect().await.unwrap();
        let events = events_after(layer, worker, &sink).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].request_bytes, body.len() as u64);
        models.push((frame, events[0].model.clone()));
    }
    let late = Some("gpt-late".to_owned());
    assert_eq!(
        models,
        [body.len(), 65_537, 4096, 7].map(|frame| (frame, late.clone())),
        "(frame size, model)"
    );
}

#[tokio::test]
async fn empty_body_emits_at_construction() {
    let sink = MemorySink::default();
    let (layer, worker) = AuditLayer::pair(sink.clone(), config());
    let res = respond(&layer, request(), || {
        let mut r = Response::new(MockBody::new([]));
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    })
    .await;
    // Never polled: the event must still be Completed.
    assert_eq!(sink.len(), 0);
    let events = events_after(layer, worker, &sink).await;
    drop(res);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome, Outcome::Completed);
    assert_eq!(events[0].status, 204);
    assert_eq!(events[0].ttfb, None);
}

#[tokio::test]
async fn exact_length_without_final_poll_completes() {
    let sink = MemorySink::default();
    let (layer, worker) = AuditLayer::pair(sink.clone(), config());
    let res = respond(&layer, request(), || {
        Response::new(MockBody::new([Step::Data(b"ab"), Step::Data(b"cd")]))
    })
    .await;
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    body.frame().await.unwrap().unwrap();
    assert!(body.is_end_stream());
    // Keep the body alive, never poll for None: the event is already sent.
    let events = events_after(layer, worker, &sink).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome, Outcome::Completed);
    assert_eq!(events[0].response_bytes, 4);
    drop(body);
}

#[tokio::test]
async fn trailers_complete() {
    let sink = MemorySink::default();
    let (layer, worker) = AuditLayer::pair(sink.clone(), config());
    let res = respond(&layer, request(), || {
        Response::new(MockBody::new([
            Step::Data(b"x"),
            Step::Trailers,
            Step::Pending,
        ]))
    })
    .await;
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    assert!(body.frame().await.unwrap().unwrap().is_trailers());
    let events = events_after(layer, worker, &sink).await;
    assert_eq!(events[0].outcome, Outcome::Completed);
    drop(body);
}

/// gRPC's `grpc-status` travels in trailers, both ways: the audit bodies pass trailer frames on
/// unchanged (a tonic client that misses them reports "missing grpc-status").
#[tokio::test]
async fn trailers_pass_through_both_bodies_unchanged() {
    fn trailers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (http::HeaderName::from_static(n), v.parse().unwrap()))
            .collect()
    }
    type Frames = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;
    fn body(data: &'static [u8], trailers: http::HeaderMap) -> Frames {
        StreamBody::new(futures_util::stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(data))),
            Ok(Frame::trailers(trailers)),
        ]))
    }
    let sink = MemorySink::default();
    let (layer, worker) = AuditLayer::pair(sink.clone(), config());
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(
            |req: Request<AuditRequestBody<Frames>>| async move {
                // The service sees the client's trailers.
                let got = req.into_body().collect().await.unwrap();
                assert_eq!(got.trailers(), Some(&trailers(&[("x-client-sum", "42")])));
                let mut res = Response::new(body(
                    b"\0\0\0\0\x02\x08\x01",
                    trailers(&[("grpc-status", "0"), ("grpc-message", "fine")]),
                ));
                res.headers_mut()
                    .insert("content-type", "application/grpc".parse().unwrap());
                Ok::<_, Infallible>(res)
            },
        ));
    let req = Request::post("/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .body(body(b"\0\0\0\0\0", trailers(&[("x-client-sum", "42")])))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let got = res.into_body().collect().await.unwrap();
    assert_eq!(
        got.trailers(),
        Some(&trailers(&[("grpc-status", "0"), ("grpc-message", "fine")]))
    );
    assert_eq!(got.to_bytes(), b"\0\0\0\0\x02\x08\x01"[..]);
    let events = events_after(layer, worker, &sink).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome, Outcome::Completed);
    assert_eq!((events[0].request_bytes, events[0].response_bytes), (5, 7));
}

#[tokio::test]
async fn upstream_error_and_drop_mid_stream() {
    let sink = MemorySink::default();
    let (layer, worker) = AuditLayer::pair(sink.clone(), config());

    let res = respond(&layer, request(), || {
        Response::new(MockBody::new([Step::Data(b"abc"), Step::Error]))
    })
    .await;
    assert!(res.into_body().collect().await.is_err());

    let res = respond(&layer, request(), || {
        Response::new(MockBody::new([Step::Data(b"abcd"), Step::Data(b"more")]))
    })
    .await;
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);

    let events = events_after(layer, worker, &sink).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].outcome, Outcome::UpstreamError);
    assert_eq!(events[0].response_bytes, 3);
    assert_eq!(events[0].error_code, Some("upstream_error"));
    assert_eq!(events[1].outcome, Outcome::ClientAborted);
    assert_eq!(events[1].response_bytes, 4);
}

/// openai-python hangs up as soon as it has read `data: [DONE]`: a body dropped after its
/// terminal event (SSE `[DONE]`, a Responses API `response.completed`, Anthropic's
/// `message_stop`, Ollama's `"done":true` line) was passed on is `completed`; dropped before it,
/// still `client_aborted`.
#[tokio::test]
async fn drop_after_the_terminal_event_is_completed() {
    use Outcome::{ClientAborted, Completed};
    let sink = MemorySink::default();
    let (layer, worker) = AuditLayer::pair(sink.clone(), config());
    let cases: [(&str, [&'static [u8]; 2], usize, Outcome); 8] = [
        (
            "text/event-stream",
            [b"data: {\"choices\":[]}\n\ndata: [DO", b"NE]\n\n"],
            2,
            Completed,
        ),
        (
            "text/event-stream",
            [b"data: {\"choices\":[]}\n\n", b"data: [DONE]\n\n"],
            1,
            ClientAborted,
        ),
        (
            "application/x-ndjson",
            [b"{\"done\":false}\n{\"done\":tr", b"ue,\"eval_count\":3}\n"],
            2,
            Completed,
        ),
        (
            "application/x-ndjson",
            [b"{\"done\":false}\n", b"{\"done\":true}\n"],
            1,
            ClientAborted,
        ),
        (
            "text/event-stream",
            [
                b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"response.completed\"}\n\nevent: response.compl",
                b"eted\ndata: {\"type\":\"response.completed\",\"response\":{}}\n\n",
            ],
            2,
            Completed,
        ),
        (
            "text/event-stream",
            [
                b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"response.completed\"}\n\n",
                b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{}}\n\n",
            ],
            1,
            ClientAborted,
        ),
        (
            "text/event-stream",
            [
                b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":2}}\n\n",
                b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            ],
            2,
            Completed,
        ),
        (
            "text/event-stream",
            [
                b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":2}}\n\n",
                b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            ],
            1,
            ClientAborted,
        ),
    ];
    let mut want = Vec::new();
    for (content_type, [a, b], read, outcome) in cases {
        want.push((outcome, [a, b][..read].iter().map(|p| p.len() as u64).sum()));
        let res = respond(&layer, request(), move || {
            let mut r = Response::new(MockBody::new([
                Step::Data(a),
                Step::Data(b),
                Step::Data(b": the backend has not ended its body yet\n\n"),
            ]));
            r.headers_mut()
                .insert("content-type", content_type.parse().unwrap());
            r
        })
        .await;
        let mut body = res.into_body();
        for _ in 0..read {
            body.frame().await.unwrap().unwrap();
        }
        drop(body);
    }
    let events = events_after(layer, worker, &sink).await;
    let outcomes: Vec<(Outcome, u64)> = events
        .iter()
        .map(|e| (e.outcome, e.response_bytes))
        .collect();
    assert_eq!(outcomes, want);
}

#[tokio::test]
async fn gateway_idle_timeout_is_upstream_timeout() {
    let err = GatewayBodyError::IdleTimeout(Duration::from_millis(1));
    assert_eq!(
        super::body_classify_for_test(&err),
        Outcome::UpstreamTimeout
    );
}

#[tokio::test]
async fn rejected_outcome_and_code_recorded() {
    let sink = MemorySink::default();
    let (layer, worker) = AuditLayer::pair(sink.clone(), config());
    let res = respond(&layer, request(), || {
        crate::error::rejection::<GatewayBody>(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "invalid API key",
            Outcome::Rejected,
        )
    })
    .await;
    assert!(res.extensions().get::<Rejected>().is_some());
    res.into_body().collect().await.unwrap();
    let events = events_after(layer, worker, &sink).await;
    assert_eq!(events[0].outcome, Outcome::Rejected);
    assert_eq!(events[0].error_code, Some("invalid_api_key"));
    assert_eq!(events[0].status, 401);
    assert_eq!(events[0].usage, None);
}

/// A gRPC refusal is HTTP 200 on the wire; its record has the status of its JSON form (401, 403,
/// 503), so that status filters, metrics and the latency rules (a rejected request under 500 is
/// not timed) treat it as that refusal whatever content type the client sent.
#[tokio::test]
async fn grpc_refusals_are_recorded_with_their_http_status() {
    use crate::auth::{ApiKeyAuthLayer, KeyResolver, PresentedKey, ResolveError, StaticKeys};

    #[derive(Clone)]
    struct Down;
    impl KeyResolver for Down {
        type Future = std::future::Ready<Result<KeyIdentity, ResolveError>>;
        fn resolve(&self, _key: PresentedKey) -> Self::Future {
            std::future::ready(Err(ResolveError::Unavailable("db down".into())))
        }
    }
    async fn call<R: KeyResolver + Clone + Send + 'static>(
        audit: &AuditLayer,
        resolver: R,
        id: &str,
        key: &str,
    ) where
        R::Future: Send,
    {
        let svc = ServiceBuilder::new()
            .layer(audit.clone())
            .layer(ApiKeyAuthLayer::new(resolver))
            .service(service_fn(|_req: Request<_>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }));
        let req = Request::post("/grpc.health.v1.Health/Check")
            .header("content-type", "application/grpc")
            .header("x-request-id", id)
            .header("x-api-key", key)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res: Response<AuditBody<Full<Bytes>>> = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{id}");
        assert!(res.headers().contains_key("grpc-status"), "{id}");
        res.into_body().collect().await.unwrap();
    }
    let identity = KeyIdentity {
        key_id: "key-embed".into(),
        source_path: "team".into(),
        permissions: vec!["embeddings".to_owned()].into(),
        expires_at: None,
    };
    let keys = StaticKeys::new([("sk-embed-only", identity)]);
    let sink = MemorySink::default();
    let (layer, worker) = AuditLayer::pair(sink.clone(), config());
    call(&layer, keys.clone(), "unknown", "sk-unknown").await;
    call(&layer, keys, "denied", "sk-embed-only").await;
    call(&layer, Down, "down", "sk-any").await;
    let events = events_after(layer, worker, &sink).await;
    let mut seen: Vec<_> = events
        .iter()
        .map(|e| (e.request_id.as_str(), e.status, e.outcome, e.error_code))
        .collect();
    seen.sort_unstable_by_key(|(id, ..)| *id);
    assert_eq!(
        seen,
        [
            ("denied", 403, Outcome::Rejected, Some("permission_denied")),
            ("down", 503, Outcome::Rejected, Some("auth_unavailable")),
            ("unknown", 401, Outcome::Rejected, Some("invalid_api_key")),
        ]
    );
}

#[tokio::test]
async fn sse_usage_and_is_stream() {
    let sink = MemorySink::default();
    let (layer, worker) = AuditLayer::pair(sink.clone(), config());
    let res = respond(&layer, request(), || {
        let mut r = Response::new(MockBody::new([
            Step::Data(b"data: {\"usage\":null}\n\ndata: {\"usage\":{\"prompt_tokens\":4,"),
            Step::Data(b"\"completion_tokens\":5,\"total_tokens\":9}}\n\ndata: [DONE]\n\n"),
        ]));
        r.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        r
    })
    .await;
    res.into_body().collect().await.unwrap();
    let events = events_after(layer, worker, &sink).await;
    assert!(events[0].is_stream);
    assert_eq!(events[0].usage.unwrap().total_tokens, 9);
}

#[tokio::test]
async fn dropping_the_future_before_headers_is_client_aborted() {
    let sink = MemorySink::default();
    let (layer, worker) = AuditLayer::pair(sink.clone(), config());
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(service_fn(
            |_req: Request<AuditRequestBody<Full<Bytes>>>| async {
                std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>().await
            },
        ));
    let fut = svc.ready().await.unwrap().call(request());
    let _ = tokio::time::timeout(Duration::from_millis(5), fut).await;
    drop(svc);
    let events = events_after(layer, worker, &sink).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome, Outcome::ClientAborted);
}

#[tokio::test]
async fn full_queue_drops_and_counts_without_blocking() {
    let sink = MemorySink::default();
    let (layer, worker) = AuditLayer::pair(sink.clone(), config().capacity(1));
    let stats = layer.stats();
    for _ in 0..3 {
        let res = respond(&layer, request(), || {
            Response::new(Full::new(Bytes::from_static(b"x")))
        })
        .await;
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(stats.capacity(), 1);
    assert_eq!(stats.queue_depth(), 1);
    assert_eq!(stats.dropped(), 2);
    assert!(stats.since_last_loss().unwrap() < Duration::from_secs(60));
    let when = stats.last_loss().expect("a drop is a loss, with its time");
    assert!(SystemTime::now().duration_since(when).unwrap() < Duration::from_secs(60));
    let events = events_after(layer, worker, &sink).await;
    assert_eq!(events.len(), 1);
    assert_eq!(stats.written(), 1);
    assert_eq!(stats.queue_depth(), 0);
}

#[tokio::test]
async fn worker_retries_then_writes_and_counts_lost() {
    let sink = MemorySink::default();
    sink.fail_next(2);
    let (layer, worker) = AuditLayer::pair(sink.clone(), config().max_retries(2));
    let stats = layer.stats();
    assert!(!stats.failing());
    let worker = tokio::spawn(worker.run());
    let res = respond(&layer, request(), || Response::new(Full::new(Bytes::new()))).await;
    drop(res);
    tokio::time::timeout(Duration::from_secs(5), sink.wait_for(1))
        .await
        .unwrap();
    assert_eq!(stats.retried(), 2);
    assert_eq!(stats.written(), 1);
    assert!(!stats.failing(), "a write succeeded after the retries");
    assert_eq!(stats.last_loss(), None, "retried, not lost");

    sink.fail_next(10);
    let res = respond(&layer, request(), || Response::new(Full::new(Bytes::new()))).await;
    drop(res);
    drop(layer);
    tokio::time::timeout(Duration::from_secs(5), worker)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.lost(), 1);
    assert_eq!(stats.retried(), 4);
    assert_eq!(sink.len(), 1);
    assert!(!stats.failing(), "given up: nothing left to retry");
    assert!(stats.last_loss().is_some());
}

#[tokio::test]
async fn the_worker_is_failing_while_it_retries_a_batch_and_not_after_it_is_written() {
    let sink = MemorySink::default();
    sink.fail_next(3);
    let config = config()
        .max_retries(5)
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(50));
    let (layer, worker) = AuditLayer::pair(sink.clone(), config);
    let stats = layer.stats();
    let worker = tokio::spawn(worker.run());
    let res = respond(&layer, request(), || Response::new(Full::new(Bytes::new()))).await;
    drop(res);
    tokio::time::timeout(Duration::from_secs(5), async {
        while stats.retried() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    assert!(stats.failing(), "a batch is being retried");
    tokio::time::timeout(Duration::from_secs(5), sink.wait_for(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await; // the flag is cleared after the write
    assert!(!stats.failing());
    assert_eq!((stats.lost(), stats.last_loss()), (0, None));
    drop(layer);
    worker.await.unwrap();
}

#[tokio::test]
async fn worker_batches_and_drains_on_close() {
    let sink = MemorySink::default();
    let (layer, worker) = AuditLayer::pair(sink.clone(), config().max_batch(4));
    for _ in 0..10 {
        let res = respond(&layer, request(), || Response::new(Full::new(Bytes::new()))).await;
        drop(res);
    }
    let stats = layer.stats();
    assert_eq!(stats.queue_depth(), 10);
    let events = events_after(layer, worker, &sink).await;
    assert_eq!(events.len(), 10);
    assert_eq!(stats.written(), 10);
}

#[tokio::test]
async fn disabled_layer_passes_through() {
    let layer = AuditLayer::disabled();
    let res = respond(&layer, request(), || {
        Response::new(Full::new(Bytes::from_static(b"ok")))
    })
    .await;
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(layer.stats().written(), 0);
}

#[test]
fn long_paths_and_user_agents_are_capped_at_a_character_boundary() {
    use super::layer::{AUDIT_TEXT_MAX, capped};
    assert_eq!(capped("/proxy/v1/chat"), "/proxy/v1/chat");
    let exact = "a".repeat(AUDIT_TEXT_MAX);
    assert_eq!(capped(&exact), exact);
    let long = format!("/{}", "é".repeat(AUDIT_TEXT_MAX));
    let cut = capped(&long);
    assert!(cut.ends_with('…'));
    let kept = cut.trim_end_matches('…');
    assert!(kept.len() <= AUDIT_TEXT_MAX && kept.len() >= AUDIT_TEXT_MAX - 1);
    assert!(long.starts_with(kept));

    let req = Request::get(format!("/proxy/{}", "x".repeat(20_000)))
        .header("user-agent", "u".repeat(5_000))
        .body(())
        .unwrap();
    let event = super::layer::start_event(&req);
    assert_eq!(event.path.len(), AUDIT_TEXT_MAX + '…'.len_utf8());
    assert_eq!(
        event.user_agent.unwrap().len(),
        AUDIT_TEXT_MAX + '…'.len_utf8()
    );
}

#[test]
fn a_user_agent_in_utf8_is_kept_not_dropped() {
    let mut req = request();
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_bytes("café-client/1 中文".as_bytes()).unwrap(),
    );
    let event = super::layer::start_event(&req);
    assert_eq!(event.user_agent.as_deref(), Some("café-client/1 中文"));
    // Bytes that are not UTF-8 are replaced, the rest kept.
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_bytes(b"bot/\xff1").unwrap(),
    );
    let event = super::layer::start_event(&req);
    assert_eq!(event.user_agent.as_deref(), Some("bot/\u{fffd}1"));
    // A C1 control character (U+0085, bytes C2 85) is left out.
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_bytes(b"bot/\xc2\x85x").unwrap(),
    );
    let event = super::layer::start_event(&req);
    assert_eq!(event.user_agent.as_deref(), Some("bot/x"));
}

/// The `Accept-Encoding` the inner service gets through `layer`.
async fn accept_encoding_inside(layer: AuditLayer, sent: &'static str) -> String {
    let svc = ServiceBuilder::new().layer(layer).service(service_fn(
        |req: Request<AuditRequestBody<Full<Bytes>>>| async move {
            let seen = req
                .headers()
                .get(http::header::ACCEPT_ENCODING)
                .map(|v| v.to_str().unwrap().to_owned());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                seen.unwrap_or_default(),
            ))))
        },
    ));
    let mut req = request();
    req.headers_mut()
        .insert(http::header::ACCEPT_ENCODING, sent.parse().unwrap());
    let res = svc.oneshot(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn accept_encoding_narrowed_only_when_auditing() {
    let (layer, _worker) = AuditLayer::pair(MemorySink::default(), config());
    assert_eq!(
        accept_encoding_inside(layer, "gzip, deflate, br, zstd").await,
        "gzip, deflate"
    );
    assert_eq!(
        accept_encoding_inside(AuditLayer::disabled(), "gzip, deflate, br, zstd").await,
        "gzip, deflate, br, zstd"
    );
}

#[tokio::test]
async fn gzip_json_usage_read_frame_by_frame_and_unreadable_codings_left_alone() {
    use std::io::Write;
    let json = br#"{"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(json).unwrap();
    let gz: &'static [u8] = Box::leak(e.finish().unwrap().into_boxed_slice());

    let sink = MemorySink::default();
    let (layer, worker) = AuditLayer::pair(sink.clone(), config());
    for (coding, body) in [("gzip", gz), ("br", &json[..])] {
        let res = respond(&layer, request(), move || {
            // One byte per frame.
            let mut r = Response::new(MockBody::new(gz_steps(body)));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r.headers_mut()
                .insert("content-encoding", coding.parse().unwrap());
            r
        })
        .await;
        let got = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got, body, "{coding}: passed on unchanged");
    }
    let events = events_after(layer, worker, &sink).await;
    assert_eq!(
        events[0].usage.unwrap().total_tokens,
        3,
        "read through gzip"
    );
    assert_eq!(events[0].response_bytes, gz.len() as u64);
    // A coding the scanner cannot read: its bytes are not read as JSON text (here they happen
    // to be JSON, which a brotli body is not).
    assert_eq!(events[1].usage, None);
}

fn gz_steps(body: &'static [u8]) -> Vec<Step> {
    body.chunks(1).map(Step::Data).collect()
}
