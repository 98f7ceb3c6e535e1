//! An OpenAI-compatible mock backend, for trying FastGate without a model server and for tests
//! and benchmarks.
//!
//! ```text
//! cargo run --example mock_backend -- --listen 127.0.0.1:9000
//! ```
//!
//! Every `POST` path answers like `/v1/chat/completions`: a JSON completion with `usage`, or, when
//! the request JSON has `"stream": true`, an SSE stream of `--chunks` events `--chunk-delay-ms`
//! apart, a final chunk with `usage`, and `data: [DONE]`.
//!
//! Test hooks (request headers, forwarded unchanged by FastGate):
//! - `x-mock-status: 503` answers with that status and an OpenAI-shaped error body (plus
//!   `Retry-After: 7` for 429 and 503);
//! - `x-mock-delay-ms: 500` waits before sending the response headers;
//! - `x-mock-chunks` / `x-mock-chunk-delay-ms` override the stream shape for one request.
//!
//! `GET /__mock/last` returns the method, path and headers of the last proxied request, and
//! `GET /__mock/count` the number of requests served, so tests can check what reached the backend.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
#[command(about = "OpenAI-compatible mock backend for FastGate")]
struct Args {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Content chunks per streamed response.
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    /// Milliseconds between streamed chunks.
    #[arg(long, default_value_t = 50)]
    chunk_delay_ms: u64,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Default)]
struct State {
    last: Mutex<Value>,
    count: AtomicU64,
    chunks: usize,
    chunk_delay: Duration,
}

type Body = BoxBody<Bytes, Infallible>;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        rt.worker_threads(args.threads);
    }
    rt.enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    println!(
        "mock backend listening on http://{}",
        listener.local_addr()?
    );
    let state = Arc::new(State {
        chunks: args.chunks,
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
        ..State::default()
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("accept failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *res.status_mut() = status;
    res.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    res
}

fn header_u64(req: &Request<Incoming>, name: &str) -> Option<u64> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if req.method() == hyper::Method::GET {
        return Ok(match path.as_str() {
            "/__mock/last" => json_response(StatusCode::OK, &*state.last.lock().await),
            "/__mock/count" => json_response(
                StatusCode::OK,
                &json!({ "count": state.count.load(Ordering::Relaxed) }),
            ),
            _ => json_response(StatusCode::OK, &json!({ "status": "ok" })),
        });
    }
    state.count.fetch_add(1, Ordering::Relaxed);
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    *state.last.lock().await = json!({
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "headers": headers,
    });
    let status = header_u64(&req, "x-mock-status");
    let delay = header_u64(&req, "x-mock-delay-ms");
    let chunks = header_u64(&req, "x-mock-chunks").map_or(state.chunks, |n| n as usize);
    let chunk_delay =
        header_u64(&req, "x-mock-chunk-delay-ms").map_or(state.chunk_delay, Duration::from_millis);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = status.and_then(|s| StatusCode::from_u16(s as u16).ok()) {
        let mut res = json_response(
            code,
            &json!({"error": {"message": format!("mock error {}", code.as_u16()),
                              "type": "mock_error", "code": code.as_u16()}}),
        );
        if code == StatusCode::TOO_MANY_REQUESTS || code == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert("retry-after", "7".parse().expect("static"));
        }
        return Ok(res);
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return Ok(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"message": "request body is not valid JSON",
                              "type": "invalid_request_error", "code": "invalid_json"}}),
        ));
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_owned();
    let prompt_tokens = (body.len() / 4).max(1) as u64;
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        return Ok(stream_response(model, chunks, chunk_delay, prompt_tokens));
    }
    let text = "Hello from the FastGate mock backend.";
    let completion_tokens = 8;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}
        }),
    ))
}

fn stream_response(
    model: String,
    chunks: usize,
    delay: Duration,
    prompt_tokens: u64,
) -> Response<Body> {
    let events = futures_util::stream::iter(0..=chunks + 1).then(move |i| {
        let model = model.clone();
        async move {
            if i > 0 && i <= chunks {
                tokio::time::sleep(delay).await;
            }
            let data = if i < chunks {
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk",
                       "created": 1_700_000_000, "model": model,
                       "choices": [{"index": 0, "delta": {"content": format!("token{i} ")},
                                    "finish_reason": null}]})
                .to_string()
            } else if i == chunks {
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk",
                       "created": 1_700_000_000, "model": model,
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": chunks,
                                 "total_tokens": prompt_tokens + chunks as u64}})
                .to_string()
            } else {
                "[DONE]".to_owned()
            };
            Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: {data}\n\n"))))
        }
    });
    let mut res = Response::new(BodyExt::boxed(StreamBody::new(events)));
    res.headers_mut()
        .insert("content-type", "text/event-stream".parse().expect("static"));
    res
}
