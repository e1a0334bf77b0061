//! Runs one validated request as a job: status record, child process, timeout and kill, final status.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use execmesh_proto::Token;
use execmesh_proto::pb::{self, ErrorCode, JobState, OutputLimit};
use nix::sys::signal::Signal;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, info, info_span, warn};

use crate::executor::JobChild;
use crate::node::Node;
use crate::output::{self, Limits, Output, Progress, Sink};
use crate::process::{self, SpawnError, SpawnSpec};
use crate::refusal::Refusal;
use crate::registry::{Finished, JobHandle, KillOrder, Registered};
use crate::request::RunSpec;
use crate::retry::GaveUp;
use crate::runas;
use crate::status::{CreateStatusError, StatusRecord};
use crate::vfork;
use crate::warm::{self, WarmShell};

/// How long pipes may stay open after the job's group was killed (a process that left the group
/// can hold them); then the agent stops reading.
const PIPE_LINGER: Duration = Duration::from_secs(2);
/// Bound on storing the end of a job that never started.
const FAILED_WRITE_LIMIT: Duration = Duration::from_secs(5);

/// A job that was started: where to learn that it runs and that it ended.
pub struct Started {
    /// The RUNNING status with the pid, once it is stored.
    pub running: oneshot::Receiver<pb::JobStatus>,
    /// The final status, once it is stored.
    pub done: watch::Receiver<Option<Arc<Finished>>>,
}

/// Records the job, spawns its child and leaves it to a job task. Everything that can refuse the
/// request happens here, before the reply; after this the job runs to its end on its own.
///
/// A request that names this agent instance was issued after the instance started, so its
/// replays are refused by the nonce cache (`signature::Verifier`) alone: its job is spawned at
/// once and the task stores its status meanwhile. Any other request (the first one a gateway
/// sends, or one captured before the agent restarted) has its status created before the spawn,
/// so that a replayed job id is refused by the store and can never run its command twice.
pub async fn start(
    node: &Arc<Node>,
    spec: RunSpec,
    permit: OwnedSemaphorePermit,
) -> Result<Started, Refusal> {
    let host = node.host().clone();
    let job = spec.job.clone();
    let exists = || {
        Refusal::new(
            ErrorCode::Invalid,
            format!("host {host}: job id {job} already exists"),
        )
    };

    let (kill_tx, kill_rx) = mpsc::channel(1);
    let (done_tx, done_rx) = watch::channel(None);
    let registered = node
        .registry
        .insert(
            job.clone(),
            JobHandle {
                kill: kill_tx,
                done: done_rx.clone(),
            },
        )
        .ok_or_else(exists)?;

    // The status is kept for days and shown to operators: it holds the command redacted, never
    // as it was sent (the child gets the original).
    let mut status = pb::JobStatus {
        job_id: job.to_string(),
        tenant: node.tenant().to_string(),
        host: host.to_string(),
        user: spec.user.to_string(),
        cmd: node.redactor.text(&spec.cmd),
        title: node.redactor.text(&spec.title),
        state: JobState::Running as i32,
        started_at_ms: execmesh_proto::now_ms(),
        trace_id: spec.trace_id.clone(),
        agent_instance: node.instance.clone(),
        cwd: spec
            .cwd
            .as_ref()
            .map(|c| node.redactor.text(&c.display().to_string()))
            .unwrap_or_default(),
        run_as: runas::name_of(spec.account.as_ref()),
        uid: spec
            .account
            .as_ref()
            .map_or_else(|| nix::unistd::geteuid().as_raw(), |a| a.uid),
        gid: spec
            .account
            .as_ref()
            .map_or_else(|| nix::unistd::getegid().as_raw(), |a| a.gid),
        ..Default::default()
    };
    // A mapped account's login variables win over the request's.
    let mut env = spec.env.clone();
    if let Some(account) = &spec.account {
        env.extend(account.login_env().map(|(k, v)| (k.to_string(), v)));
    }
    let spawn_spec = SpawnSpec {
        shell: &node.config.shell,
        cmd: &spec.cmd,
        argv: &spec.argv,
        cwd: spec.cwd.as_deref(),
        env: &env,
        job: &job,
        host: &host,
        account: spec.account.as_ref(),
    };
    // A warm shell's pid is known before the job starts, so the first status carries it and
    // no second write is needed to record it.
    // Warm shells are local; a relay's jobs start over SSH.
    let warm = if node.executor.is_local() {
        node.warm.take(&spawn_spec)
    } else {
        None
    };
    status.pid = warm.as_ref().map_or(0, |(shell, _)| shell.pid());
    let record = if spec.agent_instance == node.instance {
        Record::Pending
    } else {
        match StatusRecord::create(node, node.job_key(&job), &status).await {
            Ok(record) => Record::Stored(Box::new(record)),
            Err(e) => {
                if let Some((shell, _)) = warm {
                    node.warm.put_back(shell);
                }
                return Err(match e {
                    CreateStatusError::Exists => exists(),
                    CreateStatusError::Write(e) => Refusal::new(
                        ErrorCode::Internal,
                        format!("host {host}: cannot record the status of job {job}: {e}"),
                    ),
                });
            }
        }
    };

    let sink = Sink {
        js: node.js.clone(),
        subject: node.out_subject(&job),
        stop: node.hard_stop.clone(),
        signer: node.record_key.clone(),
    };
    let (spawned, pid_recorded) = match warm {
        Some((shell, script)) => match start_warm(node, &spawn_spec, shell, &script).await {
            Ok(Some(child)) => (Ok(JobChild::cloned(child)), true),
            Ok(None) => (node.executor.spawn(&spawn_spec).await, false),
            Err(e) => (Err(e), false),
        },
        None => (node.executor.spawn(&spawn_spec).await, false),
    };
    let child = match spawned {
        Ok(child) => child,
        Err(e) => {
            warn!(error = %e, "job failed to start");
            status.pid = 0;
            status.state = JobState::Failed as i32;
            status.ended_at_ms = execmesh_proto::now_ms();
            status.reason = e.to_string();
            node.audit.job_finished(&status);
            let store = async {
                let _ = output::publish_exit(&sink, &status).await;
                record.write(node, &job, &status, true).await;
            };
            if timeout(FAILED_WRITE_LIMIT, store).await.is_err() {
                warn!("could not store the status of a job that failed to start");
            }
            return Err(Refusal::new(
                ErrorCode::SpawnFailed,
                format!("host {host}: job {job}: {e}"),
            ));
        }
    };

    let (running_tx, running_rx) = oneshot::channel();
    let task = JobTask {
        node: Arc::clone(node),
        spec,
        status,
        pid_recorded,
        record,
        sink,
        kill_rx,
        running_tx,
        done_tx,
        _registered: registered,
        _permit: permit,
    };
    node.jobs.spawn(task.run(child).instrument(Span::current()));
    Ok(Started {
        running: running_rx,
        done: done_rx,
    })
}

/// Gives a warm shell its job. `Ok(None)` when the shell could not take it (it died, say): the
/// job then starts a shell of its own. A working directory the shell could not enter refuses
/// the job as a fresh shell's spawn would, and the shell goes back to the pool unused.
async fn start_warm(
    node: &Node,
    spec: &SpawnSpec<'_>,
    shell: WarmShell,
    script: &str,
) -> Result<Option<vfork::Child>, SpawnError> {
    if let Some(cwd) = spec.cwd
        && let Err(e) = warm::check_usable_cwd(cwd)
    {
        node.warm.put_back(shell);
        return Err(e);
    }
    match shell.start(script).await {
        Ok(child) => Ok(Some(child)),
        Err(e) => {
            warn!(error = %e, "a warm shell did not take its job; starting a fresh shell");
            Ok(None)
        }
    }
}

/// A job's status record in `mesh_jobs`.
enum Record {
    /// Created before the spawn (the request did not name this agent instance). Boxed: a
    /// record holds its NATS handles.
    Stored(Box<StatusRecord>),
    /// Not written yet: the job task creates it while the job runs.
    Pending,
}

// === impl Record ===

impl Record {
    /// Stores `status` as the job's status: creates the record if it is still pending (retried
    /// until stored), or replaces it when `update`. `None` once the agent stops hard first.
    async fn write(
        self,
        node: &Node,
        job: &Token,
        status: &pb::JobStatus,
        update: bool,
    ) -> Option<StatusRecord> {
        match self {
            Record::Stored(mut record) => {
                if update {
                    let _ = record.update(status, &node.hard_stop).await;
                }
                Some(*record)
            }
            Record::Pending => {
                StatusRecord::create_running(node, node.job_key(job), status, &node.hard_stop)
                    .await
                    .ok()
            }
        }
    }
}

/// Why a job was stopped by the agent.
#[derive(Debug)]
enum Stop {
    Timeout,
    Kill(KillOrder),
}

/// How the child ended.
#[derive(Debug)]
struct End {
    /// The shell's exit status, if it was reaped.
    exit: Option<ExitStatus>,
    /// Set when the agent stopped the job.
    stop: Option<Stop>,
    /// The shell had exited by itself before the agent stopped the job (its group lived on).
    exited_first: bool,
}

/// A started job, owned by its task until it ended and was stored.
struct JobTask {
    node: Arc<Node>,
    spec: RunSpec,
    status: pb::JobStatus,
    /// The first status write already carried the pid (a warm shell's).
    pid_recorded: bool,
    record: Record,
    sink: Sink,
    kill_rx: mpsc::Receiver<KillOrder>,
    running_tx: oneshot::Sender<pb::JobStatus>,
    done_tx: watch::Sender<Option<Arc<Finished>>>,
    /// Leaves the registry when the task ends.
    _registered: Registered,
    /// Frees the job's slot when the job's end is told: after the child was reaped and its
    /// output read, and, unless the reply carries the whole output, its final status stored.
    _permit: OwnedSemaphorePermit,
}

// === impl JobTask ===

impl JobTask {
    async fn run(self, mut child: JobChild) {
        let JobTask {
            node,
            spec,
            mut status,
            pid_recorded,
            record,
            sink,
            mut kill_rx,
            running_tx,
            done_tx,
            _registered,
            _permit: permit,
        } = self;
        let pid = child.pid();
        let deadline = Instant::now() + spec.timeout;
        status.pid = pid;
        info!(pid, cmd = %status.cmd, "job started");
        node.audit.job_started(&status, spec.account.as_ref());

        let max_payload = node.client.server_info().max_payload;
        let inline_max = (!spec.bg).then(|| {
            usize::try_from(spec.inline_max_bytes)
                .unwrap_or(usize::MAX)
                .min(max_payload)
        });
        let (stdout, stderr) = child.take_output();
        let mut output = Output::start(
            sink.clone(),
            stdout,
            stderr,
            Limits {
                chunk_bytes: node.config.chunk_bytes,
                cap: node.config.max_output_bytes_per_job,
                coalesce: node.config.coalesce(),
                inline_max,
            },
            node.config
                .output_redaction
                .then(|| Arc::clone(&node.redactor)),
            output::Charge {
                quotas: Arc::clone(&node.quotas),
                user: status.user.clone(),
            },
        );

        // Store the status with the pid while the child already runs (create it, if it was not
        // before the spawn); the reply for `bg` waits for it. Then, while the job runs, its
        // progress.
        let running = status.clone();
        let progress = output.progress();
        let supervised = CancellationToken::new();
        let stored_first = matches!(record, Record::Stored(_));
        let announce = async {
            let mut record = record
                .write(&node, &spec.job, &running, !pid_recorded)
                .await;
            let _ = running_tx.send(running.clone());
            if let Some(record) = record.as_mut() {
                report_progress(
                    record,
                    running,
                    progress,
                    node.config.progress_interval(),
                    &supervised,
                )
                .await;
            }
            record
        };
        let mut permit = Some(permit);
        let ended = async {
            let end = supervise(&node, &mut child, deadline, &mut kill_rx, &mut output).await;
            supervised.cancel();
            let report = output.finish().await;
            let status = final_status(status, &spec, &node, &end, &report);
            info!(
                state = state_name(status.state),
                exit_code = ?status.exit_code,
                signal = %status.signal,
                bytes = status.bytes,
                lines = status.lines,
                dropped_bytes = status.dropped_bytes,
                reason = %status.reason,
                "job ended"
            );
            node.audit.job_finished(&status);
            if !report.complete {
                warn!("output publishing was abandoned at shutdown; MESH_OUT lacks some output");
            }
            // The reply carries the whole output: it need not wait for the stores below (the
            // status create may still be on its way). Output that does not fit the reply is
            // paged from MESH_OUT, so then the reply waits until everything is stored.
            let mut inline = report.inline;
            if !stored_first && inline.is_some() {
                tell_finished(&mut permit, &done_tx, status.clone(), inline.take());
            }
            (status, inline)
        };
        let (mut record, (status, inline)) = tokio::join!(announce, ended);

        // The exit record and the final status go out together: two round trips in parallel
        // instead of one after the other. The exit record is polled first, so on one connection
        // it is sent (and, on a single server, stored) before the status that says the job
        // ended; whoever reads the final status sees the whole output stored.
        let update = async {
            match record.as_mut() {
                Some(record) => record.update(&status, &node.hard_stop).await,
                None => Err(GaveUp),
            }
        };
        // The job's exit is a span of its own under the job's: storing its end, which a caller
        // waiting for the job (or the reply, for output paged from MESH_OUT) waits on.
        let span = info_span!("exit", state = state_name(status.state),
                              exit_code = status.exit_code, signal = %status.signal);
        let publish = async {
            let (exit, stored) = tokio::join!(output::publish_exit(&sink, &status), update);
            if exit.is_err() {
                warn!("exit record abandoned at shutdown");
            }
            if stored.is_err() {
                warn!(
                    "final status abandoned at shutdown; the next agent start marks the job lost"
                );
            }
        };
        publish.instrument(span).await;
        if permit.is_some() {
            tell_finished(&mut permit, &done_tx, status, inline);
        }
        // Only now, off the reply's path, replace the warm shell this job (or another) took.
        tokio::task::yield_now().await;
        node.warm.replenish();
    }
}

/// Frees the job's slot, then tells whoever waits (the reply, a kill) that the job ended.
/// The slot goes first: a caller told "done" may send the next job at once and must not find
/// the host busy.
fn tell_finished(
    permit: &mut Option<OwnedSemaphorePermit>,
    done_tx: &watch::Sender<Option<Arc<Finished>>>,
    status: pb::JobStatus,
    inline: Option<Vec<u8>>,
) {
    drop(permit.take());
    let _ = done_tx.send(Some(Arc::new(Finished { status, inline })));
}

/// Rewrites a running job's status with its output so far, when it changed and at most once
/// per `interval`, until `ended`: a write per chunk would double the KV traffic of a chatty
/// job. A write still retrying when the job ends is given up; the final status replaces it.
async fn report_progress(
    record: &mut StatusRecord,
    mut shown: pb::JobStatus,
    mut progress: watch::Receiver<Progress>,
    interval: Duration,
    ended: &CancellationToken,
) {
    let mut next_write = Instant::now();
    loop {
        tokio::select! {
            () = ended.cancelled() => return,
            changed = progress.changed() => if changed.is_err() { return },
        }
        tokio::select! {
            () = ended.cancelled() => return,
            () = sleep_until(next_write) => {}
        }
        let now = *progress.borrow_and_update();
        shown.bytes = now.bytes;
        shown.lines = now.lines;
        shown.dropped_bytes = now.dropped_bytes;
        shown.last_output_at_ms = now.last_output_at_ms;
        let _ = record.update(&shown, ended).await;
        next_write = Instant::now() + interval;
    }
}

/// The status a job ended with.
fn final_status(
    mut status: pb::JobStatus,
    spec: &RunSpec,
    node: &Node,
    end: &End,
    report: &output::Report,
) -> pb::JobStatus {
    status.ended_at_ms = execmesh_proto::now_ms();
    status.bytes = report.totals.bytes;
    status.lines = report.totals.lines;
    status.dropped_bytes = report.totals.dropped_bytes;
    let dropped_by = report.totals.dropped_by.unwrap_or(OutputLimit::Unspecified);
    status.dropped_by = dropped_by as i32;
    status.last_output_at_ms = report.last_output_at_ms;
    if let Some(exit) = &end.exit {
        status.exit_code = exit.code();
        status.signal = process::signal_name(exit).unwrap_or_default();
    }
    let (state, reason) = match &end.stop {
        None => (JobState::Exited, String::new()),
        Some(Stop::Timeout) => {
            let mut reason = format!("timed out after {}", seconds(spec.timeout));
            if end.exited_first
                && let Some(code) = status.exit_code
            {
                reason.push_str(&format!(
                    " (the shell had exited with {code}; processes it left kept its output open)"
                ));
            }
            (JobState::TimedOut, reason)
        }
        Some(Stop::Kill(order)) => (JobState::Killed, order.reason.clone()),
    };
    status.state = state as i32;
    status.reason = reason;
    if status.dropped_bytes > 0 {
        node.quotas.dropped(dropped_by, status.dropped_bytes);
        let note = match dropped_by {
            OutputLimit::UserQuota => format!(
                "output quota of {} bytes for user {} on this host reached; {} bytes dropped",
                node.quotas.limit_bytes(dropped_by),
                status.user,
                status.dropped_bytes
            ),
            OutputLimit::HostQuota => format!(
                "output quota of {} bytes for this host reached; {} bytes dropped",
                node.quotas.limit_bytes(dropped_by),
                status.dropped_bytes
            ),
            OutputLimit::JobCap | OutputLimit::Unspecified => format!(
                "output cap of {} bytes reached; {} bytes dropped",
                node.config.max_output_bytes_per_job, status.dropped_bytes
            ),
        };
        status.reason = if status.reason.is_empty() {
            note
        } else {
            format!("{}; {note}", status.reason)
        };
    }
    status
}

/// Waits for the job to end by itself, or stops it on timeout, kill request or shutdown.
///
/// A job ends when its shell exited *and* its output pipes closed: background processes that
/// keep writing are still the job's output. Stopping signals the whole process group: SIGTERM,
/// the grace period, SIGKILL, and SIGKILL once more after the shell is reaped for stragglers.
async fn supervise(
    node: &Node,
    child: &mut JobChild,
    deadline: Instant,
    kill_rx: &mut mpsc::Receiver<KillOrder>,
    output: &mut Output,
) -> End {
    let shutdown = || KillOrder {
        grace: node.config.kill_grace(),
        reason: "agent shut down".to_string(),
    };
    let mut exit = None;
    let stop = tokio::select! {
        status = child.wait() => {
            exit = reaped(status);
            None
        }
        _ = sleep_until(deadline) => Some(Stop::Timeout),
        Some(order) = kill_rx.recv() => Some(Stop::Kill(order)),
        _ = node.kill_all.cancelled() => Some(Stop::Kill(shutdown())),
    };
    let exited_first = stop.is_none();
    let stop = match stop {
        Some(stop) => stop,
        None => tokio::select! {
            _ = output.readers_done() => {
                return End { exit, stop: None, exited_first };
            }
            _ = sleep_until(deadline) => Stop::Timeout,
            Some(order) = kill_rx.recv() => Stop::Kill(order),
            _ = node.kill_all.cancelled() => Stop::Kill(shutdown()),
        },
    };

    let grace = match &stop {
        Stop::Timeout => node.config.kill_grace(),
        Stop::Kill(order) => order.grace,
    };
    info!(?stop, grace_ms = grace.as_millis() as u64, "stopping job");
    child.signal_group(Signal::SIGTERM).await;
    if exit.is_none() {
        tokio::select! {
            status = child.wait() => exit = reaped(status),
            _ = sleep(grace) => {
                child.signal_group(Signal::SIGKILL).await;
                exit = reaped(child.wait().await);
            }
        }
    } else {
        tokio::select! {
            _ = output.readers_done() => {}
            _ = sleep(grace) => {}
        }
    }
    child.signal_group(Signal::SIGKILL).await;
    if timeout(PIPE_LINGER, output.readers_done()).await.is_err() {
        warn!("output pipes still open after the job's group was killed; no longer reading");
        output.abort_readers();
    }
    End {
        exit,
        stop: Some(stop),
        exited_first,
    }
}

fn reaped(status: std::io::Result<ExitStatus>) -> Option<ExitStatus> {
    status
        .inspect_err(|e| warn!(error = %e, "waiting for the job's shell failed"))
        .ok()
}

/// A job state's name (`EXITED`, `KILLED`, …), as logs and spans show it.
fn state_name(state: i32) -> &'static str {
    JobState::try_from(state).map_or("?", |s| s.as_str_name())
}

/// `5s`, `1.5s`, `250ms`.
fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(seconds(Duration::from_secs(5)), "5s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5s");
        assert_eq!(seconds(Duration::from_millis(250)), "250ms");
    }
}
