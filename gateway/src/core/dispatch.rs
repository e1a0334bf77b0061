//! Dispatch of one request to one host: sends an ExecRequest to a host's agent on behalf of a
//! caller, records it in the call's audit trail, and classifies the outcome: a reply body, or
//! an error that names the host (offline, unknown, timed out, refused).

use std::time::{Duration, Instant};

use tracing::Instrument as _;

use execmesh_proto::{Token, pb, subject};

use crate::core::audit::{CallAudit, request_name};
use crate::core::auth::Identity;
use crate::core::error::{RelayOffline, ToolError};
use crate::core::mesh::{DispatchError, Mesh};
use crate::core::tasks::TaskJobs;
use crate::core::trace::TraceContext;

/// How long a request stays valid for the agent after it is sent.
const REQUEST_VALIDITY: Duration = Duration::from_secs(30);

/// Sends the requests of one call: on whose behalf, under which trace, audited where.
pub struct Dispatcher<'a> {
    pub mesh: &'a Mesh,
    /// The caller: the request carries their user, tier and run-as account.
    pub identity: &'a Identity,
    pub trace: &'a TraceContext,
    /// Each request to a host is recorded in it, with how it went.
    pub audit: &'a CallAudit<'a>,
    /// The jobs of the MCP task the call runs as, if it does: each job is added before its
    /// host is asked to start it, so cancelling the task can stop it wherever it runs.
    pub jobs: Option<&'a TaskJobs>,
}

// === impl Dispatcher ===

impl Dispatcher<'_> {
    /// Sends `body` to `host` as request `id` and waits up to `wait` for the reply.
    /// A timeout on a `run` request names the job, since it may have started.
    pub async fn send(
        &self,
        host: &Token,
        id: &Token,
        body: pb::exec_request::Body,
        wait: Duration,
    ) -> Result<pb::exec_reply::Body, ToolError> {
        let (name, started) = (request_name(&body), Instant::now());
        // A `run` request starts job `id`: a timeout names it, since it may have started.
        let job = matches!(body, pb::exec_request::Body::Run(_)).then(|| id.clone());
        if let (Some(jobs), Some(job)) = (self.jobs, &job) {
            jobs.started(host, job).await;
        }
        let request = self.request(host, id, body);
        tracing::Span::current().record("host", host.as_str());
        // One span per host asked (a fan-out has one per host), with how it went; the agent's
        // span is its child.
        let span = tracing::info_span!(
            "dispatch",
            host = %host,
            request = %name,
            outcome = tracing::field::Empty,
            reason = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let result = self
            .exchange(host, request, job, wait)
            .instrument(span.clone())
            .await;
        crate::core::metrics::host_request(result.as_ref().map_or_else(ToolError::code, |_| "ok"));
        match &result {
            Ok(_) => span.record("outcome", "ok"),
            Err(e) => {
                span.record("outcome", e.code());
                span.record("reason", e.to_string());
                span.record("otel.status_code", "ERROR")
            }
        };
        (self.audit)
            .dispatched(host, id, &name, started.elapsed(), &result)
            .instrument(span)
            .await;
        result
    }

    /// The request `id` to `host`, on the caller's behalf.
    fn request(&self, host: &Token, id: &Token, body: pb::exec_request::Body) -> pb::ExecRequest {
        pb::ExecRequest {
            tenant: self.mesh.tenant.to_string(),
            host: host.to_string(),
            job_id: id.to_string(),
            user: self.identity.user.to_string(),
            expires_at_ms: execmesh_proto::now_ms() + REQUEST_VALIDITY.as_millis() as u64,
            trace_id: self.trace.trace_id.clone(),
            // The agent caps it at its own `max_tier`; `mesh.request` adds nonce and signature.
            tier: self.identity.tier.to_wire() as i32,
            run_as: self.identity.run_as.clone().unwrap_or_default(),
            agent_instance: self.mesh.instances.of(host),
            body: Some(body),
            ..Default::default()
        }
    }

    /// Sends `request` to `host`, unaudited, and classifies the reply; a timeout names `job`.
    async fn exchange(
        &self,
        host: &Token,
        request: pb::ExecRequest,
        job: Option<Token>,
        wait: Duration,
    ) -> Result<pb::exec_reply::Body, ToolError> {
        let mesh = self.mesh;
        // Sent from within the host's `dispatch` span: the agent's span becomes its child.
        let span = tracing::Span::current();
        let reply: pb::ExecReply = match mesh
            .request(
                host,
                subject::exec(&mesh.tenant, host, &self.identity.user),
                &request,
                Some(&self.trace.traceparent_in(&span)),
                wait,
            )
            .await
        {
            Ok(reply) => reply,
            Err(DispatchError::NoResponders(host)) => {
                return Err(self.offline_or_unknown(host).await);
            }
            Err(e) => {
                return Err(match ToolError::from(e) {
                    ToolError::HostTimeout { host, secs, .. } if job.is_some() => {
                        ToolError::HostTimeout { host, secs, job }
                    }
                    other => other,
                });
            }
        };
        match reply.body {
            Some(pb::exec_reply::Body::Error(e)) => Err(ToolError::refused(host, e)),
            Some(body) => {
                if let (pb::exec_reply::Body::Run(run), Some(job)) = (&body, &job)
                    && let Some(status) = &run.status
                {
                    mesh.instances.learn(host, &status.agent_instance);
                    // The agent may answer a job's end before it stored it.
                    if status.state() != pb::JobState::Running {
                        mesh.unstored.note(host, job);
                    }
                }
                Ok(body)
            }
            None => Err(ToolError::bad_reply(host, &"it sent an empty reply")),
        }
    }

    /// After "no responders": a host the mesh knows is offline, any other is unknown.
    async fn offline_or_unknown(&self, host: Token) -> ToolError {
        match self.mesh.host(&host).await {
            Ok(Some(record)) => ToolError::OfflineHost {
                // The last heartbeat, not the age of the facts (collected far less often).
                last_seen_ms: record.last_heartbeat_ms(),
                relay: record.relay_user().map(|_| RelayOffline {
                    user: self.identity.user.clone(),
                    reason: record.relay_offline_reason().unwrap_or_default().to_owned(),
                }),
                host,
            },
            Ok(None) => {
                let known = (self.mesh.hosts().await)
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
