//! Loopback: `https://` backends. A real TLS upstream (tokio-rustls, certificates made at test
//! time) in front of hyper; the whole stack in front of it, configured through
//! `ForwardConfig::tls_client_config`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod tls_upstream;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use fastgate_layer::forward::{ForwardConfig, UpstreamTls};
use fastgate_layer::{Backend, Outcome};
use http::{Response, StatusCode, Version};
use http_body_util::BodyExt;
use tls_upstream::{Ca, Leaf, TlsUpstream, tls_upstream};
use tokio::sync::mpsc;

const HTTP1_ONLY: &[&[u8]] = &[b"http/1.1"];
const H2_AND_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];

fn https_backend(addr: SocketAddr) -> Backend {
    let mut b = backend(addr);
    b.base_url = format!("https://{addr}/base").parse().unwrap();
    b
}

/// The whole stack in front of `backend`, with `forward` settings (audit worker running).
async fn tls_gateway(backend: Backend, forward: ForwardConfig) -> Gateway {
    gateway_with_forward(backend, test_audit_config(), 1 << 20, true, forward).await
}

/// Forward settings that trust `ca` only, presenting `identity` when given.
fn trusting(ca: &Ca, identity: Option<&Leaf>) -> ForwardConfig {
    ForwardConfig::default().tls_client_config(client_tls(ca, identity))
}

/// Client settings that trust `ca` only, presenting `identity` when given.
fn client_tls(ca: &Ca, identity: Option<&Leaf>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let builder = fastgate_layer::forward::tls_config_builder()
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.cert_der.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf.key_der.clone().into()),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// Wait (bounded) until the upstream has seen a failed handshake: the gateway's 502 may come
/// back before the upstream's accept task has counted it.
async fn handshake_failed(up: &TlsUpstream) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while up.handshakes_failed() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the handshake must have failed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn ok_upstream(cert: &Leaf, alpn: &[&[u8]], client_ca: Option<&Ca>) -> TlsUpstream {
    tls_upstream(cert, alpn, client_ca, |_req| async {
        Response::new(full(r#"{"id":"chatcmpl-tls","choices":[]}"#))
    })
    .await
}

async fn body_of(res: Response<hyper::body::Incoming>) -> Bytes {
    tokio::time::timeout(Duration::from_secs(10), res.into_body().collect())
        .await
        .expect("body in time")
        .unwrap()
        .to_bytes()
}

async fn send(gw: &Gateway, request_id: &str) -> (StatusCode, serde_json::Value) {
    let mut req = chat(gw.addr, full(r#"{"model":"m"}"#));
    req.headers_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    let res = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("answer in time")
        .unwrap();
    let status = res.status();
    let body = body_of(res).await;
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn a_private_ca_given_in_the_tls_config_is_trusted() {
    let ca = Ca::new("FastGate test CA");
    let mut up = ok_upstream(&ca.server_cert(&["127.0.0.1"]), HTTP1_ONLY, None).await;
    let gw = tls_gateway(https_backend(up.addr), trusting(&ca, None)).await;

    let (status, body) = send(&gw, "tls-ok").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], "chatcmpl-tls");
    let seen = up.seen.recv().await.unwrap();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.path, "/base/v1/chat/completions");
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}").as_str()
    );
    assert!(seen.headers.get("x-api-key").is_none());
    assert!(!seen.client_cert);

    let e = exactly_one(&gw, "tls-ok").await;
    assert_eq!(e.outcome, Outcome::Completed);
    assert_eq!(
        e.target_url.as_deref(),
        Some(format!("https://{}/base/v1/chat/completions", up.addr).as_str())
    );
}

#[tokio::test]
async fn an_untrusted_or_misnamed_certificate_is_refused_with_a_502() {
    let ca = Ca::new("FastGate test CA");
    // Mozilla's roots (the default) do not hold the test CA.
    let untrusted = ok_upstream(&ca.server_cert(&["127.0.0.1"]), HTTP1_ONLY, None).await;
    // Trusted CA, but a certificate for another name.
    let misnamed = ok_upstream(&ca.server_cert(&["other.invalid"]), HTTP1_ONLY, None).await;
    for (up, forward, id) in [
        (&untrusted, ForwardConfig::default(), "tls-untrusted"),
        (&misnamed, trusting(&ca, None), "tls-misnamed"),
    ] {
        let gw = tls_gateway(https_backend(up.addr), forward).await;
        let (status, body) = send(&gw, id).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{id}: {body}");
        assert_eq!(
            body["error"]["code"], "upstream_unreachable",
            "{id}: {body}"
        );
        assert!(body["error"]["message"].is_string());
        assert!(!body.to_string().contains(UPSTREAM_KEY));
        assert!(!body.to_string().contains(CLIENT_KEY));
        let e = exactly_one(&gw, id).await;
        assert_eq!(e.outcome, Outcome::UpstreamError);
        assert_eq!(e.status, 502);
        handshake_failed(up).await;
    }
}

#[tokio::test]
async fn http2_is_negotiated_through_alpn_and_events_pass_one_by_one() {
    const N: usize = 5;
    let ca = Ca::new("FastGate test CA");
    // The upstream sends event i only once the test has read event i - 1 through the gateway:
    // a gateway that held events back would stall this test (and time out).
    let (go_tx, go_rx) = mpsc::unbounded_channel::<()>();
    let go_rx = std::sync::Arc::new(tokio::sync::Mutex::new(go_rx));
    let mut up = tls_upstream(
        &ca.server_cert(&["127.0.0.1"]),
        H2_AND_HTTP1,
        None,
        move |_req| {
            let go_rx = std::sync::Arc::clone(&go_rx);
            async move {
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    let mut go = go_rx.lock().await;
                    for i in 0..N {
                        if i > 0 && go.recv().await.is_none() {
                            return;
                        }
                        let event = format!("data: {{\"n\":{i}}}\n\n");
                        if tx.send(Ok(Bytes::from(event))).await.is_err() {
                            return;
                        }
                    }
                });
                let mut res = Response::new(body);
                res.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                res
            }
        },
    )
    .await;
    let gw = tls_gateway(https_backend(up.addr), trusting(&ca, None)).await;

    let mut req = chat(gw.addr, full(r#"{"model":"m","stream":true}"#));
    req.headers_mut()
        .insert("x-request-id", "tls-h2".parse().unwrap());
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.seen.recv().await.unwrap().version, Version::HTTP_2);
    let mut body = res.into_body();
    let mut got = Vec::new();
    for i in 0..N {
        let want = format!("data: {{\"n\":{i}}}\n\n");
        while got.len() < want.len() {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .unwrap_or_else(|_| panic!("event {i} held back by the gateway"))
                .expect("stream ended early")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
        assert_eq!(&got[..want.len()], want.as_bytes());
        got.drain(..want.len());
        let _ = go_tx.send(());
    }
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(got.is_empty() && rest.is_empty());
    let e = exactly_one(&gw, "tls-h2").await;
    assert_eq!(e.outcome, Outcome::Completed);
    assert!(e.is_stream);
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_an_upstream_that_asks_for_one() {
    let server_ca = Ca::new("FastGate test server CA");
    let client_ca = Ca::new("FastGate test client CA");
    let identity = client_ca.client_cert("fastgate-gateway");
    let mut up = ok_upstream(
        &server_ca.server_cert(&["127.0.0.1"]),
        HTTP1_ONLY,
        Some(&client_ca),
    )
    .await;

    let with = tls_gateway(
        https_backend(up.addr),
        trusting(&server_ca, Some(&identity)),
    )
    .await;
    let (status, body) = send(&with, "mtls-ok").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(up.seen.recv().await.unwrap().client_cert);

    // Without the certificate the upstream refuses the connection (during or right after the
    // handshake, depending on the TLS version): 502, never a 200.
    let without = tls_gateway(https_backend(up.addr), trusting(&server_ca, None)).await;
    let (status, body) = send(&without, "mtls-missing").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let code = body["error"]["code"].as_str().unwrap();
    assert!(
        code == "upstream_unreachable" || code == "upstream_error",
        "{body}"
    );
    assert!(
        up.seen.try_recv().is_err(),
        "no request may reach the upstream"
    );
    handshake_failed(&up).await;
}

#[tokio::test]
async fn replaced_tls_settings_apply_to_the_next_connection() {
    let ca = Ca::new("FastGate test CA");
    let mut up = ok_upstream(&ca.server_cert(&["127.0.0.1"]), HTTP1_ONLY, None).await;
    let tls = UpstreamTls::mozilla_roots();
    let gw = tls_gateway(
        https_backend(up.addr),
        ForwardConfig::default().upstream_tls(tls.clone()),
    )
    .await;
    let (status, body) = send(&gw, "tls-before").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");

    // E.g. a configuration reload with a new `ca_file`.
    tls.replace(client_tls(&ca, None));
    let (status, body) = send(&gw, "tls-after").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(up.seen.recv().await.unwrap().version, Version::HTTP_11);

    // Trust withdrawn (the CA removed from `ca_file`): the kept-alive connection opened under
    // the old settings is not used again; the new handshake fails.
    tls.replace(client_tls(&Ca::new("another CA"), None));
    let (status, body) = send(&gw, "tls-withdrawn").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        up.seen.try_recv().is_err(),
        "served over the old connection"
    );
}

#[tokio::test]
async fn an_egress_proxy_tunnels_https_backends_and_no_proxy_hosts_go_direct() {
    const HOST: &str = "llm.internal.test";
    let ca = Ca::new("FastGate test CA");
    let mut up = ok_upstream(&ca.server_cert(&[HOST]), H2_AND_HTTP1, None).await;
    let mut proxy =
        tls_upstream::connect_proxy(Some(&tls_upstream::basic_auth("fg", "proxy-pw"))).await;
    // A name nothing resolves: only the proxy (which maps it to 127.0.0.1) can reach it.
    let backend = || {
        let mut b = backend(up.addr);
        b.base_url = format!("https://{HOST}:{}/base", up.addr.port())
            .parse()
            .unwrap();
        b
    };
    let via = |user: &str, no_proxy: &str| {
        let proxy_url = format!("http://{user}:proxy-pw@{}", proxy.addr);
        trusting(&ca, None).egress_proxy(
            fastgate_layer::forward::Matcher::builder()
                .https(proxy_url)
                .no(no_proxy)
                .build(),
        )
    };

    let gw = tls_gateway(backend(), via("fg", "")).await;
    let (status, body) = send(&gw, "proxied").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let tunnel = proxy.seen.recv().await.unwrap();
    assert_eq!(tunnel.target, format!("{HOST}:{}", up.addr.port()));
    assert_eq!(
        tunnel.auth.as_deref(),
        Some(tls_upstream::basic_auth("fg", "proxy-pw").as_str())
    );
    // TLS ran end to end with the backend, through the tunnel.
    let seen = up.seen.recv().await.unwrap();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}").as_str()
    );
    assert!(seen.headers.get("proxy-authorization").is_none());

    // Refused by the proxy (wrong credentials): 502.
    let gw = tls_gateway(backend(), via("other", "")).await;
    let (status, body) = send(&gw, "proxy-refused").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(
        proxy.seen.recv().await.unwrap().auth,
        Some(tls_upstream::basic_auth("other", "proxy-pw"))
    );

    // NO_PROXY names the host: a direct connection. It normally fails (nothing resolves the
    // name; a resolver that maps it to 127.0.0.1 would let it succeed): either way, not through
    // the proxy.
    let gw = tls_gateway(backend(), via("fg", HOST)).await;
    let (status, body) = send(&gw, "no-proxy").await;
    assert!(
        status == StatusCode::BAD_GATEWAY || status == StatusCode::OK,
        "{status}: {body}"
    );
    assert!(
        proxy.seen.try_recv().is_err(),
        "NO_PROXY host went through the proxy"
    );

    // Loopback backends never go through the proxy.
    let mut direct = ok_upstream(&ca.server_cert(&["127.0.0.1"]), HTTP1_ONLY, None).await;
    let gw = tls_gateway(https_backend(direct.addr), via("fg", "")).await;
    let (status, body) = send(&gw, "loopback").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(direct.seen.recv().await.is_some());
    assert!(
        proxy.seen.try_recv().is_err(),
        "loopback went through the proxy"
    );
}
