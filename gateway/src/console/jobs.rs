//! The Jobs pages: running and recent jobs (filtered by user, host and state), and a job's page
//! with its status, trace id and output: a page of it from a cursor (the last lines by default;
//! the `job` tool's cursors open here too), links to the start and the next page, the rest
//! followed live as server-sent events, and a kill button.
//!
//! Who sees which jobs is the core's rule (`JobAccess`: your own, everyone's with operator
//! rights, audited per use); killing also needs the tier the `job` tool's kill needs, checked
//! here before anything is sent and again by the agent.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use execmesh_proto::{Token, pb};

use super::ConsoleState;
use super::login::Csrf;
use super::page::{self, Section};
use super::session::Session;
use crate::core::jobs::access::{JobAccess, Via};
use crate::core::jobs::follow::{Followed, follow};
use crate::core::jobs::state;
use crate::core::paging::{self, Cursor, PageLimits};
use crate::core::tier;

/// Most jobs the list shows.
const LIST_MAX: usize = 200;
/// Lines a job's page starts with when no cursor is given: the tail.
const TAIL_LINES: u64 = 200;

/// The list's filters.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    #[serde(default)]
    user: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    state: String,
}

/// Where a job's page starts.
#[derive(Debug, Default, Deserialize)]
pub struct At {
    #[serde(default)]
    cursor: String,
}

/// GET `/console/jobs`.
pub async fn list(
    State(state): State<Arc<ConsoleState>>,
    session: Session,
    Query(filter): Query<Filter>,
) -> Response {
    let access = access(&state, &session);
    let mesh = &state.mesh;
    let mut jobs = match mesh.jobs().await {
        Ok(jobs) => jobs,
        Err(e) => return unavailable(&session, &e.to_string()),
    };
    let (user, host) = (filter.user.trim(), filter.host.trim());
    jobs.retain(|j| {
        access.sees(j) && (user.is_empty() || j.user == user) && (host.is_empty() || j.host == host)
    });
    let mut jobs = match state::settle_all(mesh, &state.audit, jobs).await {
        Ok(jobs) => jobs,
        Err(e) => return unavailable(&session, &e.to_string()),
    };
    let wanted = filter.state.trim().to_ascii_lowercase();
    if !wanted.is_empty() {
        jobs.retain(|j| state_name(j) == wanted);
    }
    jobs.sort_by(|a, b| {
        b.started_at_ms
            .cmp(&a.started_at_ms)
            .then_with(|| a.host.cmp(&b.host))
    });
    let truncated = jobs.len() > LIST_MAX;
    jobs.truncate(LIST_MAX);
    let redactor = state.audit.redactor();
    jobs.iter_mut().for_each(|job| redactor.job_status(job));
    access.audit_use(
        &state.audit,
        "",
        "console jobs",
        Via::Console,
        "list",
        &jobs,
    );
    let now = execmesh_proto::now_ms();
    let states = [
        "",
        "running",
        "exited",
        "killed",
        "timed_out",
        "lost",
        "failed",
    ];
    let body = html! {
        form.inline method="get" action="/console/jobs" role="search" {
            label { "User " input type="text" name="user" value=(user) size="12"; }
            label { "Host " input type="text" name="host" value=(host) size="16"; }
            label { "State "
                select name="state" {
                    @for s in states {
                        option value=(s) selected[s == wanted] { @if s.is_empty() { "any" } @else { (s) } }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        @if jobs.is_empty() {
            p.muted #no-jobs { "No jobs match." }
        } @else {
            table #jobs {
                thead { tr {
                    th scope="col" { "Job" } th scope="col" { "Host" } th scope="col" { "User" }
                    th scope="col" { "Command" } th scope="col" { "State" } th scope="col" { "Started" }
                    th scope="col" { "Duration" }
                } }
                tbody {
                    @for job in &jobs {
                        tr data-job=(job.job_id) {
                            td { a href=(link(job)) { code { (job.job_id) } } }
                            td { (job.host) }
                            td { (job.user) }
                            td { code { (job.cmd) } }
                            td { span.state { (state_name(job)) } }
                            td { (page::time(job.started_at_ms)) }
                            td { (page::span(duration_ms(job, now))) }
                        }
                    }
                }
            }
            @if truncated { p.muted { "Showing the newest " (LIST_MAX) "; filter to see others." } }
        }
    };
    page::respond(
        StatusCode::OK,
        page::frame(Section::Jobs, "Jobs", Some(&session), body),
    )
}

/// GET `/console/jobs/{host}/{job}`.
pub async fn show(
    State(state): State<Arc<ConsoleState>>,
    session: Session,
    Path((host, job)): Path<(String, String)>,
    Query(at): Query<At>,
) -> Response {
    let access = access(&state, &session);
    let (status, host, job) = match find(&state, &session, &access, &host, &job).await {
        Ok(found) => found,
        Err(refused) => return refused,
    };
    let mesh = &state.mesh;
    let cursor = if at.cursor.is_empty() {
        match paging::tail(mesh, host.clone(), job.clone(), TAIL_LINES).await {
            Ok(cursor) => cursor,
            Err(e) => return unavailable(&session, &e.to_string()),
        }
    } else {
        match open(&state, &session, &at.cursor, &host, &job) {
            Ok(cursor) => cursor,
            Err(refused) => return refused,
        }
    };
    let page = match paging::read(mesh, cursor, limits(&state)).await {
        Ok(page) => page,
        Err(e) => return unavailable(&session, &e.to_string()),
    };
    access.audit_use(
        &state.audit,
        "",
        "console job",
        Via::Console,
        "poll",
        [&status],
    );
    let user = &session.identity.user;
    let seal = |cursor: &Cursor| state.cursors.seal(cursor, user);
    let base = link(&status);
    let start = format!(
        "{base}?cursor={}",
        seal(&Cursor::start(host.clone(), job.clone()))
    );
    let next = format!("{base}?cursor={}", seal(&page.next));
    let running = status.state() == pb::JobState::Running;
    // Followed live from where this page ends, when it ends at what is stored so far.
    let follow = (running && page.caught_up && page.exit.is_none())
        .then(|| format!("{base}/output?cursor={}", seal(&page.next)));
    let may_kill = running && may_kill(&session).is_ok();
    let now = execmesh_proto::now_ms();
    let body = html! {
        dl.facts #job {
            dt { "State" } dd #job-state { (summary(&status)) }
            dt { "Host" } dd { (status.host) }
            dt { "User" } dd { (status.user) @if !status.run_as.is_empty() { " (runs as " (status.run_as) ")" } }
            dt { "Command" } dd { code { (status.cmd) } }
            @if !status.cwd.is_empty() { dt { "Directory" } dd { code { (status.cwd) } } }
            dt { "Started" } dd { (page::time(status.started_at_ms)) }
            dt { "Duration" } dd { (page::span(duration_ms(&status, now))) }
            dt { "Output" } dd { (status.lines) " lines, " (status.bytes) " bytes" }
            dt { "Trace id" } dd { code #trace-id { (status.trace_id) } }
        }
        @if may_kill {
            form #kill method="post" action={ (base) "/kill" } {
                (page::csrf(&session))
                button type="submit" { "Kill this job" }
            }
        }
        h2 { "Output" }
        p {
            "Lines " (page.first_line + 1) "–" (page.first_line + page.lines as u64)
            @if page.evicted { " (earlier output is no longer stored)" }
            " · " a href=(start) #from-start { "From the start" }
            @if !page.caught_up { " · " a href=(next) #next-page rel="next" { "Next page" } }
            " · " a href=(base) { "Last lines" }
        }
        @match &follow {
            Some(events) => {
                pre.output #output data-follow=(events) aria-live="polite" { (page.text) }
            }
            None => {
                pre.output #output { (page.text) }
            }
        }
        p { a href="/console/jobs" { "All jobs" } }
    };
    let title = format!("Job {}", status.job_id);
    page::respond(
        StatusCode::OK,
        page::frame(Section::Jobs, &title, Some(&session), body),
    )
}

/// GET `/console/jobs/{host}/{job}/output?cursor=…`: the output from the cursor on, as events
/// `output` (`{"text": …}`) until one `exit` (`{"summary": …}`).
pub async fn output(
    State(state): State<Arc<ConsoleState>>,
    session: Session,
    Path((host, job)): Path<(String, String)>,
    Query(at): Query<At>,
) -> Response {
    let access = access(&state, &session);
    // Found first: a job the person may not see is unknown, whatever the cursor says.
    let (_, host, job) = match find(&state, &session, &access, &host, &job).await {
        Ok(found) => found,
        Err(refused) => return refused,
    };
    let cursor = match open(&state, &session, &at.cursor, &host, &job) {
        Ok(cursor) => cursor,
        Err(refused) => return refused,
    };
    let (tx, rx) = mpsc::channel(4);
    let (mesh, audit, limits) = (state.mesh.clone(), state.audit.clone(), limits(&state));
    // Ends when the job does, or when the browser goes away (the receiver is dropped).
    tokio::spawn(async move { follow(&mesh, &audit, cursor, limits, tx).await });
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await? {
            Ok(Followed::Page(page)) => Event::default()
                .event("output")
                .data(json!({"text": page.text}).to_string()),
            Ok(Followed::End { status, .. }) => Event::default()
                .event("exit")
                .data(json!({"summary": summary(&status)}).to_string()),
            Err(e) => Event::default()
                .event("exit")
                .data(json!({"summary": format!("output unavailable: {e}")}).to_string()),
        };
        Some((Ok::<_, Infallible>(event), rx))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// POST `/console/jobs/{host}/{job}/kill`.
pub async fn kill(
    State(state): State<Arc<ConsoleState>>,
    session: Session,
    Path((host, job)): Path<(String, String)>,
    Form(form): Form<Csrf>,
) -> Response {
    if let Err(refused) = session.check_csrf(&state, &form.csrf) {
        return refused;
    }
    let access = access(&state, &session);
    let (status, _, _) = match find(&state, &session, &access, &host, &job).await {
        Ok(found) => found,
        Err(refused) => return refused,
    };
    let me = &session.identity;
    if let Err(why) = may_kill(&session) {
        state.audit.admin_denied(
            me.user.as_str(),
            &format!("console kill {host}/{job}"),
            &why,
        );
        return page::error(StatusCode::FORBIDDEN, "Kill refused", &why, Some(&session));
    }
    if status.state() != pb::JobState::Running {
        return Redirect::to(&link(&status)).into_response();
    }
    let killed = crate::core::jobs::kill_audited(
        &state.mesh,
        &state.audit,
        state.config.request_timeout,
        me,
        &access,
        Via::Console,
        "console kill",
        &status,
        0,
    )
    .await;
    match killed {
        Ok(_) => Redirect::to(&link(&status)).into_response(),
        Err(e) => page::error(
            StatusCode::BAD_GATEWAY,
            "Kill failed",
            &e.to_string(),
            Some(&session),
        ),
    }
}

/// `Ok` when the signed-in person acts with the tier a kill needs, else why not.
fn may_kill(session: &Session) -> Result<(), String> {
    let needed = tier::required("job", Some("kill"));
    let have = session.identity.tier;
    if have < needed {
        return Err(format!(
            "{} acts with tier {have}; killing a job needs tier {needed}",
            session.identity.user
        ));
    }
    Ok(())
}

/// The job `job` on `host`, settled, with its ids, if the signed-in person may see it;
/// otherwise 404 in the same words as for ids no host knows.
async fn find(
    state: &ConsoleState,
    session: &Session,
    access: &JobAccess,
    host: &str,
    job: &str,
) -> Result<(pb::JobStatus, Token, Token), Response> {
    let unknown = || {
        page::error(
            StatusCode::NOT_FOUND,
            "Unknown job",
            &format!("Host {host} has no job `{job}` that you may see."),
            Some(session),
        )
    };
    let (Ok(host_id), Ok(job_id)) = (Token::parse("host id", host), Token::parse("job id", job))
    else {
        return Err(unknown());
    };
    let status = match state.mesh.job_status(&host_id, &job_id).await {
        Ok(Some(status)) if access.sees(&status) => status,
        Ok(_) => return Err(unknown()),
        Err(e) => return Err(unavailable(session, &e.to_string())),
    };
    let mut status = state::settle(&state.mesh, &state.audit, status)
        .await
        .map_err(|e| unavailable(session, &e.to_string()))?;
    state.audit.redactor().job_status(&mut status);
    Ok((status, host_id, job_id))
}

/// Opens a cursor sealed for the signed-in person, which must point into `host`/`job`.
fn open(
    state: &ConsoleState,
    session: &Session,
    text: &str,
    host: &Token,
    job: &Token,
) -> Result<Cursor, Response> {
    let bad = |why: String| page::error(StatusCode::BAD_REQUEST, "Bad cursor", &why, Some(session));
    let cursor = state
        .cursors
        .open(text, &session.identity.user)
        .map_err(|e| bad(format!("This cursor cannot be used: {e}.")))?;
    if cursor.host != *host || cursor.job != *job {
        return Err(bad(format!(
            "This cursor belongs to job {} on {}, not to this job.",
            cursor.job, cursor.host
        )));
    }
    Ok(cursor)
}

fn access(state: &ConsoleState, session: &Session) -> JobAccess {
    JobAccess::new(&state.policy.current(), &session.identity.user)
}

fn limits(state: &ConsoleState) -> PageLimits {
    PageLimits {
        max_lines: state.config.page_max_lines,
        max_bytes: state.config.page_max_bytes,
        max_line_bytes: state.config.max_line_bytes,
    }
}

fn link(status: &pb::JobStatus) -> String {
    format!("/console/jobs/{}/{}", status.host, status.job_id)
}

/// The job's state as one lower-case word (`running`, `exited`, `timed_out`, …).
fn state_name(status: &pb::JobStatus) -> String {
    status
        .state()
        .as_str_name()
        .trim_start_matches("JOB_STATE_")
        .to_ascii_lowercase()
}

/// How the job stands, in words: `running`, `exited 0`, `killed (SIGTERM)`, `lost: …`.
fn summary(status: &pb::JobStatus) -> String {
    let mut text = state_name(status);
    if let Some(code) = status.exit_code {
        text.push_str(&format!(" {code}"));
    }
    if !status.signal.is_empty() {
        text.push_str(&format!(" ({})", status.signal));
    }
    if !status.reason.is_empty() {
        text.push_str(&format!(": {}", status.reason));
    }
    text
}

fn duration_ms(status: &pb::JobStatus, now: u64) -> u64 {
    let end = if status.ended_at_ms > 0 {
        status.ended_at_ms
    } else {
        now
    };
    end.saturating_sub(status.started_at_ms)
}

fn unavailable(session: &Session, why: &str) -> Response {
    page::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Jobs unavailable",
        &format!("The mesh cannot be read right now: {why}"),
        Some(session),
    )
}
