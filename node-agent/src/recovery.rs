//! At start, ends the jobs an earlier run of this agent left RUNNING: kills leftovers, marks them lost.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
use async_nats::jetstream::kv;
use execmesh_proto::pb::{self, JobState};
use execmesh_proto::{Token, subject};
use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, getpgid};
use prost::Message as _;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::{AgentError, BoxError};
use crate::node::Node;
use crate::output::{self, Sink};
use crate::process::{HOST_ENV, JOB_ENV, signal_group};
use crate::status::StatusRecord;
use crate::warm::WARM_ENV;

/// Longest wait for the next status while listing, and for storing each recovered job.
const STEP_LIMIT: Duration = Duration::from_secs(10);

/// A status this agent's host left RUNNING.
struct Leftover {
    key: String,
    revision: u64,
    job: Token,
    status: pb::JobStatus,
}

/// Finds this host's RUNNING jobs in `mesh_jobs`, kills any process still carrying their job id,
/// publishes an exit record for each (so pagers see the end) and marks them LOST. Returns how
/// many jobs were recovered.
pub async fn recover(node: &Node) -> Result<usize, AgentError> {
    let (leftovers, lost) = running_jobs(node)
        .await
        .map_err(|source| AgentError::Recovery { source })?;
    if leftovers.is_empty() && lost.is_empty() {
        return Ok(0);
    }

    // Jobs already marked lost (by a gateway, after this host's heartbeat expired) may still
    // have processes: they are killed too, only their statuses stay as they are.
    let mut ids: HashSet<String> = leftovers.iter().map(|l| l.job.to_string()).collect();
    ids.extend(lost.keys().cloned());
    let shells: HashMap<u32, (String, String)> = leftovers
        .iter()
        .filter(|l| l.status.pid > 1 && !l.status.agent_instance.is_empty())
        .map(|l| {
            let shell = (l.status.agent_instance.clone(), l.job.to_string());
            (l.status.pid, shell)
        })
        .collect();
    let host = node.host().to_string();
    let killed = tokio::task::spawn_blocking(move || kill_leftovers(&ids, &shells, &host))
        .await
        .unwrap_or_default();

    let count = leftovers.len();
    for Leftover {
        key,
        revision,
        job,
        mut status,
    } in leftovers
    {
        let pids: Vec<i32> = killed
            .iter()
            .filter(|(_, j)| j == job.as_str())
            .map(|(pid, _)| *pid)
            .collect();
        status.state = JobState::Lost as i32;
        status.ended_at_ms = execmesh_proto::now_ms();
        status.reason = format!(
            "agent restarted (instance {} replaced {})",
            node.instance,
            if status.agent_instance.is_empty() {
                "unknown"
            } else {
                &status.agent_instance
            }
        );
        let stop = CancellationToken::new();
        let sink = Sink {
            js: node.js.clone(),
            subject: node.out_subject(&job),
            stop: stop.clone(),
            signer: node.record_key.clone(),
        };
        let mut record = StatusRecord::at(node, key, revision);
        // Compare-and-set from the RUNNING status read above: if a gateway settled the job
        // meanwhile, its write (and its audit event) stands and this run records nothing.
        let store = async {
            output::publish_exit(&sink, &status).await.ok()?;
            record.settle(&status, &stop).await.ok()
        };
        match timeout(STEP_LIMIT, store).await {
            Ok(Some(true)) => {
                node.audit.job_finished(&status);
                info!(job = %job, pid = status.pid, killed = ?pids,
                      reason = %status.reason, "marked job of an earlier run lost");
            }
            Ok(Some(false)) => info!(job = %job, pid = status.pid, killed = ?pids,
                                     "job of an earlier run was already settled by a gateway"),
            _ => warn!(job = %job, "could not mark the job of an earlier run lost"),
        }
    }
    // Processes of jobs a gateway had already settled as lost: their end is audited; the
    // cleanup is recorded too, since such a process ran unsupervised until now.
    for (job, status) in &lost {
        let pids: Vec<u32> = killed
            .iter()
            .filter(|(_, j)| j == job)
            .filter_map(|(pid, _)| u32::try_from(*pid).ok())
            .collect();
        if pids.is_empty() {
            continue;
        }
        warn!(job = %job, pids = ?pids, user = %status.user,
              "killed leftover processes of a job already marked lost");
        node.audit.orphan_killed(status, pids);
    }
    Ok(count)
}

/// The RUNNING statuses under `<tenant>.<host>.*` (and the LOST ones, by job id), read with an
/// ordered consumer filtered to this host (listing every key of the bucket would read the whole
/// fleet's jobs).
async fn running_jobs(
    node: &Node,
) -> Result<(Vec<Leftover>, HashMap<String, pb::JobStatus>), BoxError> {
    let store: &kv::Store = &node.jobs_kv;
    let filter = format!("{}{}.{}.*", store.prefix, node.tenant(), node.host());
    let consumer = store
        .stream
        .create_consumer(push::OrderedConfig {
            // A named consumer is created on `…CONSUMER.CREATE.<stream>.<name>.<filter>`, which
            // NATS permissions can restrict to this host's keys; an unnamed one could not be.
            name: Some(format!("recovery-{}-{}", node.host(), node.instance)),
            deliver_subject: node.client.new_inbox(),
            description: Some(format!("execmesh recovery of {}", node.host())),
            filter_subject: filter,
            deliver_policy: DeliverPolicy::LastPerSubject,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        })
        .await?;
    let mut leftovers = Vec::new();
    let mut lost = HashMap::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok((leftovers, lost));
    }
    let mut messages = consumer.messages().await?;
    loop {
        let message = timeout(STEP_LIMIT, messages.next())
            .await
            .map_err(|_| "timed out listing job statuses")?
            .ok_or("the job status listing ended early")??;
        let info = message.info()?;
        let (revision, pending) = (info.stream_sequence, info.pending);
        let is_put = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_none_or(|op| op.as_str() == "PUT");
        let key = message
            .subject
            .strip_prefix(store.prefix.as_str())
            .unwrap_or_default()
            .to_string();
        if is_put {
            match (
                pb::JobStatus::decode(message.payload.as_ref()),
                subject::parse_job_key(&key),
            ) {
                // A relay recovers only its own user's jobs: another user's relay may serve
                // the same target.
                (Ok(status), Ok(_)) if !node.executor.serves_user(&status.user) => {}
                (Ok(status), Ok((_, _, job))) if status.state == JobState::Running as i32 => {
                    leftovers.push(Leftover {
                        key,
                        revision,
                        job,
                        status,
                    });
                }
                (Ok(status), Ok((_, _, job))) if status.state == JobState::Lost as i32 => {
                    lost.insert(job.to_string(), status);
                }
                (Ok(_), Ok(_)) => {}
                (status, job) => {
                    warn!(key = %key, status_ok = status.is_ok(), key_ok = job.is_ok(),
                          "skipping an unreadable job status");
                }
            }
        }
        if pending == 0 {
            return Ok((leftovers, lost));
        }
    }
}

/// SIGKILLs every process (and its process group) whose environment names one of `jobs` on
/// `host`, and every warm shell that ran one of them: a warm shell exported `EXECMESH_JOB` only
/// after it started, so its environment at exec (what /proc shows) lacks it; it is recognised
/// by its pid in `shells` (pid → agent instance and job, from the statuses) and its marker naming
/// that same agent instance, which a process that merely reused the pid does not carry. Only
/// processes the agent's user may read are seen, which are the ones it started. Returns (pid,
/// job) of each; a warm shell is reported under the job whose status named its pid.
fn kill_leftovers(
    jobs: &HashSet<String>,
    shells: &HashMap<u32, (String, String)>,
    host: &str,
) -> Vec<(i32, String)> {
    let mut killed = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return killed;
    };
    let own = std::process::id();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let marks = Marks::of(&environ);
        if !marks.on_host(host) {
            continue;
        }
        let job = match (marks.job, marks.warm, shells.get(&pid)) {
            (Some(job), _, _) if jobs.contains(job) => job,
            (_, Some(warm), Some((instance, job))) if warm == instance => job.as_str(),
            _ => continue,
        };
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        let group = getpgid(Some(Pid::from_raw(raw))).ok();
        let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        if let Some(group) = group.and_then(|g| u32::try_from(g.as_raw()).ok()) {
            let _ = signal_group(group, Signal::SIGKILL);
        }
        killed.push((raw, job.to_string()));
    }
    killed
}

/// The execmesh variables in a NUL-separated environment.
#[derive(Debug, Default, PartialEq)]
struct Marks<'a> {
    job: Option<&'a str>,
    host: Option<&'a str>,
    warm: Option<&'a str>,
}

impl<'a> Marks<'a> {
    fn of(environ: &'a [u8]) -> Self {
        let mut marks = Marks::default();
        for var in environ.split(|&b| b == 0) {
            let Ok(var) = std::str::from_utf8(var) else {
                continue;
            };
            let Some((name, value)) = var.split_once('=') else {
                continue;
            };
            match name {
                JOB_ENV => marks.job = Some(value),
                HOST_ENV => marks.host = Some(value),
                WARM_ENV => marks.warm = Some(value),
                _ => {}
            }
        }
        marks
    }

    fn on_host(&self, host: &str) -> bool {
        self.host == Some(host)
    }
}

/// The job id in a NUL-separated environment, if it also names `host`.
#[cfg(test)]
fn job_of<'a>(environ: &'a [u8], host: &str) -> Option<&'a str> {
    let marks = Marks::of(environ);
    marks.job.filter(|_| marks.on_host(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leftover_is_recognised_by_job_and_host() {
        let env = b"PATH=/bin\0EXECMESH_JOB=build-1\0EXECMESH_HOST=web-1\0";
        assert_eq!(job_of(env, "web-1"), Some("build-1"));
        assert_eq!(job_of(env, "web-2"), None);
        assert_eq!(
            job_of(b"EXECMESH_JOBX=1\0EXECMESH_HOST=web-1", "web-1"),
            None
        );
    }
}
