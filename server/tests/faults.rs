//! Faults against the real `fastgate` binary on loopback: a backend that refuses, hangs, stalls or
//! resets; error statuses passed through; clients hanging up; the database locked or gone;
//! SIGKILL and SIGTERM; a full audit queue. Each test states the result the issue promises.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use sqlx::Connection;

/// Short timeouts: 1 s for response headers and 1 s of upstream silence mid-stream.
fn short_timeouts(yaml: &mut String) {
    *yaml = yaml.replace("  timeout: 5\n", "  timeout: 1\n  idle_timeout: 1\n");
}

/// Read a streamed response to its end (or its error), bounded; returns the bytes received.
async fn drain(res: reqwest::Response, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut stream = res.bytes_stream();
    let read = async {
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => got.extend_from_slice(&c),
                Err(_) => break,
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("the client's stream must end, not hang");
    got
}

#[tokio::test]
async fn refused_backend_gets_502_json_fast_and_audit_upstream_error() {
    // A port nobody listens on: connections are refused.
    let fg = Fastgate::start(&format!("http://127.0.0.1:{}", free_port())).await;
    let key = fg.key("u").await;
    for stream in [false, true] {
        let t = Instant::now();
        let res = fg.chat(&key, stream).await;
        assert!(t.elapsed() < Duration::from_secs(2), "502 must be fast");
        assert_eq!(res.status(), 502);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let rid = request_id(&res);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "upstream_unreachable");
        let row = fg.wait_audit(&rid).await;
        assert_eq!(row["outcome"], "upstream_error");
        assert_eq!(row["status"], 502);
    }
}

#[tokio::test]
async fn silent_backend_gets_504_after_the_configured_timeout() {
    let up = FaultUpstream::start(Fault::NeverAnswer).await;
    let fg = Fastgate::start_with(&up.url(), short_timeouts, &[]).await;
    let key = fg.key("u").await;
    let t = Instant::now();
    let res = fg.chat(&key, false).await;
    let elapsed = t.elapsed();
    assert_eq!(res.status(), 504);
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "504 after about 1 s, got {elapsed:?}"
    );
    let rid = request_id(&res);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
    let row = fg.wait_audit(&rid).await;
    assert_eq!(row["outcome"], "upstream_timeout");
    assert_eq!(row["status"], 504);
    // The gateway hangs up on the silent backend instead of keeping the connection.
    eventually(Duration::from_secs(5), "upstream connection closed", || {
        up.live() == 0
    })
    .await;
}

#[tokio::test]
async fn backend_stalling_mid_stream_ends_the_clients_stream_after_the_idle_timeout() {
    let up = FaultUpstream::start(Fault::StallAfter(2)).await;
    let fg = Fastgate::start_with(&up.url(), short_timeouts, &[]).await;
    let key = fg.key("u").await;
    let t = Instant::now();
    let res = fg.chat(&key, true).await;
    assert_eq!(res.status(), 200);
    let rid = request_id(&res);
    let got = drain(res, Duration::from_secs(10)).await;
    assert!(t.elapsed() >= Duration::from_millis(900));
    let sent = format!("{}{}", fault_event(0), fault_event(1));
    assert_eq!(String::from_utf8(got).unwrap(), sent);
    let row = fg.wait_audit(&rid).await;
    let outcome = row["outcome"].as_str().unwrap();
    assert!(
        outcome == "upstream_timeout" || outcome == "upstream_error",
        "{row}"
    );
    assert_eq!(row["response_bytes"], sent.len() as u64, "{row}");
    // The stalled upstream connection is closed, not leaked.
    eventually(Duration::from_secs(5), "stalled upstream dropped", || {
        up.dropped() == 1 && up.live() == 0
    })
    .await;
}

#[tokio::test]
async fn backend_resetting_mid_stream_ends_the_clients_stream_with_upstream_error() {
    let up = FaultUpstream::start(Fault::ResetAfter(2)).await;
    let fg = Fastgate::start(&up.url()).await;
    let key = fg.key("u").await;
    let res = fg.chat(&key, true).await;
    assert_eq!(res.status(), 200);
    let rid = request_id(&res);
    let got = drain(res, Duration::from_secs(10)).await;
    let sent = format!("{}{}", fault_event(0), fault_event(1));
    assert_eq!(String::from_utf8(got).unwrap(), sent);
    let row = fg.wait_audit(&rid).await;
    assert_eq!(row["outcome"], "upstream_error", "{row}");
    assert_eq!(row["response_bytes"], sent.len() as u64, "{row}");
}

#[tokio::test]
async fn backend_error_statuses_pass_through_unchanged() {
    let cases = [
        (
            429u16,
            r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
            Some("7"),
        ),
        (
            500,
            r#"{"error":{"message":"boom","type":"server_error","code":null}}"#,
            None,
        ),
        (
            503,
            r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
            Some("120"),
        ),
    ];
    let routes_dir = tempfile::tempdir().unwrap();
    let mut routes = String::from("routes:\n");
    let mut upstreams = Vec::new();
    for (status, body, retry_after) in cases {
        let up = FaultUpstream::start(Fault::Status {
            status,
            body,
            retry_after,
        })
        .await;
        routes.push_str(&format!(
            "  - path: /proxy/s{status}\n    backend_url: {}\n    backend_path: /v1/chat/completions\n",
            up.url()
        ));
        upstreams.push(up);
    }
    let routes_file = routes_dir.path().join("routes.yaml");
    std::fs::write(&routes_file, routes).unwrap();
    let fg = Fastgate::start_with(
        &upstreams[0].url(),
        |y| {
            *y = y.replace(
                "  timeout: 5\n",
                &format!(
                    "  timeout: 5\n  routes_file: \"{}\"\n",
                    routes_file.display()
                ),
            );
        },
        &[],
    )
    .await;
    let key = fg.key("u").await;
    for (status, body, retry_after) in cases {
        let res = fg
            .http
            .post(fg.url(&format!("/proxy/s{status}")))
            .header("Authorization", format!("Bearer {key}"))
            .body(chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(
            res.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
            retry_after.map(str::to_owned),
            "Retry-After of {status}"
        );
        let rid = request_id(&res);
        assert_eq!(res.text().await.unwrap(), body, "body of {status}");
        let row = fg.wait_audit(&rid).await;
        assert_eq!(row["status"], status);
        assert_eq!(row["response_bytes"], body.len() as u64);
    }
}

#[tokio::test]
async fn client_disconnects_cancel_the_upstream_and_leak_no_connections() {
    let up = FaultUpstream::start(Fault::Slow {
        events: 400,
        gap: Duration::from_millis(25),
    })
    .await;
    let fg = Fastgate::start(&up.url()).await;
    let created = fg.create_key("u").await;
    let key = created["api_key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();

    // One abort: the upstream sees its stream dropped, the audit says client_aborted.
    let abort_one = |fg: &Fastgate, key: String| {
        let req = fg
            .http
            .post(fg.proxy_url())
            .header("X-API-Key", key)
            .body(chat_body(true));
        async move {
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 200);
            let rid = request_id(&res);
            let mut stream = res.bytes_stream();
            let first = stream.next().await.unwrap().unwrap();
            assert!(first.starts_with(b"data: "));
            drop(stream); // hang up mid-stream
            rid
        }
    };
    let rid = abort_one(&fg, key.clone()).await;
    eventually(Duration::from_secs(5), "upstream sees the hang-up", || {
        up.dropped() == 1
    })
    .await;
    let row = fg.wait_audit(&rid).await;
    assert_eq!(row["outcome"], "client_aborted", "{row}");
    eventually(
        Duration::from_secs(5),
        "first upstream connection closed",
        || up.live() == 0,
    )
    .await;
    let accepted_before = up.counters.accepted.load(Ordering::SeqCst);

    // 200 more, 20 at a time.
    let t = Instant::now();
    for _ in 0..10 {
        let wave: Vec<_> = (0..20).map(|_| abort_one(&fg, key.clone())).collect();
        futures_util::future::join_all(wave).await;
    }
    eventually(
        Duration::from_secs(15),
        "every upstream stream cancelled",
        || up.dropped() == 201,
    )
    .await;
    // No connection leak: what stays open is bounded (an idle pool may keep a few).
    eventually(
        Duration::from_secs(10),
        "upstream connections closed",
        || up.live() <= 4,
    )
    .await;
    assert!(up.counters.accepted.load(Ordering::SeqCst) - accepted_before >= 200);
    assert_eq!(up.counters.finished.load(Ordering::SeqCst), 0);
    let rows = fg
        .wait_logs(&format!("&key_id={key_id}"), |items| {
            items
                .iter()
                .filter(|r| r["outcome"] == "client_aborted")
                .count()
                == 201
        })
        .await;
    assert_eq!(rows.len(), 201, "one audit row per aborted request");
    eprintln!("200 client aborts in {:?}", t.elapsed());
}

/// A client that hangs up is noticed at once, not at the gateway's next write to it: the
/// upstream connection is closed while the upstream is still silent (before its headers, or
/// between two events), so a long generation is not run to its end for nobody. Without that,
/// the first case would end only at the 60 s response timeout and the second not within 60 s.
/// The audit record of the first names its key and target, which the layers learned before any
/// response head existed.
#[tokio::test]
async fn a_client_hang_up_reaches_a_silent_upstream_at_once() {
    // Waiting for the response headers.
    let up = FaultUpstream::start(Fault::NeverAnswer).await;
    let fg = Fastgate::start_with(
        &up.url(),
        |y| *y = y.replace("  timeout: 5\n", "  timeout: 60\n"),
        &[],
    )
    .await;
    let created = fg.create_key("u").await;
    let key = created["api_key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    let send = fg
        .http
        .post(fg.proxy_url())
        .header("X-API-Key", &key)
        .body(chat_body(false))
        .send();
    let client = tokio::spawn(send);
    // Hang up once the request has reached the upstream (however slow the machine is).
    eventually(Duration::from_secs(10), "request at the upstream", || {
        up.requests() == 1
    })
    .await;
    client.abort();
    assert!(client.await.is_err(), "the upstream never answers");
    eventually(
        Duration::from_secs(10),
        "upstream connection closed after the hang-up (not at the 60 s timeout)",
        || up.requests() == 1 && up.live() == 0,
    )
    .await;
    // Audited with its key and target although no response head ever existed.
    let rows = fg
        .wait_logs(&format!("&key_id={key_id}"), |items| !items.is_empty())
        .await;
    let row = &rows[0];
    assert_eq!(row["outcome"], "client_aborted", "{row}");
    assert_eq!(row["source_path"], "u", "{row}");
    assert_eq!(
        row["target_url"],
        format!("{}{BACKEND_PATH}", up.url()),
        "{row}"
    );

    // Between two events of a stream (the upstream is silent for 60 s after the first).
    let up = FaultUpstream::start(Fault::StallAfter(1)).await;
    let fg = Fastgate::start(&up.url()).await;
    let key = fg.key("u").await;
    let res = fg.chat(&key, true).await;
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(stream);
    eventually(
        Duration::from_secs(10),
        "upstream stream dropped while silent",
        || up.dropped() == 1,
    )
    .await;
}

/// Hold SQLite's write lock from another connection (as a stuck writer in another process would).
async fn lock_sqlite(fg: &Fastgate) -> sqlx::SqliteConnection {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", fg.db_path().display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn unlock_sqlite(mut conn: sqlx::SqliteConnection) {
    sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn sqlite_write_locked_requests_keep_flowing_and_audit_is_written_after() {
    let up = Upstream::start().await;
    let fg = Fastgate::start(&up.url()).await;
    let key = fg.key("u").await;
    assert_eq!(fg.chat(&key, false).await.status(), 200); // the key is now cached

    let lock = lock_sqlite(&fg).await;
    let mut rids = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let res = fg.chat(&key, false).await;
        assert_eq!(res.status(), 200);
        assert!(
            // Under SQLite's 5 s busy timeout: a request that waited for the writer would
            // take that long; 3 s leaves a slow debug build room.
            t.elapsed() < Duration::from_secs(3),
            "a locked database must not slow requests"
        );
        rids.push(request_id(&res));
        assert_eq!(res.text().await.unwrap(), JSON_REPLY);
    }
    // While the lock is held nothing could be written.
    tokio::time::sleep(Duration::from_millis(300)).await; // let the worker try (not a sync point)
    let r = fg.admin_get(&format!("/admin/logs/{}", rids[0])).await;
    assert_eq!(r.status(), 404, "rows cannot be written under the lock");
    unlock_sqlite(lock).await;

    for rid in &rids {
        assert_eq!(fg.wait_audit(rid).await["outcome"], "completed");
    }
    let (_, h) = fg.health().await;
    assert_eq!(h["audit"]["lost"], 0, "{h}");
    assert_eq!(h["audit"]["dropped"], 0, "{h}");
}

#[tokio::test]
async fn full_audit_queue_drops_and_counts_but_requests_succeed() {
    let up = Upstream::start().await;
    let fg = Fastgate::start_with(
        &up.url(),
        |y| y.push_str("  queue_capacity: 4\n  batch_size: 2\n"),
        &[],
    )
    .await;
    let created = fg.create_key("u").await;
    let key = created["api_key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(fg.chat(&key, false).await.status(), 200);

    // Slow the worker down: it blocks on the locked database while requests keep coming.
    let lock = lock_sqlite(&fg).await;
    let total = 60usize;
    let t = Instant::now();
    for wave in 0..6 {
        let calls: Vec<_> = (0..total / 6).map(|_| fg.chat(&key, false)).collect();
        for res in futures_util::future::join_all(calls).await {
            assert_eq!(res.status(), 200, "wave {wave}");
            assert_eq!(res.text().await.unwrap(), JSON_REPLY);
        }
    }
    let elapsed = t.elapsed();
    // The worker is blocked for as long as the lock is held (the whole loop): a gateway that
    // waited for queue room would not finish before the lock goes. 15 s leaves a slow debug
    // build room; the drop counter below proves the queue was full.
    assert!(
        elapsed < Duration::from_secs(15),
        "latency must not depend on the audit queue: {elapsed:?}"
    );
    let (code, h) = fg.health().await;
    assert_eq!(code, 200);
    let dropped = h["audit"]["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "drop counter must rise: {h}");
    unlock_sqlite(lock).await;

    // Every request is either written or counted as dropped.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = fg
            .wait_logs(&format!("&key_id={key_id}"), |_| true)
            .await
            .len();
        let (_, h) = fg.health().await;
        let dropped = h["audit"]["dropped"].as_u64().unwrap() as usize;
        if rows + dropped == total + 1 && h["audit"]["queue_depth"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rows {rows} + dropped {dropped} != {}: {h}",
            total + 1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigkill_then_restart_opens_the_database_cleanly_and_serves() {
    let up = Upstream::start().await;
    let mut fg = Fastgate::start(&up.url()).await;
    let key = fg.key("u").await;
    let mut rids = Vec::new();
    for _ in 0..5 {
        let res = fg.chat(&key, false).await;
        assert_eq!(res.status(), 200);
        rids.push(request_id(&res));
    }
    for rid in &rids {
        fg.wait_audit(rid).await;
    }
    // A stream is open and a burst is in flight when the process is killed.
    let open = fg.chat(&key, true).await;
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let req = fg
                .http
                .post(fg.proxy_url())
                .header("X-API-Key", &key)
                .body(chat_body(false));
            tokio::spawn(req.send())
        })
        .collect();
    fg.child.kill().unwrap(); // SIGKILL
    fg.child.wait().unwrap();
    drop(open);
    for b in burst {
        let _ = b.await;
    }

    {
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", fg.db_path().display()))
                .await
                .unwrap();
        let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(check, "ok");
        conn.close().await.unwrap();
    }

    fg.restart().await;
    let (code, h) = fg.health().await;
    assert_eq!(code, 200, "{h}");
    let res = fg.chat(&key, true).await;
    assert_eq!(res.status(), 200, "the key survives the crash");
    let rid = request_id(&res);
    assert_eq!(res.text().await.unwrap(), full_sse());
    fg.wait_audit(&rid).await;
    for rid in &rids {
        fg.wait_audit(rid).await;
    }
}

#[tokio::test]
async fn sigterm_under_load_every_complete_response_has_its_audit_row() {
    let up = Upstream::start().await;
    let mut fg = Fastgate::start(&up.url()).await;
    let key = fg.key("u").await;
    let done: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..16 {
        let (http, url, key, done) = (fg.http.clone(), fg.proxy_url(), key.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            for i in 0..300 {
                if Instant::now() > deadline {
                    break;
                }
                let stream = (w + i) % 3 == 0;
                let Ok(res) = http
                    .post(&url)
                    .header("X-API-Key", &key)
                    .body(chat_body(stream))
                    .send()
                    .await
                else {
                    break;
                };
                if res.status() != 200 {
                    break;
                }
                let rid = request_id(&res);
                let Ok(body) = res.text().await else { break };
                let want = if stream {
                    full_sse()
                } else {
                    JSON_REPLY.into()
                };
                if body == want {
                    done.lock().unwrap().push(rid);
                }
            }
        }));
    }
    eventually(Duration::from_secs(10), "load running", || {
        done.lock().unwrap().len() >= 20
    })
    .await;
    fg.signal("TERM");
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        fg.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        fg.logs()
    );
    let done = done.lock().unwrap().clone();
    let store = fg.open_store().await;
    let mut missing = Vec::new();
    for rid in &done {
        if store.get_audit(rid).await.unwrap().is_none() {
            missing.push(rid.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} complete responses have no audit row: {missing:?}",
        missing.len(),
        done.len()
    );
    let unique: HashSet<_> = done.iter().collect();
    assert_eq!(unique.len(), done.len());
    eprintln!(
        "SIGTERM under load: {} complete responses, all audited",
        done.len()
    );
}

/// A TCP proxy in front of PostgreSQL that can play "database gone": cut every open connection
/// and refuse new ones, then let them through again.
struct DbProxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    pipes: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl DbProxy {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let pipes: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (u, p) = (up.clone(), pipes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !u.load(Ordering::SeqCst) {
                    drop(client); // refused: closed at once
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                p.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { port, up, pipes }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// FastGate on a fresh PostgreSQL database reached through a [`DbProxy`]; also returns a direct
/// connection to the server (for `DROP DATABASE`) and the database's name.
async fn postgres_behind_proxy(
    admin_url: &str,
    up: &Upstream,
) -> (sqlx::PgConnection, String, DbProxy, Fastgate) {
    let db = format!("fg_faults_{:016x}", rand::random::<u64>());
    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let parsed = reqwest::Url::parse(admin_url).unwrap();
    let target = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432)
    );
    let proxy = DbProxy::start(target).await;
    let mut via = parsed.clone();
    via.set_port(Some(proxy.port)).unwrap();
    via.set_path(&format!("/{db}"));
    let db_url = via.to_string();
    let fg = Fastgate::start_with(
        &up.url(),
        |y| {
            let line = y
                .lines()
                .find(|l| l.trim_start().starts_with("url: \"sqlite"))
                .unwrap()
                .to_owned();
            *y = y.replace(&line, &format!("  url: \"{db_url}\""));
        },
        &[],
    )
    .await;
    let (_, h) = fg.health().await;
    assert_eq!(h["database"]["backend"], "postgres", "{h}");
    (admin, db, proxy, fg)
}

#[tokio::test]
async fn postgres_gone_cached_keys_work_unknown_keys_503_and_audit_is_spooled() {
    let Ok(admin_url) = std::env::var("FASTGATE_TEST_DATABASE_URL") else {
        eprintln!("skipped: FASTGATE_TEST_DATABASE_URL is not set");
        return;
    };
    let up = Upstream::start().await;
    let (mut admin, db, proxy, fg) = postgres_behind_proxy(&admin_url, &up).await;
    let key = fg.key("u").await;
    assert_eq!(fg.chat(&key, false).await.status(), 200); // cached from now on

    proxy.cut();
    // /health says so.
    let (code, h) = fg.health().await;
    assert_eq!(code, 503, "{h}");
    assert_eq!(h["database"]["reachable"], false);
    // An unknown key cannot be checked: 503, not 401.
    let res = fg
        .chat("fg_neverSeenBeforeButWellFormed0123456789", false)
        .await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "auth_unavailable");
    // The cached key keeps working, at normal speed.
    let mut rids = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let res = fg.chat(&key, false).await;
        assert_eq!(res.status(), 200);
        assert!(t.elapsed() < Duration::from_secs(1));
        rids.push(request_id(&res));
    }
    // The audit batches the database refuses go to the spool file meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, h) = fg.health().await;
        if h["audit"]["spool_waiting"].as_u64().unwrap() >= 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the outage's events not spooled: {h}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.restore();

    // Back: health recovers and every audited request of the outage is written.
    let deadline = Instant::now() + Duration::from_secs(15);
    while fg.health().await.0 != 200 {
        assert!(Instant::now() < deadline, "health did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for rid in &rids {
        assert_eq!(fg.wait_audit(rid).await["outcome"], "completed");
    }
    // Written through without any further request (the worker's idle call), then removed.
    let (_, h) = fg.health().await;
    assert_eq!(h["audit"]["lost"], 0, "{h}");
    assert_eq!(h["audit"]["spool_waiting"], 0, "{h}");
    assert!(h["audit"]["spool_replayed"].as_u64().unwrap() >= 10, "{h}");
    assert!(!fg.dir.path().join("fastgate-audit.spool").exists());
    // Unknown keys are checked again once the store's fail-fast window (1 s) has passed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = fg
            .chat("fg_neverSeenBeforeButWellFormed0123456789", false)
            .await
            .status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "unknown keys still get 503");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    drop(fg);
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
}

/// An outage longer than any retry, with a restart in the middle: the events of the requests
/// served meanwhile wait in the spool file (in memory they would be lost after ~40 s of retries
/// or at the exit), and the next process writes them, each exactly once.
#[tokio::test]
async fn audit_records_of_a_database_outage_survive_a_restart_in_the_spool_file() {
    let Ok(admin_url) = std::env::var("FASTGATE_TEST_DATABASE_URL") else {
        eprintln!("skipped: FASTGATE_TEST_DATABASE_URL is not set");
        return;
    };
    let up = Upstream::start().await;
    let (mut admin, db, proxy, mut fg) = postgres_behind_proxy(&admin_url, &up).await;
    let created = fg.create_key("u").await;
    let key = created["api_key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    let first = fg.chat(&key, false).await;
    assert_eq!(first.status(), 200); // the key is cached from now on
    let mut rids = vec![request_id(&first)];

    proxy.cut();
    for stream in [false, true].repeat(15) {
        let res = fg.chat(&key, stream).await;
        assert_eq!(res.status(), 200);
        rids.push(request_id(&res));
        res.bytes().await.unwrap();
    }
    let spool = fg.dir.path().join("fastgate-audit.spool");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, h) = fg.health().await;
        if h["audit"]["spool_waiting"].as_u64().unwrap() >= 30 {
            assert_eq!(h["audit"]["lost"], 0, "{h}");
            break;
        }
        assert!(Instant::now() < deadline, "not spooled: {h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopped while the database is still gone: the file keeps them (no secret in it).
    fg.signal("TERM");
    assert_eq!(
        fg.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        fg.logs()
    );
    let kept = std::fs::read_to_string(&spool).unwrap();
    assert!(kept.lines().count() >= 30, "{kept}");
    for secret in [key.as_str(), REAL_KEY, ADMIN_TOKEN] {
        assert!(!kept.contains(secret), "a secret in the spool file");
    }

    proxy.restore();
    fg.restart().await;
    let rows = fg
        .wait_logs(&format!("&key_id={key_id}"), |items| {
            items.len() >= rids.len()
        })
        .await;
    let mut seen: Vec<&str> = rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    seen.sort_unstable();
    let mut want: Vec<&str> = rids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(seen, want, "each request of the outage exactly once");
    let streamed = rows.iter().filter(|r| r["is_stream"] == true).count();
    assert_eq!(streamed, 15);
    assert!(rows.iter().all(|r| r["outcome"] == "completed"), "{rows:?}");
    let (_, h) = fg.health().await;
    assert_eq!(h["audit"]["spool_waiting"], 0, "{h}");
    assert!(!spool.exists());

    drop(fg);
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
}

#[tokio::test]
async fn an_audit_export_cut_off_by_the_database_is_a_broken_transfer_not_a_short_file() {
    let Ok(admin_url) = std::env::var("FASTGATE_TEST_DATABASE_URL") else {
        eprintln!("skipped: FASTGATE_TEST_DATABASE_URL is not set");
        return;
    };
    let up = Upstream::start().await;
    let (mut admin, db, proxy, fg) = postgres_behind_proxy(&admin_url, &up).await;
    // 100,000 records (about 30 MB of CSV, more than loopback socket buffers hold), written
    // straight into FastGate's table.
    let mut url = reqwest::Url::parse(&admin_url).unwrap();
    url.set_path(&format!("/{db}"));
    let mut direct = sqlx::PgConnection::connect(url.as_str()).await.unwrap();
    const ROWS: usize = 100_000;
    sqlx::query(
        "INSERT INTO audit_events (request_id, started_at, key_id, method, path, status, \
         is_stream, request_bytes, response_bytes, duration_us, outcome, user_agent) \
         SELECT 'req-' || g, 1700000000000 + g, 'k_export', 'POST', '/proxy/x', 200, false, \
         100, 200, 1000, 'completed', repeat('a', 200) FROM generate_series(1, $1) g",
    )
    .bind(i32::try_from(ROWS).unwrap())
    .execute(&mut direct)
    .await
    .unwrap();
    drop(direct);
    let export = || {
        fg.http
            .get(fg.url("/admin/logs/export?key_id=k_export"))
            .header("x-admin-token", ADMIN_TOKEN)
            .send()
    };

    // The database goes away after the first chunk: the body ends in an error.
    let res = export().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"request_id,timestamp,"));
    proxy.cut();
    let mut lines = first.iter().filter(|b| **b == b'\n').count();
    let error = loop {
        match body.next().await {
            Some(Ok(chunk)) => lines += chunk.iter().filter(|b| **b == b'\n').count(),
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    assert!(
        error.is_some(),
        "the export ended cleanly after {lines} lines of {}",
        ROWS + 1
    );
    assert!(lines < ROWS + 1, "{lines}");

    // Back: a full export ends cleanly with every record.
    proxy.restore();
    fg.wait_healthy().await;
    let full = export().await.unwrap().bytes().await.unwrap();
    let count = full.iter().filter(|b| **b == b'\n').count();
    assert_eq!(count, ROWS + 1);
    assert!(!fg.logs().contains(ADMIN_TOKEN));

    drop(fg);
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
}
