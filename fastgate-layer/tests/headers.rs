//! Loopback: what the upstream receives, and what the client gets back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

#[tokio::test]
async fn upstream_sees_real_key_and_no_client_credentials_or_hop_headers() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(String, http::HeaderMap, Bytes)>();
    let up = upstream(move |req: Request<hyper::body::Incoming>| {
        let seen_tx = seen_tx.clone();
        async move {
            let uri = req.uri().to_string();
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            seen_tx.send((uri, parts.headers, body)).unwrap();
            let mut res = Response::new(full(r#"{"ok":true}"#));
            res.headers_mut()
                .insert("x-upstream-header", "passes".parse().unwrap());
            res
        }
    })
    .await;
    let gw = gateway(backend(up), test_audit_config(), 1 << 20, true).await;

    let styles: [(&str, String); 2] = [
        ("x-api-key", CLIENT_KEY.to_owned()),
        ("authorization", format!("Bearer {CLIENT_KEY}")),
    ];
    for (name, value) in styles {
        let req = Request::post(format!("http://{}{ROUTE}?stream=false&x=1", gw.addr))
            .header(name, &value)
            .header("x-forwarded-for", "10.1.2.3")
            .header("connection", "keep-alive, x-hop-secret")
            .header("x-hop-secret", "must-not-pass")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("proxy-authorization", "Basic cHJveHk=")
            .header("x-unknown-custom", "kept as is")
            .header("x-request-id", "client-req-1")
            .header("content-type", "application/json")
            .body(full(r#"{"model":"m1"}"#))
            .unwrap();
        let res = client().request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "auth style {name}");
        assert_eq!(res.headers()["x-request-id"], "client-req-1");
        assert_eq!(res.headers()["x-upstream-header"], "passes");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, r#"{"ok":true}"#);

        let (uri, headers, body) = seen_rx.recv().await.unwrap();
        assert_eq!(uri, "/base/v1/chat/completions?stream=false&x=1");
        assert_eq!(body, r#"{"model":"m1"}"#);
        assert_eq!(headers["authorization"], format!("Bearer {UPSTREAM_KEY}"));
        for gone in [
            "x-api-key",
            "x-forwarded-for",
            "forwarded",
            "x-hop-secret",
            "keep-alive",
            "te",
            "proxy-authorization",
            "upgrade",
            "trailer",
        ] {
            assert!(headers.get(gone).is_none(), "{gone} reached the upstream");
        }
        assert_eq!(headers["x-unknown-custom"], "kept as is");
        assert_eq!(headers["x-request-id"], "client-req-1");
        assert_eq!(headers["host"], up.to_string());
        let all = headers_json(&headers);
        assert!(
            !all.contains(CLIENT_KEY),
            "client key leaked upstream:\n{all}"
        );
    }
}

#[tokio::test]
async fn errors_are_json_with_request_id_and_upstream_errors_pass_unchanged() {
    let up = upstream(|_req| async {
        let mut res = Response::new(full(r#"{"error":{"message":"slow down"}}"#));
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        res.headers_mut()
            .insert("retry-after", "7".parse().unwrap());
        res
    })
    .await;
    let gw = gateway(backend(up), test_audit_config(), 1 << 20, true).await;

    let res = client().request(chat(gw.addr, full("{}"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "7");
    assert!(res.headers().contains_key("x-request-id"));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, r#"{"error":{"message":"slow down"}}"#);

    let req = Request::post(format!("http://{}{ROUTE}", gw.addr))
        .header("x-api-key", "sk-wrong")
        .body(full("{}"))
        .unwrap();
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["content-type"], "application/json");
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["code"], "invalid_api_key");
    assert!(!String::from_utf8_lossy(&body).contains("sk-wrong"));

    let req = Request::get(format!("http://{}/proxy/unknown", gw.addr))
        .header("x-api-key", CLIENT_KEY)
        .body(full(Bytes::new()))
        .unwrap();
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn http2_client_is_forwarded_as_http1_upstream() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(http::Version, String)>();
    let up = upstream(move |req: Request<hyper::body::Incoming>| {
        let seen_tx = seen_tx.clone();
        async move {
            let host = req.headers()["host"].to_str().unwrap().to_owned();
            seen_tx.send((req.version(), host)).unwrap();
            Response::new(full("ok"))
        }
    })
    .await;
    let gw = gateway(backend(up), test_audit_config(), 1 << 20, true).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let res = h2.request(chat(gw.addr, full("{}"))).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("x-request-id"));
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    let (version, host) = seen_rx.recv().await.unwrap();
    assert_eq!(version, http::Version::HTTP_11);
    assert_eq!(host, up.to_string());
}

/// A gateway key a client also put in the query string (`?api_key=…`, `?key=…`) is not forwarded:
/// the parameters holding it are removed, the others kept in order.
#[tokio::test]
async fn the_gateway_key_in_the_query_string_is_not_forwarded() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<String>();
    let up = upstream(move |req: Request<hyper::body::Incoming>| {
        let seen_tx = seen_tx.clone();
        async move {
            seen_tx.send(req.uri().to_string()).unwrap();
            Response::new(full("{}"))
        }
    })
    .await;
    let gw = gateway(backend(up), test_audit_config(), 1 << 20, true).await;
    let cases = [
        (format!("?api_key={CLIENT_KEY}"), ""),
        (format!("?a=1&key={CLIENT_KEY}&b=2"), "?a=1&b=2"),
        (
            format!("?token=Bearer%20{CLIENT_KEY}&stream=true"),
            "?stream=true",
        ),
        (format!("?token=Bearer+{CLIENT_KEY}"), ""),
        // Percent-encoded: decoded before it is compared.
        (
            format!("?key={}&x=1", CLIENT_KEY.replace('-', "%2D")),
            "?x=1",
        ),
        ("?a=1&b=2".to_owned(), "?a=1&b=2"),
        // A value that merely contains the key is someone else's.
        (
            format!("?model={CLIENT_KEY}2&n=1"),
            "?model=sk-client-test-12&n=1",
        ),
        ("?q=100%25".to_owned(), "?q=100%25"),
    ];
    for (query, forwarded) in cases {
        let req = Request::post(format!("http://{}{ROUTE}{query}", gw.addr))
            .header("x-api-key", CLIENT_KEY)
            .body(full("{}"))
            .unwrap();
        let res = client().request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{query}");
        res.into_body().collect().await.unwrap();
        let uri = seen_rx.recv().await.unwrap();
        assert_eq!(
            uri,
            format!("/base/v1/chat/completions{forwarded}"),
            "{query}"
        );
    }
}
