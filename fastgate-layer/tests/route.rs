//! Loopback: swapping the route table redirects new requests; in-flight ones keep their backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use fastgate_layer::RouteConfig;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

#[tokio::test]
async fn replace_routes_while_a_stream_is_in_flight() {
    // Upstream A streams two chunks with a pause; upstream B answers "b".
    let a = upstream(|_req| async {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            tx.send(Ok(Bytes::from_static(b"a1"))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            tx.send(Ok(Bytes::from_static(b"a2"))).await.unwrap();
        });
        Response::new(body)
    })
    .await;
    let b = upstream(|_req| async { Response::new(full("b")) }).await;

    let table = routes(backend(a));
    let svc = fastgate_layer::GatewayBuilder::new(keys(), table.clone()).build::<Incoming>();
    let addr = serve(svc).await;

    let res = client().request(chat(addr, full("{}"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut in_flight = res.into_body();
    let first = in_flight
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, "a1");

    table.replace(HashMap::from([(
        ROUTE.to_owned(),
        RouteConfig {
            name: "moved".into(),
            permission: "chat".into(),
            backend: Arc::new(backend(b)),
        },
    )]));
    let res = client().request(chat(addr, full("{}"))).await.unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "b");

    let rest = in_flight.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "a2", "the in-flight stream keeps its backend");

    table.replace(HashMap::new());
    let res = client().request(chat(addr, full("{}"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_prefix_route_forwards_the_rest_of_the_path_and_audits_its_target() {
    let seen: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let record = Arc::clone(&seen);
    let up = upstream(move |req| {
        let auth = req.headers()[http::header::AUTHORIZATION]
            .to_str()
            .unwrap()
            .to_owned();
        record.lock().unwrap().push((req.uri().to_string(), auth));
        async { Response::new(full("{}")) }
    })
    .await;
    let mut prefix_backend = backend(up);
    prefix_backend.path = "/v1".into();
    let table = fastgate_layer::route::RouteTable::new(HashMap::from([(
        "/proxy/openai/*".to_owned(),
        RouteConfig {
            name: "openai".into(),
            permission: "chat".into(),
            backend: Arc::new(prefix_backend),
        },
    )]));
    let sink = fastgate_layer::audit::MemorySink::default();
    let (audit, worker) =
        fastgate_layer::audit::AuditLayer::pair(sink.clone(), test_audit_config());
    tokio::spawn(worker.run());
    let svc = fastgate_layer::GatewayBuilder::new(keys(), table)
        .audit(audit)
        .build::<Incoming>();
    let addr = serve(svc).await;
    let get = |path: &str| {
        http::Request::get(format!("http://{addr}{path}"))
            .header("x-api-key", CLIENT_KEY)
            .body(full(""))
            .unwrap()
    };
    for (path, upstream_uri) in [
        (
            "/proxy/openai/models/gpt-4?x=1",
            "/base/v1/models/gpt-4?x=1",
        ),
        ("/proxy/openai", "/base/v1"),
        ("/proxy/openai/", "/base/v1/"),
    ] {
        let res = client().request(get(path)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let (uri, auth) = seen.lock().unwrap().pop().unwrap();
        assert_eq!(uri, upstream_uri);
        assert_eq!(auth, format!("Bearer {UPSTREAM_KEY}"));
    }
    for path in [
        "/proxy/openai/%2e%2e/x",
        "/proxy/openai/a%2Fb",
        "/proxy/openai//x",
    ] {
        let res = client().request(get(path)).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a refused path reached the upstream"
    );

    tokio::time::timeout(Duration::from_secs(10), sink.wait_for(6))
        .await
        .unwrap();
    let events = sink.events();
    let first = &events[0];
    assert_eq!(first.path, "/proxy/openai/models/gpt-4");
    assert_eq!(
        first.target_url.as_deref(),
        Some(&*format!("http://{up}/base/v1/models/gpt-4"))
    );
    assert_eq!(
        events[2].target_url.as_deref(),
        Some(&*format!("http://{up}/base/v1/"))
    );
    let refused = &events[3];
    assert_eq!(refused.path, "/proxy/openai/%2e%2e/x");
    assert_eq!((refused.status, refused.target_url.as_deref()), (400, None));
    assert_eq!(refused.error_code, Some("invalid_path"));
}
