//! The FastGate layer stack inside an axum application, beside the application's own routes.
//!
//! The stack is built for axum's body type (`build::<axum::body::Body>()`) and mounted with
//! `Router::route_service`, which hands it the whole path (the route table holds full paths, so
//! `nest_service`, which strips its prefix, is not the way). axum's `ConnectInfo` supplies the
//! client address the audit records. Keys are in memory and audit events are printed: swap in
//! `fastgate-store` (or your own `KeyResolver` and `AuditSink`) for real ones. A fake upstream on
//! a free loopback port makes the printed `curl` commands work end to end.
//!
//! ```text
//! cargo run -p fastgate-layer --example embed_axum            # listens on 127.0.0.1:8514
//! cargo run -p fastgate-layer --example embed_axum -- 127.0.0.1:0
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use fastgate_layer::audit::{AuditBatch, AuditConfig, AuditLayer, AuditSink};
use fastgate_layer::auth::StaticKeys;
use fastgate_layer::route::RouteTable;
use fastgate_layer::{Backend, ClientAddr, GatewayBuilder, KeyIdentity, RouteConfig, Secret};
use http::{Request, header};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

/// One line per request on stdout.
struct PrintSink;

impl AuditSink for PrintSink {
    type Error = Infallible;

    async fn write_batch(&mut self, events: &AuditBatch) -> Result<(), Infallible> {
        for e in events.iter() {
            println!(
                "audit: {} {} {} -> {} {} key={} client={} tokens={:?}",
                e.request_id,
                e.method,
                e.path,
                e.status,
                e.outcome.as_str(),
                e.key_id.as_deref().unwrap_or("-"),
                e.client_ip.as_deref().unwrap_or("-"),
                e.usage.map(|u| u.total_tokens),
            );
        }
        Ok(())
    }
}

/// A fake OpenAI-compatible upstream (itself a tiny axum app) that checks the injected key.
async fn start_upstream() -> std::io::Result<SocketAddr> {
    async fn chat(headers: HeaderMap) -> ([(header::HeaderName, &'static str); 1], &'static str) {
        let json = [(header::CONTENT_TYPE, "application/json")];
        match headers.get(header::AUTHORIZATION) {
            Some(v) if v == "Bearer sk-upstream-demo" => (
                json,
                r#"{"id":"demo","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hello through axum"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
            ),
            _ => (
                json,
                r#"{"error":{"message":"the upstream did not get the real key","type":"demo","code":"bad_key"}}"#,
            ),
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new().route("/v1/chat/completions", post(chat));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8514".to_owned());
    let upstream = start_upstream().await?;

    // 1. Keys, one route to the upstream, the audit worker (the application runs it).
    let keys = StaticKeys::new([(
        "sk-demo-client",
        KeyIdentity {
            key_id: "demo-key".into(),
            source_path: "demo".into(),
            permissions: vec!["chat".to_owned()].into(),
            expires_at: None,
        },
    )]);
    let backend = Arc::new(Backend {
        base_url: format!("http://{upstream}").parse()?,
        path: "/v1/chat/completions".into(),
        api_key: Some(Secret::new("sk-upstream-demo")),
        key_header: header::AUTHORIZATION,
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
    });
    let routes = RouteTable::new(HashMap::from([(
        "/proxy/v1/chat/completions".to_owned(),
        RouteConfig {
            name: "chat".into(),
            permission: "chat".into(),
            backend,
        },
    )]));
    let (audit, worker) = AuditLayer::pair(PrintSink, AuditConfig::default());
    tokio::spawn(worker.run());

    // 2. The stack for axum's body type, with the client address taken from `ConnectInfo`.
    let gateway = GatewayBuilder::new(keys, routes)
        .audit(audit)
        .max_body_bytes(1 << 20)
        .build::<axum::body::Body>();
    let gateway = ServiceBuilder::new()
        .map_request(|mut req: Request<axum::body::Body>| {
            let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().copied();
            if let Some(ConnectInfo(peer)) = peer {
                req.extensions_mut().insert(ClientAddr(peer.ip()));
            }
            req
        })
        .service(gateway);

    // 3. The application: its own routes, and the gateway under /proxy/.
    let app = Router::new()
        .route(
            "/",
            get(|| async { "an axum app with FastGate under /proxy/\n" }),
        )
        .route_service("/proxy/{*path}", gateway);
    let listener = TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;
    println!("axum + FastGate layers listening on http://{addr}");
    println!(
        "  curl -s http://{addr}/proxy/v1/chat/completions -H 'Authorization: Bearer sk-demo-client' \\\n       -H 'content-type: application/json' -d '{{\"model\":\"demo\",\"messages\":[]}}'"
    );
    println!("  curl -s http://{addr}/proxy/v1/chat/completions -H 'X-API-Key: wrong'   # 401");
    println!("  curl -s http://{addr}/                                                 # the app");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
