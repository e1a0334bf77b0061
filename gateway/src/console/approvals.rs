//! The Approvals page: held calls with everything needed to decide them (who, the call and its
//! arguments as sent, the resolved hosts, the run-as account, the rule that held it, age and
//! expiry), approve and deny-with-reason forms for those the policy lets decide, the decided
//! ones, and a server-sent event stream that tells the page when anything changed.
//!
//! Who may decide is the core's rule (`Authority`): a `[approvers]` member with the tier and
//! reach the call needs, never the requester. The buttons are only shown to those who pass it,
//! and every decision is checked again when it is posted. Approvers see every request; others
//! see their own.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures::{Stream, StreamExt};
use maud::{Markup, html};
use serde::Deserialize;

use super::ConsoleState;
use super::page::{self, Section};
use super::session::Session;
use crate::core::approvals::{ApprovalError, ApprovalRecord, ApprovalState, Authority};

/// Where the page's live updates come from.
const EVENTS: &str = "/console/approvals/events";

/// A decision's form: the CSRF token, and a denial's reason.
#[derive(Debug, Default, Deserialize)]
pub struct Decision {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// GET `/console/approvals`.
pub async fn list(State(state): State<Arc<ConsoleState>>, session: Session) -> Response {
    let records = match state.approvals.list().await {
        Ok(records) => records,
        Err(e) => return unavailable(&session, &e),
    };
    let records: Vec<ApprovalRecord> = records
        .into_iter()
        .filter(|r| sees(&state, &session, r))
        .collect();
    let (pending, decided): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|r| r.state == ApprovalState::Pending);
    let mut rows = Vec::with_capacity(pending.len());
    for record in &pending {
        rows.push((*record, may_decide(&state, &session, record).await));
    }
    let now = execmesh_proto::now_ms();
    let body = html! {
        div data-live=(EVENTS) {
            p #live-note .notice hidden role="status" { "Approvals changed since this page was loaded: reload to see them." }
            h2 { "Pending (" (pending.len()) ")" }
            @if pending.is_empty() {
                p.muted #no-pending { "Nothing waits for a decision." }
            } @else {
                table #pending {
                    thead { tr {
                        th scope="col" { "Request" } th scope="col" { "Requested by" } th scope="col" { "Call" }
                        th scope="col" { "Hosts" } th scope="col" { "Run as" } th scope="col" { "Held by rule" }
                        th scope="col" { "Age" } th scope="col" { "Expires in" } th scope="col" { "Decision" }
                    } }
                    tbody {
                        @for (record, decide) in &rows {
                            tr data-approval=(record.id) {
                                td { a href=(link(&record.id)) { code { (record.id) } } }
                                td { (record.user) }
                                td { (call(record)) br; span.muted { (record.summary) } }
                                td { (record.hosts.join(", ")) }
                                td { (record.run_as.as_deref().unwrap_or("—")) }
                                td { (record.rules.join("; ")) }
                                td { (page::span(now.saturating_sub(record.requested_at_ms))) }
                                td { (page::span(record.expires_at_ms.saturating_sub(now))) }
                                td { (decision(&session, record, decide)) }
                            }
                        }
                    }
                }
            }
            h2 { "Decided" }
            @if decided.is_empty() {
                p.muted { "No decisions yet." }
            } @else {
                table #decided {
                    thead { tr {
                        th scope="col" { "Request" } th scope="col" { "Requested by" } th scope="col" { "Call" }
                        th scope="col" { "State" } th scope="col" { "Decided by" } th scope="col" { "When" }
                        th scope="col" { "Reason" } th scope="col" { "Used" }
                    } }
                    tbody {
                        @for record in &decided {
                            tr data-approval=(record.id) {
                                td { a href=(link(&record.id)) { code { (record.id) } } }
                                td { (record.user) }
                                td { (call(record)) }
                                td { span.state { (record.state) } }
                                td { (record.decided_by.as_deref().unwrap_or("—")) }
                                td { (record.decided_at_ms.map(page::time).unwrap_or_default()) }
                                td { (record.reason.as_deref().unwrap_or("")) }
                                td { (used(record)) }
                            }
                        }
                    }
                }
            }
        }
    };
    page::respond(
        StatusCode::OK,
        page::frame(Section::Approvals, "Approvals", Some(&session), body),
    )
}

/// GET `/console/approvals/{id}`: one request, where the webhook and held calls link to.
pub async fn show(
    State(state): State<Arc<ConsoleState>>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    detail(&state, &session, &id, StatusCode::OK, None).await
}

/// POST `/console/approvals/{id}/approve`.
pub async fn approve(
    State(state): State<Arc<ConsoleState>>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<Decision>,
) -> Response {
    decide(&state, &session, &id, &form, None).await
}

/// POST `/console/approvals/{id}/deny`.
pub async fn deny(
    State(state): State<Arc<ConsoleState>>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<Decision>,
) -> Response {
    decide(&state, &session, &id, &form, Some(&form.reason)).await
}

/// GET `/console/approvals/events`: an event `change` (with the approval's id) whenever a
/// request is made, decided, used or expires, so the page reloads.
pub async fn events(State(state): State<Arc<ConsoleState>>, session: Session) -> Response {
    let changes = match state.approvals.watch().await {
        Ok(changes) => changes,
        Err(e) => return unavailable(&session, &e),
    };
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(changes.filter_map(|change| async move {
            change
                .ok()
                .map(|record| Ok(Event::default().event("change").data(record.id)))
        }));
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Decides `id` as the signed-in person (`deny` `None` approves), then shows the request.
async fn decide(
    state: &ConsoleState,
    session: &Session,
    id: &str,
    form: &Decision,
    deny: Option<&str>,
) -> Response {
    if let Err(refused) = session.check_csrf(state, &form.csrf) {
        return refused;
    }
    let policy = state.policy.current();
    let authority = Authority {
        policy: &policy,
        groups: &state.config.groups,
        mesh: &state.mesh,
    };
    let me = &session.identity;
    let decided = match deny {
        None => state.approvals.approve(id, me, &authority).await,
        Some(reason) => state.approvals.deny(id, me, &authority, reason).await,
    };
    match decided {
        Ok(record) => {
            tracing::info!(approval = %record.id, requester = %record.user, approver = %me.user, state = %record.state, "decided in the console");
            Redirect::to(&link(&record.id)).into_response()
        }
        Err(e) => {
            let action = if deny.is_some() { "deny" } else { "approve" };
            if e.is_refusal() {
                state.audit.admin_denied(
                    me.user.as_str(),
                    &format!("console {action} {id}"),
                    &e.to_string(),
                );
            }
            let status = status_of(&e);
            detail(state, session, id, status, Some(&e.to_string())).await
        }
    }
}

/// The page of one request, with `status` and an error to show above it.
async fn detail(
    state: &ConsoleState,
    session: &Session,
    id: &str,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let record = match state.approvals.get(id).await {
        Ok(record) if sees(state, session, &record) => record,
        Ok(_) => {
            let e = ApprovalError::NotFound { id: id.to_string() };
            return page::error(
                StatusCode::NOT_FOUND,
                "Unknown approval",
                &e.to_string(),
                Some(session),
            );
        }
        Err(e) => {
            return page::error(status_of(&e), "Approval", &e.to_string(), Some(session));
        }
    };
    let decide = if record.state == ApprovalState::Pending {
        may_decide(state, session, &record).await
    } else {
        Err(format!("It is {}.", record.state))
    };
    let now = execmesh_proto::now_ms();
    let arguments = serde_json::to_string_pretty(&record.arguments).unwrap_or_default();
    let body = html! {
        @if let Some(error) = error {
            p.error role="alert" #decision-error { (error) }
        }
        dl.facts #approval data-state=(record.state) {
            dt { "State" } dd { span.state #approval-state { (record.state) } }
            dt { "Requested by" } dd { (record.user) }
            dt { "Call" } dd { (call(&record)) }
            dt { "Summary" } dd { (record.summary) }
            dt { "Hosts" } dd { (record.hosts.join(", ")) }
            dt { "Run as" } dd { (record.run_as.as_deref().unwrap_or("—")) }
            dt { "Held by rule" } dd { (record.rules.join("; ")) }
            dt { "Requested" } dd { (page::time(record.requested_at_ms)) " (" (page::span(now.saturating_sub(record.requested_at_ms))) " ago)" }
            dt { "Expires" } dd { (page::time(record.expires_at_ms)) }
            @if let Some(by) = &record.decided_by {
                dt { "Decided by" } dd #decided-by { (by) " at " (record.decided_at_ms.map(page::time).unwrap_or_default()) }
            }
            @if let Some(reason) = &record.reason {
                dt { "Reason" } dd #reason { (reason) }
            }
            dt { "Used" } dd { (used(&record)) }
            dt { "Policy version" } dd { code { (record.policy_version) } }
            dt { "Request hash" } dd { code { (record.request_hash) } }
        }
        h2 { "Arguments as sent" }
        pre #arguments { (arguments) }
        h2 { "Decision" }
        (decision(session, &record, &decide))
        p { a href="/console/approvals" { "All approvals" } }
    };
    let title = format!("Approval {}", record.id);
    page::respond(
        status,
        page::frame(Section::Approvals, &title, Some(session), body),
    )
}

/// The decision forms when `decide` allows it, else why not.
fn decision(session: &Session, record: &ApprovalRecord, decide: &Result<(), String>) -> Markup {
    match decide {
        Ok(()) => html! {
            form.inline method="post" action={ (link(&record.id)) "/approve" } {
                (page::csrf(session))
                button type="submit" name="approve" { "Approve" }
            }
            form.inline method="post" action={ (link(&record.id)) "/deny" } {
                (page::csrf(session))
                label { "Reason " input type="text" name="reason" required; }
                button type="submit" name="deny" { "Deny" }
            }
        },
        Err(why) => html! { span.muted.cannot-decide { (why) } },
    }
}

/// `Ok` when the signed-in person may decide `record` now, else why not, in their words.
async fn may_decide(
    state: &ConsoleState,
    session: &Session,
    record: &ApprovalRecord,
) -> Result<(), String> {
    if record.user == session.identity.user.as_str() {
        return Err("You requested it: another approver decides.".to_string());
    }
    let policy = state.policy.current();
    let authority = Authority {
        policy: &policy,
        groups: &state.config.groups,
        mesh: &state.mesh,
    };
    authority
        .check(record, &session.identity)
        .await
        .map_err(|e| e.to_string())
}

/// Approvers see every request; others see their own.
fn sees(state: &ConsoleState, session: &Session, record: &ApprovalRecord) -> bool {
    let me = session.identity.user.as_str();
    record.user == me || state.policy.current().is_approver(me)
}

fn link(id: &str) -> String {
    format!("/console/approvals/{id}")
}

fn call(record: &ApprovalRecord) -> Markup {
    html! {
        code { (record.tool) @if let Some(action) = &record.action { " " (action) } }
    }
}

fn used(record: &ApprovalRecord) -> String {
    match (record.state, record.used_at_ms) {
        (_, Some(at)) => format!("used at {}", page::time(at)),
        (ApprovalState::Approved, None) => "not yet".to_string(),
        _ => "no".to_string(),
    }
}

fn status_of(e: &ApprovalError) -> StatusCode {
    match e {
        ApprovalError::NotFound { .. } => StatusCode::NOT_FOUND,
        ApprovalError::InvalidId(_) | ApprovalError::MissingReason => StatusCode::BAD_REQUEST,
        ApprovalError::AlreadyDecided { .. } | ApprovalError::Expired { .. } => {
            StatusCode::CONFLICT
        }
        ApprovalError::Mesh(_) => StatusCode::SERVICE_UNAVAILABLE,
        ApprovalError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ApprovalError::SelfApproval { .. }
        | ApprovalError::NoApprovers { .. }
        | ApprovalError::NotApprover { .. }
        | ApprovalError::ApproverTier { .. }
        | ApprovalError::ApproverReach { .. } => StatusCode::FORBIDDEN,
    }
}

fn unavailable(session: &Session, e: &ApprovalError) -> Response {
    page::error(
        status_of(e),
        "Approvals unavailable",
        &e.to_string(),
        Some(session),
    )
}
