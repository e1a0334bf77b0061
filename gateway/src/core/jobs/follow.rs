//! Following a job's output from a cursor to its end, for every face that streams it (the admin
//! API's tail, the console's live output): pages as they are stored, woken by the agent's
//! publishes, ended by the exit record, or by the job's status when its agent died without
//! writing one.

use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tracing::debug;

use execmesh_proto::{pb, subject};

use crate::core::audit::Audit;
use crate::core::jobs::state;
use crate::core::mesh::{Mesh, MeshError};
use crate::core::paging::{self, Cursor, Page, PageLimits};

/// A follow that is caught up re-reads at least this often, even without a wake-up: output may
/// arrive where the gateway may not subscribe, and a dead agent writes no exit record.
const POLL: Duration = Duration::from_secs(1);
/// A job whose status says it ended but whose exit record has not arrived after this long is
/// ended by its status (the agent died between writing the two).
const EXIT_RECORD_GRACE: Duration = Duration::from_secs(5);

/// What a follow sends.
#[derive(Debug)]
pub enum Followed {
    /// A page of new output (never empty); its `next` is where the following one starts.
    Page(Page),
    /// The job ended: its final status, and the cursor past its last output.
    End {
        status: pb::JobStatus,
        cursor: Cursor,
    },
}

/// Sends the output of the job `cursor` points into, from there to the job's end, into `tx`;
/// stops when the job ends, on a mesh failure (sent as the last item), or when `tx` closes.
pub async fn follow(
    mesh: &Mesh,
    audit: &Audit,
    mut cursor: Cursor,
    limits: PageLimits,
    tx: mpsc::Sender<Result<Followed, MeshError>>,
) {
    // Wake-ups: the agent's output records as they are published (subscribed before the first
    // read, so none falls between a read and the wait).
    let subject = subject::out(&mesh.tenant, &cursor.host, &cursor.job);
    let mut wake = match mesh.client.subscribe(subject).await {
        Ok(subscription) => Some(subscription),
        Err(e) => {
            debug!(error = %e, "no output subscription; the follow polls");
            None
        }
    };
    let mut ended_since: Option<Instant> = None;
    loop {
        let mut page = match paging::read(mesh, cursor.clone(), limits).await {
            Ok(page) => page,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        cursor = page.next.clone();
        let (exit, caught_up) = (page.exit.take(), page.caught_up);
        if page.lines > 0 && tx.send(Ok(Followed::Page(page))).await.is_err() {
            return;
        }
        if let Some(status) = exit {
            let _ = tx.send(Ok(Followed::End { status, cursor })).await;
            return;
        }
        if !caught_up {
            continue;
        }
        // Caught up: a job whose agent died never writes its exit record; its status ends the
        // follow instead.
        let status = match mesh.job_status(&cursor.host, &cursor.job).await {
            Ok(Some(status)) => state::settle(mesh, audit, status).await,
            Ok(None) => Ok(pb::JobStatus::default()),
            Err(e) => Err(e),
        };
        match status {
            Ok(status) if status.state() == pb::JobState::Lost => {
                // Unless the agent that ran it heartbeats again: then it writes on.
                match state::may_write_more(mesh, &status).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = tx.send(Ok(Followed::End { status, cursor })).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            Ok(status) if status.state() != pb::JobState::Running => {
                let since = *ended_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= EXIT_RECORD_GRACE {
                    let _ = tx.send(Ok(Followed::End { status, cursor })).await;
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
        match wake.as_mut() {
            Some(subscription) => {
                let _ = tokio::time::timeout(POLL, subscription.next()).await;
                // Take whatever else arrived meanwhile; the next read covers it all.
                while let Some(Some(_)) = subscription.next().now_or_never() {}
            }
            None => tokio::time::sleep(POLL).await,
        }
    }
}
