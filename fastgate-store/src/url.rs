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
///
/// Query parameters the driver (sqlx 0.8) does not know are removed when it is parsed, and
/// their names kept for [`ignored_parameters`](Self::ignored_parameters): sqlx would ignore them
/// too, but with a log line holding the value, which for a misspelled `?passwd=` is the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    url: String,
    ignored: Vec<String>,
}

impl PostgresUrl {
    /// The full URL, password included, for the driver only. Never log it.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The URL with the password (if any) replaced by `******`.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }

    /// The query parameters removed because the driver does not know them, as they may be
    /// shown: the name in backquotes (never a value), or a description when the name does not
    /// look like one. [`Store::connect`](crate::Store::connect) logs a warning for each.
    pub fn ignored_parameters(&self) -> &[String] {
        &self.ignored
    }
}

/// The query parameters sqlx-postgres 0.8 reads from a URL (`PgConnectOptions::parse_from_url`);
/// it logs any other one with its value, then ignores it. Names starting with `options[` are
/// known as well.
const SQLX_PG_PARAMETERS: [&str; 18] = [
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

fn sqlx_knows(key: &str) -> bool {
    SQLX_PG_PARAMETERS.contains(&key) || key.starts_with("options[")
}

/// `url` without the query parameters sqlx does not know, and how each removed one may be
/// named. Parsed as sqlx parses it (the `url` crate), so that no parameter sqlx would see is
/// missed; unchanged when nothing is removed or it does not parse (sqlx then refuses it too).
fn without_unknown_parameters(url: String) -> PostgresUrl {
    let unchanged = |url| PostgresUrl {
        url,
        ignored: Vec::new(),
    };
    let Ok(mut parsed) = ::url::Url::parse(&url) else {
        return unchanged(url);
    };
    let Some(query) = parsed.query() else {
        return unchanged(url);
    };
    let mut kept: Vec<&str> = Vec::new();
    let mut ignored = Vec::new();
    // As `Url::query_pairs` (what sqlx iterates) splits and decodes them.
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let Some((key, _)) = ::url::form_urlencoded::parse(piece.as_bytes()).next() else {
            continue;
        };
        if sqlx_knows(&key) {
            kept.push(piece);
        } else {
            ignored.push(shown_parameter(&key, piece.contains('=')));
        }
    }
    if ignored.is_empty() {
        return unchanged(url);
    }
    let kept = kept.join("&");
    parsed.set_query((!kept.is_empty()).then_some(kept.as_str()));
    PostgresUrl {
        url: parsed.into(),
        ignored,
    }
}

/// How an unknown query parameter may be named in a log line: its name when it has the shape
/// of one (a `name=value` pair, a short name of letters, digits, `_`, `-`, `.`), else a
/// description (a bare `?word` may be a pasted secret).
fn shown_parameter(key: &str, has_value: bool) -> String {
    let name_like = has_value
        && !key.is_empty()
        && key.len() <= 40
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !name_like {
        return "a query parameter that is not of the form name=value".to_owned();
    }
    let lower = key.to_ascii_lowercase();
    if lower.contains("pass") || lower.contains("pwd") {
        format!("`{key}` (a misspelled `password`?)")
    } else {
        format!("`{key}`")
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
            Ok(DatabaseUrl::Postgres(without_unknown_parameters(format!(
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

/// `url` with its secrets replaced by `******`: the password of a `user:password@` authority, a
/// lone user name (`https://TOKEN@host`, the way a token is put in a URL; in a `postgres://` URL
/// the user name is a role and stays), and the value of every query parameter whose name
/// (percent-decoded, in any case) contains `pass` or `pwd` (`password=`, which sqlx's PostgreSQL
/// driver accepts, and misspellings such as `passwd=` or `pwd=`).
pub fn redact_url(url: &str) -> String {
    let Some(sep) = url.find("://") else {
        return url.to_owned();
    };
    let scheme = &url[..sep];
    let base = sep + 3;
    let after = &url[base..];
    // Two readings of where the user part ends, and whatever is a secret in either is masked:
    // at the last `@` (a password holding an unencoded `/`, `?` or `#` is hidden whole), and at
    // the last `@` before the first `/`, `?` or `#` (the URL standard's reading, sqlx's: an `@`
    // inside a query value such as `?password=a@b` belongs to that value).
    let standard_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let mut secret: Vec<(usize, usize)> = Vec::new();
    for at in [after.rfind('@'), after[..standard_end].rfind('@')]
        .into_iter()
        .flatten()
    {
        let userinfo = &after[..at];
        match userinfo.find(':') {
            Some(colon) => secret.push((base + colon + 1, base + at)),
            None if is_postgres_scheme(scheme) => {}
            None => secret.push((base, base + at)),
        }
        // The query of what follows this reading's host.
        let rest = &after[at..];
        let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(q) = rest[host_end..].find('?') {
            password_values(url, base + at + host_end + q + 1, &mut secret);
        }
    }
    if let Some(q) = after.find('?') {
        password_values(url, base + q + 1, &mut secret);
    }
    secret.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(secret.len());
    for (from, to) in secret {
        match merged.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(to),
            _ => merged.push((from, to)),
        }
    }
    let mut out = String::with_capacity(url.len());
    let mut pos = 0;
    for (from, to) in merged {
        out.push_str(&url[pos..from]);
        out.push_str("******");
        pos = to;
    }
    out.push_str(&url[pos..]);
    out
}

/// The byte ranges of `url` holding the values of password-like parameters of the query that
/// starts at `query` (up to a `#`).
fn password_values(url: &str, query: usize, secret: &mut Vec<(usize, usize)>) {
    let q = &url[query..];
    let q = &q[..q.find('#').unwrap_or(q.len())];
    let mut at = query;
    for param in q.split('&') {
        if let Some((k, v)) = param.split_once('=')
            && names_a_password(k)
            && !v.is_empty()
        {
            let from = at + k.len() + 1;
            secret.push((from, from + v.len()));
        }
        at += param.len() + 1;
    }
}

/// `postgres`, `postgresql` or `postgresql+driver`, in any case.
fn is_postgres_scheme(scheme: &str) -> bool {
    let base = scheme.split_once('+').map_or(scheme, |(b, _)| b);
    base.eq_ignore_ascii_case("postgres") || base.eq_ignore_ascii_case("postgresql")
}

/// Whether a query parameter's name (percent-encoded or not) suggests a password.
fn names_a_password(raw: &str) -> bool {
    let name = ::url::form_urlencoded::parse(raw.as_bytes())
        .next()
        .map(|(k, _)| k.to_lowercase())
        .unwrap_or_default();
    let raw = raw.to_ascii_lowercase();
    [name.as_str(), raw.as_str()]
        .iter()
        .any(|n| n.contains("pass") || n.contains("pwd"))
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
        assert_eq!(redact_url("sqlite:///./x.db"), "sqlite:///./x.db");
    }

    #[test]
    fn a_lone_user_name_is_masked_except_a_postgres_role() {
        assert_eq!(redact_url("http://u@h/p"), "http://******@h/p");
        assert_eq!(
            redact_url("https://ghp_TOKEN123@backend.example:8443/v1"),
            "https://******@backend.example:8443/v1"
        );
        assert_eq!(redact_url("postgresql://fg@h/db"), "postgresql://fg@h/db");
        assert_eq!(redact_url("postgres://fg@h/db"), "postgres://fg@h/db");
    }

    #[test]
    fn an_at_sign_in_a_password_parameter_does_not_end_the_user_part() {
        // sqlx reads `password=Tr0ub4dor@horse`; the `@` is legal in a query value.
        for (url, want) in [
            (
                "postgresql://fg@db.internal/fastgate?password=Tr0ub4dor@horse",
                "postgresql://fg@db.internal/fastgate?password=******",
            ),
            (
                "postgresql://postgres@127.0.0.1/db?port=55432&password=Tr0ub4dor@horse",
                "postgresql://postgres@127.0.0.1/db?port=55432&password=******",
            ),
            // With a port, the last-`@` reading takes `5432/db?password=a` for a password:
            // both readings' secrets are hidden.
            (
                "postgresql://postgres@127.0.0.1:5432/db?password=a@b",
                "postgresql://postgres@127.0.0.1:******",
            ),
            // Outside PostgreSQL a lone user name is masked too (a token): the last-`@`
            // reading hides everything before the `@`.
            ("http://h/p?token=x&pass=a@b", "http://******"),
        ] {
            let shown = redact_url(url);
            assert_eq!(shown, want, "{url}");
            assert!(
                !shown.contains("Tr0ub") && !shown.contains("horse"),
                "{shown}"
            );
        }
    }

    #[test]
    fn misspelled_password_parameters_are_masked() {
        for (url, want) in [
            (
                "postgresql://u@h/db?passwd=s3cr3t",
                "postgresql://u@h/db?passwd=******",
            ),
            (
                "postgresql://u@h/db?pwd=s3cr3t&x=1",
                "postgresql://u@h/db?pwd=******&x=1",
            ),
            (
                "postgresql://u@h/db?Password=s3cr3t",
                "postgresql://u@h/db?Password=******",
            ),
            (
                "postgresql://u@h/db?PASS=s3cr3t",
                "postgresql://u@h/db?PASS=******",
            ),
            (
                "postgresql://u@h/db?db_pass=s3cr3t",
                "postgresql://u@h/db?db_pass=******",
            ),
            (
                "postgresql://u@h/db?sslpassword=s3cr3t",
                "postgresql://u@h/db?sslpassword=******",
            ),
            (
                "postgresql://u@h/db?p%61sswd=s3cr3t",
                "postgresql://u@h/db?p%61sswd=******",
            ),
            (
                "postgresql://u@h/db?sslmode=require",
                "postgresql://u@h/db?sslmode=require",
            ),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
        }
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

    fn postgres(url: &str) -> PostgresUrl {
        match parse_database_url(url).unwrap() {
            DatabaseUrl::Postgres(u) => u,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// sqlx logs a parameter it does not know with its value (`ignoring unrecognized connect
    /// parameter key=passwd value=…`): such parameters are removed before it sees the URL, and
    /// named (never with their value) for a warning.
    #[test]
    fn parameters_sqlx_does_not_know_are_removed_and_named_without_their_value() {
        let u = postgres(
            "postgresql://fg@db:5432/fastgate?sslmode=require&passwd=s3cr3t&application_name=fg&connect_timeout=10",
        );
        assert_eq!(
            u.expose(),
            "postgresql://fg@db:5432/fastgate?sslmode=require&application_name=fg"
        );
        assert_eq!(
            u.ignored_parameters(),
            ["`passwd` (a misspelled `password`?)", "`connect_timeout`"]
        );
        for shown in [format!("{u}"), format!("{u:?}")] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
        // Decoded as sqlx decodes them: an encoded name is still found.
        let u = postgres("postgresql://fg@db/fastgate?p%77d=s3cr3t");
        assert_eq!(u.expose(), "postgresql://fg@db/fastgate");
        assert_eq!(u.ignored_parameters(), ["`pwd` (a misspelled `password`?)"]);
        // A bare word is not named: it may be a pasted secret.
        let u = postgres("postgresql://fg@db/fastgate?s3cr3t&sslmode=disable");
        assert_eq!(u.expose(), "postgresql://fg@db/fastgate?sslmode=disable");
        assert!(!u.ignored_parameters()[0].contains("s3cr3t"));
        // What sqlx knows stays as it was written, `options[…]` included.
        for url in [
            "postgresql://fg:pw@db/fastgate?password=x&user=u&dbname=d&host=h&port=1&hostaddr=127.0.0.1",
            "postgresql://fg@db/fastgate?sslrootcert=/ca.pem&ssl-mode=require&statement-cache-capacity=10&options[search_path]=fg&options=-c%20x%3D1",
            "postgresql://fg@db/fastgate",
        ] {
            let u = postgres(url);
            assert_eq!(u.expose(), url);
            assert!(u.ignored_parameters().is_empty(), "{url}");
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
