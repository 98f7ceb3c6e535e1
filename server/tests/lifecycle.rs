//! Start-up errors, reload on SIGHUP and graceful shutdown on SIGTERM, against the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;

/// The audit row of `rid`, read from the database of a gateway that has exited.
/// A stream through `fg` (whose upstream stalls after two events) with its first event read,
/// then SIGTERM; the client goes on reading (it is not the one who leaves). Returns the
/// request id and the reading task.
async fn stream_then_term(fg: &Fastgate) -> (String, tokio::task::JoinHandle<()>) {
    let key = fg.new_key("u").await;
    let res = fg.chat(&key, true).await;
    assert_eq!(res.status(), 200);
    let rid = request_id(&res);
    let mut stream = res.bytes_stream();
    assert!(stream.next().await.unwrap().unwrap().starts_with(b"data: "));
    fg.signal("TERM");
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    (rid, reader)
}

/// SIGTERM, then exit 0 within `limit` (the tests' grace period is 20 s).
async fn term_exits_within(fg: &mut Fastgate, limit: Duration) {
    let started = Instant::now();
    fg.signal("TERM");
    assert_eq!(
        fg.wait_exit(limit + Duration::from_secs(5)).await,
        Some(0),
        "{}",
        fg.logs()
    );
    assert!(
        started.elapsed() < limit,
        "exit took {:?} after SIGTERM",
        started.elapsed()
    );
}

async fn audit_row_after_exit(fg: &Fastgate, rid: &str) -> fastgate_store::AuditRecord {
    fg.open_store()
        .await
        .get_audit(rid)
        .await
        .unwrap()
        .expect("audit row written before exit")
}

fn run_check(yaml: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut cmd = fastgate_cmd();
    cmd.arg("--config").arg(&path).arg("check-config");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn openapi_command_prints_the_spec_without_touching_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    // A SQLite file in a directory that does not exist, then an unreachable PostgreSQL server:
    // neither may stop the spec from being printed, and no file is created.
    let db = dir.path().join("missing-dir").join("fastgate.db");
    let sqlite = config_yaml(8514, &db, "http://127.0.0.1:9");
    let port = free_port();
    let postgres = sqlite.replace(
        &format!("sqlite:///{}", db.display()),
        &format!("postgresql://fastgate@127.0.0.1:{port}/fastgate"),
    );
    assert_ne!(postgres, sqlite, "the database URL was not replaced");
    for yaml in [sqlite, postgres] {
        std::fs::write(&path, yaml).unwrap();
        let out = fastgate_cmd()
            .arg("--config")
            .arg(&path)
            .arg("openapi")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let spec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
        assert!(spec["paths"]["/admin/keys"].is_object(), "{spec}");
        assert!(!db.parent().unwrap().exists());
    }
    // No readable config (the default path in a directory without one): printed all the same.
    let empty = tempfile::tempdir().unwrap();
    let out = fastgate_cmd()
        .arg("openapi")
        .current_dir(empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let spec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(spec["paths"]["/admin/keys"].is_object(), "{spec}");
    assert!(stderr.contains("printed without it"), "{stderr}");
}

#[test]
fn config_errors_exit_non_zero_naming_the_key() {
    let good = config_yaml(
        8514,
        std::path::Path::new("/tmp/x.db"),
        "http://127.0.0.1:9",
    );
    let (code, out) = run_check(&good, &[]);
    assert_eq!(code, Some(0), "{out}");

    let cases = [
        (good.replace("  port: 8514", "  port: [8514"), "c.yaml:"),
        (
            good.replace("  echo: false", "  echo: false\n  pool: 3"),
            "pool",
        ),
        (
            good.replace("http://127.0.0.1:9", "not a url"),
            "api_gateway.backend_url",
        ),
        (
            good.replace("sqlite:////tmp/x.db", "mysql://db/x"),
            "database.url",
        ),
        (good.replace("  port: 8514", "  port: 99999"), "app.port"),
        (
            good.replace(
                "  port: 8514",
                "  port: 8514\n  trusted_proxies: [\"10.0.0.0/8\", \"proxy.local\"]",
            ),
            "app.trusted_proxies[1]",
        ),
    ];
    for (yaml, needle) in cases {
        let (code, out) = run_check(&yaml, &[]);
        assert_eq!(code, Some(2), "{out}");
        assert!(out.contains(needle), "expected {needle:?} in: {out}");
    }
    // A bad value from the environment names the variable, as it was set.
    let (code, out) = run_check(&good, &[("FASTGATE__APP__PORT", "eighty")]);
    assert_eq!(code, Some(2));
    assert!(out.contains("FASTGATE__APP__PORT"), "{out}");
    for (var, value, needle) in [
        // No value: the token `null` (or the two characters of docker's `""`) opened the admin
        // API to anyone sending it.
        ("FASTGATE__SECURITY__ADMIN_TOKEN", "null", "no value"),
        ("FASTGATE__SECURITY__ADMIN_TOKEN", "\"\"", "no value"),
        (
            "FASTGATE__SECURITY__ADMIN_TOKEN",
            "[s3cr3t]",
            "expected a string",
        ),
        // A name that names no key was ignored.
        ("FASTGATE__APP____PORT", "1", "empty segment"),
        (
            "FASTGATE__app__port",
            "eighty",
            "(set by FASTGATE__app__port)",
        ),
    ] {
        let (code, out) = run_check(&good, &[(var, value)]);
        assert_eq!(code, Some(2), "{var}={value}: {out}");
        assert!(
            out.contains(var) && out.contains(needle),
            "{var}={value}: {out}"
        );
        assert!(!out.contains("s3cr3t"), "{out}");
    }
    // Configured by the environment alone: a relative path is the working directory's (it was
    // resolved beside /dev/null, in /dev).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("extra-routes.yaml"),
        "routes:\n  - path: /proxy/v1/embeddings\n    backend_url: http://127.0.0.1:9\n    \
         backend_path: /v1/embeddings\n",
    )
    .unwrap();
    let out = fastgate_cmd()
        .arg("check-config")
        .current_dir(dir.path())
        .env("FASTGATE_CONFIG", "/dev/null")
        .env(
            "FASTGATE__SECURITY__ADMIN_TOKEN",
            "9f2c4e7a1b8d3f6e0a5c2b9d",
        )
        .env("FASTGATE__API_GATEWAY__BACKEND_URL", "http://127.0.0.1:9")
        .env(
            "FASTGATE__API_GATEWAY__BACKEND_PATH",
            "/v1/chat/completions",
        )
        .env("FASTGATE__API_GATEWAY__ROUTES_FILE", "extra-routes.yaml")
        .env("FASTGATE__DATABASE__URL", "sqlite:///./fastgate.db")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 route(s)"), "{stdout}");
    assert!(!dir.path().join("fastgate.db").exists());
    // YAML errors carry a line number.
    let (_, out) = run_check(&good.replace("  port: 8514", "  port: [8514"), &[]);
    assert!(out.contains("c.yaml:"), "{out}");
}

/// A start or command that fails says why once on stderr (it was said twice: a log line and a
/// plain line) and exits non-zero; a server's `logging.file` gets the error too.
#[test]
fn a_failed_start_says_why_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let log = dir.path().join("fastgate.log");
    let good = config_yaml(port, &dir.path().join("fastgate.db"), "http://127.0.0.1:9")
        + &format!("logging:\n  file: \"{}\"\n", log.display());
    let no_dir = dir.path().join("missing-dir").join("fastgate.db");
    let cases: [(String, &[&str], &str); 5] = [
        (good.clone(), &[], "cannot listen on 127.0.0.1:"),
        (good.clone(), &["serve"], "cannot listen on 127.0.0.1:"),
        (
            good.replace("fastgate.db", "missing-dir/fastgate.db"),
            &[],
            "for the SQLite database does not exist",
        ),
        (good.replace("  port:", "  port: [1]\n  x:"), &[], "c.yaml:"),
        (
            good.clone(),
            &["keys", "delete", "k_nope"],
            "no key has this id",
        ),
    ];
    for (yaml, args, needle) in cases {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        let _ = std::fs::remove_file(&log);
        let out = fastgate_cmd()
            .arg("--config")
            .arg(&path)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert_eq!(
            stderr.matches(needle).count(),
            1,
            "{args:?}: {needle:?} not exactly once in: {stderr}"
        );
        assert!(stderr.contains("fastgate: "), "{stderr}");
        if needle.starts_with("cannot listen") {
            let logged = std::fs::read_to_string(&log).unwrap();
            assert_eq!(logged.matches(needle).count(), 1, "{logged}");
        }
    }
    assert!(!no_dir.parent().unwrap().exists());
    drop(taken);
}

#[tokio::test]
async fn sighup_reloads_routes_and_keeps_the_old_config_on_error() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let key = fg.new_key("u").await;
    let call = |path: String| {
        fg.http
            .post(fg.url(&path))
            .header("X-API-Key", &key)
            .body(chat_body(false))
            .send()
    };
    let main = format!("/proxy{BACKEND_PATH}");
    assert_eq!(call(main.clone()).await.unwrap().status(), 200);
    assert_eq!(
        call("/proxy/v1/embeddings".into()).await.unwrap().status(),
        404
    );

    // A broken file: the old configuration keeps serving.
    let original = std::fs::read_to_string(&fg.config).unwrap();
    std::fs::write(&fg.config, "app: [broken").unwrap();
    fg.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fg.logs().contains("reload failed") {
        assert!(
            Instant::now() < deadline,
            "no reload error logged:\n{}",
            fg.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(call(main.clone()).await.unwrap().status(), 200);

    // A valid file with a routes file: the new route appears, with its own real key.
    std::fs::write(&fg.config, &original).unwrap();
    std::fs::write(
        fg.dir.path().join("routes.yaml"),
        format!(
            "routes:\n  - path: /proxy/v1/embeddings\n    backend_url: {}\n    backend_path: /v1/embeddings\n    real_api_key: sk-embeddings-route\n",
            upstream.url()
        ),
    )
    .unwrap();
    fg.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = call("/proxy/v1/embeddings?x=1".into())
            .await
            .unwrap()
            .status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "route not reloaded:\n{}",
            fg.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = upstream.last();
    assert_eq!(seen.path, "/v1/embeddings");
    assert_eq!(seen.query.as_deref(), Some("x=1"));
    assert_eq!(seen.headers["authorization"], "Bearer sk-embeddings-route");
    assert!(!fg.logs().contains("sk-embeddings-route"));

    // The routes file moved away (or being replaced): refused, its route keeps serving.
    let routes = fg.dir.path().join("routes.yaml");
    let aside = fg.dir.path().join("routes.yaml.bak");
    std::fs::rename(&routes, &aside).unwrap();
    fg.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fg.logs().contains("the routes file in use is gone") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            fg.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let embeddings = || call("/proxy/v1/embeddings".into());
    assert_eq!(embeddings().await.unwrap().status(), 200);
    // Emptied on purpose: its routes go.
    std::fs::write(&routes, "").unwrap();
    fg.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while embeddings().await.unwrap().status() != 404 {
        assert!(
            Instant::now() < deadline,
            "route not dropped:\n{}",
            fg.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_lets_a_stream_finish_and_writes_its_audit_row() {
    let upstream = Upstream::start().await;
    let mut fg = Fastgate::start(&upstream.url()).await;
    let key = fg.new_key("u").await;
    let res = fg.chat(&key, true).await;
    assert_eq!(res.status(), 200);
    let rid = request_id(&res);
    let mut stream = res.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));

    fg.signal("TERM");
    // New connections are refused soon after, while the open stream keeps flowing.
    let mut got = first.to_vec();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(got).unwrap(), full_sse());
    assert_eq!(
        fg.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        fg.logs()
    );

    // The audit row of the finished stream is in the database.
    let row = audit_row_after_exit(&fg, &rid).await;
    assert_eq!(row.outcome, "completed");
    assert!(row.is_stream);
    assert_eq!(row.response_bytes, full_sse().len() as u64);
}

/// A stream still running when the shutdown grace period ends is cut by the gateway, and its
/// audit row says so (`interrupted`), not that the client went away.
#[tokio::test]
async fn a_stream_cut_at_the_end_of_the_grace_period_is_audited_as_interrupted() {
    let upstream = FaultUpstream::start(Fault::StallAfter(2)).await;
    let mut fg = Fastgate::start_with(
        &upstream.url(),
        |y| *y = y.replace("  shutdown_timeout: 20\n", "  shutdown_timeout: 1\n"),
        &[],
    )
    .await;
    let (rid, reader) = stream_then_term(&fg).await;
    assert_eq!(
        fg.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        fg.logs()
    );
    reader.abort();
    let row = audit_row_after_exit(&fg, &rid).await;
    assert_eq!(row.outcome, "interrupted");
    assert!(row.response_bytes > 0);
}

/// A second SIGTERM ends the grace period at once (a long one here: 20 s): the stream still
/// running is cut and audited `interrupted`, and the process exits 0 with its audit written.
#[tokio::test]
async fn a_second_sigterm_cuts_the_grace_period_short() {
    let upstream = FaultUpstream::start(Fault::StallAfter(2)).await;
    let mut fg = Fastgate::start(&upstream.url()).await;
    let (rid, reader) = stream_then_term(&fg).await;
    // The first signal is being handled (the listener closes) before the second one comes.
    eventually(Duration::from_secs(5), "the first SIGTERM handled", || {
        fg.logs().contains("SIGTERM: shutting down")
    })
    .await;
    // Without `app.shutdown_accept_grace` the listener closes at once: a new connection is
    // refused while the stream keeps the process running.
    eventually(Duration::from_secs(2), "the listener closed", || {
        std::net::TcpStream::connect(("127.0.0.1", fg.port)).is_err()
    })
    .await;
    // A second signal within a second of the first is taken for the same stop sent twice.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    term_exits_within(&mut fg, Duration::from_secs(5)).await;
    reader.abort();
    let row = audit_row_after_exit(&fg, &rid).await;
    assert_eq!(row.outcome, "interrupted");
}

/// The test config with `app.shutdown_accept_grace` set to `seconds`.
fn with_accept_grace(seconds: u64) -> impl FnOnce(&mut String) {
    move |y| {
        *y = y.replace(
            "  shutdown_timeout: 20\n",
            &format!("  shutdown_timeout: 20\n  shutdown_accept_grace: {seconds}\n"),
        );
    }
}

/// With `app.shutdown_accept_grace`, a SIGTERM does not close the listener at once: for the
/// grace period new connections and a keep-alive connection opened before are served as usual,
/// and `/health` answers 503 `draining` (a load balancer takes the instance out meanwhile);
/// then the usual shutdown, exit 0. Before, the listener closed at once (connections refused
/// until the load balancer noticed) and so did idle keep-alive connections.
#[tokio::test]
async fn an_accept_grace_keeps_serving_after_sigterm_with_health_draining() {
    let upstream = Upstream::start().await;
    let mut fg = Fastgate::start_with(&upstream.url(), with_accept_grace(3), &[]).await;
    let key = fg.new_key("u").await;
    let mut kept = http1_connection(&fg).await;
    assert_eq!(chat_on(&mut kept, &key).await.status(), 200);
    let (status, h) = fg.health().await;
    assert_eq!(
        (status, h["status"].as_str()),
        (200, Some("healthy")),
        "{h}"
    );

    let signalled = Instant::now();
    fg.signal("TERM");
    eventually(Duration::from_secs(5), "draining logged", || {
        fg.logs().contains("SIGTERM: draining")
    })
    .await;
    // A new connection for each request, as a client the load balancer still sends.
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..3 {
        let res = fresh
            .post(fg.proxy_url())
            .header("X-API-Key", &key)
            .header("content-type", "application/json")
            .body(chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let (status, h) = send_json(fresh.get(fg.url("/health"))).await;
        assert_eq!(status, 503, "{h}");
        assert_eq!(h["status"], "degraded", "{h}");
        assert_eq!(h["reasons"], serde_json::json!(["draining"]), "{h}");
        assert!(h["audit"].is_object(), "the usual answer: {h}");
        // The keep-alive connection opened before the signal serves too.
        assert_eq!(chat_on(&mut kept, &key).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the checks outlasted the grace period: {:?}",
        signalled.elapsed()
    );
    assert_eq!(
        fg.wait_exit(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        fg.logs()
    );
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(8),
        "exit {took:?} after SIGTERM with a 3 s accept grace"
    );
    assert_eq!(fg.logs().matches("SIGTERM: draining").count(), 1);
}

/// A second SIGTERM (a second or more after the first) ends the accept grace: the gateway stops
/// accepting and shuts down as without one.
#[tokio::test]
async fn a_second_sigterm_ends_the_accept_grace() {
    let upstream = Upstream::start().await;
    let mut fg = Fastgate::start_with(&upstream.url(), with_accept_grace(60), &[]).await;
    fg.signal("TERM");
    eventually(Duration::from_secs(5), "draining logged", || {
        fg.logs().contains("SIGTERM: draining")
    })
    .await;
    // Within a second of the first: the same stop sent twice, the grace goes on.
    fg.signal("TERM");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, h) = fg.health().await;
    assert_eq!(
        (status, &h["reasons"]),
        (503, &serde_json::json!(["draining"]))
    );
    term_exits_within(&mut fg, Duration::from_secs(5)).await;
    assert!(
        fg.logs().contains("accept grace ended early"),
        "{}",
        fg.logs()
    );
}

/// The soft open files limit is raised to the hard one at start (systemd's default soft limit
/// of 1024 made the 1024th connection fail with 502 `upstream_unreachable`); the debug log says
/// so.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_soft_open_files_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = open_files_limit("self");
    if hard <= 256 {
        eprintln!("skipped: the hard open files limit ({hard}) leaves nothing to raise");
        return;
    }
    let upstream = Upstream::start().await;
    let fg = Fastgate::start_cmd(
        fastgate_cmd_with_open_files(256, None),
        &upstream.url(),
        |_| {},
        &[],
    )
    .await;
    assert_eq!(
        open_files_limit(&fg.child.id().to_string()),
        (hard, hard),
        "{}",
        fg.logs()
    );
    assert!(
        fg.logs()
            .contains("open files limit (RLIMIT_NOFILE) raised to the hard limit"),
        "{}",
        fg.logs()
    );
}

#[tokio::test]
async fn sigterm_does_not_wait_for_idle_or_silent_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start().await;
    let mut fg = Fastgate::start(&upstream.url()).await;
    let key = fg.new_key("u").await;
    // A connection that has sent nothing yet, an HTTP/1.1 keep-alive connection between
    // requests and an HTTP/2 (h2c) connection without streams.
    let silent = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    let mut keep_alive = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    let body = chat_body(false);
    keep_alive
        .write_all(
            format!(
                "POST /proxy{BACKEND_PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let h2 = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(h2),
        )
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.ready().await.unwrap();
    // The keep-alive connection's answer read in full (its head and the upstream's JSON body):
    // the connection is now between requests.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !(answer.starts_with(b"HTTP/1.1 200") && answer.ends_with(JSON_REPLY.as_bytes())) {
            let n = keep_alive.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer: {}", String::from_utf8_lossy(&answer)));
    assert_eq!(upstream.count(), 1);

    // The grace period is 20 s and header_read_timeout 60 s: none of them may hold it up.
    term_exits_within(&mut fg, Duration::from_secs(5)).await;
    drop((silent, keep_alive));
}

/// Settings read only at start keep their running values on SIGHUP, so `/admin/config` shows
/// what the gateway does; the warning names the ones that changed, at every reload until the
/// restart. Reloadable settings in the same file apply.
#[tokio::test]
async fn a_reload_keeps_start_only_settings_and_names_them() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let key = fg.new_key("u").await;
    let config = || async {
        let v: serde_json::Value = fg.admin_get("/admin/config").await.json().await.unwrap();
        v
    };
    let before = config().await;
    let max_body = before["api_gateway"]["max_body_bytes"].as_u64().unwrap();
    assert_ne!(max_body, 1000);

    let edited = std::fs::read_to_string(&fg.config)
        .unwrap()
        .replace(
            "    - \"x-forwarded-for\"\n",
            "    - \"x-forwarded-for\"\n    - \"x-real-ip\"\n  max_body_bytes: 1000\n",
        )
        .replace("  timeout: 5\n", "  timeout: 7\n");
    assert!(edited.contains("x-real-ip") && edited.contains("timeout: 7"));
    std::fs::write(&fg.config, edited).unwrap();
    let warnings = || fg.logs().matches("read only at start").count();
    for n in 1..=2 {
        fg.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while warnings() < n {
            assert!(Instant::now() < deadline, "no warning:\n{}", fg.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let logs = fg.logs();
    let line = logs
        .lines()
        .rfind(|l| l.contains("read only at start"))
        .unwrap();
    assert!(line.contains("api_gateway.strip_headers"), "{line}");
    assert!(line.contains("api_gateway.max_body_bytes"), "{line}");
    assert!(!line.contains("api_gateway.timeout"), "{line}");

    // What /admin/config shows is what the gateway does.
    let after = config().await;
    assert_eq!(after["api_gateway"]["timeout"], 7, "{after}");
    assert_eq!(
        after["api_gateway"]["strip_headers"],
        before["api_gateway"]["strip_headers"]
    );
    assert_eq!(after["api_gateway"]["max_body_bytes"], max_body);
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("X-API-Key", &key)
        .header("X-Real-IP", "192.0.2.7")
        .body(format!(r#"{{"model":"m","pad":"{}"}}"#, "x".repeat(1200)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "max_body_bytes is still the running value"
    );
    assert_eq!(upstream.last().headers["x-real-ip"], "192.0.2.7");
}

/// Two processes starting on a new SQLite file at once (two gateways, or `fastgate migrate`
/// beside `fastgate keys create`) both succeed: SQLite has no migration lock, so the one that
/// loses the race tries again and finds the tables made.
#[tokio::test]
async fn concurrent_first_starts_on_a_new_sqlite_file_both_migrate() {
    for round in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            config_yaml(
                free_port(),
                &dir.path().join("fastgate.db"),
                "http://127.0.0.1:9",
            ),
        )
        .unwrap();
        let run = |args: &[&str]| {
            let mut cmd = fastgate_cmd();
            cmd.arg("--config").arg(&config).args(args);
            cmd.current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        };
        let children = [
            run(&["migrate"]),
            run(&["migrate"]),
            run(&["keys", "create", "--source-path", "racer"]),
        ];
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
