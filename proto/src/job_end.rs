//! How a job's end is written into the audit trail: its outcome word, the `job-finished` body,
//! and the one event id every settler of the job uses.
//!
//! A job is settled by whoever sees its end: its agent (exit, timeout, kill, or its own
//! unfinished jobs marked lost after a restart) or a gateway (the host's heartbeat expired while
//! the job ran). Each settler wins a compare-and-set on the job status before it records the
//! end, and all of them stamp the event with [`event_id`], which depends on the job alone: a
//! retried publish is dropped by JetStream's `Nats-Msg-Id` dedupe, and should two settlers ever
//! both record an end, the audit store keeps the first (its event ids are unique). So every
//! started job ends in the trail exactly once.

use sha2::{Digest, Sha256};

use crate::pb::{self, JobState};
use crate::redact::Redactor;

/// The audit outcome of a job that ended as `status` says (`ok`, `exit_nonzero`, `lost`, …).
pub fn outcome(status: &pb::JobStatus) -> &'static str {
    match status.state() {
        JobState::Exited if status.exit_code == Some(0) => "ok",
        JobState::Exited => "exit_nonzero",
        JobState::TimedOut => "timed_out",
        JobState::Killed => "killed",
        JobState::Lost => "lost",
        JobState::Failed | JobState::Running | JobState::Unspecified => "failed",
    }
}

/// The `job-finished` body of a job that ended as `status` says; its free text redacted.
pub fn finished(status: &pb::JobStatus, redactor: &Redactor) -> pb::JobFinished {
    pb::JobFinished {
        state: status.state,
        exit_code: status.exit_code,
        signal: status.signal.clone(),
        duration_ms: status.ended_at_ms.saturating_sub(status.started_at_ms),
        output_bytes: status.bytes,
        output_lines: status.lines,
        dropped_bytes: status.dropped_bytes,
        reason: redactor.text(&status.reason),
    }
}

/// The id of the `job-finished` event of job `job` on `host` (in `tenant`), the same for every
/// settler: the job's start time where [`crate::audit_event_id`] has the event's time (so ids
/// still sort roughly by time), then 64 bits of a SHA-256 of the job's key.
pub fn event_id(tenant: &str, host: &str, job: &str, started_at_ms: u64) -> String {
    let digest = Sha256::digest(format!("execmesh job-finished\n{tenant}\n{host}\n{job}"));
    let mut random = [0u8; 8];
    random.copy_from_slice(&digest[..8]);
    crate::audit_event_id(started_at_ms, u64::from_be_bytes(random))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_has_one_finished_event_id_whoever_settles_it() {
        let id = event_id("default", "web-1", "build-x1", 1_700_000_000_000);
        assert_eq!(
            id,
            event_id("default", "web-1", "build-x1", 1_700_000_000_000)
        );
        assert_eq!(id.len(), 28);
        assert_ne!(
            id,
            event_id("default", "web-2", "build-x1", 1_700_000_000_000)
        );
        assert_ne!(
            id,
            event_id("default", "web-1", "build-x2", 1_700_000_000_000)
        );
        assert_ne!(id, event_id("acme", "web-1", "build-x1", 1_700_000_000_000));
    }

    #[test]
    fn outcomes_are_the_documented_words() {
        let status = |state: JobState, exit_code| pb::JobStatus {
            state: state as i32,
            exit_code,
            ..Default::default()
        };
        assert_eq!(outcome(&status(JobState::Exited, Some(0))), "ok");
        assert_eq!(outcome(&status(JobState::Exited, Some(2))), "exit_nonzero");
        assert_eq!(outcome(&status(JobState::Lost, None)), "lost");
        assert_eq!(outcome(&status(JobState::Killed, None)), "killed");
    }
}
