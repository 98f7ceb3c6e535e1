//! OpenAI-shaped JSON error responses: `{"error":{"message","type","code"}}`, and their gRPC form
//! for gRPC callers ([`is_grpc`], [`grpc_rejection`]).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Boxed error used where a trait object cannot be avoided.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error and its sources, for logs: `database error: error returned from database: attempt to
/// write a readonly database` where the error alone says `database error`, and hyper-util's
/// "client error (Connect)" alone does not say whether DNS, TLS or the proxy failed. A source
/// whose text is already shown is skipped (drivers often repeat their source in their own
/// message). For logs only: a source may name files, hosts or roles.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        let mut source = self.0.source();
        while let Some(err) = source {
            let text = err.to_string();
            if !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            source = err.source();
        }
        // A wrapper whose text repeats its inner error's prefix ("error with configuration:
        // error with configuration: unknown value …"): each part once.
        let mut last = None;
        for (i, part) in shown.split(": ").enumerate() {
            if last == Some(part) {
                continue;
            }
            if i > 0 {
                f.write_str(": ")?;
            }
            f.write_str(part)?;
            last = Some(part);
        }
        Ok(())
    }
}

/// The `type` field of errors FastGate produces itself.
pub const ERROR_TYPE: &str = "fastgate_error";

/// Serialize an OpenAI-shaped error body. `message` must never contain a secret.
pub fn error_body(message: &str, code: &str) -> Bytes {
    let body = serde_json::json!({
        "error": { "message": message, "type": ERROR_TYPE, "code": code }
    });
    Bytes::from(body.to_string())
}

/// Build a JSON error response with an OpenAI-shaped body.
pub fn json_error<B: From<Bytes>>(status: StatusCode, code: &str, message: &str) -> Response<B> {
    let mut res = Response::new(B::from(error_body(message, code)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// A JSON error response that FastGate produced itself, marked with [`Rejected`](crate::Rejected)
/// so that audit records `code` and `outcome`.
pub fn rejection<B: From<Bytes>>(
    status: StatusCode,
    code: &'static str,
    message: &str,
    outcome: crate::audit::Outcome,
) -> Response<B> {
    let mut res = json_error(status, code, message);
    res.extensions_mut().insert(crate::extensions::Rejected {
        code,
        outcome,
        audit_status: None,
    });
    res
}

/// Whether `headers` describe a gRPC request: a `Content-Type` of `application/grpc`, with or
/// without a suffix (`+proto`, `+json`, `-web`, `-web-text`), matched case-insensitively.
///
/// ```
/// use fastgate_layer::error::is_grpc;
/// use http::HeaderMap;
///
/// let mut headers = HeaderMap::new();
/// assert!(!is_grpc(&headers));
/// headers.insert("content-type", "application/grpc+proto".parse().unwrap());
/// assert!(is_grpc(&headers));
/// headers.insert("content-type", "application/json".parse().unwrap());
/// assert!(!is_grpc(&headers));
/// ```
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    value.len() >= GRPC.len()
        && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(value.get(GRPC.len()), None | Some(b'+' | b'-' | b';'))
}

/// The media type of a gRPC refusal: the request's own gRPC media type, normalised, so that a
/// client finds the family and codec it spoke (gRPC-Web clients, connect-es and grpc-web, fail a
/// call whose response has another media type: "unexpected response content type").
///
/// Only built by [`of`](Self::of) from a request whose `Content-Type` [`is_grpc`], or as the
/// [`Default`] `application/grpc`; it never holds anything else. Normalised: lower case,
/// parameters (`; charset=…`) and whitespace dropped. The family is kept (`application/grpc`,
/// `application/grpc-web`, `application/grpc-web-text`), and so is a codec suffix made of
/// 1 to 32 letters, digits, `-`, `_` or `.` (`+proto`, `+json`, a custom codec's name). A
/// suffix outside that is dropped (the bare family answers); a family outside those three
/// (`application/grpc-foo`) answers `application/grpc`.
///
/// ```
/// use fastgate_layer::error::GrpcContentType;
/// use http::HeaderMap;
///
/// let of = |ct: &str| {
///     let mut headers = HeaderMap::new();
///     headers.insert("content-type", ct.parse().unwrap());
///     GrpcContentType::of(&headers).map(|t| t.as_str().to_owned())
/// };
/// assert_eq!(of("application/grpc").as_deref(), Some("application/grpc"));
/// assert_eq!(
///     of("Application/GRPC-Web+Proto; charset=utf-8").as_deref(),
///     Some("application/grpc-web+proto")
/// );
/// assert_eq!(of("application/grpc-web-text").as_deref(), Some("application/grpc-web-text"));
/// assert_eq!(of("application/json"), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcContentType(HeaderValue);

impl Default for GrpcContentType {
    fn default() -> Self {
        Self(HeaderValue::from_static("application/grpc"))
    }
}

impl GrpcContentType {
    /// The normalised gRPC media type of `headers`' `Content-Type`; `None` when it is not a
    /// gRPC one (see [`is_grpc`]).
    pub fn of(headers: &http::HeaderMap) -> Option<Self> {
        if !is_grpc(headers) {
            return None;
        }
        let value = headers.get(header::CONTENT_TYPE)?.as_bytes();
        // The media type without its parameters; `is_grpc` has checked the prefix.
        let essence = value
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let rest = essence.get(b"application/grpc".len()..).unwrap_or_default();
        let Some((family, suffix)) = split_family(rest) else {
            return Some(Self::default());
        };
        let codec = suffix.strip_prefix(b"+").filter(|codec| {
            (1..=32).contains(&codec.len())
                && codec
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
        let known = |codec: &[u8]| match (family, codec) {
            ("", b"proto") => Some("application/grpc+proto"),
            ("", b"json") => Some("application/grpc+json"),
            ("-web", b"proto") => Some("application/grpc-web+proto"),
            ("-web", b"json") => Some("application/grpc-web+json"),
            ("-web-text", b"proto") => Some("application/grpc-web-text+proto"),
            ("-web-text", b"json") => Some("application/grpc-web-text+json"),
            _ => None,
        };
        let value = match codec.map(<[u8]>::to_ascii_lowercase) {
            None => HeaderValue::from_static(match family {
                "-web" => "application/grpc-web",
                "-web-text" => "application/grpc-web-text",
                _ => "application/grpc",
            }),
            Some(codec) => match known(&codec) {
                Some(known) => HeaderValue::from_static(known),
                // Letters, digits, `-`, `_` and `.` only: a valid header value.
                None => HeaderValue::try_from(format!(
                    "application/grpc{family}+{}",
                    String::from_utf8_lossy(&codec)
                ))
                .ok()?,
            },
        };
        Some(Self(value))
    }

    /// The media type, e.g. `application/grpc-web+proto`.
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("application/grpc")
    }
}

/// `rest` (what follows `application/grpc`) as its family (`""`, `"-web"`, `"-web-text"`) and
/// what follows the family; `None` for another family.
fn split_family(rest: &[u8]) -> Option<(&'static str, &[u8])> {
    let after = |prefix: &[u8]| {
        rest.get(..prefix.len())
            .filter(|head| head.eq_ignore_ascii_case(prefix))
            .map(|_| &rest[prefix.len()..])
            .filter(|tail| tail.is_empty() || tail.starts_with(b"+"))
    };
    if let Some(tail) = after(b"-web-text") {
        Some(("-web-text", tail))
    } else if let Some(tail) = after(b"-web") {
        Some(("-web", tail))
    } else if rest.is_empty() || rest.starts_with(b"+") {
        Some(("", rest))
    } else {
        None
    }
}

/// Bytes of a `grpc-message` value that are percent-encoded: controls and `%` (and, through
/// [`utf8_percent_encode`](percent_encoding::utf8_percent_encode), every non-ASCII byte), as the
/// gRPC-over-HTTP/2 protocol asks.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// A refusal in gRPC's form, marked with [`Rejected`](crate::Rejected) like [`rejection`]: a
/// *Trailers-Only* response (HTTP 200, `content-type` the request's own gRPC media type,
/// `grpc-status`, `grpc-message`, no body), which every gRPC client reads as the call's status
/// (gRPC-Web clients too: in gRPC-Web, a Trailers-Only response carries them as headers). A JSON
/// body with an HTTP error status is not: tonic reads the JSON as a gRPC frame and reports
/// `INTERNAL` ("invalid compression flag").
///
/// `content_type` is the request's [`GrpcContentType`]; `grpc_status` is the numeric gRPC code
/// (16 `UNAUTHENTICATED`, 7 `PERMISSION_DENIED`, 14 `UNAVAILABLE`, …); `status` is the HTTP status
/// the JSON form of this refusal has (401, 403, 503, …), which the audit record shows instead of
/// the wire's 200 ([`Rejected::audit_status`](crate::Rejected::audit_status)); `code` is
/// FastGate's error code, for the audit record.
pub fn grpc_rejection<B: From<Bytes>>(
    content_type: &GrpcContentType,
    grpc_status: u8,
    status: StatusCode,
    code: &'static str,
    message: &str,
    outcome: crate::audit::Outcome,
) -> Response<B> {
    let mut res = Response::new(B::from(Bytes::new()));
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type.0.clone());
    headers.insert("grpc-status", HeaderValue::from(u16::from(grpc_status)));
    let encoded = percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE).to_string();
    if let Ok(value) = HeaderValue::try_from(encoded) {
        headers.insert("grpc-message", value);
    }
    res.extensions_mut().insert(crate::extensions::Rejected {
        code,
        outcome,
        audit_status: Some(status),
    });
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Outcome;
    use crate::extensions::Rejected;
    use http_body_util::{BodyExt, Full};

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Text(&'static str, #[source] Option<Box<Text>>);

    #[test]
    fn error_chains_show_each_cause_once() {
        let chain = |e: &Text| ErrorChain(e).to_string();
        let inner = Text("attempt to write a readonly database", None);
        let outer = Text("audit write failed", Some(Box::new(inner)));
        assert_eq!(
            chain(&outer),
            "audit write failed: attempt to write a readonly database"
        );
        // A cause already in its parent's text, and a wrapper repeating its own prefix.
        let inner = Text("role \"u\" does not exist", None);
        let outer = Text("role \"u\" does not exist", Some(Box::new(inner)));
        assert_eq!(chain(&outer), "role \"u\" does not exist");
        let e = Text(
            "error with configuration: error with configuration: bad ssl_mode",
            None,
        );
        assert_eq!(chain(&e), "error with configuration: bad ssl_mode");
    }

    #[test]
    fn grpc_content_types() {
        let grpc = |ct: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            is_grpc(&headers)
        };
        for ct in [
            "application/grpc",
            "Application/GRPC",
            "application/grpc+proto",
            "application/grpc-web",
            "application/grpc-web-text+proto",
            "application/grpc; charset=utf-8",
        ] {
            assert!(grpc(ct), "{ct}");
        }
        for ct in [
            "application/json",
            "application/grpcx",
            "application/grp",
            "text/plain",
            "",
        ] {
            assert!(!grpc(ct), "{ct}");
        }
    }

    fn grpc_type(ct: &[u8]) -> Option<String> {
        let mut headers = http::HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_bytes(ct).unwrap());
        GrpcContentType::of(&headers).map(|t| t.as_str().to_owned())
    }

    #[test]
    fn grpc_refusals_answer_in_the_request_s_media_type() {
        for (ct, want) in [
            ("application/grpc", "application/grpc"),
            ("application/grpc+proto", "application/grpc+proto"),
            ("application/grpc+json", "application/grpc+json"),
            ("application/grpc-web", "application/grpc-web"),
            ("application/grpc-web+proto", "application/grpc-web+proto"),
            ("application/grpc-web+json", "application/grpc-web+json"),
            ("application/grpc-web-text", "application/grpc-web-text"),
            (
                "application/grpc-web-text+proto",
                "application/grpc-web-text+proto",
            ),
            // Normalised: lower case, no parameters, no whitespace.
            ("Application/GRPC-Web+PROTO", "application/grpc-web+proto"),
            (
                "application/grpc-web+json; charset=utf-8",
                "application/grpc-web+json",
            ),
            (
                "application/grpc-web ; charset=utf-8",
                "application/grpc-web",
            ),
            ("application/grpc;a=b+json", "application/grpc"),
            // A custom codec's name is kept.
            ("application/grpc+Thrift", "application/grpc+thrift"),
            (
                "application/grpc-web+my-codec.v2",
                "application/grpc-web+my-codec.v2",
            ),
            // A suffix that is not a codec name: the bare family.
            ("application/grpc+", "application/grpc"),
            ("application/grpc-web+a\"b", "application/grpc-web"),
            ("application/grpc-web+proto+json", "application/grpc-web"),
            (
                "application/grpc-web-text+<script>",
                "application/grpc-web-text",
            ),
            (
                "application/grpc+aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "application/grpc",
            ),
            // Another family, still a gRPC call for `is_grpc`: never echoed.
            ("application/grpc-webx", "application/grpc"),
            ("application/grpc-web-textx+proto", "application/grpc"),
            ("application/grpc-evil+proto", "application/grpc"),
        ] {
            assert_eq!(grpc_type(ct.as_bytes()).as_deref(), Some(want), "{ct}");
        }
        // A codec with bytes that are not ASCII is not echoed either.
        assert_eq!(
            grpc_type(b"application/grpc-web+\xe9t\xe9").as_deref(),
            Some("application/grpc-web")
        );
        for ct in ["application/json", "application/grpcx", "text/plain", ""] {
            assert_eq!(grpc_type(ct.as_bytes()), None, "{ct}");
        }
        assert_eq!(
            GrpcContentType::of(&http::HeaderMap::new()),
            None,
            "no content-type"
        );
        assert_eq!(GrpcContentType::default().as_str(), "application/grpc");
    }

    #[tokio::test]
    async fn grpc_rejection_is_trailers_only() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/grpc-web+proto".parse().unwrap(),
        );
        let content_type = GrpcContentType::of(&headers).unwrap();
        let res: Response<Full<Bytes>> = grpc_rejection(
            &content_type,
            16,
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "bad\tkey: 100% é",
            Outcome::Rejected,
        );
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/grpc-web+proto"
        );
        assert_eq!(res.headers()["grpc-status"], "16");
        assert_eq!(res.headers()["grpc-message"], "bad%09key: 100%25 %C3%A9");
        assert_eq!(
            res.extensions().get::<Rejected>(),
            Some(&Rejected {
                code: "invalid_api_key",
                outcome: Outcome::Rejected,
                audit_status: Some(StatusCode::UNAUTHORIZED),
            })
        );
        assert!(
            res.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
    }
}
