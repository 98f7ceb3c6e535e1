//! The contract between layers: which request and response extensions each layer reads and writes.
//!
//! | extension | written by | read by |
//! |---|---|---|
//! | [`RouteConfig`] (request) | [`RouteLayer`](crate::route::RouteLayer), or the embedding application | auth (required permission), inject (upstream key), forward (backend) |
//! | [`PathSuffix`] (request, prefix routes only) | [`RouteLayer`](crate::route::RouteLayer), or the embedding application | forward (appended to the backend's path) |
//! | [`ClientAddr`] (request) | the embedding application (accept loop / poem middleware) | audit |
//! | [`KeyIdentity`] (request and response) | auth | inject (later: per-key policy), audit |
//! | [`Rejected`] (response) | any layer that answers on its own (route, limit, auth, forward) | audit |
//! | [`TargetUrl`] (response) | forward | audit |

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::secret::Secret;

/// Who is calling: the result of resolving a presented gateway key.
///
/// Nothing in it is secret: `key_id` is a public identifier that is safe to log and store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyIdentity {
    /// Public key id, safe to log (never the key itself).
    pub key_id: Arc<str>,
    /// The owner / tenant label of the key (`source_path` in M-FastGate).
    pub source_path: Arc<str>,
    /// Permissions granted to the key, e.g. `chat`.
    pub permissions: Arc<[String]>,
    /// When the key stops being valid; `None` means never.
    pub expires_at: Option<SystemTime>,
}

impl KeyIdentity {
    /// Whether the key grants `permission`. The permission `*` grants everything.
    pub fn allows(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission || p == "*")
    }

    /// Whether the key has expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The client's address, as seen by the accept loop. Inserted by the embedding application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Marks a response that a FastGate layer produced itself instead of the upstream.
///
/// Carries the stable error code (`invalid_api_key`, `upstream_timeout`, …), the outcome audit
/// should record and, when the wire status says nothing about the refusal, the HTTP status audit
/// should record instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Stable, low-cardinality error code, as in the JSON error body.
    pub code: &'static str,
    /// What audit should record for this request.
    pub outcome: crate::audit::Outcome,
    /// The status audit records instead of the response's; `None`: the response's. A gRPC
    /// refusal is HTTP 200 on the wire ([`grpc_rejection`](crate::error::grpc_rejection)), and
    /// records the status its JSON form would have had (401, 403, 503), so that status filters,
    /// metrics and the latency rules treat it as that refusal, and a client cannot make its 401s
    /// look like 200s in the audit log by calling itself gRPC.
    pub audit_status: Option<http::StatusCode>,
}

/// The full upstream URL a request was sent to (no credentials in it). Inserted by forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUrl(pub Arc<str>);

/// The part of the request path below a prefix route's prefix (`/models/gpt-4` of
/// `/proxy/openai/models/gpt-4` under `/proxy/openai/*`), which
/// [`ForwardService`](crate::forward::ForwardService) appends to the backend's path. Inserted by
/// [`RouteLayer`](crate::route::RouteLayer) for prefix matches only: a request without one is
/// forwarded to the backend's path as it is (an exact route).
///
/// It can only be built from a suffix that cannot leave the backend's path
/// ([`PathSuffix::new`]): empty (the prefix itself), or `/` followed by segments none of which is
/// `.` or `..`, empty (`//`; a single trailing `/` is kept), holds a `\` or ends, decoded, with
/// a `.`, a space or a Unicode dot (`...`, `..%20`, `%ef%bc%8e%ef%bc%8e`, `gpt-4.`: a `..` or
/// another path to some backends; see `is_dot_like`); no `;` anywhere, raw or as `%3B` (servlet
/// containers drop a `;x` path parameter: `embeddings;x` would be `embeddings`);
/// percent-escapes must be well formed, must not stand for a `/`, `\`, `%` (double encoding),
/// a control character or a character that needs no escaping (letters, digits, `-._~`: `%2e` is
/// a `.` to most backends, `%65` an `e`), and must decode to UTF-8 (no overlong `%c0%ae`).
///
/// ```
/// use fastgate_layer::PathSuffix;
///
/// assert_eq!(PathSuffix::new("/models/gpt-4").unwrap().as_str(), "/models/gpt-4");
/// assert!(PathSuffix::new("").is_ok() && PathSuffix::new("/files/").is_ok());
/// assert!(PathSuffix::new("/models/gpt-4.1").is_ok() && PathSuffix::new("/models/ft:gpt-4o:org:x:id").is_ok());
/// for bad in ["/../admin", "/a/%2e%2E/b", "/a%2fb", "/a\\b", "/a//b", "/%6dodels", "/%252e", "x",
///             "/embeddings;x", "/a%3Bb", "/.../x", "/..%20/x", "/%ef%bc%8e%ef%bc%8e/x", "/embeddings."] {
///     assert!(PathSuffix::new(bad).is_err(), "{bad}");
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathSuffix(Arc<str>);

impl PathSuffix {
    /// `suffix` if it cannot leave the path it is appended to (see the type's docs).
    pub fn new(suffix: &str) -> Result<Self, InvalidPathSuffix> {
        check_suffix(suffix)?;
        Ok(Self(suffix.into()))
    }

    /// The suffix: empty, or starting with `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why [`PathSuffix::new`] refused a suffix. The message is safe to send to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPathSuffix(&'static str);

fn check_suffix(suffix: &str) -> Result<(), InvalidPathSuffix> {
    let Some(rest) = suffix.strip_prefix('/') else {
        return if suffix.is_empty() {
            Ok(())
        } else {
            Err(InvalidPathSuffix("the path does not continue at a '/'"))
        };
    };
    // `embeddings;x` is `embeddings` to servlet containers (Tomcat drops a `;` path parameter):
    // another route's backend path under this route's permission, and `..;x` a `..`.
    if suffix.contains(';') {
        return Err(InvalidPathSuffix("the path holds a ';'"));
    }
    if suffix.contains('%') {
        check_escapes(suffix)?;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            return Err(InvalidPathSuffix("the path holds an empty segment (//)"));
        }
        if segment == "." || segment == ".." {
            return Err(InvalidPathSuffix("the path holds a '.' or '..' segment"));
        }
        if segment.contains('\\') {
            return Err(InvalidPathSuffix("the path holds a backslash"));
        }
        // A `.` or space at the end is dropped by Windows servers (`embeddings.` is
        // `embeddings` to IIS), and `...`, `..%20` or fullwidth dots are `..` to some.
        // The escapes are well formed by now (`%20`, `%ef%bc%8e` remain to decode).
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        if decoded.ends_with(is_dot_like) {
            return Err(InvalidPathSuffix(
                "the path holds a segment ending with a dot or a space",
            ));
        }
    }
    Ok(())
}

/// A character some backends take for a `.` (or `..`), or drop at the end of a segment: `.`,
/// a space, and the dots that Unicode compatibility normalisation (NFKC) turns into `.` or
/// `..`: fullwidth `．` (U+FF0E), small `﹒` (U+FE52), one and two dot leaders `․` `‥`
/// (U+2024, U+2025).
fn is_dot_like(c: char) -> bool {
    matches!(
        c,
        '.' | ' ' | '\u{FF0E}' | '\u{FE52}' | '\u{2024}' | '\u{2025}'
    )
}

/// Each `%` starts a well-formed escape of a byte that needs one, and the decoded suffix is UTF-8.
fn check_escapes(suffix: &str) -> Result<(), InvalidPathSuffix> {
    let bytes = suffix.as_bytes();
    let mut i = 0;
    while let Some(at) = memchr::memchr(b'%', &bytes[i..]) {
        let at = i + at;
        let hex = |b: u8| char::from(b).to_digit(16);
        let byte = match (bytes.get(at + 1), bytes.get(at + 2)) {
            (Some(&h), Some(&l)) => match (hex(h), hex(l)) {
                (Some(h), Some(l)) => (h * 16 + l) as u8,
                _ => {
                    return Err(InvalidPathSuffix(
                        "the path holds a malformed percent-escape",
                    ));
                }
            },
            _ => {
                return Err(InvalidPathSuffix(
                    "the path holds a malformed percent-escape",
                ));
            }
        };
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            return Err(InvalidPathSuffix(
                "the path percent-encodes a letter, digit or one of -._~ (send it as it is)",
            ));
        }
        if matches!(byte, b'/' | b'\\') {
            return Err(InvalidPathSuffix("the path holds an encoded '/' or '\\'"));
        }
        // `%252e` is `%2e` after one decoding: a `.` to a backend that decodes twice.
        if byte == b'%' {
            return Err(InvalidPathSuffix("the path holds an encoded '%'"));
        }
        if byte == b';' {
            return Err(InvalidPathSuffix("the path holds a ';'"));
        }
        if byte.is_ascii_control() {
            return Err(InvalidPathSuffix(
                "the path holds an encoded control character",
            ));
        }
        i = at + 3;
    }
    if percent_encoding::percent_decode_str(suffix)
        .decode_utf8()
        .is_err()
    {
        return Err(InvalidPathSuffix("the path does not decode to UTF-8"));
    }
    Ok(())
}

/// Per-route settings that the inner layers read from the request extensions.
///
/// One route today has one backend; the type is shaped so that a later version can hold several
/// (failover) without changing the layers that read the permission and the key.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// Route name, for logs and audit.
    pub name: Arc<str>,
    /// Permission a key needs to use this route (`chat` by default).
    pub permission: Arc<str>,
    /// The backend requests are forwarded to.
    pub backend: Arc<Backend>,
}

/// One upstream: where requests go, the credential to present, and timeouts.
///
/// Its `Debug` shows `base_url` without a user name or password (and `api_key` as a
/// [`Secret`]): a route table can be logged. Check a URL with [`Backend::parse_base_url`] when
/// the configuration is loaded; a `base_url` it refuses makes every request a 500 `bad_backend`.
#[derive(Clone)]
pub struct Backend {
    /// Scheme, authority and optional base path, e.g. `http://127.0.0.1:1030`.
    pub base_url: http::Uri,
    /// Path appended to `base_url`, e.g. `/miniai/v2/chat/completions`.
    pub path: String,
    /// The real upstream credential; `None` forwards without one.
    pub api_key: Option<Secret>,
    /// Header carrying the credential. `authorization` gets `Bearer <key>`; any other header gets the bare key.
    pub key_header: http::HeaderName,
    /// Time allowed to open a connection.
    pub connect_timeout: std::time::Duration,
    /// Time allowed until the response headers arrive. `Duration::MAX` (or any time too long
    /// for the clock) sets no limit in practice: the wait ends decades away.
    pub response_timeout: std::time::Duration,
    /// Longest silence allowed between two body chunks of the response (never a total timeout).
    /// `Duration::MAX` sets no limit in practice, as for `response_timeout`.
    pub idle_timeout: std::time::Duration,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("base_url", &redact_url(&self.base_url.to_string()))
            .field("path", &self.path)
            .field("api_key", &self.api_key)
            .field("key_header", &self.key_header)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl Backend {
    /// `url` as a `base_url`: `http://` or `https://`, a host, an optional base path, no query
    /// string (it would not be sent). The error shows the URL without its user name and
    /// password, so it can be logged.
    pub fn parse_base_url(url: &str) -> Result<http::Uri, BackendUrlError> {
        let shown = || redact_url(url);
        let uri: http::Uri = url.parse().map_err(|_| BackendUrlError::Invalid(shown()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(BackendUrlError::Scheme(shown()));
        }
        let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
            return Err(BackendUrlError::NoHost(shown()));
        };
        // `http://user:pa/ss@host/` parses as host `user`, a port that is not a number and the
        // path `/ss@host/`: a password with an unencoded `/`, `?` or `#`. Refused, so that no
        // part of it can reach a request, the audit record or a log line.
        let host_and_port = authority.as_str().rsplit('@').next().unwrap_or_default();
        let has_port_text = host_and_port
            .rsplit_once(']')
            .map_or(host_and_port, |(_, after)| after)
            .contains(':');
        if (has_port_text && authority.port_u16().is_none())
            || uri.path().contains('@')
            || url.contains('#')
        {
            return Err(BackendUrlError::Invalid(shown()));
        }
        if uri.query().is_some() {
            return Err(BackendUrlError::Query(shown()));
        }
        Ok(uri)
    }
}

/// Why a backend URL was refused by [`Backend::parse_base_url`]. Each variant holds the URL
/// without its user name and password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendUrlError {
    /// Not a URL.
    #[error("{0:?} is not a valid URL")]
    Invalid(String),
    /// Not `http://` or `https://`.
    #[error("{0:?} must start with http:// or https://")]
    Scheme(String),
    /// No host.
    #[error("{0:?} has no host")]
    NoHost(String),
    /// A query string, which would not be sent.
    #[error("{0:?} must not have a query string (it would not be sent to the backend)")]
    Query(String),
}

/// `url` with any `user:password@` before its host replaced by `***@`, and its query string by
/// `?***` (either may hold a credential). Everything up to the last `@` counts as the user
/// part: a password holding an unencoded `/` or `#` is hidden whole too.
pub(crate) fn redact_url(url: &str) -> String {
    let (head, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // An `@` after a `?`: a query value holding one, or a password holding a `?`. Either way
    // everything after the scheme may be secret.
    if let (Some(q), Some(at)) = (rest.find('?'), rest.rfind('@'))
        && q < at
    {
        return format!("{head}***");
    }
    let (user, rest) = match rest.rfind('@') {
        Some(at) => (true, &rest[at + 1..]),
        None => (false, rest),
    };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(host_end);
    let authority = if user {
        format!("***@{authority}")
    } else {
        authority.to_owned()
    };
    let tail = match tail.find('?') {
        Some(q) => format!("{}?***", &tail[..q]),
        None => tail.to_owned(),
    };
    format!("{head}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn backend(url: &str) -> Backend {
        Backend {
            base_url: url.parse().expect("test URL"),
            path: "/v1/chat/completions".into(),
            api_key: Some(Secret::new("sk-real-upstream-key")),
            key_header: http::header::AUTHORIZATION,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn debug_shows_neither_the_url_password_nor_the_key() {
        let shown = format!(
            "{:?}",
            backend("http://admin:hunter2-PASSWORD@127.0.0.1:9/base")
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("admin:"), "{shown}");
        assert!(!shown.contains("sk-real-upstream-key"), "{shown}");
        assert!(shown.contains("http://***@127.0.0.1:9/base"), "{shown}");
        let plain = format!("{:?}", backend("https://api.example.com:8443/v2"));
        assert!(plain.contains("https://api.example.com:8443/v2"), "{plain}");
    }

    #[test]
    fn base_urls_are_checked_without_showing_a_password() {
        assert!(Backend::parse_base_url("http://127.0.0.1:1030").is_ok());
        assert!(Backend::parse_base_url("https://u:p@host/base/").is_ok());
        let cases = [
            ("http://u:pa/ss-SECRET@host:1030/base", "not a valid URL"),
            ("http://u:pa#ss-SECRET@host/", "not a valid URL"),
            ("http://u:pa?ss-SECRET@host/", "not a valid URL"),
            ("127.0.0.1:1030", "must start with http"),
            ("ftp://u:pw-SECRET@host", "must start with http"),
            (
                "http://u:pw-SECRET@host:1030/?token=t-SECRET",
                "query string",
            ),
            ("http://u:pw-SECRET@host name/", "not a valid URL"),
        ];
        for (url, want) in cases {
            let err = Backend::parse_base_url(url).expect_err(url).to_string();
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains("SECRET"), "{url}: {err}");
        }
    }

    #[test]
    fn redact_url_keeps_everything_but_credentials() {
        assert_eq!(redact_url("http://h:1/p"), "http://h:1/p");
        assert_eq!(redact_url("http://a:b@h:1/p?q=1"), "http://***@h:1/p?***");
        assert_eq!(redact_url("a:b@h"), "***@h");
        // A password with an unencoded `/`: everything before the last `@` is hidden.
        assert_eq!(redact_url("http://u:pa/ss@h/p"), "http://***@h/p");
        // An `@` in a query value (the part after it was shown as the host).
        assert_eq!(redact_url("http://h/p?sig=abc@def"), "http://***");
        assert_eq!(redact_url("http://u:p?ss@h/p"), "http://***");
    }
}
