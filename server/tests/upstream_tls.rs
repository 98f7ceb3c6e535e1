//! The binary in front of an `https://` backend: `api_gateway.tls` (a private CA, a client
//! certificate), with a real TLS upstream on 127.0.0.1 and certificates made at test time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../fastgate-layer/tests/tls_upstream/mod.rs"]
mod tls_upstream;

use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::*;
use http::{Response, Version};
use http_body_util::{BodyExt, Full};
use tls_upstream::{Ca, tls_upstream};

/// `fastgate --config <config> check-config`: (success, stderr + stdout).
fn check_config(dir: &Path, config: &Path) -> (bool, String) {
    let out = Command::new(bin())
        .arg("--config")
        .arg(config)
        .arg("check-config")
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.success(), text)
}

/// The test config for `backend` with `tls` (indented YAML lines) under `api_gateway`.
fn config_with_tls(dir: &Path, port: u16, backend: &str, tls: &str) -> std::path::PathBuf {
    let yaml = config_yaml(port, &dir.join("fastgate.db"), backend)
        .replace("  timeout: 5\n", &format!("  timeout: 5\n  tls:\n{tls}"));
    assert!(yaml.contains("  tls:\n"));
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test]
async fn an_https_backend_behind_a_private_ca_asking_for_a_client_certificate() {
    let server_ca = Ca::new("FastGate test server CA");
    let client_ca = Ca::new("FastGate test client CA");
    let identity = client_ca.client_cert("fastgate-gateway");
    let mut up = tls_upstream(
        &server_ca.server_cert(&["127.0.0.1"]),
        &[b"h2", b"http/1.1"],
        Some(&client_ca),
        |_req| async {
            Response::new(
                Full::new(Bytes::from_static(br#"{"id":"chatcmpl-tls","choices":[]}"#))
                    .map_err(|e| match e {})
                    .boxed(),
            )
        },
    )
    .await;

    // Files beside the config, named by relative paths.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/ca.pem"), &server_ca.pem).unwrap();
    std::fs::write(dir.path().join("tls/client.pem"), &identity.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls/client.key"), &identity.key_pem).unwrap();
    let port = free_port();
    let config = config_with_tls(
        dir.path(),
        port,
        &format!("https://{}", up.addr),
        "    ca_file: tls/ca.pem\n    client_cert_file: tls/client.pem\n    client_key_file: tls/client.key\n",
    );
    let (ok, text) = check_config(dir.path(), &config);
    assert!(ok, "{text}");
    let fg = Fastgate::spawn_in(dir, config, port, |_| {}).await;

    let key = fg.key("team-tls").await;
    let res = fg.chat(&key, false).await;
    assert_eq!(res.status(), 200);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["id"], "chatcmpl-tls");

    let seen = up.seen.recv().await.unwrap();
    assert_eq!(seen.version, Version::HTTP_2, "h2 offered through ALPN");
    assert!(seen.client_cert, "the client certificate was presented");
    assert_eq!(seen.path, BACKEND_PATH);
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {REAL_KEY}").as_str()
    );
    assert!(seen.headers.get("x-api-key").is_none());

    let row = fg.wait_audit(&request_id).await;
    assert_eq!(
        row["target_url"],
        format!("https://{}{BACKEND_PATH}", up.addr)
    );
    assert_eq!(row["status"], 200);
    let logs = fg.logs();
    assert!(
        !logs.contains(&identity.key_pem),
        "the client key is never logged"
    );
}

#[tokio::test]
async fn unusable_tls_files_stop_the_start_with_the_file_named_and_no_key_shown() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let backend = "https://127.0.0.1:9";
    let ca = Ca::new("FastGate test CA");
    let identity = ca.client_cert("fastgate-gateway");
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(dir.path().join("client.pem"), &identity.cert_pem).unwrap();
    std::fs::write(dir.path().join("not-a-cert.pem"), "hello\n").unwrap();
    // Looks like a key, is not one; its text must not be echoed.
    let fake_key = "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL0123456789!!\n-----END PRIVATE KEY-----\n";
    std::fs::write(dir.path().join("bad.key"), fake_key).unwrap();
    // A key of another certificate.
    let other = ca.client_cert("someone-else");
    std::fs::write(dir.path().join("other.key"), &other.key_pem).unwrap();

    let cases: [(&str, &str, &str); 6] = [
        (
            "    ca_file: missing.pem\n",
            "api_gateway.tls.ca_file",
            "cannot read",
        ),
        (
            "    ca_file: not-a-cert.pem\n",
            "api_gateway.tls.ca_file",
            "holds no certificate",
        ),
        (
            "    client_cert_file: client.pem\n",
            "api_gateway.tls.client_key_file",
            "must be set",
        ),
        (
            "    client_key_file: client.pem\n",
            "api_gateway.tls.client_cert_file",
            "must be set",
        ),
        (
            "    client_cert_file: client.pem\n    client_key_file: bad.key\n",
            "api_gateway.tls.client_key_file",
            "no readable private key",
        ),
        (
            "    client_cert_file: client.pem\n    client_key_file: other.key\n",
            "api_gateway.tls.client_key_file",
            "not a usable certificate and key pair",
        ),
    ];
    for (tls, key, message) in cases {
        let config = config_with_tls(dir.path(), port, backend, tls);
        let (ok, text) = check_config(dir.path(), &config);
        assert!(!ok, "{tls}: must be refused");
        assert!(text.contains(key), "{tls}: {text}");
        assert!(text.contains(message), "{tls}: {text}");
        assert!(!text.contains("TOPSECRETKEYMATERIAL"), "{tls}: {text}");
        assert!(!text.contains(&other.key_pem[40..80]), "{tls}: {text}");
    }

    // Unknown keys under `tls` are refused like everywhere else in the config.
    let config = config_with_tls(dir.path(), port, backend, "    verify: false\n");
    let (ok, text) = check_config(dir.path(), &config);
    assert!(!ok && text.contains("verify"), "{text}");

    // The usable files pass.
    let config = config_with_tls(dir.path(), port, backend, "    ca_file: ca.pem\n");
    let (ok, text) = check_config(dir.path(), &config);
    assert!(ok, "{text}");
}
