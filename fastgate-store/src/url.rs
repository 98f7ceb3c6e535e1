//! Database URLs as M-FastGate (SQLAlchemy) writes them, and the forms sqlx knows.

use std::fmt;
use std::path::PathBuf;

use crate::error::StoreError;

/// Where the SQLite database lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqliteLocation {
    /// `sqlite::memory:`: one private database, gone when the store closes (tests only).
    Memory,
    /// A file path; relative paths are relative to the working directory.
    File(PathBuf),
}

/// A parsed database URL. `Debug` and `Display` never show a password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite:` URLs.
    Sqlite(SqliteLocation),
    /// `postgres://` / `postgresql://` URLs, normalised to `postgresql://` (any `+driver` removed).
    Postgres(PostgresUrl),
}

/// A PostgreSQL connection URL. Holds the password; prints without it.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(String);

impl PostgresUrl {
    /// The full URL, password included, for the driver only. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the password (if any) replaced by `******`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresUrl({:?})", self.redacted())
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl DatabaseUrl {
    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> crate::Backend {
        match self {
            Self::Sqlite(_) => crate::Backend::Sqlite,
            Self::Postgres(_) => crate::Backend::Postgres,
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(loc) => f.debug_tuple("Sqlite").field(loc).finish(),
            Self::Postgres(url) => f.debug_tuple("Postgres").field(url).finish(),
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(SqliteLocation::Memory) => f.write_str("sqlite::memory:"),
            Self::Sqlite(SqliteLocation::File(p)) => write!(f, "sqlite:{}", p.display()),
            Self::Postgres(url) => fmt::Display::fmt(url, f),
        }
    }
}

/// Parse a database URL.
///
/// Accepted:
/// - `sqlite:///./fastgate.db` (SQLAlchemy, relative to the working directory),
///   `sqlite:////var/lib/fastgate/fastgate.db` (SQLAlchemy, absolute), `sqlite://fastgate.db`,
///   `sqlite:fastgate.db`, `sqlite::memory:`; a `?query` part is ignored;
/// - `postgres://…`, `postgresql://…`, and `postgresql+asyncpg://…` / `postgresql+psycopg2://…`
///   (the `+driver` part is removed).
///
/// Anything else is [`StoreError::UnsupportedUrl`]. No error message contains the password.
pub fn parse_database_url(url: &str) -> Result<DatabaseUrl, StoreError> {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once(':') else {
        return Err(StoreError::UnsupportedUrl {
            scheme: String::new(),
        });
    };
    let scheme_lc = scheme.to_ascii_lowercase();
    let base = scheme_lc
        .split_once('+')
        .map_or(scheme_lc.as_str(), |(b, _)| b);
    match base {
        "sqlite" => parse_sqlite(rest),
        "postgres" | "postgresql" => {
            let Some(after) = rest.strip_prefix("//") else {
                return Err(StoreError::InvalidUrl {
                    reason: "a postgres URL must start with postgresql://",
                });
            };
            if after.is_empty() {
                return Err(StoreError::InvalidUrl {
                    reason: "the postgres URL names no host",
                });
            }
            Ok(DatabaseUrl::Postgres(PostgresUrl(format!(
                "postgresql://{after}"
            ))))
        }
        _ => {
            // Only echo something that looks like a scheme: never a stray secret.
            let safe = scheme.len() <= 32
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            Err(StoreError::UnsupportedUrl {
                scheme: if safe {
                    scheme.to_owned()
                } else {
                    String::new()
                },
            })
        }
    }
}

fn parse_sqlite(rest: &str) -> Result<DatabaseUrl, StoreError> {
    let rest = rest.split_once('?').map_or(rest, |(p, _)| p);
    if rest == ":memory:" || rest == "//:memory:" || rest == "///:memory:" {
        return Ok(DatabaseUrl::Sqlite(SqliteLocation::Memory));
    }
    // SQLAlchemy: sqlite:///relative, sqlite:////absolute. sqlx: sqlite://path, sqlite:path.
    let path = if let Some(p) = rest.strip_prefix("///") {
        p
    } else if let Some(p) = rest.strip_prefix("//") {
        p
    } else {
        rest
    };
    if path.is_empty() {
        return Err(StoreError::InvalidUrl {
            reason: "the sqlite URL names no file",
        });
    }
    Ok(DatabaseUrl::Sqlite(SqliteLocation::File(PathBuf::from(
        path,
    ))))
}

/// Replace the password of `scheme://user:password@host/...` with `******`.
/// `url` with its password replaced by `******`: the `user:password@` part of the authority and
/// any `password=` query parameter (which sqlx's PostgreSQL driver also accepts).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, after)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user part ends at the last `@`: a password holding an unencoded `/`, `?` or `#` is
    // hidden whole (the host is read after it).
    let (userinfo, rest) = match after.rfind('@') {
        Some(at) => (Some(&after[..at]), &after[at..]),
        None => (None, after),
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(auth_end);
    let authority = match userinfo.map(|u| u.split_once(':').map_or(u, |(user, _)| user)) {
        Some(user) if userinfo.is_some_and(|u| u.contains(':')) => format!("{user}:******{host}"),
        Some(user) => format!("{user}{host}"),
        None => host.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=******"),
                    _ => p.to_owned(),
                })
                .collect();
            let mut t = format!("{path}?{}", params.join("&"));
            if let Some(f) = fragment {
                t.push('#');
                t.push_str(f);
            }
            t
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

pub(crate) fn redact(url: &str) -> String {
    redact_url(url)
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn a_password_with_an_unencoded_slash_is_masked_whole() {
        assert_eq!(
            redact_url("postgresql://fg:pa/ss#x?y@db.internal:5432/fastgate"),
            "postgresql://fg:******@db.internal:5432/fastgate"
        );
    }

    #[test]
    fn masks_userinfo_and_password_parameters() {
        assert_eq!(
            redact_url("postgresql://fg:pw@h:5432/db?sslmode=disable&password=x2#f"),
            "postgresql://fg:******@h:5432/db?sslmode=disable&password=******#f"
        );
        assert_eq!(redact_url("http://u@h/p"), "http://u@h/p");
        assert_eq!(redact_url("sqlite:///./x.db"), "sqlite:///./x.db");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn file(url: &str) -> PathBuf {
        match parse_database_url(url).unwrap() {
            DatabaseUrl::Sqlite(SqliteLocation::File(p)) => p,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn sqlite_forms() {
        assert_eq!(
            file("sqlite:///./fastgate.db"),
            PathBuf::from("./fastgate.db")
        );
        assert_eq!(
            file("sqlite:////var/lib/fastgate/fastgate.db"),
            PathBuf::from("/var/lib/fastgate/fastgate.db")
        );
        assert_eq!(file("sqlite://fastgate.db"), PathBuf::from("fastgate.db"));
        assert_eq!(file("sqlite:fastgate.db"), PathBuf::from("fastgate.db"));
        assert_eq!(
            file("sqlite:///./data/x.db?mode=rwc"),
            PathBuf::from("./data/x.db")
        );
        assert_eq!(
            parse_database_url("sqlite::memory:").unwrap(),
            DatabaseUrl::Sqlite(SqliteLocation::Memory)
        );
        assert!(matches!(
            parse_database_url("sqlite:///"),
            Err(StoreError::InvalidUrl { .. })
        ));
        assert!(matches!(
            parse_database_url("sqlite:"),
            Err(StoreError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn postgres_forms_strip_driver() {
        for (input, want) in [
            ("postgres://u:p@h:5432/db", "postgresql://u:p@h:5432/db"),
            ("postgresql://u@h/db", "postgresql://u@h/db"),
            ("postgresql+asyncpg://u:p@h/db", "postgresql://u:p@h/db"),
            (
                "postgresql+psycopg2://u:p@h/db?sslmode=disable",
                "postgresql://u:p@h/db?sslmode=disable",
            ),
        ] {
            match parse_database_url(input).unwrap() {
                DatabaseUrl::Postgres(u) => assert_eq!(u.expose(), want),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn unsupported_schemes_name_the_accepted_ones_without_secrets() {
        for bad in [
            "mysql://root:hunter2@db/x",
            "hunter2",
            "http://x",
            "",
            "mysql+aiomysql://a:hunter2@h/d",
        ] {
            let err = parse_database_url(bad).unwrap_err();
            assert!(
                matches!(err, StoreError::UnsupportedUrl { .. }),
                "{bad}: {err:?}"
            );
            let msg = err.to_string();
            assert!(!msg.contains("hunter2"), "{msg}");
            assert!(
                msg.contains("sqlite:") && msg.contains("postgres://"),
                "{msg}"
            );
        }
    }

    #[test]
    fn password_is_redacted() {
        let url =
            parse_database_url("postgresql://fast:s3cr%3At@db.example:5432/fg?sslmode=require")
                .unwrap();
        for shown in [format!("{url}"), format!("{url:?}")] {
            assert!(!shown.contains("s3cr"), "{shown}");
            assert!(shown.contains("fast:******@db.example:5432/fg"), "{shown}");
        }
        assert_eq!(redact("postgresql://u@h/db"), "postgresql://u@h/db");
        assert_eq!(
            redact("postgresql://u:p@ss@h/db"),
            "postgresql://u:******@h/db"
        );
    }
}
