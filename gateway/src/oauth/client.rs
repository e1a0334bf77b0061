//! Who a `client_id` is: a client registered through `/register`, or a client ID metadata
//! document (the client_id is an https URL the gateway fetches), and which redirect URIs it may
//! use.
//!
//! Metadata documents must be `https` with a path; plain `http` is accepted only from loopback
//! hosts, so tests (and a client on the gateway's own machine) work offline. The fetch follows
//! no redirects, gives up after 5 s and reads at most 64 KiB.

use serde::Deserialize;
use url::{Host, Url};

use super::OAuth;
use crate::core::token_store::StoreError;

/// Largest client metadata document read.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// A client as far as an authorization needs to know it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub client_id: String,
    pub name: Option<String>,
    pub redirect_uris: Vec<String>,
}

/// Why a client_id cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("unknown client `{0}`: register it at /register or use a client metadata URL")]
    Unknown(String),
    #[error("client metadata document {url}: {reason}")]
    Document { url: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Deserialize)]
struct MetadataDocument {
    client_id: String,
    #[serde(default)]
    client_name: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    token_endpoint_auth_method: Option<String>,
}

/// Looks up `client_id`.
pub async fn resolve(oauth: &OAuth, client_id: &str) -> Result<ClientInfo, ClientError> {
    if client_id.starts_with("https://") || client_id.starts_with("http://") {
        return fetch_document(oauth, client_id).await;
    }
    let client = oauth
        .store
        .client(client_id)
        .await?
        .ok_or_else(|| ClientError::Unknown(client_id.to_string()))?;
    Ok(ClientInfo {
        client_id: client.client_id,
        name: client.client_name,
        redirect_uris: client.redirect_uris,
    })
}

async fn fetch_document(oauth: &OAuth, client_id: &str) -> Result<ClientInfo, ClientError> {
    let bad = |reason: String| ClientError::Document {
        url: client_id.to_string(),
        reason,
    };
    let url = Url::parse(client_id).map_err(|e| bad(e.to_string()))?;
    let allowed = match url.scheme() {
        "https" => url.path() != "/" && !url.path().is_empty(),
        "http" => url.host().is_some_and(|h| is_loopback(&h)),
        _ => false,
    };
    if !allowed || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad(
            "a client_id URL must be https with a path (http only on loopback), without \
             fragment or credentials"
                .to_string(),
        ));
    }
    let mut response = oauth
        .http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| bad(format!("cannot fetch: {e}")))?;
    if !response.status().is_success() {
        return Err(bad(format!("answered HTTP {}", response.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| bad(format!("cannot read: {e}")))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(bad(format!("larger than {MAX_DOCUMENT_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    let doc: MetadataDocument =
        serde_json::from_slice(&body).map_err(|e| bad(format!("not client metadata: {e}")))?;
    if doc.client_id != client_id {
        return Err(bad(format!(
            "its client_id `{}` is not its own URL",
            doc.client_id
        )));
    }
    if doc.redirect_uris.is_empty() {
        return Err(bad("it lists no redirect_uris".to_string()));
    }
    for uri in &doc.redirect_uris {
        check_redirect_uri(uri).map_err(bad)?;
    }
    if let Some(method) = &doc.token_endpoint_auth_method
        && method != "none"
    {
        return Err(bad(format!(
            "token_endpoint_auth_method `{method}` is not supported (only `none`)"
        )));
    }
    Ok(ClientInfo {
        client_id: client_id.to_string(),
        name: doc.client_name,
        redirect_uris: doc.redirect_uris,
    })
}

/// Whether a redirect URI may be registered: an absolute URI without fragment; `http` only to
/// loopback; no schemes a browser would run or read locally.
pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
    let url = Url::parse(uri).map_err(|e| format!("redirect_uri `{uri}`: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!("redirect_uri `{uri}` must not have a fragment"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if url.host().is_some_and(|h| is_loopback(&h)) => Ok(()),
        "http" => Err(format!(
            "redirect_uri `{uri}`: http is only allowed to loopback (127.0.0.1, [::1], localhost)"
        )),
        "javascript" | "data" | "file" | "vbscript" | "about" | "blob" => {
            Err(format!("redirect_uri `{uri}`: scheme not allowed"))
        }
        // Private-use schemes of native apps (RFC 8252 §7.1), e.g. `cursor://…`.
        _ => Ok(()),
    }
}

/// Whether `requested` is one of `registered`. Loopback redirect URIs match on any port
/// (RFC 8252 §7.3: native apps pick a free port at each login).
pub fn redirect_allowed(registered: &[String], requested: &str) -> bool {
    if registered.iter().any(|r| r == requested) {
        return true;
    }
    let Ok(want) = Url::parse(requested) else {
        return false;
    };
    if want.scheme() != "http" || !want.host().is_some_and(|h| is_loopback(&h)) {
        return false;
    }
    registered
        .iter()
        .filter_map(|r| Url::parse(r).ok())
        .any(|r| {
            r.scheme() == want.scheme()
                && r.host() == want.host()
                && r.path() == want.path()
                && r.query() == want.query()
        })
}

fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_redirects_match_on_any_port_others_exactly() {
        let registered = vec![
            "http://127.0.0.1:3000/callback".to_string(),
            "https://app.example.com/cb".to_string(),
        ];
        assert!(redirect_allowed(
            &registered,
            "http://127.0.0.1:3000/callback"
        ));
        assert!(redirect_allowed(
            &registered,
            "http://127.0.0.1:49152/callback"
        ));
        assert!(!redirect_allowed(
            &registered,
            "http://127.0.0.1:49152/other"
        ));
        assert!(!redirect_allowed(
            &registered,
            "http://localhost:3000/callback"
        ));
        assert!(redirect_allowed(&registered, "https://app.example.com/cb"));
        assert!(!redirect_allowed(
            &registered,
            "https://app.example.com:444/cb"
        ));
        assert!(!redirect_allowed(&registered, "https://evil.example/cb"));
    }

    #[test]
    fn redirect_uris_must_be_safe() {
        assert!(check_redirect_uri("https://app.example.com/cb").is_ok());
        assert!(check_redirect_uri("http://localhost:8080/cb").is_ok());
        assert!(check_redirect_uri("cursor://anysphere.cursor/oauth").is_ok());
        assert!(check_redirect_uri("http://app.example.com/cb").is_err());
        assert!(check_redirect_uri("javascript:alert(1)").is_err());
        assert!(check_redirect_uri("https://app.example.com/cb#x").is_err());
        assert!(check_redirect_uri("/relative").is_err());
    }
}
