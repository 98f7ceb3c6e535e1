//! Loopback: how [`ForwardService`] uses its upstream connections to a plain `http://` backend.
//!
//! Regression tests for the upstream HTTP/1 pool: keep-alive reuse, bounded connection counts
//! under concurrency, `Connection: close`, an upstream that closes idle connections on its own,
//! streams read to the end or dropped half-way, the request line and `Host` the upstream sees,
//! and bodiless responses (HEAD, 204).
//!
//! The upstream here accepts its TCP connections itself (one `hyper::server::conn::http1`
//! connection per accepted socket), so each test can count accepted connections, see which
//! connection served a request, close connections when it wants and learn when a connection
//! ended.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use fastgate_layer::RouteConfig;
use fastgate_layer::forward::{ForwardConfig, ForwardService};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tower::ServiceExt;

/// One request as the upstream received it.
#[derive(Clone, Debug)]
struct Seen {
    /// Index of the accepted TCP connection that carried it (0 = first accepted).
    conn: usize,
    method: Method,
    /// The request target exactly as received (origin-form: path and query).
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

type Handler =
    Arc<dyn Fn(Seen) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>> + Send + Sync>;

/// An HTTP/1.1 upstream on 127.0.0.1:0 that counts and observes its connections.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Every request, in arrival order.
    seen: mpsc::UnboundedReceiver<Seen>,
    /// The index of each connection whose server side has ended (EOF, write error, or closed by
    /// the upstream itself).
    closed: mpsc::UnboundedReceiver<usize>,
}

impl Upstream {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// All requests received so far.
    fn drain_seen(&mut self) -> Vec<Seen> {
        let mut out = Vec::new();
        while let Ok(s) = self.seen.try_recv() {
            out.push(s);
        }
        out
    }
}

/// Start an upstream answering every request with `handler`.
///
/// With `close_idle_after = Some(d)` the upstream drops each connection (plain close, no
/// `Connection: close` header, like a server's keep-alive timeout) `d` after it produced its first
/// response, provided no other request is being served then.
async fn start_upstream<F, Fut>(close_idle_after: Option<Duration>, handler: F) -> Upstream
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let handler: Handler = Arc::new(move |seen| Box::pin(handler(seen)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let conn_id = counter.fetch_add(1, Ordering::SeqCst);
            let handler = Arc::clone(&handler);
            let seen_tx = seen_tx.clone();
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let answered = Arc::new(Notify::new());
                let answered_in_svc = Arc::clone(&answered);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let handler = Arc::clone(&handler);
                    let seen_tx = seen_tx.clone();
                    let answered = Arc::clone(&answered_in_svc);
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let seen = Seen {
                            conn: conn_id,
                            method: parts.method,
                            uri: parts.uri.to_string(),
                            headers: parts.headers,
                            body,
                        };
                        let _ = seen_tx.send(seen.clone());
                        let res = handler(seen).await;
                        answered.notify_one();
                        Ok::<_, hyper::Error>(res)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                match close_idle_after {
                    None => {
                        let _ = conn.as_mut().await;
                    }
                    Some(after) => {
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            () = answered.notified() => {
                                // Write the response, stay open for `after`, then drop the socket.
                                let _ = tokio::time::timeout(after, conn.as_mut()).await;
                            }
                        }
                    }
                }
                let _ = closed_tx.send(conn_id);
            });
        }
    });
    Upstream {
        addr,
        accepted,
        seen,
        closed,
    }
}

/// An upstream that answers every request 200 with `body`.
async fn fixed_upstream(body: &'static str) -> Upstream {
    start_upstream(None, move |_seen| async move { Response::new(full(body)) }).await
}

fn route(addr: SocketAddr) -> RouteConfig {
    RouteConfig {
        name: "pool-test".into(),
        permission: "chat".into(),
        backend: Arc::new(backend(addr)),
    }
}

/// A request as a server hands it to the stack: origin-form URI, `route` in the extensions.
fn forward_request(
    method: Method,
    path_and_query: &str,
    route: &RouteConfig,
    body: TestBody,
) -> Request<TestBody> {
    let mut req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    req.extensions_mut().insert(route.clone());
    req
}

/// Send `req` through `svc` and read the whole response body (bounded in time).
async fn send(
    svc: &ForwardService<TestBody>,
    req: Request<TestBody>,
) -> (StatusCode, HeaderMap, Bytes) {
    let res = tokio::time::timeout(Duration::from_secs(5), svc.clone().oneshot(req))
        .await
        .expect("response headers in time")
        .unwrap();
    let (parts, body) = res.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("response body in time")
        .unwrap()
        .to_bytes();
    (parts.status, parts.headers, body)
}

async fn post(
    svc: &ForwardService<TestBody>,
    route: &RouteConfig,
    body: &str,
) -> (StatusCode, Bytes) {
    let req = forward_request(Method::POST, ROUTE, route, full(body.to_owned()));
    let (status, _, body) = send(svc, req).await;
    (status, body)
}

fn sse_event(i: usize) -> String {
    format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"tok{i}\"}}}}]}}\n\n")
}

/// A `text/event-stream` response whose events are sent by a spawned task, `gap` apart.
/// `write_failed` is set when sending an event fails (the body was dropped by the server side).
fn sse_response(events: usize, gap: Duration, write_failed: Arc<AtomicBool>) -> Response<TestBody> {
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for i in 0..events {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            if tx.send(Ok(Bytes::from(sse_event(i)))).await.is_err() {
                write_failed.store(true, Ordering::SeqCst);
                return;
            }
        }
    });
    let mut res = Response::new(body);
    res.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    res
}

/// 1. Sequential requests reuse one keep-alive connection.
#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    const BODY: &str = r#"{"id":"r","choices":[{"message":{"content":"hello"}}]}"#;
    let mut up = fixed_upstream(BODY).await;
    let route = route(up.addr);
    let svc = ForwardService::<TestBody>::new();
    for i in 0..20 {
        let (status, body) = post(&svc, &route, &format!(r#"{{"n":{i}}}"#)).await;
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(body, BODY, "request {i}");
    }
    let seen = up.drain_seen();
    assert_eq!(seen.len(), 20);
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(
            s.body,
            format!(r#"{{"n":{i}}}"#),
            "request body {i} arrives unchanged"
        );
        assert_eq!(s.conn, 0);
    }
    assert_eq!(
        up.accepted(),
        1,
        "20 sequential requests must share one connection"
    );
}

/// 2. Concurrency opens at most one connection per concurrent request, and idle ones are reused
/// by later rounds.
#[tokio::test]
async fn concurrent_rounds_open_at_most_one_connection_per_concurrent_request() {
    const CONCURRENCY: usize = 8;
    let mut up = start_upstream(None, |seen: Seen| async move {
        // Hold each request briefly so that a round really overlaps.
        tokio::time::sleep(Duration::from_millis(30)).await;
        Response::new(full(seen.body))
    })
    .await;
    let route = route(up.addr);
    let svc = ForwardService::<TestBody>::new();
    for round in 0..5 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..CONCURRENCY {
            let svc = svc.clone();
            let route = route.clone();
            set.spawn(async move {
                let msg = format!("round {round} request {i}");
                let (status, body) = post(&svc, &route, &msg).await;
                (msg, status, body)
            });
        }
        let mut done = 0;
        while let Some(joined) = set.join_next().await {
            let (msg, status, body) = joined.unwrap();
            assert_eq!(status, StatusCode::OK, "{msg}");
            assert_eq!(body, msg);
            done += 1;
        }
        assert_eq!(done, CONCURRENCY);
    }
    assert_eq!(up.drain_seen().len(), 5 * CONCURRENCY);
    let accepted = up.accepted();
    assert!(
        (1..=CONCURRENCY).contains(&accepted),
        "5 rounds of {CONCURRENCY} concurrent requests opened {accepted} connections"
    );
}

/// 3. An upstream answering `Connection: close` (and closing) gets a fresh connection for every
/// request, and no request fails.
#[tokio::test]
async fn connection_close_responses_open_a_new_connection_each_time() {
    let mut up = start_upstream(None, |_seen| async {
        let mut res = Response::new(full("closing"));
        res.headers_mut()
            .insert("connection", "close".parse().unwrap());
        res
    })
    .await;
    let route = route(up.addr);
    let svc = ForwardService::<TestBody>::new();
    for i in 0..10 {
        let (status, body) = post(&svc, &route, "{}").await;
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(body, "closing", "request {i}");
    }
    let conns: Vec<usize> = up.drain_seen().iter().map(|s| s.conn).collect();
    assert_eq!(
        conns,
        (0..10).collect::<Vec<_>>(),
        "one connection per request"
    );
    assert_eq!(up.accepted(), 10);
}

/// 4. An idle pooled connection that the upstream closed silently (keep-alive timeout) is not
/// used for the next request: that request still gets the upstream's answer, not a 502.
#[tokio::test]
async fn idle_connection_closed_by_upstream_is_not_reused() {
    let mut up = start_upstream(Some(Duration::from_millis(50)), |_seen| async {
        Response::new(full("fresh"))
    })
    .await;
    let route = route(up.addr);
    let svc = ForwardService::<TestBody>::new();
    let (status, body) = post(&svc, &route, "{}").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"fresh"[..]));
    for i in 1..=5 {
        // The upstream closes the connection ~50 ms after answering; wait until it has.
        let closed = tokio::time::timeout(Duration::from_secs(2), up.closed.recv())
            .await
            .expect("upstream closed its idle connection")
            .unwrap();
        assert_eq!(closed, i - 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (status, body) = post(&svc, &route, "{}").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "request {i} after the upstream closed idle"
        );
        assert_eq!(body, "fresh", "request {i}");
    }
    let conns: Vec<usize> = up.drain_seen().iter().map(|s| s.conn).collect();
    assert_eq!(conns, (0..6).collect::<Vec<_>>());
    assert_eq!(up.accepted(), 6);
}

/// 5. A stream read to its end leaves the connection reusable; the bytes pass unchanged.
#[tokio::test]
async fn sse_stream_read_to_end_then_connection_is_reused() {
    const EVENTS: usize = 5;
    let mut up = start_upstream(None, |seen: Seen| async move {
        if seen.body == "stream" {
            sse_response(EVENTS, Duration::from_millis(30), Arc::default())
        } else {
            Response::new(full("after-stream"))
        }
    })
    .await;
    let route = route(up.addr);
    let svc = ForwardService::<TestBody>::new();

    let req = forward_request(Method::POST, ROUTE, &route, full("stream"));
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    let mut got = BytesMut::new();
    let mut frames = 0;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("next frame in time")
    {
        if let Ok(data) = frame.unwrap().into_data() {
            got.extend_from_slice(&data);
            frames += 1;
        }
    }
    let expected: String = (0..EVENTS).map(sse_event).collect();
    assert_eq!(&got[..], expected.as_bytes(), "SSE bytes must be identical");
    assert!(
        frames > 1,
        "events were streamed, not buffered into one frame"
    );
    drop(body);

    let (status, body) = post(&svc, &route, "next").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "after-stream");
    let conns: Vec<usize> = up.drain_seen().iter().map(|s| s.conn).collect();
    assert_eq!(conns, vec![0, 0]);
    assert_eq!(
        up.accepted(),
        1,
        "the request after a finished stream reuses its connection"
    );
}

/// 6. Dropping a stream's body half-way closes the upstream connection promptly (the upstream
/// stops generating), and the next request works on a new connection.
#[tokio::test]
async fn dropping_a_stream_midway_closes_the_upstream_connection() {
    let write_failed = Arc::new(AtomicBool::new(false));
    let failed = Arc::clone(&write_failed);
    let mut up = start_upstream(None, move |seen: Seen| {
        let failed = Arc::clone(&failed);
        async move {
            if seen.body == "stream" {
                // 100 events 100 ms apart: ~10 s if nobody stops it.
                sse_response(100, Duration::from_millis(100), failed)
            } else {
                Response::new(full("after-drop"))
            }
        }
    })
    .await;
    let route = route(up.addr);
    let svc = ForwardService::<TestBody>::new();

    let req = forward_request(Method::POST, ROUTE, &route, full("stream"));
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut got = BytesMut::new();
    while got.len() < sse_event(0).len() + sse_event(1).len() {
        let frame = tokio::time::timeout(Duration::from_secs(2), body.frame())
            .await
            .expect("frame in time")
            .expect("stream still open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
    }
    assert!(got.starts_with(sse_event(0).as_bytes()));
    drop(body);

    let closed = tokio::time::timeout(Duration::from_secs(2), up.closed.recv())
        .await
        .expect("the upstream saw its connection closed within 2 s of the client dropping the body")
        .unwrap();
    assert_eq!(closed, 0);
    // The connection ended because it broke, so the event producer found it gone as well (at
    // the latest at its next event).
    tokio::time::timeout(Duration::from_secs(1), async {
        while !write_failed.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the upstream stopped sending events");

    let (status, body) = post(&svc, &route, "next").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "after-drop");
    let conns: Vec<usize> = up.drain_seen().iter().map(|s| s.conn).collect();
    assert_eq!(conns, vec![0, 1], "the next request uses a new connection");
    assert_eq!(up.accepted(), 2);
}

/// 7a. `ForwardService` alone: path + query, and `Host`. The upstream URI is the backend's
/// base path + path with the incoming query; `Host` is the backend authority unless the request
/// already carries a `Host`, which then passes unchanged (hyper-util's client only fills a
/// missing `Host`; stripping it is the `ScrubHeaders` layer's job).
#[tokio::test]
async fn forward_alone_keeps_query_and_host_rules() {
    let mut up = fixed_upstream("ok").await;
    let route = route(up.addr);
    let svc = ForwardService::<TestBody>::new();
    let authority = up.addr.to_string();

    // No Host header on the incoming request.
    let req = forward_request(Method::POST, "/proxy/any?a=1&b=two", &route, full("{}"));
    assert!(req.headers().get("host").is_none());
    let (status, _, _) = send(&svc, req).await;
    assert_eq!(status, StatusCode::OK);
    let s = up.seen.recv().await.unwrap();
    assert_eq!(s.uri, "/base/v1/chat/completions?a=1&b=two");
    assert_eq!(s.headers.get_all("host").iter().count(), 1);
    assert_eq!(s.headers["host"], authority.as_str());

    // The incoming request's own Host header (the gateway's name) is forwarded as is.
    let mut req = forward_request(Method::POST, "/proxy/any?a=1&b=two", &route, full("{}"));
    req.headers_mut()
        .insert("host", "gateway.example:8443".parse().unwrap());
    let (status, _, _) = send(&svc, req).await;
    assert_eq!(status, StatusCode::OK);
    let s = up.seen.recv().await.unwrap();
    assert_eq!(s.uri, "/base/v1/chat/completions?a=1&b=two");
    assert_eq!(s.headers.get_all("host").iter().count(), 1);
    assert_eq!(
        s.headers["host"], "gateway.example:8443",
        "ForwardService alone does not rewrite an incoming Host"
    );

    // Without a query the upstream sees no `?`.
    let req = forward_request(Method::POST, "/proxy/any", &route, full("{}"));
    let (status, _, _) = send(&svc, req).await;
    assert_eq!(status, StatusCode::OK);
    let s = up.seen.recv().await.unwrap();
    assert_eq!(s.uri, "/base/v1/chat/completions");
    assert_eq!(s.headers["host"], authority.as_str());

    assert_eq!(up.accepted(), 1);
}

/// 7b. The full gateway stack (scrub strips `host`): the upstream always sees the backend
/// authority as `Host`, and the query passes.
#[tokio::test]
async fn gateway_stack_sends_backend_authority_as_host_and_keeps_query() {
    let mut up = fixed_upstream("ok").await;
    let gw = gateway(backend(up.addr), test_audit_config(), 1 << 20, true).await;
    let authority = up.addr.to_string();
    let client = client();

    // The client's Host is the gateway's address.
    let req = Request::post(format!("http://{}{ROUTE}?a=1&b=two", gw.addr))
        .header("x-api-key", CLIENT_KEY)
        .body(full("{}"))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    let s = up.seen.recv().await.unwrap();
    assert_eq!(s.uri, "/base/v1/chat/completions?a=1&b=two");
    assert_eq!(s.headers.get_all("host").iter().count(), 1);
    assert_eq!(s.headers["host"], authority.as_str());

    // An explicit, different Host from the client does not reach the upstream either.
    let req = Request::post(format!("http://{}{ROUTE}?a=1&b=two", gw.addr))
        .header("host", "gateway.example:8443")
        .header("x-api-key", CLIENT_KEY)
        .body(full("{}"))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.into_body().collect().await.unwrap();
    let s = up.seen.recv().await.unwrap();
    assert_eq!(s.uri, "/base/v1/chat/completions?a=1&b=two");
    assert_eq!(s.headers.get_all("host").iter().count(), 1);
    assert_eq!(s.headers["host"], authority.as_str());
}

/// 1b. Through the whole gateway stack as well, sequential requests share one upstream
/// connection (the audit and size-limit body wrappers do not prevent reuse).
#[tokio::test]
async fn gateway_stack_sequential_requests_reuse_one_upstream_connection() {
    const BODY: &str =
        r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    let mut up = fixed_upstream(BODY).await;
    let gw = gateway(backend(up.addr), test_audit_config(), 1 << 20, true).await;
    let client = client();
    for i in 0..10 {
        let res = client
            .request(chat(gw.addr, full(format!(r#"{{"model":"m","n":{i}}}"#))))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "request {i}");
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), BODY);
    }
    let seen = up.drain_seen();
    assert_eq!(seen.len(), 10);
    assert!(seen.iter().all(|s| s.conn == 0));
    assert_eq!(up.accepted(), 1);
}

/// 8. Bodiless responses (HEAD, 204) leave the connection reusable.
#[tokio::test]
async fn head_and_no_content_keep_the_connection() {
    let mut up = start_upstream(None, |seen: Seen| async move {
        if seen.method == Method::HEAD {
            // hyper sends the head with `content-length: 11` and no body.
            Response::new(full("head-answer"))
        } else if seen.body == "no-content" {
            let mut res = Response::new(full(Bytes::new()));
            *res.status_mut() = StatusCode::NO_CONTENT;
            res
        } else {
            Response::new(full("after"))
        }
    })
    .await;
    let route = route(up.addr);
    let svc = ForwardService::<TestBody>::new();

    let req = forward_request(Method::HEAD, ROUTE, &route, full(Bytes::new()));
    let (status, headers, body) = send(&svc, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], "11");
    assert!(body.is_empty());

    let (status, body) = post(&svc, &route, "no-content").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_empty());

    let (status, body) = post(&svc, &route, "plain").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "after");

    let seen = up.drain_seen();
    let methods: Vec<&Method> = seen.iter().map(|s| &s.method).collect();
    assert_eq!(methods, [&Method::HEAD, &Method::POST, &Method::POST]);
    assert!(seen.iter().all(|s| s.conn == 0));
    assert_eq!(up.accepted(), 1, "HEAD and 204 must not cost a connection");
}

#[tokio::test]
async fn idle_connections_expire_and_the_idle_list_is_bounded() {
    let mut up = fixed_upstream("ok").await;
    let route = route(up.addr);
    let mut config = ForwardConfig::default();
    config.pool_idle_timeout = Duration::from_millis(1000);
    config.pool_max_idle_per_host = 1;
    let svc = ForwardService::<TestBody>::with_config(&config);

    // Expiry: a connection idle for longer than `pool_idle_timeout` is not reused.
    assert_eq!(post(&svc, &route, "a").await.0, StatusCode::OK);
    assert_eq!(post(&svc, &route, "b").await.0, StatusCode::OK);
    assert_eq!(up.accepted(), 1, "reused within the idle timeout");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(post(&svc, &route, "c").await.0, StatusCode::OK);
    assert_eq!(up.accepted(), 2, "an expired idle connection is replaced");

    // Bound: 3 concurrent requests need 3 connections; only 1 stays idle afterwards, so the next
    // 3 concurrent requests open 2 more.
    let before = up.accepted();
    let (svc, route) = (&svc, &route);
    let round = || {
        futures_util::future::join_all(
            (0..3).map(|i| async move { post(svc, route, &format!("r{i}")).await.0 }),
        )
    };
    assert!(round().await.iter().all(|s| *s == StatusCode::OK));
    let after_first = up.accepted();
    assert!(
        after_first - before >= 2,
        "concurrent requests need their own connections"
    );
    assert!(round().await.iter().all(|s| *s == StatusCode::OK));
    assert!(
        up.accepted() - after_first >= 2,
        "at most one connection was kept idle"
    );
    drop(up.drain_seen());
}

/// 9. (review) Full duplex: the upstream answers before it has read the whole request body (it
/// streams a response at once and reads the body concurrently). The rest of the request body must
/// reach the upstream even while nobody is reading the response body yet: a hyper server in
/// front of the stack stops polling the response body as soon as its client stops reading (a
/// client that uploads its whole body before reading is the common case), so an upload that is
/// only driven from `GatewayBody::poll_frame` stalls there, and with it the client's upload:
/// nothing ever times out. hyper-util's client drove the connection in a task of its own, so the
/// upload went on regardless of the response body.
#[tokio::test]
async fn request_body_upload_continues_while_the_response_body_is_not_read() {
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<Bytes>();
    let addr = upstream(move |req: Request<Incoming>| {
        let got_tx = got_tx.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let _ = tx.send(Ok(Bytes::from_static(b": accepted\n\n"))).await;
                let Ok(got) = req.into_body().collect().await else {
                    return;
                };
                let got = got.to_bytes();
                let n = got.len();
                let _ = got_tx.send(got);
                let _ = tx.send(Ok(Bytes::from(format!("data: got {n}\n\n")))).await;
            });
            let mut res = Response::new(body);
            res.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            res
        }
    })
    .await;
    let route = route(addr);
    let svc = ForwardService::<TestBody>::new();

    let (req_tx, req_body) = channel_body();
    req_tx
        .send(Ok(Bytes::from_static(b"{\"part\":1,")))
        .await
        .unwrap();
    let req = forward_request(Method::POST, ROUTE, &route, req_body);
    let res = tokio::time::timeout(Duration::from_secs(5), svc.clone().oneshot(req))
        .await
        .expect("response headers in time")
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // The client sends the rest of its body now and reads the response only afterwards.
    req_tx
        .send(Ok(Bytes::from_static(b"\"part\":2}")))
        .await
        .unwrap();
    drop(req_tx);
    let got = tokio::time::timeout(Duration::from_secs(3), got_rx.recv())
        .await
        .expect("the upstream received the whole request body while the response body was unread")
        .unwrap();
    assert_eq!(got, "{\"part\":1,\"part\":2}");

    let body = tokio::time::timeout(Duration::from_secs(5), res.into_body().collect())
        .await
        .expect("response body in time")
        .unwrap()
        .to_bytes();
    assert_eq!(body, ": accepted\n\ndata: got 19\n\n");
}

/// 10. (review) The same through the whole stack, as a client sees it: the client uploads its
/// whole body before reading the response (what most HTTP clients do) and the upstream streams at
/// once while reading the body. Once the response fills the socket buffers towards the client,
/// hyper's server stops polling the response body, so the upstream connection (driven only from
/// there) stops uploading, the gateway stops reading the client's body, and the client's upload
/// blocks for good (no timeout fires: nothing is polled). With hyper-util's client this passes in
/// well under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_stack_client_uploading_before_reading_does_not_deadlock() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const N: usize = 48 << 20;
    let addr = upstream(move |req: Request<Incoming>| async move {
        let (tx, body) = channel_body();
        let done = Arc::new(AtomicBool::new(false));
        let reader_done = Arc::clone(&done);
        let (n_tx, mut n_rx) = mpsc::unbounded_channel::<usize>();
        tokio::spawn(async move {
            let mut body = req.into_body();
            let mut n = 0;
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    n += data.len();
                }
            }
            reader_done.store(true, Ordering::SeqCst);
            let _ = n_tx.send(n);
        });
        tokio::spawn(async move {
            // SSE comments until the request body has been read, then the answer.
            let pad = Bytes::from(format!(": {}\n\n", "p".repeat(16 * 1024)));
            while !done.load(Ordering::SeqCst) {
                tokio::select! {
                    sent = tx.send(Ok(pad.clone())) => if sent.is_err() { return },
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            let n = n_rx.recv().await.unwrap();
            let _ = tx.send(Ok(Bytes::from(format!("data: got {n}\n\n")))).await;
        });
        let mut res = Response::new(body);
        res.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        res
    })
    .await;
    let gw = gateway(backend(addr), test_audit_config(), 1 << 30, true).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST {ROUTE} HTTP/1.1\r\nhost: gw\r\nx-api-key: {CLIENT_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {N}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut sent = 0;
        while sent < N {
            s.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
    })
    .await
    .expect("the client uploads its whole request body (the gateway keeps reading it)");
    let want = format!("data: got {N}\n\n");
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed before the end of the response");
            tail.extend_from_slice(&buf[..n]);
            if tail.windows(want.len()).any(|w| w == want.as_bytes()) {
                return;
            }
            let keep = tail.len().saturating_sub(want.len());
            tail.drain(..keep);
        }
    })
    .await
    .expect("the whole response, with the upstream's count of the request body");
}

/// An idle connection past `pool_idle_timeout` is closed even when no further request comes
/// (the pool's reaper task), so idle sockets do not linger.
#[tokio::test]
async fn expired_idle_connections_are_closed_without_traffic() {
    let mut up = fixed_upstream("ok").await;
    let route = route(up.addr);
    let mut config = ForwardConfig::default();
    config.pool_idle_timeout = Duration::from_millis(500);
    let svc = ForwardService::<TestBody>::with_config(&config);
    assert_eq!(post(&svc, &route, "a").await.0, StatusCode::OK);
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(4), up.closed.recv())
        .await
        .expect("the idle connection was closed by the pool without another request")
        .unwrap();
    assert_eq!(closed, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed only once expired"
    );
    drop(svc);
}

/// A stack built without `.audit(...)` still counts the backend's response timeout from the end
/// of the client's upload: a chunked upload that takes longer than the timeout (and keeps making
/// progress) is answered by the backend, not 504 `upstream_timeout`; an upload that stalls for the
/// timeout is the client's (408), as with an audited stack.
#[tokio::test]
async fn without_audit_a_slow_upload_is_not_the_backends_timeout() {
    let addr = upstream(|req: Request<Incoming>| async move {
        let n = req
            .into_body()
            .collect()
            .await
            .map_or(0, |b| b.to_bytes().len());
        Response::new(full(format!("read {n}")))
    })
    .await;
    let mut backend = backend(addr);
    backend.response_timeout = Duration::from_millis(600);
    let svc = fastgate_layer::GatewayBuilder::new(keys(), routes(backend)).build::<Incoming>();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    // Five pieces 250 ms apart: 1 s of upload against a 600 ms response timeout.
    let (tx, body) = channel_body();
    let sending = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if tx.send(Ok(Bytes::from_static(b"{}  "))).await.is_err() {
                return;
            }
        }
    });
    let res = client().request(chat(gw, body)).await.unwrap();
    let status = res.status();
    let text = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, StatusCode::OK, "{text:?}");
    assert_eq!(text, "read 20");
    sending.await.unwrap();

    // A stalled upload: one piece, then nothing (the sender kept open).
    let (tx, body) = channel_body();
    tx.send(Ok(Bytes::from_static(b"{"))).await.unwrap();
    let res = client().request(chat(gw, body)).await.unwrap();
    let status = res.status();
    let text = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{text:?}");
    assert!(
        std::str::from_utf8(&text)
            .unwrap()
            .contains("request_body_timeout"),
        "{text:?}"
    );
    drop(tx);
}

/// 300 routes (each its own `Backend`, as a routes file gives them) on one upstream, used round
/// robin by a few concurrent clients: their requests share the upstream's connections. Past the
/// forward service's memo of 256 backends, every request used to build a new pool (and reaper
/// task) and open a new connection.
#[tokio::test]
async fn many_routes_to_one_upstream_share_its_connections() {
    const ROUTES: usize = 300;
    const CONCURRENCY: usize = 4;
    let mut up = fixed_upstream("{}").await;
    let routes: Vec<RouteConfig> = (0..ROUTES)
        .map(|i| {
            let mut b = backend(up.addr);
            b.path = format!("/v1/route-{i}");
            RouteConfig {
                name: format!("route-{i}").into(),
                permission: "chat".into(),
                backend: Arc::new(b),
            }
        })
        .collect();
    let routes = Arc::new(routes);
    let svc = ForwardService::<TestBody>::new();
    let mut set = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        let (svc, routes) = (svc.clone(), Arc::clone(&routes));
        set.spawn(async move {
            // Two rounds over every route, the workers interleaved.
            for n in 0..2 * ROUTES / CONCURRENCY {
                let route = &routes[(n * CONCURRENCY + worker) % ROUTES];
                let (status, body) = post(&svc, route, "{}").await;
                assert_eq!(status, StatusCode::OK, "{}", route.name);
                assert_eq!(body, "{}");
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.unwrap();
    }
    assert_eq!(up.drain_seen().len(), 2 * ROUTES);
    let accepted = up.accepted();
    assert!(
        accepted <= CONCURRENCY + 2,
        "{} requests over {ROUTES} routes, {CONCURRENCY} at a time, opened {accepted} connections",
        2 * ROUTES
    );
}

/// An upstream that answers before it has the whole request body, then neither reads nor closes,
/// while the client's upload stays pending: the connection (driven by a task of its own once the
/// answer came) is closed after the backend's `response_timeout` without upload progress, and the
/// request body is let go. Before, the task waited for the upload for ever, holding both.
#[tokio::test]
async fn a_stalled_upload_after_the_answer_does_not_hold_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<std::time::Instant>();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request head did not arrive");
            head.extend_from_slice(&buf[..n]);
        }
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        // Nothing of the body comes (the client sends none): a read only sees the close.
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = eof_tx.send(std::time::Instant::now());
    });
    let timeout = Duration::from_secs(1);
    let mut backend = backend(addr);
    backend.response_timeout = timeout;
    let route = RouteConfig {
        name: "pool-test".into(),
        permission: "chat".into(),
        backend: Arc::new(backend),
    };
    let svc = ForwardService::<TestBody>::new();
    // The request body: its sender is kept, and sends nothing.
    let (tx, body) = channel_body();
    let req = forward_request(Method::POST, ROUTE, &route, body);
    let (status, _, text) = send(&svc, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, "ok");
    let answered = std::time::Instant::now();
    let closed_at = tokio::time::timeout(3 * timeout, eof_rx)
        .await
        .expect("the upstream connection is still open 3 × response_timeout after the answer")
        .unwrap();
    assert!(
        closed_at.duration_since(answered) >= timeout / 2,
        "closed before the upload had stalled for response_timeout"
    );
    // The request body was let go with the connection.
    tokio::time::timeout(Duration::from_secs(1), tx.closed())
        .await
        .expect("the request body is still held");
}

/// The bound above is on progress, not on the upload's length: an upload that goes on after the
/// answer, a piece every 400 ms for 2 s against a 1 s `response_timeout`, reaches the upstream
/// whole.
#[tokio::test]
async fn an_upload_progressing_after_the_answer_is_not_cut() {
    let addr = upstream(move |req: Request<Incoming>| async move {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let _ = tx.send(Ok(Bytes::from_static(b": accepted\n\n"))).await;
            let Ok(got) = req.into_body().collect().await else {
                return;
            };
            let n = got.to_bytes().len();
            let _ = tx.send(Ok(Bytes::from(format!("data: got {n}\n\n")))).await;
        });
        let mut res = Response::new(body);
        res.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        res
    })
    .await;
    let mut backend = backend(addr);
    backend.response_timeout = Duration::from_secs(1);
    let route = RouteConfig {
        name: "pool-test".into(),
        permission: "chat".into(),
        backend: Arc::new(backend),
    };
    let svc = ForwardService::<TestBody>::new();
    let (tx, body) = channel_body();
    tx.send(Ok(Bytes::from_static(b"{\"p\":0,"))).await.unwrap();
    let req = forward_request(Method::POST, ROUTE, &route, body);
    let res = tokio::time::timeout(Duration::from_secs(5), svc.clone().oneshot(req))
        .await
        .expect("response headers in time")
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tx.send(Ok(Bytes::from_static(b"\"q\":1,"))).await.unwrap();
    }
    tx.send(Ok(Bytes::from_static(b"\"r\":2}"))).await.unwrap();
    drop(tx);
    let body = tokio::time::timeout(Duration::from_secs(5), res.into_body().collect())
        .await
        .expect("response body in time")
        .unwrap()
        .to_bytes();
    assert_eq!(body, ": accepted\n\ndata: got 43\n\n");
}
