//! Answers a backend frames badly, through the real `fastgate` binary on loopback: a body that
//! fails right after the head, a `Content-Length` list, an unasked-for `101`. The client must get
//! what was sent (or a clear 502), and the audit must say the backend failed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A backend that reads each request (head and `Content-Length` body), writes `answer` as it is
/// and closes the connection.
async fn raw_backend(answer: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let _ = sock.write_all(answer).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    url
}

/// What an HTTP/1.1 client reads for one chat request on a fresh connection, to the end.
async fn raw_exchange(fg: &Fastgate, key: &str) -> String {
    let body = chat_body(false);
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    let req = format!(
        "POST /proxy{BACKEND_PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\nx-request-id: raw-{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        rand_suffix(),
        body.len()
    );
    client.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A backend that sends its head and a piece of the body, then fails at once (a malformed chunk,
/// or a connection closed short of its `Content-Length`): the client got nothing at all, not
/// even the status (curl: "Empty reply from server"), so an SDK would retry a request the backend
/// had already taken. It now gets the head and what came of the body before the cut.
#[tokio::test]
async fn a_body_that_fails_right_after_the_head_still_gives_the_client_the_head() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n"[..],
        &b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":\"x\""[..],
    ] {
        let backend = raw_backend(answer).await;
        let fg = Fastgate::start(&backend).await;
        let key = fg.key("u").await;
        for round in 0..5 {
            let got = raw_exchange(&fg, &key).await;
            assert!(
                got.starts_with("HTTP/1.1 200 OK\r\n"),
                "round {round}: the client read {got:?}"
            );
            let id = format!("raw-{}", rand_suffix() - 1);
            let row = fg.wait_audit(&id).await;
            assert_eq!(row["status"], 200, "{row}");
            assert_eq!(row["outcome"], "upstream_error", "{row}");
        }
    }
}

/// `Content-Length: 5, 5` from a backend (a list of equal values, which hyper reads as 5) went to
/// the client as it was: node's HTTP client refuses it, Python's waits for the connection's end,
/// an HTTP/2 client gets a protocol error. RFC 9112 6.3: one value.
#[tokio::test]
async fn a_content_length_list_reaches_the_client_as_one_value() {
    let backend = raw_backend(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5, 5\r\n\r\nhello",
    )
    .await;
    let fg = Fastgate::start(&backend).await;
    let key = fg.key("u").await;
    let res = fg.chat(&key, false).await;
    assert_eq!(res.status(), 200);
    let lengths: Vec<_> = res
        .headers()
        .get_all("content-length")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(lengths, ["5"]);
    assert_eq!(res.text().await.unwrap(), "hello");
}

/// FastGate never forwards `Upgrade`, so a `101 Switching Protocols` is a backend's mistake: it
/// was relayed (the client got a 101 without `Upgrade`, then a closed connection) and audited
/// `completed`. It is a 502 `upstream_error` now, not to be retried (the backend had the request).
#[tokio::test]
async fn an_unasked_switching_protocols_is_a_bad_gateway() {
    let backend = raw_backend(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").await;
    let fg = Fastgate::start(&backend).await;
    let key = fg.key("u").await;
    let res = fg.chat(&key, false).await;
    assert_eq!(res.status(), 502);
    assert_eq!(
        res.headers()
            .get("x-should-retry")
            .and_then(|v| v.to_str().ok()),
        Some("false")
    );
    let id = request_id(&res);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_error", "{body}");
    let row = fg.wait_audit(&id).await;
    assert_eq!(row["status"], 502, "{row}");
    assert_eq!(row["outcome"], "upstream_error", "{row}");
}
