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
/// The environment variables of an egress proxy (`api_gateway.trust_env`).
pub const PROXY_VARS: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A recording upstream on 127.0.0.1: JSON completion, or SSE when the body asks for a stream;
/// compressed with gzip when the request accepts it.
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

/// gzip of `parts` as a streaming server writes it: one sync flush per part, each flush one
/// frame, the gzip trailer in the last frame. The upstream answers so when the request accepts
/// gzip (as python-requests, httpx and the OpenAI SDKs say they do).
pub fn gzip_frames(parts: &[String]) -> Vec<Bytes> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut frames = Vec::new();
    let mut sent = 0;
    for part in parts {
        e.write_all(part.as_bytes()).unwrap();
        e.flush().unwrap();
        frames.push(Bytes::copy_from_slice(&e.get_ref()[sent..]));
        sent = e.get_ref().len();
    }
    let all = e.finish().unwrap();
    frames.push(Bytes::copy_from_slice(&all[sent..]));
    frames
}

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
    let gzip = parts
        .headers
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    seen.lock().unwrap().push(Seen {
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers.clone(),
        body,
    });
    if stream {
        let mut frames: Vec<Bytes> = if gzip {
            // The trailer's frame goes with the last event's.
            let mut frames = gzip_frames(&(0..=SSE_EVENTS + 1).map(sse_event).collect::<Vec<_>>());
            let trailer = frames.pop().unwrap_or_default();
            let last = frames.pop().unwrap_or_default();
            frames.push([last, trailer].concat().into());
            frames
        } else {
            (0..=SSE_EVENTS + 1).map(|i| sse_event(i).into()).collect()
        };
        frames.reverse();
        let events = futures_util::stream::iter(0..=SSE_EVENTS + 1).then(move |i| {
            let frame = frames.pop().unwrap_or_default();
            async move {
                if i > 0 && i < SSE_EVENTS {
                    tokio::time::sleep(SSE_GAP).await;
                }
                Ok::<_, Infallible>(Frame::data(frame))
            }
        });
        let mut res = Response::new(BodyExt::boxed(StreamBody::new(events)));
        res.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        if gzip {
            res.headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
        }
        return Ok(res);
    }
    let body = if gzip {
        gzip_frames(&[JSON_REPLY.to_owned()]).concat().into()
    } else {
        Bytes::from_static(JSON_REPLY.as_bytes())
    };
    let mut res = Response::new(Full::new(body).boxed());
    res.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    if gzip {
        res.headers_mut()
            .insert("content-encoding", "gzip".parse().unwrap());
    }
    // A backend with CORS headers of its own (vLLM and FastAPI servers send them), on request.
    if parts.headers.contains_key("x-test-backend-cors") {
        for (name, value) in [
            ("access-control-allow-origin", "https://backend.example"),
            ("access-control-allow-credentials", "true"),
        ] {
            res.headers_mut().insert(name, value.parse().unwrap());
        }
    }
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

/// A port for a `fastgate` to listen on, free now and below the kernel's ephemeral range: a
/// port the kernel hands out (the test upstreams bind port 0, every outgoing connection takes
/// one) cannot take it between this check and the binary's own bind, and a port given back
/// (a test that stops a gateway to find its port refused) stays unused.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .min(u32::from(u16::MAX));
    if ephemeral_low < LOW + 1_000 {
        // No room below the range on this machine: let the kernel choose.
        return std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    }
    let span = ephemeral_low - LOW;
    // A different start in every test process (the e2e and fuzz runs pick their own ports),
    // then one step per call within it.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = std::process::id().wrapping_mul(7_919).wrapping_add(nanos) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + (start + step) % span;
        let port = u16::try_from(port).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {ephemeral_low}");
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

/// A command running the binary, without the machine's proxy variables (they would apply to
/// `https://` backends and to `check-config`'s verdict: tests stay hermetic).
pub fn fastgate_cmd() -> Command {
    let mut cmd = Command::new(bin());
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// [`fastgate_cmd`] with the open files limit (`RLIMIT_NOFILE`) lowered before the binary
/// starts (by `sh`, which then execs it: same process id, signals reach the binary): the soft
/// limit to `soft`, and the hard limit to `hard` when given (the binary cannot raise it back).
pub fn fastgate_cmd_with_open_files(soft: u64, hard: Option<u64>) -> Command {
    let mut script = format!("ulimit -S -n {soft}");
    if let Some(hard) = hard {
        script.push_str(&format!(" && ulimit -H -n {hard}"));
    }
    script.push_str(" && exec \"$0\" \"$@\"");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).arg(bin());
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// The open files limit (soft, hard) of process `pid` (`"self"`: this one), from
/// `/proc/<pid>/limits`; `u64::MAX` for `unlimited`.
pub fn open_files_limit(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut values = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(u64::MAX));
    (values.next().unwrap(), values.next().unwrap())
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
        Self::start_cmd(fastgate_cmd(), backend_url, edit, env).await
    }

    /// [`start_with`](Self::start_with), running `cmd` (a [`fastgate_cmd`] or a wrapper of it).
    pub async fn start_cmd(
        cmd: Command,
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
        Self::spawn_cmd_in(cmd, dir, config, port, |cmd| {
            for (k, v) in env {
                cmd.env(k, v);
            }
        })
        .await
    }

    /// Start the binary in `dir` (its working directory, where its log goes) on `config`, which
    /// listens on `port`; `configure` adds arguments or environment (`RUST_LOG=debug` is set).
    pub async fn spawn_in(
        dir: tempfile::TempDir,
        config: PathBuf,
        port: u16,
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        Self::spawn_cmd_in(fastgate_cmd(), dir, config, port, configure).await
    }

    /// [`spawn_in`](Self::spawn_in), running `cmd`.
    pub async fn spawn_cmd_in(
        mut cmd: Command,
        dir: tempfile::TempDir,
        config: PathBuf,
        port: u16,
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let log = dir.path().join("fastgate.log");
        cmd.arg("--config")
            .arg(&config)
            .current_dir(dir.path())
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        configure(&mut cmd);
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

    /// Until `/health` answers 200 with the gateway's own report (not another server's 200 on
    /// the same port); each probe bounded, so a port that accepts and never answers cannot
    /// hang the test.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let probe = self
                .http
                .get(self.url("/health"))
                .timeout(Duration::from_secs(5))
                .send();
            if let Ok(r) = probe.await
                && r.status() == 200
                && let Ok(h) = r.json::<serde_json::Value>().await
                && h.get("audit").is_some()
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
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// A new gateway key for `source_path` (the secret only).
    pub async fn new_key(&self, source_path: &str) -> String {
        self.create_key(source_path).await["api_key"]
            .as_str()
            .expect("api_key in the answer")
            .to_owned()
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

// === fault injection: a raw-TCP upstream that misbehaves on purpose ===

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a [`FaultUpstream`] answers every request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// A complete response with this status, JSON body and optional `Retry-After`.
    Status {
        status: u16,
        body: &'static str,
        retry_after: Option<&'static str>,
    },
    /// Read the request, never send response headers (the connection stays open).
    NeverAnswer,
    /// Read the request, then close the connection without answering.
    CloseBeforeAnswer,
    /// Send SSE headers and this many events, then stay silent with the connection open.
    StallAfter(usize),
    /// Send SSE headers and this many events, then reset the connection (RST).
    ResetAfter(usize),
    /// Stream this many events `gap` apart, then `[DONE]`; notices when the gateway hangs up.
    Slow { events: usize, gap: Duration },
    /// A 200 whose body is chunked and which also says `content-length: 3` (wrong).
    BothFramings(&'static str),
    /// An SSE stream sent as fast as the socket takes it, without end.
    Flood,
    /// A 200 of `content_type` whose body is `parts`, one chunk each, 30 ms apart; then the body
    /// is left open (the end of a body that lags behind its last event) until the gateway hangs
    /// up, or 60 s.
    Linger {
        content_type: &'static str,
        parts: &'static [&'static str],
    },
}

/// Counters of a [`FaultUpstream`].
#[derive(Debug, Default)]
pub struct FaultCounters {
    /// Connections accepted so far.
    pub accepted: AtomicUsize,
    /// Connections open right now.
    pub live: AtomicUsize,
    /// Requests read.
    pub requests: AtomicUsize,
    /// Streams the gateway hung up on before the upstream finished them.
    pub dropped_mid_stream: AtomicUsize,
    /// Streams sent to the end.
    pub finished: AtomicUsize,
}

/// An upstream on 127.0.0.1 speaking HTTP/1.1 by hand, so it can stall, reset and count.
#[derive(Clone, Debug)]
pub struct FaultUpstream {
    pub addr: SocketAddr,
    pub counters: Arc<FaultCounters>,
}

/// One SSE chunk as the fault upstream sends it (also what the client must receive).
pub fn fault_event(i: usize) -> String {
    format!(
        "data: {{\"id\":\"f\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"e{i}\"}}}}]}}\n\n"
    )
}

struct LiveGuard(Arc<FaultCounters>);
impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Read one request (head and `Content-Length` body); `false` when the peer closed first.
async fn read_request(sock: &mut tokio::net::TcpStream) -> bool {
    let mut buf = Vec::with_capacity(4096);
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < len {
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => have += n,
        }
    }
    true
}

fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

/// `true` when the peer hung up (or sent anything) within `wait`.
async fn peer_gone(sock: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    let mut b = [0u8; 64];
    tokio::time::timeout(wait, sock.read(&mut b)).await.is_ok()
}

async fn serve_fault(mut sock: tokio::net::TcpStream, fault: Fault, c: Arc<FaultCounters>) {
    loop {
        if !read_request(&mut sock).await {
            return;
        }
        c.requests.fetch_add(1, Ordering::SeqCst);
        match &fault {
            Fault::Status {
                status,
                body,
                retry_after,
            } => {
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                    body.len()
                );
                if let Some(r) = retry_after {
                    head.push_str(&format!("retry-after: {r}\r\n"));
                }
                head.push_str("\r\n");
                head.push_str(body);
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
            }
            Fault::BothFramings(body) => {
                let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                out.extend(chunk(body));
                out.extend_from_slice(b"0\r\n\r\n");
                if sock.write_all(&out).await.is_err() {
                    return;
                }
            }
            Fault::Flood => {
                if sock.write_all(SSE_HEAD).await.is_err() {
                    return;
                }
                let events: String = (0..600).map(fault_event).collect();
                let block = chunk(&events);
                loop {
                    if sock.write_all(&block).await.is_err() {
                        c.dropped_mid_stream.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
            Fault::CloseBeforeAnswer => return,
            Fault::Linger {
                content_type,
                parts,
            } => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
                );
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for part in *parts {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    if sock.write_all(&chunk(part)).await.is_err() {
                        return;
                    }
                }
                if peer_gone(&mut sock, Duration::from_secs(60)).await {
                    c.dropped_mid_stream.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                if sock.write_all(b"0\r\n\r\n").await.is_ok() {
                    c.finished.fetch_add(1, Ordering::SeqCst);
                }
            }
            Fault::NeverAnswer => {
                // Hold the connection until the gateway gives up (bounded).
                let _ = peer_gone(&mut sock, Duration::from_secs(60)).await;
                return;
            }
            Fault::StallAfter(n) | Fault::ResetAfter(n) => {
                let mut out = SSE_HEAD.to_vec();
                for i in 0..*n {
                    out.extend(chunk(&fault_event(i)));
                }
                if sock.write_all(&out).await.is_err() {
                    return;
                }
                let _ = sock.flush().await;
                if matches!(fault, Fault::ResetAfter(_)) {
                    // Let the bytes leave, then RST instead of FIN.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    // Linger 0 makes the close an immediate RST (nothing to block on).
                    #[allow(deprecated)]
                    let _ = sock.set_linger(Some(Duration::ZERO));
                    return;
                }
                if peer_gone(&mut sock, Duration::from_secs(60)).await {
                    c.dropped_mid_stream.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
            Fault::Slow { events, gap } => {
                if sock.write_all(SSE_HEAD).await.is_err() {
                    return;
                }
                for i in 0..*events {
                    if sock.write_all(&chunk(&fault_event(i))).await.is_err()
                        || peer_gone(&mut sock, *gap).await
                    {
                        c.dropped_mid_stream.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
                let mut tail = chunk("data: [DONE]\n\n");
                tail.extend_from_slice(b"0\r\n\r\n");
                if sock.write_all(&tail).await.is_err() {
                    c.dropped_mid_stream.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                c.finished.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

impl FaultUpstream {
    pub async fn start(fault: Fault) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters: Arc<FaultCounters> = Arc::default();
        let c = counters.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                c.accepted.fetch_add(1, Ordering::SeqCst);
                c.live.fetch_add(1, Ordering::SeqCst);
                let guard = LiveGuard(c.clone());
                let (fault, c) = (fault.clone(), c.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    serve_fault(sock, fault, c).await;
                });
            }
        });
        Self { addr, counters }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn live(&self) -> usize {
        self.counters.live.load(Ordering::SeqCst)
    }

    pub fn dropped(&self) -> usize {
        self.counters.dropped_mid_stream.load(Ordering::SeqCst)
    }

    /// Requests read so far.
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }
}

/// Poll `cond` every 20 ms until it holds; panics with `what` after `within`.
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Send raw bytes to `127.0.0.1:port` and return everything the server answers (bounded).
pub async fn raw_http(port: u16, request: &[u8]) -> String {
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // The server may answer and close before it read everything (431); ignore write errors.
    let _ = sock.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP/1.1 answer (0 when there is none).
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Fastgate {
    /// A fresh gateway key for `source_path`.
    pub async fn key(&self, source_path: &str) -> String {
        self.create_key(source_path).await["api_key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `GET /health`: status code and JSON.
    pub async fn health(&self) -> (u16, serde_json::Value) {
        send_json(self.http.get(self.url("/health"))).await
    }

    /// A proxied chat request with `key` in `X-API-Key`.
    pub async fn chat(&self, key: &str, stream: bool) -> reqwest::Response {
        self.http
            .post(self.proxy_url())
            .header("X-API-Key", key)
            .header("content-type", "application/json")
            .body(chat_body(stream))
            .send()
            .await
            .unwrap()
    }

    /// Poll `/admin/logs/{request_id}` until the row is there.
    pub async fn wait_audit(&self, request_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // A transport error (a pooled connection the server closed) is retried like a 404.
            let r = self
                .http
                .get(self.url(&format!("/admin/logs/{request_id}")))
                .header("x-admin-token", ADMIN_TOKEN)
                .send()
                .await;
            let status = r.as_ref().map(reqwest::Response::status).ok();
            if let Ok(r) = r
                && r.status() == 200
            {
                return r.json().await.unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no audit row for {request_id} (last status {status:?})"
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// Start the binary again on the same config, database and log file (after it exited).
    pub async fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = fastgate_cmd()
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.wait_healthy().await;
    }

    /// Open the gateway's SQLite file directly (a second pool, as another process would).
    pub async fn open_store(&self) -> fastgate_store::Store {
        fastgate_store::Store::connect(
            &format!("sqlite:///{}", self.db_path().display()),
            fastgate_store::StoreOptions::default(),
        )
        .await
        .unwrap()
    }
}

/// One HTTP/1.1 connection to the gateway, kept alive (hyper's client): requests on it reuse it.
pub type Http1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Open an [`Http1`] connection to `fg`.
pub async fn http1_connection(fg: &Fastgate) -> Http1 {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// A proxied (non-stream) chat request with `key` on `conn`: the answer, its body read.
pub async fn chat_on(conn: &mut Http1, key: &str) -> Response<Bytes> {
    conn.ready().await.unwrap();
    let req = Request::post(format!("/proxy{BACKEND_PATH}"))
        .header("host", "127.0.0.1")
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_body(false))))
        .unwrap();
    let (parts, body) = conn.send_request(req).await.unwrap().into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

/// The request id a response carries.
pub fn request_id(res: &reqwest::Response) -> String {
    res.headers()["x-request-id"].to_str().unwrap().to_owned()
}

/// Send `req`; its status code and JSON body.
pub async fn send_json(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

/// A fresh database on the PostgreSQL server named by `FASTGATE_TEST_DATABASE_URL`; `None`
/// (the test is skipped) when the variable is unset. [`PgTestDb::drop_database`] removes it.
pub struct PgTestDb {
    admin: sqlx::PgConnection,
    name: String,
    /// The database's URL, as `database.url` takes it.
    pub url: String,
}

impl PgTestDb {
    pub async fn create(tag: &str) -> Option<Self> {
        use sqlx::Connection as _;
        let Ok(admin_url) = std::env::var("FASTGATE_TEST_DATABASE_URL") else {
            eprintln!("skipped on PostgreSQL: FASTGATE_TEST_DATABASE_URL is not set");
            return None;
        };
        let name = format!("fg_{tag}_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let mut url = reqwest::Url::parse(&admin_url).unwrap();
        url.set_path(&format!("/{name}"));
        url.set_query(None);
        Some(Self {
            admin,
            name,
            url: url.to_string(),
        })
    }

    pub async fn drop_database(mut self) {
        let _ = sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&mut self.admin)
            .await;
    }
}

/// Point the test config's `database.url` at `url`.
pub fn set_database_url(yaml: &mut String, url: &str) {
    let line = yaml
        .lines()
        .find(|l| l.trim_start().starts_with("url: \"sqlite"))
        .unwrap()
        .to_owned();
    *yaml = yaml.replace(&line, &format!("  url: \"{url}\""));
}
