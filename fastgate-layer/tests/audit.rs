//! Loopback: exactly one audit event per request, with the right outcome and byte counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use fastgate_layer::Outcome;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

const JSON_BODY: &str = r#"{"id":"c1","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#;

fn with_id(mut req: Request<TestBody>, id: &str) -> Request<TestBody> {
    req.headers_mut()
        .insert("x-request-id", id.parse().unwrap());
    req
}

async fn json_upstream() -> std::net::SocketAddr {
    upstream(|req: Request<hyper::body::Incoming>| async move {
        req.into_body().collect().await.unwrap();
        let mut res = Response::new(full(JSON_BODY));
        res.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        res
    })
    .await
}

#[tokio::test]
async fn plain_success_fills_the_event() {
    let up = json_upstream().await;
    let gw = gateway(backend(up), test_audit_config(), 1 << 20, true).await;
    let req_body = r#"{"model":"gpt-plain","messages":[{"role":"user","content":"hi"}]}"#;
    let req = with_id(chat(gw.addr, full(req_body)), "plain-1");
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, JSON_BODY);

    let e = exactly_one(&gw, "plain-1").await;
    assert_eq!(e.outcome, Outcome::Completed);
    assert_eq!(e.status, 200);
    assert_eq!(e.method, "POST");
    assert_eq!(e.path, ROUTE);
    assert_eq!(e.key_id.as_deref(), Some("key-test-1"));
    assert_eq!(e.source_path.as_deref(), Some("team-test"));
    assert_eq!(e.client_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(e.user_agent.as_deref(), Some("fastgate-tests"));
    assert_eq!(
        e.target_url.as_deref(),
        Some(format!("http://{up}/base/v1/chat/completions").as_str())
    );
    assert!(!e.is_stream);
    assert_eq!(e.model.as_deref(), Some("gpt-plain"));
    assert_eq!(e.request_bytes, req_body.len() as u64);
    assert_eq!(e.response_bytes, JSON_BODY.len() as u64);
    assert_eq!(e.error_code, None);
    let usage = e.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (7, 2, 9)
    );
    assert!(e.ttfb.is_some());
    let debug = format!("{e:?}");
    assert!(!debug.contains(CLIENT_KEY) && !debug.contains(UPSTREAM_KEY));
}

#[tokio::test]
async fn client_dropping_mid_stream_is_client_aborted_and_cancels_upstream() {
    let upstream_cancelled = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&upstream_cancelled);
    let up = upstream(move |_req| {
        let flag = Arc::clone(&flag);
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                for i in 0..400 {
                    let ev = format!("data: {{\"n\":{i}}}\n\n");
                    if tx.send(Ok(Bytes::from(ev))).await.is_err() {
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            });
            let mut res = Response::new(body);
            res.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            res
        }
    })
    .await;
    let gw = gateway(backend(up), test_audit_config(), 1 << 20, true).await;
    let res = client()
        .request(with_id(chat(gw.addr, full("{}")), "abort-1"))
        .await
        .unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"data: {\"n\":0}"));
    drop(body);

    let e = exactly_one(&gw, "abort-1").await;
    assert_eq!(e.outcome, Outcome::ClientAborted);
    assert!(e.is_stream);
    assert!(e.response_bytes >= first.len() as u64);
    assert!(e.response_bytes < 400 * 10);
    tokio::time::timeout(Duration::from_secs(10), async {
        while !upstream_cancelled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the upstream request is cancelled");
}

#[tokio::test]
async fn upstream_refusing_connections_is_502_upstream_error() {
    let gw = gateway(
        backend(refused_addr().await),
        test_audit_config(),
        1 << 20,
        true,
    )
    .await;
    let res = client()
        .request(with_id(chat(gw.addr, full("{}")), "refused-1"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["code"], "upstream_unreachable");

    let e = exactly_one(&gw, "refused-1").await;
    assert_eq!(e.outcome, Outcome::UpstreamError);
    assert_eq!(e.status, 502);
    assert_eq!(e.error_code, Some("upstream_unreachable"));
    assert_eq!(e.response_bytes, body.len() as u64);
    assert!(e.target_url.is_some());
}

#[tokio::test]
async fn upstream_too_slow_is_504_upstream_timeout() {
    let up = upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(full("late"))
    })
    .await;
    let mut b = backend(up);
    b.response_timeout = Duration::from_millis(200);
    let gw = gateway(b, test_audit_config(), 1 << 20, true).await;
    let res = client()
        .request(with_id(chat(gw.addr, full("{}")), "slow-1"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    res.into_body().collect().await.unwrap();
    let e = exactly_one(&gw, "slow-1").await;
    assert_eq!(e.outcome, Outcome::UpstreamTimeout);
    assert_eq!(e.error_code, Some("upstream_timeout"));
    assert_eq!(e.status, 504);
}

#[tokio::test]
async fn rejected_key_is_401_rejected() {
    let up = json_upstream().await;
    let gw = gateway(backend(up), test_audit_config(), 1 << 20, true).await;
    let req = Request::post(format!("http://{}{ROUTE}", gw.addr))
        .header("authorization", "Bearer sk-not-a-real-key")
        .header("x-request-id", "rejected-1")
        .body(full("{}"))
        .unwrap();
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    res.into_body().collect().await.unwrap();
    let e = exactly_one(&gw, "rejected-1").await;
    assert_eq!(e.outcome, Outcome::Rejected);
    assert_eq!(e.error_code, Some("invalid_api_key"));
    assert_eq!(e.key_id, None);
    assert!(!format!("{e:?}").contains("sk-not-a-real-key"));
}

#[tokio::test]
async fn body_too_large_is_413_with_and_without_content_length() {
    let up = json_upstream().await;
    let gw = gateway(backend(up), test_audit_config(), 64, true).await;
    let big = "x".repeat(100);

    let res = client()
        .request(with_id(chat(gw.addr, full(big.clone())), "big-cl"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("request_too_large"));
    let e = exactly_one(&gw, "big-cl").await;
    assert_eq!(e.outcome, Outcome::Rejected);
    assert_eq!(e.error_code, Some("request_too_large"));
    assert_eq!(e.status, 413);

    // Chunked: no Content-Length, counted while streaming.
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for _ in 0..4 {
            if tx.send(Ok(Bytes::from(vec![b'y'; 40]))).await.is_err() {
                return;
            }
        }
    });
    let res = client()
        .request(with_id(chat(gw.addr, body), "big-chunked"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    res.into_body().collect().await.unwrap();
    let e = exactly_one(&gw, "big-chunked").await;
    assert_eq!(e.outcome, Outcome::Rejected);
    assert_eq!(e.error_code, Some("request_too_large"));
}

#[tokio::test]
async fn upstream_reset_and_idle_mid_stream_keep_bytes_so_far() {
    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        let reset = req.uri().query() == Some("mode=reset");
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            tx.send(Ok(Bytes::from_static(b"data: {\"n\":0}\n\n")))
                .await
                .unwrap();
            if reset {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx.send(Err(std::io::Error::other("reset"))).await;
            } else {
                // Stall: hold the sender open.
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(tx);
            }
        });
        let mut res = Response::new(body);
        res.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        res
    })
    .await;
    let mut b = backend(up);
    b.idle_timeout = Duration::from_millis(300);
    let gw = gateway(b, test_audit_config(), 1 << 20, true).await;

    for (mode, outcome, code) in [
        ("reset", Outcome::UpstreamError, "upstream_error"),
        ("idle", Outcome::UpstreamTimeout, "upstream_timeout"),
    ] {
        let id = format!("mid-{mode}");
        let mut req = chat(gw.addr, full("{}"));
        *req.uri_mut() = format!("http://{}{ROUTE}?mode={mode}", gw.addr)
            .parse()
            .unwrap();
        let res = client().request(with_id(req, &id)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        // The client's stream ends (with an error), it does not hang.
        let collected = tokio::time::timeout(Duration::from_secs(10), res.into_body().collect())
            .await
            .expect("stream ends");
        assert!(
            collected.is_err(),
            "{mode}: a broken stream must not look complete"
        );
        let e = exactly_one(&gw, &id).await;
        assert_eq!(e.outcome, outcome, "{mode}");
        assert_eq!(e.error_code, Some(code), "{mode}");
        assert_eq!(e.response_bytes, 15, "{mode}");
    }
}

#[tokio::test]
async fn full_queue_still_serves_and_counts_drops() {
    let up = json_upstream().await;
    let config = test_audit_config().capacity(1);
    let gw = gateway(backend(up), config, 1 << 20, false).await;
    assert!(gw.worker.is_some(), "worker deliberately not running");
    for i in 0..3 {
        let started = std::time::Instant::now();
        let res = client()
            .request(with_id(chat(gw.addr, full("{}")), &format!("full-{i}")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.into_body().collect().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // Events are emitted when the body ends; poll the counters (bounded).
    tokio::time::timeout(Duration::from_secs(10), async {
        while gw.stats.dropped() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("drops counted");
    assert_eq!(gw.stats.dropped(), 2);
    assert_eq!(gw.stats.queue_depth(), 1);
    assert_eq!(gw.stats.capacity(), 1);
    assert_eq!(gw.sink.len(), 0);
}
