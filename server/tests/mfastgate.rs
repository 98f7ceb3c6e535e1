//! Moving over from M-FastGate: its database is refused (and left unchanged) at start, then
//! imported with `fastgate import-mfastgate`; its clients' keys keep working, its audit log is
//! readable, and no secret lands in FastGate's database. Also M-FastGate's other habits: uvicorn's
//! `--host` / `--port` flags. The real binary, a real SQLite file shaped as SQLAlchemy creates
//! M-FastGate's tables, real HTTP on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use sqlx::{Connection as _, Executor as _};

/// M-FastGate's tables, as SQLAlchemy's `create_all` writes them on SQLite.
const MFASTGATE_SCHEMA: &str = "
CREATE TABLE api_keys (
    key_id VARCHAR(50) NOT NULL,
    key_value VARCHAR(100) NOT NULL,
    source_path VARCHAR(100) NOT NULL,
    permissions TEXT,
    created_at DATETIME,
    expires_at DATETIME,
    is_active BOOLEAN,
    usage_count INTEGER,
    rate_limit INTEGER,
    last_used_at DATETIME,
    PRIMARY KEY (key_id)
);
CREATE INDEX ix_api_keys_key_id ON api_keys (key_id);
CREATE UNIQUE INDEX ix_api_keys_key_value ON api_keys (key_value);
CREATE INDEX ix_api_keys_source_path ON api_keys (source_path);
CREATE INDEX ix_api_keys_is_active ON api_keys (is_active);
CREATE TABLE audit_logs (
    id VARCHAR(50) NOT NULL,
    request_id VARCHAR(50) NOT NULL,
    api_key VARCHAR(100),
    source_path VARCHAR(100),
    method VARCHAR(10) NOT NULL,
    path VARCHAR(500) NOT NULL,
    target_url VARCHAR(500),
    status_code INTEGER NOT NULL,
    response_time_ms INTEGER NOT NULL,
    request_size INTEGER,
    response_size INTEGER,
    user_agent VARCHAR(500),
    ip_address VARCHAR(50),
    error_message TEXT,
    is_stream BOOLEAN,
    stream_chunks INTEGER,
    request_headers TEXT,
    request_body TEXT,
    response_headers TEXT,
    response_body TEXT,
    created_at DATETIME,
    PRIMARY KEY (id)
);
";

/// The secrets of the old database's keys.
struct OldKeys {
    active: String,
    disabled: String,
    expired: String,
    broken: String,
    /// `is_active` NULL: M-FastGate refused it; imported disabled.
    null_active: String,
    /// `expires_at` blank: not imported (rather than as never expiring).
    blank_expiry: String,
    /// Written in an audit row's `api_key`, but no key has it.
    stranger: String,
}

impl OldKeys {
    fn all(&self) -> [&String; 7] {
        [
            &self.active,
            &self.disabled,
            &self.expired,
            &self.broken,
            &self.null_active,
            &self.blank_expiry,
            &self.stranger,
        ]
    }
}

/// `fg_` + 43 URL-safe characters, as M-FastGate's `secrets.token_urlsafe(32)`.
fn old_secret() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    let body: String = (0..43)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("fg_{body}")
}

async fn write_old_database(path: &Path) -> OldKeys {
    let keys = OldKeys {
        active: old_secret(),
        disabled: old_secret(),
        expired: old_secret(),
        broken: old_secret(),
        null_active: old_secret(),
        blank_expiry: old_secret(),
        stranger: old_secret(),
    };
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    // WAL mode, so that a reader that is not careful would leave -wal / -shm files behind.
    db.execute("PRAGMA journal_mode=WAL").await.unwrap();
    db.execute(MFASTGATE_SCHEMA).await.unwrap();
    let rows = [
        // id, secret, permissions, expires_at, is_active, usage_count, last_used_at
        (
            "fg_1a2b3c4d5e6f",
            &keys.active,
            "[\"*\"]",
            Some("2099-01-01 00:00:00.000000"),
            1,
            7,
            Some("2025-06-01 12:00:00.250000"),
        ),
        (
            "fg_0000disabled",
            &keys.disabled,
            "[\"chat\"]",
            None,
            0,
            3,
            None,
        ),
        (
            "fg_00000expired",
            &keys.expired,
            "[\"chat\"]",
            Some("2020-01-01 00:00:00"),
            1,
            0,
            None,
        ),
        // An expiry that cannot be read: not imported (rather than imported as never expiring).
        (
            "fg_000000broken",
            &keys.broken,
            "[]",
            Some("soon"),
            1,
            0,
            None,
        ),
        // is_active NULL (-1 here): refused by M-FastGate, imported disabled.
        (
            "fg_0nullactive0",
            &keys.null_active,
            "[]",
            None,
            -1,
            0,
            None,
        ),
        // A blank expiry: not imported (rather than as never expiring).
        (
            "fg_0blankexpiry",
            &keys.blank_expiry,
            "[]",
            Some(""),
            1,
            0,
            None,
        ),
    ];
    for (id, secret, perms, expires, active, uses, last) in rows {
        let active = (active >= 0).then_some(active);
        sqlx::query(
            "INSERT INTO api_keys (key_id, key_value, source_path, permissions, created_at, \
             expires_at, is_active, usage_count, rate_limit, last_used_at) \
             VALUES (?, ?, 'team-a', ?, '2025-05-01 08:00:00', ?, ?, ?, NULL, ?)",
        )
        .bind(id)
        .bind(secret)
        .bind(perms)
        .bind(expires)
        .bind(active)
        .bind(uses)
        .bind(last)
        .execute(&mut db)
        .await
        .unwrap();
    }
    for (log_id, request_id, api_key, path, stream) in [
        (
            "log_aaaaaaaaaaaa",
            "req_0123456789ab",
            &keys.active,
            "/proxy/miniai/v2/chat/completions?api_key=leak",
            1,
        ),
        (
            "log_bbbbbbbbbbbb",
            "req_ba9876543210",
            &keys.stranger,
            "/proxy/miniai/v2/chat/completions",
            0,
        ),
    ] {
        sqlx::query(
            "INSERT INTO audit_logs (id, request_id, api_key, source_path, method, path, \
             target_url, status_code, response_time_ms, request_size, response_size, user_agent, \
             ip_address, error_message, is_stream, stream_chunks, created_at) VALUES (?, ?, ?, \
             'team-a', 'POST', ?, 'http://172.16.99.204:3398/miniai/v2/chat/completions', 200, \
             1234, 321, 4567, 'curl/8.0', '10.1.2.3', NULL, ?, 9, '2025-06-01 12:00:00.250000')",
        )
        .bind(log_id)
        .bind(request_id)
        .bind(api_key)
        .bind(path)
        .bind(stream)
        .execute(&mut db)
        .await
        .unwrap();
    }
    db.close().await.unwrap();
    keys
}

/// The test config (listening on `port`, database `dir/fastgate.db`, backend `backend`), changed
/// by `edit`, written to `dir/config.yaml`; returns that path.
fn write_config(
    dir: &Path,
    port: u16,
    backend: &str,
    edit: impl FnOnce(String) -> String,
) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        edit(config_yaml(port, &dir.join("fastgate.db"), backend)),
    )
    .unwrap();
    path
}

/// `fastgate --config <config> <args…>`, run to completion: (success, stdout, stderr).
fn run_cli(dir: &Path, config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = fastgate_cmd()
        .arg("--config")
        .arg(config)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Start the binary on an existing directory and config, with `args` after the config.
async fn serve(
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    port: u16,
    args: &[&str],
) -> Fastgate {
    Fastgate::spawn_in(dir, config, port, |cmd| {
        cmd.args(args);
    })
    .await
}

async fn chat_status(fg: &Fastgate, key: &str) -> u16 {
    fg.chat(key, false).await.status().as_u16()
}

/// Everything FastGate wrote to disk, as text (lossy), to look for secrets in.
fn database_bytes(dir: &Path) -> String {
    let mut all = Vec::new();
    for suffix in ["", "-wal"] {
        if let Ok(bytes) = std::fs::read(dir.join(format!("fastgate.db{suffix}"))) {
            all.extend(bytes);
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn an_mfastgate_database_is_refused_then_imported_and_its_keys_keep_working() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fastgate.db");
    let old = write_old_database(&db).await;
    let port = free_port();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, config_yaml(port, &db, &upstream.url())).unwrap();

    // 1. The unchanged config on the old file: a clear refusal, and the file is left as it was.
    let before = std::fs::read(&db).unwrap();
    let (ok, _, stderr) = run_cli(dir.path(), &config, &[]);
    assert!(!ok, "started on M-FastGate's database");
    assert!(
        stderr.contains("M-FastGate") && stderr.contains("fastgate import-mfastgate"),
        "{stderr}"
    );
    assert!(
        std::fs::read(&db).unwrap() == before,
        "the old database was changed"
    );
    for sibling in ["fastgate.db-wal", "fastgate.db-shm", "fastgate.db-journal"] {
        assert!(
            !dir.path().join(sibling).exists(),
            "{sibling} was created beside the old database"
        );
    }

    // 2. Moved aside and imported; a second run adds nothing.
    let old_path = dir.path().join("m-fastgate.db");
    std::fs::rename(&db, &old_path).unwrap();
    let from = old_path.to_str().unwrap();
    let (ok, stdout, stderr) = run_cli(dir.path(), &config, &["import-mfastgate", "--from", from]);
    assert!(ok, "{stderr}");
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next().unwrap_or_default(),
        "keys: 4 imported, 0 already present, 2 not importable; audit rows: 2 imported, 0 \
         already present, 0 not importable"
    );
    // The retention purge would delete the old history: said, with the setting to change.
    let note = lines.next().unwrap_or_default();
    assert!(
        note.starts_with("note: audit.retention_days is 90:") && note.contains("retention_days: 0"),
        "{stdout}"
    );
    assert!(stderr.contains("fg_000000broken"), "{stderr}");
    assert!(stderr.contains("fg_0blankexpiry"), "{stderr}");
    let (ok, again, stderr2) = run_cli(dir.path(), &config, &["import-mfastgate", "--from", from]);
    assert!(ok, "{stderr2}");
    assert_eq!(
        again.trim(),
        "keys: 0 imported, 4 already present, 2 not importable; audit rows: 0 imported, 2 \
         already present, 0 not importable"
    );
    for secret in old.all() {
        for text in [&stdout, &stderr, &again, &stderr2] {
            assert!(!text.contains(secret.as_str()), "a secret was printed");
        }
    }

    // 3. The gateway starts on the imported database; the old secrets behave as before.
    let fg = serve(dir, config, port, &[]).await;
    assert_eq!(chat_status(&fg, &old.active).await, 200);
    let seen = upstream.last();
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {REAL_KEY}").as_str()
    );
    assert!(seen.headers.get("x-api-key").is_none());
    let bearer = fg
        .http
        .post(fg.proxy_url())
        .header("Authorization", format!("Bearer {}", old.active))
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    assert_eq!(chat_status(&fg, &old.disabled).await, 401);
    assert_eq!(chat_status(&fg, &old.expired).await, 401);
    assert_eq!(chat_status(&fg, &old.broken).await, 401);
    assert_eq!(chat_status(&fg, &old.null_active).await, 401);
    assert_eq!(chat_status(&fg, &old.blank_expiry).await, 401);

    // The key kept its id, owner and usage, and got the unified endpoint's permission.
    let key: serde_json::Value = fg
        .admin_get("/admin/keys/fg_1a2b3c4d5e6f")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(key["source_path"], "team-a");
    // `*` (FastGate's wildcard) is not carried over: M-FastGate never checked permissions.
    assert_eq!(key["permissions"], serde_json::json!(["chat"]));
    assert!(key["request_count"].as_u64().unwrap() >= 7, "{key}");
    assert!(!key.to_string().contains(&old.active));

    // The old audit rows: the key named by its id, never by its secret; no query string.
    let row = fg.wait_audit("req_0123456789ab").await;
    assert_eq!(row["key_id"], "fg_1a2b3c4d5e6f");
    assert_eq!(row["path"], "/proxy/miniai/v2/chat/completions");
    assert_eq!(row["duration_ms"], 1234.0);
    assert_eq!(row["is_stream"], true);
    assert_eq!(row["client_ip"], "10.1.2.3");
    assert_eq!(row["timestamp"], "2025-06-01T12:00:00.250Z");
    let stranger = fg.wait_audit("req_ba9876543210").await;
    assert!(stranger["key_id"].is_null(), "{stranger}");

    // No secret in FastGate's database, and the old habit of deleting by id works.
    let written = database_bytes(fg.dir.path());
    for secret in old.all() {
        assert!(
            !written.contains(secret.as_str()),
            "a secret is in the database"
        );
    }
    let deleted = fg
        .http
        .delete(fg.url(&format!("/admin/keys/fg_1a2b3c4d5e6f?token={ADMIN_TOKEN}")))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    assert_eq!(chat_status(&fg, &old.active).await, 401);
    // Importing again does not bring the deleted key back.
    let from = fg.dir.path().join("m-fastgate.db");
    let (ok, third, stderr) = run_cli(
        fg.dir.path(),
        &fg.config,
        &["import-mfastgate", "--from", from.to_str().unwrap()],
    );
    assert!(ok, "{stderr}");
    assert!(
        third.starts_with("keys: 0 imported, 4 already present"),
        "{third}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(chat_status(&fg, &old.active).await, 401);
}

/// A client of the old gateway tries its key on FastGate before the import (refused, and
/// remembered as unknown); imported by the CLI while the server runs, the key works within
/// seconds.
#[tokio::test]
async fn a_key_tried_before_its_import_works_after_it() {
    let upstream = Upstream::start().await;
    let fg = Fastgate::start(&upstream.url()).await;
    let old_path = fg.dir.path().join("m-fastgate.db");
    let old = write_old_database(&old_path).await;
    assert_eq!(chat_status(&fg, &old.active).await, 401);
    assert_eq!(chat_status(&fg, &old.active).await, 401);

    let (ok, stdout, stderr) = run_cli(
        fg.dir.path(),
        &fg.config,
        &["import-mfastgate", "--from", old_path.to_str().unwrap()],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("keys: 4 imported"), "{stdout}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = chat_status(&fg, &old.active).await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the imported key is still refused ({status})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn importing_a_file_that_is_not_mfastgates_fails_clearly() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), &upstream.url(), |y| y);
    let other = dir.path().join("other.db");
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", other.display()))
        .await
        .unwrap();
    db.execute("CREATE TABLE t (x INTEGER)").await.unwrap();
    db.close().await.unwrap();
    let (ok, _, stderr) = run_cli(
        dir.path(),
        &config,
        &["import-mfastgate", "--from", other.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(stderr.contains("not an M-FastGate database"), "{stderr}");
    let missing = dir.path().join("missing.db");
    let (ok, _, stderr) = run_cli(
        dir.path(),
        &config,
        &["import-mfastgate", "--from", missing.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(stderr.contains("missing.db"), "{stderr}");
    assert!(
        !missing.exists(),
        "the import created the file it was to read"
    );
}

/// uvicorn's `--host` / `--port` habit: the flags win over the file.
#[tokio::test]
async fn host_and_port_flags_override_the_config() {
    let upstream = Upstream::start().await;
    // `--host`: the file's host is one this test does not reach the server on.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, &upstream.url(), |y| {
        y.replace("host: \"127.0.0.1\"", "host: \"::1\"")
    });
    let fg = serve(dir, config, port, &["--host", "127.0.0.1"]).await;
    assert_eq!(fg.health().await.0, 200);
    drop(fg);

    // `--port`: the server listens on the flag's port, not on the file's.
    let dir = tempfile::tempdir().unwrap();
    let (in_file, on_flag) = (free_port(), free_port());
    let config = write_config(dir.path(), in_file, &upstream.url(), |y| y);
    let port = on_flag.to_string();
    let fg = serve(dir, config, on_flag, &["--port", &port]).await;
    assert_eq!(fg.health().await.0, 200);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", in_file)).is_err(),
        "also listening on the file's port"
    );
}

/// `fastgate check-config` prints the warnings a start would log.
#[tokio::test]
async fn check_config_prints_the_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), "http://127.0.0.1:9", |y| {
        y.replace("async_audit: true", "async_audit: false")
    });
    // M-FastGate's own routes file, beside the config.
    std::fs::write(dir.path().join("routes.yaml"), "miniai:\n  prefix: /v2\n").unwrap();
    let (ok, stdout, stderr) = run_cli(dir.path(), &config, &["check-config"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("warning: ignoring"), "{stdout}");
    assert!(
        stdout.contains("warning: api_gateway.async_audit"),
        "{stdout}"
    );
}

/// `fastgate check-config` also finds what would stop the start (the SQLite file's directory
/// missing, `logging.file` a directory) and what the server would do without (the spool's
/// directory missing), without creating anything.
#[tokio::test]
async fn check_config_finds_paths_the_start_would_fail_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let check = |edit: &dyn Fn(String) -> String| {
        let config = write_config(dir.path(), port, "http://127.0.0.1:9", edit);
        run_cli(dir.path(), &config, &["check-config"])
    };
    let (ok, stdout, stderr) = check(&|y| y);
    assert!(ok, "{stdout}{stderr}");
    assert!(!stdout.contains("error:"), "{stdout}");

    let (ok, stdout, _) = check(&|y| y + "\nlogging:\n  file: \".\"\n");
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("error: logging.file"), "{stdout}");

    // M-FastGate's own `logs/fastgate.log`, relative, its directory not made yet: the start
    // makes it, so no error (the check took "" for the working directory and said a file was
    // in the way).
    let (ok, stdout, stderr) = check(&|y| y + "\nlogging:\n  file: \"logs/fastgate.log\"\n");
    assert!(ok, "{stdout}{stderr}");
    assert!(!stdout.contains("logging.file"), "{stdout}");
    assert!(
        !dir.path().join("logs").exists(),
        "check-config created a directory"
    );
    // A file where the directory would go: the start would fail, so an error.
    std::fs::write(dir.path().join("blocker"), b"").unwrap();
    let (ok, stdout, _) = check(&|y| y + "\nlogging:\n  file: \"blocker/fastgate.log\"\n");
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("error: logging.file"), "{stdout}");

    let (ok, stdout, stderr) =
        check(&|y| y.replace("audit:\n", "audit:\n  spool_file: \"no-such-dir/spool\"\n"));
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("warning: audit.spool_file"), "{stdout}");
    assert!(
        !dir.path().join("no-such-dir").exists(),
        "check-config created a directory"
    );
}

/// `RUST_LOG` is read as `logging.level` is: `warning` is the warn level (tracing alone would take
/// it for a module name and log nothing at all); one FastGate cannot read is said on stderr and
/// the configured level is used instead.
#[tokio::test]
async fn rust_log_takes_python_level_names_and_a_bad_one_is_said() {
    let upstream = Upstream::start().await;
    let start = |rust_log: &'static str| {
        let url = upstream.url();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let config = write_config(dir.path(), port, &url, |y| {
                y.replace("timeout: 5", "timeout: 5\n  max_retries: 3")
            });
            Fastgate::spawn_in(dir, config, port, |cmd| {
                cmd.env("RUST_LOG", rust_log);
            })
            .await
        }
    };
    let fg = start("warning").await;
    let mut text = String::new();
    eventually(Duration::from_secs(5), "the start warning", || {
        text = fg.logs();
        text.contains("max_retries")
    })
    .await;
    assert!(text.contains(" WARN "), "{text}");
    assert!(!text.contains(" INFO "), "{text}");
    drop(fg);

    let fg = start("inf").await;
    eventually(Duration::from_secs(5), "the start lines", || {
        text = fg.logs();
        text.contains(" INFO ")
    })
    .await;
    assert!(text.contains("RUST_LOG is not used"), "{text}");
    assert!(text.contains("max_retries"), "{text}");
    drop(fg);

    // The access log beside the info lines (uvicorn's habit), as the README says to turn it on.
    let fg = start("info,fastgate::access=debug").await;
    let key = fg.key("access").await;
    assert_eq!(chat_status(&fg, &key).await, 200);
    let proxied = |l: &&str| {
        l.contains("fastgate::access") && l.contains("status=200") && l.contains("/proxy/")
    };
    eventually(Duration::from_secs(5), "the access line", || {
        text = fg.logs();
        text.lines().any(|l| proxied(&l))
    })
    .await;
    // Written at the end of the body: the request id ties it to the audit record.
    let line = text.lines().find(proxied).unwrap_or_default();
    for field in ["request_id=", "head_ms=", "elapsed_ms=", "complete=true"] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    assert!(!text.contains(" DEBUG fastgate_store"), "{text}");
}

/// M-FastGate's `logging.file` and its upper-case level names: log lines are appended to the
/// file without colour codes and without a secret; after logrotate renames it, SIGHUP reopens it.
#[tokio::test]
async fn logging_file_receives_the_log_lines_and_survives_rotation() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, &upstream.url(), |y| {
        y.replace("timeout: 5", "timeout: 5\n  max_retries: 3")
            + "logging:\n  level: \"WARNING\"\n  format: \"text\"\n  file: \"logs/fastgate.log\"\n"
    });
    // The file's level applies (no RUST_LOG).
    let fg = Fastgate::spawn_in(dir, config, port, |cmd| {
        cmd.env_remove("RUST_LOG");
    })
    .await;
    let key = fg.key("logger").await;
    assert_eq!(chat_status(&fg, &key).await, 200);
    let file = fg.dir.path().join("logs/fastgate.log");
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut text = String::new();
    eventually(
        Duration::from_secs(5),
        "the start warning in logging.file",
        || {
            text = read(&file);
            text.contains("max_retries")
        },
    )
    .await;
    // Python's `WARNING` is the warn level (tracing alone would read it as a module name and log
    // nothing): warnings are there, info lines are not.
    assert!(text.contains(" WARN "), "{text}");
    assert!(!text.contains(" INFO "), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in the file");
    for secret in [ADMIN_TOKEN, REAL_KEY, key.as_str()] {
        assert!(!text.contains(secret), "a secret is in the log file");
    }
    // logrotate: rename, then SIGHUP; the reload's warning goes to a new file.
    let rotated = fg.dir.path().join("logs/fastgate.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    let before = read(&rotated);
    fg.signal("HUP");
    let mut fresh = String::new();
    eventually(
        Duration::from_secs(5),
        "the reload's warning in the new file",
        || {
            fresh = read(&file);
            fresh.contains("max_retries")
        },
    )
    .await;
    assert_eq!(
        read(&rotated),
        before,
        "written to the rotated file after SIGHUP"
    );
}

/// M-FastGate chose its config file with `ENVIRONMENT` (`config/$ENVIRONMENT.yaml`); so does
/// FastGate when neither `--config` nor `FASTGATE_CONFIG` is given.
#[tokio::test]
async fn environment_selects_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    let db = dir.path().join("fastgate.db");
    for (name, port) in [("development", 1111), ("production", 2222)] {
        let yaml = config_yaml(port, &db, "http://127.0.0.1:9");
        std::fs::write(dir.path().join(format!("config/{name}.yaml")), yaml).unwrap();
    }
    let check = |env: &[(&str, &str)]| {
        let out = fastgate_cmd()
            .arg("check-config")
            .current_dir(dir.path())
            .env_remove("FASTGATE_CONFIG")
            .env_remove("ENVIRONMENT")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = check(&[]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("config/development.yaml"), "{stdout}");
    let (code, stdout, _) = check(&[("ENVIRONMENT", "production")]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("config/production.yaml"), "{stdout}");
    let (code, stdout, _) = check(&[
        ("ENVIRONMENT", "production"),
        ("FASTGATE_CONFIG", "config/development.yaml"),
    ]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("config/development.yaml"), "{stdout}");
    // An empty FASTGATE_CONFIG (a blank line in an env file) counts as not set.
    let (code, stdout, stderr) = check(&[("ENVIRONMENT", "production"), ("FASTGATE_CONFIG", "")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("config/production.yaml"), "{stdout}");
    // A missing file says how it was chosen.
    let (code, _, stderr) = check(&[("ENVIRONMENT", "staging")]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("staging.yaml"), "{stderr}");
    assert!(stderr.contains("chosen by ENVIRONMENT=staging"), "{stderr}");
    let (code, _, stderr) = check(&[("FASTGATE_CONFIG", "config/nope.yaml")]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("nope.yaml") && !stderr.contains("chosen by"),
        "{stderr}"
    );
}

/// Only the server writes `logging.file`: `fastgate keys …` (often run as another user) neither
/// creates nor appends to it.
#[tokio::test]
async fn cli_commands_leave_logging_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port(), "http://127.0.0.1:9", |y| {
        y + "logging:\n  file: \"logs/fastgate.log\"\n"
    });
    let (ok, _, stderr) = run_cli(dir.path(), &config, &["keys", "list"]);
    assert!(ok, "{stderr}");
    assert!(!dir.path().join("logs").exists());
}
