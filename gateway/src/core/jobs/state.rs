//! The one rule for a job's state, applied by every reader and by the gateway's settler: a job RUNNING on a host whose heartbeat has been gone for longer than the grace is LOST, unless its agent says it still runs it.
//!
//! Readers (the MCP `job` tool, the admin API and so `execmeshctl`) settle what they show with
//! [`settle`] or [`settle_all`], so they all say the same. Nobody has to read for a lost job to
//! end, though: [`run`] follows `mesh_presence` on every replica and settles the jobs of a host
//! a grace after its heartbeat expires (or is withdrawn), and sweeps every job once when it
//! starts, for hosts that went away while no gateway watched. Settling is a compare-and-set on
//! the job status ([`Mesh::mark_lost`]): the one writer that wins — a replica here, or the
//! restarted agent marking its own unfinished jobs — records the job's `job-finished` event, with
//! the job's own event id, so the audit trail has it exactly once.
//!
//! Before a job is marked, its agent is asked over core NATS whether it still runs it
//! ([`super::vouched_for_by_its_agent`]); only a job its agent does not vouch for is marked.
//!
//! The grace (`lost_grace_ms`) is there because an expired heartbeat does not always mean a dead
//! agent. While a JetStream cluster elects a new leader for `mesh_presence` (a node killed or
//! restarted), no heartbeat can be stored; the new leader then expires every heartbeat that aged
//! past its TTL meanwhile, at once, and the agents' next beats land a moment later. Without the
//! grace those agents' running jobs were marked lost, and a client paging such a job was told
//! its output had ended while the agent went on writing it. Elections back to back can outlast
//! the grace, which is why the agent is asked too.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use execmesh_proto::{Token, pb};
use execmesh_runtime::backoff::Backoff;

use crate::core::audit::Audit;
use crate::core::mesh::{Liveness, Mesh, MeshError};

/// Default of `lost_grace_ms`: longer than an agent takes to store a heartbeat again once the
/// cluster can store one (it retries a failed beat within a second), short enough that a dead
/// agent's jobs are reported lost a few seconds after its heartbeat expired.
pub const DEFAULT_LOST_GRACE: Duration = Duration::from_secs(3);

/// Whether a job in `status` is lost at `now_ms`: it still says RUNNING while its host has no
/// heartbeat, and the heartbeat went away at least `grace` ago (or is not stored at all).
pub fn is_lost(status: &pb::JobStatus, host: &Liveness, now_ms: u64, grace: Duration) -> bool {
    if status.state() != pb::JobState::Running {
        return false;
    }
    match host {
        Liveness::Heartbeating { .. } => false,
        Liveness::Departed(departure) => {
            let gone_ms = now_ms.saturating_sub(departure.at_ms);
            u128::from(gone_ms) >= grace.as_millis()
        }
        Liveness::Unknown => true,
    }
}

/// Whether a job whose status says it ended may still write output: a job marked lost whose
/// agent, the very instance that ran it, heartbeats again (its heartbeat lapsed longer than the
/// grace but the agent lived). That agent writes the rest of the output and its exit record,
/// and its final status over the lost one; readers keep following until then.
pub async fn may_write_more(mesh: &Mesh, status: &pb::JobStatus) -> Result<bool, MeshError> {
    if status.state() != pb::JobState::Lost || status.agent_instance.is_empty() {
        return Ok(false);
    }
    let Ok(host) = Token::parse("host id", &status.host) else {
        return Ok(false);
    };
    Ok(matches!(
        mesh.liveness(&host).await?,
        Liveness::Heartbeating { instance } if instance == status.agent_instance
    ))
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
    let liveness = mesh.liveness(&host).await?;
    if !is_lost(
        &status,
        &liveness,
        execmesh_proto::now_ms(),
        mesh.lost_grace,
    ) {
        return Ok(status);
    }
    mark(mesh, audit, status).await
}

/// [`settle`] for many statuses with one read of who heartbeats.
pub async fn settle_all(
    mesh: &Mesh,
    audit: &Audit,
    statuses: Vec<pb::JobStatus>,
) -> Result<Vec<pb::JobStatus>, MeshError> {
    Ok(settle_within(mesh, audit, statuses, mesh.lost_grace)
        .await?
        .statuses)
}

/// What [`settle_within`] did.
struct Settled {
    /// The statuses, those found lost now so.
    statuses: Vec<pb::JobStatus>,
    /// Hosts of running jobs whose heartbeat is gone, but for less than the grace or with
    /// their agent vouching for the job.
    departing: BTreeSet<Token>,
}

/// Settles `statuses` with one read of who heartbeats, a job lost once its host's heartbeat has
/// been gone for `grace`.
async fn settle_within(
    mesh: &Mesh,
    audit: &Audit,
    mut statuses: Vec<pb::JobStatus>,
    grace: Duration,
) -> Result<Settled, MeshError> {
    let mut departing = BTreeSet::new();
    if !statuses.iter().any(|s| s.state() == pb::JobState::Running) {
        return Ok(Settled {
            statuses,
            departing,
        });
    }
    let hosts = mesh.liveness_all().await?;
    let now_ms = execmesh_proto::now_ms();
    let mut lost = Vec::new();
    for (index, status) in statuses.iter().enumerate() {
        let Ok(host) = Token::parse("host id", &status.host) else {
            continue;
        };
        let liveness = hosts.get(&host).unwrap_or(&Liveness::Unknown);
        if is_lost(status, liveness, now_ms, grace) {
            lost.push(index);
        } else if status.state() == pb::JobState::Running
            && matches!(liveness, Liveness::Departed(_))
        {
            departing.insert(host);
        }
    }
    // Marked several at a time: each first asks its agent, and a frozen agent takes the whole
    // query timeout to not answer.
    let marked: Vec<(usize, Result<pb::JobStatus, MeshError>)> =
        futures::stream::iter(lost.into_iter().map(|index| {
            let status = statuses[index].clone();
            async move { (index, mark(mesh, audit, status).await) }
        }))
        .buffer_unordered(MARKED_AT_ONCE)
        .collect()
        .await;
    for (index, status) in marked {
        let status = status?;
        // Vouched for by its agent: the host is still gone, and looked at again.
        if status.state() == pb::JobState::Running
            && let Ok(host) = Token::parse("host id", &status.host)
        {
            departing.insert(host);
        }
        statuses[index] = status;
    }
    Ok(Settled {
        statuses,
        departing,
    })
}

/// Jobs [`settle_within`] marks (and so asks the agents of) at once.
const MARKED_AT_ONCE: usize = 64;

/// Marks a job lost, unless its agent answers that it still runs it; the writer that wins logs
/// and audits it.
async fn mark(
    mesh: &Mesh,
    audit: &Audit,
    status: pb::JobStatus,
) -> Result<pb::JobStatus, MeshError> {
    if super::vouched_for_by_its_agent(mesh, &status).await {
        debug!(host = %status.host, job = %status.job_id,
               "heartbeat missing but the agent vouches for the job: not marked lost");
        return Ok(status);
    }
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
/// the jobs of each host whose heartbeat expires or is withdrawn and does not come back within
/// the grace. Every replica runs it; the compare-and-set lets one win each job.
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
/// Each departure is looked at again a grace later: a host heartbeating by then keeps its jobs.
async fn settle_while_watching(mesh: &Mesh, audit: &Audit) -> Result<(), MeshError> {
    let mut departures = mesh.presence_departures().await?;
    let swept = settle_within(mesh, audit, mesh.jobs().await?, mesh.lost_grace).await?;
    let lost = swept
        .statuses
        .iter()
        .filter(|s| s.state() == pb::JobState::Lost)
        .count();
    info!(
        jobs = swept.statuses.len(),
        lost,
        departing = swept.departing.len(),
        "job states settled"
    );
    let grace = mesh.lost_grace;
    let after_grace = |host: Token| async move {
        tokio::time::sleep(grace).await;
        host
    };
    let mut due: FuturesUnordered<_> = swept.departing.into_iter().map(after_grace).collect();
    loop {
        tokio::select! {
            departed = departures.next() => {
                let Some(host) = departed else { return Ok(()) };
                let host = host?;
                debug!(host = %host, "heartbeat gone; its jobs are settled after the grace");
                due.push(after_grace(host));
            }
            Some(host) = due.next(), if !due.is_empty() => {
                // Gone since at least the grace by this replica's own clock: lost unless the
                // host heartbeats again or its agent vouches for the job. A host whose agent
                // vouched is looked at again a grace later: should that agent die before its
                // heartbeat is back, no new marker would come.
                let settled =
                    settle_within(mesh, audit, mesh.host_jobs(&host).await?, Duration::ZERO)
                        .await?;
                due.extend(settled.departing.into_iter().map(after_grace));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::core::hosts::Departure;

    const GRACE: Duration = Duration::from_secs(3);

    fn status(state: pb::JobState) -> pb::JobStatus {
        pb::JobStatus {
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn only_a_running_job_on_a_silent_host_is_lost() {
        let gone = Liveness::Departed(Departure {
            at_ms: 1_000,
            expired: true,
        });
        let live = Liveness::Heartbeating {
            instance: "a1".into(),
        };
        let later = 1_000 + 60_000;
        assert!(is_lost(&status(pb::JobState::Running), &gone, later, GRACE));
        assert!(is_lost(
            &status(pb::JobState::Running),
            &Liveness::Unknown,
            later,
            GRACE
        ));
        assert!(!is_lost(
            &status(pb::JobState::Running),
            &live,
            later,
            GRACE
        ));
        assert!(!is_lost(&status(pb::JobState::Exited), &gone, later, GRACE));
        assert!(!is_lost(&status(pb::JobState::Lost), &gone, later, GRACE));
    }

    #[test]
    fn a_heartbeat_gone_for_less_than_the_grace_loses_no_job() {
        // The marker a JetStream leader leaves when it expires heartbeats it could not store
        // during its election: the agent's next beat is a moment away.
        let gone = Liveness::Departed(Departure {
            at_ms: 10_000,
            expired: true,
        });
        let running = status(pb::JobState::Running);
        assert!(!is_lost(&running, &gone, 10_000, GRACE));
        assert!(!is_lost(&running, &gone, 12_999, GRACE));
        assert!(is_lost(&running, &gone, 13_000, GRACE));
        // A clock behind the server's: never lost early.
        assert!(!is_lost(&running, &gone, 9_000, GRACE));
        // The settler waited the grace itself: lost at once.
        assert!(is_lost(&running, &gone, 9_000, Duration::ZERO));
    }
}
