//! The Audit page: the audit trail searched by time, user, host, tool, job and trace (newest
//! first, paged), exported as JSONL with the same filters, and the hash chain checked by the
//! audit-sink. Operators and approvers see everyone's events; others see their own.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use execmesh_proto::pb;
use execmeshctl::cli::AuditFilters;

use super::ConsoleState;
use super::page::{self, Section};
use super::session::Session;
use crate::core::audit_query::{self, AuditQueryError};

/// Records on one page.
const PAGE: u32 = 100;
/// Records one export asks the sink for at a time.
const EXPORT_PAGE: u32 = 500;

/// The search form (times: a duration back, `30m`, `7d`, or RFC 3339).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Search {
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    tool: String,
    #[serde(default)]
    job: String,
    #[serde(default)]
    trace: String,
    /// Where the page starts (the previous page's `next_cursor`).
    #[serde(default)]
    cursor: String,
}

/// GET `/console/audit`.
pub async fn list(
    State(state): State<Arc<ConsoleState>>,
    session: Session,
    Query(search): Query<Search>,
) -> Response {
    let (query, own_only) = match query(&state, &session, &search) {
        Ok(query) => query,
        Err(refused) => return refused,
    };
    let query = pb::AuditQuery {
        cursor: search.cursor.trim().to_string(),
        limit: PAGE,
        newest_first: true,
        ..query
    };
    let found = audit_query::page(&state.mesh, &query, state.config.request_timeout).await;
    let (status, records, next, error) = match found {
        Ok(page) => (StatusCode::OK, page.records, page.next_cursor, None),
        Err(e) => (
            status_of(&e),
            Vec::new(),
            String::new(),
            Some(e.to_string()),
        ),
    };
    let filters = filter_query(&search);
    let body = html! {
        form.inline method="get" action="/console/audit" role="search" {
            label { "Since " input type="text" name="since" value=(search.since) size="10" placeholder="1h"; }
            label { "Until " input type="text" name="until" value=(search.until) size="10"; }
            @if !own_only {
                label { "User " input type="text" name="user" value=(search.user) size="10"; }
            }
            label { "Host " input type="text" name="host" value=(search.host) size="12"; }
            label { "Tool " input type="text" name="tool" value=(search.tool) size="8"; }
            label { "Job " input type="text" name="job" value=(search.job) size="16"; }
            label { "Trace " input #trace type="text" name="trace" value=(search.trace) size="34"; }
            button type="submit" { "Search" }
        }
        p {
            @if own_only { "Your own events. " }
            a href={ "/console/audit/export?" (filters) } #export { "Export these as JSONL" }
            " · " a href="/console/audit/chain" #chain { "Check the hash chain" }
        }
        @if let Some(error) = &error {
            p.error role="alert" #audit-error { (error) }
        }
        @if records.is_empty() && error.is_none() {
            p.muted #no-records { "No events match." }
        } @else if !records.is_empty() {
            table #audit {
                thead { tr {
                    th scope="col" { "Seq" } th scope="col" { "Time" } th scope="col" { "Event" }
                    th scope="col" { "User" } th scope="col" { "Host" } th scope="col" { "Job" }
                    th scope="col" { "Tool" } th scope="col" { "Outcome" } th scope="col" { "Trace" }
                    th scope="col" { "Detail" }
                } }
                tbody {
                    @for record in &records {
                        @let event = record.event.clone().unwrap_or_default();
                        tr data-seq=(record.seq) {
                            td { (record.seq) }
                            td { (page::time(event.time_ms)) }
                            td { (record.kind) }
                            td { (event.user) }
                            td { (event.host) }
                            td { @if !event.host.is_empty() && !event.job_id.is_empty() {
                                a href={ "/console/jobs/" (event.host) "/" (event.job_id) } { code { (event.job_id) } }
                            } @else { code { (event.job_id) } } }
                            td { (event.tool) }
                            td { (event.outcome) }
                            td { @if !event.trace_id.is_empty() {
                                a href={ "/console/audit?trace=" (event.trace_id) } { code { (event.trace_id) } }
                            } }
                            td { (execmeshctl::audit::summary(event.body.as_ref())) }
                        }
                    }
                }
            }
            @if !next.is_empty() {
                p { a #older rel="next" href={ "/console/audit?" (filters) "&cursor=" (next) } { "Older events" } }
            }
        }
    };
    page::respond(
        status,
        page::frame(Section::Audit, "Audit", Some(&session), body),
    )
}

/// GET `/console/audit/export`: every matching record (oldest first) as one JSON object a line,
/// the shape `execmeshctl audit export` and `execmesh-audit-sink export` write.
pub async fn export(
    State(state): State<Arc<ConsoleState>>,
    session: Session,
    Query(search): Query<Search>,
) -> Response {
    let (query, _) = match query(&state, &session, &search) {
        Ok(query) => query,
        Err(refused) => return refused,
    };
    let query = pb::AuditQuery {
        limit: EXPORT_PAGE,
        ..query
    };
    // The first page is read before the answer starts, so a sink that is down is an error
    // page rather than a truncated file.
    let timeout = state.config.request_timeout;
    let first = match audit_query::page(&state.mesh, &query, timeout).await {
        Ok(page) => page,
        Err(e) => {
            return page::error(
                status_of(&e),
                "Export failed",
                &e.to_string(),
                Some(&session),
            );
        }
    };
    let mesh = state.mesh.clone();
    let pages = futures::stream::unfold(
        (Some(first), query, mesh),
        move |(page, mut query, mesh)| async move {
            let page = page?;
            let mut text = String::new();
            for record in &page.records {
                text.push_str(&execmeshctl::audit::record_json(record).to_string());
                text.push('\n');
            }
            // A page without records cannot advance the cursor: stop there.
            let next = if page.next_cursor.is_empty() || page.records.is_empty() {
                None
            } else {
                query.cursor = page.next_cursor;
                match audit_query::page(&mesh, &query, timeout).await {
                    Ok(page) => Some(page),
                    Err(e) => {
                        tracing::warn!(error = %e, "an audit export stopped early");
                        None
                    }
                }
            };
            Some((Ok::<_, std::convert::Infallible>(text), (next, query, mesh)))
        },
    );
    let mut response = Body::from_stream(pages).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"execmesh-audit.jsonl\""),
    );
    response
}

/// GET `/console/audit/chain`: the audit-sink recomputes the hash chain.
pub async fn chain(State(state): State<Arc<ConsoleState>>, session: Session) -> Response {
    let checked = audit_query::verify(&state.mesh, &pb::AuditVerifyRequest {}).await;
    let (status, body) = match checked {
        Ok(reply) => (
            StatusCode::OK,
            html! {
                @if reply.ok {
                    p.notice #chain-state role="status" { "Intact: every one of the " (reply.records) " records chains to the one before it." }
                } @else {
                    p.error #chain-state role="alert" { "Broken at record " (reply.first_bad_seq) ": " (reply.problem) }
                }
                dl.facts {
                    dt { "Records" } dd { (reply.records) }
                    dt { "Head" } dd { (reply.head_seq) " · " code { (reply.head_hash) } }
                    dt { "Events without a valid signature" } dd { (reply.unsigned_events) }
                }
                p { a href="/console/audit" { "Back to the audit trail" } }
            },
        ),
        Err(e) => (
            status_of(&e),
            html! { p.error #chain-state role="alert" { (e) } },
        ),
    };
    page::respond(
        status,
        page::frame(Section::Audit, "Audit chain", Some(&session), body),
    )
}

/// The query for `search`, and whether it is limited to the signed-in person's own events.
fn query(
    state: &ConsoleState,
    session: &Session,
    search: &Search,
) -> Result<(pb::AuditQuery, bool), Response> {
    let me = session.identity.user.as_str();
    let policy = state.policy.current();
    let own_only = !(policy.is_operator(me) || policy.is_approver(me));
    let given = |text: &str| Some(text.trim().to_string()).filter(|t| !t.is_empty());
    let filters = AuditFilters {
        since: given(&search.since),
        until: given(&search.until),
        user: if own_only {
            Some(me.to_string())
        } else {
            given(&search.user)
        },
        host: given(&search.host),
        job: given(&search.job),
        trace: given(&search.trace),
        tool: given(&search.tool),
        kind: None,
        outcome: None,
    };
    let query = execmeshctl::audit::query(&filters, execmesh_proto::now_ms()).map_err(|e| {
        page::error(
            StatusCode::BAD_REQUEST,
            "Bad search",
            &e.to_string(),
            Some(session),
        )
    })?;
    Ok((query, own_only))
}

/// The filters of `search` as a query string (without the cursor).
fn filter_query(search: &Search) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in [
        ("since", &search.since),
        ("until", &search.until),
        ("user", &search.user),
        ("host", &search.host),
        ("tool", &search.tool),
        ("job", &search.job),
        ("trace", &search.trace),
    ] {
        if !value.trim().is_empty() {
            query.append_pair(key, value.trim());
        }
    }
    query.finish()
}

fn status_of(e: &AuditQueryError) -> StatusCode {
    match e {
        AuditQueryError::Invalid(_) => StatusCode::BAD_REQUEST,
        AuditQueryError::TimedOut(_) => StatusCode::GATEWAY_TIMEOUT,
        AuditQueryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        AuditQueryError::Internal(_) => StatusCode::BAD_GATEWAY,
    }
}
