//! What each identity of a secured mesh may publish and subscribe to on NATS, built from the
//! subject grammar ([`crate::subject`]) and the stream layout ([`crate::jetstream`]).
//!
//! An agent subscribes to its own host's subjects and its own inbox, and publishes its own
//! output, audit events and KV keys, plus the few JetStream API calls it makes, each narrowed to
//! its own keys where the API subject names them. Every identity has an inbox prefix of its own
//! ([`crate::subject::agent_inbox`], …), so none can read replies meant for another.
//! `execmeshctl nats-config` writes these rules into the nats-server configuration.

use crate::jetstream::{AUDIT_STREAM, FACTS_BUCKET, JOBS_BUCKET, OUT_STREAM, PRESENCE_BUCKET};
use crate::subject::{self, ANY, Token};

/// How long an agent may take to answer a request and still be allowed to: a fan-out `bash` may
/// wait a day for its command (the gateway caps `timeout` at 24 h), and the server's default
/// (2 minutes) would silently drop later answers.
pub const AGENT_RESPONSE_WINDOW: &str = "25h";
/// How long the audit-sink may take to answer a query.
pub const AUDIT_SINK_RESPONSE_WINDOW: &str = "2m";

/// What one NATS user may publish and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to (wildcards allowed); everything else is refused.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to; everything else is refused.
    pub subscribe: Vec<String>,
    /// Whether (and how long) it may answer requests it received, once each, whatever their
    /// reply subject: how agents and the audit-sink reply without a right to publish to others'
    /// inboxes.
    pub responses: Option<Responses>,
}

/// `allow_responses`: one answer per request received, within `expires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Responses {
    /// Answers per request received.
    pub max: u32,
    /// How long after the request an answer is still allowed (nats-server duration: `25h`).
    pub expires: String,
}

/// The agent of `host`: its own request subjects and inbox; its own output, audit events and KV
/// keys; stream lookups (to open its buckets); reads of its own job statuses and a consumer over
/// them only (recovery at start); answers to the requests it receives.
///
/// No stream or bucket creation: in a secured mesh the gateway creates them. Stream lookups
/// (`STREAM.INFO`) cannot be narrowed further and can list the subjects in a stream — key names
/// such as other hosts' ids and job ids, never values.
pub fn agent(tenant: &Token, host: &Token) -> Permissions {
    let own_jobs = subject::kv(JOBS_BUCKET, &subject::job_keys_of_host(tenant, host));
    let jobs_stream = subject::kv_stream(JOBS_BUCKET);
    let mut publish = vec![
        subject::out_of_host(tenant, host),
        subject::audit_of_source(tenant, host),
        subject::kv(PRESENCE_BUCKET, &subject::host_key(tenant, host)),
        subject::kv(FACTS_BUCKET, &subject::host_key(tenant, host)),
        own_jobs.clone(),
    ];
    publish.extend(stream_lookups());
    publish.extend([
        subject::js_direct_get_last(&jobs_stream, &own_jobs),
        subject::js_consumer_create(&jobs_stream, ANY, Some(&own_jobs)),
    ]);
    Permissions {
        publish,
        subscribe: vec![
            subject::host_all(tenant, host),
            subject::under(&subject::agent_inbox(tenant, host)),
        ],
        responses: Some(Responses {
            max: 1,
            expires: AGENT_RESPONSE_WINDOW.into(),
        }),
    }
}

/// The gateway: it addresses every host, reads and writes every bucket and stream, creates
/// them, and reads its own inbox. Trusted with the mesh; what protects hosts from it is the
/// agents' own checks (signed requests, tier cap, run-as).
pub fn gateway() -> Permissions {
    Permissions {
        publish: vec![
            subject::under(subject::ROOT),
            subject::JS_API_ALL.into(),
            subject::KV_ALL.into(),
            subject::JS_ACK_ALL.into(),
            subject::JS_FLOW_CONTROL_ALL.into(),
        ],
        subscribe: vec![subject::under(subject::GATEWAY_INBOX)],
        responses: None,
    }
}

/// The audit-sink: AUDIT (look up, create when missing), its durable consumer `consumer` (look
/// up, create, pull, acknowledge), the audit query service of every tenant and its NATS micro
/// discovery (`$SRV`), answers to those requests, its own inbox.
pub fn audit_sink(consumer: &str) -> Permissions {
    Permissions {
        publish: vec![
            subject::js_stream_info(AUDIT_STREAM),
            subject::js_stream_create(AUDIT_STREAM),
            subject::js_consumer_info(AUDIT_STREAM, consumer),
            subject::js_consumer_create(AUDIT_STREAM, consumer, None),
            subject::js_consumer_next(AUDIT_STREAM, consumer),
            subject::js_acks(AUDIT_STREAM, consumer),
        ],
        subscribe: vec![
            subject::AUDIT_SERVICES_ALL_TENANTS.into(),
            subject::SERVICE_DISCOVERY_ALL.into(),
            subject::under(subject::AUDIT_SINK_INBOX),
        ],
        responses: Some(Responses {
            max: 1,
            expires: AUDIT_SINK_RESPONSE_WINDOW.into(),
        }),
    }
}

/// The SSH relay of `user` (DESIGN §8): only `user`'s requests and kills for each target, and
/// for each target what an agent of it would write — output, audit events, job statuses (and
/// the reads recovery makes of them), its heartbeat and fact pack — so that the target shows
/// online while the relay's SSH connection to it is up.
pub fn relay(tenant: &Token, user: &Token, targets: &[Token]) -> Permissions {
    let jobs_stream = subject::kv_stream(JOBS_BUCKET);
    let mut publish = Vec::new();
    let mut subscribe = Vec::new();
    for target in targets {
        let target_jobs = subject::kv(JOBS_BUCKET, &subject::job_keys_of_host(tenant, target));
        subscribe.push(subject::exec(tenant, target, user));
        subscribe.push(subject::ctl_of_user(tenant, target, user));
        let read_target_jobs = subject::js_direct_get_last(&jobs_stream, &target_jobs);
        let list_target_jobs = subject::js_consumer_create(&jobs_stream, ANY, Some(&target_jobs));
        publish.extend([
            subject::out_of_host(tenant, target),
            subject::audit_of_source(tenant, target),
            target_jobs,
            read_target_jobs,
            list_target_jobs,
            subject::kv(PRESENCE_BUCKET, &subject::host_key(tenant, target)),
            subject::kv(FACTS_BUCKET, &subject::host_key(tenant, target)),
        ]);
    }
    publish.extend(stream_lookups());
    subscribe.push(subject::under(&subject::relay_inbox(tenant, user)));
    Permissions {
        publish,
        subscribe,
        responses: Some(Responses {
            max: 1,
            expires: AGENT_RESPONSE_WINDOW.into(),
        }),
    }
}

/// `STREAM.INFO` of the streams an agent opens: MESH_OUT, AUDIT and the three host buckets.
fn stream_lookups() -> Vec<String> {
    [
        OUT_STREAM.to_string(),
        AUDIT_STREAM.to_string(),
        subject::kv_stream(PRESENCE_BUCKET),
        subject::kv_stream(FACTS_BUCKET),
        subject::kv_stream(JOBS_BUCKET),
    ]
    .iter()
    .map(|stream| subject::js_stream_info(stream))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(kind: &'static str, s: &str) -> Token {
        Token::parse(kind, s).expect("a valid token")
    }

    #[test]
    fn an_agent_may_only_touch_its_own_subjects_and_keys() {
        let p = agent(&token("tenant", "default"), &token("host id", "web-1"));
        let own = |s: &String| s.contains(".web-1") || s.starts_with("$JS.API.STREAM.INFO.");
        assert!(p.publish.iter().all(own), "{:?}", p.publish);
        assert!(p.subscribe.iter().all(own), "{:?}", p.subscribe);
        assert!(
            !p.publish
                .iter()
                .chain(&p.subscribe)
                .any(|s| s == ">" || s.starts_with("_INBOX.>") || s.contains("STREAM.CREATE")),
            "{p:?}"
        );
        assert_eq!(
            p.subscribe,
            [
                "mesh.v1.default.host.web-1.>",
                "_INBOX.agent.default.web-1.>"
            ]
        );
        assert_eq!(
            p.publish,
            [
                "mesh.v1.default.out.web-1.>",
                "mesh.v1.default.audit.web-1.>",
                "$KV.mesh_presence.default.web-1",
                "$KV.mesh_facts.default.web-1",
                "$KV.mesh_jobs.default.web-1.*",
                "$JS.API.STREAM.INFO.MESH_OUT",
                "$JS.API.STREAM.INFO.AUDIT",
                "$JS.API.STREAM.INFO.KV_mesh_presence",
                "$JS.API.STREAM.INFO.KV_mesh_facts",
                "$JS.API.STREAM.INFO.KV_mesh_jobs",
                "$JS.API.DIRECT.GET.KV_mesh_jobs.$KV.mesh_jobs.default.web-1.*",
                "$JS.API.CONSUMER.CREATE.KV_mesh_jobs.*.$KV.mesh_jobs.default.web-1.*",
            ]
        );
    }

    #[test]
    fn a_relay_may_only_serve_its_users_requests_to_its_targets() {
        let p = relay(
            &token("tenant", "default"),
            &token("user", "alice"),
            &[token("host id", "db-1")],
        );
        assert_eq!(
            p.subscribe,
            [
                "mesh.v1.default.host.db-1.exec.alice",
                "mesh.v1.default.host.db-1.ctl.alice",
                "_INBOX.relay.default.alice.>"
            ]
        );
        assert_eq!(
            p.publish[..7],
            [
                "mesh.v1.default.out.db-1.>",
                "mesh.v1.default.audit.db-1.>",
                "$KV.mesh_jobs.default.db-1.*",
                "$JS.API.DIRECT.GET.KV_mesh_jobs.$KV.mesh_jobs.default.db-1.*",
                "$JS.API.CONSUMER.CREATE.KV_mesh_jobs.*.$KV.mesh_jobs.default.db-1.*",
                "$KV.mesh_presence.default.db-1",
                "$KV.mesh_facts.default.db-1",
            ]
        );
        // Nothing of another user's: no wildcard over users, no host-wide control subject.
        assert!(
            !p.subscribe
                .iter()
                .any(|s| s.ends_with(".>") && s.starts_with("mesh.")
                    || s.ends_with(".*")
                    || s.ends_with(".ctl")),
            "{:?}",
            p.subscribe
        );
    }

    #[test]
    fn the_audit_sink_may_use_its_own_consumer_only() {
        let p = audit_sink("audit-sink");
        assert_eq!(
            p.publish,
            [
                "$JS.API.STREAM.INFO.AUDIT",
                "$JS.API.STREAM.CREATE.AUDIT",
                "$JS.API.CONSUMER.INFO.AUDIT.audit-sink",
                "$JS.API.CONSUMER.CREATE.AUDIT.audit-sink",
                "$JS.API.CONSUMER.MSG.NEXT.AUDIT.audit-sink",
                "$JS.ACK.AUDIT.audit-sink.>",
            ]
        );
        assert_eq!(
            p.subscribe,
            ["mesh.v1.*.svc.audit.>", "$SRV.>", "_INBOX.audit-sink.>"]
        );
        assert_eq!(
            gateway().publish,
            ["mesh.v1.>", "$JS.API.>", "$KV.>", "$JS.ACK.>", "$JS.FC.>"]
        );
    }
}
