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
        (Some(7), Some(2), 9)
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

/// Full duplex: the upstream answers its head before it reads the body, and the chunked upload
/// then passes the limit. The answer can only be cut (its head went out), but the cut is the
/// client's doing: audited `rejected` / `request_too_large`, not the backend's
/// `upstream_error`, and not counted in the upstream failures.
#[tokio::test]
async fn body_too_large_after_the_upstream_answered_is_not_an_upstream_failure() {
    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let _ = tx.send(Ok(Bytes::from_static(b"data: {}\n\n"))).await;
            // Reads the upload until the gateway cuts it, and keeps its answer open a while.
            let _ = req.into_body().collect().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(tx);
        });
        let mut res = Response::new(body);
        res.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        res
    })
    .await;
    let gw = gateway(backend(up), test_audit_config(), 1 << 20, true).await;
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for _ in 0..32 {
            if tx
                .send(Ok(Bytes::from(vec![b'y'; 64 * 1024])))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let res = client()
        .request(with_id(chat(gw.addr, body), "big-duplex"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cut = tokio::time::timeout(Duration::from_secs(4), res.into_body().collect())
        .await
        .expect("the answer is cut before the upstream ends it");
    assert!(cut.is_err(), "the answer ended normally");
    let e = exactly_one(&gw, "big-duplex").await;
    assert_eq!(e.outcome, Outcome::Rejected, "{e:?}");
    assert_eq!(e.error_code, Some("request_too_large"));
    assert_eq!(gw.stats.upstream_failures(), 0);
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

/// gzip of `parts`, as a streaming server writes it: one sync flush per part, each flush one
/// frame, the gzip trailer in the last frame.
fn gzip_frames(parts: &[String]) -> Vec<Bytes> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut frames = Vec::new();
    let mut sent = 0;
    for part in parts {
        e.write_all(part.as_bytes()).unwrap();
        e.flush().unwrap();
        frames.push(Bytes::copy_from_slice(&e.get_ref()[sent..]));
        sent = e.get_ref().len();
    }
    let all = e.finish().unwrap();
    frames.push(Bytes::copy_from_slice(&all[sent..]));
    frames
}

fn gunzip(bytes: &[u8]) -> String {
    use std::io::Read;
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut out)
        .unwrap();
    out
}

const SSE_USAGE: &str = r#"{"prompt_tokens":11,"completion_tokens":4,"total_tokens":15}"#;

fn sse_events() -> Vec<String> {
    let mut events: Vec<String> = (0..4)
        .map(|i| {
            format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":\"t{i}\"}}}}],\"usage\":null}}\n\n"
            )
        })
        .collect();
    events.push(format!(
        "data: {{\"choices\":[],\"usage\":{SSE_USAGE}}}\n\n"
    ));
    events.push("data: [DONE]\n\n".to_owned());
    events
}

/// An upstream that compresses with gzip when the request accepts it (as vLLM or any server
/// behind a compressing proxy does), recording the `Accept-Encoding` it got. `?mode=sse` streams
/// [`sse_events`], the first frame alone until `first_seen` is notified.
async fn gzip_upstream(
    accept: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    first_seen: Arc<tokio::sync::Notify>,
) -> std::net::SocketAddr {
    upstream(move |req: Request<hyper::body::Incoming>| {
        let accept = Arc::clone(&accept);
        let first_seen = Arc::clone(&first_seen);
        async move {
            let ae = req
                .headers()
                .get("accept-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            let gzip = ae.as_deref().is_some_and(|v| v.contains("gzip"));
            accept.lock().unwrap().push(ae);
            let sse = req.uri().query() == Some("mode=sse");
            req.into_body().collect().await.unwrap();
            let parts = if sse {
                sse_events()
            } else {
                vec![JSON_BODY.to_owned()]
            };
            let frames = if gzip {
                gzip_frames(&parts)
            } else {
                parts.into_iter().map(Bytes::from).collect()
            };
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                for (i, frame) in frames.into_iter().enumerate() {
                    if i == 1 && sse {
                        // The next frame only once the client has the first: the gateway must
                        // pass each compressed frame on at once, not wait for more.
                        first_seen.notified().await;
                    }
                    if tx.send(Ok(frame)).await.is_err() {
                        return;
                    }
                }
            });
            let mut res = Response::new(body);
            let ct = if sse {
                "text/event-stream"
            } else {
                "application/json"
            };
            res.headers_mut()
                .insert("content-type", ct.parse().unwrap());
            if gzip {
                res.headers_mut()
                    .insert("content-encoding", "gzip".parse().unwrap());
            }
            res
        }
    })
    .await
}

/// The client asks for gzip (as python-requests, httpx and the OpenAI SDKs do) and the backend
/// compresses: the client gets the compressed bytes as the backend sent them, and the audit
/// record still has the token usage, for a JSON answer and for an SSE stream (read event by
/// event while the stream flows). An `Accept-Encoding` naming codings the usage scanner cannot
/// read reaches the backend narrowed to the ones it can.
#[tokio::test]
async fn gzip_answers_keep_their_bytes_and_their_token_usage() {
    let accept = Arc::new(std::sync::Mutex::new(Vec::new()));
    let first_seen = Arc::new(tokio::sync::Notify::new());
    let up = gzip_upstream(Arc::clone(&accept), Arc::clone(&first_seen)).await;
    let gw = gateway(backend(up), test_audit_config(), 1 << 20, true).await;

    // JSON.
    let mut req = with_id(chat(gw.addr, full("{}")), "gzip-json");
    req.headers_mut()
        .insert("accept-encoding", "gzip, deflate".parse().unwrap());
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-encoding"], "gzip");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let sent: Vec<u8> = gzip_frames(&[JSON_BODY.to_owned()]).concat();
    assert_eq!(body, sent, "the compressed body, byte for byte");
    assert_eq!(gunzip(&body), JSON_BODY);
    let e = exactly_one(&gw, "gzip-json").await;
    assert_eq!(e.outcome, Outcome::Completed);
    assert_eq!(e.response_bytes, sent.len() as u64);
    let u = e.usage.expect("usage read through gzip");
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.total_tokens),
        (Some(7), Some(2), 9)
    );

    // SSE, with codings the scanner cannot read offered first.
    let mut req = chat(gw.addr, full("{}"));
    *req.uri_mut() = format!("http://{}{ROUTE}?mode=sse", gw.addr)
        .parse()
        .unwrap();
    let mut req = with_id(req, "gzip-sse");
    req.headers_mut()
        .insert("accept-encoding", "br, gzip;q=0.5".parse().unwrap());
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-encoding"], "gzip");
    let frames = gzip_frames(&sse_events());
    let mut body = res.into_body();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while got.len() < frames[0].len() {
            let frame = body.frame().await.unwrap().unwrap();
            got.extend_from_slice(&frame.into_data().unwrap());
        }
    })
    .await
    .expect("the first compressed event reaches the client on its own");
    first_seen.notify_one();
    got.extend_from_slice(&body.collect().await.unwrap().to_bytes());
    assert_eq!(got, frames.concat(), "the compressed stream, byte for byte");
    assert_eq!(gunzip(&got), sse_events().concat());
    let e = exactly_one(&gw, "gzip-sse").await;
    assert!(e.is_stream);
    assert_eq!(e.outcome, Outcome::Completed);
    let u = e.usage.expect("usage read through a gzip stream");
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.total_tokens),
        (Some(11), Some(4), 15)
    );

    assert_eq!(
        *accept.lock().unwrap(),
        [
            Some("gzip, deflate".to_owned()),
            Some("gzip;q=0.5".to_owned())
        ],
        "what the backend was offered"
    );
}

/// Ollama's native API: `/api/chat` streams NDJSON, one object per line, the last with
/// `prompt_eval_count` / `eval_count`. Each line reaches the client as it comes (no proxy
/// buffering: `X-Accel-Buffering: no`), and the record is a stream with the counts as tokens.
#[tokio::test]
async fn ollama_ndjson_streams_pass_line_by_line_and_their_counts_are_audited() {
    let first_seen = Arc::new(tokio::sync::Notify::new());
    let lines = [
        "{\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n",
        "{\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":\"!\"},\"done\":false}\n",
        "{\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"prompt_eval_count\":26,\"eval_count\":290}\n",
    ];
    let seen = Arc::clone(&first_seen);
    let up = upstream(move |req: Request<hyper::body::Incoming>| {
        let seen = Arc::clone(&seen);
        async move {
            req.into_body().collect().await.unwrap();
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                for (i, line) in lines.iter().enumerate() {
                    if i == 1 {
                        seen.notified().await;
                    }
                    if tx
                        .send(Ok(Bytes::from_static(line.as_bytes())))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            let mut res = Response::new(body);
            res.headers_mut()
                .insert("content-type", "application/x-ndjson".parse().unwrap());
            res
        }
    })
    .await;
    let gw = gateway(backend(up), test_audit_config(), 1 << 20, true).await;
    let req = with_id(
        chat(gw.addr, full("{\"model\":\"llama3\",\"stream\":true}")),
        "ndjson",
    );
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-accel-buffering"], "no");
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first line reaches the client on its own")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, lines[0].as_bytes());
    first_seen.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, [lines[1], lines[2]].concat().as_bytes());
    let e = exactly_one(&gw, "ndjson").await;
    assert!(e.is_stream);
    assert_eq!(e.outcome, Outcome::Completed);
    assert_eq!(e.model.as_deref(), Some("llama3"));
    let u = e.usage.expect("Ollama's counts");
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.total_tokens),
        (Some(26), Some(290), 316)
    );
}
