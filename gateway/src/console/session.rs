//! Console sessions: a short-lived token whose only scope is `console`, kept in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` over HTTPS), verified like every bearer token (so any
//! replica with the key accepts it, and sign-out or `token revoke` ends it everywhere through
//! the revocation list), and the CSRF token every form carries, derived from the session's id.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{ConsoleState, page};
use crate::core::auth::{AuthError, CONSOLE_SCOPE, Identity, Issued, TokenSpec};
use crate::core::auth_failures::Endpoint;
use crate::core::bearer::BearerRefusal;
use crate::core::tier::Tier;

/// The session cookie's name.
pub const COOKIE: &str = "execmesh_console";
/// The OAuth client id a session token names, so the audit trail and `whoami` tell a console
/// session from other tokens.
pub const CLIENT_ID: &str = "console";
/// What the CSRF key is derived for (see `SigningKey::derive_secret`).
pub const CSRF_PURPOSE: &str = "execmesh console csrf v1";

/// A signed-in person: who they are under the policy in force, and the CSRF token their forms
/// must carry.
#[derive(Debug, Clone)]
pub struct Session {
    pub identity: Identity,
    /// The value of every form's `csrf` field.
    pub csrf: String,
}

// === impl Session ===

impl Session {
    /// `Ok` when a form's `csrf` field is this session's; otherwise the refusal (403).
    pub fn check_csrf(&self, state: &ConsoleState, given: &str) -> Result<(), Response> {
        let valid = URL_SAFE_NO_PAD
            .decode(given.trim())
            .is_ok_and(|tag| state.csrf_key.verify(&self.identity.token_id, &tag));
        if valid {
            return Ok(());
        }
        tracing::warn!(user = %self.identity.user, "console form refused: missing or wrong CSRF token");
        Err(page::error(
            StatusCode::FORBIDDEN,
            "Form refused",
            "This form did not carry this session's CSRF token (it was sent from another page, \
             or from before you signed in again). Reload the page and try again.",
            Some(self),
        ))
    }
}

impl FromRequestParts<Arc<ConsoleState>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ConsoleState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(sign_in_first(parts, false));
        };
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        match state.bearer.check(token, Endpoint::Console, addr).await {
            Ok(identity) => Ok(Session {
                csrf: state.csrf_key.tag(&identity.token_id),
                identity,
            }),
            Err(BearerRefusal::RevocationUnknown(e)) => Err(page::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Cannot check your session",
                &format!("The revocation list cannot be read right now ({e}); try again shortly."),
                None,
            )),
            Err(_) => Err(sign_in_first(parts, true)),
        }
    }
}

/// The answer to a request without a valid session: the sign-in page (coming back here
/// afterwards) for a page, 401 for anything else.
fn sign_in_first(parts: &Parts, clear: bool) -> Response {
    let mut response = if parts.method == Method::GET {
        let next = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/console");
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("next", next)
            .finish();
        Redirect::to(&format!("/console/login?{query}")).into_response()
    } else {
        page::error(
            StatusCode::UNAUTHORIZED,
            "Signed out",
            "Your console session ended or was revoked. Sign in again and repeat the action.",
            None,
        )
    };
    if clear {
        response
            .headers_mut()
            .append(header::SET_COOKIE, clear_cookie());
    }
    response
}

/// Starts a session for `user` acting with `tier`: the token and the `Set-Cookie` carrying it.
pub fn start(
    state: &ConsoleState,
    user: &str,
    tier: Tier,
) -> Result<(Issued, HeaderValue), AuthError> {
    let ttl = state.config.console_session_ttl;
    let issued = state.bearer.key.issue(
        &state.bearer.audience,
        &TokenSpec {
            user,
            ttl,
            scope: CONSOLE_SCOPE,
            tier,
            client_id: Some(CLIENT_ID),
        },
    )?;
    let secure = if state.https { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        issued.token,
        ttl.as_secs()
    );
    let value = HeaderValue::from_str(&cookie).map_err(|_| AuthError::Malformed)?;
    Ok((issued, value))
}

/// A `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "execmesh_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
    )
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Derives and checks CSRF tokens: an HMAC of the session's token id under a key every replica
/// derives from the shared token key, so any replica checks a form another one rendered.
pub struct CsrfKey(ring::hmac::Key);

// === impl CsrfKey ===

impl CsrfKey {
    pub fn new(secret: &[u8; 32]) -> Self {
        Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    /// The CSRF token of the session with token id `jti`.
    pub fn tag(&self, jti: &str) -> String {
        URL_SAFE_NO_PAD.encode(ring::hmac::sign(&self.0, &message(jti)).as_ref())
    }

    /// Whether `tag` is the CSRF token of session `jti` (constant time).
    fn verify(&self, jti: &str, tag: &[u8]) -> bool {
        ring::hmac::verify(&self.0, &message(jti), tag).is_ok()
    }
}

fn message(jti: &str) -> Vec<u8> {
    format!("execmesh console csrf\n{jti}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csrf_token_is_bound_to_its_session() {
        let key = CsrfKey::new(&[7; 32]);
        let tag = key.tag("jti-1");
        let bytes = URL_SAFE_NO_PAD.decode(&tag).unwrap();
        assert!(key.verify("jti-1", &bytes));
        assert!(!key.verify("jti-2", &bytes));
        assert!(!CsrfKey::new(&[8; 32]).verify("jti-1", &bytes));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; execmesh_console=tok.en; b=2"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("tok.en"));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
