//! The NATS subject grammar and the validated tokens (tenant, host, user, job) that fill it.
//!
//! Every identifier that becomes a subject token is lower-case `[a-z0-9-]{1,63}`: no dots, no
//! wildcards, no whitespace. [`Token`] is the only way to build one, so a subject assembled from
//! tokens can never address more than it names.

use std::fmt;

/// Protocol version segment of every subject.
pub const ROOT: &str = "mesh.v1";

/// The tenant used when none is configured.
pub const DEFAULT_TENANT: &str = "default";

/// Longest token, in bytes.
pub const MAX_TOKEN_LEN: usize = 63;

/// A validated subject token: `[a-z0-9-]{1,63}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(String);

/// Why a string is not a valid subject token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} `{value}` is longer than {MAX_TOKEN_LEN} characters")]
    TooLong { kind: &'static str, value: String },
    #[error(
        "{kind} `{value}` has `{ch}` at position {pos}; only lower-case letters, digits and `-` are allowed"
    )]
    BadChar {
        kind: &'static str,
        value: String,
        ch: char,
        pos: usize,
    },
}

impl Token {
    /// Validates `value` as a token; `kind` ("host id", "user", …) names it in the error.
    pub fn parse(kind: &'static str, value: &str) -> Result<Self, TokenError> {
        if value.is_empty() {
            return Err(TokenError::Empty { kind });
        }
        if value.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong {
                kind,
                value: value.chars().take(80).collect(),
            });
        }
        if let Some((pos, ch)) = value
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(TokenError::BadChar {
                kind,
                value: value.to_string(),
                ch,
                pos: pos + 1,
            });
        }
        Ok(Self(value.to_string()))
    }

    /// Turns free text (a hostname, a job title) into a token: lower-cased, every other
    /// character replaced by `-`, runs of `-` folded, trimmed to `max` bytes. Returns `None`
    /// when nothing usable is left.
    pub fn sanitize(value: &str, max: usize) -> Option<Self> {
        let mut out = String::with_capacity(value.len());
        for c in value.chars() {
            let c = c.to_ascii_lowercase();
            let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            };
            if c == '-' && (out.is_empty() || out.ends_with('-')) {
                continue;
            }
            out.push(c);
            if out.len() >= max.min(MAX_TOKEN_LEN) {
                break;
            }
        }
        while out.ends_with('-') {
            out.pop();
        }
        if out.is_empty() {
            None
        } else {
            Some(Self(out))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl AsRef<str> for Token {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// `mesh.v1.<tenant>.host.<host>.exec.<user>`: gateway → agent requests run on behalf of `user`.
pub fn exec(tenant: &Token, host: &Token, user: &Token) -> String {
    format!("{ROOT}.{tenant}.host.{host}.exec.{user}")
}

/// `mesh.v1.<tenant>.host.<host>.exec.*`: what an agent subscribes to for requests of every user.
pub fn exec_all_users(tenant: &Token, host: &Token) -> String {
    format!("{ROOT}.{tenant}.host.{host}.exec.*")
}

/// `mesh.v1.<tenant>.host.<host>.ctl`: gateway → agent control requests (kill).
pub fn ctl(tenant: &Token, host: &Token) -> String {
    format!("{ROOT}.{tenant}.host.{host}.ctl")
}

/// `mesh.v1.<tenant>.host.<host>.ctl.<user>`: control requests (kill) for `user`'s jobs on a
/// host an SSH relay of `user` serves; the relay may not read the host's other control subjects.
pub fn ctl_of_user(tenant: &Token, host: &Token, user: &Token) -> String {
    format!("{ROOT}.{tenant}.host.{host}.ctl.{user}")
}

/// `mesh.v1.<tenant>.out.<host>.<job>`: a job's output records in MESH_OUT.
pub fn out(tenant: &Token, host: &Token, job: &Token) -> String {
    format!("{ROOT}.{tenant}.out.{host}.{job}")
}

/// The `<source>` token of events the gateway publishes. Agents publish under their host id,
/// so NATS permissions can confine each agent to `mesh.v1.<tenant>.audit.<its host>.*`; give no
/// host the id `gateway` where permissions are per source.
pub const AUDIT_GATEWAY_SOURCE: &str = "gateway";

/// Event kinds: the last token of an audit subject and the `kind` of a stored record.
pub mod audit_kind {
    use crate::pb::audit_event::Body;

    pub const CALL_RECEIVED: &str = "call-received";
    pub const CALL_DENIED: &str = "call-denied";
    pub const CALL_DISPATCHED: &str = "call-dispatched";
    pub const CALL_COMPLETED: &str = "call-completed";
    pub const JOB_STARTED: &str = "job-started";
    pub const JOB_FINISHED: &str = "job-finished";
    pub const FILE_CHANGED: &str = "file-changed";
    pub const ORPHAN_KILLED: &str = "orphan-killed";
    pub const APPROVAL_REQUESTED: &str = "approval-requested";
    pub const APPROVAL_DECIDED: &str = "approval-decided";
    pub const JOB_ACCESSED: &str = "job-accessed";
    pub const TOKEN_MINTED: &str = "token-minted";
    pub const TOKEN_REVOKED: &str = "token-revoked";
    pub const AUTH_FAILED: &str = "auth-failed";
    pub const TASK_CANCELLED: &str = "task-cancelled";
    /// An event without a body (from a newer publisher this build does not know).
    pub const UNKNOWN: &str = "unknown";

    /// Every kind this build knows.
    pub const ALL: [&str; 15] = [
        CALL_RECEIVED,
        CALL_DENIED,
        CALL_DISPATCHED,
        CALL_COMPLETED,
        JOB_STARTED,
        JOB_FINISHED,
        FILE_CHANGED,
        ORPHAN_KILLED,
        APPROVAL_REQUESTED,
        APPROVAL_DECIDED,
        JOB_ACCESSED,
        TOKEN_MINTED,
        TOKEN_REVOKED,
        AUTH_FAILED,
        TASK_CANCELLED,
    ];

    /// The kind of an event body.
    pub fn of(body: Option<&Body>) -> &'static str {
        match body {
            Some(Body::CallReceived(_)) => CALL_RECEIVED,
            Some(Body::CallDenied(_)) => CALL_DENIED,
            Some(Body::CallDispatched(_)) => CALL_DISPATCHED,
            Some(Body::CallCompleted(_)) => CALL_COMPLETED,
            Some(Body::JobStarted(_)) => JOB_STARTED,
            Some(Body::JobFinished(_)) => JOB_FINISHED,
            Some(Body::FileChanged(_)) => FILE_CHANGED,
            Some(Body::OrphanKilled(_)) => ORPHAN_KILLED,
            Some(Body::ApprovalRequested(_)) => APPROVAL_REQUESTED,
            Some(Body::ApprovalDecided(_)) => APPROVAL_DECIDED,
            Some(Body::JobAccessed(_)) => JOB_ACCESSED,
            Some(Body::TokenMinted(_)) => TOKEN_MINTED,
            Some(Body::TokenRevoked(_)) => TOKEN_REVOKED,
            Some(Body::AuthFailed(_)) => AUTH_FAILED,
            Some(Body::TaskCancelled(_)) => TASK_CANCELLED,
            None => UNKNOWN,
        }
    }
}

/// `mesh.v1.<tenant>.audit.gateway.<kind>`: an event published by a gateway.
pub fn audit_gateway(tenant: &Token, kind: &str) -> String {
    format!("{ROOT}.{tenant}.audit.{AUDIT_GATEWAY_SOURCE}.{kind}")
}

/// `mesh.v1.<tenant>.audit.<host>.<kind>`: an event published by the agent of `host`.
pub fn audit_agent(tenant: &Token, host: &Token, kind: &str) -> String {
    format!("{ROOT}.{tenant}.audit.{host}.{kind}")
}

/// `mesh.v1.<tenant>.svc.audit.query`: AuditQuery → AuditQueryReply, answered by an audit-sink.
pub fn audit_query(tenant: &Token) -> String {
    format!("{ROOT}.{tenant}.svc.audit.query")
}

/// `mesh.v1.<tenant>.svc.audit.verify`: AuditVerifyRequest → AuditVerifyReply.
pub fn audit_verify(tenant: &Token) -> String {
    format!("{ROOT}.{tenant}.svc.audit.verify")
}

/// What an audit-sink subscribes to for queries of every tenant.
pub const AUDIT_QUERY_ALL_TENANTS: &str = "mesh.v1.*.svc.audit.query";
/// What an audit-sink subscribes to for verify requests of every tenant.
pub const AUDIT_VERIFY_ALL_TENANTS: &str = "mesh.v1.*.svc.audit.verify";

/// Inbox prefix (where replies to its requests arrive) of every gateway replica. Each identity
/// has an inbox prefix of its own, so NATS permissions can let it read its own replies only: a
/// shared `_INBOX.>` would let one agent read the replies meant for another.
pub const GATEWAY_INBOX: &str = "_INBOX.gateway";
/// Inbox prefix of every audit-sink.
pub const AUDIT_SINK_INBOX: &str = "_INBOX.audit-sink";

/// Inbox prefix of the agent of `host`: `_INBOX.agent.<tenant>.<host>`.
pub fn agent_inbox(tenant: &Token, host: &Token) -> String {
    format!("_INBOX.agent.{tenant}.{host}")
}

/// Inbox prefix of the SSH relay run by `user`: `_INBOX.relay.<tenant>.<user>`.
pub fn relay_inbox(tenant: &Token, user: &Token) -> String {
    format!("_INBOX.relay.{tenant}.{user}")
}

// === wildcards ===
//
// What NATS permissions and subscriptions name: a subject with `*` (one token) or `>` (the rest).

/// One token, any value.
pub const ANY: &str = "*";

/// `<prefix>.>`: every subject under `prefix` (an inbox prefix, a subject root).
pub fn under(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// `mesh.v1.<tenant>.host.<host>.>`: every request to the agent of `host` (exec of any user, ctl).
pub fn host_all(tenant: &Token, host: &Token) -> String {
    under(&format!("{ROOT}.{tenant}.host.{host}"))
}

/// `mesh.v1.<tenant>.out.<host>.>`: the output records of every job of `host`.
pub fn out_of_host(tenant: &Token, host: &Token) -> String {
    under(&format!("{ROOT}.{tenant}.out.{host}"))
}

/// `mesh.v1.<tenant>.audit.<source>.>`: every audit event published under `source` (a host id).
pub fn audit_of_source(tenant: &Token, source: &Token) -> String {
    under(&format!("{ROOT}.{tenant}.audit.{source}"))
}

/// `mesh.v1.*.svc.audit.>`: the audit services (query, verify) of every tenant.
pub const AUDIT_SERVICES_ALL_TENANTS: &str = "mesh.v1.*.svc.audit.>";

/// `$SRV.>`: NATS micro service discovery (PING, INFO, STATS) of every service.
pub const SERVICE_DISCOVERY_ALL: &str = "$SRV.>";

// === KV ===
//
// A KV bucket `b` is the stream `KV_b`; its key `k` is the subject `$KV.b.k`.

/// `KV_<bucket>`: the stream that holds a bucket.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// `$KV.<bucket>.`: what every key's subject in `bucket` starts with.
pub fn kv_prefix(bucket: &str) -> String {
    format!("$KV.{bucket}.")
}

/// `$KV.<bucket>.<key>`: the subject a key is written (and signed) on; `key` may hold wildcards.
pub fn kv(bucket: &str, key: &str) -> String {
    format!("{}{key}", kv_prefix(bucket))
}

/// `$KV.>`: every key of every bucket.
pub const KV_ALL: &str = "$KV.>";

/// `<tenant>.<host>.*`: the `mesh_jobs` keys of every job of `host`.
pub fn job_keys_of_host(tenant: &Token, host: &Token) -> String {
    format!("{tenant}.{host}.{ANY}")
}

/// `<tenant>.*.<job>`: the `mesh_jobs` keys of job `job` on every host (a fan-out gives all
/// its hosts the same job id).
pub fn job_keys_of_id(tenant: &Token, job: &Token) -> String {
    format!("{tenant}.{ANY}.{job}")
}

// === the JetStream API ===

/// `$JS.API.>`: every JetStream API call.
pub const JS_API_ALL: &str = "$JS.API.>";
/// `$JS.ACK.>`: acknowledgements of every consumer.
pub const JS_ACK_ALL: &str = "$JS.ACK.>";
/// `$JS.FC.>`: flow-control replies of every push consumer.
pub const JS_FLOW_CONTROL_ALL: &str = "$JS.FC.>";

/// `$JS.API.STREAM.INFO.<stream>`: look a stream up.
pub fn js_stream_info(stream: &str) -> String {
    format!("$JS.API.STREAM.INFO.{stream}")
}

/// `$JS.API.STREAM.CREATE.<stream>`: create a stream.
pub fn js_stream_create(stream: &str) -> String {
    format!("$JS.API.STREAM.CREATE.{stream}")
}

/// `$JS.API.DIRECT.GET.<stream>`: a direct get with the request in the body (batches, `multi_last`).
pub fn js_direct_get(stream: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}")
}

/// `$JS.API.DIRECT.GET.<stream>.<subject>`: the last message on `subject`, the subject in the
/// API subject itself, so permissions can narrow it.
pub fn js_direct_get_last(stream: &str, subject: &str) -> String {
    format!("{}.{subject}", js_direct_get(stream))
}

/// `$JS.API.CONSUMER.INFO.<stream>.<consumer>`: look a consumer up.
pub fn js_consumer_info(stream: &str, consumer: &str) -> String {
    format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}")
}

/// `$JS.API.CONSUMER.CREATE.<stream>.<consumer>[.<filter>]`: create a named consumer; with a
/// filter subject in the API subject, the server checks it against the request.
pub fn js_consumer_create(stream: &str, consumer: &str, filter: Option<&str>) -> String {
    match filter {
        None => format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}"),
        Some(filter) => format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}.{filter}"),
    }
}

/// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`: pull messages from a consumer.
pub fn js_consumer_next(stream: &str, consumer: &str) -> String {
    format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")
}

/// `$JS.ACK.<stream>.<consumer>.>`: acknowledgements of the messages of one consumer.
pub fn js_acks(stream: &str, consumer: &str) -> String {
    under(&format!("$JS.ACK.{stream}.{consumer}"))
}

/// The tenant token of a `mesh.v1.<tenant>.…` subject.
pub fn tenant_of(subject: &str) -> Result<Token, TokenError> {
    let tenant = subject
        .strip_prefix(ROOT)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.split('.').next())
        .unwrap_or("");
    Token::parse("tenant", tenant)
}

/// Key of a host in `mesh_presence` and `mesh_facts`: `<tenant>.<host>`.
pub fn host_key(tenant: &Token, host: &Token) -> String {
    format!("{tenant}.{host}")
}

/// Key of a job in `mesh_jobs`: `<tenant>.<host>.<job>`.
pub fn job_key(tenant: &Token, host: &Token, job: &Token) -> String {
    format!("{tenant}.{host}.{job}")
}

/// Splits a `mesh_jobs` key back into (tenant, host, job), validating each token.
pub fn parse_job_key(key: &str) -> Result<(Token, Token, Token), TokenError> {
    let mut parts = key.splitn(3, '.');
    let tenant = Token::parse("tenant", parts.next().unwrap_or(""))?;
    let host = Token::parse("host id", parts.next().unwrap_or(""))?;
    let job = Token::parse("job id", parts.next().unwrap_or(""))?;
    Ok((tenant, host, job))
}

/// Splits a `mesh_presence` / `mesh_facts` key back into (tenant, host).
pub fn parse_host_key(key: &str) -> Result<(Token, Token), TokenError> {
    let (tenant, host) = key.split_once('.').unwrap_or((key, ""));
    Ok((
        Token::parse("tenant", tenant)?,
        Token::parse("host id", host)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_refuse_everything_that_could_widen_a_subject() {
        for bad in [
            "",
            "a.b",
            "*",
            ">",
            "Web-1",
            "a b",
            "web_1",
            "ü",
            &"a".repeat(64),
        ] {
            assert!(Token::parse("host id", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["web-1", "a", "0", "x-y-z", &"a".repeat(63)] {
            assert!(Token::parse("host id", good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn token_error_names_the_kind_and_position() {
        let err = Token::parse("host id", "web.1").unwrap_err().to_string();
        assert!(
            err.contains("host id `web.1`") && err.contains("position 4"),
            "{err}"
        );
    }

    #[test]
    fn sanitize_folds_free_text_into_a_token() {
        let t = |s: &str| Token::sanitize(s, 24).map(|t| t.to_string());
        assert_eq!(t("My Host.example.com"), Some("my-host-example-com".into()));
        assert_eq!(t("--Build__Release!!"), Some("build-release".into()));
        assert_eq!(t("..."), None);
        assert_eq!(t(&"x".repeat(100)).map(|s| s.len()), Some(24));
    }

    #[test]
    fn subjects_and_keys_round_trip() {
        let tenant = Token::parse("tenant", DEFAULT_TENANT).unwrap();
        let host = Token::parse("host id", "web-1").unwrap();
        let user = Token::parse("user", "alice").unwrap();
        let job = Token::parse("job id", "build-abc123").unwrap();
        assert_eq!(
            exec(&tenant, &host, &user),
            "mesh.v1.default.host.web-1.exec.alice"
        );
        assert_eq!(
            out(&tenant, &host, &job),
            "mesh.v1.default.out.web-1.build-abc123"
        );
        assert_eq!(
            audit_agent(&tenant, &host, audit_kind::JOB_STARTED),
            "mesh.v1.default.audit.web-1.job-started"
        );
        assert_eq!(
            audit_gateway(&tenant, audit_kind::CALL_RECEIVED),
            "mesh.v1.default.audit.gateway.call-received"
        );
        assert_eq!(tenant_of(&audit_query(&tenant)).unwrap(), tenant);
        assert!(tenant_of("mesh.v1.*.svc.audit.query").is_err());
        let (t, h, j) = parse_job_key(&job_key(&tenant, &host, &job)).unwrap();
        assert_eq!((t, h, j), (tenant.clone(), host.clone(), job));
        assert_eq!(
            parse_host_key(&host_key(&tenant, &host)).unwrap(),
            (tenant, host)
        );
    }

    #[test]
    fn wildcards_and_jetstream_subjects() {
        let tenant = Token::parse("tenant", DEFAULT_TENANT).unwrap();
        let host = Token::parse("host id", "web-1").unwrap();
        assert_eq!(host_all(&tenant, &host), "mesh.v1.default.host.web-1.>");
        assert_eq!(out_of_host(&tenant, &host), "mesh.v1.default.out.web-1.>");
        assert_eq!(
            audit_of_source(&tenant, &host),
            "mesh.v1.default.audit.web-1.>"
        );
        assert_eq!(
            AUDIT_SERVICES_ALL_TENANTS,
            under(&format!("{ROOT}.{ANY}.svc.audit"))
        );
        let jobs = kv("mesh_jobs", &job_keys_of_host(&tenant, &host));
        assert_eq!(jobs, "$KV.mesh_jobs.default.web-1.*");
        assert_eq!(
            js_direct_get_last(&kv_stream("mesh_jobs"), &jobs),
            "$JS.API.DIRECT.GET.KV_mesh_jobs.$KV.mesh_jobs.default.web-1.*"
        );
        assert_eq!(
            js_consumer_create("AUDIT", "audit-sink", None),
            "$JS.API.CONSUMER.CREATE.AUDIT.audit-sink"
        );
        assert_eq!(js_acks("AUDIT", "audit-sink"), "$JS.ACK.AUDIT.audit-sink.>");
    }

    #[test]
    fn kv_subjects_follow_the_bucket_layout() {
        let tenant = Token::parse("tenant", "acme").unwrap();
        let job = Token::parse("job id", "build-abc12def").unwrap();
        assert_eq!(kv_stream("mesh_jobs"), "KV_mesh_jobs");
        assert_eq!(kv_prefix("mesh_jobs"), "$KV.mesh_jobs.");
        assert_eq!(kv("mesh_oauth", "code.x1"), "$KV.mesh_oauth.code.x1");
        assert_eq!(job_keys_of_id(&tenant, &job), "acme.*.build-abc12def");
        assert_eq!(
            kv("mesh_jobs", &job_keys_of_id(&tenant, &job)),
            "$KV.mesh_jobs.acme.*.build-abc12def"
        );
    }
}
