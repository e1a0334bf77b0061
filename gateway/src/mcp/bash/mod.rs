//! `bash`: run a command on one host as a job; short jobs answer inline, long ones by job id.
//! Its run path ([`launch`]: one host or a fan-out) is also the one `runbook` runs through.

mod fanout;

use std::collections::BTreeMap;
use std::time::Duration;

use rmcp::model::{CallToolResult, Tool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use execmesh_proto::redact::Redactor;
use execmesh_proto::{Token, pb};

use crate::core::error::ToolError;
use crate::core::fanout::{Amount, Reach};
use crate::core::paging::{self, Cursor, PageLimits};
use crate::mcp::job::{JobView, outcome, state_name, view};
use crate::mcp::{Call, dispatch, limit_seconds, seconds, structured};
use fanout::FanoutResult;

/// Longest command line accepted.
const MAX_CMD_BYTES: usize = 64 * 1024;
/// Most environment variables one call may set.
const MAX_ENV: usize = 128;
/// The longest `wait`.
const MAX_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BashParams {
    /// The host id to run on (see `hosts`). Give either `host` or `hosts`.
    #[serde(default)]
    pub host: Option<String>,
    /// A selector for a fan-out over many hosts: host globs (`web-*`), `key=value` on labels and
    /// facts (`role=web`, `os_id=debian`, `cpus>=8`), `@group`, combined with `and`, `or`,
    /// `not` and parentheses; `*` is every host you may reach. Every matching host gets one
    /// status: ok, exit_nonzero, timeout, denied, offline, lost, not_started or error.
    #[serde(default)]
    pub hosts: Option<String>,
    /// Fan-out: most hosts running the command at once, a count or a percentage ("25%").
    #[serde(default)]
    pub batch: Option<Amount>,
    /// Fan-out: stop starting new hosts after this many failures (exit_nonzero, timeout, lost,
    /// error), a count or a percentage; hosts not yet started are reported not_started.
    #[serde(default)]
    pub max_failures: Option<Amount>,
    /// The command line, run with `bash -c` in its own process group. Stdin is empty.
    pub cmd: String,
    /// Working directory (default: the agent's).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Seconds after which the job is killed, more than 0 (default: the host's, normally 3600;
    /// for a fan-out 60 per host).
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Return at once with the job id instead of waiting.
    #[serde(default)]
    pub bg: Option<bool>,
    /// Seconds to wait for the job before returning its id (default 2, at most 600).
    #[serde(default)]
    pub wait: Option<f64>,
    /// A short title; it becomes the start of the job id.
    #[serde(default)]
    pub title: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Most output lines returned inline (default 1000).
    #[serde(default)]
    pub max_lines: Option<usize>,
}

/// The result of `bash`: one host's run, or a fan-out's per-host statuses.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BashResult {
    #[serde(flatten)]
    pub run: Option<RunResult>,
    #[serde(flatten)]
    pub fanout: Option<FanoutResult>,
}

/// One host's run.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunResult {
    pub host: String,
    pub job: String,
    /// running, exited, timed_out, killed, lost or failed.
    pub state: String,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub duration_ms: u64,
    /// The output (stdout and stderr interleaved by line), or its first page.
    pub output: String,
    /// Lines in `output`.
    pub output_lines: usize,
    /// True when more output exists than `output` holds (or the job still runs).
    pub truncated: bool,
    /// Pass to `job` (action `poll`) as `cursor` to read on.
    pub next_cursor: Option<String>,
    pub status: JobView,
    pub trace_id: String,
}

pub fn definition() -> Tool {
    crate::mcp::tool::<BashParams, BashResult>(
        "bash",
        "Run a command",
        "Run a shell command on one host (`host`) or on every host a selector matches (`hosts`). \
         One host: waits up to `wait` seconds (default 2): if the command finished, returns its \
         output and exit code; otherwise returns a job id to follow with `job` (poll/wait/kill). \
         `bg: true` returns at once. Many hosts: runs concurrently (`batch` limits how many at \
         once, `max_failures` stops early), waits for each up to `timeout`, and returns every \
         host once with its status and output (identical outputs grouped). A non-zero exit code \
         is a normal result. Confirm with the user before running commands that change hosts.",
        crate::mcp::acts(true),
    )
}

/// One run as `bash` and `runbook` both send it: what every host gets, where, and how long to
/// wait. Both tools go through [`launch`], so one host and fan-out behave the same for both.
pub struct Launch<'a> {
    /// The request each host gets; [`launch`] sets its timing fields.
    pub request: pb::RunRequest,
    /// The job id is named after this (`<title>-<random>`), else after `cmd`'s first word.
    pub title: Option<&'a str>,
    /// One line for an approver and the log: "bash `df -h`".
    pub summary: String,
    /// The action the approval rules see (a runbook's name); `None` for `bash`.
    pub action: Option<&'a str>,
    /// The hosts the caller may reach for this run (a runbook narrows the policy's reach).
    pub reach: Reach,
    pub host: Option<&'a str>,
    pub hosts: Option<&'a str>,
    pub batch: Option<&'a Amount>,
    pub max_failures: Option<&'a Amount>,
    pub timeout: Option<f64>,
    pub bg: Option<bool>,
    pub wait: Option<f64>,
    pub max_lines: Option<usize>,
}

pub async fn call(call: &Call<'_>, params: BashParams) -> Result<CallToolResult, ToolError> {
    validate(&params)?;
    let run = Launch {
        request: pb::RunRequest {
            cmd: params.cmd.clone(),
            cwd: params.cwd.clone().unwrap_or_default(),
            env: params.env.clone().unwrap_or_default().into_iter().collect(),
            title: params.title.clone().unwrap_or_default(),
            ..Default::default()
        },
        title: params.title.as_deref(),
        summary: format!("bash `{}`", params.cmd),
        action: None,
        reach: crate::mcp::reach::of(call),
        host: params.host.as_deref(),
        hosts: params.hosts.as_deref(),
        batch: params.batch.as_ref(),
        max_failures: params.max_failures.as_ref(),
        timeout: params.timeout,
        bg: params.bg,
        wait: params.wait,
        max_lines: params.max_lines,
    };
    let (result, text) = launch(call, run).await?;
    structured(&result, text)
}

/// Runs `launch` on its one host, or fans it out over its selector: the result and its text.
pub async fn launch(
    call: &Call<'_>,
    launch: Launch<'_>,
) -> Result<(BashResult, Vec<String>), ToolError> {
    let tool = call.tool;
    let host = match (launch.host, launch.hosts) {
        (Some(host), None) => host,
        (None, Some(selector)) => {
            let (result, text) = fanout::call(call, &launch, selector).await?;
            let result = BashResult {
                run: None,
                fanout: Some(result),
            };
            return Ok((result, text));
        }
        (Some(_), Some(_)) => {
            return Err(ToolError::invalid(
                tool,
                "give either `host` (one host) or `hosts` (a selector), not both",
            ));
        }
        (None, None) => {
            return Err(ToolError::invalid(
                tool,
                "name where to run: `host` (one host id) or `hosts` (a selector such as `web-*`)",
            ));
        }
    };
    let state = call.state;
    let config = &state.config;
    let host =
        Token::parse("host id", host).map_err(|e| ToolError::invalid(tool, e.to_string()))?;
    crate::mcp::reach::check_within(call, &host, &launch.reach).await?;
    crate::core::approvals::gate_hosts(&call.gate(), launch.action, &[&host], || {
        format!("{} on {host}", launch.summary)
    })
    .await?;
    let bg = launch.bg.unwrap_or(false);
    let window = match (bg, launch.wait) {
        (true, _) => Duration::ZERO,
        (false, Some(w)) => seconds(tool, "wait", w, MAX_WAIT.as_secs_f64())?,
        // A task has no client waiting on the call: it waits for the job as long as `wait`
        // may, so its result is the job's end rather than a job id to follow.
        (false, None) if call.jobs.is_some() => MAX_WAIT,
        (false, None) => config.inline_window,
    };
    let timeout = launch
        .timeout
        .map(|t| limit_seconds(tool, "timeout", t, 30.0 * 86400.0))
        .transpose()?;
    let max_lines = launch.max_lines.unwrap_or(config.page_max_lines);
    if !(1..=crate::config::PAGE_LINES_CEILING).contains(&max_lines) {
        return Err(ToolError::invalid(
            tool,
            format!(
                "`max_lines` must be 1..={}",
                crate::config::PAGE_LINES_CEILING
            ),
        ));
    }
    let job = job_id(launch.title, &launch.request.cmd);
    let body = pb::exec_request::Body::Run(pb::RunRequest {
        timeout_ms: timeout.map(|t| t.as_millis() as u64).unwrap_or(0),
        inline_window_ms: window.as_millis() as u64,
        bg,
        inline_max_bytes: config.page_max_bytes as u64,
        ..launch.request
    });
    let run = match dispatch::send(call, &host, &job, body, window + config.request_timeout).await?
    {
        pb::exec_reply::Body::Run(run) => run,
        _ => {
            return Err(ToolError::bad_reply(
                &host,
                &"it answered a run request with something else",
            ));
        }
    };
    let status = run.status.unwrap_or_default();
    let running = status.state() == pb::JobState::Running;
    let limits = PageLimits {
        max_lines,
        max_bytes: config.page_max_bytes,
        max_line_bytes: config.max_line_bytes,
    };
    // The inline copy is used when it fits a page as is; otherwise the first page comes from
    // the stream, which clamps long lines and caps the page.
    let (output, lines, next_cursor, truncated) =
        match run.inline_output.filter(|o| fits(o, &limits)) {
            Some(inline) if !running => {
                let text = String::from_utf8_lossy(&inline).into_owned();
                let lines = text.split_inclusive('\n').count();
                (text, lines, None, false)
            }
            _ => {
                // A job that ended may not be stored yet when its reply arrives.
                state.mesh.wait_stored(&job, Some(&host)).await;
                let page = paging::read(
                    &state.mesh,
                    Cursor::start(host.clone(), job.clone()),
                    limits,
                )
                .await?;
                let more = page.exit.is_none();
                let next = more.then(|| state.cursors.seal(&page.next, &call.identity.user));
                (page.text, page.lines, next, more)
            }
        };
    let status = view(&status);
    let footer = if running {
        format!(
            "job {job} is still running on {host} (bg or longer than the {:.0} s wait). Follow it with \
             `job`: action \"poll\" with cursor \"{}\", action \"wait\", or action \"kill\".",
            window.as_secs_f64(),
            next_cursor.as_deref().unwrap_or_default()
        )
    } else if truncated {
        format!(
            "{} on {host} (job {job}); {lines} line(s) shown of {}, more with `job` action \"poll\" cursor \"{}\"",
            outcome(&status),
            status.lines,
            next_cursor.as_deref().unwrap_or_default()
        )
    } else {
        format!("{} on {host} (job {job})", outcome(&status))
    };
    let result = RunResult {
        host: host.to_string(),
        job: job.to_string(),
        state: state_name(status.state).to_string(),
        exit_code: status.exit_code,
        signal: status.signal.clone(),
        duration_ms: status.duration_ms,
        output: output.clone(),
        output_lines: lines,
        truncated,
        next_cursor,
        status,
        trace_id: call.trace.trace_id.clone(),
    };
    let result = BashResult {
        run: Some(result),
        fanout: None,
    };
    Ok((result, vec![output, footer]))
}

fn validate(params: &BashParams) -> Result<(), ToolError> {
    if params.cmd.trim().is_empty() {
        return Err(ToolError::invalid("bash", "`cmd` is empty"));
    }
    if params.cmd.len() > MAX_CMD_BYTES {
        return Err(ToolError::invalid(
            "bash",
            format!("`cmd` is longer than {MAX_CMD_BYTES} bytes"),
        ));
    }
    if params.cmd.contains('\0') {
        return Err(ToolError::invalid("bash", "`cmd` contains a NUL byte"));
    }
    if let Some(cwd) = &params.cwd
        && (cwd.is_empty() || cwd.contains('\0'))
    {
        return Err(ToolError::invalid("bash", "`cwd` must be a non-empty path"));
    }
    if let Some(env) = &params.env {
        if env.len() > MAX_ENV {
            return Err(ToolError::invalid(
                "bash",
                format!("at most {MAX_ENV} `env` variables"),
            ));
        }
        for (name, value) in env {
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(ToolError::invalid(
                    "bash",
                    format!("`env` name `{name}` is not a valid variable name"),
                ));
            }
            if value.contains('\0') {
                return Err(ToolError::invalid(
                    "bash",
                    format!("`env` value of `{name}` contains a NUL byte"),
                ));
            }
        }
    }
    Ok(())
}

/// Whether an inline copy can be shown as is: few enough lines, none too long.
fn fits(output: &[u8], limits: &PageLimits) -> bool {
    output.len() <= limits.max_bytes
        && output.split(|b| *b == b'\n').count() <= limits.max_lines + 1
        && output
            .split(|b| *b == b'\n')
            .all(|l| l.len() < limits.max_line_bytes)
}

/// `<title>-<random>`: the title (or the command's first word) made subject-safe, then 8
/// random base32 characters so ids never collide.
pub fn job_id(title: Option<&str>, cmd: &str) -> Token {
    // The id travels in subjects, keys and audit events unredacted: it is named after the
    // command, never after a leading assignment (`DB_PASS=… ./migrate`) or anything secret.
    let first_word = cmd
        .split_whitespace()
        .find(|w| !is_assignment(w))
        .map(|w| w.rsplit('/').next().unwrap_or(w))
        .filter(|w| Redactor::builtin().text(w) == *w)
        .unwrap_or("job");
    let base = title
        .and_then(|t| Token::sanitize(&Redactor::builtin().text(t), 24))
        .or_else(|| Token::sanitize(first_word, 24))
        .map(|t| t.to_string())
        .unwrap_or_else(|| "job".to_string());
    let random = dispatch::random_suffix();
    // Sanitized parts and the alphabet are all token characters, so this cannot fail; fall
    // back to a plain id rather than panic if that ever changes.
    Token::parse("job id", &format!("{base}-{random}")).unwrap_or_else(|_| {
        Token::sanitize(&format!("job-{random}"), 63).unwrap_or_else(|| job_id(None, "job"))
    })
}

/// Whether a word of a command line is a variable assignment (`NAME=value`).
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_subject_safe_and_titled() {
        let id = job_id(Some("Build Release!"), "make");
        assert!(id.as_str().starts_with("build-release-"), "{id}");
        let id = job_id(None, "/usr/bin/tail -f /var/log/syslog");
        assert!(id.as_str().starts_with("tail-"), "{id}");
        let id = job_id(None, "   ");
        assert!(id.as_str().starts_with("job-"), "{id}");
        assert_ne!(job_id(None, "x"), job_id(None, "x"));
        let id = job_id(None, "DB_PASS=hunter2 ./migrate.sh");
        assert!(id.as_str().starts_with("migrate-sh-"), "{id}");
        let id = job_id(None, "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 x");
        assert!(id.as_str().starts_with("job-"), "{id}");
    }

    #[test]
    fn bad_env_names_are_refused() {
        let params = BashParams {
            host: Some("h".into()),
            hosts: None,
            batch: None,
            max_failures: None,
            cmd: "true".into(),
            cwd: None,
            timeout: None,
            bg: None,
            wait: None,
            title: None,
            env: Some([("A-B".to_string(), "1".to_string())].into()),
            max_lines: None,
        };
        assert!(validate(&params).unwrap_err().to_string().contains("A-B"));
    }
}
