//! Loopback: SSE events pass one by one, unbuffered and byte-identical.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use fastgate_layer::Outcome;
use http::StatusCode;
use http_body_util::BodyExt;

const N: usize = 6;
const GAP: Duration = Duration::from_millis(150);

fn event(i: usize) -> String {
    if i + 1 == N {
        return "data: [DONE]\n\n".to_owned();
    }
    if i + 2 == N {
        return "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":4,\"total_tokens\":15}}\r\n\r\n".to_owned();
    }
    format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"tok{i}\"}}}}],\"usage\":null}}\n\n")
}

#[tokio::test]
async fn each_event_arrives_before_the_next_is_sent_and_bytes_are_identical() {
    let sent_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let sent = Arc::clone(&sent_at);
    let up = upstream(move |_req| {
        let sent = Arc::clone(&sent);
        async move { timed_sse((0..N).map(event).collect(), GAP, sent) }
    })
    .await;
    let gw = gateway(backend(up), test_audit_config(), 1 << 20, true).await;

    let mut req = chat(gw.addr, full(r#"{"model":"stream-model","stream":true}"#));
    req.headers_mut()
        .insert("x-request-id", "sse-1".parse().unwrap());
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-cache");
    assert_eq!(res.headers()["x-accel-buffering"], "no");

    let expected: String = (0..N).map(event).collect();
    let mut body = res.into_body();
    let mut got = BytesMut::new();
    let mut received_at = Vec::new();
    let mut boundary = 0;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap()
    {
        if let Ok(data) = frame.unwrap().into_data() {
            got.extend_from_slice(&data);
            // Record when each complete event (by expected length) has arrived.
            while received_at.len() < N {
                let end = boundary + event(received_at.len()).len();
                if got.len() >= end {
                    received_at.push(Instant::now());
                    boundary = end;
                } else {
                    break;
                }
            }
        }
    }
    assert_eq!(&got[..], expected.as_bytes(), "bytes must be identical");
    assert!(expected.contains("data: [DONE]"));
    let sent = sent_at.lock().unwrap().clone();
    assert_eq!(sent.len(), N);
    assert_eq!(received_at.len(), N);
    for i in 0..N - 1 {
        assert!(
            received_at[i] < sent[i + 1],
            "event {i} arrived {:?} after event {} was sent",
            received_at[i] - sent[i + 1],
            i + 1
        );
    }

    let e = exactly_one(&gw, "sse-1").await;
    assert_eq!(e.outcome, Outcome::Completed);
    assert!(e.is_stream);
    assert_eq!(e.response_bytes, expected.len() as u64);
    assert_eq!(e.model.as_deref(), Some("stream-model"));
    assert_eq!(e.usage.unwrap().total_tokens, 15);
    assert!(e.ttfb.unwrap() < e.duration);
    assert!(e.duration >= GAP * (N as u32 - 1));
}
