//! `job`: page a job's output (forward with a cursor, or its tail), list jobs, wait for one, kill one.

use std::time::Duration;

use rmcp::model::{CallToolResult, JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use execmesh_proto::{Token, pb, subject};

use super::{Call, parse_args, seconds, structured};
use crate::error::ToolError;
use crate::paging::{self, Cursor, CursorError, Page, PageLimits};

/// How often `wait` checks that the job's host still heartbeats.
const ORPHAN_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobAction {
    /// Read a page of output: from the start, from `cursor`, or the last `tail` lines.
    Poll,
    /// List your recent jobs, newest first.
    List,
    /// Wait until the job ends (or `timeout` passes) and show how it ended.
    Wait,
    /// Stop the job: SIGTERM to its process group, SIGKILL after a grace period.
    Kill,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobParams {
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
    /// `list`: only jobs on this host.
    #[serde(default)]
    pub host: Option<String>,
    /// `list`: most jobs to return (default 20, at most 200).
    #[serde(default)]
    pub limit: Option<usize>,
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
    pub state: String,
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
    /// Output lines and bytes stored so far (final once the job ended).
    pub lines: u64,
    pub bytes: u64,
    /// Output bytes dropped past the per-job cap.
    pub dropped_bytes: u64,
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
         SIGKILL). Confirm with the user before killing a job.",
        ToolAnnotations::new()
            .read_only(false)
            .destructive(true)
            .idempotent(false)
            .open_world(false),
    )
}

pub async fn call(call: &Call<'_>, args: JsonObject) -> Result<CallToolResult, ToolError> {
    let params: JobParams = parse_args("job", args)?;
    match params.action {
        JobAction::Poll => poll(call, params).await,
        JobAction::List => list(call, params).await,
        JobAction::Wait => wait(call, params).await,
        JobAction::Kill => kill(call, params).await,
    }
}

async fn poll(call: &Call<'_>, params: JobParams) -> Result<CallToolResult, ToolError> {
    let limits = limits(call, &params)?;
    let (cursor, status) = match &params.cursor {
        Some(text) => {
            let cursor = Cursor::decode(text)?;
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
            let status = call
                .state
                .mesh
                .job_status(&cursor.host, &cursor.job)
                .await?
                .ok_or_else(|| ToolError::UnknownJob(cursor.job.to_string()))?;
            (cursor, call.state.mesh.settle_orphan(status).await?)
        }
        None => {
            let status = find(call, params.job.as_deref(), "poll").await?;
            let (host, job) = ids(&status)?;
            let cursor = match params.tail {
                Some(n) => paging::tail(&call.state.mesh, host, job, n).await?,
                None => Cursor::start(host, job),
            };
            (cursor, status)
        }
    };
    let page = paging::read(&call.state.mesh, cursor, limits).await?;
    render_page("poll", status, page)
}

async fn list(call: &Call<'_>, params: JobParams) -> Result<CallToolResult, ToolError> {
    let limit = params.limit.unwrap_or(20).clamp(1, 200);
    let mut jobs: Vec<pb::JobStatus> = call
        .state
        .mesh
        .jobs()
        .await?
        .into_iter()
        .filter(|j| j.user == call.identity.user.as_str())
        .filter(|j| params.host.as_deref().is_none_or(|h| j.host == h))
        .collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(j.started_at_ms));
    let total = jobs.len();
    let jobs: Vec<JobView> = jobs.iter().take(limit).map(view).collect();
    let mut text = format!("{} of your {total} job(s), newest first\n", jobs.len());
    for j in &jobs {
        text.push_str(&format!(
            "- {} on {} [{}] {}\n",
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

async fn wait(call: &Call<'_>, params: JobParams) -> Result<CallToolResult, ToolError> {
    let timeout = seconds("job", "timeout", params.timeout.unwrap_or(30.0), 600.0)?;
    let mut status = find(call, params.job.as_deref(), "wait").await?;
    let (host, job) = ids(&status)?;
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
        status = call.state.mesh.settle_orphan(status).await?;
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

async fn kill(call: &Call<'_>, params: JobParams) -> Result<CallToolResult, ToolError> {
    let status = find(call, params.job.as_deref(), "kill").await?;
    let (host, job) = ids(&status)?;
    let status = if status.state() == pb::JobState::Running {
        let request = pb::ControlRequest {
            tenant: call.state.mesh.tenant.to_string(),
            host: host.to_string(),
            job_id: job.to_string(),
            user: call.identity.user.to_string(),
            body: Some(pb::control_request::Body::Kill(pb::KillRequest {
                grace_ms: 0,
            })),
            ..Default::default()
        };
        let reply: pb::ControlReply = call
            .state
            .mesh
            .request(
                &host,
                subject::ctl(&call.state.mesh.tenant, &host),
                &request,
                Some(&call.trace.traceparent()),
                call.state.config.request_timeout + Duration::from_secs(10),
            )
            .await
            .map_err(ToolError::from)?;
        match reply.body {
            Some(pb::control_reply::Body::Status(status)) => status,
            Some(pb::control_reply::Body::Error(e)) => return Err(ToolError::refused(&host, e)),
            None => return Err(ToolError::Mesh(format!("host {host} sent an empty reply"))),
        }
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

/// Renders a page of output with the job's status, for `poll` and for `bash`.
pub fn render_page(
    action: &str,
    status: pb::JobStatus,
    page: Page,
) -> Result<CallToolResult, ToolError> {
    // A lost job has no exit record when its agent died; its status ends it.
    let done = page.exit.is_some() || (page.caught_up && status.state() == pb::JobState::Lost);
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
    let next = (!done).then(|| page.next.encode());
    let footer = match &next {
        None => format!(
            "{range} of job {} on {}; end of output: {}",
            view.job,
            view.host,
            outcome(&view)
        ),
        Some(cursor) if page.caught_up => format!(
            "{range} of job {} on {} (still running); poll again later with cursor \"{cursor}\"",
            view.job, view.host
        ),
        Some(cursor) => format!(
            "{range} of job {} on {}; more output: poll with cursor \"{cursor}\"",
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
    if !(1..=crate::config::PAGE_LINES_CEILING).contains(&max_lines) {
        return Err(ToolError::invalid(
            "job",
            format!(
                "`max_lines` must be 1..={}",
                crate::config::PAGE_LINES_CEILING
            ),
        ));
    }
    if !(1024..=crate::config::PAGE_BYTES_CEILING).contains(&max_bytes) {
        return Err(ToolError::invalid(
            "job",
            format!(
                "`max_bytes` must be 1024..={}",
                crate::config::PAGE_BYTES_CEILING
            ),
        ));
    }
    Ok(PageLimits {
        max_lines,
        max_bytes,
        max_line_bytes: config.max_line_bytes,
    })
}

/// Finds a job by id across the mesh.
async fn find(
    call: &Call<'_>,
    job: Option<&str>,
    action: &str,
) -> Result<pb::JobStatus, ToolError> {
    let job =
        job.ok_or_else(|| ToolError::invalid("job", format!("action `{action}` needs `job`")))?;
    let token = Token::parse("job id", job).map_err(|_| ToolError::UnknownJob(job.to_string()))?;
    let status = call
        .state
        .mesh
        .find_job(&token)
        .await?
        .ok_or_else(|| ToolError::UnknownJob(job.to_string()))?;
    Ok(call.state.mesh.settle_orphan(status).await?)
}

fn ids(status: &pb::JobStatus) -> Result<(Token, Token), ToolError> {
    let host = Token::parse("host id", &status.host).map_err(|e| ToolError::Mesh(e.to_string()))?;
    let job = Token::parse("job id", &status.job_id).map_err(|e| ToolError::Mesh(e.to_string()))?;
    Ok((host, job))
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

pub fn view(s: &pb::JobStatus) -> JobView {
    let ended = (s.ended_at_ms > 0).then_some(s.ended_at_ms);
    JobView {
        job: s.job_id.clone(),
        host: s.host.clone(),
        state: state_name(s.state()).to_string(),
        user: s.user.clone(),
        cmd: s.cmd.clone(),
        title: s.title.clone(),
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
        reason: (!s.reason.is_empty()).then(|| s.reason.clone()),
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
    match j.state.as_str() {
        "running" => format!("running for {took}"),
        "exited" => match (&j.exit_code, &j.signal) {
            (Some(code), _) => format!("exit {code} after {took}"),
            (None, Some(sig)) => format!("ended by {sig} after {took}"),
            _ => format!("ended after {took}"),
        },
        "killed" => format!(
            "killed{} after {took}{reason}",
            j.signal
                .as_deref()
                .map(|s| format!(" by {s}"))
                .unwrap_or_default()
        ),
        "timed_out" => format!("timed out after {took}{reason}"),
        other => format!("{other} after {took}{reason}"),
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
