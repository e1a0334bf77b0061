//! The agent's audit events (job started and finished, file changed), published to AUDIT by a background task so a job never waits for the audit trail.
//!
//! Events go to `mesh.v1.<tenant>.audit.<host>.<kind>` with the event id as `Nats-Msg-Id`; each
//! is retried until JetStream acknowledges it. They carry no command text, environment or file
//! content: the gateway records the (redacted) arguments, the agent what it did with them; the
//! free text they do carry (title, directory, paths, reasons) goes through the redactor.
//! When the audit-sink is down events wait in the stream; when NATS is unreachable they wait in
//! a bounded queue, and only a full queue drops events (counted and logged).

use std::sync::Arc;
use std::time::Duration;

use execmesh_proto::pb::{self, audit_event::Body, file_reply, file_request};
use execmesh_proto::redact::Redactor;
use execmesh_proto::signing::RecordKey;
use execmesh_proto::subject::{self, audit_kind};
use execmesh_proto::{Token, job_end};
use execmesh_runtime::audit_publisher::Publisher;
use nix::unistd::{getegid, geteuid};

use crate::runas::Account;

/// Events waiting to be published; beyond this, new events are dropped (and counted).
const QUEUE: usize = 8192;
/// Publishes awaiting their acknowledgement at once.
const WINDOW: usize = 128;

/// The agent's audit publisher.
pub struct Audit {
    publisher: Publisher,
    tenant: Token,
    host: Token,
    /// This agent run, in every event (`source_instance`).
    instance: String,
    /// Applied to every free-text field.
    redactor: Arc<Redactor>,
}

/// The file change a request asks for, noted before it runs: what [`Audit::file_changed`]
/// records once it succeeded.
#[derive(Debug, Clone)]
pub struct FileChange {
    action: &'static str,
    path: String,
    to: String,
}

/// Who asked for an operation: the request's job id, user and trace.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub job: &'a str,
    pub user: &'a str,
    pub trace_id: &'a str,
}

// === impl Audit ===

impl Audit {
    /// Starts the publisher task. It creates the AUDIT stream (with `replicas`) if it is missing
    /// before its first publish, retrying while NATS is unreachable. Events are signed with
    /// `signer`, the agent's identity key, when it has one.
    pub fn start(
        client: async_nats::Client,
        tenant: Token,
        host: Token,
        instance: String,
        replicas: usize,
        signer: Option<RecordKey>,
        redactor: Arc<Redactor>,
    ) -> Audit {
        Audit {
            publisher: Publisher::start(client, replicas, QUEUE, WINDOW, signer),
            tenant,
            host,
            instance,
            redactor,
        }
    }

    /// A job's process started, as `account` (the agent's own without one).
    pub fn job_started(&self, status: &pb::JobStatus, account: Option<&Account>) {
        let (uid, gid) = account.map_or_else(
            || (geteuid().as_raw(), getegid().as_raw()),
            |a| (a.uid, a.gid),
        );
        self.emit(
            origin(status),
            "",
            Body::JobStarted(pb::JobStarted {
                pid: status.pid,
                uid,
                gid,
                cwd: self.redactor.text(&status.cwd),
                title: self.redactor.text(&status.title),
            }),
        );
    }

    /// A job ended (or failed to start, or was found unfinished after a restart), as its final
    /// status says. The event id is the job's own ([`job_end::event_id`]), so the job ends in
    /// the trail once whoever settles it and however often this is retried.
    pub fn job_finished(&self, status: &pb::JobStatus) {
        let id = job_end::event_id(
            self.tenant.as_str(),
            self.host.as_str(),
            &status.job_id,
            status.started_at_ms,
        );
        self.emit_as(
            Some(id),
            origin(status),
            job_end::outcome(status),
            Body::JobFinished(job_end::finished(status, &self.redactor)),
        );
    }

    /// Processes `pids` of a job whose status says it ended LOST were found and killed (they
    /// outlived their agent, and a gateway settled the job in the meantime).
    pub fn orphan_killed(&self, status: &pb::JobStatus, pids: Vec<u32>) {
        self.emit(
            origin(status),
            "killed",
            Body::OrphanKilled(pb::OrphanKilled {
                pids,
                reason: format!(
                    "left over from job {} (marked lost) when agent instance {} started",
                    status.job_id, self.instance
                ),
            }),
        );
    }

    /// A file operation that changes files succeeded: records what it did from its reply.
    pub fn file_changed(&self, origin: Origin<'_>, change: FileChange, reply: &pb::FileReply) {
        use file_reply::Result as R;
        let (path, size, sha256, detail) = match &reply.result {
            Some(R::Write(w)) => (w.path.clone(), w.size, w.sha256.clone(), String::new()),
            Some(R::Change(c)) => (c.path.clone(), 0, String::new(), c.detail.clone()),
            Some(R::ChunkWrite(c)) if c.committed => {
                (c.path.clone(), c.received, c.sha256.clone(), String::new())
            }
            // A chunk of a copy still in progress changes nothing visible yet.
            _ => return,
        };
        self.emit(
            origin,
            "ok",
            Body::FileChanged(pb::FileChanged {
                action: change.action.to_string(),
                path: self
                    .redactor
                    .text(if path.is_empty() { &change.path } else { &path }),
                to: self.redactor.text(&change.to),
                size,
                sha256,
                detail: self.redactor.text(&detail),
            }),
        );
    }

    /// Stops taking events and waits up to `grace` for those queued to be published.
    pub async fn close(&self, grace: Duration) {
        self.publisher.close(grace).await;
    }

    fn emit(&self, origin: Origin<'_>, outcome: &str, body: Body) {
        self.emit_as(None, origin, outcome, body);
    }

    /// Publishes an event with the id `id`, or a new one.
    fn emit_as(&self, id: Option<String>, origin: Origin<'_>, outcome: &str, body: Body) {
        let kind = audit_kind::of(Some(&body));
        let time_ms = execmesh_proto::now_ms();
        let event = pb::AuditEvent {
            id: id.unwrap_or_else(|| execmesh_proto::audit_event_id(time_ms, rand::random())),
            time_ms,
            tenant: self.tenant.to_string(),
            source: pb::AuditSource::Agent as i32,
            source_instance: self.instance.clone(),
            trace_id: origin.trace_id.to_string(),
            user: origin.user.to_string(),
            host: self.host.to_string(),
            job_id: origin.job.to_string(),
            tool: String::new(),
            outcome: outcome.to_string(),
            body: Some(body),
        };
        self.publisher
            .send(subject::audit_agent(&self.tenant, &self.host, kind), &event);
    }
}

fn origin(status: &pb::JobStatus) -> Origin<'_> {
    Origin {
        job: &status.job_id,
        user: &status.user,
        trace_id: &status.trace_id,
    }
}

// === impl FileChange ===

impl FileChange {
    /// The change `request` asks for; `None` for operations that only read.
    pub fn of(request: &pb::FileRequest) -> Option<FileChange> {
        use file_request::Op;
        let change = |action, path: &str, to: &str| FileChange {
            action,
            path: path.to_string(),
            to: to.to_string(),
        };
        match &request.op {
            Some(Op::Write(w)) if w.append => Some(change("append", &w.path, "")),
            Some(Op::Write(w)) => Some(change("write", &w.path, "")),
            Some(Op::Move(m)) => Some(change("move", &m.from, &m.to)),
            Some(Op::Delete(d)) => Some(change("delete", &d.path, "")),
            Some(Op::ChunkWrite(c)) if c.finish => Some(change("copy", &c.path, "")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changing_operations_are_file_changes() {
        use file_request::Op;
        let req = |op| pb::FileRequest { op: Some(op) };
        let write = FileChange::of(&req(Op::Write(pb::FileWrite {
            path: "/tmp/a".into(),
            append: true,
            ..Default::default()
        })))
        .unwrap();
        assert_eq!((write.action, write.path.as_str()), ("append", "/tmp/a"));
        let moved = FileChange::of(&req(Op::Move(pb::FileMove {
            from: "/tmp/a".into(),
            to: "/tmp/b".into(),
            ..Default::default()
        })))
        .unwrap();
        assert_eq!((moved.action, moved.to.as_str()), ("move", "/tmp/b"));
        assert!(FileChange::of(&req(Op::Read(pb::FileRead::default()))).is_none());
        assert!(
            FileChange::of(&req(Op::ChunkWrite(pb::FileChunkWrite::default()))).is_none(),
            "a copy's intermediate chunk"
        );
    }
}
