//! OpenAI-shaped JSON error responses: `{"error":{"message","type","code"}}`.

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
