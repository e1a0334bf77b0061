//! Sends one ExecRequest to a host's agent on behalf of the caller and classifies the outcome:
//! a reply body, or an error that names the host (offline, unknown, timed out, refused).

use std::time::Duration;

use execmesh_proto::{Token, pb, subject};

use super::Call;
use crate::core::error::ToolError;
use crate::core::mesh::DispatchError;

/// How long a request stays valid for the agent after it is sent.
const REQUEST_VALIDITY: Duration = Duration::from_secs(30);

/// Sends `body` to `host` as request `id` and waits up to `wait` for the reply.
/// A timeout on a `run` request names the job, since it may have started.
pub async fn send(
    call: &Call<'_>,
    host: &Token,
    id: &Token,
    body: pb::exec_request::Body,
    wait: Duration,
) -> Result<pb::exec_reply::Body, ToolError> {
    let (request, started) = (
        crate::core::audit::request_name(&body),
        std::time::Instant::now(),
    );
    let result = exchange(call, host, id, body, wait).await;
    (call.audit).dispatched(host, id, &request, started.elapsed(), &result);
    result
}

/// [`send`], unaudited.
async fn exchange(
    call: &Call<'_>,
    host: &Token,
    id: &Token,
    body: pb::exec_request::Body,
    wait: Duration,
) -> Result<pb::exec_reply::Body, ToolError> {
    let mesh = &call.state.mesh;
    let user = &call.identity.user;
    tracing::Span::current().record("host", host.as_str());
    let is_run = matches!(body, pb::exec_request::Body::Run(_));
    let request = pb::ExecRequest {
        tenant: mesh.tenant.to_string(),
        host: host.to_string(),
        job_id: id.to_string(),
        user: user.to_string(),
        expires_at_ms: execmesh_proto::now_ms() + REQUEST_VALIDITY.as_millis() as u64,
        trace_id: call.trace.trace_id.clone(),
        // The agent caps it at its own `max_tier`; `mesh.request` adds nonce and signature.
        tier: call.identity.tier.to_wire() as i32,
        run_as: call.identity.run_as.clone().unwrap_or_default(),
        body: Some(body),
        ..Default::default()
    };
    let reply: pb::ExecReply = match mesh
        .request(
            host,
            subject::exec(&mesh.tenant, host, user),
            &request,
            Some(&call.trace.traceparent()),
            wait,
        )
        .await
    {
        Ok(reply) => reply,
        Err(DispatchError::NoResponders(host)) => return Err(offline_or_unknown(call, host).await),
        Err(e) => {
            return Err(match ToolError::from(e) {
                ToolError::HostTimeout { host, secs, .. } if is_run => ToolError::HostTimeout {
                    host,
                    secs,
                    job: Some(id.clone()),
                },
                other => other,
            });
        }
    };
    match reply.body {
        Some(pb::exec_reply::Body::Error(e)) => Err(ToolError::refused(host, e)),
        Some(body) => Ok(body),
        None => Err(ToolError::bad_reply(host, &"it sent an empty reply")),
    }
}

/// After "no responders": a host the mesh knows is offline, any other is unknown.
async fn offline_or_unknown(call: &Call<'_>, host: Token) -> ToolError {
    match call.state.mesh.host(&host).await {
        Ok(Some(record)) => ToolError::OfflineHost {
            last_seen_ms: record
                .presence
                .map(|p| p.heartbeat_at_ms)
                .or(record.facts.map(|f| f.collected_at_ms)),
            host,
        },
        Ok(None) => {
            let known = call
                .state
                .mesh
                .hosts()
                .await
                .map(|hosts| hosts.keys().map(|h| h.to_string()).collect())
                .unwrap_or_default();
            ToolError::UnknownHost {
                host: host.to_string(),
                known,
            }
        }
        Err(e) => e.into(),
    }
}

/// Random id characters (base32, lower case): subject-safe.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    rand::random::<[u8; 8]>()
        .iter()
        .map(|b| ALPHABET[(*b as usize) % 32] as char)
        .collect()
}

/// A request id `<prefix>-<random>` for requests that are not jobs (file operations).
pub fn request_id(prefix: &str) -> Token {
    Token::sanitize(&format!("{prefix}-{}", random_suffix()), 63)
        .unwrap_or_else(|| Token::sanitize("req", 63).expect("a constant token"))
}
