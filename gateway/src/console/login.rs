//! Signing in and out of the console with a policy user's password, checked exactly as the
//! OAuth login page checks it (`core::sign_in`: argon2, shared rate limits). A sign-in mints a
//! session token and a sign-out revokes it; both are audited like tokens minted and revoked
//! through the admin API.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use execmesh_proto::pb;

use super::ConsoleState;
use super::page::{self, Section};
use super::session::{self, Session};
use crate::client_addr::ClientAddr;
use crate::core::auth::CONSOLE_SCOPE;
use crate::core::sign_in::SignInRefusal;

/// The sign-in form's fields.
#[derive(Debug, Default, Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    /// The console page to go back to.
    #[serde(default)]
    next: String,
}

/// Where to go after signing in.
#[derive(Debug, Default, Deserialize)]
pub struct Next {
    #[serde(default)]
    next: String,
}

/// GET `/console/login`.
pub async fn show(Query(next): Query<Next>) -> Response {
    form(StatusCode::OK, "", &next.next, None)
}

/// POST `/console/login`.
pub async fn submit(
    State(state): State<Arc<ConsoleState>>,
    ClientAddr(address): ClientAddr,
    Form(fields): Form<SignInForm>,
) -> Response {
    let username = fields.username.trim().to_ascii_lowercase();
    let policy = state.policy.current();
    let checked = (state.sign_in)
        .check(&policy, &username, fields.password, &address)
        .await;
    if let Err(refusal) = checked {
        let (status, message) = match refusal {
            SignInRefusal::AddressLimited(wait) | SignInRefusal::UserLimited(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                format!("{refusal} Try again in {} s.", wait.as_secs().max(1)),
            ),
            SignInRefusal::Wrong => (StatusCode::UNAUTHORIZED, refusal.to_string()),
        };
        return form(status, &username, &fields.next, Some(&message));
    }
    let Some(grant) = policy.grant(&username) else {
        return form(
            StatusCode::UNAUTHORIZED,
            &username,
            &fields.next,
            Some(&SignInRefusal::Wrong.to_string()),
        );
    };
    let (issued, cookie) = match session::start(&state, &username, grant.tier) {
        Ok(started) => started,
        Err(e) => {
            tracing::error!(user = %username, error = %e, "cannot start a console session");
            return page::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot sign in",
                "The gateway could not start a session; its log says why.",
                None,
            );
        }
    };
    state.audit.token_minted(
        &username,
        pb::TokenMinted {
            token_id: issued.jti.clone(),
            for_user: username.clone(),
            scopes: vec![CONSOLE_SCOPE.to_string()],
            tier: grant.tier.to_string(),
            expires_at_ms: issued.expires_at * 1000,
            by: username.clone(),
            grounds: "console_sign_in".to_string(),
        },
    );
    tracing::info!(user = %username, address = %address, "signed in to the console");
    let mut response = Redirect::to(&safe_next(&fields.next)).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

/// The form of a sign-out (only the CSRF token).
#[derive(Debug, Default, Deserialize)]
pub struct Csrf {
    #[serde(default)]
    pub csrf: String,
}

/// POST `/console/logout`: revokes the session everywhere and clears the cookie.
pub async fn logout(
    State(state): State<Arc<ConsoleState>>,
    session: Session,
    Form(form): Form<Csrf>,
) -> Response {
    if let Err(refused) = session.check_csrf(&state, &form.csrf) {
        return refused;
    }
    let identity = &session.identity;
    if let Err(e) = (state.revocations)
        .revoke(&identity.token_id, identity.expires_at)
        .await
    {
        tracing::warn!(user = %identity.user, error = %e, "cannot revoke a console session");
        return page::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Cannot sign out",
            &format!("The revocation list cannot be written right now ({e}); try again."),
            Some(&session),
        );
    }
    state.audit.token_revoked(
        identity.user.as_str(),
        pb::TokenRevoked {
            token_id: identity.token_id.clone(),
            for_user: identity.user.to_string(),
            kept_until_ms: identity.expires_at * 1000,
            by: identity.user.to_string(),
        },
    );
    let mut response = Redirect::to("/console/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    response
}

/// Only a console path of this gateway (never `//elsewhere` or a full URL) is followed.
fn safe_next(next: &str) -> String {
    let next = next.trim();
    let ours = next == "/console"
        || (next.starts_with("/console/") && !next.contains("//") && !next.contains('\\'));
    if ours {
        next.to_string()
    } else {
        "/console/approvals".to_string()
    }
}

/// The sign-in page.
fn form(status: StatusCode, username: &str, next: &str, error: Option<&str>) -> Response {
    let body = html! {
        p { "Sign in with your execmesh user name and password (the same as on the OAuth sign-in page)." }
        @if let Some(error) = error {
            p.error role="alert" #sign-in-error { (error) }
        }
        form.stack method="post" action="/console/login" {
            input type="hidden" name="next" value=(next);
            label for="username" { "User" }
            input #username type="text" name="username" value=(username) autocomplete="username" autocapitalize="none" required autofocus;
            label for="password" { "Password" }
            input #password type="password" name="password" autocomplete="current-password" required;
            p { button type="submit" { "Sign in" } }
        }
    };
    let mut response = page::respond(status, page::frame(Section::SignIn, "Sign in", None, body));
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_are_followed_after_sign_in() {
        assert_eq!(
            safe_next("/console/approvals/apr-1"),
            "/console/approvals/apr-1"
        );
        for foreign in [
            "https://evil.example",
            "//evil.example/console",
            "/mcp",
            "/console/..//x",
            "",
        ] {
            assert_eq!(safe_next(foreign), "/console/approvals", "{foreign}");
        }
    }
}
