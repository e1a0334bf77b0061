//! Audit events of tool calls: built per call, redacted, and published to AUDIT by a background task, so a call never waits for the audit trail.
//!
//! Each call gets a [`CallAudit`]: `received` when it enters, `dispatched` per host request,
//! and `denied` or `completed` when it ends, all with the call's trace id. Events go into a
//! bounded queue; one task publishes them to `mesh.v1.<tenant>.audit.gateway.<kind>` with the
//! event id as `Nats-Msg-Id` and retries each until JetStream acknowledges it. When the
//! audit-sink is down the events wait in the stream; when NATS itself is unreachable they wait
//! in the queue, and only a full queue drops events (counted and logged), never a tool call.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use execmesh_proto::pb::{self, audit_event::Body};
use execmesh_proto::subject::{self, audit_kind};
use execmesh_proto::{Token, job_end};
use execmesh_runtime::audit_publisher::Publisher;

use crate::core::error::{ToolError, code_name};

pub use execmesh_proto::redact::{PatternError, Redactor};

/// Events waiting to be published unless `audit_queue` says; beyond this, new events are
/// dropped (and counted), except a fan-out's per-host events, which wait for room
/// ([`DISPATCHED_ROOM_WAIT`]). Twice the agent's queue.
pub const DEFAULT_QUEUE: usize = 16_384;
/// How long a host's `call-dispatched` event waits for room in a full queue. A fan-out to
/// thousands of hosts records events faster than they are published: the call then goes at the
/// publisher's pace rather than lose them. Only with NATS unreachable does the wait run out.
const DISPATCHED_ROOM_WAIT: Duration = Duration::from_secs(2);
/// Publishes awaiting their acknowledgement at once.
const WINDOW: usize = 256;
/// Hosts kept of a list in an event.
const MAX_ITEMS: usize = 32;

/// The gateway's audit publisher, shared by every call.
pub struct Audit {
    /// Publishes in the background.
    publisher: Publisher,
    tenant: Token,
    /// This gateway process, in every event (`source_instance`).
    instance: String,
    redactor: Redactor,
}

/// A use of operator rights on other users' jobs, as [`Audit::job_accessed`] records it.
#[derive(Debug)]
pub struct JobAccessed<'a> {
    /// The user who used the rights.
    pub operator: &'a str,
    /// The trace of the call (empty for admin RPCs, which have none).
    pub trace_id: &'a str,
    /// `job`, or the admin RPC (`JobsService.Get`).
    pub tool: &'a str,
    /// The job and its host, when the use was about one job.
    pub host: &'a str,
    pub job: &'a str,
    /// Whose jobs.
    pub owners: Vec<String>,
    /// `poll`, `wait`, `kill`, `list`, `get`, `tail`.
    pub action: &'a str,
    /// `mcp` or `admin-api`.
    pub via: &'a str,
    /// How many jobs of others the use covered.
    pub jobs: usize,
}

/// A task cancel as [`Audit::task_cancelled`] records it.
#[derive(Debug, Default)]
pub struct TaskCancel {
    /// The task's id.
    pub task_id: String,
    /// The hosts asked to stop a job of the task, sorted, each once.
    pub hosts: Vec<String>,
    /// Jobs asked to stop.
    pub jobs: usize,
    /// Jobs their host confirmed stopped.
    pub stopped: usize,
}

/// What the audit trail records of a call its tool answered (an `isError` result included):
/// each face reads it off its own kind of result.
#[derive(Debug, Default)]
pub struct Answer {
    /// The error code of an error result; `None` when the call succeeded.
    pub error_code: Option<String>,
    /// The hosts a fan-out result reports `denied`, with why.
    pub denied_hosts: Vec<(String, String)>,
}

/// Whom and what an event is about; empty where it is about nothing of the kind (the admin
/// API's steps have no trace, host, job or tool).
#[derive(Default)]
struct About<'a> {
    trace_id: &'a str,
    user: &'a str,
    host: &'a str,
    job: &'a str,
    tool: &'a str,
}

/// One call's audit trail.
pub struct CallAudit<'a> {
    audit: &'a Audit,
    tool: String,
    user: String,
    trace_id: String,
    started: Instant,
    /// Hosts dispatched to so far, in order (fan-out dispatches concurrently).
    hosts: Mutex<Vec<String>>,
    /// Hosts whose agent refused the call by its own policy, with the agent's code (`guard`,
    /// `tier`, `run_as`, …): their denial is recorded with that code when the call ends.
    node_denials: Mutex<Vec<(String, String)>>,
}

// === impl Audit ===

impl Audit {
    /// Starts the publisher task on `client`. The task creates the AUDIT stream (with `replicas`)
    /// if it is missing, retrying while NATS is unreachable, before its first publish. Events
    /// are signed with `signer` (the gateway identity's key) when there is one, so the audit-sink
    /// can tell them from events planted under the gateway's subjects.
    pub fn start(
        client: async_nats::Client,
        tenant: Token,
        patterns: &[String],
        replicas: usize,
        queue: usize,
        signer: Option<execmesh_proto::signing::RecordKey>,
    ) -> Result<Audit, PatternError> {
        let redactor = Redactor::new(patterns)?;
        Ok(Audit {
            publisher: Publisher::start(client, replicas, queue, WINDOW, signer),
            tenant,
            instance: format!("{:016x}", rand::random::<u64>()),
            redactor,
        })
    }

    /// The redactor (for tools that record more than their arguments).
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.publisher.dropped()
    }

    /// Opens the audit trail of a call and records that it was received.
    pub fn call(
        &self,
        tool: &str,
        user: &str,
        trace_id: &str,
        args: &Map<String, Value>,
    ) -> CallAudit<'_> {
        let call = CallAudit {
            audit: self,
            tool: tool.to_string(),
            user: user.to_string(),
            trace_id: trace_id.to_string(),
            started: Instant::now(),
            hosts: Mutex::new(Vec::new()),
            node_denials: Mutex::new(Vec::new()),
        };
        let (hosts, hosts_omitted) = listed(named_hosts(args));
        call.emit(
            "",
            "",
            "",
            Body::CallReceived(pb::CallReceived {
                args: self.redactor.args(args),
                hosts,
                hosts_omitted,
                action: args
                    .get("action")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            }),
        );
        call
    }

    /// Records an approver's decision on `record` (made outside any tool call, through the
    /// admin API): the requester's trace is not known here, so the event carries none.
    /// `tool` is the held call's tool, `outcome` the decision, `body` the approval's record.
    pub fn approval_decided(&self, tool: &str, outcome: &str, body: Body, approver: &str) {
        let about = About {
            user: approver,
            tool,
            ..About::default()
        };
        self.publish(&about, outcome, body);
    }

    /// Records a use of operator rights on other users' jobs (see the jobs' access rules).
    pub fn job_accessed(&self, used: JobAccessed<'_>) {
        let about = About {
            trace_id: used.trace_id,
            user: used.operator,
            host: used.host,
            job: used.job,
            tool: used.tool,
        };
        let body = Body::JobAccessed(pb::JobAccessed {
            owners: used.owners,
            action: used.action.to_string(),
            via: used.via.to_string(),
            jobs: u32::try_from(used.jobs).unwrap_or(u32::MAX),
        });
        self.publish(&about, used.action, body);
    }

    /// Records the end of a job this gateway settled (its host's heartbeat expired while it
    /// ran, so the gateway won the compare-and-set that marked it lost). The event is the job's
    /// own `job-finished` with the job's id ([`job_end::event_id`]), the same id its agent would
    /// use, so the job ends in the trail once whoever settles it.
    pub fn job_settled(&self, status: &pb::JobStatus) {
        let about = About {
            trace_id: &status.trace_id,
            user: &status.user,
            host: &status.host,
            job: &status.job_id,
            tool: "",
        };
        let id = job_end::event_id(
            self.tenant.as_str(),
            &status.host,
            &status.job_id,
            status.started_at_ms,
        );
        let body = Body::JobFinished(job_end::finished(status, &self.redactor));
        self.publish_as(Some(id), &about, job_end::outcome(status), body);
    }

    /// Records a token minted through the admin API (`by` minted it; the token is not in the
    /// event, only its id).
    pub fn token_minted(&self, by: &str, minted: pb::TokenMinted) {
        self.outside_call(by, "minted", Body::TokenMinted(minted));
    }

    /// Records a token put on the revocation list through the admin API by `by`.
    pub fn token_revoked(&self, by: &str, revoked: pb::TokenRevoked) {
        self.outside_call(by, "revoked", Body::TokenRevoked(revoked));
    }

    /// Records that the admin API refused `user` a request by policy: `rpc` names it, `reason`
    /// says why (as the caller was told).
    pub fn admin_denied(&self, user: &str, rpc: &str, reason: &str) {
        self.outside_call(
            user,
            "denied",
            Body::CallDenied(pb::CallDenied {
                reason: self.redactor.text(&format!("{rpc}: {reason}")),
                by: "gateway".to_string(),
                code: "permission_denied".to_string(),
            }),
        );
    }

    /// Records refused bearer tokens, as the auth-failure record coalesced them; `user` is the
    /// token's subject where its signature verified.
    pub fn auth_failed(&self, user: &str, failed: pb::AuthFailed) {
        let outcome = failed.code.clone();
        self.outside_call(user, &outcome, Body::AuthFailed(failed));
    }

    /// Records that `user` cancelled their task `task` (of `tool`) under the cancel's trace
    /// `trace_id`, with the jobs it asked to stop: `hosts` asked, `jobs` in all, `stopped`
    /// confirmed by their host.
    pub fn task_cancelled(&self, trace_id: &str, user: &str, tool: &str, cancel: TaskCancel) {
        let about = About {
            trace_id,
            user,
            tool,
            ..About::default()
        };
        let (hosts, hosts_omitted) = listed(cancel.hosts);
        let body = Body::TaskCancelled(pb::TaskCancelled {
            task_id: cancel.task_id,
            hosts,
            jobs: u32::try_from(cancel.jobs).unwrap_or(u32::MAX),
            stopped: u32::try_from(cancel.stopped).unwrap_or(u32::MAX),
            hosts_omitted,
        });
        self.publish(&about, "cancelled", body);
    }

    /// Publishes an event of a step taken outside any tool call (the admin API, the bearer
    /// check): no trace, host, job or tool.
    fn outside_call(&self, user: &str, outcome: &str, body: Body) {
        let about = About {
            user,
            ..About::default()
        };
        self.publish(&about, outcome, body);
    }

    /// Publishes an event with `outcome` and `body` about `about`, stamped with a new id, the
    /// time, the tenant and this gateway process.
    fn publish(&self, about: &About<'_>, outcome: &str, body: Body) {
        self.publish_as(None, about, outcome, body);
    }

    /// [`Audit::publish`] with the event id `id` instead of a new one.
    fn publish_as(&self, id: Option<String>, about: &About<'_>, outcome: &str, body: Body) {
        let event = self.event(id, about, outcome, body);
        self.send(event);
    }

    /// [`Audit::publish`], waiting up to `wait` for room in a full queue.
    async fn publish_within(&self, about: &About<'_>, outcome: &str, body: Body, wait: Duration) {
        let event = self.event(None, about, outcome, body);
        self.publisher
            .send_within(self.subject(&event), &event, wait)
            .await;
    }

    /// The event with `outcome` and `body` about `about`, stamped with `id` (or a new one), the
    /// time, the tenant and this gateway process.
    fn event(
        &self,
        id: Option<String>,
        about: &About<'_>,
        outcome: &str,
        body: Body,
    ) -> pb::AuditEvent {
        let time_ms = execmesh_proto::now_ms();
        pb::AuditEvent {
            id: id.unwrap_or_else(|| execmesh_proto::audit_event_id(time_ms, rand::random())),
            time_ms,
            tenant: self.tenant.to_string(),
            source: pb::AuditSource::Gateway as i32,
            source_instance: self.instance.clone(),
            trace_id: about.trace_id.to_string(),
            user: about.user.to_string(),
            host: about.host.to_string(),
            job_id: about.job.to_string(),
            tool: about.tool.to_string(),
            outcome: outcome.to_string(),
            body: Some(body),
        }
    }

    /// Stops taking events and waits up to `grace` for those queued to be published.
    pub async fn close(&self, grace: Duration) {
        self.publisher.close(grace).await;
    }

    fn send(&self, event: pb::AuditEvent) {
        self.publisher.send(self.subject(&event), &event);
    }

    /// The subject `event` is published on: the gateway's, by kind.
    fn subject(&self, event: &pb::AuditEvent) -> String {
        subject::audit_gateway(&self.tenant, audit_kind::of(event.body.as_ref()))
    }
}

/// The hosts a call's arguments name: `host`, `hosts` (a list or a selector), `to_host`,
/// `selector`.
fn named_hosts(args: &Map<String, Value>) -> Vec<String> {
    let mut hosts = Vec::new();
    for key in ["host", "hosts", "to_host", "selector"] {
        match args.get(key) {
            Some(Value::String(s)) => hosts.push(s.clone()),
            Some(Value::Array(items)) => hosts.extend(
                items
                    .iter()
                    .take(MAX_ITEMS)
                    .filter_map(Value::as_str)
                    .map(str::to_string),
            ),
            _ => {}
        }
    }
    hosts
}

// === impl CallAudit ===

impl CallAudit<'_> {
    /// Records one request to `host`'s agent and how it went. A fan-out records one per host:
    /// when they come faster than they are published, this waits for room in the queue.
    pub async fn dispatched<T>(
        &self,
        host: &Token,
        job: &Token,
        request: &str,
        elapsed: Duration,
        result: &Result<T, ToolError>,
    ) {
        if let Ok(mut hosts) = self.hosts.lock() {
            hosts.push(host.to_string());
        }
        if let Err(e) = result
            && let Some((_, code)) = e.node_denial()
            && let Ok(mut denials) = self.node_denials.lock()
        {
            denials.push((host.to_string(), code_name(code)));
        }
        let (outcome, error) = match result {
            Ok(_) => ("ok", String::new()),
            Err(e @ ToolError::OfflineHost { .. }) => ("offline", e.to_string()),
            Err(e @ ToolError::HostTimeout { .. }) => ("timeout", e.to_string()),
            Err(e @ ToolError::Refused { .. }) => ("refused", e.to_string()),
            Err(e) => ("error", e.to_string()),
        };
        let about = About {
            trace_id: &self.trace_id,
            user: &self.user,
            host: host.as_str(),
            job: job.as_str(),
            tool: &self.tool,
        };
        let body = Body::CallDispatched(pb::CallDispatched {
            request: request.to_string(),
            // A host's refusal may quote the command (the guard names what it refused).
            error: self.audit.redactor.text(&error),
            duration_ms: elapsed.as_millis() as u64,
        });
        (self.audit)
            .publish_within(&about, outcome, body, DISPATCHED_ROOM_WAIT)
            .await;
    }

    /// Records an approval step of this call: `requested` or `used`, with the approval's
    /// record as `body`.
    pub fn approval(&self, step: &str, body: Body) {
        self.emit("", "", step, body);
    }

    /// Records that policy refused the call (or `host`'s part of it).
    pub fn denied(&self, host: &str, by: &str, code: &str, reason: &str) {
        self.emit(
            host,
            "",
            "denied",
            Body::CallDenied(pb::CallDenied {
                reason: self.audit.redactor.text(reason),
                by: by.to_string(),
                code: code.to_string(),
            }),
        );
    }

    /// Records how the call ended: `denied` when policy refused it (the gateway's, or the
    /// host's own: tier cap, run-as, CommandGuard, roots), else `completed` (after a `denied`
    /// for each host of a fan-out that was refused).
    pub fn finish(&self, result: Result<Answer, &ToolError>) {
        let hosts = self.hosts.lock().map(|h| h.clone()).unwrap_or_default();
        let node_denials = self
            .node_denials
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default();
        if let Ok(answer) = &result {
            for (host, reason) in &answer.denied_hosts {
                // A host that was asked refused by its own policy, with its code; one never
                // asked was outside the caller's reach.
                let (by, code) = match node_denials.iter().find(|(h, _)| h == host) {
                    Some((_, code)) => (host.as_str(), code.as_str()),
                    None if hosts.contains(host) => (host.as_str(), "denied"),
                    None => ("gateway", "denied"),
                };
                self.denied(host, by, code, reason);
            }
        }
        let elapsed = self.started.elapsed().as_millis() as u64;
        let (hosts, hosts_omitted) = listed(hosts);
        let (status, code, message) = match result {
            Ok(Answer {
                error_code: Some(code),
                ..
            }) => ("error", code, String::new()),
            Ok(_) => ("ok", String::new(), String::new()),
            // Held for approval: not a failure; the approval-requested event says the rest.
            Err(ToolError::ApprovalRequired { .. }) => {
                ("held", "approval_required".to_string(), String::new())
            }
            Err(e) => {
                if let Some((by, code)) = denial(e) {
                    self.denied(by, by, &code, &e.to_string());
                    return;
                }
                ("error", e.reported_code(), e.to_string())
            }
        };
        self.emit(
            "",
            "",
            status,
            Body::CallCompleted(pb::CallCompleted {
                status: status.to_string(),
                error_code: code,
                error: self.audit.redactor.text(&message),
                duration_ms: elapsed,
                hosts_omitted,
                hosts,
            }),
        );
    }

    fn emit(&self, host: &str, job: &str, outcome: &str, body: Body) {
        let about = About {
            trace_id: &self.trace_id,
            user: &self.user,
            host,
            job,
            tool: &self.tool,
        };
        self.audit.publish(&about, outcome, body);
    }
}

/// Who refused a call by policy, and the code: `(host or "gateway", code)`; `None` for
/// failures that are not policy decisions.
fn denial(e: &ToolError) -> Option<(&str, String)> {
    match e {
        ToolError::Tier(_) => Some(("gateway", "tier".into())),
        ToolError::Denied { .. } => Some(("gateway", "denied".into())),
        ToolError::NotOperator { .. } => Some(("gateway", "not_operator".into())),
        other => other
            .node_denial()
            .map(|(host, code)| (host.as_str(), code_name(code))),
    }
}

/// Most bytes of host names one audit event lists. A call over thousands of hosts would
/// otherwise make an event past what AUDIT takes (`MAX_AUDIT_EVENT_BYTES`, 64 KiB), which the
/// stream refuses: the event counts the rest (`hosts_omitted`), and each host's own events
/// (dispatched, denied) name it.
pub const LISTED_HOSTS_BYTES: usize = 16 * 1024;

/// `hosts` cut to [`LISTED_HOSTS_BYTES`] of names, and how many were left out.
pub fn listed(mut hosts: Vec<String>) -> (Vec<String>, u32) {
    let mut bytes = 0;
    let kept = hosts
        .iter()
        .take_while(|host| {
            // A name and its field framing.
            bytes += host.len() + 2;
            bytes <= LISTED_HOSTS_BYTES
        })
        .count();
    let omitted = hosts.len() - kept;
    hosts.truncate(kept);
    (hosts, u32::try_from(omitted).unwrap_or(u32::MAX))
}

/// The name of an agent request for the audit trail: `run`, `file.write`, `grep`, `facts`.
pub fn request_name(body: &pb::exec_request::Body) -> String {
    use pb::exec_request::Body as B;
    match body {
        // A runbook's run names the runbook and the hash of the definition that was resolved.
        B::Run(pb::RunRequest {
            runbook: Some(rb), ..
        }) => format!("runbook {} {}", rb.name, rb.hash),
        B::Run(_) => "run".to_string(),
        B::Grep(_) => "grep".to_string(),
        B::Facts(_) => "facts".to_string(),
        B::File(file) => format!("file.{}", file.op_name()),
        #[allow(unreachable_patterns)]
        _ => "other".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_list_is_cut_to_its_byte_budget_and_counts_the_rest() {
        let few: Vec<String> = (0..10).map(|n| format!("web-{n}")).collect();
        assert_eq!(listed(few.clone()), (few, 0));

        // 10,000 hosts of 10 bytes: far past the budget, as a fan-out over a large fleet is.
        let many: Vec<String> = (0..10_000).map(|n| format!("sim-{n:06}")).collect();
        let (kept, omitted) = listed(many.clone());
        assert_eq!(kept.len() + omitted as usize, many.len());
        assert_eq!(kept, many[..kept.len()], "the first ones, in order");
        let bytes: usize = kept.iter().map(|h| h.len() + 2).sum();
        assert!(bytes <= LISTED_HOSTS_BYTES, "{bytes}");
        assert!(
            bytes + 12 > LISTED_HOSTS_BYTES,
            "cut no earlier than needed: {bytes}"
        );

        // The event that carries them fits AUDIT's message limit with room to spare.
        let event = pb::AuditEvent {
            body: Some(Body::CallCompleted(pb::CallCompleted {
                hosts: kept,
                hosts_omitted: omitted,
                ..Default::default()
            })),
            ..Default::default()
        };
        let size = prost::Message::encoded_len(&event);
        assert!(
            size < execmesh_proto::jetstream::MAX_AUDIT_EVENT_BYTES as usize / 2,
            "{size}"
        );
    }
}
