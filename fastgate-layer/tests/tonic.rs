//! Loopback: the layers in front of a tonic gRPC service, served by tonic over HTTP/2 and called
//! by tonic's own client, as an embedding developer would.
//!
//! The service is grpc.health.v1 from `tonic-health` (generated code shipped in the crate, so no
//! protoc): a unary `Check` and a server-streaming `Watch`. In front of it: request id, audit,
//! API-key auth and header scrubbing, then a tiny layer that records the headers the service
//! itself receives. What must hold: a call with a gateway key in its metadata is answered, one
//! without (or with a wrong one) is refused with a gRPC status the client understands, in a
//! Trailers-Only response that ends the stream with its headers, the key never reaches the
//! service, `grpc-status` still arrives in the HTTP/2 trailers through the layers' body wrappers,
//! streamed messages pass as they are sent, and every call is audited.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fastgate_layer::audit::{AuditConfig, AuditEvent, AuditLayer, MemorySink};
use fastgate_layer::auth::{ApiKeyAuthLayer, StaticKeys};
use fastgate_layer::request_id::RequestIdLayer;
use fastgate_layer::scrub::{ScrubHeadersLayer, default_strip_headers};
use fastgate_layer::{ClientAddr, KeyIdentity, Outcome};
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::transport::server::{TcpConnectInfo, TcpIncoming};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthReporter;
use tower::ServiceBuilder;

/// A key with the `chat` permission: what a request without a route needs.
const KEY: &str = "sk-grpc-client-1";
/// A known key without the `chat` permission.
const EMBED_ONLY_KEY: &str = "sk-grpc-embed-only";
/// A service name the health reporter knows (besides the server's own "").
const SERVICE: &str = "fastgate.test.Demo";
const CHECK: &str = "/grpc.health.v1.Health/Check";
const WATCH: &str = "/grpc.health.v1.Health/Watch";
const WAIT: Duration = Duration::from_secs(10);

fn keys() -> StaticKeys {
    let identity = |id: &str, perm: &str| KeyIdentity {
        key_id: id.into(),
        source_path: "team-grpc".into(),
        permissions: vec![perm.to_owned()].into(),
        expires_at: None,
    };
    StaticKeys::new([
        (KEY, identity("key-grpc-1", "chat")),
        (EMBED_ONLY_KEY, identity("key-grpc-2", "embeddings")),
    ])
}

/// The layers in front of the service (a `ServiceBuilder`), as `start` hands them to tonic:
/// `$audit` is the `AuditLayer`, `$saw` collects the headers the service receives.
macro_rules! layers {
    ($audit:expr, $saw:expr) => {{
        let saw: Arc<Mutex<Vec<HeaderMap>>> = $saw;
        ServiceBuilder::new()
            // tonic knows the peer through `TcpConnectInfo`; the audit layer reads `ClientAddr`.
            .map_request(|mut req: http::Request<tonic::body::Body>| {
                let peer = req
                    .extensions()
                    .get::<TcpConnectInfo>()
                    .and_then(TcpConnectInfo::remote_addr);
                if let Some(peer) = peer {
                    req.extensions_mut().insert(ClientAddr(peer.ip()));
                }
                req
            })
            .layer(RequestIdLayer::new())
            .layer($audit)
            .layer(ApiKeyAuthLayer::new(keys()))
            .layer(ScrubHeadersLayer::new(default_strip_headers()))
            // What the service itself is handed.
            .map_request(move |req: http::Request<_>| {
                saw.lock().unwrap().push(req.headers().clone());
                req
            })
            // The layers build their refusals in the inner service's body type (`From<Bytes>`),
            // which tonic's own body is not; axum's is (and tonic's router depends on axum).
            .map_response(|res: http::Response<tonic::body::Body>| res.map(axum::body::Body::new))
    }};
}

struct App {
    addr: SocketAddr,
    sink: MemorySink,
    reporter: HealthReporter,
    /// The headers the health service received, one entry per call that reached it.
    inner_saw: Arc<Mutex<Vec<HeaderMap>>>,
}

/// The health service behind the layers, served by tonic on 127.0.0.1:0.
async fn start() -> App {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let sink = MemorySink::default();
    let (audit, worker) = AuditLayer::pair(
        sink.clone(),
        AuditConfig::default().max_delay(Duration::from_millis(5)),
    );
    tokio::spawn(worker.run());
    let inner_saw: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let layers = layers!(audit, Arc::clone(&inner_saw)).into_inner();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .layer(layers)
            .serve_with_incoming(health, TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    App {
        addr,
        sink,
        reporter,
        inner_saw,
    }
}

async fn connect(addr: SocketAddr) -> HealthClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(WAIT)
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

/// A `Check` (or `Watch`) request for `service` with `metadata` and a request id.
fn request(
    service: &str,
    id: &str,
    metadata: &[(&'static str, &str)],
) -> Request<HealthCheckRequest> {
    let mut req = Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    req.metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    for (name, value) in metadata {
        req.metadata_mut().insert(*name, value.parse().unwrap());
    }
    req
}

async fn events(sink: &MemorySink, n: usize) -> Vec<AuditEvent> {
    tokio::time::timeout(WAIT, sink.wait_for(n))
        .await
        .expect("audit events in time");
    sink.events()
}

fn event<'a>(events: &'a [AuditEvent], id: &str) -> &'a AuditEvent {
    events
        .iter()
        .find(|e| e.request_id == id)
        .unwrap_or_else(|| panic!("no audit event {id}: {events:#?}"))
}

#[tokio::test]
async fn a_tonic_service_behind_the_layers() {
    let app = start().await;
    let mut client = connect(app.addr).await;

    // A valid key in `x-api-key`, and a copy of it in another header: answered SERVING.
    let res = tokio::time::timeout(
        WAIT,
        client.check(request(
            SERVICE,
            "grpc-check-1",
            &[("x-api-key", KEY), ("api-key", KEY), ("x-trace", "kept")],
        )),
    )
    .await
    .unwrap()
    .expect("an authenticated Check is answered");
    assert_eq!(res.metadata().get("x-request-id").unwrap(), "grpc-check-1");
    assert_eq!(res.get_ref().status(), ServingStatus::Serving);

    // The same key as `authorization: Bearer`, for the server's own status ("").
    let res = tokio::time::timeout(
        WAIT,
        client.check(request(
            "",
            "grpc-check-bearer",
            &[("authorization", &format!("Bearer {KEY}"))],
        )),
    )
    .await
    .unwrap()
    .expect("a Bearer key is accepted too");
    assert_eq!(res.get_ref().status(), ServingStatus::Serving);

    // The service saw neither key header nor any copy of the key; the rest passed.
    let saw = app.inner_saw.lock().unwrap().clone();
    assert_eq!(saw.len(), 2, "{saw:#?}");
    for headers in &saw {
        assert!(headers.get("x-api-key").is_none(), "{headers:?}");
        assert!(headers.get("authorization").is_none(), "{headers:?}");
        assert!(headers.get("api-key").is_none(), "{headers:?}");
        assert!(
            headers
                .values()
                .all(|v| !v.as_bytes().windows(KEY.len()).any(|w| w == KEY.as_bytes())),
            "the gateway key reached the service: {headers:?}"
        );
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/grpc")
        );
    }
    assert_eq!(saw[0]["x-trace"], "kept");

    // Refusals: gRPC statuses the client can act on, with the auth layer's message, and the
    // request id in the metadata. None reaches the service.
    let refusals = [
        (
            "grpc-missing",
            vec![],
            Code::Unauthenticated,
            "missing API key",
        ),
        (
            "grpc-wrong",
            vec![("x-api-key", "sk-not-a-key")],
            Code::Unauthenticated,
            "invalid API key",
        ),
        (
            "grpc-basic",
            vec![("authorization", "Basic abc")],
            Code::Unauthenticated,
            "invalid API key",
        ),
        (
            "grpc-embed-only",
            vec![("x-api-key", EMBED_ONLY_KEY)],
            Code::PermissionDenied,
            "the API key is not allowed to use this route",
        ),
    ];
    for (id, metadata, code, message) in &refusals {
        let status = tokio::time::timeout(WAIT, client.check(request(SERVICE, id, metadata)))
            .await
            .unwrap()
            .expect_err("refused");
        assert_eq!(status.code(), *code, "{id}: {status:?}");
        assert_eq!(status.message(), *message, "{id}: {status:?}");
        assert!(!status.message().contains("sk-"), "{id}");
        assert_eq!(status.metadata().get("x-request-id").unwrap(), *id);
    }
    assert_eq!(
        app.inner_saw.lock().unwrap().len(),
        2,
        "refused calls reached the service"
    );

    // Audit: one record per call, with the gRPC method's path, the key, the client address.
    let events = events(&app.sink, 6).await;
    assert_eq!(events.len(), 6, "{events:#?}");
    let ok = event(&events, "grpc-check-1");
    assert_eq!((ok.method.as_str(), ok.path.as_str()), ("POST", CHECK));
    assert_eq!(ok.status, 200);
    assert_eq!(ok.outcome, Outcome::Completed);
    assert_eq!(ok.error_code, None);
    assert_eq!(ok.key_id.as_deref(), Some("key-grpc-1"));
    assert_eq!(ok.source_path.as_deref(), Some("team-grpc"));
    assert_eq!(ok.client_ip.as_deref(), Some("127.0.0.1"));
    // A 5-byte gRPC frame header and `HealthCheckResponse { status: SERVING }` (2 bytes).
    assert_eq!(ok.response_bytes, 7);
    assert!(ok.request_bytes > 5);
    assert_eq!(
        event(&events, "grpc-check-bearer").key_id.as_deref(),
        Some("key-grpc-1")
    );
    for (id, _, code, _) in &refusals {
        let e = event(&events, id);
        assert_eq!(e.path, CHECK, "{id}");
        assert_eq!(e.outcome, Outcome::Rejected, "{id}");
        // The wire says HTTP 200 (the refusal is in `grpc-status`); the record says what the
        // JSON refusal would have: 401, or 403 for a key without the permission.
        let status = if *code == Code::PermissionDenied {
            403
        } else {
            401
        };
        assert_eq!(e.status, status, "{id}");
    }
    assert_eq!(
        event(&events, "grpc-missing").error_code,
        Some("missing_api_key")
    );
    assert_eq!(
        event(&events, "grpc-wrong").error_code,
        Some("invalid_api_key")
    );
    assert_eq!(event(&events, "grpc-wrong").key_id, None);
    let denied = event(&events, "grpc-embed-only");
    assert_eq!(denied.error_code, Some("permission_denied"));
    assert_eq!(denied.key_id.as_deref(), Some("key-grpc-2"));
}

/// `Watch` is server-streaming: each status change must reach the client while the stream is
/// still open (nothing in the layers buffers it), and the client hanging up is audited.
/// The next message of a `Watch` stream, which must come in time and not end the stream.
async fn next(stream: &mut tonic::Streaming<HealthCheckResponse>) -> ServingStatus {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the next message in time")
        .expect("a message, not an error")
        .expect("the stream is still open")
        .status()
}

#[tokio::test]
async fn a_server_stream_passes_message_by_message() {
    let app = start().await;
    let mut client = connect(app.addr).await;

    let res = tokio::time::timeout(
        WAIT,
        client.watch(request(SERVICE, "grpc-watch-1", &[("x-api-key", KEY)])),
    )
    .await
    .unwrap()
    .expect("an authenticated Watch is answered");
    let mut stream = res.into_inner();
    assert_eq!(next(&mut stream).await, ServingStatus::Serving);
    for (set, seen) in [
        (
            tonic_health::ServingStatus::NotServing,
            ServingStatus::NotServing,
        ),
        (tonic_health::ServingStatus::Serving, ServingStatus::Serving),
    ] {
        app.reporter.set_service_status(SERVICE, set).await;
        assert_eq!(next(&mut stream).await, seen);
    }
    drop(stream);

    let events = events(&app.sink, 1).await;
    let watch = event(&events, "grpc-watch-1");
    assert_eq!(watch.path, WATCH);
    assert_eq!(watch.key_id.as_deref(), Some("key-grpc-1"));
    // The stream never ends on its own: the client hung up after three 7-byte messages.
    assert_eq!(watch.outcome, Outcome::ClientAborted);
    assert_eq!(watch.response_bytes, 21);
}

/// Below tonic's client: the raw HTTP/2 response of a `Check`, to see the trailers themselves.
#[tokio::test]
async fn grpc_status_arrives_in_the_trailers() {
    let app = start().await;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    // A length-prefixed `HealthCheckRequest { service: "" }`: an empty message.
    let call = |key: &str, content_type: &str| {
        http::Request::post(format!("http://{}{CHECK}", app.addr))
            .header("content-type", content_type)
            .header("te", "trailers")
            .header("x-api-key", key)
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .unwrap()
    };

    let res = tokio::time::timeout(WAIT, client.request(call(KEY, "application/grpc")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert!(
        res.headers().get("grpc-status").is_none(),
        "not trailers-only"
    );
    let body = tokio::time::timeout(WAIT, res.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    let trailers = body.trailers().cloned().expect("trailers passed through");
    assert_eq!(trailers["grpc-status"], "0");
    // `HealthCheckResponse { status: SERVING (1) }` in its frame.
    assert_eq!(body.to_bytes(), [0, 0, 0, 0, 2, 0x08, 0x01][..]);

    // A refusal is trailers-only: HTTP 200, grpc-status in the headers, no body, in the
    // request's own gRPC media type (gRPC-Web clients refuse another family or codec).
    for (sent, answered) in [
        ("application/grpc", "application/grpc"),
        ("application/grpc+json", "application/grpc+json"),
        ("application/grpc-web+proto", "application/grpc-web+proto"),
        (
            "application/GRPC-WEB-TEXT; charset=x",
            "application/grpc-web-text",
        ),
    ] {
        let res = tokio::time::timeout(WAIT, client.request(call("sk-not-a-key", sent)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), 200, "{sent}");
        assert_eq!(res.headers()["content-type"], answered, "{sent}");
        assert_eq!(res.headers()["grpc-status"], "16", "{sent}");
        assert_eq!(res.headers()["grpc-message"], "invalid API key", "{sent}");
        // Trailers-Only: END_STREAM on the HEADERS frame, so the stream has ended as the
        // response arrives (see `a_refusal_ends_the_stream_with_its_headers` for the stack).
        assert!(
            http_body::Body::is_end_stream(res.body()),
            "{sent}: the stream did not end with the headers"
        );
        let body = res.into_body().collect().await.unwrap();
        assert!(body.to_bytes().is_empty(), "{sent}");
    }
}

/// A Trailers-Only refusal must end the stream with its HEADERS frame (END_STREAM): grpc-go
/// reports "no trailers" for a response whose headers hold `grpc-status` and whose stream goes
/// on. hyper sets END_STREAM on the headers when the body says `is_end_stream()` before it is
/// polled, so the body the whole stack returns must say so through every wrapper (the audit
/// body, the body mapping). Checked on the stack itself, without a network: on the wire, an empty
/// DATA frame with END_STREAM sent right after the headers would look the same to the client.
#[tokio::test]
async fn a_refusal_ends_the_stream_with_its_headers() {
    let sink = MemorySink::default();
    let (audit, worker) = AuditLayer::pair(
        sink.clone(),
        AuditConfig::default().max_delay(Duration::from_millis(5)),
    );
    tokio::spawn(worker.run());
    let saw: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let svc = layers!(audit, Arc::clone(&saw)).service(tower::service_fn(
        |_req: http::Request<fastgate_layer::audit::AuditRequestBody<tonic::body::Body>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        },
    ));
    let req = http::Request::post(CHECK)
        .header("content-type", "application/grpc-web+proto")
        .header("x-request-id", "grpc-end-stream")
        .header("x-api-key", "sk-not-a-key")
        .body(tonic::body::Body::empty())
        .unwrap();
    let res = tower::ServiceExt::oneshot(svc, req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "16");
    assert!(
        http_body::Body::is_end_stream(res.body()),
        "the refusal's body does not end the stream with the headers"
    );
    assert_eq!(http_body::Body::size_hint(res.body()).exact(), Some(0));
    // Never polled (hyper does not poll a body that has ended): audited all the same, as the
    // refusal it is, not as a client that went away.
    drop(res);
    let events = events(&sink, 1).await;
    let refused = event(&events, "grpc-end-stream");
    assert_eq!(refused.outcome, Outcome::Rejected);
    assert_eq!(refused.error_code, Some("invalid_api_key"));
    assert!(saw.lock().unwrap().is_empty());
}
