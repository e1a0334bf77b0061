//! Which browser origins may call `/mcp` (and the console): the gateway's own origin, its public
//! URL's, and those the configuration lists (DNS rebinding and cross-site requests are refused
//! with 403); and which `Host` names the gateway answers to.
//!
//! A request without `Origin` (every non-browser client) passes. One whose `Origin` is the
//! origin it was sent to (scheme, host and port of its `Host`, as a same-origin page sends) or
//! the origin of `public_url` passes; any other must be listed in `allowed_origins`. The `Host`
//! itself is checked against the accepted host names by the MCP transport, after this, so a
//! same-origin request with a foreign `Host` is still refused.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use url::{Origin, Url};

/// The origins `/mcp` accepts besides its own.
#[derive(Debug)]
pub struct OriginPolicy {
    /// `https` when the gateway serves TLS itself: the scheme of a same-origin page's `Origin`.
    scheme: &'static str,
    /// The origin of `public_url` (or of the listen address without one): where a page behind
    /// a TLS-terminating proxy comes from.
    public: Origin,
    /// `allowed_origins`, parsed.
    allowed: Vec<Allowed>,
}

/// One entry of `allowed_origins`.
#[derive(Debug, PartialEq)]
enum Allowed {
    /// `null`, the origin of sandboxed and `file:` pages.
    Null,
    /// `https://app.example.com:8443`; without a port, the scheme's default (RFC 6454).
    Exact(Origin),
    /// `http://localhost:*`: that scheme and host on any port.
    AnyPort { scheme: String, host: String },
}

// === impl OriginPolicy ===

impl OriginPolicy {
    /// The policy of a gateway serving `https` or not, whose public origin is `public` (an
    /// `http(s)://host[:port]` URL), with the configured `allowed_origins` (entries that do not
    /// parse match nothing; [`check_allowed`] refuses them when the configuration loads).
    pub fn new(https: bool, public: &str, allowed_origins: &[String]) -> Self {
        Self {
            scheme: if https { "https" } else { "http" },
            public: origin_of(public),
            allowed: allowed_origins
                .iter()
                .filter_map(|entry| Allowed::parse(entry).ok())
                .collect(),
        }
    }

    /// Whether a request with these headers may go on.
    pub fn accepts(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.trim();
        if origin.eq_ignore_ascii_case("null") {
            return self.allowed.contains(&Allowed::Null);
        }
        let origin = origin_of(origin);
        if !origin.is_tuple() {
            return false;
        }
        let same_origin = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .is_some_and(|host| origin_of(&format!("{}://{host}", self.scheme)) == origin);
        same_origin || origin == self.public || self.allowed.iter().any(|a| a.matches(&origin))
    }
}

/// Refuses a request to `/mcp` from a browser origin the policy does not accept, before its
/// token is looked at.
pub async fn check(
    State(policy): State<Arc<OriginPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    if policy.accepts(request.headers()) {
        return next.run(request).await;
    }
    tracing::warn!(
        origin = ?request.headers().get(header::ORIGIN),
        host = ?request.headers().get(header::HOST),
        "refused a request from a foreign browser origin"
    );
    (
        StatusCode::FORBIDDEN,
        "Forbidden: this Origin may not call /mcp; list it in allowed_origins\n",
    )
        .into_response()
}

/// The names (or `name:port`) the gateway accepts in `Host`: loopback, the configured
/// `public_names`, and the host of its public URL. `/mcp` hands the list to its transport; the
/// console checks it with [`host_allowed`].
pub fn allowed_hosts(
    public_names: &[String],
    audience: &crate::core::auth::Audience,
) -> Vec<String> {
    let mut hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    hosts.extend(public_names.iter().cloned());
    hosts.push(audience.host());
    hosts
}

/// Whether `host` (a `Host` header: `name[:port]`) is one of `allowed` (entries without a port
/// allow any port), as the MCP transport decides it.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let Some(host) = authority(host) else {
        return false;
    };
    allowed
        .iter()
        .filter_map(|entry| authority(entry))
        .any(|(name, port)| name == host.0 && port.is_none_or(|p| host.1 == Some(p)))
}

/// A host name (lower-case, without IPv6 brackets) and its port, if any.
fn authority(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let (name, port) = match http::uri::Authority::try_from(text) {
        Ok(authority) => (authority.host().to_string(), authority.port_u16()),
        Err(_) => (text.to_string(), None),
    };
    let name = name.trim_matches(['[', ']']).to_ascii_lowercase();
    Some((name, port))
}

/// Why an `allowed_origins` entry is not an origin, if it is not.
pub fn check_allowed(entry: &str) -> Result<(), String> {
    Allowed::parse(entry).map(|_| ())
}

// === impl Allowed ===

impl Allowed {
    fn parse(entry: &str) -> Result<Self, String> {
        let entry = entry.trim();
        if entry.eq_ignore_ascii_case("null") {
            return Ok(Self::Null);
        }
        let (base, any_port) = match entry.strip_suffix(":*") {
            Some(base) => (base, true),
            None => (entry, false),
        };
        let invalid = |why: &str| {
            format!(
                "allowed origin `{entry}` {why}: write scheme://host[:port] (http or https), \
                 scheme://host:* for any port, or null"
            )
        };
        let url = Url::parse(base).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("is not http or https"));
        }
        // A browser's `Origin` has no path, query or credentials: an entry with one is a URL
        // pasted where its origin was meant.
        if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
            return Err(invalid("has more than an origin"));
        }
        let Some(host) = url.host_str() else {
            return Err(invalid("names no host"));
        };
        if !any_port {
            return Ok(Self::Exact(url.origin()));
        }
        // `https://host:443:*` names a port twice (`Url::port` hides a scheme's default one).
        let port = base
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .unwrap_or_default();
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("names a port and `:*`"));
        }
        Ok(Self::AnyPort {
            scheme: url.scheme().to_string(),
            host: host.to_ascii_lowercase(),
        })
    }

    fn matches(&self, origin: &Origin) -> bool {
        match (self, origin) {
            (Self::Exact(allowed), origin) => allowed == origin,
            (Self::AnyPort { scheme, host }, Origin::Tuple(s, h, _)) => {
                s == scheme && h.to_string() == *host
            }
            _ => false,
        }
    }
}

/// The origin of `value` (an origin or a URL), opaque (matching nothing) when it is neither.
fn origin_of(value: &str) -> Origin {
    match Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => url.origin(),
        _ => Origin::new_opaque(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn the_pages_own_origin_passes_and_other_ports_and_schemes_do_not() {
        let policy = OriginPolicy::new(false, "http://127.0.0.1:8420", &[]);
        for (host, origin, accepted) in [
            ("127.0.0.1:8420", None, true),
            ("127.0.0.1:8420", Some("http://127.0.0.1:8420"), true),
            ("localhost:8420", Some("http://localhost:8420"), true),
            ("localhost:8420", Some("http://LOCALHOST:8420"), true),
            ("[::1]:8420", Some("http://[::1]:8420"), true),
            ("gw.example.com", Some("http://gw.example.com:80"), true),
            ("localhost:8420", Some("http://localhost:3000"), false),
            ("localhost:8420", Some("https://localhost:8420"), false),
            ("localhost:8420", Some("http://evil.example.net"), false),
            ("localhost:8420", Some("null"), false),
            ("localhost:8420", Some("not an origin"), false),
        ] {
            assert_eq!(
                policy.accepts(&headers(host, origin)),
                accepted,
                "Host {host}, Origin {origin:?}"
            );
        }
    }

    #[test]
    fn the_public_origin_and_listed_origins_pass() {
        let allowed = [
            "https://app.example.com".to_string(),
            "http://localhost:*".to_string(),
            "null".to_string(),
            "https://twice.example.com:443:*".to_string(),
        ];
        let policy = OriginPolicy::new(false, "https://mesh.example.com/mcp", &allowed);
        for (origin, accepted) in [
            ("https://mesh.example.com", true),
            ("https://mesh.example.com:443", true),
            ("http://mesh.example.com", false),
            ("https://app.example.com", true),
            ("https://app.example.com:8443", false),
            ("http://localhost:5173", true),
            ("https://localhost:5173", false),
            ("null", true),
            ("https://twice.example.com", false),
        ] {
            assert_eq!(
                policy.accepts(&headers("10.0.0.1:8420", Some(origin))),
                accepted,
                "Origin {origin}"
            );
        }
    }

    #[test]
    fn an_entry_that_is_not_an_origin_is_named() {
        for good in [
            "https://app.example.com",
            "http://localhost:*",
            "null",
            "http://[::1]:3000",
        ] {
            assert_eq!(check_allowed(good), Ok(()), "{good}");
        }
        for bad in [
            "app.example.com",
            "ftp://app.example.com",
            "https://app.example.com/console",
            "https://app.example.com:443:*",
            "https://",
        ] {
            let e = check_allowed(bad).expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn hosts_match_by_name_and_by_port_when_the_entry_has_one() {
        let allowed = [
            "localhost".to_string(),
            "::1".to_string(),
            "gw.example.com:8443".to_string(),
        ];
        for (host, accepted) in [
            ("localhost:8420", true),
            ("LOCALHOST", true),
            ("[::1]:8420", true),
            ("gw.example.com:8443", true),
            ("gw.example.com:8444", false),
            ("gw.example.com", false),
            ("evil.example.net:8420", false),
            ("", false),
        ] {
            assert_eq!(host_allowed(host, &allowed), accepted, "{host}");
        }
    }

    #[test]
    fn a_gateway_serving_tls_expects_https_pages() {
        let policy = OriginPolicy::new(true, "https://127.0.0.1:8443", &[]);
        let host = "gw.internal:8443";
        assert!(policy.accepts(&headers(host, Some("https://gw.internal:8443"))));
        assert!(!policy.accepts(&headers(host, Some("http://gw.internal:8443"))));
    }
}
