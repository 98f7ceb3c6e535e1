//! The FastGate layer stack mounted in a plain hyper server, with an in-memory key resolver.
//!
//! Proof that `fastgate-layer` stands on its own: no poem, no database, no config file. The
//! example also starts a tiny fake upstream on a free loopback port, so the printed `curl`
//! commands work end to end.
//!
//! ```text
//! cargo run -p fastgate-layer --example embed_hyper            # listens on 127.0.0.1:8514
//! cargo run -p fastgate-layer --example embed_hyper -- 127.0.0.1:0
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastgate_layer::audit::{AuditBatch, AuditConfig, AuditLayer, AuditSink};
use fastgate_layer::auth::StaticKeys;
use fastgate_layer::route::RouteTable;
use fastgate_layer::{Backend, ClientAddr, GatewayBuilder, KeyIdentity, RouteConfig, Secret};
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

/// An audit sink that prints one line per request.
struct PrintSink;

impl AuditSink for PrintSink {
    type Error = Infallible;

    async fn write_batch(&mut self, events: &AuditBatch) -> Result<(), Infallible> {
        for e in events.iter() {
            println!(
                "audit: {} {} {} -> {} {} key={} model={} bytes={}/{} usage={:?}",
                e.request_id,
                e.method,
                e.path,
                e.status,
                e.outcome.as_str(),
                e.key_id.as_deref().unwrap_or("-"),
                e.model.as_deref().unwrap_or("-"),
                e.request_bytes,
                e.response_bytes,
                e.usage.map(|u| u.total_tokens),
            );
        }
        Ok(())
    }
}

/// A fake OpenAI-compatible upstream that checks the injected key.
async fn upstream(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v == "Bearer sk-upstream-demo");
    let body = if authorized {
        r#"{"id":"demo","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hello from the fake upstream"}}],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#
    } else {
        r#"{"error":{"message":"upstream did not get the real key","type":"demo","code":"bad_key"}}"#
    };
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

async fn start_upstream() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(upstream);
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8514".to_owned());
    let upstream_addr = start_upstream().await?;

    // 1. Keys, routes and the audit worker.
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
        base_url: format!("http://{upstream_addr}").parse()?,
        path: "/v1/chat/completions".into(),
        api_key: Some(Secret::new("sk-upstream-demo")),
        key_header: header::AUTHORIZATION,
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
    });
    let routes = RouteTable::new(HashMap::from([(
        "/proxy/demo/chat/completions".to_owned(),
        RouteConfig {
            name: "demo".into(),
            permission: "chat".into(),
            backend,
        },
    )]));
    let (audit, worker) = AuditLayer::pair(PrintSink, AuditConfig::default());
    tokio::spawn(worker.run()); // the audit worker is a future the application runs

    // 2. The stack, for hyper's own request body type.
    let gateway = GatewayBuilder::new(keys, routes)
        .audit(audit)
        .max_body_bytes(1 << 20)
        .build::<Incoming>();

    // 3. A plain hyper accept loop. The client address goes into the request extensions.
    let listener = TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;
    println!("FastGate layer demo listening on http://{addr}");
    println!(
        "  curl -s http://{addr}/proxy/demo/chat/completions -H 'Authorization: Bearer sk-demo-client' \\\n       -H 'content-type: application/json' -d '{{\"model\":\"demo\",\"messages\":[]}}'"
    );
    println!("  curl -s http://{addr}/proxy/demo/chat/completions -H 'X-API-Key: wrong'   # 401");
    println!("  curl -s http://{addr}/nowhere -H 'X-API-Key: sk-demo-client'            # 404");

    loop {
        let (stream, remote) = listener.accept().await?;
        let svc = ServiceBuilder::new()
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ClientAddr(remote.ip()));
                req
            })
            .service(gateway.clone());
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                .await;
        });
    }
}
