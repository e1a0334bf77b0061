//! The one rule for a job's state, applied by every reader and by the gateway's settler: a job
//! RUNNING on a host whose heartbeat has expired is LOST.
//!
//! Readers (the MCP `job` tool, the admin API and so `execmeshctl`) settle what they show with
//! [`settle`] or [`settle_all`], so they all say the same. Nobody has to read for a lost job to
//! end, though: [`run`] follows `mesh_presence` on every replica and settles the jobs of a host
//! as soon as its heartbeat expires (or is withdrawn), and sweeps every job once when it starts,
//! for hosts that went away while no gateway watched. Settling is a compare-and-set on the job
//! status ([`Mesh::mark_lost`]): the one writer that wins — a replica here, or the restarted
//! agent marking its own unfinished jobs — records the job's `job-finished` event, with the
//! job's own event id, so the audit trail has it exactly once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use execmesh_proto::{Token, pb};
use execmesh_runtime::backoff::Backoff;

use crate::core::audit::Audit;
use crate::core::mesh::{Mesh, MeshError};

/// Whether a job in `status` is lost: it still says RUNNING while its host has no heartbeat.
pub fn is_lost(status: &pb::JobStatus, host_present: bool) -> bool {
    status.state() == pb::JobState::Running && !host_present
}

/// `status` as every reader must show it: LOST (and stored so, and audited once) if its host
/// stopped heartbeating while it ran; otherwise unchanged.
pub async fn settle(
    mesh: &Mesh,
    audit: &Audit,
    status: pb::JobStatus,
) -> Result<pb::JobStatus, MeshError> {
    if status.state() != pb::JobState::Running {
        return Ok(status);
    }
    let Ok(host) = Token::parse("host id", &status.host) else {
        return Ok(status);
    };
    let present = mesh.is_present(&host).await?;
    if !is_lost(&status, present) {
        return Ok(status);
    }
    mark(mesh, audit, status).await
}

/// [`settle`] for many statuses with one read of who heartbeats.
pub async fn settle_all(
    mesh: &Mesh,
    audit: &Audit,
    mut statuses: Vec<pb::JobStatus>,
) -> Result<Vec<pb::JobStatus>, MeshError> {
    if !statuses.iter().any(|s| s.state() == pb::JobState::Running) {
        return Ok(statuses);
    }
    let present: BTreeSet<Token> = mesh.present_hosts().await?;
    for status in statuses.iter_mut() {
        if is_lost(status, present.iter().any(|h| h.as_str() == status.host)) {
            *status = mark(mesh, audit, std::mem::take(status)).await?;
        }
    }
    Ok(statuses)
}

/// Marks a job lost; the writer that wins logs and audits it.
async fn mark(
    mesh: &Mesh,
    audit: &Audit,
    status: pb::JobStatus,
) -> Result<pb::JobStatus, MeshError> {
    let settled = mesh.mark_lost(status).await?;
    if settled.by_us {
        let s = &settled.status;
        warn!(host = %s.host, job = %s.job_id, user = %s.user, pid = s.pid,
              "job marked lost: its host stopped sending heartbeats while it ran");
        audit.job_settled(s);
    }
    Ok(settled.status)
}

/// The first and longest waits before the settler watches again after NATS failed it.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Settles lost jobs without waiting for a reader until `shutdown`: a sweep of every job, then
/// the jobs of each host whose heartbeat expires or is withdrawn. Every replica runs it; the
/// compare-and-set lets one win each job.
pub async fn run(mesh: Mesh, audit: Arc<Audit>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        let round = tokio::select! {
            _ = shutdown.cancelled() => return,
            round = settle_while_watching(&mesh, &audit) => round,
        };
        match round {
            Ok(()) => debug!("the watch of host heartbeats ended; watching again"),
            Err(e) => warn!(error = %e, "settling the jobs of vanished hosts failed; retrying"),
        }
        if backoff.wait(&shutdown).await.is_err() {
            return;
        }
    }
}

/// One watch of `mesh_presence`, opened before the sweep so no expiry falls between the two.
async fn settle_while_watching(mesh: &Mesh, audit: &Audit) -> Result<(), MeshError> {
    let mut departures = mesh.presence_departures().await?;
    let settled = settle_all(mesh, audit, mesh.jobs().await?).await?;
    let lost = settled
        .iter()
        .filter(|s| s.state() == pb::JobState::Lost)
        .count();
    info!(jobs = settled.len(), lost, "job states settled");
    while let Some(host) = departures.next().await {
        let host = host?;
        debug!(host = %host, "heartbeat gone; settling the host's jobs");
        settle_all(mesh, audit, mesh.host_jobs(&host).await?).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_running_job_on_a_silent_host_is_lost() {
        let status = |state: pb::JobState| pb::JobStatus {
            state: state as i32,
            ..Default::default()
        };
        assert!(is_lost(&status(pb::JobState::Running), false));
        assert!(!is_lost(&status(pb::JobState::Running), true));
        assert!(!is_lost(&status(pb::JobState::Exited), false));
        assert!(!is_lost(&status(pb::JobState::Lost), false));
    }
}
