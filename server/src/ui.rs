//! The dashboard: `static/` embedded in the binary, served at `/admin/ui/`.

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Request, Response, handler};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../static/"]
struct Assets;

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
                   form-action 'self'";

/// Serve a dashboard file. Only names embedded at build time exist, so no path escapes `static/`.
#[handler]
pub fn serve_ui(req: &Request) -> Response {
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix("/admin/ui") else {
        return not_found();
    };
    // `/admin/ui` → `/admin/ui/`, keeping the query (`?token=`).
    if rest.is_empty() {
        return redirect(req, "/admin/ui/");
    }
    let name = rest.trim_start_matches('/');
    // `/admin/ui/keys/` → `/admin/ui/keys` (the page's relative asset URLs resolve from there).
    if let Some(page @ ("keys" | "logs")) = name.strip_suffix('/') {
        return redirect(req, &format!("/admin/ui/{page}"));
    }
    // M-FastGate's page URLs (`/admin/ui/keys`, `/admin/ui/logs`) open the dashboard on that tab.
    let name = match name {
        "" | "keys" | "logs" => "index.html",
        other => other,
    };
    if name
        .split('/')
        .any(|seg| seg == ".." || seg == "." || seg.is_empty())
        || name.contains('\\')
    {
        return not_found();
    }
    let Some(file) = Assets::get(name) else {
        return not_found();
    };
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let mut res = Response::builder()
        .content_type(mime.as_ref())
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header("x-frame-options", "DENY")
        .body(file.data.into_owned());
    let cache = if name == "index.html" {
        "no-store"
    } else {
        "public, max-age=300"
    };
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    res
}

/// A permanent redirect to `path`, with the request's query.
fn redirect(req: &Request, path: &str) -> Response {
    let target = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::LOCATION, target)
        .finish()
}

fn not_found() -> Response {
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .content_type("application/json")
        .body(fastgate_layer::error::error_body("not found", "not_found").to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_is_embedded() {
        assert!(
            Assets::get("index.html").is_some(),
            "static/index.html must exist"
        );
        assert!(Assets::get("../Cargo.toml").is_none());
    }
}
