//! Jobs on hosts as the domain acts on them: who may see or act on a job ([`access`]), the one
//! rule for the state every reader shows ([`state`]), following a job's output to its end
//! ([`follow`]), and asking a host's agent to kill one or whether one still runs.

pub mod access;
pub mod follow;
pub mod state;

use std::time::{Duration, Instant};

use serde_json::json;

use execmesh_proto::tier::Tier;
use execmesh_proto::{Token, pb, subject};
use tracing::debug;

use crate::core::audit::{Answer, Audit};
use crate::core::auth::Identity;
use crate::core::error::ToolError;
use crate::core::jobs::access::{JobAccess, Via};
use crate::core::mesh::{DispatchError, Mesh};
use crate::core::trace::TraceContext;

/// How long a control request stays valid for the agent after it is sent.
const CONTROL_VALIDITY: Duration = Duration::from_secs(30);

/// Asks `host`'s agent to kill `job` (SIGTERM to its process group, SIGKILL after `grace_ms`
/// milliseconds; 0: the agent's default) and returns the status it reports. The reply is
/// awaited up to `request_timeout` plus the ten seconds a kill may take.
pub async fn kill(
    mesh: &Mesh,
    request_timeout: Duration,
    identity: &Identity,
    trace: &TraceContext,
    host: &Token,
    job: &Token,
    grace_ms: u64,
) -> Result<pb::JobStatus, ToolError> {
    let request = pb::ControlRequest {
        tenant: mesh.tenant.to_string(),
        host: host.to_string(),
        job_id: job.to_string(),
        user: identity.user.to_string(),
        expires_at_ms: execmesh_proto::now_ms() + CONTROL_VALIDITY.as_millis() as u64,
        // The agent caps it at its own `max_tier`; `mesh.request` adds nonce and signature.
        tier: identity.tier.to_wire() as i32,
        body: Some(pb::control_request::Body::Kill(pb::KillRequest {
            grace_ms,
        })),
        ..Default::default()
    };
    let reply: pb::ControlReply = mesh
        .request(
            host,
            ctl_subject(mesh, host, &identity.user).await,
            &request,
            Some(&trace.traceparent()),
            request_timeout + Duration::from_secs(10),
        )
        .await
        .map_err(ToolError::from)?;
    match reply.body {
        Some(pb::control_reply::Body::Status(status)) => Ok(status),
        Some(pb::control_reply::Body::Error(e)) => Err(ToolError::refused(host, e)),
        None => Err(ToolError::bad_reply(host, &"it sent an empty reply")),
    }
}

/// The control subject of `host` for `user`'s jobs. A relay target's jobs are its users'
/// relays' to control: each reads only its own user's control subject.
async fn ctl_subject(mesh: &Mesh, host: &Token, user: &Token) -> String {
    let relay_target = matches!(mesh.host(host).await,
        Ok(Some(record)) if record.relay_user().is_some());
    if relay_target {
        subject::ctl_of_user(&mesh.tenant, host, user)
    } else {
        subject::ctl(&mesh.tenant, host)
    }
}

/// How long the agent that runs a job has to answer whether it still does: a live agent
/// answers from memory within milliseconds, and a reader of a frozen agent's job waits this long.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a query stays valid for the agent (and its nonce held in the agent's replay cache).
const QUERY_VALIDITY: Duration = Duration::from_secs(10);

/// Whether the agent instance that started the running job `status` describes vouches for it
/// over core NATS: the job is in that instance's table, running or ended with its status still
/// to store. Asked before the job is marked lost for a missing heartbeat: while JetStream elects
/// a leader no heartbeat can be stored, but the agent still answers. No answer (no responders, a
/// timeout), an answer from another instance, or a refusal (the job is not in its table, or an
/// agent too old to know the query) is `false`: the heartbeat rule stands.
///
/// No JetStream read picks the subject: a relay target's jobs are its user's relay's, on its
/// user's control subject, which is asked when nobody answers on the host's own.
pub async fn vouched_for_by_its_agent(mesh: &Mesh, status: &pb::JobStatus) -> bool {
    let (Ok(host), Ok(job), Ok(user)) = (
        Token::parse("host id", &status.host),
        Token::parse("job id", &status.job_id),
        Token::parse("user", &status.user),
    ) else {
        return false;
    };
    if status.agent_instance.is_empty() {
        return false;
    }
    let request = pb::ControlRequest {
        tenant: mesh.tenant.to_string(),
        host: host.to_string(),
        job_id: job.to_string(),
        user: user.to_string(),
        expires_at_ms: execmesh_proto::now_ms() + QUERY_VALIDITY.as_millis() as u64,
        tier: Tier::Readonly.to_wire() as i32,
        body: Some(pb::control_request::Body::Query(pb::JobQuery {})),
        ..Default::default()
    };
    let ask = |subject| {
        mesh.request::<_, pb::ControlReply>(&host, subject, &request, None, QUERY_TIMEOUT)
    };
    let mut reply = ask(subject::ctl(&mesh.tenant, &host)).await;
    if matches!(reply, Err(DispatchError::NoResponders(_))) {
        reply = ask(subject::ctl_of_user(&mesh.tenant, &host, &user)).await;
    }
    let vouched = matches!(&reply,
        Ok(pb::ControlReply { body: Some(pb::control_reply::Body::Status(now)) })
            if now.agent_instance == status.agent_instance);
    debug!(host = %host, job = %job, vouched, answer = ?reply.as_ref().map(|r| &r.body),
           error = reply.as_ref().err().map(tracing::field::display),
           "asked the agent after the job");
    vouched
}

/// Kills the running job `status` describes as `caller` (signed by the gateway, tier-checked by
/// the agent), in the audit trail as a `job kill` call made `via` a face, with operator rights
/// recorded when the job is someone else's. `rpc` names the operation for that record.
#[allow(clippy::too_many_arguments)]
pub async fn kill_audited(
    mesh: &Mesh,
    audit: &Audit,
    request_timeout: Duration,
    caller: &Identity,
    access: &JobAccess,
    via: Via,
    rpc: &str,
    status: &pb::JobStatus,
    grace_ms: u64,
) -> Result<pb::JobStatus, ToolError> {
    let bad = |what: &str, e: execmesh_proto::TokenError| {
        ToolError::Internal(format!("stored job has a bad {what}: {e}"))
    };
    let host = Token::parse("host id", &status.host).map_err(|e| bad("host id", e))?;
    let job = Token::parse("job id", &status.job_id).map_err(|e| bad("job id", e))?;
    let trace = TraceContext::continue_or_start(None);
    access.audit_use(audit, &trace.trace_id, rpc, via, "kill", [status]);
    let mut args = serde_json::Map::new();
    args.insert("action".into(), json!("kill"));
    args.insert("job".into(), json!(job.as_str()));
    args.insert("host".into(), json!(host.as_str()));
    args.insert("via".into(), json!(via.as_str()));
    let call = audit.call("job", caller.user.as_str(), &trace.trace_id, &args);
    let started = Instant::now();
    let result = kill(mesh, request_timeout, caller, &trace, &host, &job, grace_ms).await;
    call.dispatched(&host, &job, "kill", started.elapsed(), &result)
        .await;
    match result {
        Ok(killed) => {
            call.finish(Ok(Answer::default()));
            Ok(killed)
        }
        Err(e) => {
            call.finish(Err(&e));
            Err(e)
        }
    }
}
