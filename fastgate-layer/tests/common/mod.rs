//! Loopback helpers: a real hyper upstream, the real stack served over a real socket, a client.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastgate_layer::audit::{
    AuditConfig, AuditEvent, AuditLayer, AuditStats, AuditWorker, MemorySink,
};
use fastgate_layer::auth::StaticKeys;
use fastgate_layer::forward::ForwardConfig;
use fastgate_layer::route::RouteTable;
use fastgate_layer::{Backend, ClientAddr, GatewayBuilder, KeyIdentity, RouteConfig, Secret};
use http::{HeaderMap, Request, Response, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::ServiceBuilder;

pub type TestBody = BoxBody<Bytes, std::io::Error>;
type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

pub const CLIENT_KEY: &str = "sk-client-test-1";
pub const UPSTREAM_KEY: &str = "sk-upstream-real-9";
pub const ROUTE: &str = "/proxy/test/v1/chat/completions";

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// A body fed by the returned sender (frames arrive when the test sends them).
pub fn channel_body() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, TestBody) {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let body = StreamBody::new(futures_util::StreamExt::map(stream, |r| r.map(Frame::data)));
    (tx, BodyExt::boxed(body))
}

/// A hyper server on 127.0.0.1:0 answering with `handler`.
pub async fn upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// An event-stream response with `events`, the first at once and each next one `gap` later;
/// the time each is handed to hyper is pushed to `sent`.
pub fn timed_sse(
    events: Vec<String>,
    gap: Duration,
    sent: Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
) -> Response<TestBody> {
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            sent.lock().unwrap().push(std::time::Instant::now());
            if tx.send(Ok(Bytes::from(event))).await.is_err() {
                return;
            }
        }
    });
    let mut res = Response::new(body);
    res.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    res
}

/// An address nothing listens on.
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

pub fn backend(addr: SocketAddr) -> Backend {
    Backend {
        base_url: format!("http://{addr}/base").parse().unwrap(),
        path: "/v1/chat/completions".into(),
        api_key: Some(Secret::new(UPSTREAM_KEY)),
        key_header: header::AUTHORIZATION,
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
    }
}

pub fn keys() -> StaticKeys {
    StaticKeys::new([(
        CLIENT_KEY,
        KeyIdentity {
            key_id: "key-test-1".into(),
            source_path: "team-test".into(),
            permissions: vec!["chat".to_owned()].into(),
            expires_at: None,
        },
    )])
}

pub fn routes(backend: Backend) -> RouteTable {
    RouteTable::new(HashMap::from([(
        ROUTE.to_owned(),
        RouteConfig {
            name: "test".into(),
            permission: "chat".into(),
            backend: Arc::new(backend),
        },
    )]))
}

pub struct Gateway {
    pub addr: SocketAddr,
    pub sink: MemorySink,
    pub stats: AuditStats,
    pub worker: Option<AuditWorker<MemorySink>>,
}

/// The real stack (`GatewayBuilder::build::<Incoming>()`) served on 127.0.0.1:0. The audit worker
/// runs unless `run_worker` is false (then it is returned, unstarted).
pub async fn gateway(
    backend: Backend,
    config: AuditConfig,
    max_body: u64,
    run_worker: bool,
) -> Gateway {
    gateway_with_forward(
        backend,
        config,
        max_body,
        run_worker,
        ForwardConfig::default(),
    )
    .await
}

/// [`gateway`] with the forward service configured by `forward` (TLS settings, pool sizes).
pub async fn gateway_with_forward(
    backend: Backend,
    config: AuditConfig,
    max_body: u64,
    run_worker: bool,
    forward: ForwardConfig,
) -> Gateway {
    let sink = MemorySink::default();
    let (audit, worker) = AuditLayer::pair(sink.clone(), config);
    let stats = audit.stats();
    let worker = if run_worker {
        tokio::spawn(worker.run());
        None
    } else {
        Some(worker)
    };
    let svc = GatewayBuilder::new(keys(), routes(backend))
        .audit(audit)
        .max_body_bytes(max_body)
        .forward_config(forward)
        .build::<Incoming>();
    let addr = serve(svc).await;
    Gateway {
        addr,
        sink,
        stats,
        worker,
    }
}

/// Serve a built stack on 127.0.0.1:0 (HTTP/1.1 and h2c), each request with its client's address.
pub async fn serve(svc: fastgate_layer::Gateway<StaticKeys, Incoming>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, remote)) = listener.accept().await {
            let svc = ServiceBuilder::new()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(ClientAddr(remote.ip()));
                    req
                })
                .service(svc.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });
    addr
}

pub fn test_audit_config() -> AuditConfig {
    AuditConfig::default().max_delay(Duration::from_millis(5))
}

pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// POST `body` to the route with the client key in `x-api-key`.
pub fn chat(gw: SocketAddr, body: TestBody) -> Request<TestBody> {
    Request::post(format!("http://{gw}{ROUTE}"))
        .header("x-api-key", CLIENT_KEY)
        .header("content-type", "application/json")
        .header("user-agent", "fastgate-tests")
        .body(body)
        .unwrap()
}

/// Wait (bounded) until the sink holds `n` events.
pub async fn audit_events(gw: &Gateway, n: usize) -> Vec<AuditEvent> {
    tokio::time::timeout(Duration::from_secs(10), gw.sink.wait_for(n))
        .await
        .expect("audit events in time");
    gw.sink.events()
}

/// The one event for `request_id`. Waits for it, then sends a marker request through the same
/// gateway and waits for the marker's event too, and checks that `request_id` appears once.
pub async fn exactly_one(gw: &Gateway, request_id: &str) -> AuditEvent {
    let find = |events: &[AuditEvent]| events.iter().filter(|e| e.request_id == request_id).count();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = gw.sink.len();
            if find(&gw.sink.events()) > 0 {
                return;
            }
            gw.sink.wait_for(n + 1).await;
        }
    })
    .await
    .expect("audit event in time");
    let marker = format!("marker-{request_id}");
    let req = Request::get(format!("http://{}/marker", gw.addr))
        .header("x-request-id", &marker)
        .body(full(Bytes::new()))
        .unwrap();
    let res = client().request(req).await.unwrap();
    res.into_body().collect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = gw.sink.len();
            if gw.sink.events().iter().any(|e| e.request_id == marker) {
                return;
            }
            gw.sink.wait_for(n + 1).await;
        }
    })
    .await
    .expect("marker event in time");
    let events = gw.sink.events();
    assert_eq!(
        find(&events),
        1,
        "exactly one event for {request_id}: {events:#?}"
    );
    events
        .into_iter()
        .find(|e| e.request_id == request_id)
        .unwrap()
}

pub fn headers_json(h: &HeaderMap) -> String {
    let mut v: Vec<String> = h
        .iter()
        .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    v.sort();
    v.join("\n")
}
