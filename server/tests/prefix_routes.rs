//! Prefix routes of the routes file (`path: /proxy/openai/*`) through the real binary: the rest
//! of the path forwarded below the backend path with the route's real key, exact routes first
//! (in every spelling FastAPI would have taken for them), paths that could leave the backend
//! path refused before they reach it, audit rows with the client's path and the real target,
//! and a reload.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;

const PREFIX_KEY: &str = "sk-prefix-route-key-77";

fn routes_yaml(upstream: &str, prefix: &str) -> String {
    format!(
        "routes:\n  - path: {prefix}/*\n    backend_url: {upstream}\n    backend_path: /v1\n    \
         real_api_key: {PREFIX_KEY}\n    permission: chat\n  - path: {prefix}/embeddings\n    \
         backend_url: {upstream}\n    backend_path: /v1/embeddings\n    permission: embed\n"
    )
}

/// The status of a raw HTTP/1.1 GET of `path` (sent as written: a client library would
/// normalise `..` and some escapes away), and the answer's text.
async fn raw_get(fg: &Fastgate, path: &str, key: &str) -> (u16, String) {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n");
    let answer = raw_http(fg.port, request.as_bytes()).await;
    (raw_status(&answer), answer)
}

#[tokio::test]
async fn prefix_routes_forward_below_the_backend_path_and_refuse_escapes() {
    let upstream = Upstream::start().await;
    let routes_dir = tempfile::tempdir().unwrap();
    let routes = routes_dir.path().join("routes.yaml");
    std::fs::write(&routes, routes_yaml(&upstream.url(), "/proxy/openai")).unwrap();
    let routes_line = format!(
        "  async_audit: true\n  routes_file: \"{}\"",
        routes.display()
    );
    let fg = Fastgate::start_with(
        &upstream.url(),
        |y| *y = y.replace("  async_audit: true", &routes_line),
        &[],
    )
    .await;
    // The prefix route covers the exact route's backend path with another permission: warned
    // about at start, naming both routes.
    assert!(
        fg.logs().contains(
            "prefix route /proxy/openai/* covers the backend path of route \
             /proxy/openai/embeddings"
        ),
        "{}",
        fg.logs()
    );
    let chat_key = fg.new_key("u-chat").await;
    let (status, created) = send_json(
        fg.http
            .post(fg.url(&format!("/admin/keys?token={ADMIN_TOKEN}")))
            .json(&serde_json::json!({ "source_path": "u-embed", "permissions": ["embed"] })),
    )
    .await;
    assert_eq!(status, 200);
    let embed_key = created["api_key"].as_str().unwrap().to_owned();

    // An SDK's `models.retrieve("gpt-4")`: the rest of the path and the query go below /v1,
    // with the route's own real key instead of the client's.
    let res = fg
        .http
        .get(fg.url("/proxy/openai/models/gpt-4?x=1"))
        .header("Authorization", format!("Bearer {chat_key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let rid = request_id(&res);
    let seen = upstream.last();
    assert_eq!(seen.path, "/v1/models/gpt-4");
    assert_eq!(seen.query.as_deref(), Some("x=1"));
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {PREFIX_KEY}")
    );
    assert!(!seen.headers.contains_key("x-api-key"));
    let row = fg.wait_audit(&rid).await;
    assert_eq!(row["path"], "/proxy/openai/models/gpt-4");
    assert_eq!(
        row["target_url"],
        format!("{}/v1/models/gpt-4", upstream.url())
    );
    assert!(!row.to_string().contains(PREFIX_KEY));
    // The prefix itself, and with a trailing slash.
    for (path, want) in [("/proxy/openai", "/v1"), ("/proxy/openai/", "/v1/")] {
        let (status, _) = raw_get(&fg, path, &chat_key).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(upstream.last().path, want, "{path}");
    }

    // The exact route below the prefix keeps its permission, in every FastAPI spelling.
    let post = |path: &str, key: &str| {
        fg.http
            .post(fg.url(path))
            .header("X-API-Key", key)
            .body("{}")
            .send()
    };
    for path in [
        "/proxy/openai/embeddings",
        "/proxy/openai/embeddings/",
        "/proxy/openai/%65mbeddings",
    ] {
        let (status, answer) = raw_get(&fg, path, &chat_key).await;
        assert_eq!(status, 403, "{path}: {answer}");
    }
    let before = upstream.count();
    let res = post("/proxy/openai/embeddings/", &embed_key).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(upstream.count(), before + 1);
    let seen = upstream.last();
    assert_eq!(seen.path, "/v1/embeddings");
    assert_eq!(seen.headers["authorization"], format!("Bearer {REAL_KEY}"));
    // And the embed key has no business with the prefix route.
    let res = post("/proxy/openai/models", &embed_key).await.unwrap();
    assert_eq!(res.status(), 403);

    // Paths that could leave /v1 (or reach the exact route's backend path under the prefix
    // route's permission): refused, never forwarded.
    let before = upstream.count();
    let refused = [
        "/proxy/openai/../admin/keys",
        "/proxy/openai/./models",
        "/proxy/openai/models/..",
        "/proxy/openai/%2e%2e/x",
        "/proxy/openai/%2E%2e/x",
        "/proxy/openai/.%2E/x",
        "/proxy/openai/a%2fb",
        "/proxy/openai/a%2Fb",
        "/proxy/openai/a%5Cb",
        "/proxy/openai/a\\b",
        "/proxy/openai//x",
        "/proxy/openai/%65mbeddings/x",
        "/proxy/openai/%252e%252e/x",
        // `;x` is dropped by servlet containers: the exact route's path with the prefix
        // route's permission. And segments some backends take for `..`.
        "/proxy/openai/embeddings;x",
        "/proxy/openai/embeddings%3Bx",
        "/proxy/openai/..%20/x",
        "/proxy/openai/.../x",
        "/proxy/openai/%ef%bc%8e%ef%bc%8e/x",
        "/proxy/openai/embeddings.",
    ];
    for path in refused {
        let (status, answer) = raw_get(&fg, path, &chat_key).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(answer.contains("\"code\":\"invalid_path\""), "{answer}");
    }
    // Also without a key: refused before the key is looked at.
    assert_eq!(raw_get(&fg, "/proxy/openai/%2e%2e/x", "").await.0, 400);
    assert_eq!(
        upstream.count(),
        before,
        "a refused path reached the upstream"
    );
    let rows = fg
        .wait_logs("&status_code=400", |items| items.len() > refused.len())
        .await;
    for path in refused {
        let row = rows
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no audit row for {path}"));
        assert!(row["target_url"].is_null(), "{row}");
    }
    // Only at a segment boundary.
    assert_eq!(
        raw_get(&fg, "/proxy/openaix/models", &chat_key).await.0,
        404
    );

    // The admin view lists it under its /* path.
    let config: serde_json::Value = fg.admin_get("/admin/config").await.json().await.unwrap();
    let shown = config["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "/proxy/openai/*")
        .unwrap_or_else(|| panic!("{config}"));
    assert_eq!(shown["backend_path"], "/v1");
    assert_eq!(shown["real_api_key"], "******");

    // A reload moves the prefix.
    std::fs::write(&routes, routes_yaml(&upstream.url(), "/proxy/vllm")).unwrap();
    fg.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while raw_get(&fg, "/proxy/vllm/models", &chat_key).await.0 != 200 {
        assert!(Instant::now() < deadline, "not reloaded:\n{}", fg.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.last().path, "/v1/models");
    assert_eq!(raw_get(&fg, "/proxy/openai/models", &chat_key).await.0, 404);
    assert!(!fg.logs().contains(PREFIX_KEY));
}
