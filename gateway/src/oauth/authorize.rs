//! `/authorize`: checks an authorization request (client, redirect URI, PKCE S256, resource,
//! scope), shows the login page, checks the password (argon2, constant time, rate-limited per
//! user and per address) and sends the browser back with `code`, `state` and `iss`.
//!
//! Errors about the client or its redirect URI are shown on a page (never redirected: the URI
//! is not trusted yet); every other error goes back to the client as `error=…` (RFC 6749
//! §4.1.2.1).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::{info, warn};
use url::Url;

use super::OAuthState;
use super::client::{self, ClientInfo};
use super::login::{self, LoginPage};
use super::{CODE_TTL, ClientAddr, SCOPES_SUPPORTED, now_secs, random_secret};
use crate::core::auth::MCP_SCOPE;
use crate::core::sign_in::SignInRefusal;
use crate::core::token_store::CodeGrant;

/// A checked authorization request.
struct Request {
    client: ClientInfo,
    redirect_uri: String,
    state: Option<String>,
    code_challenge: String,
    scope: String,
    resource: String,
}

/// Why a request is refused.
enum Refusal {
    /// Shown to the user: the redirect URI cannot be trusted.
    Page(StatusCode, String),
    /// Sent back to the client.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

/// GET `/authorize`: the login page for a valid request.
pub async fn show(State(state): State<Arc<OAuthState>>, RawQuery(query): RawQuery) -> Response {
    let params = match parse_params(query.as_deref().unwrap_or_default().as_bytes()) {
        Ok(params) => params,
        Err(e) => return login::error(StatusCode::BAD_REQUEST, &e),
    };
    match check(&state, &params).await {
        Ok(request) => form(&request, StatusCode::OK, "", None),
        Err(refusal) => refuse(&state, refusal),
    }
}

/// POST `/authorize`: the login form.
pub async fn submit(
    State(state): State<Arc<OAuthState>>,
    ClientAddr(address): ClientAddr,
    body: Bytes,
) -> Response {
    let params = match parse_params(&body) {
        Ok(params) => params,
        Err(e) => return login::error(StatusCode::BAD_REQUEST, &e),
    };
    let request = match check(&state, &params).await {
        Ok(request) => request,
        Err(refusal) => return refuse(&state, refusal),
    };
    let username = params
        .get("username")
        .map(String::as_str)
        .unwrap_or("")
        .trim();
    let username = username.to_ascii_lowercase();
    let password = params.get("password").cloned().unwrap_or_default();
    let oauth = &state.oauth;
    // The sign-in form again, held back for `wait`, saying `why`.
    let held_back = |why: &str, wait: std::time::Duration| {
        let message = format!("{why} Try again in {} s.", wait.as_secs().max(1));
        let page = form(
            &request,
            StatusCode::TOO_MANY_REQUESTS,
            &username,
            Some(&message),
        );
        with_retry_after(page, wait)
    };
    let policy = state.policy.current();
    match oauth
        .sign_in
        .check(&policy, &username, password, &address)
        .await
    {
        Ok(()) => {}
        Err(refusal @ (SignInRefusal::AddressLimited(wait) | SignInRefusal::UserLimited(wait))) => {
            return held_back(&refusal.to_string(), wait);
        }
        Err(refusal @ SignInRefusal::Wrong) => {
            return form(
                &request,
                StatusCode::UNAUTHORIZED,
                &username,
                Some(&refusal.to_string()),
            );
        }
    }
    let code = random_secret();
    let grant = CodeGrant {
        client_id: request.client.client_id.clone(),
        redirect_uri: request.redirect_uri.clone(),
        user: username.clone(),
        scope: request.scope.clone(),
        resource: request.resource.clone(),
        code_challenge: request.code_challenge.clone(),
        family: random_secret(),
        expires_at: now_secs() + CODE_TTL.as_secs(),
    };
    if let Err(e) = oauth.store.put_code(&code, &grant, CODE_TTL).await {
        warn!(error = %e, "cannot store an authorization code");
        return refuse(
            &state,
            Refusal::Redirect {
                redirect_uri: request.redirect_uri,
                state: request.state,
                error: "temporarily_unavailable",
                description: "the authorization server cannot store the grant right now".into(),
            },
        );
    }
    info!(user = %username, client = %request.client.client_id, "login succeeded; code issued");
    redirect(
        &request.redirect_uri,
        &[
            ("code", Some(code.as_str())),
            ("state", request.state.as_deref()),
            ("iss", Some(state.audience.issuer.as_str())),
        ],
    )
}

/// Checks everything about the request except the password.
async fn check(state: &OAuthState, params: &BTreeMap<String, String>) -> Result<Request, Refusal> {
    let get = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let client_id = get("client_id").ok_or_else(|| {
        Refusal::Page(
            StatusCode::BAD_REQUEST,
            "The request names no client (client_id).".into(),
        )
    })?;
    let client = client::resolve(&state.oauth, client_id)
        .await
        .map_err(|e| Refusal::Page(StatusCode::BAD_REQUEST, e.to_string()))?;
    let redirect_uri = match get("redirect_uri") {
        Some(uri) if client::redirect_allowed(&client.redirect_uris, uri) => uri.to_string(),
        Some(uri) => {
            return Err(Refusal::Page(
                StatusCode::BAD_REQUEST,
                format!("The redirect URI {uri} is not registered for this client."),
            ));
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => {
            return Err(Refusal::Page(
                StatusCode::BAD_REQUEST,
                "The request names no redirect_uri and the client has several.".into(),
            ));
        }
    };
    let state_param = get("state").map(str::to_string);
    let back = |error: &'static str, description: String| Refusal::Redirect {
        redirect_uri: redirect_uri.clone(),
        state: state_param.clone(),
        error,
        description,
    };
    if get("response_type") != Some("code") {
        return Err(back(
            "unsupported_response_type",
            "only response_type=code is supported".into(),
        ));
    }
    let challenge = get("code_challenge").ok_or_else(|| {
        back(
            "invalid_request",
            "PKCE is required: send code_challenge".into(),
        )
    })?;
    match get("code_challenge_method") {
        Some("S256") => {}
        Some("plain") | None => {
            return Err(back(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not accepted)".into(),
            ));
        }
        Some(other) => {
            return Err(back(
                "invalid_request",
                format!("code_challenge_method `{other}` is not supported; use S256"),
            ));
        }
    }
    if challenge.len() != 43
        || !challenge
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(back(
            "invalid_request",
            "code_challenge must be BASE64URL(SHA256(code_verifier)), 43 characters".into(),
        ));
    }
    let resource = match get("resource") {
        None => state.audience.resource.clone(),
        Some(r) if r.trim_end_matches('/') == state.audience.resource => {
            state.audience.resource.clone()
        }
        Some(r) => {
            return Err(back(
                "invalid_target",
                format!(
                    "resource `{r}` is not served here; this server issues tokens for {}",
                    state.audience.resource
                ),
            ));
        }
    };
    Ok(Request {
        client,
        redirect_uri,
        state: state_param,
        code_challenge: challenge.to_string(),
        scope: granted_scope(get("scope")),
        resource,
    })
}

/// The scopes granted for a requested `scope`: the supported ones asked for, always with `mcp`;
/// others are left out (the token response says what was granted).
pub fn granted_scope(requested: Option<&str>) -> String {
    let mut scopes: Vec<&str> = requested
        .unwrap_or_default()
        .split_whitespace()
        .filter(|s| SCOPES_SUPPORTED.contains(s))
        .collect();
    if !scopes.contains(&MCP_SCOPE) {
        scopes.insert(0, MCP_SCOPE);
    }
    scopes.dedup();
    scopes.join(" ")
}

/// The login form carrying the checked request.
fn form(request: &Request, status: StatusCode, username: &str, error: Option<&str>) -> Response {
    let mut hidden = vec![
        ("response_type", "code"),
        ("client_id", request.client.client_id.as_str()),
        ("redirect_uri", request.redirect_uri.as_str()),
        ("code_challenge", request.code_challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("scope", request.scope.as_str()),
        ("resource", request.resource.as_str()),
    ];
    if let Some(s) = &request.state {
        hidden.push(("state", s.as_str()));
    }
    let name = request
        .client
        .name
        .as_deref()
        .unwrap_or(&request.client.client_id);
    login::page(
        status,
        &LoginPage {
            client: name,
            redirect_uri: &request.redirect_uri,
            hidden: &hidden,
            username,
            error,
        },
    )
}

fn refuse(state: &OAuthState, refusal: Refusal) -> Response {
    match refusal {
        Refusal::Page(status, message) => login::error(status, &message),
        Refusal::Redirect {
            redirect_uri,
            state: client_state,
            error,
            description,
        } => redirect(
            &redirect_uri,
            &[
                ("error", Some(error)),
                ("error_description", Some(description.as_str())),
                ("state", client_state.as_deref()),
                ("iss", Some(state.audience.issuer.as_str())),
            ],
        ),
    }
}

/// 303 to `uri` with `params` added to its query.
fn redirect(uri: &str, params: &[(&str, Option<&str>)]) -> Response {
    let Ok(mut url) = Url::parse(uri) else {
        return login::error(StatusCode::BAD_REQUEST, "The redirect URI is not a URL.");
    };
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in params {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
    }
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(url.as_str()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    super::no_store(response.headers_mut());
    response
}

fn with_retry_after(mut response: Response, wait: std::time::Duration) -> Response {
    if let Ok(value) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Parses `application/x-www-form-urlencoded` parameters; a parameter given twice is an error
/// (RFC 6749 §3.1).
fn parse_params(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut params = BTreeMap::new();
    for (name, value) in url::form_urlencoded::parse(bytes) {
        if params
            .insert(name.to_string(), value.into_owned())
            .is_some()
        {
            return Err(format!("The parameter `{name}` is given more than once."));
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_always_includes_mcp_and_drops_unknown_scopes() {
        assert_eq!(granted_scope(None), "mcp");
        assert_eq!(granted_scope(Some("openid mcp profile")), "mcp");
        assert_eq!(granted_scope(Some("admin")), "mcp");
    }

    #[test]
    fn repeated_parameters_are_refused() {
        assert!(parse_params(b"a=1&b=2").is_ok());
        assert!(parse_params(b"resource=x&resource=y").is_err());
    }
}
