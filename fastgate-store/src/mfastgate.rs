//! Moving over from M-FastGate, the Python gateway FastGate continues: recognise its database,
//! and import its keys (clients keep their secrets) and its audit log.
//!
//! M-FastGate keeps keys in plain text (`api_keys.key_value`) in a table whose name FastGate's
//! schema also uses, so FastGate never migrates such a database in place: [`Store::migrate`]
//! refuses it with [`StoreError::MFastGateDatabase`], and [`Store::import_mfastgate`] reads it
//! (read-only) into a FastGate database, storing only each secret's SHA-256.
//!
//! What the import maps:
//!
//! | M-FastGate | FastGate |
//! |---|---|
//! | `api_keys.key_id` | key id, unchanged (`DELETE /admin/keys/{key_id}` keeps working) |
//! | `key_value` | SHA-256 only; the display form (`fg_AbCd…wxYz`) is derived from it |
//! | `source_path`, `expires_at`, `is_active`, `usage_count`, `last_used_at`, `created_at` | same meaning |
//! | `permissions` (JSON list) | the same list without `*` (FastGate's wildcard), plus [`ImportOptions::add_permissions`] |
//! | `is_active` NULL, `expires_at` blank or unreadable | disabled; not imported |
//! | `audit_logs` row | audit record: `request_id`, `created_at` as the start time, method, path and target URL (query strings and `user:password@` dropped), status, `response_time_ms` as the duration, sizes, user agent, `ip_address`, `is_stream` |
//! | `audit_logs.api_key` | the key's id when it names an imported key (by secret or id), else nothing: a secret is never copied |
//!
//! An import can be run again: a key imported before is skipped (also when it was deleted
//! since: `key_imports` remembers it), as are audit rows whose `request_id` is present. A key
//! whose id or secret belongs to another FastGate key is not imported (logged by id).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, NaiveDateTime};
use fastgate_layer::audit::{AuditEvent, Outcome};
use futures_util::TryStreamExt as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::{ConnectOptions as _, Row as _};

use crate::{Db, ImportOutcome, ImportedKey, Store, StoreError};

/// Audit rows written per transaction during an import.
const AUDIT_BATCH: usize = 500;

/// How to import.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportOptions {
    /// Permissions every imported key gets besides its own. M-FastGate did not check
    /// permissions, so without the unified endpoint's permission (`chat` by default) a key that
    /// worked there would be refused here.
    pub add_permissions: Vec<String>,
}

impl ImportOptions {
    /// Add `permission` to every imported key.
    #[must_use]
    pub fn add_permission(mut self, permission: impl Into<String>) -> Self {
        self.add_permissions.push(permission.into());
        self
    }
}

/// What an import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Keys added.
    pub keys_imported: u64,
    /// Keys skipped because their id or secret was already stored.
    pub keys_present: u64,
    /// Keys skipped because a field could not be used (logged by id).
    pub keys_invalid: u64,
    /// Audit rows added.
    pub audit_imported: u64,
    /// Audit rows skipped because their `request_id` was already stored.
    pub audit_present: u64,
    /// Audit rows skipped because a required field was missing or unreadable.
    pub audit_invalid: u64,
}

/// Opens the SQLite file at `path` read-only (never creating it). Without a `-wal` file beside
/// it, as `immutable`: then SQLite creates no `-shm` file either, so nothing at all is written.
async fn open_read_only(path: &Path) -> Result<sqlx::SqliteConnection, StoreError> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .immutable(!Path::new(&wal).exists())
        .create_if_missing(false)
        .connect()
        .await
        .map_err(|source| StoreError::SqliteFile {
            path: path.to_owned(),
            source,
        })
}

/// Whether the open database has M-FastGate's `api_keys.key_value` column.
async fn has_mfastgate_keys(conn: &mut sqlx::SqliteConnection) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master m, pragma_table_info(m.name) c \
         WHERE m.type = 'table' AND m.name = 'api_keys' AND c.name = 'key_value'",
    )
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}

/// Whether the SQLite file at `path` is M-FastGate's database (read-only check).
pub(crate) async fn sqlite_file_is_mfastgate(path: &Path) -> Result<bool, StoreError> {
    let mut conn = open_read_only(path).await?;
    let found = has_mfastgate_keys(&mut conn).await;
    let _ = sqlx::Connection::close(conn).await;
    found
}

/// Whether `store`'s database holds M-FastGate's `api_keys` table (with `key_value`).
pub(crate) async fn holds_mfastgate_tables(store: &Store) -> Result<bool, StoreError> {
    let n: i64 = match &store.inner.db {
        Db::Sqlite(pool) => i64::from(has_mfastgate_keys(&mut *pool.acquire().await?).await?),
        Db::Postgres(pool) => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = \
                 current_schema() AND table_name = 'api_keys' AND column_name = 'key_value'",
            )
            .fetch_one(pool)
            .await?
        }
    };
    Ok(n > 0)
}

impl Store {
    /// Import the keys and audit log of the M-FastGate SQLite database at `path` (opened
    /// read-only, left unchanged). See the [module docs](crate::mfastgate).
    pub async fn import_mfastgate(
        &self,
        path: &Path,
        opts: &ImportOptions,
    ) -> Result<ImportReport, StoreError> {
        let mut old = open_read_only(path).await?;
        if !has_mfastgate_keys(&mut old).await? {
            return Err(StoreError::NotMFastGate(
                "it has no api_keys table with a key_value column",
            ));
        }
        let mut report = ImportReport::default();
        let owners = self.import_old_keys(&mut old, opts, &mut report).await?;
        let has_audit: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'audit_logs'",
        )
        .fetch_one(&mut old)
        .await?;
        if has_audit > 0 {
            self.import_old_audit(&mut old, &owners, &mut report)
                .await?;
        }
        Ok(report)
    }

    /// Imports every key; returns who each old secret and id belongs to (for the audit rows).
    async fn import_old_keys(
        &self,
        old: &mut sqlx::SqliteConnection,
        opts: &ImportOptions,
        report: &mut ImportReport,
    ) -> Result<Owners, StoreError> {
        let rows = sqlx::query(
            "SELECT CAST(key_id AS TEXT) AS key_id, CAST(key_value AS TEXT) AS key_value, \
             CAST(source_path AS TEXT) AS source_path, CAST(permissions AS TEXT) AS permissions, \
             CAST(created_at AS TEXT) AS created_at, CAST(expires_at AS TEXT) AS expires_at, \
             CAST(is_active AS INTEGER) AS is_active, CAST(usage_count AS INTEGER) AS usage_count, \
             CAST(last_used_at AS TEXT) AS last_used_at FROM api_keys",
        )
        .fetch_all(&mut *old)
        .await?;
        let mut owners = Owners::default();
        for row in rows {
            let Some(key) = old_key(&row, opts) else {
                let id: Option<String> = row.try_get("key_id").ok().flatten();
                tracing::warn!(
                    key_id = id.as_deref().unwrap_or("?"),
                    "M-FastGate key not imported: missing or unusable field"
                );
                report.keys_invalid += 1;
                continue;
            };
            let id: Arc<str> = Arc::from(key.id.as_str());
            let secret = key.secret.clone();
            match self.import_key(key).await {
                Ok(ImportOutcome::Imported) => report.keys_imported += 1,
                Ok(ImportOutcome::AlreadyImported) => report.keys_present += 1,
                Ok(ImportOutcome::Conflict) => {
                    tracing::warn!(
                        key_id = %id,
                        "M-FastGate key not imported: its id or its secret belongs to another \
                         FastGate key"
                    );
                    report.keys_invalid += 1;
                    continue;
                }
                Err(StoreError::InvalidInput(why)) => {
                    tracing::warn!(key_id = %id, why, "M-FastGate key not imported");
                    report.keys_invalid += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
            owners.by_secret.insert(secret, Arc::clone(&id));
            owners.ids.insert(id);
        }
        Ok(owners)
    }

    async fn import_old_audit(
        &self,
        old: &mut sqlx::SqliteConnection,
        owners: &Owners,
        report: &mut ImportReport,
    ) -> Result<(), StoreError> {
        let mut rows = sqlx::query(
            "SELECT CAST(request_id AS TEXT) AS request_id, CAST(api_key AS TEXT) AS api_key, \
             CAST(source_path AS TEXT) AS source_path, CAST(method AS TEXT) AS method, \
             CAST(path AS TEXT) AS path, CAST(target_url AS TEXT) AS target_url, \
             CAST(status_code AS INTEGER) AS status_code, \
             CAST(response_time_ms AS INTEGER) AS response_time_ms, \
             CAST(request_size AS INTEGER) AS request_size, \
             CAST(response_size AS INTEGER) AS response_size, \
             CAST(user_agent AS TEXT) AS user_agent, CAST(ip_address AS TEXT) AS ip_address, \
             CAST(is_stream AS INTEGER) AS is_stream, CAST(created_at AS TEXT) AS created_at \
             FROM audit_logs ORDER BY created_at",
        )
        .fetch(&mut *old);
        let mut batch = Vec::with_capacity(AUDIT_BATCH);
        while let Some(row) = rows.try_next().await? {
            let Some(event) = old_audit_row(&row, owners) else {
                report.audit_invalid += 1;
                continue;
            };
            if self.get_audit(&event.request_id).await?.is_some() {
                report.audit_present += 1;
                continue;
            }
            batch.push(event);
            if batch.len() == AUDIT_BATCH {
                self.insert_audit(&batch).await?;
                report.audit_imported += batch.len() as u64;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            self.insert_audit(&batch).await?;
            report.audit_imported += batch.len() as u64;
        }
        Ok(())
    }
}

/// The imported keys, by old secret and by id.
#[derive(Default)]
struct Owners {
    by_secret: HashMap<String, Arc<str>>,
    ids: HashSet<Arc<str>>,
}

impl Owners {
    /// The key an old audit row's `api_key` names (M-FastGate wrote the secret there).
    fn key_of(&self, api_key: &str) -> Option<Arc<str>> {
        self.by_secret
            .get(api_key)
            .or_else(|| self.ids.get(api_key))
            .cloned()
    }
}

fn text(row: &SqliteRow, column: &str) -> Option<String> {
    row.try_get::<Option<String>, _>(column)
        .ok()
        .flatten()
        .filter(|s| !s.trim().is_empty())
}

fn int(row: &SqliteRow, column: &str) -> Option<i64> {
    row.try_get::<Option<i64>, _>(column).ok().flatten()
}

fn old_key(row: &SqliteRow, opts: &ImportOptions) -> Option<ImportedKey> {
    let mut permissions: Vec<String> = match text(row, "permissions") {
        Some(json) => serde_json::from_str(&json).ok()?,
        None => Vec::new(),
    };
    // `*` is FastGate's wildcard (every route, also ones M-FastGate never had); M-FastGate did
    // not check permissions, so the list never granted anything there.
    permissions.retain(|p| p != "*");
    for p in &opts.add_permissions {
        if !permissions.contains(p) {
            permissions.push(p.clone());
        }
    }
    Some(ImportedKey {
        id: text(row, "key_id")?,
        secret: text(row, "key_value")?,
        source_path: text(row, "source_path")?,
        permissions,
        created_at: text(row, "created_at")
            .and_then(|t| parse_time(&t))
            .unwrap_or_else(SystemTime::now),
        // NULL: never. Anything else must be readable (a blank one too): not "never".
        expires_at: match row.try_get::<Option<String>, _>("expires_at").ok()? {
            Some(t) => Some(parse_time(&t)?),
            None => None,
        },
        // NULL is not true: M-FastGate refused such a key.
        active: int(row, "is_active").is_some_and(|v| v != 0),
        last_used_at: text(row, "last_used_at").and_then(|t| parse_time(&t)),
        request_count: int(row, "usage_count").map_or(0, |n| u64::try_from(n).unwrap_or(0)),
    })
}

fn old_audit_row(row: &SqliteRow, owners: &Owners) -> Option<AuditEvent> {
    let mut event = AuditEvent::new(
        text(row, "request_id")?,
        text(row, "method")?,
        without_query(&text(row, "path")?),
    );
    event.started_at = parse_time(&text(row, "created_at")?)?;
    let status = u16::try_from(int(row, "status_code")?).ok()?;
    event.status = status;
    event.outcome = if status >= 500 {
        Outcome::UpstreamError
    } else {
        Outcome::Completed
    };
    event.key_id = text(row, "api_key").and_then(|k| owners.key_of(&k));
    event.source_path = text(row, "source_path").map(Arc::from);
    event.target_url =
        text(row, "target_url").map(|t| Arc::from(without_userinfo(&without_query(&t))));
    event.duration = Duration::from_millis(
        int(row, "response_time_ms").map_or(0, |ms| u64::try_from(ms).unwrap_or(0)),
    );
    event.request_bytes = int(row, "request_size").map_or(0, |n| u64::try_from(n).unwrap_or(0));
    event.response_bytes = int(row, "response_size").map_or(0, |n| u64::try_from(n).unwrap_or(0));
    event.user_agent = text(row, "user_agent");
    event.client_ip = text(row, "ip_address");
    event.is_stream = int(row, "is_stream").is_some_and(|v| v != 0);
    Some(event)
}

/// A path or URL without its query string (which may hold credentials).
fn without_query(s: &str) -> String {
    s.split_once('?').map_or(s, |(head, _)| head).to_owned()
}

/// A URL without `user:password@` (FastGate's own audit rows never carry it either).
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{tail}")
}

/// An M-FastGate timestamp: SQLAlchemy's naive `DateTime` text (`2025-06-01 12:00:00[.123456]`,
/// UTC: `func.now()` on SQLite and `datetime.utcnow()`), or RFC 3339.
fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let utc = DateTime::parse_from_rfc3339(s)
        .map(|t| t.to_utc())
        .ok()
        .or_else(|| {
            ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
                .iter()
                .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
                .map(|t| t.and_utc())
        })?;
    let ms = utc.timestamp_millis();
    Some(if ms >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sqlalchemy_and_rfc3339_times() {
        let at = |s| {
            parse_time(s)
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_millis())
        };
        assert_eq!(at("2025-06-01 12:00:00"), Some(1_748_779_200_000));
        assert_eq!(at("2025-06-01 12:00:00.250000"), Some(1_748_779_200_250));
        assert_eq!(at("2025-06-01T12:00:00.250"), Some(1_748_779_200_250));
        assert_eq!(at("2025-06-01T14:00:00+02:00"), Some(1_748_779_200_000));
        assert_eq!(at("yesterday"), None);
        assert_eq!(at(""), None);
    }

    #[test]
    fn query_strings_and_credentials_are_dropped() {
        assert_eq!(without_query("/proxy/x?key=secret"), "/proxy/x");
        assert_eq!(without_query("/proxy/x"), "/proxy/x");
        assert_eq!(
            without_userinfo("https://user:pw@up.example:8443/v1/x"),
            "https://up.example:8443/v1/x"
        );
        assert_eq!(without_userinfo("http://a@b@host"), "http://host");
        assert_eq!(without_userinfo("http://host/p@x"), "http://host/p@x");
        assert_eq!(without_userinfo("/relative"), "/relative");
    }
}
