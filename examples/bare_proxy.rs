//! The floor of the Rust HTTP stack FastGate is built on: a reverse proxy with nothing in it but
//! hyper's HTTP/1.1 server and hyper-util's pooled client (no key check, no scrubbing, no audit).
//!
//! `benches/load.sh` runs it beside nginx and FastGate, so the table shows how much of FastGate's
//! cost per request is the two HTTP hops themselves and how much is the gateway's own work.
//!
//! ```text
//! cargo run --release --example bare_proxy -- --listen 127.0.0.1:9100 --upstream http://127.0.0.1:9000
//! ```

use std::net::SocketAddr;

use clap::Parser;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(about = "A bare hyper reverse proxy: the lower bound for FastGate's cost")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Upstream base URL (scheme and authority); the request path and query are kept.
    #[arg(long, default_value = "http://127.0.0.1:9000")]
    upstream: String,
}

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build(connector);
    let upstream: std::sync::Arc<str> = args.upstream.trim_end_matches('/').into();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let client = client.clone();
                let upstream = upstream.clone();
                async move {
                    let (mut parts, body) = req.into_parts();
                    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    parts.uri = match format!("{upstream}{pq}").parse() {
                        Ok(uri) => uri,
                        Err(_) => {
                            return Ok::<_, std::convert::Infallible>(status(
                                StatusCode::BAD_REQUEST,
                            ));
                        }
                    };
                    parts.headers.remove(hyper::header::HOST);
                    Ok(
                        match client.request(Request::from_parts(parts, body)).await {
                            Ok(res) => res.map(BodyExt::boxed),
                            Err(_) => status(StatusCode::BAD_GATEWAY),
                        },
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut res = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *res.status_mut() = code;
    res
}
