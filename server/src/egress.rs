//! `api_gateway.trust_env`: an egress proxy for `https://` backends from the environment
//! (`HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`), as M-FastGate's HTTP client (httpx) took it.
//!
//! Values are never shown: a proxy URL may hold a password. Messages name the variable.

use std::collections::HashMap;

use fastgate_layer::RouteConfig;
use fastgate_layer::forward::{Matcher, is_loopback_host};

/// A config key and what is wrong with it.
pub type EgressError = (&'static str, String);

/// The first of `names` that is set and not blank, with its name (lower-case names come first,
/// as in Python's `urllib`, which httpx uses).
fn first(
    env: &dyn Fn(&str) -> Option<String>,
    names: &[&'static str],
) -> Option<(&'static str, String)> {
    names
        .iter()
        .find_map(|n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (*n, v)))
}

/// Check the proxy URL in `name`: one FastGate can use (`http://`, or no scheme, which means
/// `http://`). The value itself is never shown.
fn check_proxy(name: &'static str, value: &str) -> Result<(), EgressError> {
    const KEY: &str = "api_gateway.trust_env";
    let unset = "; set api_gateway.trust_env: false to ignore the proxy variables";
    if value.matches('@').count() > 1 {
        return Err((
            KEY,
            format!(
                "{name}: the proxy URL has more than one '@'; write an '@' in the user name or password as %40{unset}"
            ),
        ));
    }
    // What hyper-util's rules make of the value is what would be used: ask them.
    let probe = Matcher::builder().https(value).build();
    let Some(intercept) = probe.intercept(&http::Uri::from_static("https://example.invalid/"))
    else {
        return Err((
            KEY,
            format!("{name} is set but is not a proxy URL FastGate can read{unset}"),
        ));
    };
    let scheme = intercept
        .uri()
        .scheme_str()
        .unwrap_or("")
        .to_ascii_lowercase();
    if scheme != "http" {
        return Err((
            KEY,
            format!(
                "{name} names a {scheme}:// proxy; FastGate reaches https:// backends only through http:// proxies (CONNECT). Point {name} at an http:// proxy{unset}"
            ),
        ));
    }
    Ok(())
}

/// The proxy rules for `https://` backends, or `None` when no proxy variable applies; and
/// warnings (plain `http://` backends the variables would have proxied are connected directly).
pub fn rules(
    trust_env: bool,
    env: &dyn Fn(&str) -> Option<String>,
    routes: &HashMap<String, RouteConfig>,
) -> Result<(Option<Matcher>, Vec<String>), EgressError> {
    if !trust_env {
        return Ok((None, Vec::new()));
    }
    let https = first(env, &["https_proxy", "HTTPS_PROXY"]);
    let all = first(env, &["all_proxy", "ALL_PROXY"]);
    let http = first(env, &["http_proxy", "HTTP_PROXY"]);
    let no = first(env, &["no_proxy", "NO_PROXY"]).map(|(_, v)| v);
    // `NO_PROXY=*`: no proxy for any host (curl, httpx).
    if no
        .as_deref()
        .is_some_and(|n| n.split(',').any(|h| h.trim() == "*"))
    {
        return Ok((None, Vec::new()));
    }
    let mut warnings = Vec::new();

    // What the variables would do for plain http:// backends: FastGate connects those directly.
    if let Some((name, value)) = http.as_ref().or(all.as_ref()) {
        let mut b = Matcher::builder().http(value.as_str());
        if let Some(no) = &no {
            b = b.no(no.as_str());
        }
        let for_http = b.build();
        let mut names: Vec<&str> = routes
            .values()
            .filter(|r| {
                let uri = &r.backend.base_url;
                uri.scheme_str() == Some("http")
                    && !is_loopback_host(uri.host().unwrap_or("localhost"))
                    && for_http.intercept(uri).is_some()
            })
            .map(|r| &*r.name)
            .collect();
        names.sort_unstable();
        names.dedup();
        if !names.is_empty() {
            warnings.push(format!(
                "{name} is set, but plain http:// backends are connected directly, not through a proxy (M-FastGate sent them through it): route(s) {}. Add them to NO_PROXY to silence this, or use https://",
                names.join(", ")
            ));
        }
    }

    let Some((name, value)) = https.or(all) else {
        return Ok((None, warnings));
    };
    let value = value.trim();
    if let Err((key, message)) = check_proxy(name, value) {
        // Unusable, but only an error when an https:// route could need it (an unrelated SOCKS
        // ALL_PROXY must not stop a gateway with plain http:// backends).
        let needed = routes.values().any(|r| {
            let uri = &r.backend.base_url;
            uri.scheme_str() == Some("https")
                && !is_loopback_host(uri.host().unwrap_or("localhost"))
        });
        if needed {
            return Err((key, message));
        }
        warnings.push(format!(
            "{message} (ignored: no https:// route would use it)"
        ));
        return Ok((None, warnings));
    }
    let mut b = Matcher::builder().https(value);
    if let Some(no) = &no {
        b = b.no(no.as_str());
    }
    Ok((Some(b.build()), warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use fastgate_layer::Backend;

    fn routes(urls: &[(&str, &str)]) -> HashMap<String, RouteConfig> {
        urls.iter()
            .map(|(name, url)| {
                (
                    format!("/proxy/{name}"),
                    RouteConfig {
                        name: (*name).into(),
                        permission: "chat".into(),
                        backend: Arc::new(Backend {
                            base_url: url.parse().unwrap(),
                            path: "/v1/chat/completions".into(),
                            api_key: None,
                            key_header: http::header::AUTHORIZATION,
                            connect_timeout: Duration::from_secs(1),
                            response_timeout: Duration::from_secs(1),
                            idle_timeout: Duration::from_secs(1),
                        }),
                    },
                )
            })
            .collect()
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn https_proxy_applies_to_https_hosts_except_no_proxy_and_loopback() {
        let vars = env(&[
            ("HTTPS_PROXY", "http://user:pw@proxy.corp:3128"),
            ("NO_PROXY", "internal.corp,10.0.0.0/8"),
        ]);
        let (rules, warnings) = rules(true, &vars, &routes(&[])).unwrap();
        let rules = rules.unwrap();
        assert!(warnings.is_empty());
        let via = |u: &str| fastgate_layer::forward::egress_proxy_host(&rules, &u.parse().unwrap());
        assert_eq!(
            via("https://api.openai.com/v1").as_deref(),
            Some("proxy.corp")
        );
        assert_eq!(via("https://llm.internal.corp/v1"), None);
        assert_eq!(via("https://10.1.2.3/v1"), None);
        assert_eq!(via("https://127.0.0.1:8443/v1"), None);
        assert_eq!(via("https://localhost/v1"), None);
        assert_eq!(via("http://api.example.com/v1"), None);
    }

    #[test]
    fn off_unsupported_schemes_and_plain_http_backends() {
        let vars = env(&[("HTTPS_PROXY", "http://proxy.corp:3128")]);
        assert!(rules(false, &vars, &routes(&[])).unwrap().0.is_none());
        assert!(rules(true, &env(&[]), &routes(&[])).unwrap().0.is_none());

        // A proxy FastGate cannot use: an error when an https:// route needs one, else a warning.
        let socks = env(&[("ALL_PROXY", "socks5://user:secretpw@proxy.corp:1080")]);
        let tls_route = routes(&[("tls", "https://api.example.com")]);
        let (key, message) = rules(true, &socks, &tls_route).unwrap_err();
        assert_eq!(key, "api_gateway.trust_env");
        assert!(
            message.contains("ALL_PROXY") && message.contains("socks5"),
            "{message}"
        );
        assert!(!message.contains("secretpw"), "{message}");
        let plain = routes(&[
            ("plain", "http://10.0.0.5:8000"),
            ("lo", "https://127.0.0.1:8443"),
        ]);
        let (none, warnings) = rules(true, &socks, &plain).unwrap();
        assert!(none.is_none());
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("socks5") && w.contains("ignored")),
            "{warnings:?}"
        );
        assert!(
            !warnings.iter().any(|w| w.contains("secretpw")),
            "{warnings:?}"
        );

        let http = env(&[
            ("HTTP_PROXY", "http://proxy.corp:3128"),
            ("NO_PROXY", "near.corp"),
        ]);
        let table = routes(&[
            ("far", "http://far.corp:8000"),
            ("near", "http://near.corp:8000"),
            ("local", "http://127.0.0.1:8000"),
            ("tls", "https://api.example.com"),
        ]);
        let (rules, warnings) = rules(true, &http, &table).unwrap();
        assert!(rules.is_none(), "HTTP_PROXY alone proxies nothing");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("HTTP_PROXY") && warnings[0].contains("far"));
        assert!(!warnings[0].contains("near") && !warnings[0].contains("local"));
    }

    #[test]
    fn values_as_curl_and_httpx_read_them_or_a_clear_refusal() {
        let host = |vars: &'static [(&'static str, &'static str)]| {
            let (rules, _) = rules(true, &env(vars), &routes(&[])).unwrap();
            rules.and_then(|r| {
                fastgate_layer::forward::egress_proxy_host(
                    &r,
                    &"https://api.openai.com/".parse().unwrap(),
                )
            })
        };
        // No scheme: http://. Surrounding blanks are ignored.
        assert_eq!(
            host(&[("HTTPS_PROXY", " proxy.corp:3128\n")]).as_deref(),
            Some("proxy.corp")
        );
        // Lower-case names win, as in Python's urllib.
        assert_eq!(
            host(&[
                ("HTTPS_PROXY", "http://upper:3128"),
                ("https_proxy", "http://lower:3128")
            ])
            .as_deref(),
            Some("lower")
        );
        // HTTPS_PROXY before ALL_PROXY.
        assert_eq!(
            host(&[
                ("ALL_PROXY", "http://all:3128"),
                ("HTTPS_PROXY", "http://tls:3128")
            ])
            .as_deref(),
            Some("tls")
        );
        // NO_PROXY=*: no proxy at all, IP hosts included.
        assert_eq!(
            host(&[("HTTPS_PROXY", "http://p:3128"), ("NO_PROXY", "*")]),
            None
        );

        let refused = |vars: &'static [(&'static str, &'static str)]| {
            let table = routes(&[("tls", "https://api.example.com")]);
            let (key, message) = rules(true, &env(vars), &table).unwrap_err();
            assert_eq!(key, "api_gateway.trust_env");
            assert!(
                !message.contains("pa@ss") && !message.contains("s3cret"),
                "{message}"
            );
            message
        };
        let m = refused(&[("HTTPS_PROXY", "http://user:pa@ss@proxy.corp:3128")]);
        assert!(m.contains("more than one '@'") && m.contains("%40"), "{m}");
        let m = refused(&[("HTTPS_PROXY", "https://user:s3cret@proxy.corp:3128")]);
        assert!(m.contains("https://"), "{m}");
    }
}
