//! Errors returned by the store. Messages are lowercase and never contain a secret (a key, or a
//! password from a database URL).

use std::path::PathBuf;

/// Errors returned by [`Store`](crate::Store).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL has a scheme the store does not speak.
    #[error(
        "unsupported database URL scheme {scheme:?} (accepted: sqlite:, sqlite://, sqlite:///, \
         postgres://, postgresql://, postgresql+<driver>://)"
    )]
    UnsupportedUrl {
        /// The scheme found (the text before the first `:`), or empty when there is none.
        scheme: String,
    },
    /// The database URL has an accepted scheme but cannot be used.
    #[error("invalid database URL: {reason}")]
    InvalidUrl {
        /// What is wrong with it (never contains the URL's password).
        reason: &'static str,
    },
    /// The directory that should hold the SQLite file does not exist (it is not created).
    #[error("directory {dir:?} for the SQLite database does not exist")]
    DirectoryMissing {
        /// The missing directory.
        dir: PathBuf,
    },
    /// The SQLite file could not be created or opened.
    #[error("cannot open the SQLite database {path:?}")]
    SqliteFile {
        /// The database file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: sqlx::Error,
    },
    /// Opening the first connection failed.
    #[error("cannot connect to the {backend} database")]
    Connect {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A query failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// A batch of audit rows could not be written to the SQLite file.
    #[error("audit write failed")]
    AuditWrite(#[from] crate::sqlite_audit::SqliteAuditError),
    /// A migration failed to apply.
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database failed moments ago; the store answers without asking it until
    /// [`StoreOptions::stale_retry_interval`](crate::StoreOptions::stale_retry_interval) has passed.
    #[error("database unavailable (recent failure)")]
    Unavailable,
    /// An argument was rejected before reaching the database.
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    /// The database is M-FastGate's (the Python gateway's): its `api_keys` table has the
    /// plain-text `key_value` column. FastGate does not change it.
    #[error(
        "the database holds M-FastGate's tables (api_keys.key_value), which FastGate does not \
         change: move the file aside (or point database.url at a new database), then import it \
         with `fastgate import-mfastgate --from <old file>`"
    )]
    MFastGateDatabase,
    /// The database was migrated by a newer FastGate whose schema this binary cannot use (a
    /// migration it does not know marked older binaries incompatible).
    #[error(
        "the database was migrated by a newer FastGate (schema version {applied}) that needs \
         a binary knowing schema version {requires} or later; this one knows up to {known}: \
         upgrade this binary"
    )]
    SchemaTooNew {
        /// The highest migration applied to the database.
        applied: i64,
        /// The oldest schema version a binary must know to use the database.
        requires: i64,
        /// The highest migration this binary knows.
        known: i64,
    },
    /// The file given to import from is not a readable M-FastGate database.
    #[error("not an M-FastGate database: {0}")]
    NotMFastGate(&'static str),
    /// The key usage file could not be written or removed (see [`UsageFile`](crate::UsageFile)).
    #[error(transparent)]
    UsageFile(#[from] crate::UsageFileError),
    /// A stored value could not be decoded (e.g. a permissions column that is not a JSON list).
    #[error("corrupt stored value in {0}")]
    Corrupt(&'static str),
}

impl StoreError {
    /// Whether the error means the database could not be reached or failed (as opposed to bad input).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::SqliteFile { .. }
                | Self::Database(_)
                | Self::Migrate(_)
                | Self::AuditWrite(_)
        )
    }
}
