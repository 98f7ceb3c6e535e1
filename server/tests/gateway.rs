//! Black-box tests of the real `fastgate` binary: M-FastGate's README flows as written.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Instant;

use common::*;
use futures_util::StreamExt;

#[tokio::test]
async fn seed_readme_flows_work_unchanged() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;

    // Create keys as in the README (token in the query string).
    let user1 = fg.create_key("user1").await;
    let user2 = fg.create_key("user2").await;
    let key1 = user1["api_key"].as_str().unwrap().to_owned();
    let key2 = user2["api_key"].as_str().unwrap().to_owned();
    assert!(key1.starts_with("fg_") && key1.len() >= 40, "{key1}");
    assert_eq!(user1["source_path"], "user1");
    assert_eq!(user1["permissions"], serde_json::json!(["chat"]));

    // user1: streaming request with X-API-Key.
    let started = Instant::now();
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("X-API-Key", &key1)
        .header("Content-Type", "application/json")
        .header("X-Custom-Trace", "keep-me")
        .body(chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert!(res.headers().contains_key("x-request-id"));
    let mut stream = res.bytes_stream();
    let mut got = Vec::new();
    let mut first_at = None;
    while let Some(chunk) = stream.next().await {
        first_at.get_or_insert_with(|| started.elapsed());
        got.extend_from_slice(&chunk.unwrap());
    }
    let ended_at = started.elapsed();
    assert_eq!(
        String::from_utf8(got).unwrap(),
        full_sse(),
        "stream bytes changed"
    );
    // The first event arrives long before the stream ends (no buffering): the upstream sends it
    // at once and the rest over four gaps. Measured between the two, not against the clock, so a
    // slow machine cannot fail it.
    let first_at = first_at.unwrap();
    assert!(
        ended_at - first_at >= SSE_GAP * 3,
        "first byte after {first_at:?}, end after {ended_at:?}"
    );
    let seen = upstream.last();
    assert_eq!(seen.path, BACKEND_PATH);
    assert_eq!(seen.headers["authorization"], format!("Bearer {REAL_KEY}"));
    assert!(seen.headers.get("x-api-key").is_none());
    assert_eq!(seen.headers["x-custom-trace"], "keep-me");

    // user2: plain request with Authorization: Bearer.
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("Authorization", format!("Bearer {key2}"))
        .header("Content-Type", "application/json")
        .header("X-Forwarded-For", "10.1.2.3")
        .header("OpenAI-Organization", "org-chosen-by-the-user")
        .header("OpenAI-Project", "proj_chosen_by_the_user")
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), JSON_REPLY);
    let seen = upstream.last();
    assert_eq!(seen.headers["authorization"], format!("Bearer {REAL_KEY}"));
    assert!(
        !format!("{:?}", seen.headers).contains(&key2),
        "client key leaked upstream"
    );
    assert!(seen.headers.get("x-forwarded-for").is_none());
    // The user does not pick the organization or project the shared real key bills.
    assert!(seen.headers.get("openai-organization").is_none());
    assert!(seen.headers.get("openai-project").is_none());

    // No key, bad key.
    let res = fg
        .http
        .post(fg.proxy_url())
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_api_key");
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("X-API-Key", "fg_not-a-real-key")
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(
        upstream.count(),
        2,
        "rejected requests must not reach the backend"
    );

    // List keys (README: GET /admin/keys?token=...).
    let res = fg
        .http
        .get(fg.url(&format!("/admin/keys?token={ADMIN_TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let keys: serde_json::Value = res.json().await.unwrap();
    assert_eq!(keys["total"], 2);
    assert!(
        !keys.to_string().contains(&key1),
        "listing must not show full keys"
    );

    // Logs (README: GET /admin/logs?token=...&limit=10): both requests and both rejections.
    let items = fg.wait_logs("", |items| items.len() >= 4).await;
    let stream_row = items
        .iter()
        .find(|r| r["is_stream"] == true)
        .expect("stream row");
    assert_eq!(stream_row["source_path"], "user1");
    assert_eq!(stream_row["status"], 200);
    assert_eq!(stream_row["outcome"], "completed");
    assert_eq!(stream_row["model"], "gpt-3.5-turbo");
    assert_eq!(stream_row["response_bytes"], full_sse().len() as u64);
    assert_eq!(stream_row["total_tokens"], 12);
    let plain_row = items
        .iter()
        .find(|r| r["source_path"] == "user2")
        .expect("user2 row");
    assert_eq!(plain_row["is_stream"], false);
    assert_eq!(plain_row["total_tokens"], 7);
    assert_eq!(plain_row["client_ip"], "127.0.0.1");
    let rejected: Vec<_> = items.iter().filter(|r| r["status"] == 401).collect();
    assert_eq!(rejected.len(), 2);
    assert!(rejected.iter().all(|r| r["outcome"] == "rejected"));
    let res = fg
        .http
        .get(fg.url(&format!("/admin/logs?token={ADMIN_TOKEN}&limit=10")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // One record by request id.
    let rid = stream_row["request_id"].as_str().unwrap();
    let one: serde_json::Value = fg
        .admin_get(&format!("/admin/logs/{rid}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["request_id"], rid);

    // Metrics (README: GET /admin/metrics?token=...).
    let res = fg
        .http
        .get(fg.url(&format!("/admin/metrics?token={ADMIN_TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let m: serde_json::Value = res.json().await.unwrap();
    assert_eq!(m["total_requests"], 4);
    assert_eq!(m["success_count"], 2);
    assert_eq!(m["stream_requests"], 1);
    assert_eq!(m["total_tokens"], 19);
    assert_eq!(m["total_keys"], 2);

    // No secret in the logs or the database.
    let logs = fg.logs();
    let db = std::fs::read(fg.db_path()).unwrap();
    let wal = std::fs::read(fg.db_path().with_extension("db-wal")).unwrap_or_default();
    for secret in [key1.as_str(), key2.as_str(), REAL_KEY, ADMIN_TOKEN] {
        assert!(!logs.contains(secret), "secret in logs");
        let needle = secret.as_bytes();
        for hay in [&db, &wal] {
            assert!(
                !hay.windows(needle.len()).any(|w| w == needle),
                "secret in the database"
            );
        }
    }
}

#[tokio::test]
async fn disabling_a_key_stops_it_at_once() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let created = fg.create_key("user1").await;
    let key = created["api_key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    let call = || {
        fg.http
            .post(fg.proxy_url())
            .header("X-API-Key", key)
            .body(chat_body(false))
            .send()
    };
    assert_eq!(call().await.unwrap().status(), 200);
    let res = fg
        .http
        .patch(fg.url(&format!("/admin/keys/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "disabled");
    let unknown = fg
        .http
        .post(fg.proxy_url())
        .header("X-API-Key", "fg_neverIssuedAtAll0123456789")
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401);
    let unknown_rid = request_id(&unknown);
    let unknown_body = unknown.text().await.unwrap();
    // A disabled key gets the unknown key's answer, to the byte; its audit record names the key
    // (an admin sees who still uses it), the unknown one's names none.
    let refused = call().await.unwrap();
    assert_eq!(refused.status(), 401);
    let refused_rid = request_id(&refused);
    assert_eq!(refused.text().await.unwrap(), unknown_body);
    let row = fg.wait_audit(&refused_rid).await;
    assert_eq!(row["key_id"], id, "{row}");
    assert_eq!(row["source_path"], "user1", "{row}");
    assert_eq!(row["error_code"], "invalid_api_key", "{row}");
    let row = fg.wait_audit(&unknown_rid).await;
    assert!(row["key_id"].is_null(), "{row}");

    // Rotation: the new secret works, the old one stops (no grace).
    let res = fg
        .http
        .patch(fg.url(&format!("/admin/keys/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"active": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(call().await.unwrap().status(), 200);
    let rotated: serde_json::Value = fg
        .http
        .post(fg.url(&format!("/admin/keys/{id}/rotate")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_key = rotated["api_key"].as_str().unwrap();
    assert_ne!(new_key, key);
    assert_eq!(call().await.unwrap().status(), 401);
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("X-API-Key", new_key)
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Delete: gone at once.
    let res = fg
        .http
        .delete(fg.url(&format!("/admin/keys/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    // 200 with a message, as M-FastGate answered (its scripts check for 200).
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["message"], "API key deleted", "{body}");
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("X-API-Key", new_key)
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        fg.admin_get(&format!("/admin/keys/{id}")).await.status(),
        404
    );
}

#[tokio::test]
async fn cli_keys_work_on_the_same_database_while_the_server_runs() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let out = fastgate_cmd()
        .args(["--config"])
        .arg(&fg.config)
        .args([
            "keys",
            "create",
            "--source-path",
            "cli-user",
            "--permission",
            "chat",
            "--expires-days",
            "30",
            "--name",
            "from cli",
        ])
        .current_dir(fg.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("fg_"), "{key}");
    // The expiry is said, as M-FastGate's create_api_keys.py printed it; never the key.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("(expires 20"), "{said}");
    assert!(!said.contains(&key), "{said}");
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("X-API-Key", &key)
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let out = fastgate_cmd()
        .arg("--config")
        .arg(&fg.config)
        .args(["keys", "list", "--json"])
        .current_dir(fg.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["source_path"], "cli-user");
    // Times as the admin API writes them: a 30-day expiry, 30 days after the creation.
    let time = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{v}: {e}"))
    };
    // The CLI computes the expiry a moment before the store stamps the creation.
    let lifetime = time(&list[0]["expires_at"]) - time(&list[0]["created_at"]);
    let off = (lifetime - chrono::TimeDelta::days(30)).num_seconds().abs();
    assert!(off < 60, "{}", list[0]);
    assert!(list[0]["last_used_at"].is_string() || list[0]["last_used_at"].is_null());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&key));

    // Every key, past the first page of 1,000 (it stopped there, silently with --json).
    for chunk in [50; 20].into_iter().chain([1]) {
        let created =
            futures_util::future::join_all((0..chunk).map(|_| fg.create_key("many"))).await;
        assert!(created.iter().all(|k| k["id"].is_string()));
    }
    let (ok, out, err) = cli(&fg, &["keys", "list", "--source-path", "many", "--json"]);
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1_001));
    assert!(err.contains("1001 key(s)"), "{err}");
    let (ok, out, _) = cli(&fg, &["keys", "list", "--source-path", "many"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 1 + 1_001);
}

/// `fastgate <args>` on `fg`'s config and database: (success, stdout, stderr).
fn cli(fg: &Fastgate, args: &[&str]) -> (bool, String, String) {
    let out = fastgate_cmd()
        .arg("--config")
        .arg(&fg.config)
        .args(args)
        .current_dir(fg.dir.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The stored permissions of the keys of `source_path`, through `fastgate keys list --json`.
fn cli_permissions(fg: &Fastgate, source_path: &str) -> Vec<serde_json::Value> {
    let (ok, out, err) = cli(
        fg,
        &["keys", "list", "--source-path", source_path, "--json"],
    );
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|k| k["permissions"].clone())
        .collect()
}

/// A key created without permissions (`POST /admin/keys`, `fastgate keys create`) gets the one
/// the unified endpoint needs, `api_gateway.permission` (here `gpt`), not a fixed `chat` that
/// the endpoint would refuse; after a SIGHUP, the reloaded value.
#[tokio::test]
async fn keys_created_without_permissions_get_the_unified_endpoints_permission() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start_with(
        &upstream.url(),
        |yaml| {
            assert!(yaml.contains("  timeout: 5\n"));
            *yaml = yaml.replace("  timeout: 5\n", "  timeout: 5\n  permission: \"gpt\"\n");
        },
        &[],
    )
    .await;
    let fg = &fg;
    let create = || async {
        let res = fg
            .http
            .post(fg.url(&format!("/admin/keys?token={ADMIN_TOKEN}")))
            .json(&serde_json::json!({ "source_path": "u" }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json::<serde_json::Value>().await.unwrap()
    };
    let call = |key: String| async move { fg.chat(&key, false).await.status() };

    let created = create().await;
    assert_eq!(created["permissions"], serde_json::json!(["gpt"]));
    assert_eq!(call(created["api_key"].as_str().unwrap().into()).await, 200);

    let (ok, secret, err) = cli(fg, &["keys", "create", "--source-path", "cli"]);
    assert!(ok, "{err}");
    assert_eq!(cli_permissions(fg, "cli"), [serde_json::json!(["gpt"])]);
    assert_eq!(call(secret).await, 200);

    // A reload changes the permission: new keys get the new one.
    let yaml = std::fs::read_to_string(&fg.config).unwrap();
    assert!(yaml.contains("permission: \"gpt\""));
    std::fs::write(
        &fg.config,
        yaml.replace("permission: \"gpt\"", "permission: \"llm\""),
    )
    .unwrap();
    fg.signal("HUP");
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let cfg: serde_json::Value = fg.admin_get("/admin/config").await.json().await.unwrap();
        if cfg["api_gateway"]["permission"] == "llm" {
            break;
        }
        assert!(Instant::now() < deadline, "not reloaded:\n{}", fg.logs());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let created = create().await;
    assert_eq!(created["permissions"], serde_json::json!(["llm"]));
    assert_eq!(call(created["api_key"].as_str().unwrap().into()).await, 200);
    let (ok, secret, err) = cli(fg, &["keys", "create", "--source-path", "cli2"]);
    assert!(ok, "{err}");
    assert_eq!(cli_permissions(fg, "cli2"), [serde_json::json!(["llm"])]);
    assert_eq!(call(secret).await, 200);
}

/// `fastgate keys create --permission` takes a comma-separated list (and repeats), trimmed and
/// without duplicates, and refuses what the admin API refuses, with its message, creating
/// nothing.
#[tokio::test]
async fn cli_permissions_are_split_trimmed_and_checked_as_the_api_does() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let (ok, secret, err) = cli(
        &fg,
        &[
            "keys",
            "create",
            "--source-path",
            "multi",
            "--permission",
            "chat, embed",
            "--permission",
            "x:y,chat",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        cli_permissions(&fg, "multi"),
        [serde_json::json!(["chat", "embed", "x:y"])]
    );
    assert_eq!(fg.chat(&secret, false).await.status(), 200);

    // The admin API's answer to a bad permission, and its message.
    let res = fg
        .http
        .post(fg.url(&format!("/admin/keys?token={ADMIN_TOKEN}")))
        .json(&serde_json::json!({ "source_path": "bad", "permissions": ["bad perm!"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with("permissions must be"), "{message}");
    for bad in ["bad perm!", "chat,bad perm!", "chat,", ""] {
        let (ok, out, err) = cli(
            &fg,
            &[
                "keys",
                "create",
                "--source-path",
                "bad",
                "--permission",
                bad,
            ],
        );
        assert!(!ok, "{bad:?} accepted: {out}");
        assert!(out.is_empty(), "{bad:?}: {out}");
        assert!(err.contains(&message), "{bad:?}: {err}");
    }
    assert!(cli_permissions(&fg, "bad").is_empty(), "a key was created");
}

/// `fastgate keys revoke|enable|delete|rotate` from another process reach the running server
/// (through the store's change watermark, polled every second).
#[tokio::test]
async fn cli_key_changes_reach_the_running_server() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let cli = |args: &[&str]| cli(&fg, args);
    let (ok, secret, stderr) = cli(&["keys", "create", "--source-path", "cli-user"]);
    assert!(ok, "{stderr}");
    let id = stderr
        .split_whitespace()
        .find(|w| w.starts_with("k_"))
        .unwrap()
        .to_owned();
    // The status the proxy answers for `key`, once it settles on `want` (within 5 s).
    let settles_on = |key: String, want: u16| {
        let fg = &fg;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let got = fg.chat(&key, false).await.status().as_u16();
                if got == want {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "still {got}, not {want}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    settles_on(secret.clone(), 200).await;
    assert_eq!(cli(&["keys", "revoke", &id]).1, format!("revoked {id}"));
    settles_on(secret.clone(), 401).await;
    assert_eq!(cli(&["keys", "enable", &id]).1, format!("enabled {id}"));
    settles_on(secret.clone(), 200).await;
    // A grace period beyond the admin API's 30 days is refused (a huge one panicked).
    let (ok, _, stderr) = cli(&[
        "keys",
        "rotate",
        &id,
        "--grace-seconds",
        "18446744073709551615",
    ]);
    assert!(!ok);
    assert!(stderr.contains("--grace-seconds"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (ok, rotated, stderr) = cli(&["keys", "rotate", &id]);
    assert!(ok, "{stderr}");
    settles_on(secret.clone(), 401).await;
    settles_on(rotated.clone(), 200).await;
    assert_eq!(cli(&["keys", "delete", &id]).1, format!("deleted {id}"));
    let rotated_again = rotated.clone();
    settles_on(rotated, 401).await;
    assert_eq!(
        fg.admin_get(&format!("/admin/keys/{id}")).await.status(),
        404
    );
    let (ok, _, stderr) = cli(&["keys", "delete", &id]);
    assert!(!ok);
    assert!(stderr.contains("no key has this id"), "{stderr}");
    assert!(!stderr.contains(&secret));
    // A secret given where the id belongs is not repeated in the error.
    for cmd in ["delete", "revoke", "rotate"] {
        let (ok, _, stderr) = cli(&["keys", cmd, &rotated_again]);
        assert!(!ok, "{cmd}");
        assert!(stderr.contains("no key has this id"), "{cmd}: {stderr}");
        assert!(
            !stderr.contains(&rotated_again),
            "{cmd} printed the secret: {stderr}"
        );
    }
}

#[tokio::test]
async fn unknown_paths_and_bad_admin_input_get_json_errors() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;

    let res = fg
        .http
        .post(fg.url("/proxy/nope"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{body}");

    // Paths FastAPI routed: a trailing slash (it redirected), a percent-encoded letter (it
    // decoded); a second slash finds nothing.
    let key = fg.new_key("slash").await;
    for (path, status, reached) in [
        (format!("/proxy{BACKEND_PATH}/"), 200, 1),
        (
            format!("/proxy{}", BACKEND_PATH.replace("chat", "%63hat")),
            200,
            2,
        ),
        (format!("/proxy{BACKEND_PATH}//"), 404, 2),
    ] {
        let res = fg
            .http
            .post(fg.url(&path))
            .header("X-API-Key", &key)
            .body(chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{path}");
        assert_eq!(upstream.count(), reached, "{path}");
    }

    let res = fg.http.get(fg.url("/no/such/page")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "fastgate_error");

    // `/` itself is not unknown: it says what this server is.
    let res = fg.http.get(fg.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["name"], "FastGate");
    assert_eq!(body["docs"], "/docs");
    let res = fg.http.head(fg.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    for (path, status) in [
        ("/admin/logs?limit=100000000000", 400),
        ("/admin/logs?limit=abc", 400),
        ("/admin/logs?status=9xx", 400),
        ("/admin/logs?since=yesterday", 400),
        (
            "/admin/logs?model=%27%3B%20DROP%20TABLE%20audit_log%3B--",
            200,
        ),
        ("/admin/keys?active=maybe", 400),
        ("/admin/metrics?window=2y", 400),
        ("/admin/keys/k_nonexistent", 404),
        ("/admin/logs/nonexistent", 404),
    ] {
        let res = fg.admin_get(path).await;
        assert_eq!(res.status(), status, "{path}");
        let body: serde_json::Value = res.json().await.unwrap();
        if status != 200 {
            assert!(body["error"]["message"].is_string(), "{path}: {body}");
        }
    }
    let res = fg
        .http
        .post(fg.url("/admin/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"source_path": "x", "expires_days": -3}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = fg
        .http
        .post(fg.url("/admin/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["error"]["message"].is_string());
}

#[tokio::test]
async fn admin_token_is_required_and_failures_are_throttled() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    assert_eq!(
        fg.http
            .get(fg.url("/admin/keys"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(fg.admin_get("/admin/keys").await.status(), 200);
    let ok = fg
        .http
        .get(fg.url("/admin/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // The dashboard page itself needs no token (it shows a sign-in form).
    let ui = fg.http.get(fg.url("/admin/ui/")).send().await.unwrap();
    assert_eq!(ui.status(), 200);
    assert!(
        ui.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );

    // 5 failures allowed per minute in the test config (the token-less call above was the
    // first); then 429, even with the right token.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = fg
            .http
            .get(fg.url("/admin/keys?token=wrong"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 429, 429]);
    let res = fg.admin_get("/admin/keys").await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    assert!(
        !fg.logs().contains("wrong"),
        "presented admin tokens must not be logged"
    );
}

#[tokio::test]
async fn openapi_spec_and_docs_describe_the_api() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let spec: serde_json::Value = fg
        .http
        .get(fg.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/health",
        "/admin/keys",
        "/admin/keys/{id}",
        "/admin/keys/{id}/rotate",
        "/admin/logs",
        "/admin/logs/{request_id}",
        "/admin/logs/export",
        "/admin/metrics",
        "/admin/metrics/hourly",
        "/admin/metrics/daily",
        "/admin/config",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} missing from the spec"
        );
    }
    // /health's degraded reasons are an enum for generated clients.
    assert_eq!(
        spec["components"]["schemas"]["Health"]["properties"]["reasons"]["items"]["enum"],
        serde_json::json!([
            "draining",
            "database_unreachable",
            "audit_writes_failing",
            "audit_records_lost",
            "audit_spool_unusable"
        ])
    );
    // The export's three formats, each with its media type.
    let content = spec["paths"]["/admin/logs/export"]["get"]["responses"]["200"]["content"]
        .as_object()
        .unwrap();
    let mut types: Vec<&String> = content.keys().collect();
    types.sort();
    assert_eq!(
        types,
        [
            "application/json; charset=utf-8",
            "application/x-ndjson",
            "text/csv; charset=utf-8"
        ]
    );
    // The logs list and the export take the same filters.
    let names = |path: &str| -> std::collections::BTreeSet<String> {
        spec["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (logs, export) = (names("/admin/logs"), names("/admin/logs/export"));
    let only_logs: Vec<&String> = logs.difference(&export).collect();
    let only_export: Vec<&String> = export.difference(&logs).collect();
    // The export lists the paging parameters too, as refused (any value is a 400).
    assert!(only_logs.is_empty(), "{only_logs:?}");
    let refused = |name: &str| {
        spec["paths"]["/admin/logs/export"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["description"].as_str())
            .is_some_and(|d| d.contains("Not accepted"))
    };
    assert!(["cursor", "offset", "skip"].into_iter().all(refused));
    assert_eq!(
        only_export,
        ["bom", "format", "include_body", "include_headers"]
    );
    let schemes = spec["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes.len(), 3, "{schemes:?}");

    // What generated clients need (server/src/spec.rs): a unique id for every operation, the
    // admin guard's 401 and 429 on every operation behind it, text exports, no anonymous
    // copies of schemas, typed timestamps and value sets.
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}"));
            assert!(ids.insert(id.to_owned()), "{id} twice");
            let responses = op["responses"].as_object().unwrap();
            let guarded = path.starts_with("/admin/");
            assert_eq!(
                !op["security"].as_array().unwrap().is_empty(),
                guarded,
                "{path}"
            );
            for status in ["401", "429"] {
                assert_eq!(
                    responses.contains_key(status),
                    guarded,
                    "{method} {path} {status}"
                );
            }
            if guarded {
                assert!(responses["429"]["headers"].get("Retry-After").is_some());
            }
        }
    }
    assert_eq!(ids.len(), 15, "{ids:?}");
    assert!(
        ids.contains("update_key") && ids.contains("update_key_put"),
        "{ids:?}"
    );
    for media in ["text/csv; charset=utf-8", "application/x-ndjson"] {
        assert_eq!(
            content[media]["schema"],
            serde_json::json!({"type": "string"})
        );
    }
    assert_eq!(
        spec["paths"]["/admin/config"]["get"]["responses"]["200"]["content"]["application/json; charset=utf-8"]
            ["schema"]["type"],
        "object"
    );
    let text = spec.to_string();
    assert!(
        !text.contains("allOf"),
        "a field refers to a schema through allOf"
    );
    let schemas = &spec["components"]["schemas"];
    assert_eq!(
        schemas["ErrorBody"]["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    assert_eq!(
        schemas["AuditEntry"]["properties"]["timestamp"]["format"],
        "date-time"
    );
    assert_eq!(
        schemas["KeyInfo"]["properties"]["expires_at"]["format"],
        "date-time"
    );
    assert_eq!(
        schemas["AuditEntry"]["properties"]["outcome"]["enum"],
        serde_json::json!([
            "completed",
            "client_aborted",
            "upstream_error",
            "upstream_timeout",
            "rejected",
            "interrupted"
        ])
    );
    assert_eq!(spec["servers"][0]["url"], "/");
    // Every answer timestamp is typed, the created key's too; a GET declares no 415.
    for (schema, field) in [
        ("CreatedKey", "created_at"),
        ("CreatedKey", "expires_at"),
        ("KeyInfo", "last_used_at"),
        ("SeriesEntry", "ts"),
        ("PeriodEntry", "start"),
        ("PeriodReport", "since"),
    ] {
        assert_eq!(
            schemas[schema]["properties"][field]["format"], "date-time",
            "{schema}.{field}"
        );
    }
    assert_eq!(
        schemas["CreatedKey"]["properties"]["status"]["enum"],
        serde_json::json!(["active", "disabled", "expired"])
    );
    assert!(
        spec["paths"]["/admin/keys/{id}"]["get"]["responses"]
            .get("415")
            .is_none()
    );
    assert!(
        spec["paths"]["/admin/keys/{id}"]["patch"]["responses"]
            .get("415")
            .is_some()
    );
    // `fastgate openapi` prints the same spec.
    let printed = fastgate_cmd()
        .arg("--config")
        .arg(&fg.config)
        .arg("openapi")
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(printed, spec);

    let docs = fg.http.get(fg.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    // The page takes the admin token ("Try it out"): not framed elsewhere, nothing loaded or
    // called outside this origin.
    let header = |name: &str| {
        docs.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("referrer-policy"), "no-referrer");
    let csp = header("content-security-policy");
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let docs = docs.text().await.unwrap();
    assert!(docs.contains("swagger"));
    // The page shows the finished spec, with or without the trailing slash.
    assert!(docs.contains("update_key_put"));
    let slash = fg.http.get(fg.url("/docs/")).send().await.unwrap();
    assert_eq!(slash.status(), 200);
    assert_eq!(slash.text().await.unwrap(), docs);

    let cfg: serde_json::Value = fg.admin_get("/admin/config").await.json().await.unwrap();
    let text = cfg.to_string();
    assert!(
        !text.contains(REAL_KEY) && !text.contains(ADMIN_TOKEN),
        "{text}"
    );
    assert_eq!(cfg["api_gateway"]["real_api_key"], "******");

    let health: serde_json::Value = fg
        .http
        .get(fg.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["database"]["reachable"], true);
    assert!(health["audit"]["queue_capacity"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn env_override_wins_over_the_file() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start_with(
        &upstream.url(),
        |_| {},
        &[("FASTGATE__API_GATEWAY__REAL_API_KEY", "sk-from-env-31337")],
    )
    .await;
    let key = fg.new_key("u").await;
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("X-API-Key", &key)
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        upstream.last().headers["authorization"],
        "Bearer sk-from-env-31337"
    );
}

/// A FastGate behind "reverse proxies": 127.0.0.1 (the test client) and an inner tier
/// 10.0.0.0/8, with `extra` added to the `app` section.
async fn behind_proxies(upstream: &Upstream, extra: &str) -> Fastgate {
    Fastgate::start_with(
        &upstream.url(),
        |yaml| {
            *yaml = yaml.replace(
                "  shutdown_timeout: 20\n",
                &format!(
                    "  shutdown_timeout: 20\n  trusted_proxies: [\"127.0.0.1\", \"10.0.0.0/8\"]\n{extra}"
                ),
            );
        },
        &[],
    )
    .await
}

/// Send one proxied request per case with its headers; each request's audit row must name the
/// case's client address.
async fn assert_client_ips(fg: &Fastgate, key: &str, cases: &[(&[(&str, &str)], &str)]) {
    for (headers, want) in cases {
        let mut req = fg
            .http
            .post(fg.proxy_url())
            .header("X-API-Key", key)
            .body(chat_body(false));
        for (name, value) in *headers {
            req = req.header(*name, *value);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        let row = fg.wait_audit(&request_id(&res)).await;
        assert_eq!(row["client_ip"], *want, "headers {headers:?}");
    }
}

#[tokio::test]
async fn trusted_proxies_name_the_client_in_the_audit_log_and_the_lock_out() {
    let upstream = Upstream::start().await;
    let fg = behind_proxies(&upstream, "").await;
    let key = fg.new_key("u").await;
    // The right-most untrusted address wins: a client cannot pick its address by sending its
    // own X-Forwarded-For through the proxies (which append to it). `Forwarded` is not the
    // configured header here: ignored.
    let xff = "X-Forwarded-For";
    assert_client_ips(
        &fg,
        &key,
        &[
            (&[], "127.0.0.1"),
            (&[(xff, "203.0.113.7")], "203.0.113.7"),
            (
                &[(xff, "198.51.100.1, 203.0.113.8, 10.1.2.3")],
                "203.0.113.8",
            ),
            (&[(xff, "[2001:db8::5]:4711")], "2001:db8::5"),
            (&[(xff, "garbage, 10.1.2.3")], "10.1.2.3"),
            (&[(xff, "198.51.100.9,, 10.1.2.4,")], "198.51.100.9"),
            (&[("Forwarded", "for=198.51.100.2")], "127.0.0.1"),
            (&[(xff, "198.51.100.10, 10.1.2.5")], "198.51.100.10"),
        ],
    )
    .await;
    // The header (sent with the last request) is not forwarded upstream: it is in the seed's
    // strip_headers.
    assert!(!upstream.last().headers.contains_key("x-forwarded-for"));

    // The admin lock-out counts per forwarded client: one client's wrong tokens lock it out,
    // not every client behind the proxy.
    let admin = |xff: &'static str, token: &'static str| {
        fg.http
            .get(fg.url(&format!("/admin/keys?token={token}")))
            .header("X-Forwarded-For", xff)
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            admin("203.0.113.66", "wrong")
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);
    let other = admin("203.0.113.67", ADMIN_TOKEN).await.unwrap();
    assert_eq!(other.status(), 200);
}

/// `admin_max_failures_per_minute: 0` means no lock-out (not a lock-out after one mistake).
#[tokio::test]
async fn no_admin_lock_out_with_a_limit_of_zero() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start_with(
        &upstream.url(),
        |y| {
            *y = y.replace(
                "admin_max_failures_per_minute: 5",
                "admin_max_failures_per_minute: 0",
            )
        },
        &[],
    )
    .await;
    for _ in 0..8 {
        let res = fg
            .http
            .get(fg.url("/admin/keys?token=wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }
    assert_eq!(fg.admin_get("/admin/keys").await.status(), 200);
}

#[tokio::test]
async fn forwarded_header_names_the_client_when_configured() {
    let upstream = Upstream::start().await;
    let fg = behind_proxies(&upstream, "  forwarded_header: forwarded\n").await;
    let key = fg.new_key("u").await;
    // RFC 7239: the right-most untrusted `for=`; X-Forwarded-For (the client's own, when the
    // proxies only write Forwarded) is ignored; malformed text names no address, an empty
    // element hides nothing.
    assert_client_ips(
        &fg,
        &key,
        &[
            (
                &[
                    (
                        "Forwarded",
                        r#"for=198.51.100.2, for="[2001:db8::6]:80";proto=https, for=10.4.4.4"#,
                    ),
                    ("X-Forwarded-For", "6.6.6.6"),
                ],
                "2001:db8::6",
            ),
            (&[("X-Forwarded-For", "6.6.6.7")], "127.0.0.1"),
            (
                &[("Forwarded", r#"for=6.6.6.8;x=", for=203.0.113.50"#)],
                "127.0.0.1",
            ),
            (
                &[("Forwarded", "for=6.6.6.9,, for=203.0.113.51")],
                "203.0.113.51",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn forwarded_for_is_ignored_from_untrusted_peers() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let key = fg.new_key("u").await;
    let res = fg
        .http
        .post(fg.proxy_url())
        .header("X-API-Key", &key)
        .header("X-Forwarded-For", "203.0.113.7")
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let items = fg.wait_logs("", |items| !items.is_empty()).await;
    assert_eq!(items[0]["client_ip"], "127.0.0.1");
}

/// M-FastGate's admin parameters and fields (list filters, `PUT` with `is_active` and
/// `expires_at`, `key_value`) either work as they did there or are refused with a JSON error: a
/// script moved over never gets a silently unfiltered list or a silently unchanged key.
#[tokio::test]
async fn mfastgate_admin_parameters_and_fields_work_or_are_refused() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let alpha = fg.create_key("alpha").await;
    let beta = fg.create_key("beta").await;
    fg.create_key("gamma").await;
    let key = alpha["api_key"].as_str().unwrap().to_owned();
    // M-FastGate's field names beside FastGate's: the secret once, as `key_value` too.
    assert_eq!(alpha["key_value"], alpha["api_key"]);
    assert_eq!(alpha["key_id"], alpha["id"]);
    assert_eq!(alpha["is_active"], true);
    assert_eq!(alpha["usage_count"], 0);
    let res = fg
        .http
        .patch(fg.url(&format!("/admin/keys/{}", beta["id"].as_str().unwrap())))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let get = |path: String| {
        send_json(
            fg.http
                .get(fg.url(&path))
                .header("x-admin-token", ADMIN_TOKEN),
        )
    };
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.get("id")
                    .or_else(|| r.get("request_id"))
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let refused = |(status, body): (u16, serde_json::Value), needle: &str| {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
    };

    // Keys: `is_active` is `active`, `skip` is `offset`.
    let (status, disabled) = get("/admin/keys?is_active=false".into()).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&disabled), [beta["id"].as_str().unwrap()]);
    let listed = &disabled["items"][0];
    assert_eq!(listed["is_active"], false);
    assert_eq!(listed["key_id"], beta["id"]);
    assert!(listed.get("key_value").is_none() && listed.get("api_key").is_none());
    let (_, enabled) = get("/admin/keys?is_active=true".into()).await;
    assert_eq!(enabled["total"], 2);
    // Python's `requests` sends `params={"is_active": False}` as `False`; FastAPI (pydantic)
    // also took 0/1, yes/no, on/off.
    // Also percent-encoded, on either side of the `=`.
    for (param, want) in [
        ("is_active=False", &disabled),
        ("is_active=0", &disabled),
        ("is_active=True", &enabled),
        ("is_active=%46alse", &disabled),
        ("is%5Factive=%66alse", &disabled),
    ] {
        let (status, got) = get(format!("/admin/keys?{param}")).await;
        assert_eq!(status, 200, "{param}: {got}");
        assert_eq!(ids(&got), ids(want), "{param}");
    }
    let (_, yes) = get("/admin/keys?active=YES&limit=5".into()).await;
    assert_eq!(yes["total"], 2);
    refused(get("/admin/keys?is_active=maybe".into()).await, "is_active");
    let (_, by_offset) = get("/admin/keys?offset=1&limit=1".into()).await;
    let (_, by_skip) = get("/admin/keys?skip=1&limit=1".into()).await;
    let (_, all_keys) = get("/admin/keys".into()).await;
    assert_eq!(ids(&by_skip), ids(&by_offset));
    assert_eq!(ids(&by_skip), ids(&all_keys)[1..2]);
    refused(
        get("/admin/keys?active=true&is_active=false".into()).await,
        "is_active",
    );
    refused(get("/admin/keys?offset=1&skip=2".into()).await, "skip");

    // Logs: two answered POSTs, one GET, one refused key.
    assert_eq!(fg.chat(&key, false).await.status(), 200);
    assert_eq!(fg.chat(&key, false).await.status(), 200);
    assert_eq!(fg.chat("fg_not-a-real-key", false).await.status(), 401);
    let res = fg
        .http
        .get(fg.proxy_url())
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let all = fg.wait_logs("", |items| items.len() >= 4).await;
    assert_eq!(all.len(), 4);
    let all_ids: Vec<String> = all
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_owned())
        .collect();

    let (status, s401) = get("/admin/logs?status_code=401".into()).await;
    assert_eq!(status, 200);
    let rows = s401["items"].as_array().unwrap();
    assert!(rows.len() == 1 && rows[0]["status"] == 401, "{s401}");
    let (_, gets) = get("/admin/logs?method=get".into()).await;
    let rows = gets["items"].as_array().unwrap();
    assert!(rows.len() == 1 && rows[0]["method"] == "GET", "{gets}");
    // M-FastGate allowed pages of up to 10,000 records; so does FastGate.
    let (status, big) = get("/admin/logs?limit=10000".into()).await;
    assert_eq!((status, big["items"].as_array().unwrap().len()), (200, 4));
    refused(get("/admin/logs?limit=10001".into()).await, "limit");
    let (_, posts) = get("/admin/logs?method=POST&status_code=200".into()).await;
    assert_eq!(posts["items"].as_array().unwrap().len(), 2);

    let (_, skipped) = get("/admin/logs?skip=1&limit=2".into()).await;
    assert_eq!(ids(&skipped), all_ids[1..3]);
    let (_, offset) = get("/admin/logs?offset=1&limit=2".into()).await;
    assert_eq!(ids(&offset), all_ids[1..3]);
    // A cursor page, then skip counted from it.
    let (_, first) = get("/admin/logs?limit=1".into()).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (_, after) = get(format!("/admin/logs?limit=1&cursor={cursor}&skip=1")).await;
    assert_eq!(ids(&after), all_ids[2..3]);

    let (_, none) = get("/admin/logs?start_time=2999-01-01T00:00:00Z".into()).await;
    assert!(none["items"].as_array().unwrap().is_empty());
    let (_, every) = get("/admin/logs?end_time=2999-01-01T00:00:00%2B08:00".into()).await;
    assert_eq!(ids(&every), all_ids);
    let (_, early) = get("/admin/logs?end_time=2000-01-01T00:00:00Z".into()).await;
    assert!(early["items"].as_array().unwrap().is_empty());
    for (query, needle) in [
        // M-FastGate wrote its times without an offset (in China time): ambiguous, so refused.
        (
            "start_time=2025-06-05T10:00:00",
            "start_time must be an RFC 3339 timestamp with a UTC offset",
        ),
        (
            "since=2025-01-01T00:00:00Z&start_time=2025-02-01T00:00:00Z",
            "start_time",
        ),
        (
            "until=2999-01-01T00:00:00Z&end_time=2000-01-01T00:00:00Z",
            "end_time",
        ),
        ("status_code=99", "status_code"),
        ("status=2xx&status_code=404", "outside the status class"),
    ] {
        refused(get(format!("/admin/logs?{query}")).await, needle);
    }
    // Both names for the same instant, written with different offsets: fine.
    let (status, same) =
        get("/admin/logs?since=2000-01-01T00:00:00Z&start_time=2000-01-01T08:00:00%2B08:00".into())
            .await;
    assert_eq!(status, 200, "{same}");
    assert_eq!(ids(&same), all_ids);
    // A key's secret in a URL is refused, and not echoed.
    let (status, body) = get(format!("/admin/logs?api_key={key}")).await;
    assert_eq!(status, 400);
    assert!(!body.to_string().contains(&key), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key_id")
    );
    // M-FastGate updated keys with PUT and `is_active`; PATCH takes `is_active` too (a silently
    // ignored field would leave a key enabled that the admin meant to disable).
    let gamma = fg.create_key("gamma-2").await;
    let gamma_key = gamma["api_key"].as_str().unwrap().to_owned();
    let gamma_url = fg.url(&format!("/admin/keys/{}", gamma["id"].as_str().unwrap()));
    let update = |method: reqwest::Method, body: serde_json::Value| {
        send_json(
            fg.http
                .request(method, &gamma_url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&body),
        )
    };
    let (status, body) = update(
        reqwest::Method::PATCH,
        serde_json::json!({"is_active": false}),
    )
    .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &serde_json::json!("disabled"))
    );
    assert_eq!(fg.chat(&gamma_key, false).await.status(), 401);
    let (status, body) = update(reqwest::Method::PUT, serde_json::json!({"is_active": true})).await;
    assert_eq!((status, &body["active"]), (200, &serde_json::json!(true)));
    assert_eq!(fg.chat(&gamma_key, false).await.status(), 200);
    refused(
        update(
            reqwest::Method::PATCH,
            serde_json::json!({"active": true, "is_active": false}),
        )
        .await,
        "is_active",
    );
    // A misspelt field is refused, not dropped (it would leave the key unchanged).
    refused(
        update(
            reqwest::Method::PATCH,
            serde_json::json!({"enabled": false}),
        )
        .await,
        "enabled",
    );
    // M-FastGate's `rate_limit` was only stored: it is ignored, the rest of the body applies.
    let (status, body) = update(
        reqwest::Method::PUT,
        serde_json::json!({"rate_limit": 10, "source_path": "gamma-3"}),
    )
    .await;
    assert_eq!(
        (status, &body["source_path"]),
        (200, &serde_json::json!("gamma-3"))
    );
    // M-FastGate's absolute `expires_at`: with an offset, alone; a past time expires the key.
    let (status, body) = update(
        reqwest::Method::PUT,
        serde_json::json!({"expires_at": "2999-01-01T08:00:00+08:00"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_at"], "2999-01-01T00:00:00.000Z");
    refused(
        update(
            reqwest::Method::PUT,
            serde_json::json!({"expires_at": "2999-01-01T00:00:00"}),
        )
        .await,
        "expires_at must be an RFC 3339 timestamp with a UTC offset",
    );
    refused(
        update(
            reqwest::Method::PUT,
            serde_json::json!({"expires_at": "2999-01-01T00:00:00Z", "expires_days": 3}),
        )
        .await,
        "expires_at cannot be combined",
    );
    let (_, body) = update(
        reqwest::Method::PATCH,
        serde_json::json!({"expires_at": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(body["status"], "expired");
    let res = fg.chat(&gamma_key, false).await;
    assert_eq!(res.status(), 401);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "expired_api_key");
    // Creating: M-FastGate's body (with `rate_limit`) works; a misspelt field is refused.
    let create = |body: serde_json::Value| {
        send_json(
            fg.http
                .post(fg.url(&format!("/admin/keys?token={ADMIN_TOKEN}")))
                .json(&body),
        )
    };
    let (status, made) = create(serde_json::json!({
        "source_path": "delta", "permissions": ["chat"], "expires_days": 30, "rate_limit": 60
    }))
    .await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(
        fg.chat(made["key_value"].as_str().unwrap(), false)
            .await
            .status(),
        200
    );
    refused(
        create(serde_json::json!({"source_path": "delta", "expire_days": 3})).await,
        "expire_days",
    );
}

#[tokio::test]
async fn audit_export_streams_every_matching_record_as_csv_json_and_ndjson() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let key = fg.new_key("exporter").await;
    // More records than one export page (1,000), so the export has to follow its cursor.
    for wave in 0..33 {
        let calls = (0..32).map(|_| fg.chat(&key, false));
        for res in futures_util::future::join_all(calls).await {
            assert_eq!(res.status(), 200, "wave {wave}");
        }
    }
    // Client-controlled text that a spreadsheet would run, and text that needs CSV quoting.
    for agent in ["=HYPERLINK(\"http://evil\")", "a, \"quoted\" agent"] {
        let res = fg
            .http
            .post(fg.proxy_url())
            .header("X-API-Key", &key)
            .header("User-Agent", agent)
            .header("content-type", "application/json")
            .body(chat_body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(fg.chat("fg_not-a-real-key", false).await.status(), 401);
    let total = 33 * 32 + 3;
    let deadline = Instant::now() + std::time::Duration::from_secs(15);
    let logs = loop {
        let (_, page) = send_json(
            fg.http
                .get(fg.url("/admin/logs?limit=10000"))
                .header("x-admin-token", ADMIN_TOKEN),
        )
        .await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= total || Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(logs.len(), total);

    let export = |query: &str| {
        fg.http
            .get(fg.url(&format!("/admin/logs/export?{query}")))
            .header("x-admin-token", ADMIN_TOKEN)
            .send()
    };

    // JSON: exactly the records of GET /admin/logs, in the same order (newest first).
    let json = export_records(&fg, "json", "").await;
    assert_eq!(json, logs);

    // NDJSON: the same, one object per line. A paging parameter a generated client sends by
    // default (`0`, empty) is no paging: every record still (any other value is a 400).
    let lines = export_records(&fg, "ndjson", "skip=0&offset=&cursor=").await;
    assert_eq!(lines, logs);

    // CSV (the default): a header of the JSON field names, then every record.
    let csv_text = download(
        export("").await.unwrap(),
        "text/csv; charset=utf-8",
        "audit_logs.csv",
    )
    .await;
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let fields: std::collections::BTreeSet<&String> = logs[0].as_object().unwrap().keys().collect();
    assert_eq!(header.len(), fields.len());
    assert_eq!(
        header.iter().collect::<std::collections::BTreeSet<_>>(),
        fields,
        "CSV columns are the JSON fields"
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), total);
    // Every cell is its record's JSON value: text as is (a formula with a leading '), numbers
    // equal, booleans as true/false, null as an empty cell.
    for (row, record) in rows.iter().zip(&logs) {
        for (name, cell) in header.iter().zip(row.iter()) {
            let value = &record[name.as_str()];
            match value {
                serde_json::Value::Null => assert_eq!(cell, "", "{name}"),
                serde_json::Value::Bool(b) => assert_eq!(cell, b.to_string(), "{name}"),
                serde_json::Value::Number(n) => {
                    // serde_json's default float parsing may be one ulp off.
                    let (cell_value, json) = (cell.parse::<f64>().unwrap(), n.as_f64().unwrap());
                    assert!(
                        (cell_value - json).abs() <= json.abs() * 1e-12,
                        "{name}: {cell} vs {n}"
                    );
                }
                serde_json::Value::String(text) if text.starts_with(['=', '+', '-', '@']) => {
                    assert_eq!(cell, format!("'{text}"), "{name}");
                }
                serde_json::Value::String(text) => assert_eq!(cell, text, "{name}"),
                other => panic!("{name}: {other}"),
            }
        }
    }
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let agents: Vec<&str> = rows.iter().map(|r| &r[col("user_agent")]).collect();
    assert!(
        agents.contains(&"'=HYPERLINK(\"http://evil\")"),
        "{agents:?}"
    );
    assert!(agents.contains(&"a, \"quoted\" agent"), "{agents:?}");

    // `limit` caps the count (the newest first); filters are those of /admin/logs, with
    // M-FastGate's names.
    let limited = export_records(&fg, "json", "limit=5").await;
    assert_eq!(limited, logs[..5]);
    // A limit past the first page (1,000 records per database read).
    let limited = export_records(&fg, "ndjson", "limit=1001").await;
    assert_eq!(limited, logs[..1001]);
    // M-FastGate's path filter; its China-time offset written unescaped (`+` arrives as a space).
    let path = logs[0]["path"].as_str().unwrap();
    let query = format!("path={path}&start_time=2000-01-01T08:00:00+08:00");
    let by_path = export_records(&fg, "json", &query).await;
    assert_eq!(by_path, logs);
    assert!(
        export_records(&fg, "json", "path=/proxy/nowhere")
            .await
            .is_empty()
    );
    let (_, none) = send_json(
        fg.http
            .get(fg.url("/admin/logs?path=/proxy/nowhere"))
            .header("x-admin-token", ADMIN_TOKEN),
    )
    .await;
    assert_eq!(none["items"], serde_json::json!([]));
    // Excel's UTF-8 mark on request, CSV only.
    let bom = export("bom=true&limit=1")
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(bom.starts_with("\u{feff}request_id,".as_bytes()));
    let no_bom = export("format=json&bom=true&limit=1")
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(no_bom.starts_with(b"["));
    let refused = export_records(
        &fg,
        "json",
        "status_code=401&start_time=2000-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["status"], 401);
    let none = download(
        export("format=json&since=2999-01-01T00:00:00Z")
            .await
            .unwrap(),
        "application/json; charset=utf-8",
        "audit_logs.json",
    )
    .await;
    assert_eq!(none, "[]\n");
    let empty_csv = download(
        export("model=no-such-model").await.unwrap(),
        "text/csv; charset=utf-8",
        "audit_logs.csv",
    )
    .await;
    assert_eq!(empty_csv.lines().count(), 1, "only the header: {empty_csv}");

    // Bad input: an OpenAI-shaped 400, before any download starts.
    for query in [
        "format=xlsx",
        "include_headers=true",
        "include_body=true",
        "api_key=fg_secret",
        "status=9xx",
        "limit=0",
        "start_time=2025-06-05T10:00:00",
    ] {
        let (status, body) = send_json(
            fg.http
                .get(fg.url(&format!("/admin/logs/export?{query}")))
                .header("x-admin-token", ADMIN_TOKEN),
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"]["message"].is_string(), "{query}: {body}");
        assert!(!body.to_string().contains("fg_secret"), "{body}");
    }
    // The admin token is required, as everywhere under /admin (`?token=` works for a link).
    let res = fg
        .http
        .get(fg.url("/admin/logs/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = fg
        .http
        .get(fg.url(&format!("/admin/logs/export?token={ADMIN_TOKEN}&limit=1")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// The body of a 200 download with the expected `Content-Type` and file name.
async fn download(res: reqwest::Response, content_type: &str, file: &str) -> String {
    assert_eq!(res.status(), 200);
    let headers = res.headers();
    assert_eq!(headers["content-type"], content_type);
    assert_eq!(
        headers["content-disposition"],
        format!("attachment; filename=\"{file}\"")
    );
    res.text().await.unwrap()
}

#[tokio::test]
async fn hourly_and_daily_metrics_count_every_request_in_whole_periods() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let key = fg.new_key("periods").await;
    for _ in 0..3 {
        assert_eq!(fg.chat(&key, false).await.status(), 200);
    }
    // Read to the end: a stream dropped half-way is a client abort, which counts as an error.
    let stream = fg.chat(&key, true).await;
    assert_eq!(stream.status(), 200);
    assert!(stream.text().await.unwrap().contains("[DONE]"));
    assert_eq!(fg.chat("fg_not-a-real-key", false).await.status(), 401);
    fg.wait_logs("", |items| items.len() >= 5).await;
    let get = |path: &str| {
        send_json(
            fg.http
                .get(fg.url(path))
                .header("x-admin-token", ADMIN_TOKEN),
        )
    };
    let sum = |report: &serde_json::Value, field: &str| -> u64 {
        report["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[field].as_u64().unwrap())
            .sum()
    };

    let (status, hourly) = get("/admin/metrics/hourly").await;
    assert_eq!(status, 200, "{hourly}");
    let items = hourly["items"].as_array().unwrap();
    assert_eq!(items.len(), 24);
    assert_eq!(hourly["period"], "hour");
    assert_eq!(hourly["since"], items[0]["start"]);
    assert_eq!(sum(&hourly, "total_requests"), 5);
    assert_eq!(sum(&hourly, "error_count"), 1);
    assert_eq!(sum(&hourly, "stream_requests"), 1);
    // The refusal counts as a request and an error, not as a latency sample.
    assert_eq!(sum(&hourly, "latency_samples"), 4);
    for item in items {
        let start = item["start"].as_str().unwrap();
        assert!(start.ends_with(":00:00Z"), "{start}");
        if item["total_requests"] == 0 {
            assert!(item["success_rate"].is_null() && item["avg_latency_ms"].is_null());
        } else {
            assert!(item["avg_latency_ms"].as_f64().unwrap() >= 0.0, "{item}");
            assert!(item["p95_latency_ms"].as_f64().is_some(), "{item}");
        }
    }
    let busy: Vec<&serde_json::Value> = items.iter().filter(|p| p["total_requests"] != 0).collect();
    if let [only] = busy[..] {
        assert_eq!(only["success_rate"], 0.8, "{only}");
    }
    let (_, one) = get("/admin/metrics/hourly?hours=1").await;
    assert_eq!(one["items"].as_array().unwrap().len(), 1);
    // Hours written in China time; the retention (90 days by default) is named.
    let (_, china) = get("/admin/metrics/hourly?utc_offset=%2B08:00").await;
    assert_eq!(sum(&china, "total_requests"), 5);
    assert!(
        china["items"][0]["start"]
            .as_str()
            .unwrap()
            .ends_with(":00:00+08:00")
    );
    assert!(china["until"].as_str().unwrap().ends_with("+08:00"));
    let retained = china["retained_since"].as_str().unwrap();
    let retained = chrono::DateTime::parse_from_rfc3339(retained).unwrap();
    let age = chrono::Utc::now().signed_duration_since(retained);
    assert!((age.num_hours() - 90 * 24).abs() <= 1, "{age}");

    // The dashboard's 30-day window of /admin/metrics: one bucket per UTC day.
    let (status, month) = get("/admin/metrics?window=30d").await;
    assert_eq!(status, 200, "{month}");
    assert_eq!(
        (month["window"].as_str(), month["bucket_seconds"].as_u64()),
        (Some("30d"), Some(86_400))
    );
    assert_eq!(month["total_requests"], 5);
    assert_eq!(month["series"].as_array().unwrap().len(), 31);
    let (status, daily) = get("/admin/metrics/daily").await;
    assert_eq!(status, 200, "{daily}");
    assert_eq!(daily["items"].as_array().unwrap().len(), 30);
    assert_eq!(
        (daily["period"].as_str(), daily["utc_offset"].as_str()),
        (Some("day"), Some("+00:00"))
    );
    assert_eq!(sum(&daily, "total_requests"), 5);
    assert!(
        daily["items"][0]["start"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00Z")
    );
    // China days (M-FastGate's clock); a `+` left unescaped arrives as a space and means the same.
    for offset in ["%2B08:00", "+08:00", "8"] {
        let (status, china) =
            get(&format!("/admin/metrics/daily?days=2&utc_offset={offset}")).await;
        assert_eq!(status, 200, "{offset}: {china}");
        assert_eq!(china["utc_offset"], "+08:00");
        assert_eq!(sum(&china, "total_requests"), 5);
        let start = china["items"][1]["start"].as_str().unwrap();
        assert!(start.ends_with("T00:00:00+08:00"), "{start}");
    }
    let (_, west) = get("/admin/metrics/daily?days=2&utc_offset=-05:00").await;
    assert!(
        west["items"][0]["start"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00-05:00")
    );

    for query in [
        "hourly?hours=0",
        "hourly?hours=169",
        "daily?days=0",
        "daily?days=366",
        "daily?utc_offset=%2B05:30",
        "daily?utc_offset=15",
        "daily?utc_offset=-13:00",
        "daily?utc_offset=abc",
    ] {
        let (status, body) = get(&format!("/admin/metrics/{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"]["message"].is_string(), "{query}: {body}");
    }
}

#[tokio::test]
async fn browser_scripts_on_other_origins_get_cors_answers() {
    let upstream = Upstream::start().await;
    // Default: every origin, as M-FastGate's allow_origins=["*"], on the gateway's paths.
    let fg = Fastgate::start(&upstream.url()).await;
    let key = fg.new_key("browser").await;
    let origin = "https://chat.example.com";
    let with_line = |line: &'static str| {
        move |y: &mut String| {
            *y = y.replace(
                "  shutdown_timeout: 20\n",
                &format!("  shutdown_timeout: 20\n  {line}\n"),
            );
        }
    };
    let preflight = |fg: &Fastgate, path: &str, origin: &str| {
        fg.http
            .request(reqwest::Method::OPTIONS, fg.url(path))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization,content-type",
            )
            .send()
    };
    let proxy_path = fg.proxy_url().replacen(&fg.url(""), "", 1);
    let call = |fg: &Fastgate, key: &str, origin: Option<&str>| {
        let mut req = fg
            .http
            .post(fg.proxy_url())
            .header("Authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            // The test upstream then answers with CORS headers of its own.
            .header("x-test-backend-cors", "1")
            .body(chat_body(false));
        if let Some(origin) = origin {
            req = req.header("Origin", origin);
        }
        req.send()
    };
    let header = |res: &reqwest::Response, name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let allow_origin = |res: &reqwest::Response| header(res, "access-control-allow-origin");

    // The preflight is answered by FastGate: no key needed, nothing forwarded or audited.
    let res = preflight(&fg, &proxy_path, origin).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(allow_origin(&res).as_deref(), Some("*"));
    assert_eq!(
        header(&res, "access-control-allow-methods").as_deref(),
        Some("POST")
    );
    assert_eq!(
        header(&res, "access-control-allow-headers").as_deref(),
        Some("authorization,content-type")
    );
    assert_eq!(
        header(&res, "access-control-max-age").as_deref(),
        Some("600")
    );
    assert!(upstream.seen.lock().unwrap().is_empty());

    // The call and the refusal of a bad key carry the headers, so a script can read the
    // answer, its request id and the error; FastGate's CORS headers replace the backend's.
    let res = call(&fg, &key, Some(origin)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(allow_origin(&res).as_deref(), Some("*"));
    assert_eq!(
        header(&res, "access-control-expose-headers").as_deref(),
        Some("*")
    );
    assert_eq!(header(&res, "access-control-allow-credentials"), None);
    assert!(header(&res, "x-request-id").is_some());
    let res = call(&fg, "fg_not-a-real-key", Some(origin)).await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(allow_origin(&res).as_deref(), Some("*"));
    let res = fg
        .http
        .get(fg.url("/health"))
        .header("Origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(allow_origin(&res).as_deref(), Some("*"));
    // The admin API is not open to other origins unless app.cors_admin_api says so.
    let res = preflight(&fg, "/admin/keys", origin).await.unwrap();
    assert_eq!(allow_origin(&res), None);
    let res = fg
        .http
        .get(fg.url("/admin/keys"))
        .header("x-admin-token", ADMIN_TOKEN)
        .header("Origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(allow_origin(&res), None);
    // Servers and SDKs send no Origin: FastGate adds nothing and leaves the backend's headers.
    let res = call(&fg, &key, None).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        allow_origin(&res).as_deref(),
        Some("https://backend.example")
    );
    // Three requests reached the gateway's routes (two answered, one refused), the preflights
    // did not: three audit records, two forwarded calls.
    let logs = fg.wait_logs("", |items| items.len() >= 3).await;
    assert_eq!(logs.len(), 3, "{logs:?}");
    assert!(logs.iter().all(|r| r["method"] == "POST"), "{logs:?}");
    assert_eq!(upstream.seen.lock().unwrap().len(), 2);

    // A list of origins: only those, named back (with Vary: Origin for caches).
    let listed = Fastgate::start_with(
        &upstream.url(),
        with_line("cors_allow_origins: [\"https://chat.example.com\"]"),
        &[],
    )
    .await;
    let res = preflight(&listed, &proxy_path, origin).await.unwrap();
    assert_eq!(allow_origin(&res).as_deref(), Some(origin));
    assert!(header(&res, "vary").unwrap().contains("origin"));
    let listed_key = listed.new_key("listed").await;
    let res = call(&listed, &listed_key, Some(origin)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(allow_origin(&res).as_deref(), Some(origin));
    // Another origin: neither the preflight nor the call carries Allow-Origin (the browser
    // refuses), the backend's included.
    let evil = "https://evil.example";
    let res = preflight(&listed, &proxy_path, evil).await.unwrap();
    assert_eq!(allow_origin(&res), None);
    let res = call(&listed, &listed_key, Some(evil)).await.unwrap();
    assert_eq!(allow_origin(&res), None);
    assert_eq!(header(&res, "access-control-allow-credentials"), None);

    // [] turns CORS off: an OPTIONS is an ordinary request again (a key is needed), and a
    // browser's call gets no Allow-Origin, not even the backend's.
    let off = Fastgate::start_with(&upstream.url(), with_line("cors_allow_origins: []"), &[]).await;
    let res = preflight(&off, &proxy_path, origin).await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(allow_origin(&res), None);
    let off_key = off.new_key("off").await;
    let res = call(&off, &off_key, Some(origin)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(allow_origin(&res), None);
    // An OPTIONS without Access-Control-Request-Method is not a preflight either.
    let res = fg
        .http
        .request(reqwest::Method::OPTIONS, fg.proxy_url())
        .header("Origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // app.cors_admin_api: the admin API answers other origins too.
    let admin_too =
        Fastgate::start_with(&upstream.url(), with_line("cors_admin_api: true"), &[]).await;
    let res = preflight(&admin_too, "/admin/keys", origin).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(allow_origin(&res).as_deref(), Some("*"));
}

/// `GET /admin/logs/export?format=json|ndjson&{query}`: the records, after checking the media type
/// and file name.
async fn export_records(fg: &Fastgate, format: &str, query: &str) -> Vec<serde_json::Value> {
    let res = fg
        .http
        .get(fg.url(&format!("/admin/logs/export?format={format}&{query}")))
        .header("x-admin-token", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    if format == "json" {
        let text = download(res, "application/json; charset=utf-8", "audit_logs.json").await;
        serde_json::from_str(&text).unwrap()
    } else {
        download(res, "application/x-ndjson", "audit_logs.ndjson")
            .await
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The grace period of a rotation can come in a JSON body as well as the query string; a body
/// that says something else (a misspelt field) is refused and the key is left as it was.
#[tokio::test]
async fn rotate_takes_its_grace_period_from_a_json_body() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let created = fg.create_key("rotor").await;
    let id = created["id"].as_str().unwrap().to_owned();
    let first = created["api_key"].as_str().unwrap().to_owned();
    let rotate = |body: Option<&'static str>| {
        let mut req = fg
            .http
            .post(fg.url(&format!("/admin/keys/{id}/rotate")))
            .header("x-admin-token", ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        req.send()
    };
    let res = rotate(Some(r#"{"grace_seconds":300}"#)).await.unwrap();
    assert_eq!(res.status(), 200);
    let second = res.json::<serde_json::Value>().await.unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        fg.chat(&first, false).await.status(),
        200,
        "the grace period from the body"
    );
    assert_eq!(fg.chat(&second, false).await.status(), 200);
    // Misspelt: 400, nothing rotated (the second key still works, no third was made).
    let res = rotate(Some(r#"{"grace_second":300}"#)).await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(fg.chat(&second, false).await.status(), 200);
    // No body at all (no Content-Type either): rotated at once, as before.
    let res = rotate(None).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(fg.chat(&second, false).await.status(), 401);
}

/// A client that accepts gzip (python-requests, httpx and the OpenAI SDKs all do) and a backend
/// that compresses: the client gets the compressed bytes unchanged, the audit row still has the
/// token counts (JSON and SSE), and an `Accept-Encoding` with codings the usage scanner cannot
/// read reaches the backend narrowed to the ones it can.
#[tokio::test]
async fn gzip_answers_pass_unchanged_and_keep_their_token_counts() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let key = fg.key("gzip-user").await;
    let post = |stream: bool, accept: &'static str| {
        fg.http
            .post(fg.proxy_url())
            .header("X-API-Key", &key)
            .header("Content-Type", "application/json")
            .header("Accept-Encoding", accept)
            .body(chat_body(stream))
            .send()
    };
    let tokens = |row: &serde_json::Value| {
        (
            row["prompt_tokens"].as_u64(),
            row["completion_tokens"].as_u64(),
            row["total_tokens"].as_u64(),
        )
    };

    // JSON, with what python-requests sends.
    let res = post(false, "gzip, deflate").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-encoding"], "gzip");
    let id = request_id(&res);
    let body = res.bytes().await.unwrap();
    assert_eq!(
        body,
        gzip_frames(&[JSON_REPLY.to_owned()]).concat(),
        "the compressed body, byte for byte"
    );
    assert_eq!(upstream.last().headers["accept-encoding"], "gzip, deflate");
    let row = fg.wait_audit(&id).await;
    assert_eq!(row["response_bytes"].as_u64(), Some(body.len() as u64));
    assert_eq!(tokens(&row), (Some(3), Some(4), Some(7)), "{row}");

    // SSE, offering brotli first: the backend is asked for gzip only, and the stream still
    // flows event by event.
    let started = Instant::now();
    let res = post(true, "br, gzip;q=0.5").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-encoding"], "gzip");
    let id = request_id(&res);
    let mut stream = res.bytes_stream();
    let mut got = Vec::new();
    let mut first_at = None;
    while let Some(chunk) = stream.next().await {
        first_at.get_or_insert_with(|| started.elapsed());
        got.extend_from_slice(&chunk.unwrap());
    }
    let ended_at = started.elapsed();
    let first_at = first_at.unwrap();
    assert!(
        ended_at - first_at >= SSE_GAP * 3,
        "first byte after {first_at:?}, end after {ended_at:?}"
    );
    let events: Vec<String> = (0..=SSE_EVENTS + 1).map(sse_event).collect();
    assert_eq!(
        got,
        gzip_frames(&events).concat(),
        "the compressed stream, byte for byte"
    );
    assert_eq!(upstream.last().headers["accept-encoding"], "gzip;q=0.5");
    let row = fg.wait_audit(&id).await;
    assert_eq!(row["is_stream"], true);
    assert_eq!(tokens(&row), (Some(7), Some(5), Some(12)), "{row}");
}

/// OpenAI's Responses API (and Anthropic's Messages API) name their counts `input_tokens` and
/// `output_tokens`: they are the prompt and completion tokens. A count the backend does not
/// report (embeddings have no completion tokens) is null, not 0, and the metrics still add up.
#[tokio::test]
async fn responses_api_counts_are_read_and_unreported_counts_are_null() {
    const RESPONSES: &str = r#"{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","content":[{"type":"output_text","text":"hi there","annotations":[]}]}],"usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":0},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":18},"tools":[]}"#;
    const EMBEDDINGS: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":"e","usage":{"prompt_tokens":5,"total_tokens":5}}"#;
    let mut rows = Vec::new();
    for body in [RESPONSES, EMBEDDINGS] {
        let up = FaultUpstream::start(Fault::Status {
            status: 200,
            body,
            retry_after: None,
        })
        .await;
        let fg = Fastgate::start(&up.url()).await;
        let key = fg.key("u").await;
        let res = fg.chat(&key, false).await;
        assert_eq!(res.status(), 200);
        let id = request_id(&res);
        assert_eq!(res.text().await.unwrap(), body);
        let row = fg.wait_audit(&id).await;
        let res = fg.admin_get("/admin/metrics").await;
        assert_eq!(res.status(), 200);
        let m: serde_json::Value = res.json().await.unwrap();
        rows.push((
            row["prompt_tokens"].clone(),
            row["completion_tokens"].clone(),
            row["total_tokens"].clone(),
            m["prompt_tokens"].clone(),
            m["completion_tokens"].clone(),
            m["total_tokens"].clone(),
        ));
    }
    let json = serde_json::Value::from;
    let null = serde_json::Value::Null;
    assert_eq!(
        rows,
        [
            (json(11), json(7), json(18), json(11), json(7), json(18)),
            (json(5), null, json(5), json(5), json(0), json(5)),
        ]
    );
}

/// Admin answers carry `Cache-Control: no-store`: they hold new secrets (create, rotate), audit
/// records and the configuration, which no browser or proxy cache may keep. The dashboard's
/// static files keep their own caching; `/health` and the gateway are not admin answers.
#[tokio::test]
async fn admin_answers_are_not_stored_by_caches() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let no_store = |res: &reqwest::Response, what: &str| {
        assert_eq!(
            res.headers()
                .get("cache-control")
                .and_then(|v| v.to_str().ok()),
            Some("no-store"),
            "{what} ({})",
            res.status()
        );
    };
    let created = fg
        .http
        .post(fg.url("/admin/keys"))
        .header("x-admin-token", ADMIN_TOKEN)
        .json(&serde_json::json!({"source_path": "cache"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    no_store(&created, "create");
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rotated = fg
        .http
        .post(fg.url(&format!("/admin/keys/{id}/rotate")))
        .header("x-admin-token", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    no_store(&rotated, "rotate");
    for path in [
        "/admin/keys",
        &format!("/admin/keys/{id}"),
        "/admin/logs",
        "/admin/logs/export?format=json",
        "/admin/logs/nonexistent",
        "/admin/metrics",
        "/admin/metrics/hourly",
        "/admin/config",
        "/admin/nope",
        "/admin/logs?status=9xx",
    ] {
        no_store(&fg.admin_get(path).await, path);
    }
    // Refusals of the token check too (a cached 401 is harmless, but nothing is cached).
    no_store(
        &fg.http.get(fg.url("/admin/keys")).send().await.unwrap(),
        "401",
    );
    // The dashboard: the page is not stored, its assets are cached as before.
    let page = fg.http.get(fg.url("/admin/ui/")).send().await.unwrap();
    no_store(&page, "/admin/ui/");
    let asset = fg
        .http
        .get(fg.url("/admin/ui/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(asset.status(), 200);
    assert_eq!(asset.headers()["cache-control"], "public, max-age=300");
    // A redirect that carries the token in its Location is not kept either.
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = no_redirects
        .get(fg.url(&format!("/admin/ui?token={ADMIN_TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 308);
    no_store(&redirect, "/admin/ui redirect");
    // Not admin answers.
    let health = fg.http.get(fg.url("/health")).send().await.unwrap();
    assert!(health.headers().get("cache-control").is_none());
}
