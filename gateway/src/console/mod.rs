//! The web console at `/console`, the gateway's face for people: approvals, jobs with live
//! output, hosts, audit and tokens, signed in with a policy user's password, over the same core as the other faces.
//!
//! Pages are rendered on the server (maud: templates are Rust, checked when the gateway is
//! compiled, and escape every value) and work without JavaScript for reading and for every
//! form; one small script of the gateway's own (`assets/console.js`) follows server-sent events
//! for live updates. Every response forbids inline script, framing and foreign resources
//! (content security policy); every form carries a CSRF token bound to the session; every
//! request passes the same `Host` and `Origin` checks as `/mcp`.

// A refusal is answered with its page: the `Err` of the handlers' helpers is that response,
// sent at once and never kept, so its size does not matter.
#![allow(clippy::result_large_err)]

mod approvals;
mod assets;
mod audit;
mod hosts;
mod jobs;
mod login;
mod page;
mod session;
mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::config::Config;
use crate::core::approvals::Approvals;
use crate::core::audit::Audit;
use crate::core::bearer::Bearer;
use crate::core::mesh::Mesh;
use crate::core::paging::CursorKey;
use crate::core::policy::LivePolicy;
use crate::core::revocation::Revocations;
use crate::core::sign_in::SignIn;
use crate::origin::OriginPolicy;

pub use session::{CSRF_PURPOSE, CsrfKey};

/// The content security policy of every console response: the gateway's own script, style
/// and event streams, nothing inline, no framing, forms posting only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the console's pages read and act through.
pub struct ConsoleState {
    pub config: Arc<Config>,
    pub mesh: Mesh,
    /// Verifies session tokens (and holds the key and audience they are issued with).
    pub bearer: Arc<Bearer>,
    /// Users, groups, tiers, reach and approvers; reloaded in place.
    pub policy: Arc<LivePolicy>,
    pub audit: Arc<Audit>,
    pub approvals: Approvals,
    /// Seals the job cursors of the output pages (the `job` tool's cursors open here too).
    pub cursors: CursorKey,
    /// Where sign-out puts a session.
    pub revocations: Arc<Revocations>,
    /// The password check, with the rate limits the OAuth login page shares.
    pub sign_in: Arc<SignIn>,
    /// Derives the forms' CSRF tokens.
    pub csrf_key: CsrfKey,
    /// Browser origins accepted, as for `/mcp`.
    pub origins: OriginPolicy,
    /// `Host` names accepted, as for `/mcp`.
    pub allowed_hosts: Vec<String>,
    /// Whether the browser reaches the gateway over HTTPS (the cookie is then `Secure`).
    pub https: bool,
}

/// The console's routes, to merge into the gateway's router.
pub fn routes(state: Arc<ConsoleState>) -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/approvals") }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/approvals") }),
        )
        .route("/console/login", get(login::show).post(login::submit))
        .route("/console/logout", post(login::logout))
        .route("/console/approvals", get(approvals::list))
        .route("/console/approvals/events", get(approvals::events))
        .route("/console/approvals/{id}", get(approvals::show))
        .route("/console/approvals/{id}/approve", post(approvals::approve))
        .route("/console/approvals/{id}/deny", post(approvals::deny))
        .route("/console/jobs", get(jobs::list))
        .route("/console/jobs/{host}/{job}", get(jobs::show))
        .route("/console/jobs/{host}/{job}/output", get(jobs::output))
        .route("/console/jobs/{host}/{job}/kill", post(jobs::kill))
        .route("/console/hosts", get(hosts::list))
        .route("/console/audit", get(audit::list))
        .route("/console/audit/export", get(audit::export))
        .route("/console/audit/chain", get(audit::chain))
        .route("/console/tokens", get(tokens::show))
        .route("/console/tokens/mint", post(tokens::mint))
        .route("/console/tokens/revoke", post(tokens::revoke))
        .route("/console/assets/{name}", get(assets::serve))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// The `Host` and `Origin` checks of `/mcp`, then the headers every console response carries.
async fn guard(State(state): State<Arc<ConsoleState>>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
    if !crate::origin::host_allowed(host, &state.allowed_hosts) {
        tracing::warn!(host = %host, "console request refused: Host not accepted");
        return (
            StatusCode::FORBIDDEN,
            "Forbidden: this Host is not one of the gateway's names; add it to public_names\n",
        )
            .into_response();
    }
    if !state.origins.accepts(request.headers()) {
        tracing::warn!(origin = ?request.headers().get(header::ORIGIN), "console request refused: foreign Origin");
        return (
            StatusCode::FORBIDDEN,
            "Forbidden: this Origin may not use the console; list it in allowed_origins\n",
        )
            .into_response();
    }
    let is_asset = request.uri().path().starts_with("/console/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
