//! The store suite: runs on a fresh SQLite file per test always, and on PostgreSQL (a fresh
//! database per test, created through `FASTGATE_TEST_DATABASE_URL`) when that variable is set.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fastgate_layer::audit::AuditBatch;
use fastgate_layer::{
    AuditEvent, AuditSink, KeyResolver, Outcome, PresentedKey, ResolveError, TokenUsage,
};
use fastgate_store::{
    AuditFilter, Backend, BackgroundOptions, ImportOutcome, ImportedKey, KeyFilter, KeyUpdate,
    MetricsWindow, NewKey, Period, PeriodMetrics, Store, StoreError, StoreOptions,
    USAGE_FLUSH_LOCK_TIMEOUT, hash_key,
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh database for one test, on each configured backend.
struct TestDb {
    url: String,
    backend: Backend,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>, // (admin url, database name)
}

impl TestDb {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("fastgate.db").display());
        Self {
            url,
            backend: Backend::Sqlite,
            _dir: Some(dir),
            pg: None,
        }
    }

    async fn postgres(admin: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("fgt_{}_{}_{}", std::process::id(), n, nanos);
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(admin)
            .await
            .unwrap();
        sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let (base, query) = admin
            .split_once('?')
            .map_or((admin, None), |(b, q)| (b, Some(q)));
        let slash = base.rfind('/').unwrap();
        let mut url = format!("{}/{}", &base[..slash], name);
        if let Some(q) = query {
            url = format!("{url}?{q}");
        }
        Self {
            url,
            backend: Backend::Postgres,
            _dir: None,
            pg: Some((admin.to_owned(), name)),
        }
    }

    async fn store(&self) -> Store {
        self.store_with(test_opts()).await
    }

    async fn store_with(&self, opts: StoreOptions) -> Store {
        let store = Store::connect(&self.url, opts).await.unwrap();
        assert_eq!(store.backend(), self.backend);
        store
    }

    async fn finish(self, stores: &[&Store]) {
        for s in stores {
            s.close().await;
        }
        if let Some((admin, name)) = &self.pg {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(admin)
                .await
                .unwrap();
            let _ = sqlx::Executor::execute(
                &mut conn,
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
            )
            .await;
        }
    }
}

/// Disable (`false`) or enable (`true`) a key.
async fn set_active(store: &Store, id: &str, active: bool) {
    store
        .update_key(
            id,
            KeyUpdate {
                active: Some(active),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .expect("key exists");
}

fn test_opts() -> StoreOptions {
    StoreOptions {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(2),
        ..StoreOptions::default()
    }
}

/// Runs `body` on SQLite, and on PostgreSQL when `FASTGATE_TEST_DATABASE_URL` is set.
macro_rules! on_backends {
    ($name:ident, |$db:ident| $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            async fn run($db: TestDb) $body
            run(TestDb::sqlite().await).await;
            if let Ok(admin) = std::env::var("FASTGATE_TEST_DATABASE_URL") {
                if !admin.is_empty() {
                    run(TestDb::postgres(&admin).await).await;
                }
            }
        }
    };
}

/// A store's background task, running until [`Background::stop`].
struct Background {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Background {
    fn spawn(store: &Store, opts: BackgroundOptions) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(store.background(opts, async move {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    /// Stop it and wait (at most 5 s) for it to finish its last flush.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn new_key(source: &str) -> NewKey {
    NewKey {
        name: Some(format!("{source} laptop")),
        source_path: source.to_owned(),
        permissions: vec!["chat".to_owned()],
        expires_at: None,
    }
}

fn presented(secret: &str) -> PresentedKey {
    PresentedKey::parse(secret).unwrap()
}

fn event(i: u64, at: SystemTime) -> AuditEvent {
    let mut e = AuditEvent::new(
        format!("req-{i:06}"),
        "POST",
        "/proxy/miniai/v2/chat/completions",
    );
    e.started_at = at;
    e.status = 200;
    e.duration = Duration::from_millis(100);
    e.ttfb = Some(Duration::from_millis(10));
    e.model = Some("gpt-3.5-turbo".to_owned());
    e.key_id = Some(Arc::from("k_a"));
    e.source_path = Some(Arc::from("user1"));
    e.client_ip = Some("127.0.0.1".to_owned());
    e.user_agent = Some("curl/8".to_owned());
    e.target_url = Some(Arc::from(
        "http://127.0.0.1:1030/miniai/v2/chat/completions",
    ));
    e.request_bytes = 120;
    e.response_bytes = 2048;
    e
}

/// Poll `cond` every 10 ms until true or `limit` passes; returns the time it took.
async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    tokio::time::timeout(limit, async {
        loop {
            if cond().await {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .ok()
}

// ---------------------------------------------------------------- connect / migrations / URLs

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    assert!(!path.exists());
    let store = Store::connect(&format!("sqlite:///{}", path.display()), test_opts())
        .await
        .unwrap();
    assert!(path.exists());
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.backend().as_str(), "sqlite");
    store.close().await;
    // Reopen: migrations already applied, data kept.
    let store = Store::connect(&format!("sqlite:{}", path.display()), test_opts())
        .await
        .unwrap();
    let created = store.create_key(new_key("user1")).await.unwrap();
    store.close().await;
    let store = Store::connect(&format!("sqlite:///{}", path.display()), test_opts())
        .await
        .unwrap();
    assert!(store.get_key(&created.record.id).await.unwrap().is_some());
    store.close().await;
    let mode = std::fs::read(dir.path().join("fresh.db")).unwrap();
    // WAL databases have file-format version bytes 18/19 set to 2.
    assert_eq!((mode[18], mode[19]), (2, 2));
}

/// A new SQLite file (and its WAL) is readable by its owner and group only; an existing file
/// keeps its permissions; a file that cannot be opened is named in the error.
#[tokio::test]
async fn sqlite_files_are_created_private_and_named_when_they_cannot_be_opened() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("private.db");
    let store = Store::connect(&format!("sqlite:{}", path.display()), test_opts())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.create_key(new_key("user1")).await.unwrap();
    assert_eq!(mode(&path), 0o640);
    let wal = dir.path().join("private.db-wal");
    if wal.exists() {
        assert_eq!(mode(&wal) & 0o007, 0, "the WAL is open to others");
    }
    store.close().await;

    let shared = dir.path().join("shared.db");
    std::fs::write(&shared, b"").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o664)).unwrap();
    let store = Store::connect(&format!("sqlite:{}", shared.display()), test_opts())
        .await
        .unwrap();
    store.close().await;
    assert_eq!(
        mode(&shared),
        0o664,
        "an existing file's permissions were changed"
    );

    // A directory where the file should be.
    let not_a_file = dir.path().join("a-directory.db");
    std::fs::create_dir(&not_a_file).unwrap();
    let err = Store::connect(&format!("sqlite:{}", not_a_file.display()), test_opts())
        .await
        .expect_err("a directory is not a database");
    assert!(err.to_string().contains("a-directory.db"), "{err}");
}

#[tokio::test]
async fn sqlite_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:///{}/no/such/dir/fastgate.db", dir.path().display());
    let err = Store::connect(&url, test_opts()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::DirectoryMissing { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!dir.path().join("no").exists());
}

#[tokio::test]
async fn unsupported_url_is_rejected_without_leaking_the_password() {
    let err = Store::connect("mysql://root:hunter2@localhost/fg", test_opts())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedUrl { .. }));
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("postgres://"), "{text}");
}

#[tokio::test]
async fn postgres_connection_failure_does_not_leak_the_password() {
    // Nothing listens on port 1.
    let opts = StoreOptions {
        acquire_timeout: Duration::from_millis(500),
        ..test_opts()
    };
    let err = Store::connect("postgresql+asyncpg://fg:hunter2@127.0.0.1:1/fg", opts)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Connect {
                backend: "postgres",
                ..
            }
        ),
        "{err:?}"
    );
    let mut text = format!("{err} {err:?}");
    let mut src = std::error::Error::source(&err);
    while let Some(s) = src {
        text.push_str(&format!(" {s} {s:?}"));
        src = s.source();
    }
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn memory_url_works_for_a_single_pool() {
    let store = Store::connect("sqlite::memory:", test_opts())
        .await
        .unwrap();
    let k = store.create_key(new_key("mem")).await.unwrap();
    assert_eq!(
        store
            .resolve_key(&k.secret)
            .await
            .unwrap()
            .source_path
            .as_ref(),
        "mem"
    );
}

// ---------------------------------------------------------------- keys

on_backends!(
    create_key_returns_secret_once_and_stores_only_its_hash,
    |db| {
        let store = db.store().await;
        let created = store.create_key(new_key("user1")).await.unwrap();
        let secret = &created.secret;
        assert!(secret.starts_with("fg_"));
        assert!(secret.len() >= 3 + 43, "{secret}");
        let rec = &created.record;
        assert!(rec.id.starts_with("k_"));
        assert!(!rec.id.contains(&secret[3..]));
        assert_eq!(
            rec.display,
            format!("fg_{}…{}", &secret[3..7], &secret[secret.len() - 4..])
        );
        assert_eq!(rec.source_path, "user1");
        assert_eq!(rec.name.as_deref(), Some("user1 laptop"));
        assert_eq!(rec.permissions, vec!["chat".to_owned()]);
        assert!(rec.active);
        assert_eq!(rec.status(SystemTime::now()), "active");
        assert_eq!(rec.request_count, 0);
        assert!(rec.last_used_at.is_none());
        assert!(rec.expires_at.is_none());
        assert!(!format!("{created:?}").contains(secret.as_str()));

        let id = store.resolve_key(secret).await.unwrap();
        assert_eq!(&*id.key_id, rec.id.as_str());
        assert!(id.allows("chat") && !id.allows("admin"));

        // Every text column of the key tables: the hash is there, the secret is not.
        let url = db.url.clone();
        let dump: Vec<String> = match db.backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                let rows: Vec<(String,)> = sqlx::query_as(
                "SELECT id || '|' || COALESCE(name,'') || '|' || source_path || '|' || permissions || '|' || display FROM api_keys \
                 UNION ALL SELECT hash || '|' || key_id FROM api_key_hashes",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
                pool.close().await;
                rows.into_iter().map(|r| r.0).collect()
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                let rows: Vec<(String,)> = sqlx::query_as(
                "SELECT id || '|' || COALESCE(name,'') || '|' || source_path || '|' || permissions || '|' || display FROM api_keys \
                 UNION ALL SELECT hash || '|' || key_id FROM api_key_hashes",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
                pool.close().await;
                rows.into_iter().map(|r| r.0).collect()
            }
        };
        assert_eq!(dump.len(), 2);
        assert!(dump.iter().all(|row| !row.contains(secret.as_str())));
        assert!(dump.iter().any(|row| row.starts_with(&hash_key(secret))));
        db.finish(&[&store]).await;
    }
);

#[tokio::test]
async fn sqlite_file_never_contains_the_secret() {
    let db = TestDb::sqlite().await;
    let store = db.store().await;
    let mut secrets = Vec::new();
    for i in 0..20 {
        let k = store
            .create_key(new_key(&format!("user{i}")))
            .await
            .unwrap();
        let rotated = store
            .rotate_key(&k.record.id, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        secrets.push(k.secret);
        secrets.push(rotated.secret);
    }
    store.close().await;
    let dir = db._dir.as_ref().unwrap().path().to_owned();
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let text = String::from_utf8_lossy(&bytes);
    for s in &secrets {
        assert!(
            !text.contains(&s[3..]),
            "secret found in the database files"
        );
    }
}

on_backends!(get_list_filters_and_pagination, |db| {
    let store = db.store().await;
    let now = SystemTime::now();
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut nk = new_key(if i % 2 == 0 { "even" } else { "odd" });
        if i == 3 {
            nk.expires_at = Some(now - Duration::from_secs(60));
        }
        if i == 4 {
            nk.expires_at = Some(now + Duration::from_secs(3600));
        }
        ids.push(store.create_key(nk).await.unwrap().record.id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    store
        .update_key(
            &ids[5],
            KeyUpdate {
                active: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();

    assert!(store.get_key("k_nope").await.unwrap().is_none());
    let all = store.list_keys(&KeyFilter::default()).await.unwrap();
    assert_eq!(all.total, 7);
    // Newest first.
    assert_eq!(
        all.items.iter().map(|k| k.id.clone()).collect::<Vec<_>>(),
        ids.iter().rev().cloned().collect::<Vec<_>>()
    );

    let page = store
        .list_keys(&KeyFilter {
            limit: 3,
            offset: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 7);
    assert_eq!(
        page.items.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        vec![&ids[3], &ids[2], &ids[1]]
    );

    let even = store
        .list_keys(&KeyFilter {
            source_path: Some("even".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(even.total, 4);
    assert!(even.items.iter().all(|k| k.source_path == "even"));

    let disabled = store
        .list_keys(&KeyFilter {
            active: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        disabled
            .items
            .iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>(),
        vec![&ids[5]]
    );
    assert_eq!(disabled.items[0].status(SystemTime::now()), "disabled");
    let active = store
        .list_keys(&KeyFilter {
            active: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(active.total, 6);

    let expired = store
        .list_keys(&KeyFilter {
            expired: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        expired
            .items
            .iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>(),
        vec![&ids[3]]
    );
    assert_eq!(expired.items[0].status(SystemTime::now()), "expired");
    let live = store
        .list_keys(&KeyFilter {
            expired: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(live.total, 6);
    let combo = store
        .list_keys(&KeyFilter {
            expired: Some(false),
            active: Some(true),
            source_path: Some("odd".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(combo.total, 1); // odd: 1, 3 (expired), 5 (disabled)
    assert_eq!(combo.items[0].id, ids[1]);
    db.finish(&[&store]).await;
});

/// A key of M-FastGate's shape: its own id, a secret clients already hold.
fn imported(id: &str, secret: &str) -> ImportedKey {
    ImportedKey {
        id: id.to_owned(),
        secret: secret.to_owned(),
        source_path: "team-a".to_owned(),
        permissions: vec!["chat".to_owned()],
        created_at: UNIX_EPOCH + Duration::from_secs(1_746_086_400),
        expires_at: None,
        active: true,
        last_used_at: None,
        request_count: 7,
    }
}

on_backends!(imported_keys_keep_id_and_secret_and_import_once, |db| {
    let store = db.store().await;
    let resolver = store.key_resolver();
    let secret = "fg_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
    let import = |id: &str, secret: &str| store.import_key(imported(id, secret));
    // Tried before the import: unknown (and remembered as such by the cache).
    assert!(resolver.resolve(presented(secret)).await.is_err());
    assert_eq!(
        import("fg_1a2b3c4d5e6f", secret).await.unwrap(),
        ImportOutcome::Imported
    );
    let id = resolver.resolve(presented(secret)).await.unwrap();
    assert_eq!(&*id.key_id, "fg_1a2b3c4d5e6f");
    assert_eq!(&*id.source_path, "team-a");
    let rec = store.get_key("fg_1a2b3c4d5e6f").await.unwrap().unwrap();
    assert_eq!(rec.display, "fg_0123…DEFG");
    assert_eq!(rec.request_count, 8); // 7 before the import, one use since
    assert_eq!(
        rec.created_at,
        UNIX_EPOCH + Duration::from_secs(1_746_086_400)
    );
    // Again: nothing. The same secret under another id, another secret under the same id, or
    // the id of a key FastGate made: conflicts, nothing changes.
    assert_eq!(
        import("fg_1a2b3c4d5e6f", secret).await.unwrap(),
        ImportOutcome::AlreadyImported
    );
    assert_eq!(
        import("fg_ffffffffffff", secret).await.unwrap(),
        ImportOutcome::Conflict
    );
    let other = "fg_ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkjih";
    assert_eq!(
        import("fg_1a2b3c4d5e6f", other).await.unwrap(),
        ImportOutcome::Conflict
    );
    let native = store.create_key(new_key("user1")).await.unwrap();
    assert_eq!(
        import(&native.record.id, other).await.unwrap(),
        ImportOutcome::Conflict
    );
    assert_eq!(
        import("fg_000000000001", &native.secret).await.unwrap(),
        ImportOutcome::Conflict
    );
    assert!(resolver.resolve(presented(other)).await.is_err());
    assert_eq!(
        store.list_keys(&KeyFilter::default()).await.unwrap().total,
        2
    );
    // Deleted, then imported again: it stays deleted.
    assert!(store.delete_key("fg_1a2b3c4d5e6f").await.unwrap());
    assert_eq!(
        import("fg_1a2b3c4d5e6f", secret).await.unwrap(),
        ImportOutcome::AlreadyImported
    );
    assert!(store.get_key("fg_1a2b3c4d5e6f").await.unwrap().is_none());
    assert!(resolver.resolve(presented(secret)).await.is_err());
    // Secrets too short to show 8 characters of safely are refused.
    assert!(matches!(
        import("fg_short", "fg_0123456789abcdefghijklmnopq").await,
        Err(StoreError::InvalidInput(_))
    ));
    db.finish(&[&store]).await;
});

on_backends!(a_database_holding_mfastgates_tables_is_refused, |db| {
    // M-FastGate's key table (plain-text `key_value`), there before FastGate connects.
    let ddl = "CREATE TABLE api_keys (key_id VARCHAR(50) NOT NULL PRIMARY KEY, \
               key_value VARCHAR(100) NOT NULL)";
    match db.backend {
        Backend::Sqlite => {
            let path = db.url.trim_start_matches("sqlite:");
            let url = format!("sqlite://{path}?mode=rwc");
            let mut c = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
                .await
                .unwrap();
            sqlx::Executor::execute(&mut c, ddl).await.unwrap();
            sqlx::Connection::close(c).await.unwrap();
        }
        Backend::Postgres => {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
                .await
                .unwrap();
            sqlx::Executor::execute(&mut c, ddl).await.unwrap();
            sqlx::Connection::close(c).await.unwrap();
        }
    }
    let err = Store::connect(&db.url, test_opts()).await.unwrap_err();
    assert!(matches!(err, StoreError::MFastGateDatabase), "{err:?}");
    assert!(
        err.to_string().contains("fastgate import-mfastgate"),
        "{err}"
    );
    db.finish(&[]).await;
});

on_backends!(update_changes_fields_and_takes_effect_at_once, |db| {
    let store = db.store().await;
    let k = store.create_key(new_key("user1")).await.unwrap();
    let resolver = store.key_resolver();
    let id = resolver.resolve(presented(&k.secret)).await.unwrap();
    assert_eq!(&*id.source_path, "user1");

    let exp = UNIX_EPOCH + Duration::from_millis(4_102_444_800_000); // 2100-01-01
    let updated = store
        .update_key(
            &k.record.id,
            KeyUpdate {
                name: Some(None),
                source_path: Some("user9".into()),
                permissions: Some(vec!["chat".into(), "embeddings".into()]),
                expires_at: Some(Some(exp)),
                active: None,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.name, None);
    assert_eq!(updated.source_path, "user9");
    assert_eq!(
        updated.permissions,
        vec!["chat".to_owned(), "embeddings".to_owned()]
    );
    assert_eq!(updated.expires_at, Some(exp));
    assert!(updated.updated_at >= updated.created_at);
    // The cached identity was dropped: the new values are seen at once.
    let id = resolver.resolve(presented(&k.secret)).await.unwrap();
    assert_eq!(&*id.source_path, "user9");
    assert!(id.allows("embeddings"));
    assert_eq!(id.expires_at, Some(exp));

    // Disable: invalid at once; enable again: valid.
    store
        .update_key(
            &k.record.id,
            KeyUpdate {
                active: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        resolver.resolve(presented(&k.secret)).await,
        Err(ResolveError::Refused(id)) if *id.key_id == *k.record.id
    ));
    store
        .update_key(
            &k.record.id,
            KeyUpdate {
                active: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(resolver.resolve(presented(&k.secret)).await.is_ok());

    assert!(
        store
            .update_key(
                "k_missing",
                KeyUpdate {
                    active: Some(false),
                    ..Default::default()
                }
            )
            .await
            .unwrap()
            .is_none()
    );
    let bad = store
        .update_key(
            &k.record.id,
            KeyUpdate {
                source_path: Some("  ".into()),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(bad, Err(StoreError::InvalidInput(_))));
    assert!(matches!(
        store.create_key(new_key("")).await,
        Err(StoreError::InvalidInput(_))
    ));
    db.finish(&[&store]).await;
});

// A NUL made PostgreSQL refuse the statement (a failure that looked like an outage), and
// other control characters reached terminals through `fastgate keys list`.
on_backends!(control_characters_in_key_text_are_invalid_input, |db| {
    let store = db.store().await;
    let mut with_name = new_key("user1");
    with_name.name = Some("a\u{1b}]0;x\u{7}".into());
    let mut with_permission = new_key("user1");
    with_permission.permissions = vec!["chat\u{0}".into()];
    for new in [
        new_key("a\u{0}b"),
        new_key("a\u{9b}b"),
        with_name,
        with_permission,
    ] {
        assert!(matches!(
            store.create_key(new).await,
            Err(StoreError::InvalidInput(_))
        ));
    }
    let k = store.create_key(new_key("user1")).await.unwrap();
    for update in [
        KeyUpdate {
            source_path: Some("a\u{0}b".into()),
            ..Default::default()
        },
        KeyUpdate {
            name: Some(Some("\n".into())),
            ..Default::default()
        },
        KeyUpdate {
            permissions: Some(vec!["\u{7f}".into()]),
            ..Default::default()
        },
    ] {
        assert!(matches!(
            store.update_key(&k.record.id, update).await,
            Err(StoreError::InvalidInput(_))
        ));
    }
    let still = store.get_key(&k.record.id).await.unwrap().unwrap();
    assert_eq!(still.source_path, "user1");
    db.finish(&[&store]).await;
});

on_backends!(delete_revokes_at_once, |db| {
    let store = db.store().await;
    let k = store.create_key(new_key("user1")).await.unwrap();
    store.resolve_key(&k.secret).await.unwrap();
    assert!(store.delete_key(&k.record.id).await.unwrap());
    assert!(matches!(
        store.resolve_key(&k.secret).await,
        Err(ResolveError::Invalid)
    ));
    assert!(store.get_key(&k.record.id).await.unwrap().is_none());
    assert!(!store.delete_key(&k.record.id).await.unwrap());
    // A client looping on a deleted (or never issued) key does not reach the database again.
    let misses = store.stats().cache_misses;
    for _ in 0..5 {
        assert!(matches!(
            store.resolve_key(&k.secret).await,
            Err(ResolveError::Invalid)
        ));
    }
    assert_eq!(store.stats().cache_misses, misses);
    assert_eq!(store.stats().negative_hits, 5);
    assert!(matches!(
        store.resolve_key("fg_never_issued").await,
        Err(ResolveError::Invalid)
    ));
    db.finish(&[&store]).await;
});

on_backends!(metrics_of_refusals_only_have_no_latency_samples, |db| {
    // A window holding only FastGate's own 4xx refusals: counted as requests and errors, with
    // no latency data (the dashboard shows "no data" instead of "0 ms").
    let store = db.store().await;
    let now = SystemTime::now();
    let refusals: Vec<AuditEvent> = (0..3)
        .map(|i| {
            let mut e = event(i, now - Duration::from_secs(30));
            e.key_id = None;
            e.status = 401;
            e.outcome = Outcome::Rejected;
            e.duration = Duration::from_millis(2);
            e
        })
        .collect();
    store
        .audit_sink()
        .write_batch(&AuditBatch::from(refusals))
        .await
        .unwrap();
    let m = store.metrics(MetricsWindow::Hour, now).await.unwrap();
    assert_eq!(m.total_requests, 3);
    assert_eq!(m.error_count, 3);
    assert_eq!((m.latency_samples, m.ttfb_samples), (0, 0));
    assert_eq!(m.avg_latency_ms, 0.0);
    db.finish(&[&store]).await;
});

on_backends!(
    refused_keys_are_answered_from_the_cache_until_changed,
    |db| {
        let store = db.store().await;
        let k = store.create_key(new_key("user1")).await.unwrap();
        store.resolve_key(&k.secret).await.unwrap();
        set_active(&store, &k.record.id, false).await;
        assert!(matches!(
            store.resolve_key(&k.secret).await,
            Err(ResolveError::Refused(id)) if *id.key_id == *k.record.id
        ));
        // A client retrying with the disabled key does not reach the database again.
        let before = store.stats();
        for _ in 0..5 {
            assert!(matches!(
                store.resolve_key(&k.secret).await,
                Err(ResolveError::Refused(id)) if *id.key_id == *k.record.id
            ));
        }
        let after = store.stats();
        assert_eq!(after.cache_misses, before.cache_misses);
        assert_eq!(after.negative_hits, before.negative_hits + 5);
        // Enabling it again takes effect at once.
        set_active(&store, &k.record.id, true).await;
        assert!(store.resolve_key(&k.secret).await.is_ok());

        // A secret rotated out without grace: forgotten (unknown), then refused from the cache.
        let r = store
            .rotate_key(&k.record.id, Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            store.resolve_key(&k.secret).await,
            Err(ResolveError::Invalid)
        ));
        let misses = store.stats().cache_misses;
        for _ in 0..3 {
            assert!(matches!(
                store.resolve_key(&k.secret).await,
                Err(ResolveError::Invalid)
            ));
        }
        assert_eq!(store.stats().cache_misses, misses);
        assert!(store.resolve_key(&r.secret).await.is_ok());

        // With the cache off, every lookup asks the database (and a re-enabled key works).
        let uncached = db
            .store_with(StoreOptions {
                cache_ttl: Duration::ZERO,
                ..test_opts()
            })
            .await;
        set_active(&store, &k.record.id, false).await;
        let misses = uncached.stats().cache_misses;
        for _ in 0..2 {
            assert!(matches!(
                uncached.resolve_key(&r.secret).await,
                Err(ResolveError::Refused(id)) if *id.key_id == *k.record.id
            ));
        }
        assert_eq!(uncached.stats().cache_misses, misses + 2);
        set_active(&store, &k.record.id, true).await;
        assert!(uncached.resolve_key(&r.secret).await.is_ok());
        db.finish(&[&store, &uncached]).await;
    }
);

on_backends!(rotation_with_and_without_grace, |db| {
    let store = db.store().await;
    let k = store.create_key(new_key("user1")).await.unwrap();
    store.resolve_key(&k.secret).await.unwrap();

    // No grace: the old secret stops at once.
    let r1 = store
        .rotate_key(&k.record.id, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(r1.secret, k.secret);
    assert_eq!(r1.record.id, k.record.id);
    assert_ne!(r1.record.display, k.record.display);
    assert!(matches!(
        store.resolve_key(&k.secret).await,
        Err(ResolveError::Invalid)
    ));
    assert_eq!(
        &*store.resolve_key(&r1.secret).await.unwrap().key_id,
        k.record.id.as_str()
    );

    // Grace: both work until it ends, then only the new one.
    let grace = Duration::from_millis(1500);
    let before_rotation = Instant::now();
    let r2 = store
        .rotate_key(&k.record.id, grace)
        .await
        .unwrap()
        .unwrap();
    assert!(store.resolve_key(&r1.secret).await.is_ok());
    assert!(store.resolve_key(&r2.secret).await.is_ok());
    wait_until(Duration::from_secs(6), || async {
        // Named until the purge forgets it (for the audit record of a late attempt).
        matches!(
            store.resolve_key(&r1.secret).await,
            Err(ResolveError::Refused(id)) if *id.key_id == *k.record.id
        )
    })
    .await
    .expect("old secret still valid after its grace period");
    let took = before_rotation.elapsed();
    assert!(
        took + Duration::from_millis(2) >= grace,
        "old secret stopped before its grace ended: {took:?}"
    );
    assert!(store.resolve_key(&r2.secret).await.is_ok());
    assert_eq!(
        store
            .purge_expired_secrets(SystemTime::now())
            .await
            .unwrap(),
        1
    );

    assert!(
        store
            .rotate_key("k_missing", Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
    // A grace period no clock can reach is refused (it panicked adding it to the time), and
    // the key keeps its secret.
    for grace in [
        Duration::from_secs(u64::MAX),
        Duration::from_secs(9_300_000_000_000_000),
    ] {
        assert!(matches!(
            store.rotate_key(&k.record.id, grace).await,
            Err(StoreError::InvalidInput(_))
        ));
    }
    assert!(store.resolve_key(&r2.secret).await.is_ok());
    db.finish(&[&store]).await;
});

on_backends!(expired_keys_resolve_with_their_expiry, |db| {
    let store = db.store().await;
    let past = UNIX_EPOCH + Duration::from_millis(1_600_000_000_000);
    let k = store
        .create_key(NewKey {
            expires_at: Some(past),
            ..new_key("user1")
        })
        .await
        .unwrap();
    let id = store.resolve_key(&k.secret).await.unwrap();
    assert_eq!(id.expires_at, Some(past));
    assert!(id.is_expired_at(SystemTime::now()));
    // Its requests are refused (401 expired_api_key): like a disabled key's, they are not uses,
    // whether the lookup asked the database or the cache.
    let resolver = store.key_resolver();
    for _ in 0..3 {
        resolver.resolve(presented(&k.secret)).await.unwrap();
    }
    store.flush_usage().await.unwrap();
    let rec = store.get_key(&k.record.id).await.unwrap().unwrap();
    assert_eq!(rec.request_count, 0);
    assert!(rec.last_used_at.is_none());
    db.finish(&[&store]).await;
});

on_backends!(delete_and_rotate_of_one_key_at_once_never_fail, |db| {
    // Two instances: one deletes a key while the other rotates it. Either the delete comes
    // first (the rotation finds no key: `None`, a 404) or the rotation does (then the delete
    // removes the rotated key); never a deadlock, an error or a key that survives the delete.
    let a = db.store().await;
    let b = db.store().await;
    let mut rotated_first = 0;
    for round in 0..20 {
        let k = a.create_key(new_key("user1")).await.unwrap();
        let id = k.record.id.clone();
        b.resolve_key(&k.secret).await.unwrap();
        let (deleted, rotated) = tokio::join!(
            a.delete_key(&id),
            b.rotate_key(
                &id,
                Duration::from_secs(if round % 2 == 0 { 0 } else { 60 })
            )
        );
        assert!(deleted.unwrap(), "round {round}: the key existed");
        match rotated.unwrap() {
            None => {}
            Some(created) => {
                rotated_first += 1;
                assert_eq!(created.record.id, id);
                assert!(matches!(
                    b.resolve_key(&created.secret).await,
                    Err(ResolveError::Invalid)
                ));
            }
        }
        assert!(a.get_key(&id).await.unwrap().is_none(), "round {round}");
        assert!(b.get_key(&id).await.unwrap().is_none(), "round {round}");
        assert!(matches!(
            a.resolve_key(&k.secret).await,
            Err(ResolveError::Invalid)
        ));
    }
    eprintln!(
        "[{}] rotation first in {rotated_first} of 20 rounds",
        db.backend.as_str()
    );
    db.finish(&[&a, &b]).await;
});

on_backends!(
    concurrent_writers_of_the_same_rollup_and_usage_rows_never_deadlock,
    |db| {
        // Two instances write batches touching the same rollup rows (and flush usage of the same
        // keys) at the same time, in opposite orders. In hash-map order this deadlocked on
        // PostgreSQL; the rows are now written in the order of their conflict keys.
        let a = db.store().await;
        let b = db.store().await;
        let base = UNIX_EPOCH + Duration::from_secs(1_800_000_000 / 3600 * 3600);
        let batch = |round: u64, reverse: bool| {
            let mut events: Vec<AuditEvent> = (0..256u64)
                .map(|i| {
                    let n = round * 1_000 + i + if reverse { 500 } else { 0 };
                    let mut e = event(n, base + Duration::from_secs((i % 3) * 60));
                    e.key_id = Some(Arc::from(format!("k_{:02}", i % 40)));
                    e.model = Some(format!("m{}", i % 3));
                    e.duration = Duration::from_micros(500 + (i * 7_919) % 3_000_000);
                    e
                })
                .collect();
            if reverse {
                events.reverse();
            }
            events
        };
        for round in 0..20 {
            let (fwd, rev) = (batch(round, false), batch(round, true));
            let (ra, rb) = tokio::join!(a.insert_audit(&fwd), b.insert_audit(&rev));
            ra.unwrap();
            rb.unwrap();
        }
        assert_eq!(a.count_audit().await.unwrap(), 20 * 2 * 256);
        let keys: Vec<_> = {
            let mut keys = Vec::new();
            for i in 0..30 {
                keys.push(a.create_key(new_key(&format!("user{i}"))).await.unwrap());
            }
            keys
        };
        for _ in 0..20 {
            for k in &keys {
                a.resolve_key(&k.secret).await.unwrap();
            }
            for k in keys.iter().rev() {
                b.resolve_key(&k.secret).await.unwrap();
            }
            let (ra, rb) = tokio::join!(a.flush_usage(), b.flush_usage());
            assert_eq!(ra.unwrap(), 30);
            assert_eq!(rb.unwrap(), 30);
        }
        for k in &keys {
            let rec = a.get_key(&k.record.id).await.unwrap().unwrap();
            assert_eq!(rec.request_count, 40);
        }
        assert_eq!(
            a.stats().audit_batches_failed + b.stats().audit_batches_failed,
            0
        );
        assert_eq!(
            a.stats().usage_flush_errors + b.stats().usage_flush_errors,
            0
        );
        db.finish(&[&a, &b]).await;
    }
);

on_backends!(usage_is_counted_in_memory_and_flushed_in_batches, |db| {
    let store = db.store().await;
    let a = store.create_key(new_key("a")).await.unwrap();
    let b = store.create_key(new_key("b")).await.unwrap();
    let resolver = store.key_resolver();
    for _ in 0..5 {
        resolver.resolve(presented(&a.secret)).await.unwrap();
    }
    resolver.resolve(presented(&b.secret)).await.unwrap();
    // Visible before the flush (pending usage is merged in) ...
    assert_eq!(
        store
            .get_key(&a.record.id)
            .await
            .unwrap()
            .unwrap()
            .request_count,
        5
    );
    // ... and written by it: a second store on the same database sees it.
    assert_eq!(store.flush_usage().await.unwrap(), 2);
    let other = db.store().await;
    let ra = other.get_key(&a.record.id).await.unwrap().unwrap();
    assert_eq!(ra.request_count, 5);
    assert!(ra.last_used_at.is_some());
    assert_eq!(
        other
            .get_key(&b.record.id)
            .await
            .unwrap()
            .unwrap()
            .request_count,
        1
    );
    assert_eq!(store.flush_usage().await.unwrap(), 0);
    resolver.resolve(presented(&a.secret)).await.unwrap();
    store.flush_usage().await.unwrap();
    assert_eq!(
        other
            .get_key(&a.record.id)
            .await
            .unwrap()
            .unwrap()
            .request_count,
        6
    );
    db.finish(&[&store, &other]).await;
});

on_backends!(
    cache_serves_recent_keys_and_stale_ones_when_the_database_is_gone,
    |db| {
        let store = db
            .store_with(StoreOptions {
                cache_ttl: Duration::from_millis(1000),
                ..test_opts()
            })
            .await;
        let known = store.create_key(new_key("user1")).await.unwrap();
        let unknown_yet = store.create_key(new_key("user2")).await.unwrap();
        store.resolve_key(&known.secret).await.unwrap();
        let before = store.stats();
        store.resolve_key(&known.secret).await.unwrap();
        assert_eq!(store.stats().cache_hits, before.cache_hits + 1);
        assert_eq!(store.stats().cache_misses, before.cache_misses);

        store.close().await; // the database "goes away"
        assert!(store.ping().await.is_err());
        // Fresh entry: served.
        assert!(store.resolve_key(&known.secret).await.is_ok());
        // Past its TTL: still served (stale-if-error).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let id = store.resolve_key(&known.secret).await.unwrap();
        assert_eq!(&*id.source_path, "user1");
        assert!(store.stats().stale_served >= 1);
        // Never seen: unavailable, not invalid; answered at once while the database is known down.
        let start = Instant::now();
        for _ in 0..3 {
            assert!(matches!(
                store.resolve_key(&unknown_yet.secret).await,
                Err(ResolveError::Unavailable(_))
            ));
        }
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            store.stats().lookup_errors,
            1,
            "one probe, then fast answers"
        );
        db.finish(&[]).await;
    }
);

on_backends!(
    a_change_seen_by_the_watermark_poll_keeps_cached_keys_as_the_outage_fallback,
    |db| {
        // Instance B caches two keys; instance A renames a third one. B's watermark poll sees
        // the change: B re-reads each cached key on its next use, but if the database goes away
        // first, B still serves the keys it knew (before: the poll emptied the cache, and every
        // key got 503 in an outage that followed any admin change).
        let opts = StoreOptions {
            cache_ttl: Duration::from_secs(600),
            ..test_opts()
        };
        let a = db.store_with(opts.clone()).await;
        let b = db.store_with(opts).await;
        let k1 = a.create_key(new_key("user1")).await.unwrap();
        let k2 = a.create_key(new_key("user2")).await.unwrap();
        let other = a.create_key(new_key("user3")).await.unwrap();
        let bg = Background::spawn(
            &b,
            BackgroundOptions {
                invalidation_poll_interval: Duration::from_millis(100),
                ..Default::default()
            },
        );
        b.resolve_key(&k1.secret).await.unwrap();
        b.resolve_key(&k2.secret).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = b.stats().invalidations;
        a.update_key(
            &other.record.id,
            KeyUpdate {
                name: Some(Some("renamed".to_owned())),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
        // The poll (and on PostgreSQL the notification for the renamed key) reached B.
        wait_until(Duration::from_secs(3), || async {
            b.stats().invalidations > before
        })
        .await
        .expect("the change reached B");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(b.cached_keys(), 2, "the entries are kept");
        // The next use asks the database again.
        let misses = b.stats().cache_misses;
        b.resolve_key(&k1.secret).await.unwrap();
        assert_eq!(b.stats().cache_misses, misses + 1);
        // The database goes away before k2 was used again: its last known state is served.
        bg.stop().await;
        b.close().await;
        let id = b.resolve_key(&k2.secret).await.unwrap();
        assert_eq!(&*id.source_path, "user2");
        assert!(b.resolve_key(&k1.secret).await.is_ok());
        db.finish(&[&a]).await;
    }
);

on_backends!(uncached_resolver_asks_the_database_every_time, |db| {
    let store = db
        .store_with(StoreOptions {
            cache_ttl: Duration::ZERO,
            ..test_opts()
        })
        .await;
    let k = store.create_key(new_key("user1")).await.unwrap();
    for _ in 0..3 {
        store.resolve_key(&k.secret).await.unwrap();
    }
    assert_eq!(store.stats().cache_misses, 3);
    assert_eq!(store.cached_keys(), 0);
    db.finish(&[&store]).await;
});

on_backends!(postgres_notify_alone_delivers_revocation, |db| {
    // The watermark poll is pushed out to a minute, so only LISTEN/NOTIFY can be what
    // tells instance B: this fails if notifications are not sent or not listened to.
    if db.backend != Backend::Postgres {
        db.finish(&[]).await;
        return;
    }
    let opts = StoreOptions {
        cache_ttl: Duration::from_secs(600),
        ..test_opts()
    };
    let a = db.store_with(opts.clone()).await;
    let b = db.store_with(opts).await;
    let bg = Background::spawn(
        &b,
        BackgroundOptions {
            invalidation_poll_interval: Duration::from_secs(60),
            ..Default::default()
        },
    );
    let k = a.create_key(new_key("user1")).await.unwrap();
    b.resolve_key(&k.secret).await.unwrap();
    // Wait until B's listener is up (a change made before it listens would be missed):
    // touch a probe key through A until B counts an invalidation.
    let probe = a.create_key(new_key("probe")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = b.stats().invalidations;
        a.update_key(
            &probe.record.id,
            KeyUpdate {
                name: Some(Some(format!("probe {seen}"))),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        if wait_until(Duration::from_millis(300), || async {
            b.stats().invalidations > seen
        })
        .await
        .is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "B's listener never came up");
    }
    assert!(b.resolve_key(&k.secret).await.is_ok(), "still valid on B");
    let start = Instant::now();
    a.update_key(
        &k.record.id,
        KeyUpdate {
            active: Some(false),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(5), || async {
        matches!(
            b.resolve_key(&k.secret).await,
            Err(ResolveError::Refused(_))
        )
    })
    .await
    .expect("NOTIFY did not reach the second instance");
    let took = start.elapsed();
    eprintln!("[postgres] revocation by NOTIFY alone after {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    bg.stop().await;
    db.finish(&[&a, &b]).await;
});

/// The PostgreSQL test database, or `None` without `FASTGATE_TEST_DATABASE_URL` (skipped).
async fn postgres_only() -> Option<TestDb> {
    let admin = std::env::var("FASTGATE_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty());
    match admin {
        Some(admin) => Some(TestDb::postgres(&admin).await),
        None => {
            eprintln!("skipped: FASTGATE_TEST_DATABASE_URL is not set");
            None
        }
    }
}

async fn pg_connect(db: &TestDb) -> sqlx::PgConnection {
    <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap()
}

/// Another transaction holding key `id`'s row (`SELECT ... FOR UPDATE`) until rolled back.
async fn lock_key_row(db: &TestDb, id: &str) -> sqlx::PgConnection {
    let mut conn = pg_connect(db).await;
    sqlx::Executor::execute(&mut conn, "BEGIN").await.unwrap();
    sqlx::query("SELECT id FROM api_keys WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// Key `id`'s `request_count` as the database has it (no pending counts merged in).
async fn stored_request_count(db: &TestDb, id: &str) -> i64 {
    sqlx::query_scalar("SELECT request_count FROM api_keys WHERE id = $1")
        .bind(id)
        .fetch_one(&mut pg_connect(db).await)
        .await
        .unwrap()
}

/// Whether some session of the test database waits for a lock.
async fn someone_waits_on_a_lock(db: &TestDb) -> bool {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&mut pg_connect(db).await)
    .await
    .unwrap();
    n > 0
}

/// A usage flush waiting for a row another transaction holds gives up after
/// USAGE_FLUSH_LOCK_TIMEOUT (before, it waited for as long as that transaction lasted), keeps
/// its counts, and the next flush writes them exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_usage_flush_on_a_locked_row_gives_up_and_keeps_its_counts() {
    let Some(db) = postgres_only().await else {
        return;
    };
    let store = db.store().await;
    let key = store.create_key(new_key("u")).await.unwrap();
    for _ in 0..3 {
        store.resolve_key(&key.secret).await.unwrap();
    }
    let mut locker = lock_key_row(&db, &key.record.id).await;
    let start = Instant::now();
    let flushed = tokio::time::timeout(
        USAGE_FLUSH_LOCK_TIMEOUT + Duration::from_secs(5),
        store.flush_usage(),
    )
    .await;
    let took = start.elapsed();
    let error = flushed
        .expect("the flush gives up on the lock")
        .expect_err("a flush on a locked row fails");
    assert!(error.is_unavailable(), "{error}");
    assert!(
        took >= USAGE_FLUSH_LOCK_TIMEOUT - Duration::from_millis(100)
            && took < USAGE_FLUSH_LOCK_TIMEOUT + Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(store.pending_usage().requests, 3, "the counts are kept");
    assert_eq!(store.stats().usage_flush_errors, 1);
    assert_eq!(stored_request_count(&db, &key.record.id).await, 0);
    store.resolve_key(&key.secret).await.unwrap();
    sqlx::Executor::execute(&mut locker, "ROLLBACK")
        .await
        .unwrap();
    assert_eq!(store.flush_usage().await.unwrap(), 1);
    assert_eq!(stored_request_count(&db, &key.record.id).await, 4);
    assert_eq!(store.pending_usage().requests, 0);
    assert_eq!(store.flush_usage().await.unwrap(), 0);
    assert_eq!(stored_request_count(&db, &key.record.id).await, 4);
    drop(locker);
    db.finish(&[&store]).await;
}

/// While the background task's usage flush waits for a locked row, a key revoked by another
/// instance is still refused here within a second or so: flushes no longer hold up key
/// change notifications and polls (before, they waited for the flush, up to the lock timeout,
/// and before that for as long as the lock was held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_key_changes_are_seen_while_a_usage_flush_waits_on_a_lock() {
    let Some(db) = postgres_only().await else {
        return;
    };
    let a = db.store().await;
    let b = db
        .store_with(StoreOptions {
            cache_ttl: Duration::from_secs(600),
            ..test_opts()
        })
        .await;
    let busy = a.create_key(new_key("busy")).await.unwrap();
    let revoked = a.create_key(new_key("revoked")).await.unwrap();
    // B knows (caches) the key to be revoked; its use is written.
    b.resolve_key(&revoked.secret).await.unwrap();
    assert_eq!(b.flush_usage().await.unwrap(), 1);
    let bg = Background::spawn(
        &b,
        BackgroundOptions {
            usage_flush_interval: Duration::from_millis(100),
            invalidation_poll_interval: Duration::from_millis(100),
            ..Default::default()
        },
    );
    let mut locker = lock_key_row(&db, &busy.record.id).await;
    b.resolve_key(&busy.secret).await.unwrap();
    wait_until(Duration::from_secs(3), || someone_waits_on_a_lock(&db))
        .await
        .expect("B's usage flush waits for the locked row");
    let waiting = Instant::now();
    set_active(&a, &revoked.record.id, false).await;
    let deadline = USAGE_FLUSH_LOCK_TIMEOUT - Duration::from_secs(1);
    wait_until(deadline, || async {
        b.resolve_key(&revoked.secret).await.is_err()
    })
    .await
    .expect("the revocation reached B while its usage flush waited");
    assert!(waiting.elapsed() < deadline);
    assert_eq!(
        b.stats().usage_flush_errors,
        0,
        "the flush was still waiting"
    );
    // The lock goes: B's usage of the busy key is written, once.
    sqlx::Executor::execute(&mut locker, "ROLLBACK")
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), || async {
        stored_request_count(&db, &busy.record.id).await == 1
    })
    .await
    .expect("the waiting flush wrote its count");
    bg.stop().await;
    assert_eq!(stored_request_count(&db, &busy.record.id).await, 1);
    drop(locker);
    db.finish(&[&a, &b]).await;
}

// A retention purge of a large backlog runs for a long time; key changes made on another
// instance must keep arriving meanwhile (the purge ran in the loop that reads them: a
// revocation waited for the purge to end, or for the cache TTL).
on_backends!(revocation_arrives_while_a_long_purge_runs, |db| {
    let opts = StoreOptions {
        cache_ttl: Duration::from_secs(600),
        ..test_opts()
    };
    let a = db.store_with(opts.clone()).await;
    let b = db.store_with(opts).await;
    const OLD_ROWS: u64 = 20_000;
    let old = SystemTime::now() - Duration::from_secs(30 * 86_400);
    let rows: Vec<AuditEvent> = (0..OLD_ROWS).map(|i| event(i, old)).collect();
    for chunk in rows.chunks(1000) {
        a.insert_audit(chunk).await.unwrap();
    }
    let k = a.create_key(new_key("user1")).await.unwrap();
    b.resolve_key(&k.secret).await.unwrap();
    let bg = Background::spawn(
        &b,
        BackgroundOptions {
            invalidation_poll_interval: Duration::from_millis(100),
            retention: Some(Duration::from_secs(86_400)),
            purge_interval: Duration::from_millis(100),
            // One row per transaction: a purge that lasts seconds.
            purge_batch: 1,
            ..Default::default()
        },
    );
    wait_until(Duration::from_secs(10), || async {
        a.count_audit().await.unwrap() < OLD_ROWS
    })
    .await
    .expect("the purge began");
    let start = Instant::now();
    set_active(&a, &k.record.id, false).await;
    wait_until(Duration::from_secs(5), || async {
        matches!(
            b.resolve_key(&k.secret).await,
            Err(ResolveError::Refused(_))
        )
    })
    .await
    .expect("the revocation reached B during the purge");
    let left = a.count_audit().await.unwrap();
    assert!(
        left > 0,
        "the purge had ended: the test proves nothing (make it longer)"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    bg.stop().await;
    db.finish(&[&a, &b]).await;
});

on_backends!(
    revocation_reaches_a_second_instance_within_two_seconds,
    |db| {
        // Two stores with their own pools on one database, as two gateway instances would be.
        let opts = StoreOptions {
            cache_ttl: Duration::from_secs(600),
            ..test_opts()
        };
        let a = db.store_with(opts.clone()).await;
        let b = db.store_with(opts).await;
        let bg = Background::spawn(
            &b,
            BackgroundOptions {
                invalidation_poll_interval: Duration::from_millis(500),
                ..Default::default()
            },
        );
        let k = a.create_key(new_key("user1")).await.unwrap();
        let k2 = a.create_key(new_key("user2")).await.unwrap();
        b.resolve_key(&k.secret).await.unwrap();
        b.resolve_key(&k2.secret).await.unwrap();
        assert_eq!(b.cached_keys(), 2);
        // Let the listener settle, then revoke through A.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let hits_before = b.stats().cache_hits;
        b.resolve_key(&k.secret).await.unwrap();
        assert_eq!(
            b.stats().cache_hits,
            hits_before + 1,
            "B answers from its cache"
        );

        let start = Instant::now();
        a.update_key(
            &k.record.id,
            KeyUpdate {
                active: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let took = wait_until(Duration::from_secs(5), || async {
            matches!(
                b.resolve_key(&k.secret).await,
                Err(ResolveError::Refused(_))
            )
        })
        .await
        .map(|_| start.elapsed());
        let took = took.expect("revocation did not reach the second instance");
        eprintln!(
            "[{}] revocation reached instance B after {took:?}",
            db.backend.as_str()
        );
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(b.resolve_key(&k2.secret).await.is_ok());

        // B now remembers the disabled key as refused (no query per retry); enabling it again
        // through A must reach B as fast, although B's cache TTL is ten minutes.
        let misses = b.stats().cache_misses;
        for _ in 0..3 {
            assert!(matches!(
                b.resolve_key(&k.secret).await,
                Err(ResolveError::Refused(_))
            ));
        }
        assert_eq!(b.stats().cache_misses, misses, "B asked the database again");
        let start = Instant::now();
        set_active(&a, &k.record.id, true).await;
        wait_until(Duration::from_secs(5), || async {
            b.resolve_key(&k.secret).await.is_ok()
        })
        .await
        .expect("re-enabling did not reach the second instance");
        assert!(start.elapsed() < Duration::from_secs(2));

        // Rotation and deletion propagate the same way.
        let start = Instant::now();
        a.delete_key(&k2.record.id).await.unwrap();
        wait_until(Duration::from_secs(5), || async {
            matches!(b.resolve_key(&k2.secret).await, Err(ResolveError::Invalid))
        })
        .await
        .expect("deletion did not reach the second instance");
        assert!(start.elapsed() < Duration::from_secs(2));

        bg.stop().await;
        db.finish(&[&a, &b]).await;
    }
);

on_backends!(
    background_flushes_usage_and_stops_with_a_final_flush,
    |db| {
        let store = db.store().await;
        let k = store.create_key(new_key("user1")).await.unwrap();
        let bg = Background::spawn(
            &store,
            BackgroundOptions {
                usage_flush_interval: Duration::from_secs(3600),
                ..Default::default()
            },
        );
        store.resolve_key(&k.secret).await.unwrap();
        store.resolve_key(&k.secret).await.unwrap();
        bg.stop().await;
        let other = db.store().await;
        assert_eq!(
            other
                .get_key(&k.record.id)
                .await
                .unwrap()
                .unwrap()
                .request_count,
            2
        );
        db.finish(&[&store, &other]).await;
    }
);

on_backends!(background_purges_by_retention, |db| {
    let store = db.store().await;
    let now = SystemTime::now();
    let events: Vec<AuditEvent> = (0..30)
        .map(|i| {
            event(
                i,
                if i < 20 {
                    now - Duration::from_secs(10 * 86_400)
                } else {
                    now
                },
            )
        })
        .collect();
    store
        .audit_sink()
        .write_batch(&AuditBatch::from(&events[..]))
        .await
        .unwrap();
    let bg = Background::spawn(
        &store,
        BackgroundOptions {
            retention: Some(Duration::from_secs(86_400)),
            purge_interval: Duration::from_millis(50),
            purge_batch: 3,
            ..Default::default()
        },
    );
    wait_until(Duration::from_secs(5), || async {
        store.count_audit().await.unwrap() == 10
    })
    .await
    .expect("retention purge did not run");
    bg.stop().await;
    assert_eq!(store.stats().audit_rows_purged, 20);
    db.finish(&[&store]).await;
});

// ---------------------------------------------------------------- audit

// 150 rows = 64 + 64 + 16 + 4 + 1 + 1: every multi-row statement size, each row with values of
// its own (text of different lengths, NULLs on some rows), read back row by row. Guards the
// column order and the in-place binding of the SQLite writer across rows of one statement.
on_backends!(
    audit_batch_of_every_chunk_size_keeps_each_rows_values,
    |db| {
        let store = db.store().await;
        let at = UNIX_EPOCH + Duration::from_millis(1_764_150_000_000);
        // NULL, empty and non-empty texts of many lengths.
        let agent = |i: u64| match i % 3 {
            0 => None,
            _ if i % 10 == 1 => Some(String::new()),
            _ => Some(format!("agent/{}", "x".repeat(i as usize))),
        };
        let events: Vec<AuditEvent> = (0..150u64)
            .map(|i| {
                let mut e = event(i, at + Duration::from_millis(i));
                e.user_agent = agent(i);
                e.model = (i % 5 != 0).then(|| format!("model-{i}"));
                e.request_bytes = i * 7;
                e.status = 200 + u16::try_from(i % 3).unwrap();
                e
            })
            .collect();
        store
            .audit_sink()
            .write_batch(&AuditBatch::from(&events[..]))
            .await
            .unwrap();
        for i in 0..150u64 {
            let r = store
                .get_audit(&format!("req-{i:06}"))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("row {i} missing"));
            assert_eq!(r.started_at, at + Duration::from_millis(i), "row {i}");
            assert_eq!(r.user_agent, agent(i), "row {i}");
            assert_eq!(
                r.model,
                (i % 5 != 0).then(|| format!("model-{i}")),
                "row {i}"
            );
            assert_eq!(r.request_bytes, i * 7, "row {i}");
            assert_eq!(u64::from(r.status), 200 + i % 3, "row {i}");
        }
    }
);

on_backends!(audit_batch_round_trips_every_field, |db| {
    let store = db.store().await;
    let at = UNIX_EPOCH + Duration::from_millis(1_764_150_000_123);
    let mut e = event(1, at);
    e.is_stream = true;
    e.status = 502;
    e.outcome = Outcome::UpstreamError;
    e.error_code = Some("upstream_error");
    e.ttfb = Some(Duration::from_micros(3_200));
    e.duration = Duration::from_micros(410_500);
    e.usage = Some(TokenUsage {
        prompt_tokens: Some(9),
        completion_tokens: Some(12),
        total_tokens: 21,
    });
    let mut bare = AuditEvent::new("req-bare", "GET", "/nope");
    bare.started_at = at;
    bare.status = 404;
    bare.outcome = Outcome::Rejected;
    store
        .audit_sink()
        .write_batch(&AuditBatch::from(vec![e.clone(), bare]))
        .await
        .unwrap();
    store
        .audit_sink()
        .write_batch(&AuditBatch::default())
        .await
        .unwrap();

    let r = store.get_audit("req-000001").await.unwrap().unwrap();
    assert_eq!(r.request_id, "req-000001");
    assert_eq!(r.started_at, at);
    assert_eq!(r.key_id.as_deref(), Some("k_a"));
    assert_eq!(r.source_path.as_deref(), Some("user1"));
    assert_eq!(r.client_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(r.user_agent.as_deref(), Some("curl/8"));
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/proxy/miniai/v2/chat/completions");
    assert_eq!(
        r.target_url.as_deref(),
        Some("http://127.0.0.1:1030/miniai/v2/chat/completions")
    );
    assert_eq!(r.status, 502);
    assert!(r.is_stream);
    assert_eq!(r.model.as_deref(), Some("gpt-3.5-turbo"));
    assert_eq!((r.request_bytes, r.response_bytes), (120, 2048));
    assert_eq!(r.ttfb, Some(Duration::from_micros(3_200)));
    assert_eq!(r.duration, Duration::from_micros(410_500));
    assert_eq!(r.outcome, "upstream_error");
    assert_eq!(r.error_code.as_deref(), Some("upstream_error"));
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.total_tokens),
        (Some(9), Some(12), Some(21))
    );
    assert!(!r.is_success());

    let b = store.get_audit("req-bare").await.unwrap().unwrap();
    assert_eq!(
        (b.key_id, b.model, b.ttfb, b.total_tokens),
        (None, None, None, None)
    );
    assert_eq!(b.outcome, "rejected");
    assert!(store.get_audit("req-none").await.unwrap().is_none());
    assert_eq!(store.count_audit().await.unwrap(), 2);
    assert_eq!(store.stats().audit_rows_written, 2);
    db.finish(&[&store]).await;
});

on_backends!(audit_large_batches_are_chunked_in_one_transaction, |db| {
    let store = db.store().await;
    let now = SystemTime::now();
    let events: Vec<AuditEvent> = (0..2_345)
        .map(|i| event(i, now - Duration::from_millis(i)))
        .collect();
    store
        .audit_sink()
        .write_batch(&AuditBatch::from(&events[..]))
        .await
        .unwrap();
    assert_eq!(store.count_audit().await.unwrap(), 2_345);
    let m = store.metrics(MetricsWindow::Hour, now).await.unwrap();
    assert_eq!(m.total_requests, 2_345);

    // A failing batch leaves nothing behind (all or nothing), so the worker can retry it.
    store.close().await;
    let sink_err = store
        .audit_sink()
        .write_batch(&AuditBatch::from(&events[..10]))
        .await;
    assert!(sink_err.is_err());
    assert_eq!(store.stats().audit_batches_failed, 1);
    let again = db.store().await;
    assert_eq!(again.count_audit().await.unwrap(), 2_345);
    db.finish(&[&again]).await;
});

on_backends!(audit_query_filters_and_keyset_pagination, |db| {
    let store = db.store().await;
    let base = UNIX_EPOCH + Duration::from_secs(1_764_150_000);
    let mut events = Vec::new();
    for i in 0..50u64 {
        // Pairs share a millisecond so the id tie-break is exercised.
        let mut e = event(i, base + Duration::from_millis(i / 2 * 1000));
        e.key_id = Some(Arc::from(if i % 2 == 0 { "k_even" } else { "k_odd" }));
        e.source_path = Some(Arc::from(if i % 5 == 0 { "five" } else { "other" }));
        e.status = match i % 4 {
            0 => 200,
            1 => 404,
            2 => 503,
            _ => 302,
        };
        e.is_stream = i % 3 == 0;
        if i % 10 == 0 {
            e.method = "GET".to_owned();
        }
        e.model = Some(if i < 10 {
            "m-small".to_owned()
        } else {
            "m-large".to_owned()
        });
        events.push(e);
    }
    store
        .audit_sink()
        .write_batch(&AuditBatch::from(&events[..]))
        .await
        .unwrap();

    // Walk every page: newest first, no duplicates, no gaps.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .query_audit(&AuditFilter {
                limit: 7,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.items.len() <= 7);
        seen.extend(page.items.iter().map(|r| r.request_id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 50);
    let mut expected: Vec<String> = (0..50).rev().map(|i| format!("req-{i:06}")).collect();
    // Within a shared millisecond the later insert (higher id) comes first — same as index order.
    expected.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, expected);

    let q = |f: AuditFilter| {
        let store = store.clone();
        async move {
            store
                .query_audit(&AuditFilter { limit: 1000, ..f })
                .await
                .unwrap()
                .items
        }
    };
    let by_key = q(AuditFilter {
        key_id: Some("k_odd".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(by_key.len(), 25);
    assert!(by_key.iter().all(|r| r.key_id.as_deref() == Some("k_odd")));
    assert_eq!(
        q(AuditFilter {
            source_path: Some("five".into()),
            ..Default::default()
        })
        .await
        .len(),
        10
    );
    let s5 = q(AuditFilter {
        status_class: Some(5),
        ..Default::default()
    })
    .await;
    assert!(
        s5.len() == 12 && s5.iter().all(|r| r.status == 503),
        "{}",
        s5.len()
    );
    assert_eq!(
        q(AuditFilter {
            status_class: Some(2),
            ..Default::default()
        })
        .await
        .len(),
        13
    );
    assert_eq!(
        q(AuditFilter {
            status_class: Some(3),
            ..Default::default()
        })
        .await
        .len(),
        12
    );
    assert_eq!(
        q(AuditFilter {
            is_stream: Some(true),
            ..Default::default()
        })
        .await
        .len(),
        17
    );
    assert_eq!(
        q(AuditFilter {
            is_stream: Some(false),
            ..Default::default()
        })
        .await
        .len(),
        33
    );
    assert_eq!(
        q(AuditFilter {
            model: Some("m-small".into()),
            ..Default::default()
        })
        .await
        .len(),
        10
    );
    let ranged = q(AuditFilter {
        since: Some(base + Duration::from_secs(5)),
        until: Some(base + Duration::from_secs(10)),
        ..Default::default()
    })
    .await;
    assert_eq!(ranged.len(), 10); // seconds 5..=9, two each
    let combo = q(AuditFilter {
        key_id: Some("k_even".into()),
        status_class: Some(2),
        model: Some("m-large".into()),
        ..Default::default()
    })
    .await;
    assert!(
        combo
            .iter()
            .all(|r| r.key_id.as_deref() == Some("k_even") && r.status == 200)
    );
    assert_eq!(combo.len(), 10); // i in 12,16,..,48
    // Metacharacters are plain data.
    assert!(
        q(AuditFilter {
            model: Some("x' OR '1'='1".into()),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    // Default and capped limits.
    assert_eq!(
        store
            .query_audit(&AuditFilter::default())
            .await
            .unwrap()
            .items
            .len(),
        50
    );
    let bad = store
        .query_audit(&AuditFilter {
            cursor: Some("garbage!".into()),
            ..Default::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::InvalidInput(_))));
    let bad = store
        .query_audit(&AuditFilter {
            status_class: Some(7),
            ..Default::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::InvalidInput(_))));

    // M-FastGate's filters: an exact status code, the method, and skip (offset).
    let s404 = q(AuditFilter {
        status: Some(404),
        ..Default::default()
    })
    .await;
    assert!(
        s404.len() == 13 && s404.iter().all(|r| r.status == 404),
        "{}",
        s404.len()
    );
    let bad = store
        .query_audit(&AuditFilter {
            status: Some(99),
            ..Default::default()
        })
        .await;
    assert!(matches!(bad, Err(StoreError::InvalidInput(_))));
    let gets = q(AuditFilter {
        method: Some("GET".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        gets.iter()
            .map(|r| r.request_id.as_str())
            .collect::<Vec<_>>(),
        [
            "req-000040",
            "req-000030",
            "req-000020",
            "req-000010",
            "req-000000"
        ]
    );
    let ids = |items: Vec<fastgate_store::AuditRecord>| {
        items.into_iter().map(|r| r.request_id).collect::<Vec<_>>()
    };
    let skipped = store
        .query_audit(&AuditFilter {
            offset: 3,
            limit: 4,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(skipped.items), expected[3..7]);
    // After a cursor, the offset counts from the cursor.
    let first = store
        .query_audit(&AuditFilter {
            limit: 7,
            ..Default::default()
        })
        .await
        .unwrap();
    let after = store
        .query_audit(&AuditFilter {
            cursor: first.next_cursor,
            offset: 2,
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(after.items), expected[9..12]);
    let past_the_end = store
        .query_audit(&AuditFilter {
            offset: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(past_the_end.items.is_empty() && past_the_end.next_cursor.is_none());

    // The path filter, and a position: records stored after it are left out of every page.
    let path = events[0].path.clone();
    assert_eq!(
        q(AuditFilter {
            path: Some(path.clone()),
            ..Default::default()
        })
        .await
        .len(),
        50
    );
    assert!(
        q(AuditFilter {
            path: Some("/proxy/elsewhere".into()),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    let position = store.audit_position().await.unwrap();
    let mut later = event(99, base + Duration::from_secs(3600));
    later.request_id = "req-later".into();
    let mut earlier = event(98, base - Duration::from_secs(3600));
    earlier.request_id = "req-earlier-but-stored-later".into();
    store
        .audit_sink()
        .write_batch(&AuditBatch::from(vec![later, earlier]))
        .await
        .unwrap();
    let snapshot = q(AuditFilter {
        stored_by: Some(position),
        ..Default::default()
    })
    .await;
    assert_eq!(snapshot.len(), 50);
    assert!(
        snapshot
            .iter()
            .all(|r| !r.request_id.starts_with("req-ea") && r.request_id != "req-later")
    );
    assert_eq!(q(AuditFilter::default()).await.len(), 52);
    db.finish(&[&store]).await;
});

on_backends!(purge_deletes_old_records_in_batches, |db| {
    let store = db.store().await;
    let now = SystemTime::now();
    let old = now - Duration::from_secs(40 * 86_400);
    let events: Vec<AuditEvent> = (0..25)
        .map(|i| {
            event(
                i,
                if i < 17 {
                    old + Duration::from_secs(i)
                } else {
                    now
                },
            )
        })
        .collect();
    store
        .audit_sink()
        .write_batch(&AuditBatch::from(&events[..]))
        .await
        .unwrap();
    let cutoff = now - Duration::from_secs(30 * 86_400);
    assert_eq!(store.purge_audit_older_than(cutoff, 4).await.unwrap(), 17);
    assert_eq!(store.count_audit().await.unwrap(), 8);
    assert_eq!(store.purge_audit_older_than(cutoff, 4).await.unwrap(), 0);
    assert!(store.get_audit("req-000000").await.unwrap().is_none());
    assert!(store.get_audit("req-000020").await.unwrap().is_some());
    db.finish(&[&store]).await;
});

// ---------------------------------------------------------------- metrics

on_backends!(metrics_aggregate_the_window, |db| {
    let store = db.store().await;
    let k1 = store.create_key(new_key("user1")).await.unwrap();
    let k2 = store.create_key(new_key("user2")).await.unwrap();
    let k3 = store.create_key(new_key("user3")).await.unwrap();
    store
        .update_key(
            &k3.record.id,
            KeyUpdate {
                active: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let _expired = store
        .create_key(NewKey {
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(1_600_000_000)),
            ..new_key("user4")
        })
        .await
        .unwrap();

    // now = 10:30:30 on some day; the Day window's buckets are whole hours.
    let day0 = 1_764_115_200u64; // 2025-11-26T00:00:00Z
    let now = UNIX_EPOCH + Duration::from_secs(day0 + 10 * 3600 + 30 * 60 + 30);
    let mut events = Vec::new();
    let mut n = 0u64;
    let mut push = |at: SystemTime,
                    key: &str,
                    sp: &str,
                    model: Option<&str>,
                    status: u16,
                    outcome: Outcome,
                    ms: u64,
                    stream: bool,
                    tokens: Option<u64>| {
        let mut e = event(n, at);
        n += 1;
        e.key_id = Some(Arc::from(key));
        e.source_path = Some(Arc::from(sp));
        e.model = model.map(str::to_owned);
        e.status = status;
        e.outcome = outcome;
        e.duration = Duration::from_millis(ms);
        e.ttfb = if stream {
            Some(Duration::from_millis(ms / 10))
        } else {
            None
        };
        e.is_stream = stream;
        e.usage = tokens.map(|t| TokenUsage {
            prompt_tokens: Some(t / 3),
            completion_tokens: Some(t - t / 3),
            total_tokens: t,
        });
        events.push(e);
    };
    let k1id = k1.record.id.as_str();
    let k2id = k2.record.id.as_str();
    // 100 requests at 10:05 (k1, model a): 90 ok at 1..=90 ms, 10 errors (500) at 1000 ms.
    for i in 1..=90 {
        push(
            now - Duration::from_secs(25 * 60) + Duration::from_millis(i),
            k1id,
            "user1",
            Some("a"),
            200,
            Outcome::Completed,
            i,
            i % 2 == 0,
            Some(30),
        );
    }
    for _ in 0..10 {
        push(
            now - Duration::from_secs(25 * 60),
            k1id,
            "user1",
            Some("a"),
            500,
            Outcome::Completed,
            1000,
            false,
            None,
        );
    }
    // 20 at 03:10 (k2, model b), 5 of them client aborts with status 200 (errors).
    for i in 0..20 {
        let outcome = if i < 5 {
            Outcome::ClientAborted
        } else {
            Outcome::Completed
        };
        push(
            now - Duration::from_secs(7 * 3600 + 20 * 60),
            k2id,
            "user2",
            Some("b"),
            200,
            outcome,
            50,
            true,
            Some(3),
        );
    }
    // Outside the Day window (2 days ago) and rejected without a key or model inside it.
    push(
        now - Duration::from_secs(2 * 86_400),
        k1id,
        "user1",
        Some("a"),
        200,
        Outcome::Completed,
        5,
        false,
        Some(1000),
    );
    let mut anon = event(999, now - Duration::from_secs(60));
    anon.key_id = None;
    anon.source_path = None;
    anon.model = None;
    anon.status = 401;
    anon.outcome = Outcome::Rejected;
    // FastGate's own answer: counted as a request and an error, left out of latency and TTFB.
    anon.duration = Duration::from_millis(1);
    anon.ttfb = Some(Duration::from_micros(500));
    events.push(anon);
    store
        .audit_sink()
        .write_batch(&AuditBatch::from(&events[..60]))
        .await
        .unwrap(); // two batches hit the same rollup rows
    store
        .audit_sink()
        .write_batch(&AuditBatch::from(&events[60..]))
        .await
        .unwrap();

    let m = store.metrics(MetricsWindow::Day, now).await.unwrap();
    assert_eq!(m.window, MetricsWindow::Day);
    assert_eq!(m.bucket, Duration::from_secs(3600));
    assert_eq!(m.until, now);
    // since = now - 24h to the minute (10:30 the day before); 25 hourly buckets from the hour
    // holding it (10:00 the day before).
    assert_eq!(
        m.since,
        UNIX_EPOCH + Duration::from_secs(day0 - 14 * 3600 + 30 * 60)
    );
    assert_eq!(m.series.len(), 25);
    assert_eq!(
        m.series[0].ts,
        UNIX_EPOCH + Duration::from_secs(day0 - 14 * 3600)
    );
    assert_eq!(
        m.series[24].ts,
        UNIX_EPOCH + Duration::from_secs(day0 + 10 * 3600)
    );
    assert_eq!(m.total_requests, 121);
    assert_eq!(m.error_count, 10 + 5 + 1);
    assert_eq!(m.success_count, 105);
    assert!((m.success_rate - 105.0 / 121.0).abs() < 1e-9);
    assert_eq!(m.stream_requests, 45 + 20);
    assert!((m.stream_share - 65.0 / 121.0).abs() < 1e-9);
    assert_eq!(m.total_tokens, 90 * 30 + 20 * 3);
    assert_eq!(m.prompt_tokens, 90 * 10 + 20);
    assert_eq!(m.completion_tokens, 90 * 20 + 20 * 2);
    let sum_ms: u64 = (1..=90).sum::<u64>() + 10_000 + 20 * 50;
    assert!(
        (m.avg_latency_ms - sum_ms as f64 / 120.0).abs() < 1e-6,
        "{}",
        m.avg_latency_ms
    );
    // ttfb: 45 streams at i/10 ms (even i), 20 at 5 ms.
    let ttfb_sum: u64 = (1..=90u64)
        .filter(|i| i % 2 == 0)
        .map(|i| i / 10)
        .sum::<u64>()
        + 20 * 5;
    assert!(
        (m.avg_ttfb_ms - ttfb_sum as f64 / 65.0).abs() < 1e-6,
        "{}",
        m.avg_ttfb_ms
    );
    // 121 requests, the one 4xx refusal left out of the latency figures; 65 had a first byte.
    assert_eq!(m.latency_samples, 120);
    assert_eq!(m.ttfb_samples, 65);
    // Exact p50 of the 120 timed durations (the rejection left out): 1..=90, 10×1000, 20×50.
    let mut all: Vec<f64> = (1..=90)
        .map(|i| i as f64)
        .chain(std::iter::repeat_n(1000.0, 10))
        .chain(std::iter::repeat_n(50.0, 20))
        .collect();
    all.sort_by(f64::total_cmp);
    let exact = |q: f64| all[((q * all.len() as f64).ceil() as usize).max(1) - 1];
    for (est, q) in [(m.p50_latency_ms, 0.5), (m.p95_latency_ms, 0.95)] {
        let want = exact(q);
        assert!(
            (est - want).abs() / want <= 0.10,
            "p{q}: estimated {est}, exact {want}"
        );
    }
    assert_eq!((m.active_keys, m.total_keys), (2, 4));

    assert_eq!(m.per_key.len(), 2);
    assert_eq!(
        (
            m.per_key[0].key_id.as_str(),
            m.per_key[0].source_path.as_str()
        ),
        (k1id, "user1")
    );
    assert_eq!(
        (
            m.per_key[0].requests,
            m.per_key[0].errors,
            m.per_key[0].total_tokens
        ),
        (100, 10, 2700)
    );
    assert_eq!(
        (
            m.per_key[1].requests,
            m.per_key[1].errors,
            m.per_key[1].total_tokens
        ),
        (20, 5, 60)
    );
    assert_eq!(
        m.per_model
            .iter()
            .map(|p| (p.model.as_str(), p.requests, p.total_tokens))
            .collect::<Vec<_>>(),
        vec![("a", 100, 2700), ("b", 20, 60)]
    );

    let hour = |h: u64| {
        m.series
            .iter()
            .find(|p| p.ts == UNIX_EPOCH + Duration::from_secs(day0 + h * 3600))
            .unwrap()
    };
    assert_eq!(
        (hour(10).requests, hour(10).errors, hour(10).total_tokens),
        (101, 11, 2700)
    );
    assert_eq!(
        (hour(3).requests, hour(3).errors, hour(3).total_tokens),
        (20, 5, 60)
    );
    assert_eq!(m.series.iter().map(|p| p.requests).sum::<u64>(), 121);

    // Hour window: 60 s buckets, the 10:05 minute holds 100 requests.
    let h = store.metrics(MetricsWindow::Hour, now).await.unwrap();
    assert_eq!(h.series.len(), 61);
    assert_eq!(h.total_requests, 101);
    let at_0905 = UNIX_EPOCH + Duration::from_secs(day0 + 10 * 3600 + 5 * 60);
    assert_eq!(
        h.series.iter().find(|p| p.ts == at_0905).unwrap().requests,
        100
    );
    // Week window: 6 h buckets, everything.
    let w = store.metrics(MetricsWindow::Week, now).await.unwrap();
    assert_eq!(w.total_requests, 122);
    assert_eq!(w.bucket, Duration::from_secs(21_600));
    assert!(w.series.len() == 29, "{}", w.series.len());
    // Empty store window.
    let empty = store
        .metrics(MetricsWindow::Hour, now + Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    assert_eq!(
        (
            empty.total_requests,
            empty.success_rate,
            empty.p95_latency_ms
        ),
        (0, 0.0, 0.0)
    );
    assert_eq!(empty.series.len(), 61);
    db.finish(&[&store]).await;
});

on_backends!(metrics_windows_are_exact_to_the_minute, |db| {
    let store = db.store().await;
    // now = 10:30:30; the Day window starts at 10:30 the day before, inside an hour bucket.
    let day0 = 1_764_115_200u64; // 2025-11-26T00:00:00Z
    let now = UNIX_EPOCH + Duration::from_secs(day0 + 10 * 3600 + 30 * 60 + 30);
    let at = |secs_before_now: u64, ms: u64| {
        let mut e = event(secs_before_now, now - Duration::from_secs(secs_before_now));
        e.duration = Duration::from_millis(ms);
        e
    };
    let events = vec![
        // The day before: 10:10 (before the window, in its first hour bucket) and 10:45.
        at(86_400 + 20 * 60 + 30, 1_000),
        at(86_400 - 15 * 60 - 30, 20),
        // An hour ago, and seven days and five minutes ago (before the week's window) / seven
        // days less five minutes ago (inside it, in its first, partial hour).
        at(3_600, 40),
        at(7 * 86_400 + 5 * 60, 3_000),
        at(7 * 86_400 - 5 * 60, 60),
    ];
    store
        .audit_sink()
        .write_batch(&AuditBatch::from(events))
        .await
        .unwrap();

    let day = store.metrics(MetricsWindow::Day, now).await.unwrap();
    assert_eq!(day.total_requests, 2, "{day:?}");
    assert!(
        (day.avg_latency_ms - 30.0).abs() < 1e-9,
        "{}",
        day.avg_latency_ms
    );
    // The partial first bucket holds the 10:45 request only; the series adds up to the total.
    assert_eq!(day.series[0].requests, 1);
    assert_eq!(day.series.iter().map(|p| p.requests).sum::<u64>(), 2);
    assert_eq!(day.per_key.iter().map(|k| k.requests).sum::<u64>(), 2);
    assert_eq!(day.per_model.iter().map(|m| m.requests).sum::<u64>(), 2);
    assert!(day.p95_latency_ms < 100.0, "{}", day.p95_latency_ms);

    let week = store.metrics(MetricsWindow::Week, now).await.unwrap();
    assert_eq!(week.total_requests, 4, "{week:?}");
    assert_eq!(
        week.since,
        UNIX_EPOCH + Duration::from_secs(day0 + 10 * 3600 + 30 * 60 - 7 * 86_400)
    );
    assert_eq!(week.series.iter().map(|p| p.requests).sum::<u64>(), 4);
    assert!(
        (week.avg_latency_ms - (1_000.0 + 20.0 + 40.0 + 60.0) / 4.0).abs() < 1e-9,
        "{}",
        week.avg_latency_ms
    );

    // 30 days: every event, in UTC-day buckets; the first, partial, day starts at midnight.
    let month = store.metrics(MetricsWindow::Month, now).await.unwrap();
    assert_eq!(month.total_requests, 5, "{month:?}");
    assert_eq!(month.series.len(), 31);
    assert_eq!(
        month.series[0].ts,
        UNIX_EPOCH + Duration::from_secs(day0 - 30 * 86_400)
    );
    assert_eq!(month.series.iter().map(|p| p.requests).sum::<u64>(), 5);
    assert_eq!(month.series[30].requests, 1); // today: an hour ago
    let hour = store.metrics(MetricsWindow::Hour, now).await.unwrap();
    assert_eq!(hour.total_requests, 1);
    assert_eq!(
        hour.since,
        UNIX_EPOCH + Duration::from_secs(day0 + 9 * 3600 + 30 * 60)
    );
    db.finish(&[&store]).await;
});

on_backends!(periods_are_whole_hours_and_days_at_an_offset, |db| {
    let store = db.store().await;
    let day0 = 1_764_115_200u64; // 2025-11-26T00:00:00Z
    let now = UNIX_EPOCH + Duration::from_secs(day0 + 10 * 3600 + 30 * 60 + 30); // 10:30:30Z
    let at = |i: u64, secs: u64, ms: u64, status: u16| {
        let mut e = event(i, UNIX_EPOCH + Duration::from_secs(secs));
        e.duration = Duration::from_millis(ms);
        e.status = status;
        e
    };
    let events = vec![
        at(1, day0 + 10 * 3600 + 5 * 60, 20, 200), // 11-26 10:05Z, the current hour
        at(2, day0 + 9 * 3600 + 59 * 60, 40, 500), // 11-26 09:59Z
        at(3, day0 - 4 * 3600, 60, 200),           // 11-25 20:00Z = 11-26 04:00 at +08:00
        at(4, day0 - 8 * 3600 - 30 * 60, 80, 200), // 11-25 15:30Z = 11-25 23:30 at +08:00
        at(5, day0 - 40 * 86_400, 100, 200),       // 40 days before
        at(6, day0 - 19 * 3600 - 60, 10, 200),     // 11-25 04:59Z = 11-24 23:59 at -05:00
        at(7, day0 - 19 * 3600, 10, 200),          // 11-25 05:00Z = 11-25 00:00 at -05:00
    ];
    store
        .audit_sink()
        .write_batch(&AuditBatch::from(events))
        .await
        .unwrap();
    let counts = |ps: &[PeriodMetrics]| ps.iter().map(|p| p.requests).collect::<Vec<_>>();

    // 24 hours: 11-25 11:00Z to the current hour, 10:00Z.
    let hours = store.periods(Period::Hour, 24, 0, now).await.unwrap();
    assert_eq!(hours.len(), 24);
    assert_eq!(
        hours[0].start,
        UNIX_EPOCH + Duration::from_secs(day0 - 13 * 3600)
    );
    assert_eq!(
        hours[23].start,
        UNIX_EPOCH + Duration::from_secs(day0 + 10 * 3600)
    );
    let mut want = vec![0u64; 24];
    (want[4], want[9], want[22], want[23]) = (1, 1, 1, 1);
    assert_eq!(counts(&hours), want);
    assert_eq!((hours[22].errors, hours[23].errors), (1, 0));
    let current = &hours[23];
    assert_eq!(current.latency_samples, 1);
    assert!((current.avg_latency_ms.unwrap() - 20.0).abs() < 1e-9);
    let p50 = current.p50_latency_ms.unwrap();
    assert!((p50 - 20.0).abs() <= 2.0, "{p50}");
    // An empty hour has no latency, not 0 ms.
    assert_eq!(
        (hours[0].avg_latency_ms, hours[0].p95_latency_ms),
        (None, None)
    );

    // Days at UTC midnight, and at midnight of UTC+8 (China time, M-FastGate's clock).
    let days = store.periods(Period::Day, 2, 0, now).await.unwrap();
    assert_eq!(counts(&days), [4, 2]);
    assert_eq!(days[1].start, UNIX_EPOCH + Duration::from_secs(day0));
    let china = store.periods(Period::Day, 2, 8, now).await.unwrap();
    assert_eq!(counts(&china), [3, 3]);
    assert_eq!(
        china[1].start,
        UNIX_EPOCH + Duration::from_secs(day0 - 8 * 3600)
    );
    assert_eq!(china[1].errors, 1);
    // West of UTC: at -05:00 today began at 11-26 05:00Z (the requests of 09:59Z and 10:05Z),
    // yesterday at 11-25 05:00Z, the very millisecond of event 7; event 6 came a minute earlier.
    let west = store.periods(Period::Day, 3, -5, now).await.unwrap();
    assert_eq!(
        west[2].start,
        UNIX_EPOCH + Duration::from_secs(day0 + 5 * 3600)
    );
    assert_eq!(
        west[1].start,
        UNIX_EPOCH + Duration::from_secs(day0 - 19 * 3600)
    );
    assert_eq!(counts(&west), [1, 3, 2]);
    let month = store.periods(Period::Day, 30, 0, now).await.unwrap();
    assert_eq!(month.len(), 30);
    assert_eq!(month.iter().map(|p| p.requests).sum::<u64>(), 6);
    let year = store.periods(Period::Day, 365, -5, now).await.unwrap();
    assert_eq!(year.iter().map(|p| p.requests).sum::<u64>(), 7);
    for (count, offset) in [(2, 15), (2, -13), (100_001, 0)] {
        assert!(matches!(
            store.periods(Period::Day, count, offset, now).await,
            Err(StoreError::InvalidInput(_))
        ));
    }
    db.finish(&[&store]).await;
});

// ---------------------------------------------------------------- migrations

/// Rollups written under migration 0001 only are backfilled into the hourly tables by 0002.
/// (Builds a one-migration `Migrator` through sqlx's doc-hidden fields: test-only.)
macro_rules! apply_first_migration_and_seed {
    ($pool:expr, $migrator:expr, $now_minute:expr) => {{
        let mut m = $migrator;
        m.migrations = std::borrow::Cow::Owned(m.migrations[..1].to_vec());
        m.run($pool).await.unwrap();
        for (minute, requests, bucket) in
            [($now_minute, 3i64, 40i32), ($now_minute - 60_000, 5, 40), ($now_minute - 7_200_000, 7, 50)]
        {
            sqlx::query(
                "INSERT INTO audit_rollup_minute VALUES ($1, 'k_old', 'm', 'user1', $2, 1, 0, $3, 0, 0, 0, 0, $2)",
            )
            .bind(minute)
            .bind(requests)
            .bind(requests * 10_000)
            .execute($pool)
            .await
            .unwrap();
            sqlx::query("INSERT INTO audit_latency_minute VALUES ($1, $2, $3)")
                .bind(minute)
                .bind(bucket)
                .bind(requests)
                .execute($pool)
                .await
                .unwrap();
        }
    }};
}

/// Runs one statement on the test database through a pool of its own (for what a future
/// FastGate would have done to it).
async fn exec_raw(db: &TestDb, sqlite: &str, postgres: &str) {
    match db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            sqlx::query(sqlite).execute(&pool).await.unwrap();
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            sqlx::query(postgres).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

// A rolling upgrade: an instance still on this binary restarts after a newer FastGate migrated
// the shared database. Without `ignore_missing` sqlx refuses it ("migration 9999 was previously
// applied but is missing").
on_backends!(
    a_database_migrated_by_a_newer_binary_is_used_unless_marked_incompatible,
    |db| {
        let store = db.store().await;
        let key = store.create_key(new_key("user1")).await.unwrap();
        store.close().await;
        // What a newer binary's additive migration leaves behind.
        exec_raw(
            &db,
            "CREATE TABLE future_feature (x BIGINT)",
            "CREATE TABLE future_feature (x BIGINT)",
        )
        .await;
        exec_raw(
        &db,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'future feature', TRUE, X'00', 1)",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'future feature', TRUE, '\\x00'::bytea, 1)",
    )
    .await;
        let store = db.store().await;
        assert!(store.resolve_key(&key.secret).await.is_ok());
        store.create_key(new_key("user2")).await.unwrap();
        store.close().await;
        // A newer migration that marks every binary before it incompatible.
        exec_raw(
            &db,
            "UPDATE store_state SET requires_migration = 9999 WHERE id = 1",
            "UPDATE store_state SET requires_migration = 9999 WHERE id = 1",
        )
        .await;
        let err = Store::connect(&db.url, test_opts()).await.unwrap_err();
        let StoreError::SchemaTooNew {
            applied,
            requires,
            known,
        } = err
        else {
            panic!("{err:?}");
        };
        assert_eq!((applied, requires), (9999, 9999));
        assert!((5..9999).contains(&known), "{known}");
        let msg = err.to_string();
        assert!(
            msg.contains("9999") && msg.contains("upgrade this binary"),
            "{msg}"
        );
        // One that requires no more than this binary knows is fine.
        exec_raw(
            &db,
            "UPDATE store_state SET requires_migration = 5 WHERE id = 1",
            "UPDATE store_state SET requires_migration = 5 WHERE id = 1",
        )
        .await;
        let store = db.store().await;
        assert!(store.resolve_key(&key.secret).await.is_ok());
        db.finish(&[&store]).await;
    }
);

on_backends!(migration_0002_backfills_hourly_rollups, |db| {
    // A fixed clock: 10:30 on 2025-11-26 (UTC); seeded minutes 10:05, 10:04 and 08:05.
    let now_minute: i64 = 1_764_151_500_000; // 2025-11-26T10:05:00Z
    let now = UNIX_EPOCH + Duration::from_millis(u64::try_from(now_minute + 25 * 60_000).unwrap());
    match db.backend {
        Backend::Sqlite => {
            let opts = std::str::FromStr::from_str(&db.url)
                .map(|o: sqlx::sqlite::SqliteConnectOptions| o.create_if_missing(true))
                .unwrap();
            let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
            apply_first_migration_and_seed!(
                &pool,
                sqlx::migrate!("./migrations/sqlite"),
                now_minute
            );
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            apply_first_migration_and_seed!(
                &pool,
                sqlx::migrate!("./migrations/postgres"),
                now_minute
            );
            pool.close().await;
        }
    }
    let store = db.store().await; // applies 0002
    let day = store.metrics(MetricsWindow::Day, now).await.unwrap();
    assert_eq!(day.total_requests, 15);
    assert_eq!(day.error_count, 3);
    assert_eq!(day.total_tokens, 15);
    assert!(
        (day.avg_latency_ms - 10.0).abs() < 1e-9,
        "{}",
        day.avg_latency_ms
    );
    assert_eq!(day.per_key.len(), 1);
    assert_eq!(day.per_key[0].source_path, "user1");
    let last = day.series.last().unwrap();
    assert_eq!(last.requests, 8, "{:?}", day.series);
    // p50 of 15 samples: 8 in bucket 40, 7 in bucket 50.
    let b40_lo = 1.1f64.powi(39);
    assert!(
        day.p50_latency_ms >= b40_lo && day.p50_latency_ms < b40_lo * 1.1,
        "{}",
        day.p50_latency_ms
    );
    // Rows written before 0003 have no latency_count (they summed every request). New events
    // added onto such a row: a completed one counts, a refused (401) one does not.
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(now_minute + 10_000).unwrap());
    let mut done = event(1, at);
    done.key_id = Some("k_old".into());
    done.source_path = Some("user1".into());
    done.model = Some("m".into());
    done.duration = Duration::from_millis(40);
    let mut refused = done.clone();
    refused.status = 401;
    refused.outcome = Outcome::Rejected;
    refused.duration = Duration::from_millis(1);
    store
        .audit_sink()
        .write_batch(&AuditBatch::from(vec![done, refused]))
        .await
        .unwrap();
    let day = store.metrics(MetricsWindow::Day, now).await.unwrap();
    assert_eq!(day.total_requests, 17);
    assert!(
        (day.avg_latency_ms - 190.0 / 16.0).abs() < 1e-9,
        "{}",
        day.avg_latency_ms
    );
    assert_eq!(day.latency_samples, 16);
    db.finish(&[&store]).await;
});
