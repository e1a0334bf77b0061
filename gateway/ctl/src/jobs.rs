//! `execmeshctl jobs` and `job get|tail|kill`: jobs on every host, one job's status, its output
//! as it is written, and stopping it.

use serde_json::{Value, json};

use execmesh_proto::redact::Redactor;
use execmesh_proto::{now_ms, pb};

use crate::cli::{JobCommand, JobFilters};
use crate::connect::{Admin, Settings};
use crate::table::{self, Table};
use crate::{CtlError, enum_name, enum_word, print, print_bytes, print_json, print_json_line};

/// What `job tail --exit-code` exits with when the job ended without an exit code of its own
/// (killed by a signal, timed out, lost, failed to start).
pub const NO_EXIT_CODE: u8 = 125;

/// The ListJobsRequest for `jobs`' filters (checked before connecting).
pub fn list_request(filters: &JobFilters) -> Result<pb::ListJobsRequest, CtlError> {
    let state = match &filters.state {
        None => pb::JobState::Unspecified,
        Some(word) => parse_state(word)?,
    };
    Ok(pb::ListJobsRequest {
        host: filters.host.clone().unwrap_or_default(),
        user: filters.user.clone().unwrap_or_default(),
        state: state as i32,
        group: filters.group.clone().unwrap_or_default(),
        limit: filters.limit,
    })
}

fn parse_state(word: &str) -> Result<pb::JobState, CtlError> {
    match pb::JobState::from_str_name(&enum_name(word, "JOB_STATE_")) {
        Some(state) if state != pb::JobState::Unspecified => Ok(state),
        _ => Err(CtlError::Usage(format!(
            "--state {word}: a job state is running, exited, timed_out, killed, lost or failed"
        ))),
    }
}

/// `jobs`: a table of jobs, newest first.
pub async fn list(
    admin: &mut Admin,
    request: pb::ListJobsRequest,
    json: bool,
) -> Result<(), CtlError> {
    let limit = request.limit;
    let response = admin
        .call(request, async |c, r| c.jobs.list(r).await)
        .await?;
    if json {
        return print_json(&json!({
            "jobs": response.jobs.iter().map(job_json).collect::<Vec<_>>(),
            "truncated": response.truncated,
        }));
    }
    if response.jobs.is_empty() {
        return print("no jobs match\n");
    }
    let mut text = jobs_table(&response.jobs).render();
    if response.truncated {
        text.push_str(&format!(
            "(the newest {limit} shown; more match: raise --limit or filter)\n"
        ));
    }
    print(&text)
}

/// Dispatches `job get|tail|kill`.
pub async fn run(settings: Settings, command: JobCommand, json: bool) -> Result<(), CtlError> {
    match command {
        JobCommand::Get { id, host } => {
            let mut admin = settings.connect().await?;
            get(&mut admin, id, host.unwrap_or_default(), json).await
        }
        JobCommand::Tail {
            id,
            host,
            from_start,
            lines,
            cursor,
            exit_code,
        } => {
            let request = pb::TailJobRequest {
                job_id: id,
                host: host.unwrap_or_default(),
                cursor: cursor.unwrap_or_default(),
                tail_lines: if from_start { 0 } else { lines },
            };
            let mut admin = settings.connect().await?;
            tail(&mut admin, request, exit_code, json).await
        }
        JobCommand::Kill { id, host, grace } => {
            let grace_ms = match grace {
                None => 0,
                Some(text) => execmesh_proto::duration::parse(&text)
                    .map_err(|e| CtlError::Usage(format!("--grace: {e}")))?
                    .as_millis() as u64,
            };
            let mut admin = settings.connect().await?;
            kill(&mut admin, id, host.unwrap_or_default(), grace_ms, json).await
        }
    }
}

async fn get(admin: &mut Admin, job_id: String, host: String, json: bool) -> Result<(), CtlError> {
    let response = admin
        .call(pb::GetJobRequest { job_id, host }, async |c, r| {
            c.jobs.get(r).await
        })
        .await?;
    print_jobs(&response.jobs, json, |jobs| {
        let now = now_ms();
        let blocks: Vec<String> = jobs.iter().map(|j| job_detail(j, now)).collect();
        blocks.join("\n")
    })
}

async fn kill(
    admin: &mut Admin,
    job_id: String,
    host: String,
    grace_ms: u64,
    json: bool,
) -> Result<(), CtlError> {
    let response = admin
        .call(
            pb::KillJobRequest {
                job_id,
                host,
                grace_ms,
            },
            async |c, r| c.jobs.kill(r).await,
        )
        .await?;
    print_jobs(&response.jobs, json, |jobs| jobs_table(jobs).render())
}

/// Prints the jobs a call answered with: `{"jobs": […]}` with `--json`, else `text` of them.
fn print_jobs(
    jobs: &[pb::JobStatus],
    json: bool,
    text: impl FnOnce(&[pb::JobStatus]) -> String,
) -> Result<(), CtlError> {
    if json {
        return print_json(&json!({ "jobs": jobs.iter().map(job_json).collect::<Vec<_>>() }));
    }
    print(&text(jobs))
}

/// `job tail`: the output as it comes, raw on stdout; how the job ended on stderr.
async fn tail(
    admin: &mut Admin,
    request: pb::TailJobRequest,
    exit_code: bool,
    json: bool,
) -> Result<(), CtlError> {
    let job = request.job_id.clone();
    let mut stream = admin
        .open(request, async |c, r| c.jobs.tail(r).await)
        .await?;
    let mut last_cursor = String::new();
    loop {
        let Some(message) = admin.next(&mut stream).await? else {
            let resume = table::optional("; resume with --cursor ", &last_cursor, "");
            return Err(admin.ended(format!(
                "the gateway ended the tail of {job} before the job ended (shutting down?){resume}"
            )));
        };
        last_cursor = message.cursor.clone();
        match message.body {
            Some(pb::tail_job_response::Body::Chunk(chunk)) => {
                if json {
                    print_json_line(&json!({
                        "type": "output",
                        "index": chunk.index,
                        "first_line": chunk.first_line,
                        "line_count": chunk.line_count,
                        "data": String::from_utf8_lossy(&chunk.data),
                        "cursor": message.cursor,
                    }))?;
                } else {
                    print_bytes(&chunk.data)?;
                }
            }
            Some(pb::tail_job_response::Body::Exit(status)) => {
                if json {
                    print_json_line(&json!({
                        "type": "exit",
                        "job": job_json(&status),
                        "cursor": message.cursor,
                    }))?;
                } else {
                    eprintln!("{}", ending(&status));
                }
                if exit_code {
                    let code = match status.exit_code {
                        Some(code) => u8::try_from(code).unwrap_or(NO_EXIT_CODE),
                        None => NO_EXIT_CODE,
                    };
                    if code != 0 {
                        return Err(CtlError::JobExit(code));
                    }
                }
                return Ok(());
            }
            None => {}
        }
    }
}

/// One line saying how a job ended: `exit 0 after 3.2s on web-1 (job echo-ab12cd34)`.
fn ending(job: &pb::JobStatus) -> String {
    let job = &shown(job);
    let took = if job.ended_at_ms >= job.started_at_ms && job.started_at_ms > 0 {
        format!(
            " after {}",
            table::duration(job.ended_at_ms - job.started_at_ms)
        )
    } else {
        String::new()
    };
    let how = match (job.state(), job.exit_code) {
        (pb::JobState::Exited, Some(code)) => format!("exit {code}"),
        (_, _) if !job.signal.is_empty() => format!("{} ({})", state_word(job.state), job.signal),
        (_, Some(code)) => format!("{} (exit {code})", state_word(job.state)),
        _ => state_word(job.state),
    };
    let reason = table::optional(": ", &job.reason, "");
    format!("{how}{took} on {} (job {}){reason}", job.host, job.job_id)
}

fn jobs_table(jobs: &[pb::JobStatus]) -> Table {
    let now = now_ms();
    let mut table = Table::new(&[
        "JOB", "HOST", "USER", "STATE", "EXIT", "STARTED", "DURATION", "CMD",
    ]);
    for job in jobs {
        let job = &shown(job);
        table.row(vec![
            job.job_id.clone(),
            job.host.clone(),
            table::or_dash(&job.user),
            state_word(job.state),
            exit_cell(job),
            table::ago(job.started_at_ms, now),
            run_time(job, now),
            table::clip(&job.cmd, 60),
        ]);
    }
    table
}

/// `job` as it may be shown: the gateway redacts what it serves, and so does this client, for
/// gateways and records from before redaction.
fn shown(job: &pb::JobStatus) -> pb::JobStatus {
    let mut job = job.clone();
    Redactor::builtin().job_status(&mut job);
    job
}

fn exit_cell(job: &pb::JobStatus) -> String {
    match (job.exit_code, job.signal.as_str()) {
        (Some(code), _) => code.to_string(),
        (None, "") => "-".into(),
        (None, signal) => signal.to_string(),
    }
}

/// How long the job ran (or has been running).
fn run_time(job: &pb::JobStatus, now: u64) -> String {
    if job.started_at_ms == 0 {
        return "-".into();
    }
    let end = if job.ended_at_ms > 0 {
        job.ended_at_ms
    } else {
        now
    };
    table::duration(end.saturating_sub(job.started_at_ms))
}

/// A job as `field: value` lines.
fn job_detail(job: &pb::JobStatus, now: u64) -> String {
    let job = &shown(job);
    let mut fields: Vec<(&str, String)> = vec![
        ("job", job.job_id.clone()),
        ("host", job.host.clone()),
        ("state", state_word(job.state)),
        ("exit", exit_cell(job)),
        ("user", table::or_dash(&job.user)),
        ("run as", table::or_dash(&job.run_as)),
        ("cmd", job.cmd.clone()),
    ];
    if !job.title.is_empty() {
        fields.push(("title", job.title.clone()));
    }
    if !job.cwd.is_empty() {
        fields.push(("cwd", job.cwd.clone()));
    }
    fields.push((
        "pid",
        if job.pid > 0 {
            job.pid.to_string()
        } else {
            "-".into()
        },
    ));
    fields.push(("started", table::when(job.started_at_ms, now)));
    if job.ended_at_ms > 0 {
        fields.push(("ended", table::when(job.ended_at_ms, now)));
    }
    fields.push(("duration", run_time(job, now)));
    fields.push((
        "output",
        format!(
            "{} lines, {}{}",
            job.lines,
            table::bytes(job.bytes),
            if job.dropped_bytes > 0 {
                format!(" ({} dropped)", table::bytes(job.dropped_bytes))
            } else {
                String::new()
            }
        ),
    ));
    if job.last_output_at_ms > 0 {
        fields.push(("last output", table::when(job.last_output_at_ms, now)));
    }
    if !job.reason.is_empty() {
        fields.push(("reason", job.reason.clone()));
    }
    if !job.trace_id.is_empty() {
        fields.push(("trace", job.trace_id.clone()));
    }
    table::fields(&fields)
}

/// A job state as a word (`running`, `exited`, `timed_out`, …).
pub fn state_word(state: i32) -> String {
    pb::JobState::try_from(state)
        .map(|s| enum_word(s.as_str_name(), "JOB_STATE_"))
        .unwrap_or_else(|_| state.to_string())
}

/// A job as JSON: proto field names, the state as a word.
pub fn job_json(job: &pb::JobStatus) -> Value {
    let job = &shown(job);
    json!({
        "job_id": job.job_id,
        "host": job.host,
        "user": job.user,
        "cmd": job.cmd,
        "title": job.title,
        "state": state_word(job.state),
        "pid": job.pid,
        "exit_code": job.exit_code,
        "signal": job.signal,
        "started_at_ms": job.started_at_ms,
        "ended_at_ms": job.ended_at_ms,
        "bytes": job.bytes,
        "lines": job.lines,
        "dropped_bytes": job.dropped_bytes,
        "last_output_at_ms": job.last_output_at_ms,
        "trace_id": job.trace_id,
        "agent_instance": job.agent_instance,
        "reason": job.reason,
        "cwd": job.cwd,
        "run_as": job.run_as,
        "uid": job.uid,
        "gid": job.gid,
        "tenant": job.tenant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_parse_in_either_spelling() {
        assert_eq!(parse_state("timed-out").ok(), Some(pb::JobState::TimedOut));
        assert_eq!(parse_state("RUNNING").ok(), Some(pb::JobState::Running));
        assert!(matches!(parse_state("done"), Err(CtlError::Usage(_))));
        assert!(matches!(
            parse_state("unspecified"),
            Err(CtlError::Usage(_))
        ));
    }

    #[test]
    fn the_ending_says_how_where_and_how_long() {
        let job = pb::JobStatus {
            job_id: "echo-1".into(),
            host: "web-1".into(),
            state: pb::JobState::Exited as i32,
            exit_code: Some(0),
            started_at_ms: 1_000,
            ended_at_ms: 4_250,
            ..Default::default()
        };
        assert_eq!(ending(&job), "exit 0 after 3.2s on web-1 (job echo-1)");
        let killed = pb::JobStatus {
            state: pb::JobState::Killed as i32,
            exit_code: None,
            signal: "SIGTERM".into(),
            ..job
        };
        assert_eq!(
            ending(&killed),
            "killed (SIGTERM) after 3.2s on web-1 (job echo-1)"
        );
    }
}
