//! FastGate's layers in front of a tonic gRPC service: API-key auth, header scrubbing, request
//! ids and the audit record, for calls that tonic serves itself (nothing is proxied).
//!
//! The service is the standard grpc.health.v1 one from `tonic-health` (its generated code ships
//! in the crate: no protoc). The layers are the crate's own, stacked with tower's
//! `ServiceBuilder` and handed to tonic's `Server::layer`; `GatewayBuilder` is not used, because
//! its route table and key injection are for proxying to an HTTP backend. The gateway key goes
//! in the call's metadata (`x-api-key: <key>` or `authorization: Bearer <key>`); a call without
//! a valid one gets a gRPC status (`UNAUTHENTICATED`, `PERMISSION_DENIED`, `UNAVAILABLE`), and
//! the key is removed before the service sees the call. A key needs the `chat` permission here
//! (no route names another). tonic's `TcpConnectInfo` supplies the client address the audit
//! records. Keys are in memory and audit events are printed: swap in `fastgate-store` (or your
//! own `KeyResolver` and `AuditSink`) for real ones.
//!
//! On start it calls itself twice (with the key, without), then serves until stopped:
//!
//! ```text
//! cargo run -p fastgate-layer --example embed_tonic            # listens on 127.0.0.1:50051
//! cargo run -p fastgate-layer --example embed_tonic -- 127.0.0.1:0
//! grpc_health_probe -addr 127.0.0.1:50051 -rpc-header 'x-api-key: sk-demo-client'
//! ```

use std::convert::Infallible;

use fastgate_layer::audit::{AuditBatch, AuditConfig, AuditLayer, AuditSink};
use fastgate_layer::auth::{ApiKeyAuthLayer, StaticKeys};
use fastgate_layer::request_id::RequestIdLayer;
use fastgate_layer::scrub::{ScrubHeadersLayer, default_strip_headers};
use fastgate_layer::{ClientAddr, KeyIdentity};
use tokio::net::TcpListener;
use tonic::transport::server::{TcpConnectInfo, TcpIncoming};
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;

/// One line per call on stdout.
struct PrintSink;

impl AuditSink for PrintSink {
    type Error = Infallible;

    async fn write_batch(&mut self, events: &AuditBatch) -> Result<(), Infallible> {
        for e in events.iter() {
            println!(
                "audit: {} {} {} -> {} {}{} key={} client={}",
                e.request_id,
                e.method,
                e.path,
                e.status,
                e.outcome.as_str(),
                e.error_code.map(|c| format!(" ({c})")).unwrap_or_default(),
                e.key_id.as_deref().unwrap_or("-"),
                e.client_ip.as_deref().unwrap_or("-"),
            );
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned());

    // 1. The gRPC service, the keys, the audit worker (the application runs it).
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("demo.Greeter", tonic_health::ServingStatus::Serving)
        .await;
    let keys = StaticKeys::new([(
        "sk-demo-client",
        KeyIdentity {
            key_id: "demo-key".into(),
            source_path: "demo".into(),
            permissions: vec!["chat".to_owned()].into(),
            expires_at: None,
        },
    )]);
    let (audit, worker) = AuditLayer::pair(PrintSink, AuditConfig::default());
    tokio::spawn(worker.run());

    // 2. The layers, outermost first, as `GatewayBuilder` orders them.
    let layers = ServiceBuilder::new()
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
        .layer(audit)
        .layer(ApiKeyAuthLayer::new(keys))
        .layer(ScrubHeadersLayer::new(default_strip_headers()))
        // The layers build their refusals in the inner service's body type (`From<Bytes>`):
        // tonic's own body is not, axum's is (and tonic's default `router` feature uses axum).
        .map_response(|res: http::Response<tonic::body::Body>| res.map(axum::body::Body::new))
        .into_inner();

    // 3. tonic serves the health service behind them.
    let listener = TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        Server::builder()
            .layer(layers)
            .serve_with_incoming(health, TcpIncoming::from(listener)),
    );
    println!("tonic + FastGate layers listening on http://{addr} (grpc.health.v1.Health)");

    // 4. A call with the key, and one without, from tonic's own client.
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    let check = |key: Option<&str>| {
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: "demo.Greeter".to_owned(),
        });
        if let Some(key) = key
            && let Ok(value) = key.parse()
        {
            req.metadata_mut().insert("x-api-key", value);
        }
        req
    };
    match client.check(check(Some("sk-demo-client"))).await {
        Ok(res) => println!("with the key:    {:?}", res.get_ref().status()),
        Err(status) => println!("with the key:    {status}"),
    }
    match client.check(check(None)).await {
        Ok(res) => println!("without a key:   {:?}", res.get_ref().status()),
        Err(status) => println!("without a key:   {:?}: {}", status.code(), status.message()),
    }

    server.await??;
    Ok(())
}
