//! Test harness: a recording OpenAI-compatible upstream in this process, and the real `fastgate`
//! binary started on a free loopback port with a temporary config and SQLite file.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

pub const ADMIN_TOKEN: &str = "test-admin-token-5f1c";
pub const REAL_KEY: &str = "sk-real-upstream-key-9a7e";
pub const BACKEND_PATH: &str = "/miniai/v2/chat/completions";

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A recording upstream on 127.0.0.1: JSON completion, or SSE when the body asks for a stream.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

pub const SSE_EVENTS: usize = 5;
pub const SSE_GAP: Duration = Duration::from_millis(120);

pub fn sse_event(i: usize) -> String {
    if i < SSE_EVENTS {
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i}\"}}}}]}}\n\n"
        )
    } else if i == SSE_EVENTS {
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5,\"total_tokens\":12}}\n\n".to_owned()
    } else {
        "data: [DONE]\n\n".to_owned()
    }
}

pub fn full_sse() -> String {
    (0..=SSE_EVENTS + 1).map(sse_event).collect()
}

pub const JSON_REPLY: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;

type Body = BoxBody<Bytes, Infallible>;

async fn handle(
    seen: Arc<Mutex<Vec<Seen>>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let stream = text.contains("\"stream\":true") || text.contains("\"stream\": true");
    seen.lock().unwrap().push(Seen {
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body,
    });
    if stream {
        let events = futures_util::stream::iter(0..=SSE_EVENTS + 1).then(|i| async move {
            if i > 0 && i < SSE_EVENTS {
                tokio::time::sleep(SSE_GAP).await;
            }
            Ok::<_, Infallible>(Frame::data(Bytes::from(sse_event(i))))
        });
        let mut res = Response::new(BodyExt::boxed(StreamBody::new(events)));
        res.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        return Ok(res);
    }
    let mut res = Response::new(Full::new(Bytes::from_static(JSON_REPLY.as_bytes())).boxed());
    res.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(res)
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn config_yaml(port: u16, db: &Path, backend_url: &str) -> String {
    format!(
        r#"app:
  name: "M-FastGate"
  version: "0.1.0"
  debug: false
  host: "127.0.0.1"
  port: {port}
  shutdown_timeout: 20

database:
  url: "sqlite:///{db}"
  echo: false

security:
  admin_token: "{ADMIN_TOKEN}"
  key_prefix: "fg_"
  default_expiry_days: 365
  admin_max_failures_per_minute: 5

api_gateway:
  backend_url: "{backend_url}"
  backend_path: "{BACKEND_PATH}"
  real_api_key: "{REAL_KEY}"
  strip_headers:
    - "host"
    - "x-api-key"
    - "authorization"
    - "x-forwarded-for"
  async_audit: true
  timeout: 5

audit:
  flush_interval_ms: 20
"#,
        db = db.display()
    )
}

/// The real `fastgate` binary, killed on drop.
pub struct Fastgate {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub log: PathBuf,
    pub http: reqwest::Client,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fastgate")
}

impl Fastgate {
    /// Start with the default test config pointing at `backend_url`.
    pub async fn start(backend_url: &str) -> Self {
        Self::start_with(backend_url, |_| {}, &[]).await
    }

    /// Start with a config edited by `edit` and extra environment variables.
    pub async fn start_with(
        backend_url: &str,
        edit: impl FnOnce(&mut String),
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut yaml = config_yaml(port, &dir.path().join("fastgate.db"), backend_url);
        edit(&mut yaml);
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let log = dir.path().join("fastgate.log");
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let fg = Self {
            child,
            port,
            dir,
            config,
            log,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        fg.wait_healthy().await;
        fg
    }

    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(self.url("/health")).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "fastgate did not become healthy:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn proxy_url(&self) -> String {
        self.url(&format!("/proxy{BACKEND_PATH}"))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("fastgate.db")
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait for the process to exit and return its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "fastgate did not exit:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /admin/keys` with the token in the query (M-FastGate's way); returns the JSON.
    pub async fn create_key(&self, source_path: &str) -> serde_json::Value {
        let res = self
            .http
            .post(self.url(&format!("/admin/keys?token={ADMIN_TOKEN}")))
            .json(&serde_json::json!({
                "source_path": source_path, "permissions": ["chat"], "expires_days": 30
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        res.json().await.unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("x-admin-token", ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
    }

    /// Poll `/admin/logs` until `pred` holds for the items (audit is asynchronous).
    pub async fn wait_logs(
        &self,
        query: &str,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v: serde_json::Value = self
                .admin_get(&format!("/admin/logs?limit=1000{query}"))
                .await
                .json()
                .await
                .unwrap();
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if pred(&items) {
                return items;
            }
            assert!(Instant::now() < deadline, "audit rows did not appear: {v}");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
}

impl Drop for Fastgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn chat_body(stream: bool) -> String {
    serde_json::json!({
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": stream
    })
    .to_string()
}
