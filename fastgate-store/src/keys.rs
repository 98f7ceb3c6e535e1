//! API keys: generation, hashing, and the `api_keys` / `api_key_hashes` tables.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::model::{
    CreatedKey, ImportOutcome, ImportedKey, KeyFilter, KeyPage, KeyRecord, KeyUpdate, NewKey,
};
use crate::{Arg, Db, Store, StoreError, from_ms, to_ms, to_u64};

/// Random bytes in a key (256 bits).
const SECRET_BYTES: usize = 32;
/// Channel used for cross-instance invalidation on PostgreSQL.
pub(crate) const NOTIFY_CHANNEL: &str = "fastgate_key_changes";

/// SHA-256 of a key, lower-case hex. The only form in which keys are stored.
pub fn hash_key(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A new secret (`prefix` + 43 base64url chars of CSPRNG output) and its display form.
fn generate_secret(prefix: &str) -> (String, String) {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let body = URL_SAFE_NO_PAD.encode(bytes);
    let display = format!("{prefix}{}…{}", &body[..4], &body[body.len() - 4..]);
    (format!("{prefix}{body}"), display)
}

/// Shortest secret [`Store::import_key`] accepts: with the display form's 8 (plus prefix)
/// characters shown, at least 24 stay unknown.
const MIN_IMPORTED_SECRET: usize = 32;

/// Display form of an existing secret: `prefix` (when it starts with it) and its next 4
/// characters, `…`, the last 4.
fn display_of(secret: &str, prefix: &str) -> String {
    let head = if secret.starts_with(prefix) {
        prefix.len() + 4
    } else {
        4
    };
    let tail = secret.len().saturating_sub(4);
    match (secret.get(..head), secret.get(tail..)) {
        (Some(h), Some(t)) if head < tail => format!("{h}…{t}"),
        _ => "…".to_owned(),
    }
}

fn new_key_id() -> String {
    format!("k_{}", uuid::Uuid::now_v7().simple())
}

fn check_text(value: &str, what: &'static str) -> Result<(), StoreError> {
    if value.trim().is_empty() || value.len() > 256 {
        return Err(StoreError::InvalidInput(what));
    }
    Ok(())
}

/// Names, owners and permissions given to [`Store::create_key`] and [`Store::update_key`] hold no
/// control characters: PostgreSQL refuses a NUL in text (the call would fail as if the database
/// were down), and the others would reach an operator's terminal through `fastgate keys list`.
/// (Keys brought over by [`Store::import_key`] keep what they had.)
fn check_printable<'a>(
    values: impl IntoIterator<Item = &'a str>,
    what: &'static str,
) -> Result<(), StoreError> {
    if values.into_iter().any(|v| v.chars().any(char::is_control)) {
        return Err(StoreError::InvalidInput(what));
    }
    Ok(())
}

fn encode_permissions(perms: &[String]) -> Result<String, StoreError> {
    if perms.iter().any(|p| p.trim().is_empty() || p.len() > 64) {
        return Err(StoreError::InvalidInput(
            "permissions must be non-empty strings of at most 64 bytes",
        ));
    }
    serde_json::to_string(perms).map_err(|_| StoreError::InvalidInput("permissions"))
}

pub(crate) fn decode_permissions(text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|_| StoreError::Corrupt("api_keys.permissions"))
}

pub(crate) const KEY_COLUMNS: &str = "id, name, source_path, permissions, display, created_at, \
     updated_at, expires_at, active, last_used_at, request_count";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct KeyRow {
    id: String,
    name: Option<String>,
    source_path: String,
    permissions: String,
    display: String,
    created_at: i64,
    updated_at: i64,
    expires_at: Option<i64>,
    active: bool,
    last_used_at: Option<i64>,
    request_count: i64,
}

impl KeyRow {
    fn into_record(self) -> Result<KeyRecord, StoreError> {
        Ok(KeyRecord {
            permissions: decode_permissions(&self.permissions)?,
            id: self.id,
            name: self.name,
            source_path: self.source_path,
            display: self.display,
            created_at: from_ms(self.created_at),
            updated_at: from_ms(self.updated_at),
            expires_at: self.expires_at.map(from_ms),
            active: self.active,
            last_used_at: self.last_used_at.map(from_ms),
            request_count: to_u64(self.request_count),
        })
    }
}

/// Locks the `api_keys` row of `$id` inside `tx` on PostgreSQL (`SELECT … FOR UPDATE`), the
/// first thing every transaction that changes a key's rows does, so that two changes of one key
/// take their locks in the same order. A no-op on SQLite, where a transaction's first write
/// takes the one write lock of the whole database.
macro_rules! lock_key_row {
    ($backend:expr, $tx:expr, $id:expr) => {{
        if $backend == crate::Backend::Postgres {
            sqlx::query("SELECT id FROM api_keys WHERE id = $1 FOR UPDATE")
                .bind($id)
                .fetch_optional(&mut *$tx)
                .await?;
        }
    }};
}

/// Bumps the change watermark (and, on PostgreSQL, notifies other instances) inside `tx`.
macro_rules! signal_change {
    ($backend:expr, $tx:expr, $id:expr) => {{
        sqlx::query("UPDATE store_state SET key_generation = key_generation + 1 WHERE id = 1")
            .execute(&mut *$tx)
            .await?;
        if $backend == crate::Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind($id)
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

impl Store {
    /// Create a key. The secret is in the result and nowhere else.
    pub async fn create_key(&self, new: NewKey) -> Result<CreatedKey, StoreError> {
        check_text(&new.source_path, "source_path must be 1..=256 bytes")?;
        if let Some(name) = &new.name
            && name.len() > 256
        {
            return Err(StoreError::InvalidInput("name must be at most 256 bytes"));
        }
        check_printable(
            [new.source_path.as_str()],
            "source_path must not contain control characters",
        )?;
        check_printable(
            new.name.as_deref(),
            "name must not contain control characters",
        )?;
        check_printable(
            new.permissions.iter().map(String::as_str),
            "permissions must not contain control characters",
        )?;
        let permissions = encode_permissions(&new.permissions)?;
        let (secret, display) = generate_secret(&self.inner.opts.key_prefix);
        let hash = hash_key(&secret);
        let id = new_key_id();
        let now = to_ms(SystemTime::now());
        on_pool!(&self.inner.db, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO api_keys (id, name, source_path, permissions, display, created_at, \
                 updated_at, expires_at, active, last_used_at, request_count) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, NULL, 0)",
            )
            .bind(&id)
            .bind(&new.name)
            .bind(&new.source_path)
            .bind(&permissions)
            .bind(&display)
            .bind(now)
            .bind(new.expires_at.map(to_ms))
            .bind(true)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO api_key_hashes (hash, key_id, created_at, valid_until) VALUES ($1, $2, $3, NULL)",
            )
            .bind(&hash)
            .bind(&id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        let record = self
            .get_key(&id)
            .await?
            .ok_or(StoreError::Corrupt("api_keys (row vanished after insert)"))?;
        Ok(CreatedKey { record, secret })
    }

    /// Add a key that already has a secret (brought over from M-FastGate), keeping its id.
    ///
    /// Every imported secret is also recorded in `key_imports`, which outlives the key, so an
    /// import run again neither duplicates a key nor brings back one deleted since: both are
    /// [`ImportOutcome::AlreadyImported`]. A key whose id, or whose secret, belongs to a
    /// different key is a [`ImportOutcome::Conflict`] and changes nothing.
    pub async fn import_key(&self, key: ImportedKey) -> Result<ImportOutcome, StoreError> {
        check_text(&key.id, "key id must be 1..=256 bytes")?;
        check_text(&key.source_path, "source_path must be 1..=256 bytes")?;
        if key.secret.len() < MIN_IMPORTED_SECRET || key.secret.len() > 512 {
            return Err(StoreError::InvalidInput(
                "an imported secret must be 32..=512 bytes",
            ));
        }
        let permissions = encode_permissions(&key.permissions)?;
        let display = display_of(&key.secret, &self.inner.opts.key_prefix);
        let hash = hash_key(&key.secret);
        let now = to_ms(SystemTime::now());
        let backend = self.backend();
        let outcome = on_pool!(&self.inner.db, |pool| {
            let mut tx = pool.begin().await?;
            // Written first: on SQLite this takes the write lock (waiting for it under the busy
            // timeout) before anything is read, since a read transaction that then writes fails
            // at once if another connection wrote meanwhile. Rolled back unless imported.
            signal_change!(backend, tx, key.id.as_str());
            let imported_as: Option<String> =
                sqlx::query_scalar("SELECT key_id FROM key_imports WHERE hash = $1")
                    .bind(&hash)
                    .fetch_optional(&mut *tx)
                    .await?;
            let hash_owner: Option<String> =
                sqlx::query_scalar("SELECT key_id FROM api_key_hashes WHERE hash = $1")
                    .bind(&hash)
                    .fetch_optional(&mut *tx)
                    .await?;
            let id_taken: Option<String> =
                sqlx::query_scalar("SELECT id FROM api_keys WHERE id = $1")
                    .bind(&key.id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let outcome = match (imported_as, hash_owner) {
                (Some(id), _) | (None, Some(id)) if id == key.id => ImportOutcome::AlreadyImported,
                (Some(_), _) | (None, Some(_)) => ImportOutcome::Conflict,
                (None, None) if id_taken.is_some() => ImportOutcome::Conflict,
                (None, None) => ImportOutcome::Imported,
            };
            if outcome == ImportOutcome::Imported {
                sqlx::query(
                    "INSERT INTO api_keys (id, name, source_path, permissions, display, \
                     created_at, updated_at, expires_at, active, last_used_at, request_count) \
                     VALUES ($1, NULL, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(&key.id)
                .bind(&key.source_path)
                .bind(&permissions)
                .bind(&display)
                .bind(to_ms(key.created_at))
                .bind(now)
                .bind(key.expires_at.map(to_ms))
                .bind(key.active)
                .bind(key.last_used_at.map(to_ms))
                .bind(i64::try_from(key.request_count).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO api_key_hashes (hash, key_id, created_at, valid_until) \
                     VALUES ($1, $2, $3, NULL)",
                )
                .bind(&hash)
                .bind(&key.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO key_imports (hash, key_id, imported_at) VALUES ($1, $2, $3)",
                )
                .bind(&hash)
                .bind(&key.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            outcome
        });
        if outcome == ImportOutcome::Imported {
            // A client may have tried this secret before the import: forget that it was unknown.
            self.invalidate_key(&key.id);
            self.inner.cache.forget_unknown();
        }
        Ok(outcome)
    }

    /// One key by id.
    pub async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row = on_pool!(&self.inner.db, |pool| {
            sqlx::query_as::<_, KeyRow>(&sql)
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        row.map(|r| self.with_pending_usage(r.into_record()?))
            .transpose()
    }

    /// Keys matching `filter`, newest first, and how many match in total.
    pub async fn list_keys(&self, filter: &KeyFilter) -> Result<KeyPage, StoreError> {
        let now = to_ms(SystemTime::now());
        let mut cond = String::from(" WHERE 1 = 1");
        let mut args = Vec::new();
        if let Some(active) = filter.active {
            args.push(Arg::Bool(active));
            cond.push_str(&format!(" AND active = ${}", args.len()));
        }
        if let Some(sp) = &filter.source_path {
            args.push(Arg::Text(sp.clone()));
            cond.push_str(&format!(" AND source_path = ${}", args.len()));
        }
        match filter.expired {
            Some(true) => {
                args.push(Arg::I64(now));
                cond.push_str(&format!(
                    " AND expires_at IS NOT NULL AND expires_at <= ${}",
                    args.len()
                ));
            }
            Some(false) => {
                args.push(Arg::I64(now));
                cond.push_str(&format!(
                    " AND (expires_at IS NULL OR expires_at > ${})",
                    args.len()
                ));
            }
            None => {}
        }
        let limit = match filter.limit {
            0 => 50,
            n => n.min(1000),
        };
        let count_sql = format!("SELECT COUNT(*) FROM api_keys{cond}");
        let page_sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys{cond} ORDER BY created_at DESC, id DESC LIMIT {limit} OFFSET {}",
            filter.offset
        );
        let count_args = clone_args(&args);
        let (total, rows) = on_pool!(&self.inner.db, |pool| {
            let total: (i64,) = bind_args!(sqlx::query_as(&count_sql), count_args)
                .fetch_one(pool)
                .await?;
            let rows: Vec<KeyRow> = bind_args!(sqlx::query_as(&page_sql), args)
                .fetch_all(pool)
                .await?;
            (total.0, rows)
        });
        let items = rows
            .into_iter()
            .map(|r| self.with_pending_usage(r.into_record()?))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeyPage {
            items,
            total: to_u64(total),
        })
    }

    /// Change a key. `Ok(None)` when there is no such key. Takes effect at once on this instance
    /// and (PostgreSQL) within a moment on the others.
    pub async fn update_key(
        &self,
        id: &str,
        update: KeyUpdate,
    ) -> Result<Option<KeyRecord>, StoreError> {
        if update.is_empty() {
            return self.get_key(id).await;
        }
        let mut sets = Vec::new();
        let mut args = Vec::new();
        if let Some(name) = update.name {
            if name.as_ref().is_some_and(|n| n.len() > 256) {
                return Err(StoreError::InvalidInput("name must be at most 256 bytes"));
            }
            check_printable(name.as_deref(), "name must not contain control characters")?;
            args.push(Arg::OptText(name));
            sets.push(format!("name = ${}", args.len()));
        }
        if let Some(sp) = update.source_path {
            check_text(&sp, "source_path must be 1..=256 bytes")?;
            check_printable(
                [sp.as_str()],
                "source_path must not contain control characters",
            )?;
            args.push(Arg::Text(sp));
            sets.push(format!("source_path = ${}", args.len()));
        }
        if let Some(perms) = update.permissions {
            check_printable(
                perms.iter().map(String::as_str),
                "permissions must not contain control characters",
            )?;
            args.push(Arg::Text(encode_permissions(&perms)?));
            sets.push(format!("permissions = ${}", args.len()));
        }
        if let Some(exp) = update.expires_at {
            args.push(Arg::OptI64(exp.map(to_ms)));
            sets.push(format!("expires_at = ${}", args.len()));
        }
        if let Some(active) = update.active {
            args.push(Arg::Bool(active));
            sets.push(format!("active = ${}", args.len()));
        }
        args.push(Arg::I64(to_ms(SystemTime::now())));
        sets.push(format!("updated_at = ${}", args.len()));
        args.push(Arg::Text(id.to_owned()));
        let sql = format!(
            "UPDATE api_keys SET {} WHERE id = ${}",
            sets.join(", "),
            args.len()
        );
        let backend = self.backend();
        let changed = on_pool!(&self.inner.db, |pool| {
            let mut tx = pool.begin().await?;
            let n = bind_args!(sqlx::query(&sql), args)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                signal_change!(backend, tx, id);
            }
            tx.commit().await?;
            n > 0
        });
        if !changed {
            return Ok(None);
        }
        self.invalidate_key(id);
        self.get_key(id).await
    }

    /// Delete a key (its audit records stay). `false` when there was no such key.
    pub async fn delete_key(&self, id: &str) -> Result<bool, StoreError> {
        let backend = self.backend();
        let deleted = on_pool!(&self.inner.db, |pool| {
            let mut tx = pool.begin().await?;
            // The key's row first, as every other change of a key (update, rotate) locks it
            // first: deleting its hashes first deadlocked with a concurrent rotation on
            // PostgreSQL. (SQLite's first write takes the database's one write lock.)
            lock_key_row!(backend, tx, id);
            sqlx::query("DELETE FROM api_key_hashes WHERE key_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let n = sqlx::query("DELETE FROM api_keys WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                signal_change!(backend, tx, id);
            }
            tx.commit().await?;
            n > 0
        });
        self.invalidate_key(id);
        self.inner.usage.forget(id);
        Ok(deleted)
    }

    /// Give a key a new secret. The old secret keeps working for `grace` (zero: stops at once).
    /// `Ok(None)` when there is no such key.
    pub async fn rotate_key(
        &self,
        id: &str,
        grace: Duration,
    ) -> Result<Option<CreatedKey>, StoreError> {
        let (secret, display) = generate_secret(&self.inner.opts.key_prefix);
        let hash = hash_key(&secret);
        let now = SystemTime::now();
        let now_ms = to_ms(now);
        // Rounded up to the next millisecond: the old secret never gets less than `grace`.
        let end = now
            .checked_add(grace)
            .filter(|end| to_ms(*end) < i64::MAX)
            .ok_or(StoreError::InvalidInput(
                "the grace period is too long to be a point in time",
            ))?;
        let partial_ms = end
            .duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|d| d.subsec_nanos() % 1_000_000 != 0);
        let grace_end = to_ms(end) + i64::from(partial_ms);
        let backend = self.backend();
        let select = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1");
        let row = on_pool!(&self.inner.db, |pool| {
            let mut tx = pool.begin().await?;
            // The UPDATE locks the key's row before its hashes are touched (as `delete_key`
            // does). A key deleted meanwhile matches no row: `None`, as for an unknown id.
            let n = sqlx::query("UPDATE api_keys SET display = $1, updated_at = $2 WHERE id = $3")
                .bind(&display)
                .bind(now_ms)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                if grace.is_zero() {
                    sqlx::query("DELETE FROM api_key_hashes WHERE key_id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                } else {
                    sqlx::query(
                        "UPDATE api_key_hashes SET valid_until = $1 WHERE key_id = $2 AND valid_until IS NULL",
                    )
                    .bind(grace_end)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "INSERT INTO api_key_hashes (hash, key_id, created_at, valid_until) VALUES ($1, $2, $3, NULL)",
                )
                .bind(&hash)
                .bind(id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                signal_change!(backend, tx, id);
            }
            // Read in the transaction, under the row lock: a delete that follows at once cannot
            // make the rotation that succeeded look like a missing (or corrupt) key.
            let row = if n > 0 {
                sqlx::query_as::<_, KeyRow>(&select)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
            } else {
                None
            };
            tx.commit().await?;
            row
        });
        let Some(row) = row else {
            return Ok(None);
        };
        self.invalidate_key(id);
        let record = self.with_pending_usage(row.into_record()?)?;
        Ok(Some(CreatedKey { record, secret }))
    }

    /// Remove rotated-out secrets whose grace period has ended. Returns how many were removed.
    pub async fn purge_expired_secrets(&self, now: SystemTime) -> Result<u64, StoreError> {
        let now = to_ms(now);
        Ok(on_pool!(&self.inner.db, |pool| {
            sqlx::query(
                "DELETE FROM api_key_hashes WHERE valid_until IS NOT NULL AND valid_until <= $1",
            )
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Current value of the change watermark.
    pub(crate) async fn key_generation(&self) -> Result<i64, StoreError> {
        let row: (i64,) = on_pool!(&self.inner.db, |pool| {
            sqlx::query_as("SELECT key_generation FROM store_state WHERE id = 1")
                .fetch_one(pool)
                .await?
        });
        Ok(row.0)
    }

    /// Adds this instance's unflushed usage to a record read from the database.
    fn with_pending_usage(&self, mut rec: KeyRecord) -> Result<KeyRecord, StoreError> {
        if let Some((count, last)) = self.inner.usage.pending(&rec.id) {
            rec.request_count = rec.request_count.saturating_add(count);
            let last = from_ms(last);
            if rec.last_used_at.is_none_or(|t| t < last) {
                rec.last_used_at = Some(last);
            }
        }
        Ok(rec)
    }
}

pub(crate) fn clone_args(args: &[Arg]) -> Vec<Arg> {
    args.iter()
        .map(|a| match a {
            Arg::I64(v) => Arg::I64(*v),
            Arg::OptI64(v) => Arg::OptI64(*v),
            Arg::Text(v) => Arg::Text(v.clone()),
            Arg::OptText(v) => Arg::OptText(v.clone()),
            Arg::Bool(v) => Arg::Bool(*v),
        })
        .collect()
}

/// Row returned by a hash lookup.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LookupRow {
    pub(crate) id: String,
    pub(crate) source_path: String,
    pub(crate) permissions: String,
    pub(crate) expires_at: Option<i64>,
    pub(crate) active: bool,
    pub(crate) valid_until: Option<i64>,
}

pub(crate) async fn lookup_hash(db: &Db, hash: &str) -> Result<Option<LookupRow>, StoreError> {
    const SQL: &str = "SELECT k.id, k.source_path, k.permissions, k.expires_at, k.active, h.valid_until \
                       FROM api_key_hashes h JOIN api_keys k ON k.id = h.key_id WHERE h.hash = $1";
    Ok(on_pool!(db, |pool| {
        sqlx::query_as::<_, LookupRow>(SQL)
            .bind(hash)
            .fetch_optional(pool)
            .await?
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn secrets_are_long_url_safe_and_distinct() {
        let (a, da) = generate_secret("fg_");
        let (b, _) = generate_secret("fg_");
        assert_ne!(a, b);
        assert!(a.starts_with("fg_"));
        assert_eq!(a.len(), 3 + 43);
        assert!(
            a[3..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(da, format!("fg_{}…{}", &a[3..7], &a[a.len() - 4..]));
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
