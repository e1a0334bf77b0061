//! The Tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663) on the MCP face: which calls
//! become tasks, running one on this replica, and `tasks/get`, `tasks/update` and `tasks/cancel`
//! answered from [`crate::core::tasks`], which every replica reads.
//!
//! A client that declares the extension on a `tools/call` of `bash`, `grep` or `file` `copy`
//! gets a task at once (`resultType: "task"`); the call runs here in the background, renewing
//! the task's lease, and its result (whatever it is: output, refusal, held for approval) is
//! stored in the task. If this replica dies meanwhile, the next replica asked settles the task
//! from the jobs the call had started.
//!
//! A call held for approval, for a client that declared URL-mode elicitation, asks for input
//! inside its task (`input_required`, the approval's link) and continues once it is decided.

use std::sync::Arc;

use futures::future::join_all;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CreateTaskResult, DetailedTask,
    GetTaskResult, InputResponses, JsonObject, RequestMetaObject, Task, TaskPayload, TaskStatus,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use execmesh_proto::{Token, pb};

use super::McpState;
use crate::core::approvals::{ApprovalState, Held};
use crate::core::audit::TaskCancel;
use crate::core::auth::Identity;
use crate::core::tasks::{
    Ending, LEASE, TaskError, TaskJob, TaskJobs, TaskRecord, TaskState, iso8601,
};
use crate::core::trace::TraceContext;

/// Whether this call runs as a task: the client declared the extension on the request, and the
/// call is one that may run long (`bash`, `grep`, `file` `copy`).
pub fn wanted(context: &RequestContext<RoleServer>, request: &CallToolRequestParams) -> bool {
    let declared = context
        .client_capabilities()
        .is_some_and(|caps| caps.supports_tasks());
    declared && runs_long(&request.name, request.arguments.as_ref())
}

/// The calls that may take minutes: commands, fleet-wide searches and host-to-host copies.
fn runs_long(tool: &str, args: Option<&JsonObject>) -> bool {
    match tool {
        "bash" | "grep" => true,
        "file" => args.and_then(|a| a.get("action")).and_then(Value::as_str) == Some("copy"),
        _ => false,
    }
}

/// Creates the task (stored before it is answered, so any replica finds it), starts the call
/// behind it on this replica, and answers with the task.
pub async fn start(
    state: &Arc<McpState>,
    request: CallToolRequestParams,
    context: RequestContext<RoleServer>,
    identity: Identity,
) -> Result<CallToolResponse, McpError> {
    let record = (state.tasks)
        .create(identity.user.as_str(), &request.name)
        .await
        .map_err(protocol_error)?;
    // Read before the request's metadata is dropped below: it carries the client's capabilities.
    let shows_held = super::held::shown_to(&context);
    // The call outlives the HTTP request that made it: it gets a cancellation of its own
    // (tasks/cancel), and no progress token (the extension sends no progress for tasks).
    let mut detached = context;
    detached.ct = CancellationToken::new();
    detached.meta = RequestMetaObject::default();
    let span = info_span!("task", task = %record.id, tool = %request.name, user = %identity.user);
    let runner = Runner {
        state: state.clone(),
        id: record.id.clone(),
        identity,
        jobs: TaskJobs::default(),
        context: detached,
    };
    tokio::spawn(runner.drive(request, shows_held).instrument(span));
    Ok(CallToolResponse::Task(CreateTaskResult::new(task_of(
        &record,
    ))))
}

/// The call of one task, run on this replica: it renews the task's lease meanwhile and stores
/// the call's result at its end.
struct Runner {
    state: Arc<McpState>,
    id: String,
    identity: Identity,
    /// The jobs the call started, copied into the record as they start.
    jobs: TaskJobs,
    /// The call's context; its cancellation stops the call's work (tasks/cancel).
    context: RequestContext<RoleServer>,
}

// === impl Runner ===

impl Runner {
    /// Runs the call to its end and stores its result. A call held for approval, for a client
    /// that can show it (`shows_held`), asks for input inside the task: the task shows the
    /// approval's link as `input_required` and, once the approval is decided, runs the call
    /// with it, so the client never sends the call again.
    async fn drive(self, request: CallToolRequestParams, shows_held: bool) {
        let run = |request| {
            super::run(
                &self.state,
                request,
                &self.context,
                &self.identity,
                Some(&self.jobs),
            )
        };
        let mut ran = self.leased(run(request.clone())).await;
        let pending = ran
            .held
            .take()
            .filter(|held| shows_held && held.state == ApprovalState::Pending);
        if let Some(held) = pending
            && self.await_approval(&held).await
        {
            let mut request = request;
            super::held::with_approval(&mut request, &held.approval_id);
            if let Err(e) = self.state.tasks.resume(&self.id, self.user()).await {
                warn!(error = %e, "task not marked working again");
            }
            ran = self.leased(run(request)).await;
        }
        self.settle(ran.result).await;
    }

    fn user(&self) -> &str {
        self.identity.user.as_str()
    }

    /// Runs `work` while renewing the task's lease (at once when a job was added: a cancel
    /// elsewhere must find it), and returns its output.
    async fn leased<F: Future>(&self, work: F) -> F::Output {
        tokio::pin!(work);
        let mut renewals = tokio::time::interval(LEASE / 3);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = async { tokio::select! { _ = renewals.tick() => {}, _ = self.jobs.added() => {} } } => {
                    self.renew().await;
                }
            }
        }
    }

    /// Renews the lease and records the jobs started so far; returns the record as it now
    /// stands. A cancel seen here stops the call's work: the fan-out stops starting hosts and
    /// its jobs are killed.
    async fn renew(&self) -> Option<TaskRecord> {
        let snapshot = self.jobs.snapshot();
        let (record, stop) = match self
            .state
            .tasks
            .renew(&self.id, self.user(), &snapshot)
            .await
        {
            Ok(record) => {
                self.jobs.stored(snapshot.len());
                let cancelled = record.state == TaskState::Cancelled;
                (Some(record), cancelled)
            }
            // Expired (or purged): nobody can ask for the result any more.
            Err(TaskError::NotFound(_)) => (None, true),
            Err(e) => {
                warn!(error = %e, "task lease not renewed");
                (None, false)
            }
        };
        let cancel = &self.context.ct;
        if stop && !cancel.is_cancelled() {
            info!("task cancelled: stopping its work");
            cancel.cancel();
            let trace = TraceContext::continue_or_start(None);
            stop_jobs(&self.state, &self.identity, &trace, &self.jobs.snapshot()).await;
        }
        record
    }

    /// Shows held call `held` inside the task (`input_required`, the approval's link) and waits
    /// until the approval is decided (or expires): true. False when the user declined to look
    /// (`tasks/update`), the task was cancelled or ended, or it could not be asked.
    async fn await_approval(&self, held: &Held) -> bool {
        let (requests, message) = super::held::input_requests(&self.state, &self.context, held);
        let Ok(requests) = serde_json::to_value(&requests) else {
            return false;
        };
        if let Err(e) = self
            .state
            .tasks
            .ask(&self.id, self.user(), &message, requests)
            .await
        {
            warn!(error = %e, "held call not shown in its task");
            return false;
        }
        info!(approval = %held.approval_id, "held call shown in its task");
        let mut renewals = tokio::time::interval(LEASE / 3);
        loop {
            tokio::select! {
                _ = renewals.tick() => match self.renew().await {
                    Some(record) if record.state == TaskState::InputRequired => {
                        if let Some(Value::Object(responses)) = &record.input_responses
                            && super::held::declined(responses)
                        {
                            info!(approval = %held.approval_id, "the user declined the held call");
                            return false;
                        }
                    }
                    // Cancelled, or settled by another replica.
                    Some(_) => return false,
                    None if self.context.ct.is_cancelled() => return false,
                    None => {}
                },
                () = tokio::time::sleep(super::held::DECISION_POLL) => {
                    if super::held::decided(&self.state, &held.approval_id).await {
                        return true;
                    }
                }
            }
        }
    }

    /// Stores the call's `result` in the task: completed (a task cancelled meanwhile stays
    /// cancelled).
    async fn settle(&self, result: CallToolResult) {
        let (state, id, user) = (&self.state, &self.id, self.user());
        let ending = match serde_json::to_value(&result) {
            Ok(value) => Ending::Completed(value),
            Err(e) => failure(format!("the result could not be encoded: {e}")),
        };
        let finished = state
            .tasks
            .finish(id, user, &self.jobs.snapshot(), ending)
            .await;
        let finished = match finished {
            // Too large for a record: the task says so, and the jobs' output stays readable.
            Err(TaskError::Internal(reason)) => {
                let result = super::result::refusal(
                    "result_too_large".into(),
                    format!(
                        "the call finished, but its result is too large to keep in a task ({reason}); \
                         read the jobs' output with `job` or call again without a task"
                    ),
                );
                let ending =
                    Ending::Completed(serde_json::to_value(&result).unwrap_or(Value::Null));
                state
                    .tasks
                    .finish(id, user, &self.jobs.snapshot(), ending)
                    .await
            }
            other => other,
        };
        match finished {
            Ok(record) => info!(state = ?record.state, "task settled"),
            Err(e) => warn!(error = %e, "task result not stored"),
        }
    }
}

/// `tasks/get`: the task as it stands, settled first if the replica running it stopped.
pub async fn get(
    state: &Arc<McpState>,
    id: &str,
    identity: &Identity,
) -> Result<GetTaskResult, McpError> {
    let task = current(state, id, identity).await.map_err(protocol_error)?;
    Ok(GetTaskResult::new(task))
}

/// Task `id` of the caller as `tasks/get` shows it (and `notifications/tasks` sends it),
/// settled first if the replica running it stopped.
pub async fn current(
    state: &Arc<McpState>,
    id: &str,
    identity: &Identity,
) -> Result<DetailedTask, TaskError> {
    let mut record = state.tasks.get(id, identity.user.as_str()).await?;
    if record.orphaned(execmesh_proto::now_ms()) {
        record = settle_orphan(state, record).await?;
    }
    Ok(detailed(&record))
}

/// `tasks/update`: the client's answers to what a task asks (the approval of a held call),
/// stored for the replica running it; answers to a task that asks nothing are ignored, as the
/// extension says. An unknown task is an error.
pub async fn update(
    state: &Arc<McpState>,
    id: &str,
    identity: &Identity,
    responses: InputResponses,
) -> Result<(), McpError> {
    let responses: JsonObject = responses.into_iter().collect();
    state
        .tasks
        .answer(id, identity.user.as_str(), Value::Object(responses))
        .await
        .map_err(protocol_error)?;
    Ok(())
}

/// `tasks/cancel`: marks the task cancelled and stops every job it started, on every host. The
/// replica running the call sees the mark at its next renewal and stops starting work.
pub async fn cancel(state: &Arc<McpState>, id: &str, identity: &Identity) -> Result<(), McpError> {
    let record = state
        .tasks
        .cancel(id, identity.user.as_str())
        .await
        .map_err(protocol_error)?;
    if record.state == TaskState::Cancelled {
        info!(task = %id, jobs = record.jobs.len(), "task cancelled");
        let trace = TraceContext::continue_or_start(None);
        let stopped = stop_jobs(state, identity, &trace, &record.jobs).await;
        let mut hosts: Vec<String> = record.jobs.iter().map(|j| j.host.clone()).collect();
        hosts.sort_unstable();
        hosts.dedup();
        let cancel = TaskCancel {
            task_id: record.id.clone(),
            hosts,
            jobs: record.jobs.len(),
            stopped,
        };
        let user = identity.user.as_str();
        (state.audit).task_cancelled(&trace.trace_id, user, &record.tool, cancel);
    }
    Ok(())
}

/// A working task whose replica stopped: settled from its jobs. No job started: it failed (its
/// call can simply be made again). Jobs still running: it stays working, saying so. Every job
/// ended: it completed, with a result naming how each ended and where its output is.
async fn settle_orphan(state: &Arc<McpState>, record: TaskRecord) -> Result<TaskRecord, TaskError> {
    let (id, user, tool) = (&record.id, record.user.as_str(), record.tool.as_str());
    if record.jobs.is_empty() {
        let ending = failure(format!(
            "the gateway replica running this `{tool}` call stopped before it finished; it had \
             started no job, so nothing of it runs on: make the call again"
        ));
        return state.tasks.finish(id, user, &[], ending).await;
    }
    let statuses = statuses(state, &record.jobs).await?;
    let running = statuses
        .iter()
        .filter(|s| s.state() == pb::JobState::Running)
        .count();
    if running > 0 {
        let message = format!(
            "the gateway replica running this call stopped; {running} of its {} job(s) still \
             run on their hosts (follow them with `job`, stop them with tasks/cancel)",
            record.jobs.len()
        );
        return state.tasks.note(id, user, &message).await;
    }
    let mut lines = vec![format!(
        "the gateway replica running this `{tool}` call stopped before it composed the result; \
         every job the call started has ended:"
    )];
    for job in &record.jobs {
        let ended = statuses
            .iter()
            .find(|s| s.host == job.host && s.job_id == job.job)
            .map(|s| super::job::outcome(&super::job::view(s)))
            .unwrap_or_else(|| "no status recorded".to_string());
        lines.push(format!("{}: job {}: {ended}", job.host, job.job));
    }
    lines.push("read each job's output with `job` (action \"poll\", its job id)".to_string());
    let result = super::result::refusal("interrupted".into(), lines.join("\n"));
    let value = serde_json::to_value(&result)
        .map_err(|e| TaskError::Internal(format!("cannot encode a result: {e}")))?;
    state
        .tasks
        .finish(id, user, &[], Ending::Completed(value))
        .await
}

/// The statuses of `jobs` (one direct read per job id: a fan-out's hosts share one).
async fn statuses(state: &McpState, jobs: &[TaskJob]) -> Result<Vec<pb::JobStatus>, TaskError> {
    let mut ids: Vec<&str> = jobs.iter().map(|j| j.job.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut statuses = Vec::new();
    for id in ids {
        let Ok(job) = Token::parse("job id", id) else {
            continue;
        };
        statuses.extend(state.mesh.group_jobs(&job).await?);
    }
    Ok(statuses)
}

/// Asks every host of `jobs` to kill its job (SIGTERM to the process group, then SIGKILL), at
/// once, under `trace`; a job that already ended or a host that does not answer is logged, not
/// fatal. Returns how many jobs their host confirmed stopped (or ended already).
async fn stop_jobs(
    state: &McpState,
    identity: &Identity,
    trace: &TraceContext,
    jobs: &[TaskJob],
) -> usize {
    let kills = jobs.iter().map(|job| async move {
        let (Ok(host), Ok(id)) = (
            Token::parse("host id", &job.host),
            Token::parse("job id", &job.job),
        ) else {
            return false;
        };
        let timeout = state.config.request_timeout;
        match crate::core::jobs::kill(&state.mesh, timeout, identity, trace, &host, &id, 0).await {
            Ok(status) => {
                debug!(host = %host, job = %id, state = ?status.state(), "task job stopped");
                true
            }
            Err(e) => {
                warn!(host = %host, job = %id, error = %e, "could not stop a task's job");
                false
            }
        }
    });
    join_all(kills)
        .await
        .into_iter()
        .filter(|&stopped| stopped)
        .count()
}

/// The task as the extension shows it, without its payload.
fn task_of(record: &TaskRecord) -> Task {
    let status = match record.state {
        TaskState::Working => TaskStatus::Working,
        TaskState::InputRequired => TaskStatus::InputRequired,
        TaskState::Completed => TaskStatus::Completed,
        TaskState::Failed => TaskStatus::Failed,
        TaskState::Cancelled => TaskStatus::Cancelled,
    };
    let task = Task::new(
        record.id.clone(),
        status,
        iso8601(record.created_at_ms),
        iso8601(record.updated_at_ms),
    )
    .with_ttl_ms(record.ttl_ms)
    .with_poll_interval_ms(record.poll_interval_ms);
    match &record.status_message {
        Some(message) => task.with_status_message(message.clone()),
        None => task,
    }
}

/// The task with its status's payload: the result once completed, the error once failed.
fn detailed(record: &TaskRecord) -> DetailedTask {
    let object = |value: &Option<Value>| match value {
        Some(Value::Object(map)) => map.clone(),
        _ => JsonObject::new(),
    };
    let payload = match record.state {
        TaskState::Working => TaskPayload::Working,
        TaskState::InputRequired => TaskPayload::InputRequired {
            input_requests: record
                .input_requests
                .clone()
                .and_then(|requests| serde_json::from_value(requests).ok())
                .unwrap_or_default(),
        },
        TaskState::Completed => TaskPayload::Completed {
            result: object(&record.result),
        },
        TaskState::Failed => TaskPayload::Failed {
            error: object(&record.error),
        },
        TaskState::Cancelled => TaskPayload::Cancelled,
    };
    DetailedTask::new(task_of(record), payload)
}

/// A task that failed for a protocol reason: an internal error (-32603) saying `message`.
fn failure(message: String) -> Ending {
    Ending::Failed {
        error: json!({ "code": -32603, "message": message }),
        message,
    }
}

/// A task operation's failure as the JSON-RPC error the extension prescribes: an unknown (or
/// another user's, or expired) task is invalid params (-32602), anything else internal.
pub(super) fn protocol_error(e: TaskError) -> McpError {
    match e {
        TaskError::NotFound(_) => McpError::invalid_params(e.to_string(), None),
        TaskError::Unavailable(_) | TaskError::Internal(_) => {
            warn!(error = %e, "task store failed");
            McpError::internal_error(e.to_string(), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_long_calls_become_tasks() {
        let args = |v: Value| v.as_object().cloned();
        assert!(runs_long("bash", None));
        assert!(runs_long("grep", None));
        assert!(runs_long("file", args(json!({"action": "copy"})).as_ref()));
        assert!(!runs_long("file", args(json!({"action": "read"})).as_ref()));
        for quick in ["hosts", "job", "facts", "whoami"] {
            assert!(!runs_long(quick, None), "{quick}");
        }
    }

    #[test]
    fn a_completed_task_carries_its_result_and_a_failed_one_its_error() {
        let record = TaskRecord {
            id: "task-0123456789abcdef".into(),
            user: "alice".into(),
            tool: "bash".into(),
            state: TaskState::Completed,
            status_message: Some("`bash` finished".into()),
            created_at_ms: 0,
            updated_at_ms: 1_000,
            ttl_ms: 60_000,
            poll_interval_ms: 1_000,
            owner: "gw-1".into(),
            lease_until_ms: 0,
            jobs: Vec::new(),
            result: Some(json!({"content": [], "isError": false})),
            error: None,
            input_requests: None,
            input_responses: None,
        };
        let wire = serde_json::to_value(GetTaskResult::new(detailed(&record))).unwrap();
        assert_eq!(wire["status"], "completed");
        assert_eq!(wire["result"]["isError"], false);
        assert_eq!(wire["createdAt"], "1970-01-01T00:00:00.000Z");
        assert_eq!(wire["ttlMs"], 60_000);
        let failed = TaskRecord {
            state: TaskState::Failed,
            error: Some(json!({"code": -32603, "message": "stopped"})),
            result: None,
            ..record
        };
        let wire = serde_json::to_value(GetTaskResult::new(detailed(&failed))).unwrap();
        assert_eq!(wire["status"], "failed");
        assert_eq!(wire["error"]["code"], -32603);
    }
}
