//! `job`: page a job's output (forward with a cursor, or its tail), list jobs, wait for one, kill one.

use std::time::Duration;

use rmcp::model::{CallToolResult, Tool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use execmesh_proto::redact::Redactor;
use execmesh_proto::{Token, pb};

use super::{Call, McpState, seconds, structured};
use crate::core::auth::Identity;
use crate::core::error::ToolError;
use crate::core::jobs::access::{JobAccess, Via};
use crate::core::jobs::state;
use crate::core::paging::{self, Cursor, CursorError, Page, PageLimits};
use crate::core::trace::TraceContext;

/// How often `wait` checks that the job's host still heartbeats.
const ORPHAN_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobAction {
    /// Read a page of output: from the start, from `cursor`, or the last `tail` lines.
    Poll,
    /// List your recent jobs, newest first (an operator: also other users', see `user`).
    List,
    /// Wait until the job ends (or `timeout` passes) and show how it ended.
    Wait,
    /// Stop the job: SIGTERM to its process group, SIGKILL after a grace period.
    Kill,
}

// === impl JobAction ===

impl JobAction {
    /// The action's name, as the schema and the tier table write it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobAction::Poll => "poll",
            JobAction::List => "list",
            JobAction::Wait => "wait",
            JobAction::Kill => "kill",
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobParams {
    #[serde(deserialize_with = "super::strict::name")]
    pub action: JobAction,
    /// The job id (as returned by `bash`). Not needed for `poll` with a cursor, nor for `list`.
    #[serde(default)]
    pub job: Option<String>,
    /// `poll`: the `next_cursor` of the previous page, passed back unchanged.
    #[serde(default)]
    pub cursor: Option<String>,
    /// `poll`: read the last N lines instead of from the start.
    #[serde(default)]
    pub tail: Option<u64>,
    /// `poll`: most lines in the page (default 1000, at most 10000).
    #[serde(default)]
    pub max_lines: Option<usize>,
    /// `poll`: most bytes in the page (default 65536, at most 1048576).
    #[serde(default)]
    pub max_bytes: Option<usize>,
    /// `wait`: seconds to wait at most (default 30, at most 600).
    #[serde(default)]
    pub timeout: Option<f64>,
    /// The host of the job, for a fan-out group id (which names one job per host); `list`: only
    /// jobs on this host.
    #[serde(default)]
    pub host: Option<String>,
    /// `list`: most jobs to return (default 20, at most 200).
    #[serde(default)]
    pub limit: Option<usize>,
    /// `list`: whose jobs (default: yours). Another user's name, or `*` for everyone's, needs
    /// operator rights in the policy; other users' jobs are otherwise unknown to you.
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct JobResult {
    pub action: String,
    /// The job's status (poll, wait, kill).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobView>,
    /// Output lines of this page (poll, wait).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Line number (from 0) of the first line in `output`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_line: Option<u64>,
    /// Number of lines in `output`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<usize>,
    /// Pass back as `cursor` to read on. Absent once the whole output was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// True once the job ended and its whole output was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<bool>,
    /// Jobs (list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs: Option<Vec<JobView>>,
}

/// A job's status as tools show it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobView {
    pub job: String,
    pub host: String,
    /// running, exited, timed_out, killed, lost or failed.
    #[serde(serialize_with = "serialize_state")]
    #[schemars(with = "String")]
    pub state: pb::JobState,
    pub user: String,
    pub cmd: String,
    pub title: String,
    /// Process id of the job's shell, which leads the job's process group.
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    /// Signal that ended the job, e.g. SIGKILL.
    pub signal: Option<String>,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub duration_ms: u64,
    /// Output lines and bytes stored so far (final once the job ended; while it runs, updated
    /// every few seconds when they change).
    pub lines: u64,
    pub bytes: u64,
    /// Output bytes dropped past the per-job cap.
    pub dropped_bytes: u64,
    /// When the job last wrote output (unix ms), if it has.
    pub last_output_at_ms: Option<u64>,
    pub reason: Option<String>,
    pub trace_id: String,
}

pub fn definition() -> Tool {
    super::tool::<JobParams, JobResult>(
        "job",
        "Follow jobs",
        "Follow jobs started by `bash`. action=poll reads a page of output (pass `next_cursor` \
         back as `cursor` to continue; `tail: N` reads the last N lines), list shows your recent \
         jobs, wait blocks until a job ends, kill stops one (SIGTERM to its process group, then \
         SIGKILL). Jobs are their user's: other users' jobs are unknown to you unless the \
         policy makes you an operator (then `user` in list). Confirm with the user before \
         killing a job.",
        super::acts(false),
    )
}

pub async fn call(call: &Call<'_>, params: JobParams) -> Result<CallToolResult, ToolError> {
    // Decided once per call, from the policy in force now.
    let access = JobAccess::new(&call.state.policy.current(), &call.identity.user);
    match params.action {
        JobAction::Poll => poll(call, &access, params).await,
        JobAction::List => list(call, &access, params).await,
        JobAction::Wait => wait(call, &access, params).await,
        JobAction::Kill => kill(call, &access, params).await,
    }
}

/// Records a use of operator rights on `jobs` (nothing for the caller's own).
fn audit_use<'a>(
    call: &Call<'_>,
    access: &JobAccess,
    action: JobAction,
    jobs: impl IntoIterator<Item = &'a pb::JobStatus>,
) {
    access.audit_use(
        &call.state.audit,
        &call.trace.trace_id,
        "job",
        Via::Mcp,
        action.as_str(),
        jobs,
    );
}

async fn poll(
    call: &Call<'_>,
    access: &JobAccess,
    params: JobParams,
) -> Result<CallToolResult, ToolError> {
    let limits = limits(call, &params)?;
    let (cursor, status) = match &params.cursor {
        Some(text) => {
            // Sealed for this caller: another user's cursor, or one moved to another job,
            // does not open.
            let cursor = call.state.cursors.open(text, &call.identity.user)?;
            if let Some(job) = &params.job
                && job != cursor.job.as_str()
            {
                return Err(CursorError::OtherJob {
                    cursor_job: cursor.job,
                    job: Token::parse("job id", job)
                        .map_err(|e| ToolError::invalid("job", e.to_string()))?,
                }
                .into());
            }
            // Rights are those of now: an operator whose rights were withdrawn since the
            // cursor was issued is told the job is unknown.
            let status = call
                .state
                .mesh
                .job_status(&cursor.host, &cursor.job)
                .await?
                .filter(|s| access.sees(s))
                .ok_or_else(|| ToolError::UnknownJob(cursor.job.to_string()))?;
            super::reach::check(call, &cursor.host).await?;
            (cursor, settle(call, status).await?)
        }
        None => {
            let (status, host, job) = find_reachable(call, access, &params, "poll").await?;
            let cursor = match params.tail {
                Some(n) => paging::tail(&call.state.mesh, host, job, n).await?,
                None => Cursor::start(host, job),
            };
            (cursor, status)
        }
    };
    audit_use(call, access, JobAction::Poll, [&status]);
    let page = paging::read(&call.state.mesh, cursor, limits).await?;
    // A job marked lost whose agent heartbeats again goes on writing: not the end yet.
    let more = page.caught_up
        && page.exit.is_none()
        && state::may_write_more(&call.state.mesh, &status).await?;
    render_page(call, "poll", status, page, more)
}

/// Whose jobs a `list` shows.
enum Whose<'a> {
    Mine,
    User(&'a str),
    Everyone,
}

async fn list(
    call: &Call<'_>,
    access: &JobAccess,
    params: JobParams,
) -> Result<CallToolResult, ToolError> {
    let whose = match params.user.as_deref().map(str::trim) {
        None => Whose::Mine,
        Some(user) if user == call.identity.user.as_str() => Whose::Mine,
        Some("*") => Whose::Everyone,
        Some(user) => Whose::User(user),
    };
    if !matches!(whose, Whose::Mine) && !access.is_operator() {
        return Err(ToolError::NotOperator {
            action: "list other users' jobs".into(),
        });
    }
    let wanted = |j: &pb::JobStatus| match whose {
        Whose::Mine => access.owns(j),
        Whose::User(user) => j.user == user,
        Whose::Everyone => access.sees(j),
    };
    if let Some(group) = group_of(call, access, params.job.as_deref()).await? {
        let group: Vec<pb::JobStatus> = group
            .into_iter()
            .filter(|s| params.host.as_deref().is_none_or(|h| s.host == h))
            .filter(|s| params.user.is_none() || wanted(s))
            .collect();
        audit_use(call, access, JobAction::List, &group);
        return render_group(call, "list", group);
    }
    let limit = params.limit.unwrap_or(20).clamp(1, 200);
    let mut jobs: Vec<pb::JobStatus> = call
        .state
        .mesh
        .jobs()
        .await?
        .into_iter()
        .filter(wanted)
        .filter(|j| params.host.as_deref().is_none_or(|h| j.host == h))
        .collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(j.started_at_ms));
    let total = jobs.len();
    jobs.truncate(limit);
    // Shown by the rule every reader applies: running on a host that stopped heartbeating is lost.
    let jobs = state::settle_all(&call.state.mesh, &call.state.audit, jobs).await?;
    audit_use(call, access, JobAction::List, &jobs);
    let jobs: Vec<JobView> = jobs.iter().map(view).collect();
    let of = match whose {
        Whose::Mine => "your".to_string(),
        Whose::User(user) => format!("{user}'s"),
        Whose::Everyone => "everyone's".to_string(),
    };
    let mut text = format!("{} of {of} {total} job(s), newest first\n", jobs.len());
    for j in &jobs {
        let owner = if j.user == call.identity.user.as_str() {
            String::new()
        } else {
            format!(" ({})", j.user)
        };
        text.push_str(&format!(
            "- {} on {}{owner} [{}] {}\n",
            j.job,
            j.host,
            outcome(j),
            clip(&j.cmd, 80)
        ));
    }
    let result = JobResult {
        action: "list".into(),
        jobs: Some(jobs),
        ..Default::default()
    };
    structured(&result, vec![text])
}

async fn wait(
    call: &Call<'_>,
    access: &JobAccess,
    params: JobParams,
) -> Result<CallToolResult, ToolError> {
    let timeout = seconds("job", "timeout", params.timeout.unwrap_or(30.0), 600.0)?;
    let (mut status, host, job) = find_reachable(call, access, &params, "wait").await?;
    audit_use(call, access, JobAction::Wait, [&status]);
    // Wait in slices so a job whose agent died (no heartbeat) is noticed and reported lost
    // instead of being waited on until the timeout.
    let deadline = tokio::time::Instant::now() + timeout;
    while status.state() == pb::JobState::Running {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let slice = left.min(ORPHAN_CHECK);
        if let Some(newer) = call.state.mesh.wait_job(&host, &job, slice).await? {
            status = newer;
        }
        status = settle(call, status).await?;
    }
    let view = view(&status);
    let mut text = if status.state() == pb::JobState::Running {
        format!(
            "job {} is still running on {} after waiting {:.0} s; wait again, poll its output, or kill it",
            view.job,
            view.host,
            timeout.as_secs_f64()
        )
    } else {
        format!("job {} on {}: {}", view.job, view.host, outcome(&view))
    };
    // The last lines are what a caller usually wants to see next.
    let cursor = paging::tail(&call.state.mesh, host, job, 20).await?;
    let page = paging::read(&call.state.mesh, cursor, limits(call, &params)?).await?;
    if !page.text.is_empty() {
        text.push_str(&format!("\nlast {} line(s):\n{}", page.lines, page.text));
    }
    let result = JobResult {
        action: "wait".into(),
        job: Some(view),
        output: Some(page.text),
        first_line: Some(page.first_line),
        lines: Some(page.lines),
        ..Default::default()
    };
    structured(&result, vec![text])
}

async fn kill(
    call: &Call<'_>,
    access: &JobAccess,
    params: JobParams,
) -> Result<CallToolResult, ToolError> {
    if params.host.is_none()
        && let Some(group) = group_of(call, access, params.job.as_deref()).await?
    {
        return kill_group(call, access, group).await;
    }
    let (status, host, job) = find_reachable(call, access, &params, "kill").await?;
    crate::core::approvals::gate_hosts(&call.gate(), Some("kill"), &[&host], || {
        format!("job kill {job} on {host}")
    })
    .await?;
    audit_use(call, access, JobAction::Kill, [&status]);
    let status = if status.state() == pb::JobState::Running {
        kill_on(call.state, call.identity, call.trace, &host, &job).await?
    } else {
        status
    };
    let view = view(&status);
    let text = format!("job {} on {}: {}", view.job, view.host, outcome(&view));
    let result = JobResult {
        action: "kill".into(),
        job: Some(view),
        ..Default::default()
    };
    structured(&result, vec![text])
}

/// Asks `host`'s agent to kill `job` (SIGTERM to its process group, SIGKILL after the grace
/// period) and returns the status it reports.
pub async fn kill_on(
    state: &McpState,
    identity: &Identity,
    trace: &TraceContext,
    host: &Token,
    job: &Token,
) -> Result<pb::JobStatus, ToolError> {
    let timeout = state.config.request_timeout;
    crate::core::jobs::kill(&state.mesh, timeout, identity, trace, host, job, 0).await
}

/// The statuses of the jobs with id `job` (one per host it ran on) that the caller may see.
async fn visible_group(
    call: &Call<'_>,
    access: &JobAccess,
    job: &Token,
) -> Result<Vec<pb::JobStatus>, ToolError> {
    let statuses = call.state.mesh.group_jobs(job).await?;
    Ok(statuses.into_iter().filter(|s| access.sees(s)).collect())
}

/// The statuses of a fan-out group the caller may see: `job` names a job id that ran on more
/// than one host. `None` for a single-host job (or an unknown id, which `find` reports).
async fn group_of(
    call: &Call<'_>,
    access: &JobAccess,
    job: Option<&str>,
) -> Result<Option<Vec<pb::JobStatus>>, ToolError> {
    let Some(job) = job else { return Ok(None) };
    let Ok(token) = Token::parse("job id", job) else {
        return Ok(None);
    };
    let mut statuses = visible_group(call, access, &token).await?;
    if statuses.len() < 2 {
        return Ok(None);
    }
    statuses.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(Some(
        state::settle_all(&call.state.mesh, &call.state.audit, statuses).await?,
    ))
}

/// `kill` of a fan-out group: every host still running the job is asked to stop it.
async fn kill_group(
    call: &Call<'_>,
    access: &JobAccess,
    group: Vec<pb::JobStatus>,
) -> Result<CallToolResult, ToolError> {
    let running: Vec<(Token, Token)> = group
        .iter()
        .filter(|s| s.state() == pb::JobState::Running)
        .filter_map(|s| ids(s).ok())
        .collect();
    let hosts: Vec<&Token> = running.iter().map(|(host, _)| host).collect();
    if let Some((_, job)) = running.first() {
        crate::core::approvals::gate_hosts(&call.gate(), Some("kill"), &hosts, || {
            format!("job kill {job} on {} host(s)", hosts.len())
        })
        .await?;
    }
    audit_use(
        call,
        access,
        JobAction::Kill,
        group.iter().filter(|s| s.state() == pb::JobState::Running),
    );
    let kills = group.into_iter().map(|status| async move {
        if status.state() != pb::JobState::Running {
            return status;
        }
        let Ok((host, job)) = ids(&status) else {
            return status;
        };
        if let Err(denied) = super::reach::check(call, &host).await {
            let mut refused = status;
            refused.reason = denied.to_string();
            return refused;
        }
        match kill_on(call.state, call.identity, call.trace, &host, &job).await {
            Ok(killed) => killed,
            Err(e) => {
                let mut failed = status;
                failed.reason = format!("kill failed: {e}");
                failed
            }
        }
    });
    let statuses = futures::future::join_all(kills).await;
    render_group(call, "kill", statuses)
}

/// A group's statuses as a `list`-shaped result.
fn render_group(
    call: &Call<'_>,
    action: &str,
    statuses: Vec<pb::JobStatus>,
) -> Result<CallToolResult, ToolError> {
    let jobs: Vec<JobView> = statuses.iter().map(view).collect();
    let group = jobs.first().map(|j| j.job.clone()).unwrap_or_default();
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for j in &jobs {
        *counts.entry(state_name(j.state)).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let mut text = format!(
        "group {group} on {} host(s): {}\n",
        jobs.len(),
        counts.join(", ")
    );
    for j in &jobs {
        let cursor = Cursor::start(stored_id("host id", &j.host)?, stored_id("job id", &j.job)?);
        text.push_str(&format!(
            "- {} [{}] output: poll with cursor \"{}\"\n",
            j.host,
            outcome(j),
            call.state.cursors.seal(&cursor, &call.identity.user)
        ));
    }
    let result = JobResult {
        action: action.to_string(),
        jobs: Some(jobs),
        ..Default::default()
    };
    structured(&result, vec![text])
}

/// Renders a page of output with the job's status, read before the page, for `poll`; `more`:
/// the status says the job ended, but its agent may still write ([`state::may_write_more`]).
fn render_page(
    call: &Call<'_>,
    action: &str,
    status: pb::JobStatus,
    page: Page,
    more: bool,
) -> Result<CallToolResult, ToolError> {
    // The exit record ends the output. Without one, a page that read everything stored ends it
    // too once the status (read before the page) says the job ended: an agent stores all of a
    // job's output before its final status, so nothing more can come. That covers a lost job
    // (its agent died before writing an exit record), a cursor already past the exit record,
    // and output that retention removed. A job marked lost while its agent lived (its
    // heartbeat lapsed past the grace) is the exception: that agent writes on.
    let done =
        page.exit.is_some() || (page.caught_up && status.state() != pb::JobState::Running && !more);
    let view = view(&page.exit.clone().unwrap_or(status));
    let range = if page.lines == 0 {
        "no new lines".to_string()
    } else {
        format!(
            "lines {}–{}",
            page.first_line + 1,
            page.first_line + page.lines as u64
        )
    };
    let next = (!done).then(|| call.state.cursors.seal(&page.next, &call.identity.user));
    let evicted = if page.evicted {
        format!(
            "output before line {} is no longer stored (MESH_OUT evicted it: the stream's byte \
             limit or age); ",
            page.first_line + 1
        )
    } else {
        String::new()
    };
    let footer = match &next {
        None => format!(
            "{evicted}{range} of job {} on {}; end of output: {}",
            view.job,
            view.host,
            outcome(&view)
        ),
        Some(cursor) if page.caught_up => format!(
            "{evicted}{range} of job {} on {} (still running); poll again later with cursor \"{cursor}\"",
            view.job, view.host
        ),
        Some(cursor) => format!(
            "{evicted}{range} of job {} on {}; more output: poll with cursor \"{cursor}\"",
            view.job, view.host
        ),
    };
    let result = JobResult {
        action: action.to_string(),
        job: Some(view),
        output: Some(page.text.clone()),
        first_line: Some(page.first_line),
        lines: Some(page.lines),
        next_cursor: next,
        done: Some(done),
        jobs: None,
    };
    structured(&result, vec![page.text, footer])
}

/// The page limits of a poll, from the call's arguments within the configured ceilings.
fn limits(call: &Call<'_>, params: &JobParams) -> Result<PageLimits, ToolError> {
    let config = &call.state.config;
    let max_lines = params.max_lines.unwrap_or(config.page_max_lines);
    let max_bytes = params.max_bytes.unwrap_or(config.page_max_bytes);
    within("max_lines", max_lines, 1, crate::config::PAGE_LINES_CEILING)?;
    within(
        "max_bytes",
        max_bytes,
        1024,
        crate::config::PAGE_BYTES_CEILING,
    )?;
    Ok(PageLimits {
        max_lines,
        max_bytes,
        max_line_bytes: config.max_line_bytes,
    })
}

/// Refuses the argument `name` unless `value` is in `low..=high`.
fn within(name: &str, value: usize, low: usize, high: usize) -> Result<(), ToolError> {
    if (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(ToolError::invalid(
            "job",
            format!("`{name}` must be {low}..={high}"),
        ))
    }
}

/// [`find`] with the job's `job` and `host` arguments, and its ids: a job on a host outside the
/// caller's reach is refused.
async fn find_reachable(
    call: &Call<'_>,
    access: &JobAccess,
    params: &JobParams,
    action: &str,
) -> Result<(pb::JobStatus, Token, Token), ToolError> {
    let status = find(
        call,
        access,
        params.job.as_deref(),
        params.host.as_deref(),
        action,
    )
    .await?;
    let (host, job) = ids(&status)?;
    super::reach::check(call, &host).await?;
    Ok((status, host, job))
}

/// Finds a job the caller may see by id: on `host` when given, else across the mesh. A fan-out
/// group id names one job per host, so without `host` it is ambiguous and the caller is told
/// which hosts ran it. A job the caller may not see is unknown, in the same words as an id no
/// host knows.
async fn find(
    call: &Call<'_>,
    access: &JobAccess,
    job: Option<&str>,
    host: Option<&str>,
    action: &str,
) -> Result<pb::JobStatus, ToolError> {
    let job =
        job.ok_or_else(|| ToolError::invalid("job", format!("action `{action}` needs `job`")))?;
    let token = Token::parse("job id", job).map_err(|_| ToolError::UnknownJob(job.to_string()))?;
    let status = match host {
        Some(host) => {
            let host = Token::parse("host id", host)
                .map_err(|e| ToolError::invalid("job", e.to_string()))?;
            call.state
                .mesh
                .job_status(&host, &token)
                .await?
                .filter(|s| access.sees(s))
        }
        None => {
            let mut all = visible_group(call, access, &token).await?;
            if all.len() > 1 {
                let hosts: Vec<String> = all.iter().map(|s| s.host.clone()).collect();
                return Err(ToolError::invalid(
                    "job",
                    format!(
                        "job `{job}` is a fan-out group that ran on {} hosts ({}); pass `host` to \
                         {action} one of them, or use action `list` (or `kill`) for the whole group",
                        hosts.len(),
                        clip(&hosts.join(", "), 300)
                    ),
                ));
            }
            all.pop()
        }
    }
    .ok_or_else(|| ToolError::UnknownJob(job.to_string()))?;
    settle(call, status).await
}

/// `status` by the rule every reader applies ([`state::settle`]).
async fn settle(call: &Call<'_>, status: pb::JobStatus) -> Result<pb::JobStatus, ToolError> {
    Ok(state::settle(&call.state.mesh, &call.state.audit, status).await?)
}

fn ids(status: &pb::JobStatus) -> Result<(Token, Token), ToolError> {
    Ok((
        stored_id("host id", &status.host)?,
        stored_id("job id", &status.job_id)?,
    ))
}

/// An id read from a stored job status. One that does not parse is corrupt or foreign data,
/// not a transport failure: an internal error (logged), never "the mesh is unavailable".
fn stored_id(what: &'static str, value: &str) -> Result<Token, ToolError> {
    Token::parse(what, value).map_err(|e| {
        ToolError::internal(format!("a stored job status has an unreadable {what}"), &e)
    })
}

/// The tool-facing name of a job state.
pub fn state_name(state: pb::JobState) -> &'static str {
    match state {
        pb::JobState::Running => "running",
        pb::JobState::Exited => "exited",
        pb::JobState::TimedOut => "timed_out",
        pb::JobState::Killed => "killed",
        pb::JobState::Lost => "lost",
        pb::JobState::Failed => "failed",
        pb::JobState::Unspecified => "unknown",
    }
}

/// A job's state as tools spell it (see [`state_name`]).
fn serialize_state<S: serde::Serializer>(state: &pb::JobState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state_name(*state))
}

pub fn view(s: &pb::JobStatus) -> JobView {
    let ended = (s.ended_at_ms > 0).then_some(s.ended_at_ms);
    // Agents store the command redacted; a record from an older agent is redacted here.
    let redact = Redactor::builtin();
    JobView {
        job: s.job_id.clone(),
        host: s.host.clone(),
        state: s.state(),
        user: s.user.clone(),
        cmd: redact.text(&s.cmd),
        title: redact.text(&s.title),
        pid: (s.pid > 0).then_some(s.pid),
        exit_code: s.exit_code,
        signal: (!s.signal.is_empty()).then(|| s.signal.clone()),
        started_at_ms: s.started_at_ms,
        ended_at_ms: ended,
        duration_ms: ended
            .unwrap_or_else(execmesh_proto::now_ms)
            .saturating_sub(s.started_at_ms),
        lines: s.lines,
        bytes: s.bytes,
        dropped_bytes: s.dropped_bytes,
        last_output_at_ms: (s.last_output_at_ms > 0).then_some(s.last_output_at_ms),
        reason: (!s.reason.is_empty()).then(|| redact.text(&s.reason)),
        trace_id: s.trace_id.clone(),
    }
}

/// One phrase saying how a job stands: "exit 0 after 12 ms", "killed by SIGTERM", ….
pub fn outcome(j: &JobView) -> String {
    let took = human_ms(j.duration_ms);
    let reason = j
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    match j.state {
        pb::JobState::Running if j.lines > 0 || j.bytes > 0 => format!(
            "running for {took}, {} lines ({} bytes) of output so far",
            j.lines, j.bytes
        ),
        pb::JobState::Running => format!("running for {took}"),
        pb::JobState::Exited => match (&j.exit_code, &j.signal) {
            (Some(code), _) => format!("exit {code} after {took}"),
            (None, Some(sig)) => format!("ended by {sig} after {took}"),
            _ => format!("ended after {took}"),
        },
        pb::JobState::Killed => format!(
            "killed{} after {took}{reason}",
            j.signal
                .as_deref()
                .map(|s| format!(" by {s}"))
                .unwrap_or_default()
        ),
        pb::JobState::TimedOut => format!("timed out after {took}{reason}"),
        other @ (pb::JobState::Lost | pb::JobState::Failed | pb::JobState::Unspecified) => {
            format!("{} after {took}{reason}", state_name(other))
        }
    }
}

fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min", ms / 60_000)
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_status_with_unreadable_ids_is_internal_not_unavailable() {
        let mut bad_host = status(pb::JobState::Running);
        bad_host.host = "web 1/*".into();
        let mut bad_job = status(pb::JobState::Running);
        bad_job.job_id = String::new();
        for (s, what) in [(bad_host, "host id"), (bad_job, "job id")] {
            let e = ids(&s).unwrap_err();
            assert!(matches!(e, ToolError::Internal(_)), "{e:?}");
            assert_eq!(e.code(), "internal");
            let text = e.to_string();
            assert!(text.contains(what), "{text}");
            assert!(!text.contains("unavailable"), "{text}");
        }
        let (host, job) = ids(&status(pb::JobState::Running)).unwrap();
        assert_eq!(host.as_str(), "web-1");
        assert_eq!(job.as_str(), "build-abc12def");
    }

    fn status(state: pb::JobState) -> pb::JobStatus {
        pb::JobStatus {
            job_id: "build-abc12def".into(),
            host: "web-1".into(),
            state: state as i32,
            started_at_ms: 1_000,
            ended_at_ms: 1_012,
            ..Default::default()
        }
    }

    #[test]
    fn a_job_state_is_shown_by_its_tool_name() {
        let v = view(&status(pb::JobState::TimedOut));
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["state"], "timed_out");
        assert_eq!(outcome(&v), "timed out after 12 ms");
        let v = view(&status(pb::JobState::Running));
        assert_eq!(outcome(&v), "running for 12 ms");
        let mut printing = status(pb::JobState::Running);
        (printing.lines, printing.bytes) = (3, 42);
        assert_eq!(
            outcome(&view(&printing)),
            "running for 12 ms, 3 lines (42 bytes) of output so far"
        );
        let v = view(&status(pb::JobState::Lost));
        assert_eq!(outcome(&v), "lost after 12 ms");
        // A state from a newer agent.
        let mut newer = status(pb::JobState::Running);
        newer.state = 99;
        let v = view(&newer);
        assert_eq!(serde_json::to_value(&v).unwrap()["state"], "unknown");
        assert_eq!(outcome(&v), "unknown after 12 ms");
    }
}
