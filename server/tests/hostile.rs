//! Hostile input against the real `fastgate` binary: malformed keys, secrets leaking, oversized
//! bodies and headers, bad admin input, path traversal. Raw paths and header bytes go over a raw
//! TCP socket, because reqwest would normalise or refuse them.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn lookups(h: &Value) -> (u64, u64) {
    (
        h["keys"]["cache_hits"].as_u64().unwrap(),
        h["keys"]["cache_misses"].as_u64().unwrap(),
    )
}

/// `answer` is a complete OpenAI-shaped JSON error with `code`, its length as declared.
fn assert_json_refusal(answer: &str, code: &str) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {answer}"));
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("\r\ncontent-type: application/json"),
        "{answer}"
    );
    assert!(
        head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
        "{answer}"
    );
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(body["error"]["code"], code, "{answer}");
    assert_eq!(body["error"]["type"], "fastgate_error", "{answer}");
    assert!(body["error"]["message"].is_string(), "{answer}");
}

fn post_with(port: u16, headers: &[u8], body: &str) -> Vec<u8> {
    let mut req = format!(
        "POST /proxy{BACKEND_PATH} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(headers);
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body.as_bytes());
    req
}

#[tokio::test]
async fn malformed_keys_get_401_without_a_database_lookup() {
    let up = Upstream::start().await;
    let fg = Fastgate::start(&up.url()).await;
    let long = format!("X-API-Key: fg_{}\r\n", "a".repeat(300));
    let hostile: Vec<Vec<u8>> = vec![
        b"X-API-Key: \r\n".to_vec(),
        long.into_bytes(),
        "X-API-Key: fg_ключ_ü\r\n".as_bytes().to_vec(),
        b"X-API-Key: fg_abc def\r\n".to_vec(),
        b"X-API-Key: fg_abc\tdef\r\n".to_vec(),
        b"X-API-Key: ' OR '1'='1' --\r\n".to_vec(),
        b"X-API-Key: fg_\xff\xfe\r\n".to_vec(),
        b"Authorization: Basic dXNlcjpwYXNz\r\n".to_vec(),
        b"Authorization: Bearer\r\n".to_vec(),
        b"Authorization: Bearer \r\n".to_vec(),
        b"Authorization: Bearerfg_abc\r\n".to_vec(),
        b"Authorization: Bearer fg_a b\r\n".to_vec(),
        b"Authorization: Bearer fg_\x01abc\r\n".to_vec(),
        b"Authorization: Bearer fg_abc\r\n X-Injected: yes\r\n".to_vec(),
        b"Authorization: Token fg_abc\r\n".to_vec(),
        b"Authorization: Bearer fg_\xc3\xa9t\xc3\xa9\r\n".to_vec(),
    ];
    let (_, before) = fg.health().await;
    for h in &hostile {
        let answer = raw_http(fg.port, &post_with(fg.port, h, &chat_body(false))).await;
        let status = raw_status(&answer);
        // Control characters and folded lines are refused by the HTTP parser (400) before the
        // gateway sees them; everything else is the gateway's 401.
        assert!(
            status == 401 || status == 400,
            "{:?} → {status}: {answer}",
            String::from_utf8_lossy(h)
        );
        if status == 401 {
            assert!(
                answer.contains("\"invalid_api_key\"") || answer.contains("\"missing_api_key\""),
                "{answer}"
            );
        } else {
            // hyper's own empty 400, given the OpenAI-shaped body every other refusal has.
            assert_json_refusal(&answer, "bad_request");
        }
        assert!(!answer.contains("X-Injected"), "{answer}");
    }
    let (_, after) = fg.health().await;
    assert_eq!(
        lookups(&before),
        lookups(&after),
        "malformed keys must not reach the key store"
    );
    assert_eq!(up.count(), 0, "nothing reached the backend");

    // Control: a well-formed unknown key is one lookup, so the counters do see lookups.
    let answer = raw_http(
        fg.port,
        &post_with(fg.port, b"X-API-Key: fg_wellformedButUnknown123\r\n", "{}"),
    )
    .await;
    assert_eq!(raw_status(&answer), 401);
    let (_, control) = fg.health().await;
    assert_eq!(lookups(&control).1, lookups(&after).1 + 1);
}

#[tokio::test]
async fn keys_and_secrets_never_reach_logs_error_bodies_audit_or_config() {
    let up = Upstream::start().await;
    let mut fg = Fastgate::start(&up.url()).await;
    let mut secrets: Vec<String> = vec![ADMIN_TOKEN.into(), REAL_KEY.into()];
    let created = fg.create_key("u1").await;
    let key1 = created["api_key"].as_str().unwrap().to_owned();
    let key2 = fg.key("u2").await;
    secrets.push(key1.clone());
    secrets.push(key2.clone());

    // Use the keys both ways, plain and streamed.
    let res = fg.chat(&key1, true).await;
    assert_eq!(res.status(), 200);
    res.text().await.unwrap();
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("Authorization", format!("Bearer {key2}"))
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Rotate: the new secret is also a secret.
    let rotated: Value = fg
        .http
        .post(fg.url(&format!(
            "/admin/keys/{}/rotate?grace_seconds=60",
            created["id"].as_str().unwrap()
        )))
        .header("x-admin-token", ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key3 = rotated["api_key"].as_str().unwrap().to_owned();
    secrets.push(key3.clone());
    assert_eq!(fg.chat(&key3, false).await.status(), 200);

    // Wrong and unknown credentials: the error body never echoes them.
    let unknown = "fg_unknownKeyThatLooksReal0123456789abcdef".to_owned();
    let wrong_admin = "wrong-admin-token-7d1e".to_owned();
    secrets.push(unknown.clone());
    secrets.push(wrong_admin.clone());
    let res = fg.chat(&unknown, false).await;
    assert_eq!(res.status(), 401);
    let body = res.text().await.unwrap();
    assert!(!body.contains(&unknown), "{body}");
    let res = fg
        .http
        .get(fg.url(&format!("/admin/keys?token={wrong_admin}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(!res.text().await.unwrap().contains(&wrong_admin));
    // The admin token in the query string (M-FastGate's way) is not logged either.
    let res = fg
        .http
        .get(fg.url(&format!("/admin/logs?token={ADMIN_TOKEN}&limit=5")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let logs = res.text().await.unwrap();
    // The effective config shows neither the admin token nor the real key.
    let config = fg.admin_get("/admin/config").await.text().await.unwrap();
    assert!(config.contains("******"), "{config}");
    for s in &secrets {
        assert!(!config.contains(s.as_str()), "/admin/config leaks a secret");
        assert!(!logs.contains(s.as_str()), "/admin/logs leaks a secret");
    }
    // The backend got the real key, never a gateway key.
    for seen in up.seen.lock().unwrap().iter() {
        assert_eq!(seen.headers["authorization"], format!("Bearer {REAL_KEY}"));
        for k in [&key1, &key2, &key3] {
            assert!(!format!("{:?}", seen.headers).contains(k.as_str()));
        }
    }

    // Stop cleanly so that logs and the audit are flushed, then grep the files.
    fg.signal("TERM");
    assert_eq!(fg.wait_exit(Duration::from_secs(30)).await, Some(0));
    let mut files = vec![fg.log.clone()];
    for ext in ["", "-wal", "-shm"] {
        let p = std::path::PathBuf::from(format!("{}{ext}", fg.db_path().display()));
        if p.exists() {
            files.push(p);
        }
    }
    let log = fg.logs();
    assert!(
        log.contains("rejected admin request"),
        "the log is captured"
    );
    // The client's address as an address (it was written `Some(127.0.0.1)`).
    let line = log
        .lines()
        .find(|l| l.contains("rejected admin request"))
        .unwrap_or_default();
    assert!(line.contains("client=127.0.0.1"), "{line}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for s in &secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{} contains the secret {}…",
                f.display(),
                &s[..6]
            );
        }
    }
}

/// The value of header `name` in a raw HTTP/1.1 answer.
fn raw_header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// TRACE (which Apache honours by default, echoing the request head, and with it the real
/// upstream key FastGate injected), TRACK and CONNECT never reach the backend: 405 JSON, audited
/// as a refusal.
#[tokio::test]
async fn trace_track_and_connect_are_refused_and_never_forwarded() {
    let up = Upstream::start().await;
    let fg = Fastgate::start(&up.url()).await;
    let key = fg.key("u1").await;
    for method in ["TRACE", "TRACK", "CONNECT", "trace"] {
        let answer = raw_http(
            fg.port,
            format!(
                "{method} /proxy{BACKEND_PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {key}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&answer), 405, "{method}: {answer}");
        assert!(
            raw_header(&answer, "allow").is_some_and(|a| a.contains("POST")),
            "{answer}"
        );
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json: Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "method_not_allowed", "{method}");
        assert_eq!(json["error"]["type"], "fastgate_error");
        let id = raw_header(&answer, "x-request-id").unwrap();
        let row = fg.wait_audit(id).await;
        assert_eq!(row["outcome"], "rejected", "{row}");
        assert_eq!(row["status"], 405, "{row}");
        assert_eq!(row["method"], method, "{row}");
        assert_eq!(row["error_code"], "method_not_allowed", "{row}");
    }
    // An allowed method still goes through.
    assert_eq!(fg.chat(&key, false).await.status(), 200);
    assert_eq!(up.count(), 1, "a refused method reached the backend");
}

/// Copies of the gateway key outside the key headers (`api-key`, Azure's convention) and the
/// admin credential never reach the backend; `Cookie` goes as configured.
#[tokio::test]
async fn copies_of_the_gateway_key_and_the_admin_token_are_not_forwarded() {
    let up = Upstream::start().await;
    let fg = Fastgate::start(&up.url()).await;
    let key = fg.key("u1").await;
    for (name, value) in [
        ("X-API-Key", key.clone()),
        ("Authorization", format!("Bearer {key}")),
    ] {
        let res = fg
            .http
            .post(fg.proxy_url())
            .header(name, &value)
            .header("api-key", &key)
            .header("x-goog-api-key", format!("Bearer {key}"))
            .header("x-admin-token", ADMIN_TOKEN)
            .header("cookie", "session=abc")
            .header("x-custom", "kept")
            .body(chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let seen = up.last();
        let all = format!("{:?}", seen.headers);
        assert!(
            !all.contains(&key),
            "the gateway key reached the backend: {all}"
        );
        assert!(
            !all.contains(ADMIN_TOKEN),
            "the admin token reached the backend: {all}"
        );
        assert_eq!(seen.headers["authorization"], format!("Bearer {REAL_KEY}"));
        assert_eq!(seen.headers["x-custom"], "kept");
        assert_eq!(seen.headers["cookie"], "session=abc", "not listed: passed");
    }
    // With `cookie` listed (as config/production.example.yaml does), it is removed.
    let fg = Fastgate::start_with(
        &up.url(),
        |y| {
            *y = y.replace(
                "    - \"x-forwarded-for\"\n",
                "    - \"x-forwarded-for\"\n    - \"cookie\"\n",
            )
        },
        &[],
    )
    .await;
    let key = fg.key("u1").await;
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("x-api-key", &key)
        .header("cookie", "session=abc")
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(up.last().headers.get("cookie").is_none());
}

/// A database URL parameter named like a misspelled password (`?passwd=`) is masked in
/// `/admin/config`, and its value never reaches the log: sqlx logs a parameter it does not know
/// with its value, so FastGate removes it first and names only the key.
#[tokio::test]
async fn misspelled_database_password_parameters_never_reach_the_log_or_config() {
    let Some(db) = PgTestDb::create("passwd").await else {
        return;
    };
    let secret = "S3cret-db-pw-71c4";
    let url = format!("{}?passwd={secret}&sslmode=disable&pwd={secret}", db.url);
    let up = Upstream::start().await;
    let mut fg = Fastgate::start_with(&up.url(), |y| set_database_url(y, &url), &[]).await;
    let (_, h) = fg.health().await;
    assert_eq!(h["database"]["backend"], "postgres", "{h}");
    let config = fg.admin_get("/admin/config").await.text().await.unwrap();
    assert!(!config.contains(secret), "{config}");
    assert!(config.contains("passwd=******"), "{config}");
    let check = fastgate_cmd()
        .arg("check-config")
        .arg("--config")
        .arg(&fg.config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{said}");
    assert!(
        said.contains("`passwd`") && said.contains("`pwd`"),
        "{said}"
    );
    assert!(!said.contains(secret), "{said}");
    fg.signal("TERM");
    assert_eq!(fg.wait_exit(Duration::from_secs(30)).await, Some(0));
    let log = fg.logs();
    assert!(log.contains("`passwd`"), "{log}");
    assert!(!log.contains(secret), "the log holds the password:\n{log}");
    db.drop_database().await;
}

/// Control characters in admin text inputs (key bodies, filters, ids in the path) are a 400:
/// a NUL reached PostgreSQL, which refused it (503 `store_unavailable`, `/health`'s
/// `last_error` set as if the database were down), and ESC/OSC/BEL were stored and printed raw
/// by `fastgate keys list`.
async fn control_characters_in_admin_input_are_refused(fg: &Fastgate) {
    let code = |res: &Value| res["error"]["code"].as_str().unwrap_or_default().to_owned();
    for body in [
        serde_json::json!({"source_path": "a\u{0}b"}),
        serde_json::json!({"source_path": "a\u{1b}]0;pwned\u{7}"}),
        serde_json::json!({"source_path": "u", "name": "a\u{0}b"}),
        serde_json::json!({"source_path": "u", "name": "a\u{9b}c"}),
        serde_json::json!({"source_path": "u", "permissions": ["chat\u{0}"]}),
    ] {
        let (status, res) = send_json(
            fg.http
                .post(fg.url("/admin/keys"))
                .header("x-admin-token", ADMIN_TOKEN)
                .json(&body),
        )
        .await;
        assert_eq!(
            (status, code(&res)),
            (400, "bad_request".into()),
            "{body} {res}"
        );
    }
    let id = fg.create_key("u1").await["id"].as_str().unwrap().to_owned();
    for body in [
        serde_json::json!({"source_path": "a\u{0}b"}),
        serde_json::json!({"name": "a\u{0}b"}),
        serde_json::json!({"name": "\u{1b}[2J"}),
    ] {
        let (status, res) = send_json(
            fg.http
                .put(fg.url(&format!("/admin/keys/{id}")))
                .header("x-admin-token", ADMIN_TOKEN)
                .json(&body),
        )
        .await;
        assert_eq!(
            (status, code(&res)),
            (400, "bad_request".into()),
            "{body} {res}"
        );
    }
    for (method, path) in [
        ("GET", "/admin/logs?model=a%00b"),
        ("GET", "/admin/logs?source_path=a%00b"),
        ("GET", "/admin/logs?key_id=a%00b"),
        ("GET", "/admin/logs?path=/proxy%00"),
        ("GET", "/admin/logs?method=P%00ST"),
        ("GET", "/admin/logs?cursor=a%00b"),
        ("GET", "/admin/logs/a%00b"),
        ("GET", "/admin/logs/export?model=a%00b"),
        ("GET", "/admin/keys?source_path=a%00b"),
        ("GET", "/admin/keys?source_path=a%1Bb"),
        ("GET", "/admin/keys/a%00b"),
        ("DELETE", "/admin/keys/a%00b"),
        ("POST", "/admin/keys/a%00b/rotate"),
    ] {
        let (status, res) = send_json(
            fg.http
                .request(method.parse().unwrap(), fg.url(path))
                .header("x-admin-token", ADMIN_TOKEN),
        )
        .await;
        assert_eq!(
            (status, code(&res)),
            (400, "bad_request".into()),
            "{method} {path}: {res}"
        );
    }
    // Nothing of it looked like a database failure.
    let (status, h) = fg.health().await;
    assert_eq!(status, 200, "{h}");
    assert!(h["last_error"].is_null(), "{h}");
    // The key is unchanged and still listed.
    let (status, key) = send_json(
        fg.http
            .get(fg.url(&format!("/admin/keys/{id}")))
            .header("x-admin-token", ADMIN_TOKEN),
    )
    .await;
    assert_eq!((status, key["source_path"].as_str()), (200, Some("u1")));
}

#[tokio::test]
async fn control_characters_in_admin_input_are_refused_on_sqlite() {
    let up = Upstream::start().await;
    let fg = Fastgate::start(&up.url()).await;
    control_characters_in_admin_input_are_refused(&fg).await;
}

#[tokio::test]
async fn control_characters_in_admin_input_are_refused_on_postgres() {
    let Some(db) = PgTestDb::create("ctl").await else {
        return;
    };
    let up = Upstream::start().await;
    let fg = Fastgate::start_with(&up.url(), |y| set_database_url(y, &db.url), &[]).await;
    let (_, h) = fg.health().await;
    assert_eq!(h["database"]["backend"], "postgres", "{h}");
    control_characters_in_admin_input_are_refused(&fg).await;
    drop(fg);
    db.drop_database().await;
}

/// A key stored with control characters before they were refused (an import) is listed by
/// `fastgate keys list` with them escaped: no escape sequence reaches the operator's terminal.
#[tokio::test]
async fn keys_list_escapes_control_characters_of_stored_values() {
    let up = Upstream::start().await;
    let fg = Fastgate::start(&up.url()).await;
    let store = fg.open_store().await;
    let imported = fastgate_store::ImportedKey {
        id: "k_imported\u{1b}[31m".into(),
        secret: "fg_imported-secret-0123456789abcdefghijkl".into(),
        source_path: "team\u{1b}]0;pwned\u{7}\u{0}".into(),
        permissions: vec!["chat".into()],
        created_at: std::time::SystemTime::now(),
        expires_at: None,
        active: true,
        last_used_at: None,
        request_count: 0,
    };
    store.import_key(imported).await.unwrap();
    let out = fastgate_cmd()
        .arg("--config")
        .arg(&fg.config)
        .args(["keys", "list"])
        .current_dir(fg.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.stdout
            .iter()
            .any(|b| b.is_ascii_control() && *b != b'\n'),
        "a raw control character was printed: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("team\\u{1b}]0;pwned\\u{7}\\u{0}"), "{text}");
    assert!(text.contains("k_imported\\u{1b}[31m"), "{text}");
}

/// hyper refuses what it cannot parse before any service sees it, with an empty body; the client
/// gets the same JSON error as for every other refusal, also on a connection that served requests.
#[tokio::test]
async fn requests_the_http_parser_refuses_get_json_errors() {
    let up = Upstream::start().await;
    let fg = Fastgate::start(&up.url()).await;
    let key = fg.key("u").await;
    let bad_requests: [&[u8]; 4] = [
        b"G@T /health HTTP/1.1\r\nhost: a\r\n\r\n",
        b"GET /health HTTP/7.1\r\nhost: a\r\n\r\n",
        b"GET /health HTTP/1.1\r\nhost: a\r\nx-bad: a\x01b\r\n\r\n",
        b"GET /he alth HTTP/1.1\r\nhost: a\r\n\r\n",
    ];
    for bad in bad_requests {
        // On a fresh connection.
        let answer = raw_http(fg.port, bad).await;
        assert_eq!(raw_status(&answer), 400, "{answer}");
        assert_json_refusal(&answer, "bad_request");
        // After a proxied request and an admin request on the same connection.
        let body = chat_body(false);
        let chat = format!(
            "POST /proxy{BACKEND_PATH} HTTP/1.1\r\nhost: a\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let port = fg.port;
        let answer = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            sock.write_all(chat.as_bytes()).unwrap();
            assert_eq!(read_answer(&mut sock).unwrap().0, 200);
            sock.write_all(b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n")
                .unwrap();
            assert_eq!(read_answer(&mut sock).unwrap().0, 200);
            sock.write_all(bad).unwrap();
            read_answer_text(&mut sock).unwrap()
        })
        .await
        .unwrap();
        assert_eq!(raw_status(&answer), 400, "{answer}");
        assert_json_refusal(&answer, "bad_request");
    }
    // What a backend sends is passed on as it is, also when it looks like hyper's own answer:
    // an empty 400 (asked for with `x-test-empty`), and a body that is hyper's answer to the byte, sent after the
    // head and so written alone, once the response body (and its in-flight count) had ended.
    const LOOKALIKE: &str = "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sat, 28 Nov 2026 00:00:00 GMT\r\n\r\n";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let answers = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let empty = req.headers().contains_key("x-test-empty");
                        let body = if empty {
                            http_body_util::Either::Left(
                                http_body_util::Empty::<bytes::Bytes>::new(),
                            )
                        } else {
                            let later = futures_util::stream::once(async {
                                tokio::time::sleep(Duration::from_millis(150)).await;
                                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                    bytes::Bytes::from_static(LOOKALIKE.as_bytes()),
                                ))
                            });
                            http_body_util::Either::Right(http_body_util::StreamBody::new(later))
                        };
                        let mut res = hyper::Response::new(body);
                        if empty {
                            *res.status_mut() = hyper::StatusCode::BAD_REQUEST;
                        } else {
                            res.headers_mut()
                                .insert("content-length", LOOKALIKE.len().into());
                        }
                        Ok::<_, std::convert::Infallible>(res)
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, answers)
                    .await;
            });
        }
    });
    let fg = Fastgate::start(&backend).await;
    let key = fg.key("u").await;
    let port = fg.port;
    let (empty, lookalike, next) = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut ask = |extra: &str| {
            let req = format!(
                "POST /proxy{BACKEND_PATH} HTTP/1.1\r\nhost: a\r\nx-api-key: {key}\r\n{extra}content-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
            );
            sock.write_all(req.as_bytes()).unwrap();
            read_answer_text(&mut sock).unwrap()
        };
        let empty = ask("x-test-empty: 1\r\n");
        let lookalike = ask("");
        let next = ask("x-test-empty: 1\r\n");
        (empty, lookalike, next)
    })
    .await
    .unwrap();
    assert_eq!(raw_status(&empty), 400, "{empty}");
    assert!(
        empty.ends_with("\r\n\r\n"),
        "the backend's empty body: {empty}"
    );
    assert!(!empty.contains("fastgate_error"), "{empty}");
    assert_eq!(raw_status(&lookalike), 200, "{lookalike}");
    assert!(
        lookalike.ends_with(&format!("\r\n\r\n{LOOKALIKE}")),
        "{lookalike}"
    );
    // The connection is still in step: the next answer is the next request's.
    assert_eq!(raw_status(&next), 400, "{next}");
    assert!(!next.contains("fastgate_error"), "{next}");
}

#[tokio::test]
async fn oversized_bodies_413_invalid_json_forwarded_and_huge_headers_431() {
    let up = Upstream::start().await;
    let fg = Fastgate::start_with(
        &up.url(),
        |y| *y = y.replace("  timeout: 5\n", "  timeout: 5\n  max_body_bytes: 2048\n"),
        &[],
    )
    .await;
    let key = fg.key("u").await;

    // Over the limit with a Content-Length, and streamed without one.
    let big = "x".repeat(4096);
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("X-API-Key", &key)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let rid = request_id(&res);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_too_large");
    let row = fg.wait_audit(&rid).await;
    assert_eq!(row["status"], 413);
    // Refused after the key was checked: the record names the key that sent it.
    assert_eq!(row["source_path"], "u", "{row}");
    // Without a valid key the answer is 401, whatever the size: the limit is not told.
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("X-API-Key", "fg_not-a-key")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let chunks: Vec<Result<String, std::io::Error>> = (0..8).map(|_| Ok("y".repeat(512))).collect();
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("X-API-Key", &key)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    // Without a Content-Length the gateway streams the body and cuts it at the limit: the client
    // gets 413 (or its upload is cut), and the backend never receives more than the limit.
    if let Ok(res) = res {
        let status = res.status();
        let rid = request_id(&res);
        let text = res.text().await.unwrap_or_default();
        assert_eq!(status, 413, "{text}");
        assert_eq!(fg.wait_audit(&rid).await["status"], 413);
    }
    for seen in up.seen.lock().unwrap().iter() {
        assert!(
            seen.body.len() <= 2048,
            "the backend got {} bytes",
            seen.body.len()
        );
    }
    let before_json = up.count();

    // Invalid JSON: forwarded byte for byte, answered by the backend, audited.
    let junk = "{\"model\": \"gpt\", not json at all \u{1F600}";
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("X-API-Key", &key)
        .header("content-type", "application/json")
        .body(junk)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let rid = request_id(&res);
    assert_eq!(up.count(), before_json + 1);
    assert_eq!(up.last().body, junk.as_bytes());
    let row = fg.wait_audit(&rid).await;
    assert_eq!(row["outcome"], "completed");
    assert_eq!(row["request_bytes"], junk.len() as u64);

    // Huge headers: one enormous header, and very many small ones. Request heads are held to
    // 64 KiB (hyper's default buffer, ~400 KiB, let 100 KiB through).
    let fits = format!("x-api-key: {key}\r\nx-big: {}\r\n", "a".repeat(48 * 1024));
    let answer = raw_http(fg.port, &post_with(fg.port, fits.as_bytes(), "{}")).await;
    assert_eq!(
        raw_status(&answer),
        200,
        "{}",
        &answer[..answer.len().min(300)]
    );
    for size in [100 * 1024, 512 * 1024] {
        let huge = format!("x-big: {}\r\n", "a".repeat(size));
        let answer = raw_http(fg.port, &post_with(fg.port, huge.as_bytes(), "{}")).await;
        assert_eq!(
            raw_status(&answer),
            431,
            "{size}: {}",
            &answer[..answer.len().min(300)]
        );
        assert_json_refusal(&answer, "headers_too_large");
    }
    let huge = format!("x-big: {}\r\n", "a".repeat(512 * 1024));
    let answer = raw_http(fg.port, &post_with(fg.port, huge.as_bytes(), "{}")).await;
    assert_eq!(
        raw_status(&answer),
        431,
        "{}",
        &answer[..answer.len().min(300)]
    );
    let many: String = (0..500).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw_http(fg.port, &post_with(fg.port, many.as_bytes(), "{}")).await;
    assert_eq!(
        raw_status(&answer),
        431,
        "{}",
        &answer[..answer.len().min(300)]
    );
    assert_json_refusal(&answer, "headers_too_large");
    // The gateway is still fine afterwards.
    assert_eq!(fg.chat(&key, false).await.status(), 200);
}

#[tokio::test]
async fn bad_admin_input_gets_4xx_json_never_500() {
    let up = Upstream::start().await;
    let fg = Fastgate::start(&up.url()).await;
    let id = fg.create_key("u").await["id"].as_str().unwrap().to_owned();
    let huge = "9".repeat(40);
    let cases: Vec<(&str, String, Option<&str>, u16)> = vec![
        (
            "POST",
            "/admin/keys".into(),
            Some(r#"{"source_path": {"a": 1}}"#),
            400,
        ),
        (
            "POST",
            "/admin/keys".into(),
            Some(r#"{"source_path": ["u"]}"#),
            400,
        ),
        (
            "POST",
            "/admin/keys".into(),
            Some(r#"{"source_path":"u","expires_days":-5}"#),
            400,
        ),
        (
            "POST",
            "/admin/keys".into(),
            Some(r#"{"source_path":"u","expires_days":0}"#),
            400,
        ),
        (
            "POST",
            "/admin/keys".into(),
            Some(r#"{"source_path":"u","expires_days":"ten"}"#),
            400,
        ),
        (
            "POST",
            "/admin/keys".into(),
            Some(r#"{"source_path":"u","expires_days":1e400}"#),
            400,
        ),
        (
            "POST",
            "/admin/keys".into(),
            Some(r#"{"source_path":"u","permissions":"chat"}"#),
            400,
        ),
        (
            "POST",
            "/admin/keys".into(),
            Some(r#"{"source_path":"u","permissions":["a b"]}"#),
            400,
        ),
        (
            "POST",
            "/admin/keys".into(),
            Some(r#"{"source_path":""}"#),
            400,
        ),
        ("POST", "/admin/keys".into(), Some("not json"), 400),
        ("POST", "/admin/keys".into(), Some("[]"), 400),
        (
            "POST",
            "/admin/keys".into(),
            Some(r#"{"source_path":"u","expires_days":3,"never_expires":true}"#),
            400,
        ),
        ("GET", format!("/admin/keys?limit={huge}"), None, 400),
        ("GET", "/admin/keys?limit=-1".into(), None, 400),
        ("GET", "/admin/keys?offset=-1".into(), None, 400),
        ("GET", "/admin/keys?active=maybe".into(), None, 400),
        ("GET", "/admin/logs?limit=100000".into(), None, 400),
        ("GET", "/admin/logs?limit=0".into(), None, 400),
        (
            "GET",
            "/admin/logs?cursor=%27%3B%20DROP%20TABLE%20audit_log%3B--".into(),
            None,
            400,
        ),
        ("GET", "/admin/logs?since=yesterday".into(), None, 400),
        ("GET", "/admin/logs?status=6xx".into(), None, 400),
        ("GET", "/admin/logs?is_stream=perhaps".into(), None, 400),
        ("GET", "/admin/metrics?window=1y".into(), None, 400),
        ("GET", "/admin/keys/k_doesnotexist".into(), None, 404),
        (
            "GET",
            "/admin/keys/%27%20OR%20%271%27%3D%271".into(),
            None,
            404,
        ),
        (
            "PATCH",
            "/admin/keys/k_nope".into(),
            Some(r#"{"name":"x"}"#),
            404,
        ),
        (
            "PATCH",
            format!("/admin/keys/{id}"),
            Some(r#"{"expires_days":-1}"#),
            400,
        ),
        (
            "PATCH",
            format!("/admin/keys/{id}"),
            Some(r#"{"active":"yes"}"#),
            400,
        ),
        ("DELETE", "/admin/keys/k_nope".into(), None, 404),
        ("POST", "/admin/keys/k_nope/rotate".into(), Some("{}"), 404),
        (
            "POST",
            format!("/admin/keys/{id}/rotate?grace_seconds=-1"),
            None,
            400,
        ),
        (
            "POST",
            format!("/admin/keys/{id}/rotate?grace_seconds={huge}"),
            None,
            400,
        ),
        (
            "POST",
            format!("/admin/keys/{id}/rotate"),
            Some(r#"{"grace_second":300}"#),
            400,
        ),
        (
            "POST",
            format!("/admin/keys/{id}/rotate"),
            Some(r#"{"grace_seconds":2592001}"#),
            400,
        ),
        (
            "POST",
            format!("/admin/keys/{id}/rotate?grace_seconds=5"),
            Some(r#"{"grace_seconds":300}"#),
            400,
        ),
        ("POST", format!("/admin/keys/{id}/rotate"), Some("[1"), 400),
        ("GET", "/admin/logs/export?skip=10".into(), None, 400),
        ("GET", "/admin/logs/export?cursor=abc".into(), None, 400),
        (
            "GET",
            "/admin/logs/export?format=ndjson&offset=5".into(),
            None,
            400,
        ),
        ("GET", "/admin/logs/not-a-request-id".into(), None, 404),
        ("GET", "/admin/logs/%27%3B--".into(), None, 404),
        ("GET", "/admin/nothing-here".into(), None, 404),
    ];
    for (method, path, body, want) in &cases {
        let mut req = fg
            .http
            .request(method.parse().unwrap(), fg.url(path))
            .header("x-admin-token", ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(*b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        assert_eq!(status, *want, "{method} {path} {body:?} → {status} {text}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert!(v["error"]["code"].is_string(), "{method} {path}: {text}");
    }
    // SQL metacharacters in filters are just text: an empty answer, not an error.
    for q in [
        "/admin/keys?source_path=%27%20OR%201%3D1%20--",
        "/admin/logs?model=x%27%3B%20DROP%20TABLE%20keys%3B--&key_id=%25&source_path=%22",
    ] {
        let res = fg.admin_get(q).await;
        assert_eq!(res.status(), 200, "{q}");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["items"].as_array().unwrap().len(), 0, "{q}: {v}");
    }
    // Nothing was damaged.
    let v: Value = fg.admin_get("/admin/keys").await.json().await.unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
}

#[tokio::test]
async fn static_path_traversal_is_404_and_never_bypasses_the_admin_guard() {
    let up = Upstream::start().await;
    let fg = Fastgate::start(&up.url()).await;
    let paths = [
        "/admin/ui/../../etc/passwd",
        "/admin/ui/../../../../../../etc/passwd",
        "/admin/ui/%2e%2e/%2e%2e/etc/passwd",
        "/admin/ui/%2E%2E/%2E%2E/etc/passwd",
        "/admin/ui/..%2f..%2fetc%2fpasswd",
        "/admin/ui/..%2F..%2F..%2Fetc%2Fpasswd",
        "/admin/ui/%252e%252e/%252e%252e/etc/passwd",
        "/admin/ui/..%252f..%252fetc%252fpasswd",
        "/admin/ui/..\\..\\etc\\passwd",
        "/admin/ui/..%5c..%5cetc%5cpasswd",
        "/admin/ui/....//....//etc/passwd",
        "/admin/ui/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
        "/admin/ui/./../Cargo.toml",
        "/admin/ui//etc/passwd",
        "/admin/ui/%2e%2e/%2e%2e/Cargo.toml",
        "/admin/ui/index.html%00.js",
    ];
    for p in paths {
        let req = format!("GET {p} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
        let answer = raw_http(fg.port, req.as_bytes()).await;
        let status = raw_status(&answer);
        assert!(
            status == 404 || status == 400,
            "{p} → {status}: {}",
            &answer[..answer.len().min(300)]
        );
        assert!(!answer.contains("root:"), "{p} leaked /etc/passwd");
        assert!(!answer.contains("[workspace]"), "{p} leaked a file");
    }
    // The dashboard prefix must not be a way around the admin token.
    for p in [
        "/admin/ui/../keys",
        "/admin/ui/%2e%2e/keys",
        "/admin/ui/..%2fkeys",
        "/admin/ui/../config",
    ] {
        let req = format!("GET {p} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
        let answer = raw_http(fg.port, req.as_bytes()).await;
        let status = raw_status(&answer);
        assert!(
            status == 404 || status == 401 || status == 400,
            "{p} → {status}: {}",
            &answer[..answer.len().min(300)]
        );
        assert!(!answer.contains("\"items\""), "{p} bypassed the guard");
        assert!(!answer.contains("admin_token"), "{p} bypassed the guard");
    }
    // The real files are still served.
    let req = "GET /admin/ui/ HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n";
    assert_eq!(raw_status(&raw_http(fg.port, req.as_bytes()).await), 200);
}

/// Reads until the server closes the connection (or `within` passes); returns the bytes read and
/// whether the close was seen.
async fn read_until_closed(sock: &mut tokio::net::TcpStream, within: Duration) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0) | Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start().await;
    let fg = Fastgate::start_with(
        &up.url(),
        |y| *y = y.replacen("app:\n", "app:\n  header_read_timeout: 1\n", 1),
        &[],
    )
    .await;
    let key = fg.new_key("slow").await;

    // A client that connects and sends nothing is disconnected after ~1 s.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(10)).await;
    assert!(closed, "a connection that sent nothing was kept open");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A client that never finishes its headers (slowloris) is disconnected after ~1 s.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    slow.write_all(b"POST /proxy/x HTTP/1.1\r\nhost: a\r\nx-api-key: fg_")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(closed, "a connection trickling headers was kept open");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "closed after {took:?}, expected about 1 s"
    );

    // A complete request on a keep-alive connection is served; left idle, the connection is
    // closed after the same timeout.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    let body = chat_body(false);
    let req = format!(
        "POST /proxy{BACKEND_PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    idle.write_all(req.as_bytes()).await.unwrap();
    let (got, closed) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed, "an idle keep-alive connection was kept open");
    assert_eq!(up.count(), 1);
}

/// An HTTP/2 (h2c) connection whose client sends a PING every 300 ms; the handle resolves with
/// the connection's result when the server ends it.
async fn h2_connection(
    port: u16,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(300))
            .keep_alive_while_idle(true)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    (sender, tokio::spawn(conn))
}

fn h2_chat(
    port: u16,
    key: &str,
    stream: bool,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::post(format!("http://127.0.0.1:{port}/proxy{BACKEND_PATH}"))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(chat_body(
            stream,
        ))))
        .unwrap()
}

/// The client side of an HTTP/2 connection ends cleanly (GOAWAY), 0.5 to 6 s from now (the
/// tests' idle limit is 1 s, counted by the server from its side's end of the last response,
/// a little before the caller's clock started).
async fn closes_cleanly_after_the_idle_limit(
    closed: tokio::task::JoinHandle<hyper::Result<()>>,
    when: &str,
) {
    let quiet_since = std::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(6), closed)
        .await
        .unwrap_or_else(|_| panic!("an idle HTTP/2 connection was kept open ({when})"))
        .unwrap();
    assert!(result.is_ok(), "not a clean close ({when}): {result:?}");
    let took = quiet_since.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "closed {took:?} {when}, before the 1 s idle limit"
    );
}

#[tokio::test]
async fn idle_http2_connections_are_closed_but_requests_in_flight_finish() {
    use http_body_util::BodyExt;
    let idle = |y: &mut String| *y = y.replacen("app:\n", "app:\n  header_read_timeout: 1\n", 1);

    // One request over h2c, then no request (only the client's PINGs): the server ends the
    // connection cleanly (GOAWAY) after ~1-1.5 s. hyper's header timer does not apply to HTTP/2
    // once the preface is read.
    let up = Upstream::start().await;
    let fg = Fastgate::start_with(&up.url(), idle, &[]).await;
    let key = fg.new_key("h2").await;
    let (mut sender, closed) = h2_connection(fg.port).await;
    let res = sender
        .send_request(h2_chat(fg.port, &key, false))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    res.into_body().collect().await.unwrap();
    closes_cleanly_after_the_idle_limit(closed, "after one request, its client sending PINGs")
        .await;

    // A stream whose backend pauses 1.6 s between events (3.2 s in all, longer than the idle
    // limit) is not cut: a request in flight keeps its connection from being idle. The idle time
    // counts from the stream's end: the connection closes (cleanly) 1-1.5 s after it.
    let slow = FaultUpstream::start(Fault::Slow {
        events: 2,
        gap: Duration::from_millis(1600),
    })
    .await;
    let fg = Fastgate::start_with(&slow.url(), idle, &[]).await;
    let key = fg.new_key("h2-stream").await;
    let (mut sender, closed) = h2_connection(fg.port).await;
    let res = sender
        .send_request(h2_chat(fg.port, &key, true))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let rid = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("[DONE]"), "stream cut short: {text}");
    // Closed no sooner than the idle limit after the stream's end: it counted as in flight.
    closes_cleanly_after_the_idle_limit(closed, "after a stream longer than the limit").await;
    let row = fg.wait_audit(&rid).await;
    assert_eq!(row["outcome"], "completed", "{row}");
}

#[tokio::test]
async fn an_idle_http2_client_ignoring_the_shutdown_ping_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idle = |y: &mut String| *y = y.replacen("app:\n", "app:\n  header_read_timeout: 1\n", 1);
    let up = Upstream::start().await;
    let fg = Fastgate::start_with(&up.url(), idle, &[]).await;
    // A raw h2c client: preface and SETTINGS, the server's SETTINGS acknowledged, then it reads
    // every frame and answers none (so never the PING of the server's graceful shutdown, which
    // h2 waits for before its final GOAWAY).
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    sock.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut frames = Vec::new(); // (type, flags) of each frame the server sent
    let mut buf = Vec::new();
    let mut acked = false;
    let closed = loop {
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout(Duration::from_secs(8), sock.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            frames.push((buf[3], buf[4]));
            buf.drain(..9 + len);
        }
        if !acked && frames.contains(&(4, 0)) {
            sock.write_all(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
                .await
                .unwrap();
            acked = true;
        }
    };
    let took = started.elapsed();
    assert!(frames.contains(&(7, 0)), "no GOAWAY sent: {frames:?}");
    assert!(
        frames.contains(&(6, 0)),
        "no shutdown PING sent: {frames:?}"
    );
    assert!(
        closed,
        "the connection stayed open 8 s after the last frame: {frames:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "dropped after {took:?}, expected ~1.5-2 s"
    );
}

/// A request body that fails on the client's side is the client's doing: a client gone
/// mid-upload is audited `client_aborted`, a broken chunked body gets a 400 JSON answer, and
/// neither is logged or counted as an upstream failure (which would blame the backend in the
/// error rate).
#[tokio::test]
async fn a_failed_upload_is_the_clients_failure_not_the_upstreams() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start().await;
    let fg = Fastgate::start(&up.url()).await;
    let key = fg.key("u").await;

    // Gone mid-upload: 50,001 of 100,000 announced bytes, then the connection closes.
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    let head = format!(
        "POST /proxy{BACKEND_PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\nx-request-id: gone-mid-upload\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&[b' '; 50_001]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(sock);
    let row = fg.wait_audit("gone-mid-upload").await;
    assert_eq!(row["outcome"], "client_aborted", "{row}");
    assert_eq!(row["error_code"], "request_body_error", "{row}");

    // A broken chunked body from a client that waits for the answer: 400 JSON.
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    let req = format!(
        "POST /proxy{BACKEND_PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\nx-request-id: broken-chunks\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{{\"a\":\r\nzz\r\n"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let (answer, _) = read_until_closed(&mut sock, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"request_body_error\""), "{answer}");
    let row = fg.wait_audit("broken-chunks").await;
    assert_eq!(row["status"], 400, "{row}");
    assert_eq!(row["outcome"], "client_aborted", "{row}");

    let logs = fg.logs();
    assert!(
        !logs
            .lines()
            .any(|l| l.contains(" WARN ") || l.contains(" ERROR ")),
        "{logs}"
    );
    let (_, h) = fg.health().await;
    assert!(h["last_error"].is_null(), "{h}");
}

/// The response timeout is the backend's: it counts from the end of the client's upload, so a
/// body uploaded slowly (here 2.4 s of it against a 1 s timeout) is answered, not cut at 504;
/// an upload that stops making progress for the timeout is the client's stall: 408 JSON,
/// audited `client_aborted`.
#[tokio::test]
async fn a_slow_upload_is_not_the_backends_timeout_but_a_stalled_one_is_408() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start().await;
    let fg = Fastgate::start_with(
        &up.url(),
        |y| *y = y.replace("  timeout: 5\n", "  timeout: 1\n"),
        &[],
    )
    .await;
    let key = fg.key("u").await;
    let head = |rid: &str, len: usize| {
        format!(
            "POST /proxy{BACKEND_PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\nx-request-id: {rid}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
        )
    };

    // 4,000 bytes in eight pieces 300 ms apart.
    let body = format!(r#"{{"model":"m","pad":"{}"}}"#, "x".repeat(4_000 - 22));
    assert_eq!(body.len(), 4_000);
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    sock.write_all(head("slow-upload", body.len()).as_bytes())
        .await
        .unwrap();
    for piece in body.as_bytes().chunks(500) {
        sock.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (answer, _) = read_until_closed(&mut sock, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(up.last().body.len(), 4_000);
    let row = fg.wait_audit("slow-upload").await;
    assert_eq!(row["outcome"], "completed", "{row}");

    // 100 of 1,000 bytes, then nothing (the connection stays open).
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    sock.write_all(head("stalled-upload", 1_000).as_bytes())
        .await
        .unwrap();
    sock.write_all(&[b' '; 100]).await.unwrap();
    let t = std::time::Instant::now();
    let (answer, _) = read_until_closed(&mut sock, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_body_timeout\""), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let row = fg.wait_audit("stalled-upload").await;
    assert_eq!(row["outcome"], "client_aborted", "{row}");
    assert_eq!(row["error_code"], "request_body_timeout", "{row}");
}

/// One HTTP/1.1 answer with a `content-length` read from a blocking socket: status and body.
fn read_answer(sock: &mut std::net::TcpStream) -> std::io::Result<(u16, String)> {
    let answer = read_answer_text(sock)?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((raw_status(&answer), body.to_owned()))
}

/// One HTTP/1.1 answer with a `content-length` read from a blocking socket, head and body.
fn read_answer_text(sock: &mut std::net::TcpStream) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned());
            }
        }
        let n = sock.read(&mut byte)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&byte[..n]);
    }
}

/// A client that writes its whole request before it reads (Python's `http.client`, hence
/// `requests`) and is refused before its body was read (wrong key, unknown route, body over the
/// limit) gets the JSON answer, not a broken pipe, and keeps its connection for the next request:
/// the gateway reads the refused body to its end. A client that asked `Expect: 100-continue` is
/// answered at once, without being made to send the body.
#[tokio::test]
async fn a_refused_upload_is_read_so_the_client_gets_its_answer_and_keeps_its_connection() {
    let up = Upstream::start().await;
    let fg = Fastgate::start_with(
        &up.url(),
        |y| {
            *y = y.replace(
                "  timeout: 5\n",
                "  timeout: 5\n  max_body_bytes: 1000000\n",
            )
        },
        &[],
    )
    .await;
    let key = fg.key("u").await;
    let port = fg.port;
    let cases = [
        (
            "/proxy/miniai/v2/chat/completions",
            "fg_wrong",
            600_000,
            401,
        ),
        ("/proxy/nowhere", key.as_str(), 600_000, 404),
        (
            "/proxy/miniai/v2/chat/completions",
            key.as_str(),
            1_500_000,
            413,
        ),
        (
            "/proxy/miniai/v2/chat/completions",
            key.as_str(),
            600_000,
            200,
        ),
    ];
    for (path, key, len, want) in cases {
        let key = key.to_owned();
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            for round in 0..2 {
                let head = format!(
                    "POST {path} HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
                );
                sock.write_all(head.as_bytes()).unwrap();
                let body = format!("{{\"model\":\"m\",\"pad\":\"{}\"}}", "x".repeat(len - 22));
                assert_eq!(body.len(), len);
                sock.write_all(body.as_bytes())
                    .unwrap_or_else(|e| panic!("{path} {want} round {round}: upload cut: {e}"));
                let (status, answer) = read_answer(&mut sock)
                    .unwrap_or_else(|e| panic!("{path} {want} round {round}: no answer: {e}"));
                assert_eq!(status, want, "{path} round {round}: {answer}");
                if want != 200 {
                    let answer: Value = serde_json::from_str(&answer).unwrap();
                    assert!(answer["error"]["code"].is_string(), "{answer}");
                }
            }
            // And an ordinary request on the same connection after them.
            sock.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
            let (status, _) = read_answer(&mut sock).unwrap();
            assert_eq!(status, 200, "{path} {want}: /health after");
        })
        .await
        .unwrap();
    }

    // A body declared far over the limit (50 MB against 1 MB: more than twice it) is not read:
    // the gateway would otherwise discard it at full speed for 30 s. The upload fails.
    let upload = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let head = format!(
            "POST /proxy{BACKEND_PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: 50000000\r\n\r\n"
        );
        sock.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b' '; 1 << 20];
        (0..50).try_for_each(|_| sock.write_all(&chunk))
    })
    .await
    .unwrap();
    assert!(upload.is_err(), "50 MB of a refused upload were read");
    // Without a declared length (chunked, wrong key): read up to twice the limit, then cut.
    let upload = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let head = format!(
            "POST /proxy{BACKEND_PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: fg_wrong\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        sock.write_all(head.as_bytes()).unwrap();
        let mut chunk = b"100000\r\n".to_vec();
        chunk.extend_from_slice(&[b' '; 1 << 20]);
        chunk.extend_from_slice(b"\r\n");
        (0..50).try_for_each(|_| sock.write_all(&chunk))
    })
    .await
    .unwrap();
    assert!(
        upload.is_err(),
        "50 MB of a refused chunked upload were read"
    );

    // `Expect: 100-continue` and a wrong key: the 401 comes at once, no body is asked for.
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        // Long enough for a loaded machine; a server waiting for the body never answers.
        sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        sock.write_all(
            format!("POST /proxy{BACKEND_PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: fg_wrong\r\nexpect: 100-continue\r\ncontent-length: 500000\r\n\r\n").as_bytes(),
        )
        .unwrap();
        read_answer(&mut sock)
    })
    .await
    .unwrap();
    assert_eq!(answer.unwrap().0, 401);
}

/// Over HTTP/2 a refused upload is read too: the stream ends normally after the 401 instead of
/// being reset (`RST_STREAM(NO_ERROR)`, which curl and httpx report as a stream error instead
/// of the answer).
#[tokio::test]
async fn a_refused_http2_upload_is_read_and_its_stream_is_not_reset() {
    let up = Upstream::start().await;
    let fg = Fastgate::start(&up.url()).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    const LEN: usize = 3 << 20;
    // Also with `Expect: 100-continue`: hyper sends no 100 over HTTP/2, and an h2 client sends
    // the body after its wait.
    for expect in [false, true] {
        let mut req =
            http::Request::post(format!("http://127.0.0.1:{}/proxy{BACKEND_PATH}", fg.port))
                .header("x-api-key", "fg_wrong")
                .header("content-length", LEN);
        if expect {
            req = req.header("expect", "100-continue");
        }
        let (answer, mut upload) = client.send_request(req.body(()).unwrap(), false).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.status(), 401);
        let mut body = answer.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        let json: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(json["error"]["code"], "invalid_api_key", "{json}");
        // The whole body goes through the server's flow-control window (1 MiB or less): it
        // only can if the server keeps reading it.
        let mut sent = 0;
        let upload_done = async {
            while sent < LEN {
                upload.reserve_capacity(LEN - sent);
                let room = std::future::poll_fn(|cx| upload.poll_capacity(cx))
                    .await
                    .expect("the stream was closed")
                    .expect("the stream was reset");
                let n = room.min(LEN - sent);
                if n == 0 {
                    continue;
                }
                sent += n;
                upload
                    .send_data(bytes::Bytes::from(vec![b' '; n]), sent == LEN)
                    .expect("the stream was reset");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), upload_done)
            .await
            .unwrap_or_else(|_| panic!("the upload stalled (expect: {expect})"));
        // The connection serves the next request, and nothing reset the stream meanwhile.
        let next = http::Request::get(format!("http://127.0.0.1:{}/health", fg.port))
            .body(())
            .unwrap();
        let (next, _) = client.send_request(next, true).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.status(), 200);
        let reset = std::future::poll_fn(|cx| std::task::Poll::Ready(upload.poll_reset(cx))).await;
        assert!(
            reset.is_pending(),
            "the stream was reset (expect: {expect}): {reset:?}"
        );
    }
}

/// A refused upload still being read does not hold up a shutdown (it is read for up to 30 s
/// otherwise).
#[tokio::test]
async fn a_lingering_upload_does_not_hold_up_shutdown() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start().await;
    let mut fg = Fastgate::start(&up.url()).await;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    let head = format!(
        "POST /proxy{BACKEND_PATH} HTTP/1.1\r\nhost: x\r\nx-api-key: fg_wrong\r\ncontent-length: 9000000\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = sock.into_split();
    let trickle = tokio::spawn(async move {
        // 10 KB every 100 ms: never stalls for the 5 s that ends a lingering read.
        for _ in 0..300 {
            if write.write_all(&[b' '; 10_000]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // The 401 is out: the body is being read and thrown away now.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = read.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no answer");
    assert!(
        answer.starts_with(b"HTTP/1.1 401"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !trickle.is_finished(),
        "the upload was cut before the shutdown"
    );
    fg.signal("TERM");
    let t = std::time::Instant::now();
    let code = fg.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t.elapsed()
    );
    trickle.abort();
}

/// A chunked upload over `max_body_bytes` is the client's 413, not a backend failure: no WARN
/// "upstream request failed" (which is throttled to a line a second, so each one also hid a
/// real backend failure), audited `rejected`, and not counted in `/health`'s upstream failures.
#[tokio::test]
async fn an_oversized_chunked_upload_is_413_without_blaming_the_backend() {
    let up = Upstream::start().await;
    let fg = Fastgate::start_with(
        &up.url(),
        |y| {
            *y = y.replace(
                "  timeout: 5\n",
                "  timeout: 5\n  max_body_bytes: 1048576\n",
            )
        },
        &[],
    )
    .await;
    let key = fg.key("u").await;
    for round in 0..3 {
        // 2 MiB in 64 KiB chunks, without a Content-Length.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..32).map(|_| Ok(vec![b'x'; 64 * 1024])).collect();
        let res = fg
            .http
            .post(fg.proxy_url())
            .header("X-API-Key", &key)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap();
        let status = res.status();
        let rid = request_id(&res);
        let text = res.text().await.unwrap_or_default();
        assert_eq!(status, 413, "round {round}: {text}");
        let row = fg.wait_audit(&rid).await;
        assert_eq!(row["status"], 413, "{row}");
        assert_eq!(row["outcome"], "rejected", "{row}");
        assert_eq!(row["error_code"], "request_too_large", "{row}");
    }
    let (_, health) = fg.health().await;
    assert_eq!(health["upstream"]["failures"], 0, "{health}");
    let logs = fg.logs();
    let warned: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("fastgate_layer::forward"))
        .collect();
    assert!(warned.is_empty(), "{warned:#?}");
}

/// A GET with a body and no Content-Length (an HTTP/2 client's: HEADERS without END_STREAM,
/// then DATA) reaches the backend with its body. hyper's HTTP/1.1 client sends a GET body of
/// unknown length as no body at all unless the request says `Transfer-Encoding: chunked`: the
/// backend answered without the bytes, and the client got a normal answer.
#[tokio::test]
async fn an_http2_get_with_a_body_reaches_the_backend_with_it() {
    let up = Upstream::start().await;
    let fg = Fastgate::start(&up.url()).await;
    let key = fg.key("u").await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", fg.port))
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    const BODY: &str = r#"{"model":"m","input":"a GET with a body"}"#;
    let req = http::Request::get(format!("http://127.0.0.1:{}/proxy{BACKEND_PATH}", fg.port))
        .header("x-api-key", &key)
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (answer, mut upload) = client.send_request(req, false).unwrap();
    upload
        .send_data(bytes::Bytes::from_static(BODY.as_bytes()), true)
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    while let Some(chunk) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.unwrap().len());
    }
    let seen = up.last();
    assert_eq!(seen.body, BODY.as_bytes(), "{:?}", seen.headers);
}
