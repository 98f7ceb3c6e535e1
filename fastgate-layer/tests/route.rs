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
use tokio::net::TcpListener;

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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = svc.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(
                    hyper_util::rt::TokioIo::new(stream),
                    hyper_util::service::TowerToHyperService::new(svc),
                )
                .await;
            });
        }
    });

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
