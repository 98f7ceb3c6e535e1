//! Loopback: the layer stack mounted in an axum application, as an embedding developer would.
//!
//! The stack is built for axum's own body type and mounted with `Router::route_service` beside
//! the application's own routes; the client address comes from axum's `ConnectInfo`. Everything
//! the gateway does must still happen there: keys checked, credentials scrubbed, the real key
//! injected, SSE streamed event by event, OpenAI-shaped refusals, one audit event per request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use bytes::BytesMut;
use common::*;
use fastgate_layer::audit::{AuditLayer, MemorySink};
use fastgate_layer::{ClientAddr, GatewayBuilder, Outcome};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceBuilder;

const EVENTS: usize = 4;
const GAP: Duration = Duration::from_millis(150);
const MAX_BODY: u64 = 4096;

fn event(i: usize) -> String {
    match i {
        _ if i + 1 == EVENTS => "data: [DONE]\n\n".to_owned(),
        _ if i + 2 == EVENTS => "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5}}\n\n".to_owned(),
        _ => format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"t{i}\"}}}}]}}\n\n"),
    }
}

struct App {
    addr: SocketAddr,
    sink: MemorySink,
    /// The headers the upstream received, one entry per request.
    upstream_saw: Arc<Mutex<Vec<HeaderMap>>>,
    /// When the upstream sent each event of the last stream.
    sent_at: Arc<Mutex<Vec<Instant>>>,
}

/// An upstream that streams [`EVENTS`] events [`GAP`] apart, and an axum application on
/// 127.0.0.1:0 with a route of its own (`/hello`) and the gateway under `/proxy/`.
async fn start_app() -> App {
    let upstream_saw: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let sent_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let (saw, sent) = (Arc::clone(&upstream_saw), Arc::clone(&sent_at));
    let up = upstream(move |req| {
        saw.lock().unwrap().push(req.headers().clone());
        let sent = Arc::clone(&sent);
        async move {
            sent.lock().unwrap().clear();
            timed_sse((0..EVENTS).map(event).collect(), GAP, sent)
        }
    })
    .await;

    let sink = MemorySink::default();
    let (audit, worker) = AuditLayer::pair(sink.clone(), test_audit_config());
    tokio::spawn(worker.run());
    let gateway = GatewayBuilder::new(keys(), routes(backend(up)))
        .audit(audit)
        .max_body_bytes(MAX_BODY)
        .build::<axum::body::Body>();
    // axum knows the peer through `ConnectInfo`; the stack reads `ClientAddr`.
    let gateway = ServiceBuilder::new()
        .map_request(|mut req: Request<axum::body::Body>| {
            let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().copied();
            if let Some(ConnectInfo(peer)) = peer {
                req.extensions_mut().insert(ClientAddr(peer.ip()));
            }
            req
        })
        .service(gateway);
    let app = Router::new()
        .route("/hello", get(|| async { "hello from the app" }))
        .route_service("/proxy/{*rest}", gateway);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    App {
        addr,
        sink,
        upstream_saw,
        sent_at,
    }
}

async fn json_of(res: Response<hyper::body::Incoming>) -> serde_json::Value {
    let body = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn an_axum_router_serves_the_gateway_beside_its_own_routes() {
    let app = start_app().await;
    let client = client();

    // The application's own route: answered by axum, never audited or forwarded.
    let res = client
        .get(format!("http://{}/hello", app.addr).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello from the app");

    // A streamed request with the client key as a Bearer token.
    let req = Request::post(format!("http://{}{ROUTE}", app.addr))
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("content-type", "application/json")
        .header("x-request-id", "axum-stream-1")
        .header("x-trace", "kept")
        .body(full(r#"{"model":"axum-model","stream":true}"#))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(res.headers()["x-request-id"], "axum-stream-1");
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
            while received_at.len() < EVENTS
                && got.len() >= boundary + event(received_at.len()).len()
            {
                boundary += event(received_at.len()).len();
                received_at.push(Instant::now());
            }
        }
    }
    let expected: String = (0..EVENTS).map(event).collect();
    assert_eq!(&got[..], expected.as_bytes(), "bytes must be identical");
    // Each event reached the client before the upstream sent the next: nothing buffered the
    // stream (not axum, not the layers).
    let sent = app.sent_at.lock().unwrap().clone();
    assert_eq!((sent.len(), received_at.len()), (EVENTS, EVENTS));
    for i in 0..EVENTS - 1 {
        assert!(
            received_at[i] < sent[i + 1],
            "event {i} arrived after event {} was sent",
            i + 1
        );
    }

    // What the upstream saw: the real key, not the client's; other headers kept.
    let saw = app.upstream_saw.lock().unwrap().clone();
    assert_eq!(saw.len(), 1);
    assert_eq!(saw[0]["authorization"], format!("Bearer {UPSTREAM_KEY}"));
    assert!(!headers_json(&saw[0]).contains(CLIENT_KEY));
    assert_eq!(saw[0]["x-trace"], "kept");
    assert_eq!(saw[0]["x-request-id"], "axum-stream-1");

    // Refusals are the gateway's own JSON, through axum unchanged, and reach no upstream.
    let wrong = Request::post(format!("http://{}{ROUTE}", app.addr))
        .header("x-api-key", "sk-not-a-key")
        .header("x-request-id", "axum-wrong-key")
        .body(full(r#"{"model":"axum-model"}"#))
        .unwrap();
    let res = client.request(wrong).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let err = json_of(res).await;
    assert_eq!(err["error"]["code"], "invalid_api_key", "{err}");
    assert!(!err.to_string().contains("sk-not-a-key"));

    let mut unknown = chat(app.addr, full("{}"));
    *unknown.uri_mut() = format!("http://{}/proxy/nowhere", app.addr)
        .parse()
        .unwrap();
    let res = client.request(unknown).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_of(res).await["error"]["code"], "route_not_found");

    let mut too_big = chat(app.addr, full(vec![b' '; MAX_BODY as usize + 1]));
    too_big.headers_mut().remove("content-length");
    let res = client.request(too_big).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_of(res).await["error"]["code"], "request_too_large");
    assert_eq!(
        app.upstream_saw.lock().unwrap().len(),
        1,
        "refused requests must not reach the upstream"
    );

    // One audit event per gateway request (4), none for the app's own route; the stream's
    // event carries the key, the client address from ConnectInfo, the usage and the outcome.
    let events = tokio::time::timeout(Duration::from_secs(10), async {
        app.sink.wait_for(4).await;
        app.sink.events()
    })
    .await
    .expect("audit events in time");
    assert_eq!(events.len(), 4, "{events:#?}");
    assert!(events.iter().all(|e| e.path != "/hello"));
    let stream = events
        .iter()
        .find(|e| e.request_id == "axum-stream-1")
        .unwrap();
    assert_eq!(stream.outcome, Outcome::Completed);
    assert!(stream.is_stream);
    assert_eq!(stream.key_id.as_deref(), Some("key-test-1"));
    assert_eq!(stream.client_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(stream.model.as_deref(), Some("axum-model"));
    assert_eq!(stream.usage.unwrap().total_tokens, 5);
    assert_eq!(stream.response_bytes, expected.len() as u64);
    let refused = events
        .iter()
        .find(|e| e.request_id == "axum-wrong-key")
        .unwrap();
    assert_eq!(refused.status, 401);
    assert_eq!(refused.key_id, None);
    let mut statuses: Vec<u16> = events.iter().map(|e| e.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401, 404, 413]);
}
