//! OpenAI-shaped JSON error responses: `{"error":{"message","type","code"}}`, and their gRPC form
//! for gRPC callers ([`is_grpc`], [`grpc_rejection`]).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Boxed error used where a trait object cannot be avoided.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    res.extensions_mut()
        .insert(crate::extensions::Rejected { code, outcome });
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

/// Bytes of a `grpc-message` value that are percent-encoded: controls and `%` (and, through
/// [`utf8_percent_encode`](percent_encoding::utf8_percent_encode), every non-ASCII byte), as the
/// gRPC-over-HTTP/2 protocol asks.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// A refusal in gRPC's form, marked with [`Rejected`](crate::Rejected) like [`rejection`]: a
/// *Trailers-Only* response (HTTP 200, `content-type: application/grpc`, `grpc-status`,
/// `grpc-message`, no body), which every gRPC client reads as the call's status. A JSON body
/// with an HTTP error status is not: tonic reads the JSON as a gRPC frame and reports `INTERNAL`
/// ("invalid compression flag").
///
/// `grpc_status` is the numeric gRPC code (16 `UNAUTHENTICATED`, 7 `PERMISSION_DENIED`, 14
/// `UNAVAILABLE`, …); `code` is FastGate's error code, for the audit record.
pub fn grpc_rejection<B: From<Bytes>>(
    grpc_status: u8,
    code: &'static str,
    message: &str,
    outcome: crate::audit::Outcome,
) -> Response<B> {
    let mut res = Response::new(B::from(Bytes::new()));
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(u16::from(grpc_status)));
    let encoded = percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE).to_string();
    if let Ok(value) = HeaderValue::try_from(encoded) {
        headers.insert("grpc-message", value);
    }
    res.extensions_mut()
        .insert(crate::extensions::Rejected { code, outcome });
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Outcome;
    use crate::extensions::Rejected;
    use http_body_util::{BodyExt, Full};

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

    #[tokio::test]
    async fn grpc_rejection_is_trailers_only() {
        let res: Response<Full<Bytes>> =
            grpc_rejection(16, "invalid_api_key", "bad\tkey: 100% é", Outcome::Rejected);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(res.headers()["grpc-status"], "16");
        assert_eq!(res.headers()["grpc-message"], "bad%09key: 100%25 %C3%A9");
        assert_eq!(
            res.extensions().get::<Rejected>(),
            Some(&Rejected {
                code: "invalid_api_key",
                outcome: Outcome::Rejected
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
