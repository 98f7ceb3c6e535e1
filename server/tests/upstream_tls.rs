//! The binary in front of an `https://` backend: `api_gateway.tls` (a private CA, a client
//! certificate, reloaded on SIGHUP), with a real TLS upstream on 127.0.0.1 and certificates made
//! at test time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../fastgate-layer/tests/tls_upstream/mod.rs"]
mod tls_upstream;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Response, Version};
use http_body_util::{BodyExt, Full};
use tls_upstream::{Ca, TlsUpstream, tls_upstream};

/// `fastgate --config <config> check-config`, run from `/` (so that relative paths can only
/// resolve against the config file's directory): (success, stderr + stdout).
fn check_config(config: &Path) -> (bool, String) {
    check_config_with(config, &[])
}

/// [`check_config`] with extra environment variables.
fn check_config_with(config: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = fastgate_cmd()
        .arg("--config")
        .arg(config)
        .arg("check-config")
        .current_dir("/")
        .envs(env.iter().copied())
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

/// Write `conf/config.yaml` under `dir` for `backend`, with `tls` (indented YAML lines) under
/// `api_gateway`; the database stays in `dir`.
fn config_with_tls(dir: &Path, port: u16, backend: &str, tls: &str) -> PathBuf {
    let yaml = config_yaml(port, &dir.join("fastgate.db"), backend)
        .replace("  timeout: 5\n", &format!("  timeout: 5\n  tls:\n{tls}"));
    assert!(yaml.contains("  tls:\n"));
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    let path = dir.join("conf/config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// An upstream with a certificate of `server_ca` for 127.0.0.1, asking for a client certificate
/// of `client_ca` when given, answering every request with a small JSON completion.
async fn json_upstream(server_ca: &Ca, client_ca: Option<&Ca>) -> TlsUpstream {
    json_upstream_named(server_ca, client_ca, &["127.0.0.1"]).await
}

/// [`json_upstream`] with a certificate for `names`.
async fn json_upstream_named(
    server_ca: &Ca,
    client_ca: Option<&Ca>,
    names: &[&str],
) -> TlsUpstream {
    tls_upstream(
        &server_ca.server_cert(names),
        &[b"h2", b"http/1.1"],
        client_ca,
        |_req| async {
            Response::new(
                Full::new(Bytes::from_static(br#"{"id":"chatcmpl-tls","choices":[]}"#))
                    .map_err(|e| match e {})
                    .boxed(),
            )
        },
    )
    .await
}

/// Send SIGHUP and wait until the log holds `marker` once more than before.
async fn reload(fg: &Fastgate, marker: &str) {
    let before = fg.logs().matches(marker).count();
    fg.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fg.logs().matches(marker).count() == before {
        assert!(
            Instant::now() < deadline,
            "no {marker:?} logged:\n{}",
            fg.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_https_backend_behind_a_private_ca_asking_for_a_client_certificate() {
    let server_ca = Ca::new("FastGate test server CA");
    let client_ca = Ca::new("FastGate test client CA");
    let identity = client_ca.client_cert("fastgate-gateway");
    let mut up = json_upstream(&server_ca, Some(&client_ca)).await;

    // Files under `conf/`, beside the config, named by paths relative to it; the server's
    // working directory is the one above.
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("conf/tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    std::fs::write(tls_dir.join("ca.pem"), &server_ca.pem).unwrap();
    std::fs::write(tls_dir.join("client.pem"), &identity.cert_pem).unwrap();
    std::fs::write(tls_dir.join("client.key"), &identity.key_pem).unwrap();
    let port = free_port();
    let config = config_with_tls(
        dir.path(),
        port,
        &format!("https://{}", up.addr),
        "    ca_file: tls/ca.pem\n    client_cert_file: tls/client.pem\n    client_key_file: tls/client.key\n",
    );
    let (ok, text) = check_config(&config);
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
        !logs.contains(&identity.key_pem[40..80]),
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
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(conf.join("client.pem"), &identity.cert_pem).unwrap();
    std::fs::write(conf.join("not-a-cert.pem"), "hello\n").unwrap();
    // Looks like a key, is not one; its text must not be echoed.
    let fake_key = "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL0123456789!!\n-----END PRIVATE KEY-----\n";
    std::fs::write(conf.join("bad.key"), fake_key).unwrap();
    // A key of another certificate.
    let other = ca.client_cert("someone-else");
    std::fs::write(conf.join("other.key"), &other.key_pem).unwrap();

    let cases: [(&str, &str, &str); 7] = [
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
        (
            "    public_roots: false\n",
            "api_gateway.tls.public_roots",
            "unless ca_file",
        ),
    ];
    for (tls, key, message) in cases {
        let config = config_with_tls(dir.path(), port, backend, tls);
        let (ok, text) = check_config(&config);
        assert!(!ok, "{tls}: must be refused");
        assert!(text.contains(key), "{tls}: {text}");
        assert!(text.contains(message), "{tls}: {text}");
        assert!(!text.contains("TOPSECRETKEYMATERIAL"), "{tls}: {text}");
        assert!(!text.contains(&other.key_pem[40..80]), "{tls}: {text}");
    }

    // `fastgate keys …` does not read the TLS files (it may run as a user who cannot).
    let config = config_with_tls(
        dir.path(),
        port,
        backend,
        "    client_cert_file: client.pem\n    client_key_file: missing.key\n",
    );
    let out = fastgate_cmd()
        .arg("--config")
        .arg(&config)
        .args(["keys", "list"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Unknown keys under `tls` are refused like everywhere else in the config.
    let config = config_with_tls(dir.path(), port, backend, "    verify: false\n");
    let (ok, text) = check_config(&config);
    assert!(!ok && text.contains("verify"), "{text}");

    // The usable files pass. A bundle holding a certificate that cannot be parsed is taken,
    // with a warning.
    let config = config_with_tls(dir.path(), port, backend, "    ca_file: ca.pem\n");
    let (ok, text) = check_config(&config);
    assert!(ok, "{text}");
    assert!(!text.contains("warning"), "{text}");
    std::fs::write(
        conf.join("bundle.pem"),
        format!(
            "{}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ca.pem
        ),
    )
    .unwrap();
    let config = config_with_tls(dir.path(), port, backend, "    ca_file: bundle.pem\n");
    let (ok, text) = check_config(&config);
    assert!(ok, "{text}");
    assert!(
        text.contains("warning") && text.contains("1 certificate(s)"),
        "{text}"
    );
}

/// SIGHUP re-reads the TLS files: a client certificate added (or rotated) is presented on the
/// next connection; unusable files refuse the reload, and the running settings stay.
#[tokio::test]
async fn sighup_applies_new_tls_files_and_refuses_broken_ones() {
    let server_ca = Ca::new("FastGate test server CA");
    let client_ca = Ca::new("FastGate test client CA");
    let mut up = json_upstream(&server_ca, Some(&client_ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let conf = root.join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("ca.pem"), &server_ca.pem).unwrap();
    let port = free_port();
    let backend = format!("https://{}", up.addr);
    let config = config_with_tls(&root, port, &backend, "    ca_file: ca.pem\n");
    let fg = Fastgate::spawn_in(dir, config, port, |_| {}).await;
    let key = fg.key("team-tls").await;

    // No client certificate yet: the upstream refuses the connection.
    let res = fg.chat(&key, false).await;
    assert_eq!(res.status(), 502);

    let identity = client_ca.client_cert("fastgate-gateway");
    std::fs::write(conf.join("client.pem"), &identity.cert_pem).unwrap();
    std::fs::write(conf.join("client.key"), &identity.key_pem).unwrap();
    config_with_tls(
        &root,
        port,
        &backend,
        "    ca_file: ca.pem\n    client_cert_file: client.pem\n    client_key_file: client.key\n",
    );
    reload(&fg, "configuration reloaded").await;
    let res = fg.chat(&key, false).await;
    assert_eq!(res.status(), 200, "{}", fg.logs());
    assert!(up.seen.recv().await.unwrap().client_cert);

    // A broken key on the next SIGHUP: the reload is refused, naming the file, and the running
    // settings keep working.
    std::fs::write(conf.join("client.key"), "garbage TOPSECRETKEYMATERIAL\n").unwrap();
    reload(&fg, "reload failed").await;
    let logs = fg.logs();
    assert!(logs.contains("api_gateway.tls.client_key_file"), "{logs}");
    assert!(!logs.contains("TOPSECRETKEYMATERIAL"), "{logs}");
    assert!(!logs.contains(&identity.key_pem[40..80]), "{logs}");
    let res = fg.chat(&key, false).await;
    assert_eq!(res.status(), 200);
}

/// As M-FastGate's HTTP client did, `HTTPS_PROXY` carries the connections to `https://`
/// backends (CONNECT, credentials from the URL); the password is never logged; a proxy FastGate
/// cannot use stops the start.
#[tokio::test]
async fn https_proxy_from_the_environment_carries_https_backends() {
    const HOST: &str = "llm.internal.test";
    let basic = tls_upstream::basic_auth("fg", "proxy-pw-77");
    let ca = Ca::new("FastGate test CA");
    let mut up = json_upstream_named(&ca, None, &[HOST]).await;
    let mut proxy = tls_upstream::connect_proxy(Some(&basic)).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::create_dir(root.join("conf")).unwrap();
    std::fs::write(root.join("conf/ca.pem"), &ca.pem).unwrap();
    let port = free_port();
    // A name nothing resolves: only the proxy (which maps it to 127.0.0.1) can reach it.
    let backend = format!("https://{HOST}:{}", up.addr.port());
    let config = config_with_tls(&root, port, &backend, "    ca_file: ca.pem\n");
    let proxy_url = format!("http://fg:proxy-pw-77@{}", proxy.addr);
    let fg = Fastgate::spawn_in(dir, config.clone(), port, |cmd| {
        cmd.env("HTTPS_PROXY", &proxy_url);
    })
    .await;

    let key = fg.key("team-proxy").await;
    let res = fg.chat(&key, false).await;
    assert_eq!(res.status(), 200, "{}", fg.logs());
    let tunnel = proxy.seen.recv().await.unwrap();
    assert_eq!(tunnel.target, format!("{HOST}:{}", up.addr.port()));
    assert_eq!(tunnel.auth.as_deref(), Some(basic.as_str()));
    let seen = up.seen.recv().await.unwrap();
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {REAL_KEY}").as_str()
    );
    let logs = fg.logs();
    assert!(!logs.contains("proxy-pw-77"), "{logs}");
    assert!(
        !logs.contains(&basic[6..]),
        "the encoded credentials leaked: {logs}"
    );

    // A SOCKS proxy cannot carry TLS for FastGate: refused at start, the variable named, its
    // password not shown. `trust_env: false` ignores the variables.
    let socks = |trust_env: bool| {
        let yaml = std::fs::read_to_string(&config).unwrap();
        let yaml = if trust_env {
            yaml
        } else {
            yaml.replace("  tls:\n", "  trust_env: false\n  tls:\n")
        };
        let other = root.join(format!("conf/socks-{trust_env}.yaml"));
        std::fs::write(&other, yaml).unwrap();
        check_config_with(
            &other,
            &[("ALL_PROXY", "socks5://fg:proxy-pw-77@127.0.0.1:1080")],
        )
    };
    let (ok, text) = socks(true);
    assert!(!ok, "{text}");
    assert!(
        text.contains("ALL_PROXY") && text.contains("api_gateway.trust_env"),
        "{text}"
    );
    assert!(!text.contains("proxy-pw-77"), "{text}");
    let (ok, text) = socks(false);
    assert!(ok, "{text}");
}
