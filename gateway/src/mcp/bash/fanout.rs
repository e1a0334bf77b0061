//! `bash` (and `runbook`) with `hosts`: one command on every host a selector matches, each host
//! ending with one status, small outputs inline and large ones paged per host under the call's
//! group id.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use execmesh_proto::{Token, pb};

use super::Launch;
use crate::core::error::ToolError;
use crate::core::fanout::{self, HostStatus, Outcome, Plan};
use crate::core::paging::Cursor;
use crate::mcp::job::{outcome, view};
use crate::mcp::{Call, dispatch, limit_seconds};

/// Per-host timeout of a fan-out command when the call names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Output bytes all hosts together may return inline; each host gets a share.
const INLINE_BUDGET: usize = 512 * 1024;
/// The least inline share of one host.
const MIN_INLINE_SHARE: usize = 2048;
/// Hosts whose output the text rendering shows in full; the rest are summarised.
const TEXT_HOSTS: usize = 50;

/// The fan-out part of `bash`'s result.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FanoutResult {
    /// The selector as given.
    pub selector: String,
    /// The job id every host ran the command under: `job` with this id lists, polls (with
    /// `host`) and kills the group.
    pub group: String,
    /// "40 host(s): 37 ok, 2 exit_nonzero, 1 offline".
    pub summary: String,
    /// Hosts per status (ok, exit_nonzero, timeout, denied, offline, lost, not_started, error).
    pub counts: BTreeMap<String, usize>,
    /// Every targeted host exactly once, by host id.
    pub hosts: Vec<HostRun>,
    /// Why the fan-out stopped early (max_failures, cancellation), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// One host's part of a fan-out command.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HostRun {
    pub host: String,
    /// ok, exit_nonzero, timeout, denied, offline, lost, not_started or error.
    pub status: HostStatus,
    /// Why, in words.
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The whole output when it was small enough to return inline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Output lines the job produced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_lines: Option<u64>,
    /// Pass to `job` (action `poll`) as `cursor` to page this host's output (when not inline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What one host's request produced.
struct Ran {
    status: pb::JobStatus,
    output: Option<String>,
}

/// Runs `launch` on every host `selector` matches (within its reach).
pub async fn call(
    call: &Call<'_>,
    launch: &Launch<'_>,
    selector: &str,
) -> Result<(FanoutResult, Vec<String>), ToolError> {
    let (tool, config) = (call.tool, &call.state.config);
    if launch.bg == Some(true) || launch.wait.is_some() {
        return Err(ToolError::invalid(
            tool,
            "`bg` and `wait` apply to one `host`; a fan-out (`hosts`) waits for every host up to \
             `timeout` (default 60 s per host)",
        ));
    }
    let timeout = match launch.timeout {
        Some(t) => limit_seconds(tool, "timeout", t, 86400.0)?,
        None => DEFAULT_TIMEOUT,
    };
    let targets =
        crate::mcp::fleet::some_targets_within(call, tool, selector, &launch.reach).await?;
    crate::core::approvals::gate(
        &call.gate(),
        crate::core::approvals::Request::for_targets(
            &targets,
            launch.action,
            format!(
                "{} on {} host(s) matching `{selector}`",
                launch.summary,
                targets.hosts.len()
            ),
        ),
    )
    .await?;
    let total = targets.len();
    let plan = plan(call, launch, total)?;
    let group = super::job_id(launch.title, &launch.request.cmd);
    let inline_share = (INLINE_BUDGET / total).clamp(MIN_INLINE_SHARE, config.page_max_bytes);
    let body = pb::RunRequest {
        timeout_ms: timeout.as_millis() as u64,
        // The agent answers when the job ends (it kills it at `timeout`), so one reply
        // carries the final status.
        inline_window_ms: (timeout + Duration::from_secs(2)).as_millis() as u64,
        bg: false,
        inline_max_bytes: inline_share as u64,
        ..launch.request.clone()
    };
    let wait = timeout + Duration::from_secs(2) + config.request_timeout;
    let report = crate::mcp::fleet::run(call, targets, &plan, "hosts answered", |host| {
        let body = body.clone();
        let group = group.clone();
        async move { run_on(call, host, &group, body, wait).await }
    })
    .await;
    if !report.abandoned.is_empty() {
        stop_abandoned(call, &report.abandoned, &group);
    }
    let hosts: Vec<HostRun> = report
        .outcomes
        .iter()
        .map(|o| host_run(call, o, &group))
        .collect();
    let result = FanoutResult {
        selector: selector.to_string(),
        group: group.to_string(),
        summary: report.summary(),
        counts: report.counts_by_name(),
        hosts,
        stopped: report.stopped.clone(),
    };
    let text = render(&result);
    Ok((result, text))
}

/// The window and failure limit of a fan-out over `total` hosts.
fn plan(call: &Call<'_>, launch: &Launch<'_>, total: usize) -> Result<Plan, ToolError> {
    let tool = call.tool;
    let window = match launch.batch {
        Some(amount) => amount
            .resolve("batch", total)
            .map_err(|e| ToolError::invalid(tool, e))?,
        None => call.state.config.fanout_window,
    };
    if window == 0 {
        return Err(ToolError::invalid(tool, "`batch` must be at least 1"));
    }
    let max_failures = launch
        .max_failures
        .map(|a| a.resolve("max_failures", total))
        .transpose()
        .map_err(|e| ToolError::invalid(tool, e))?;
    if max_failures == Some(0) {
        return Err(ToolError::invalid(
            tool,
            "`max_failures` must be at least 1",
        ));
    }
    Ok(Plan {
        window,
        max_failures,
        cancel: call.context.ct.clone(),
    })
}

/// Runs the command on one host and classifies how it ended.
async fn run_on(
    call: &Call<'_>,
    host: Token,
    group: &Token,
    body: pb::RunRequest,
    wait: Duration,
) -> Outcome<Ran> {
    let body = pb::exec_request::Body::Run(body);
    let run = match dispatch::send(call, &host, group, body, wait).await {
        Ok(pb::exec_reply::Body::Run(run)) => run,
        Ok(_) => {
            let reason = format!("host {host} answered a run request with something else");
            return Outcome::new(host, HostStatus::Error, reason);
        }
        Err(e) => return fanout::classify(host, e),
    };
    let mut status = run.status.unwrap_or_default();
    // An agent that answered before the job ended (an older agent, a capped window): follow
    // the status until the job ends.
    if status.state() == pb::JobState::Running {
        let deadline = tokio::time::Instant::now() + wait;
        while status.state() == pb::JobState::Running && tokio::time::Instant::now() < deadline {
            match call
                .state
                .mesh
                .wait_job(&host, group, Duration::from_secs(2))
                .await
            {
                Ok(Some(newer)) => status = newer,
                Ok(None) => {}
                Err(e) => {
                    return Outcome::new(
                        host,
                        HostStatus::Error,
                        format!("status unreadable: {e}"),
                    );
                }
            }
        }
    }
    let output = run
        .inline_output
        .filter(|_| status.state() != pb::JobState::Running)
        .map(|o| String::from_utf8_lossy(&o).into_owned());
    let (code, reason) = job_outcome(&host, &status);
    Outcome::new(host, code, reason).with_value(Ran { status, output })
}

/// The fan-out status of a finished job.
fn job_outcome(host: &Token, status: &pb::JobStatus) -> (HostStatus, String) {
    let v = view(status);
    let told = outcome(&v);
    match status.state() {
        pb::JobState::Exited if status.exit_code == Some(0) => (HostStatus::Ok, told),
        pb::JobState::Exited => (HostStatus::ExitNonzero, told),
        pb::JobState::TimedOut => (HostStatus::Timeout, told),
        pb::JobState::Lost => (HostStatus::Lost, told),
        pb::JobState::Running => (
            HostStatus::Timeout,
            format!("job still running on host {host} when the call stopped waiting"),
        ),
        pb::JobState::Killed | pb::JobState::Failed | pb::JobState::Unspecified => {
            (HostStatus::Error, told)
        }
    }
}

fn host_run(call: &Call<'_>, o: &Outcome<Ran>, group: &Token) -> HostRun {
    let mut run = HostRun {
        host: o.host.to_string(),
        status: o.status,
        reason: o.reason.clone(),
        exit_code: None,
        signal: None,
        duration_ms: None,
        output: None,
        output_lines: None,
        next_cursor: None,
    };
    if let Some(ran) = &o.value {
        let v = view(&ran.status);
        run.exit_code = v.exit_code;
        run.signal = v.signal;
        run.duration_ms = Some(v.duration_ms);
        run.output_lines = Some(v.lines);
        match &ran.output {
            Some(text) => run.output = Some(text.clone()),
            None if v.lines > 0 => {
                let start = Cursor::start(o.host.clone(), group.clone());
                run.next_cursor = Some(call.state.cursors.seal(&start, &call.identity.user));
            }
            None => run.output = Some(String::new()),
        }
    }
    run
}

/// The text rendering: the summary, then hosts grouped by identical status and output, so
/// forty identical answers read as one.
fn render(result: &FanoutResult) -> Vec<String> {
    let mut groups: Vec<(String, Vec<&HostRun>)> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for run in &result.hosts {
        let key = format!(
            "{}\u{0}{}\u{0}{}",
            run.status.as_str(),
            run.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            run.output.as_deref().unwrap_or("\u{1}")
        );
        match index.get(&key) {
            Some(i) => groups[*i].1.push(run),
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key, vec![run]));
            }
        }
    }
    let mut text = format!(
        "{} for `{}` (group {}; `job` with this id lists, polls with `host`, or kills the group)\n",
        result.summary, result.selector, result.group
    );
    for (shown, (_, runs)) in groups.iter().enumerate() {
        if shown == TEXT_HOSTS {
            text.push_str(&format!(
                "… {} more distinct result(s); see structuredContent.hosts\n",
                groups.len() - TEXT_HOSTS
            ));
            break;
        }
        let first = runs[0];
        let names: Vec<&str> = runs.iter().map(|r| r.host.as_str()).collect();
        let who = if names.len() > 8 {
            format!(
                "{} … {} ({} hosts)",
                names[..4].join(", "),
                names[names.len() - 1],
                names.len()
            )
        } else {
            names.join(", ")
        };
        let why = if runs.len() == 1 {
            first.reason.clone()
        } else if first.status == HostStatus::Ok {
            "ok".to_string()
        } else {
            format!("{} (e.g. {})", first.status.as_str(), first.reason)
        };
        text.push_str(&format!("== {who}: {why}\n"));
        match (&first.output, &first.next_cursor) {
            (Some(out), _) if !out.is_empty() => {
                text.push_str(out);
                if !out.ends_with('\n') {
                    text.push('\n');
                }
            }
            (_, Some(cursor)) => text.push_str(&format!(
                "({} lines; page with `job` action \"poll\" cursor \"{cursor}\")\n",
                first.output_lines.unwrap_or(0)
            )),
            _ => {}
        }
    }
    vec![text]
}

/// After a cancelled fan-out, asks every host still running the group's job to stop it.
fn stop_abandoned(call: &Call<'_>, hosts: &[Token], group: &Token) {
    let state = std::sync::Arc::clone(call.state);
    let identity = call.identity.clone();
    let trace = call.trace.clone();
    let hosts = hosts.to_vec();
    let group = group.clone();
    tokio::spawn(async move {
        for host in hosts {
            if let Err(e) = crate::mcp::job::kill_on(&state, &identity, &trace, &host, &group).await
            {
                tracing::warn!(host = %host, job = %group, error = %e, "could not stop an abandoned fan-out job");
            }
        }
    });
}
