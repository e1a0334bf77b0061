//! End-to-end: NATS itself confines each identity of a secured mesh — gateway, audit-sink, each agent — to its own subjects and keys, with the configuration `execmesh-gateway nats-config` generates, a real nats-server and the real binaries.
//!
//! A stolen agent credential is played by a connection made with that agent's seed (and inbox
//! prefix): every refusal is proved by the server's own permissions-violation report naming the
//! subject, and where something could have leaked, by its absence too. Widening an agent's
//! permissions (to `>`, or to another host's subjects) makes these tests fail.

use std::process::Command;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use execmesh_gateway::core::signer::Signer;
use execmesh_proto::{Tier, pb};
use futures::{FutureExt as _, StreamExt as _};
use prost::Message as _;
use serde_json::json;

use execmesh_tests::nats::nats_server_binary;
use execmesh_tests::nats_accounts::{Identified, SecuredMesh};
use execmesh_tests::process::workspace_binary;
use execmesh_tests::quickstart::Quickstart;
use execmesh_tests::{
    Gateway, McpClient, Nats, NodeAgent, Policy, RunningAgent, RunningAudit, eventually,
    with_approval, workspace_path,
};

const WAIT: Duration = Duration::from_secs(30);
/// What an agent logs when NATS refuses one of its operations.
const REFUSED_LOG: &str = "refused an operation for permissions";

/// Runs `cmd` on `host` through the gateway; returns the job id and its output.
async fn bash(client: &McpClient, host: &str, cmd: &str) -> (String, String) {
    let out = client
        .call("bash", json!({"host": host, "cmd": cmd, "wait": 20}))
        .await;
    assert!(!out.is_error(), "bash on {host}: {}", out.text());
    let s = out.structured();
    assert_eq!(s["state"], "exited", "{}", out.text());
    (
        s["job"].as_str().expect("a job id").to_string(),
        s["output"].as_str().unwrap_or_default().to_string(),
    )
}

/// Fails if the process behind `log` reported an operation NATS refused: its identity must be
/// allowed everything it really does.
fn assert_nothing_refused(what: &str, log: &str) {
    assert!(
        !log.contains(REFUSED_LOG) && !log.contains("Permissions Violation"),
        "NATS refused an operation of {what}; its permissions miss something it does:\n{log}"
    );
}

/// Asks `subject` (a JetStream API or any request subject) as `who` and proves the server
/// refused it: the violation names it, and no answer reaches `who`'s inbox, even after a later
/// request of its own has been answered.
async fn assert_request_refused(who: &mut Identified, subject: &str, body: &str) {
    let inbox = who.client.new_inbox();
    let mut answers = who
        .client
        .subscribe(inbox.clone())
        .await
        .expect("an identity may subscribe under its own inbox");
    who.client
        .publish_with_reply(subject.to_string(), inbox, Bytes::from(body.to_string()))
        .await
        .expect("the publish is written");
    who.refused(subject).await;
    // A round trip the identity is allowed: by its answer, the server has long processed the
    // refused request (answers to it would have been sent on this connection before).
    let info = who
        .client
        .request("$JS.API.STREAM.INFO.MESH_OUT", Bytes::new())
        .await
        .expect("an agent may look up MESH_OUT");
    assert!(!info.payload.is_empty());
    assert!(
        answers.next().now_or_never().flatten().is_none(),
        "an answer to the refused request `{subject}` arrived"
    );
}

/// A secured mesh with a gateway, an audit-sink and agents for web-1 and web-2, each on its own
/// credentials.
struct Secured {
    mesh: SecuredMesh,
    nats: Nats,
    gw: execmesh_tests::RunningGateway,
    sink: RunningAudit,
    agents: Vec<RunningAgent>,
}

async fn secured() -> Secured {
    secured_with(None).await
}

/// [`secured`] with a policy (development mode without one). web-1 is labelled `role=web`,
/// web-2 `role=db`.
async fn secured_with(policy: Option<Policy>) -> Secured {
    let mesh = SecuredMesh::generate(&["web-1", "web-2"]);
    let nats = mesh.start_nats().await;
    // The gateway first: it creates the streams and buckets the agents may only open.
    let mut gw = mesh.gateway(&nats);
    if let Some(policy) = policy {
        gw = gw.policy(policy);
    }
    let gw = gw.start().await;
    let sink = mesh.audit_sink(&nats).start().await;
    let mut agents = Vec::new();
    for (host, role) in [("web-1", "web"), ("web-2", "db")] {
        agents.push(mesh.agent(&nats, host).label("role", role).start().await);
    }
    Secured {
        mesh,
        nats,
        gw,
        sink,
        agents,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_identity_on_its_own_credentials_runs_the_whole_mesh() {
    let mut s = secured().await;
    let client = s.gw.client("alice").await;

    for host in ["web-1", "web-2"] {
        let (_, output) = bash(&client, host, "echo hello from $EXECMESH_HOST").await;
        assert_eq!(output, format!("hello from {host}\n"));
    }
    // A job that outlives the inline window: paged from MESH_OUT, status from mesh_jobs.
    let job = client.bash_bg("web-2", "sleep 0.3; seq 1 3").await;
    let waited = client
        .call("job", json!({"action": "wait", "job": job, "timeout": 20}))
        .await;
    assert!(!waited.is_error(), "{}", waited.text());
    let page = client.job("poll", &job).await;
    assert_eq!(page.structured()["output"], "1\n2\n3\n", "{}", page.text());

    let hosts = client.call("hosts", json!({})).await;
    let listed = hosts.structured()["hosts"]
        .as_array()
        .expect("hosts")
        .clone();
    assert_eq!(listed.len(), 2, "{}", hosts.text());
    assert!(
        listed.iter().all(|h| h["state"] == "online"),
        "{}",
        hosts.text()
    );

    // Audit rows of both sources land: the gateway's call events and the agents' job events.
    for host in ["web-1", "web-2"] {
        eventually(WAIT, || async {
            let records = s
                .sink
                .query_all(pb::AuditQuery {
                    host: host.into(),
                    ..Default::default()
                })
                .await;
            let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
            ["call-dispatched", "job-started", "job-finished"]
                .iter()
                .all(|k| kinds.contains(k))
        })
        .await;
    }

    // A restart runs recovery (a consumer over the host's own job statuses) and registration
    // again, on the same narrow credentials.
    s.agents[0].restart().await;
    let (_, output) = bash(&client, "web-1", "echo back").await;
    assert_eq!(output, "back\n");

    for agent in &s.agents {
        assert_nothing_refused(&format!("agent {}", agent.host()), &agent.log_tail(400));
    }
    assert_nothing_refused("the audit-sink", &s.sink.log_tail(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_agent_credential_cannot_reach_another_host() {
    let s = secured().await;
    let client = s.gw.client("alice").await;
    let (own_job, _) = bash(&client, "web-1", "echo mine").await;
    let (other_job, _) = bash(&client, "web-2", "echo theirs").await;
    let mut thief = s.mesh.connect_as(&s.nats, "agent-web-1").await;

    // It cannot listen to web-2's commands, nor to the gateway's replies, nor to every inbox.
    let mut listening = Vec::new();
    for subject in [
        "mesh.v1.default.host.web-2.>",
        "mesh.v1.default.host.*.exec.*",
        "_INBOX.gateway.>",
        "_INBOX.>",
        ">",
    ] {
        listening.push(thief.client.subscribe(subject).await.expect("sent"));
        thief.refused(subject).await;
    }
    // The gateway still reaches web-2, and none of it reaches the thief.
    let (_, output) = bash(&client, "web-2", "echo still-private").await;
    assert_eq!(output, "still-private\n");
    let info = thief
        .client
        .request("$JS.API.STREAM.INFO.MESH_OUT", Bytes::new())
        .await
        .expect("an agent may look up MESH_OUT");
    assert!(!info.payload.is_empty());
    for sub in &mut listening {
        assert!(
            sub.next().now_or_never().flatten().is_none(),
            "a refused subscription received a message"
        );
    }

    // It cannot write web-2's output: nothing lands in MESH_OUT.
    let js = jetstream::new(thief.client.clone());
    let forged = "mesh.v1.default.out.web-2.forged-0001";
    let _ack = js
        .publish(forged, Bytes::from_static(b"rm -rf done\n"))
        .await;
    thief.refused(forged).await;
    let admin = s.nats.jetstream().await;
    let out_stream = admin.get_stream("MESH_OUT").await.expect("MESH_OUT");
    assert!(
        out_stream
            .get_last_raw_message_by_subject(forged)
            .await
            .is_err(),
        "a forged record for web-2 landed in MESH_OUT"
    );

    // It cannot send web-2 a command, nor cancel its jobs.
    for subject in [
        "mesh.v1.default.host.web-2.exec.alice",
        "mesh.v1.default.host.web-2.ctl",
    ] {
        assert_request_refused(&mut thief, subject, "").await;
    }

    // It cannot speak for web-2 or the gateway: audit events, heartbeats, facts, job statuses,
    // nor write what only gateways write: approvals, revocations, OAuth grants.
    for subject in [
        "mesh.v1.default.audit.web-2.job-started",
        "mesh.v1.default.audit.gateway.call-received",
        "$KV.mesh_presence.default.web-2",
        "$KV.mesh_facts.default.web-2",
        &format!("$KV.mesh_jobs.default.web-2.{other_job}"),
        "$KV.mesh_approvals.default.apr-0123456789abcdef",
        "$KV.mesh_revoked.some-token-id",
        "$KV.mesh_oauth.refresh.0123456789abcdef",
    ] {
        thief
            .client
            .publish(subject.to_string(), Bytes::from_static(b"forged"))
            .await
            .expect("sent");
        thief.refused(subject).await;
    }

    // It cannot read web-2's keys, by any API: direct gets by subject or by body, message
    // gets, consumers.
    let facts_key = "$KV.mesh_facts.default.web-2";
    let job_key = format!("$KV.mesh_jobs.default.web-2.{other_job}");
    for (subject, body) in [
        (format!("$JS.API.DIRECT.GET.KV_mesh_facts.{facts_key}"), String::new()),
        (format!("$JS.API.DIRECT.GET.KV_mesh_jobs.{job_key}"), String::new()),
        (
            "$JS.API.DIRECT.GET.KV_mesh_facts".to_string(),
            json!({"last_by_subj": facts_key}).to_string(),
        ),
        (
            "$JS.API.DIRECT.GET.KV_mesh_presence".to_string(),
            json!({"multi_last": ["$KV.mesh_presence.>"], "batch": 100}).to_string(),
        ),
        (
            "$JS.API.STREAM.MSG.GET.KV_mesh_facts".to_string(),
            json!({"last_by_subj": facts_key}).to_string(),
        ),
        (
            "$JS.API.DIRECT.GET.MESH_OUT".to_string(),
            json!({"next_by_subj": "mesh.v1.default.out.web-2.>", "seq": 1}).to_string(),
        ),
        (
            "$JS.API.CONSUMER.CREATE.KV_mesh_jobs.peek.$KV.mesh_jobs.default.web-2.*".to_string(),
            json!({"stream_name": "KV_mesh_jobs", "config": {"name": "peek",
                   "filter_subject": "$KV.mesh_jobs.default.web-2.*", "deliver_subject": thief.inbox.clone() + ".peek"}})
            .to_string(),
        ),
        (
            "$JS.API.CONSUMER.CREATE.KV_mesh_facts".to_string(),
            json!({"stream_name": "KV_mesh_facts", "config": {}}).to_string(),
        ),
        (
            "$JS.API.STREAM.CREATE.EVIL".to_string(),
            json!({"name": "EVIL", "subjects": ["mesh.v1.>"]}).to_string(),
        ),
    ] {
        assert_request_refused(&mut thief, &subject, &body).await;
    }

    // Its own keys still work: it reads its own job status and writes its own output.
    let own = thief
        .client
        .request(
            format!("$JS.API.DIRECT.GET.KV_mesh_jobs.$KV.mesh_jobs.default.web-1.{own_job}"),
            Bytes::new(),
        )
        .await
        .expect("an agent reads its own job status");
    let status = pb::JobStatus::decode(own.payload).expect("a job status");
    assert_eq!(status.job_id, own_job);
    js.publish(
        "mesh.v1.default.out.web-1.own-0001",
        Bytes::from_static(b"ok\n"),
    )
    .await
    .expect("sent")
    .await
    .expect("an agent's own output is stored");
    assert!(
        thief.pending_violations().is_empty(),
        "its own operations were refused"
    );
}

/// nats-server does not check the reply subject of a request against the requester's
/// permissions, so the answer to a JetStream API call goes wherever the caller names, content
/// and all. A stolen agent credential can store bytes under its own job key and have the server
/// publish them onto another host's request subject as the answer to a direct get of that key.
/// NATS lets it through; the agent refuses it, because only a trusted gateway's signature makes
/// a request. (docs/security.md describes this gap.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_reflected_onto_another_host_through_a_jetstream_reply_is_refused_unsigned() {
    let s = secured().await;
    let thief = s.mesh.connect_as(&s.nats, "agent-web-1").await;
    let marker = tempfile::tempdir().expect("temp dir");
    let touched = marker.path().join("ran");
    let rogue = Signer::load_or_create(&marker.path().join("rogue.key")).expect("a rogue key");
    let request = pb::ExecRequest {
        tenant: "default".into(),
        host: "web-2".into(),
        job_id: "reflected-0001".into(),
        user: "alice".into(),
        expires_at_ms: execmesh_proto::now_ms() + 30_000,
        tier: pb::Tier::Dangerous as i32,
        body: Some(pb::exec_request::Body::Run(pb::RunRequest {
            cmd: format!("touch {}", touched.display()),
            ..Default::default()
        })),
        ..Default::default()
    };
    let js = jetstream::new(thief.client.clone());
    js.publish(
        "$KV.mesh_jobs.default.web-1.reflect-0001",
        Bytes::from(rogue.sign(request)),
    )
    .await
    .expect("sent")
    .await
    .expect("an agent may write its own job keys");
    thief
        .client
        .publish_with_reply(
            "$JS.API.DIRECT.GET.KV_mesh_jobs.$KV.mesh_jobs.default.web-1.reflect-0001",
            "mesh.v1.default.host.web-2.exec.alice",
            Bytes::new(),
        )
        .await
        .expect("sent");

    let web2 = &s.agents[1];
    let refused = eventually(WAIT, || async {
        web2.log_tail(200)
            .lines()
            .find(|l| l.contains("request refused") && l.contains("web-2.exec.alice"))
            .map(str::to_string)
    })
    .await;
    assert!(refused.contains("does not trust"), "{refused}");
    assert!(!touched.exists(), "the reflected command ran: {refused}");
    let admin = s.nats.jetstream().await;
    let jobs = admin.get_key_value("mesh_jobs").await.expect("mesh_jobs");
    assert!(
        jobs.get("default.web-2.reflected-0001")
            .await
            .expect("readable")
            .is_none(),
        "a job was recorded for the reflected request"
    );
}

/// The same gap used to plant a record: a job status of web-2 that web-2 never wrote lands in
/// `mesh_jobs`. The gateway treats it as absent: it is not signed by web-2's key for that key
/// (and it carries the stream headers of the answer it was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_planted_through_a_jetstream_reply_is_ignored_by_the_gateway() {
    let s = secured().await;
    let client = s.gw.client("alice").await;
    let thief = s.mesh.connect_as(&s.nats, "agent-web-1").await;
    let forged = pb::JobStatus {
        job_id: "planted-abcdefgh".into(),
        tenant: "default".into(),
        host: "web-2".into(),
        user: "alice".into(),
        cmd: "rm -rf /srv/backups".into(),
        state: pb::JobState::Exited as i32,
        exit_code: Some(0),
        ..Default::default()
    };
    let js = jetstream::new(thief.client.clone());
    js.publish(
        "$KV.mesh_jobs.default.web-1.plant-0001",
        Bytes::from(forged.encode_to_vec()),
    )
    .await
    .expect("sent")
    .await
    .expect("an agent may write its own job keys");
    let target = "$KV.mesh_jobs.default.web-2.planted-abcdefgh";
    thief
        .client
        .publish_with_reply(
            "$JS.API.DIRECT.GET.KV_mesh_jobs.$KV.mesh_jobs.default.web-1.plant-0001",
            target,
            Bytes::new(),
        )
        .await
        .expect("sent");
    let admin = s.nats.jetstream().await;
    let jobs = admin
        .get_stream("KV_mesh_jobs")
        .await
        .expect("KV_mesh_jobs");
    eventually(WAIT, || async {
        jobs.get_last_raw_message_by_subject(target).await.is_ok()
    })
    .await;

    for action in ["poll", "wait"] {
        let out = client
            .call(
                "job",
                json!({"action": action, "job": "planted-abcdefgh", "timeout": 1}),
            )
            .await;
        assert!(
            out.is_error() && out.text().contains("unknown job `planted-abcdefgh`"),
            "{action} of a planted job status: {}",
            out.text()
        );
    }
}

// === records planted through JetStream replies and consumer deliveries ===

/// The stolen credential of web-1 stores `payload` (with `headers`) under its own job key `own`
/// and has the server publish it onto `target` as the answer to a direct get of that key: the
/// reply subject nats-server does not check against permissions.
async fn plant_through_reply(
    thief: &Identified,
    own: &str,
    headers: HeaderMap,
    payload: Bytes,
    target: &str,
) {
    let own_subject = store_own(thief, own, headers, payload).await;
    thief
        .client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.KV_mesh_jobs.{own_subject}"),
            target.to_string(),
            Bytes::new(),
        )
        .await
        .expect("sent");
}

/// Stores a record under web-1's own job key `own`, signed with web-1's key as the thief holds
/// its seed; returns its subject.
async fn store_own(
    thief: &Identified,
    own: &str,
    mut headers: HeaderMap,
    payload: Bytes,
) -> String {
    let own_subject = format!("$KV.mesh_jobs.default.web-1.{own}");
    thief.key.sign(&own_subject, &mut headers, &payload);
    jetstream::new(thief.client.clone())
        .publish_with_headers(own_subject.clone(), headers, payload)
        .await
        .expect("sent")
        .await
        .expect("an agent may write its own job keys");
    own_subject
}

/// Waits until a message whose payload is `payload` is the last one on `subject` of `stream`.
async fn landed(nats: &Nats, stream: &str, subject: &str, payload: &[u8]) {
    let admin = nats.jetstream().await;
    let stream = admin.get_stream(stream).await.expect("the stream");
    eventually(WAIT, || async {
        stream
            .get_last_raw_message_by_subject(subject)
            .await
            .is_ok_and(|m| m.payload == payload)
    })
    .await;
}

/// Waits until some message is the last one on `subject` of `stream`.
async fn landed_any(
    nats: &Nats,
    stream: &str,
    subject: &str,
) -> async_nats::jetstream::message::StreamMessage {
    let admin = nats.jetstream().await;
    let stream = admin.get_stream(stream).await.expect("the stream");
    eventually(WAIT, || async {
        stream.get_last_raw_message_by_subject(subject).await.ok()
    })
    .await
}

/// alice, `standard` on the hosts labelled `role=web`.
fn web_only() -> Policy {
    Policy::new().group("web", Tier::Standard, &["role=web"], &["alice"])
}

/// Labels decide reach (`role=web`): a host relabelled by someone other than its agent would
/// let a user reach it. web-2 (`role=db`) gets facts saying `role=web` planted by web-1's
/// stolen credential; they are not signed by web-2's key, so web-2 stays out of reach, and
/// `hosts` shows it `unverified` with the reason. The fleet has more registrations than one
/// direct get returns, so the gateway reads them all through a watch, as it does for large
/// fleets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_relabelled_by_another_identity_does_not_widen_reach() {
    let s = secured_with(Some(web_only())).await;
    let client = s.gw.client("alice").await;
    let admin = s.nats.jetstream().await;
    let facts = admin.get_key_value("mesh_facts").await.expect("mesh_facts");
    let ghosts = (1..=1100).map(|i| {
        let facts = facts.clone();
        async move {
            let pack = pb::HostFacts {
                host: format!("ghost-{i}"),
                ..Default::default()
            };
            facts
                .put(format!("default.ghost-{i}"), pack.encode_to_vec().into())
                .await
                .expect("put facts");
        }
    });
    futures::future::join_all(ghosts).await;
    let out = client.bash("web-2", "echo reached").await;
    assert!(
        out.is_error(),
        "web-2 is outside alice's reach: {}",
        out.text()
    );

    let thief = s.mesh.connect_as(&s.nats, "agent-web-1").await;
    let forged = pb::HostFacts {
        host: "web-2".into(),
        labels: [("role".to_string(), "web".to_string())].into(),
        collected_at_ms: execmesh_proto::now_ms(),
        ..Default::default()
    }
    .encode_to_vec();
    let target = "$KV.mesh_facts.default.web-2";
    plant_through_reply(
        &thief,
        "relabel-0001",
        HeaderMap::new(),
        forged.clone().into(),
        target,
    )
    .await;
    landed(&s.nats, "KV_mesh_facts", target, &forged).await;

    let out = client.bash("web-2", "echo reached").await;
    assert!(
        out.is_error() && !out.text().contains("reached\n"),
        "planted labels widened alice's reach: {}",
        out.text()
    );
    let fanout = client
        .call("bash", json!({"hosts": "*", "cmd": "echo reached"}))
        .await;
    let reached: Vec<String> = fanout.structured()["hosts"]
        .as_array()
        .expect("per-host results")
        .iter()
        .map(|h| h["host"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        reached,
        ["web-1"],
        "planted labels widened alice's reach: {}",
        fanout.text()
    );
    let hosts = client.call("hosts", json!({"selector": "role=web"})).await;
    let listed: Vec<String> = hosts.structured()["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["host"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(listed, ["web-1"], "{}", hosts.text());
    // The operator's view (a gateway without a policy) names the host and why its records
    // are ignored.
    let dev = s.mesh.gateway(&s.nats).start().await;
    let view = dev.client("alice").await.call("hosts", json!({})).await;
    let web2 = view.structured()["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["host"] == "web-2")
        .cloned()
        .expect("web-2 listed");
    let why = web2["unverified"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("facts") && why.contains("planted"),
        "{}",
        view.text()
    );
}

/// alice and bob on call, every command on a database host held for a teammate.
fn approved_by_bob() -> Policy {
    Policy::new()
        .group("oncall", Tier::Dangerous, &["*"], &["alice", "bob"])
        .toml("[[approvals]]\ntool = \"bash\"\nhosts = \"role=db\"\n")
}

/// An approval record flipped to `approved` by someone other than a gateway (planted through a
/// JetStream reply subject, with the exact request hash) is not an approval: the held call does
/// not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_flipped_through_a_jetstream_reply_does_not_run() {
    let s = secured_with(Some(approved_by_bob())).await;
    let alice = s.gw.client("alice").await;
    let marker = s.agents[1].dir().join("ran");
    let args = json!({"host": "web-2", "cmd": format!("touch {}", marker.display())});
    let held = alice.call("bash", args.clone()).await;
    let id = held.approval_id();

    // The real record, as stored, turned into an approval by bob.
    let admin = s.nats.jetstream().await;
    let approvals = admin
        .get_key_value("mesh_approvals")
        .await
        .expect("mesh_approvals");
    let key = format!("default.{id}");
    let stored = approvals
        .get(&key)
        .await
        .expect("readable")
        .expect("the record");
    let mut record: serde_json::Value = serde_json::from_slice(&stored).expect("JSON");
    record["state"] = json!("approved");
    record["decided_by"] = json!("bob");
    record["decided_at_ms"] = json!(execmesh_proto::now_ms());
    let forged = serde_json::to_vec(&record).expect("JSON");

    let thief = s.mesh.connect_as(&s.nats, "agent-web-1").await;
    let target = format!("$KV.mesh_approvals.{key}");
    plant_through_reply(
        &thief,
        "approve-0001",
        HeaderMap::new(),
        forged.clone().into(),
        &target,
    )
    .await;
    landed(&s.nats, "KV_mesh_approvals", &target, &forged).await;

    let out = alice.call("bash", with_approval(&args, &id)).await;
    assert!(
        !marker.exists(),
        "the held command ran on a planted approval"
    );
    assert!(
        out.is_error() && out.text().contains("no approval"),
        "a planted approval was honoured: {}",
        out.text()
    );
}

/// The claims of a JWT, unverified.
fn claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// A revoked token stays revoked when its revocation is purged through a JetStream reply
/// subject: a replica reading the list afresh still refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_purged_through_a_jetstream_reply_stays_in_force() {
    let s = secured().await;
    let token = s.gw.mint("alice");
    let claims = claims(&token);
    let jti = claims["jti"].as_str().expect("a jti").to_string();
    let exp = claims["exp"].as_u64().expect("an exp");
    let status = |gw: &execmesh_tests::RunningGateway, token: String| {
        let url = gw.url();
        async move {
            let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
            execmesh_tests::post_raw(&url, Some(&token), list)
                .await
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(&s.gw, token.clone()).await, 200);

    // Revoked as a gateway revokes: a signed record in mesh_revoked.
    let mesh = s.mesh.gateway(&s.nats).mesh().await;
    let store = execmesh_gateway::oauth::Store::open(&mesh, 1)
        .await
        .expect("the OAuth store");
    store.revoke_token(&jti, exp).await.expect("revoked");
    eventually(WAIT, || async { status(&s.gw, token.clone()).await == 401 }).await;

    // The thief purges its own job key and plants that purge marker on the revocation.
    let thief = s.mesh.connect_as(&s.nats, "agent-web-1").await;
    let mut purge = HeaderMap::new();
    purge.insert("KV-Operation", "PURGE");
    purge.insert("Nats-Rollup", "sub");
    let target = format!("$KV.mesh_revoked.{jti}");
    plant_through_reply(&thief, "unrevoke-0001", purge, Bytes::new(), &target).await;
    let planted = landed_any(&s.nats, "KV_mesh_revoked", &target).await;
    assert_eq!(
        planted.headers.get("KV-Operation").map(|v| v.as_str()),
        Some("PURGE"),
        "the purge marker replaced the revocation"
    );

    // A replica that reads the list afresh (no cache) still refuses the token.
    let fresh = s.mesh.gateway(&s.nats).replica_of(&s.gw).start().await;
    assert_eq!(
        status(&fresh, token.clone()).await,
        401,
        "a purged revocation un-revoked the token"
    );
}

/// Output, an exit record and a final status planted into another user's running job are
/// ignored: a `job wait` already watching the job ends with the job's real exit, not the
/// planted one, and its pages hold only the real output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_output_exit_and_status_of_a_running_job_are_ignored() {
    let s = secured().await;
    let client = s.gw.client("alice").await;
    let gate = s.agents[1].dir().join("go");
    let cmd = format!(
        "echo real-1; while [ ! -e {} ]; do sleep 0.05; done; echo real-2; exit 3",
        gate.display()
    );
    let out = client
        .call("bash", json!({"host": "web-2", "cmd": cmd, "bg": true}))
        .await;
    let job = out.job_id();

    // alice waits for her job; the wait watches its status (a consumer on KV_mesh_jobs).
    let admin = s.nats.jetstream().await;
    let mut jobs_stream = admin
        .get_stream("KV_mesh_jobs")
        .await
        .expect("KV_mesh_jobs");
    let consumers = jobs_stream.info().await.expect("info").state.consumer_count;
    let waiter = s.gw.client("alice").await;
    let wait = tokio::spawn({
        let job = job.clone();
        async move {
            waiter
                .call("job", json!({"action": "wait", "job": job, "timeout": 30}))
                .await
        }
    });
    eventually(WAIT, || {
        let mut stream = jobs_stream.clone();
        async move {
            stream
                .info()
                .await
                .is_ok_and(|i| i.state.consumer_count > consumers)
        }
    })
    .await;

    let thief = s.mesh.connect_as(&s.nats, "agent-web-1").await;
    let out_subject = format!("mesh.v1.default.out.web-2.{job}");
    let chunk = pb::OutputRecord {
        body: Some(pb::output_record::Body::Chunk(pb::OutputChunk {
            index: 1,
            stream: pb::OutputStream::Stdout as i32,
            first_line: 1,
            line_count: 1,
            data: b"planted\n".to_vec(),
        })),
    }
    .encode_to_vec();
    let fake_end = pb::JobStatus {
        job_id: job.clone(),
        tenant: "default".into(),
        host: "web-2".into(),
        user: "alice".into(),
        state: pb::JobState::Exited as i32,
        exit_code: Some(0),
        ..Default::default()
    };
    let exit = pb::OutputRecord {
        body: Some(pb::output_record::Body::Exit(pb::ExitRecord {
            status: Some(fake_end.clone()),
        })),
    }
    .encode_to_vec();
    plant_through_reply(
        &thief,
        "chunk-0001",
        HeaderMap::new(),
        chunk.into(),
        &out_subject,
    )
    .await;
    plant_through_reply(
        &thief,
        "exit-0001",
        HeaderMap::new(),
        exit.clone().into(),
        &out_subject,
    )
    .await;
    landed(&s.nats, "MESH_OUT", &out_subject, &exit).await;
    let status_key = format!("$KV.mesh_jobs.default.web-2.{job}");
    let fake = fake_end.encode_to_vec();
    plant_through_reply(
        &thief,
        "status-0001",
        HeaderMap::new(),
        fake.clone().into(),
        &status_key,
    )
    .await;
    landed(&s.nats, "KV_mesh_jobs", &status_key, &fake).await;

    // The job goes on; once it ends, its own agent's record is the one that counts.
    std::fs::write(&gate, b"").expect("open the gate");
    let waited = wait.await.expect("the wait call");
    assert!(!waited.is_error(), "{}", waited.text());
    let job_state = &waited.structured()["job"];
    assert_eq!(job_state["state"], "exited", "{}", waited.text());
    assert_eq!(
        job_state["exit_code"],
        3,
        "a planted exit was taken: {}",
        waited.text()
    );
    let page = client.job("poll", &job).await;
    page.assert_field("output", "real-1\nreal-2\n");
}

/// An audit event planted under the gateway's subject through a JetStream reply is stored (the
/// trail keeps everything), and `verify` names it: no known key signed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_event_planted_through_a_jetstream_reply_is_reported_by_verify() {
    let s = secured().await;
    let client = s.gw.client("alice").await;
    bash(&client, "web-1", "echo genuine").await;
    let planted = pb::AuditEvent {
        id: execmesh_proto::audit_event_id(execmesh_proto::now_ms(), 42),
        time_ms: execmesh_proto::now_ms(),
        tenant: "default".into(),
        source: pb::AuditSource::Gateway as i32,
        user: "bob".into(),
        tool: "bash".into(),
        outcome: "ok".into(),
        body: Some(pb::audit_event::Body::CallReceived(pb::CallReceived {
            args: r#"{"cmd":"true"}"#.into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let thief = s.mesh.connect_as(&s.nats, "agent-web-1").await;
    plant_through_reply(
        &thief,
        "audit-0001",
        HeaderMap::new(),
        planted.encode_to_vec().into(),
        "mesh.v1.default.audit.gateway.call-received",
    )
    .await;
    let stored = eventually(WAIT, || async {
        let records = s
            .sink
            .query_all(pb::AuditQuery {
                user: "bob".into(),
                ..Default::default()
            })
            .await;
        records
            .into_iter()
            .find(|r| r.event.as_ref().is_some_and(|e| e.id == planted.id))
    })
    .await;
    assert_eq!(stored.signer, "", "the planted event has no known signer");
    // Genuine events name who signed them.
    eventually(WAIT, || async {
        let genuine = s
            .sink
            .query_all(pb::AuditQuery {
                host: "web-1".into(),
                ..Default::default()
            })
            .await;
        genuine.iter().any(|r| r.signer == "agent-web-1")
            && genuine.iter().any(|r| r.signer == "gateway")
            && genuine.iter().all(|r| !r.signer.is_empty())
    })
    .await;

    let (status, out) = s.sink.verify();
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(
        out.contains(&planted.id) && out.contains("signed by no key"),
        "{out}"
    );
    let over_nats = s.sink.verify_over_nats().await;
    assert!(over_nats.ok, "the chain itself is intact: {over_nats:?}");
    assert_eq!(over_nats.unsigned_events, 1, "{over_nats:?}");
    assert_eq!(
        over_nats.unsigned_event_ids,
        std::slice::from_ref(&planted.id)
    );
}

/// An agent running without its seed publishes unsigned records: a gateway that checks
/// signatures lists the host as `unverified`, naming why, instead of trusting its labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_its_seed_is_listed_unverified_with_the_reason() {
    let nats = Nats::start().await;
    let _signed = NodeAgent::new(&nats, "web-1").start().await;
    let _unsigned = NodeAgent::new(&nats, "web-9")
        .label("role", "web")
        .unsigned()
        .start()
        .await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let hosts = client.call("hosts", json!({})).await;
    let listed = hosts.structured()["hosts"]
        .as_array()
        .expect("hosts")
        .clone();
    let state = |host: &str| {
        listed
            .iter()
            .find(|h| h["host"] == host)
            .unwrap_or_else(|| panic!("{host} listed: {}", hosts.text()))
            .clone()
    };
    assert_eq!(state("web-1")["state"], "online", "{}", hosts.text());
    let web9 = state("web-9");
    assert_eq!(web9["state"], "unverified", "{}", hosts.text());
    assert_eq!(web9["labels"], json!({}), "unsigned labels are not used");
    let why = web9["unverified"].as_str().unwrap_or_default();
    assert!(
        why.contains("not signed") || why.contains("unsigned"),
        "{why}"
    );
    hosts.assert_text_has("web-9 [unverified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_known_credentials_cannot_connect() {
    let mesh = SecuredMesh::generate(&["web-1"]);
    // The configuration exactly as generated: no harness user, no anonymous access.
    let nats = Nats::builder()
        .config(mesh.generated_config())
        .start()
        .await;

    let anonymous = async_nats::ConnectOptions::new()
        .max_reconnects(Some(1))
        .connect(nats.url())
        .await;
    assert!(anonymous.is_err(), "a client without credentials connected");

    // A well-formed seed of another mesh's agent: its key is not in this configuration.
    let other = SecuredMesh::generate(&["web-1"]);
    let stranger = std::fs::read_to_string(other.seed_file("agent-web-1")).expect("a seed");
    let unknown = async_nats::ConnectOptions::new()
        .nkey(stranger.trim().to_string())
        .max_reconnects(Some(1))
        .connect(nats.url())
        .await;
    assert!(
        unknown.is_err(),
        "an nkey the configuration does not list connected"
    );

    // A listed identity connects and subscribes to its own subjects (the answer to a later
    // request proves the server has processed the subscription, which it did not refuse).
    let mut agent = mesh.connect_as(&nats, "agent-web-1").await;
    let _sub = agent
        .client
        .subscribe("mesh.v1.default.host.web-1.>")
        .await
        .expect("sent");
    agent
        .client
        .request("$JS.API.STREAM.INFO.MESH_OUT", Bytes::new())
        .await
        .expect("JetStream answers, if only that MESH_OUT does not exist yet");
    assert!(agent.pending_violations().is_empty());
}

/// Runs `execmesh-gateway nats-config` with `args`; returns (exit code, stdout, stderr).
fn nats_config(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(workspace_binary("execmesh-gateway"))
        .arg("nats-config")
        .args(args)
        .env_remove("EXECMESH_GATEWAY_CONFIG")
        .output()
        .expect("run execmesh-gateway nats-config");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `nats-server -t -c <file>`: whether the server accepts the configuration, and what it said.
fn config_test(path: &std::path::Path) -> (bool, String) {
    let output = Command::new(nats_server_binary())
        .args(["-t", "-c"])
        .arg(path)
        .output()
        .expect("run nats-server -t");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn nats_config_refuses_an_inventory_with_a_bad_host_id_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let inventory = dir.path().join("inventory.toml");
    std::fs::write(&inventory, "hosts = [\"web-1\", \"Web_2\", \"db.1\"]\n").expect("write");
    let out = dir.path().join("out");
    let (code, _, stderr) = nats_config(&[
        "--inventory",
        &inventory.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("hosts[1]: host id `Web_2`") && stderr.contains("hosts[2]: host id `db.1`"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing is written for a bad inventory");
}

#[test]
fn nats_config_output_for_the_example_inventory_passes_the_servers_config_test() {
    let example = workspace_path("deploy/nats/inventory.example.toml");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let (code, stdout, stderr) = nats_config(&[
        "--inventory",
        &example.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (ok, said) = config_test(&out.join("nats.conf"));
    assert!(
        ok,
        "nats-server refused the generated configuration: {said}"
    );

    // The checked-in example was generated from the same inventory: the same identities, in
    // the same order (only the keys differ), and it passes too.
    let checked_in = workspace_path("deploy/nats/accounts.example.conf");
    let (ok, said) = config_test(&checked_in);
    assert!(ok, "nats-server refused {}: {said}", checked_in.display());
    let identities = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("# "))
            .filter_map(|l| l.split_once(": ").map(|(name, _)| name.to_string()))
            .filter(|name| !name.contains(' '))
            .collect()
    };
    let generated = std::fs::read_to_string(out.join("nats.conf")).expect("generated");
    let example_text = std::fs::read_to_string(&checked_in).expect("checked in");
    assert_eq!(
        identities(&generated),
        identities(&example_text),
        "deploy/nats/accounts.example.conf is stale: regenerate it (deploy/nats/README.md)"
    );
    assert!(stdout.contains("agent-"), "{stdout}");
    for line in example_text.lines() {
        assert!(
            !line.trim_start().starts_with("seed"),
            "a seed in the example"
        );
    }
    assert!(
        !example_text.contains("\"SU"),
        "a seed in the checked-in example"
    );
}

// === the default setup ===

/// `deploy/nats/single.conf` runs nothing without the accounts `nats-config` generates: it
/// includes them, and with them it passes the server's configuration test.
#[test]
fn single_conf_includes_the_generated_accounts_and_passes_the_servers_config_test() {
    let dir = tempfile::tempdir().expect("temp dir");
    let single = dir.path().join("nats.conf");
    std::fs::copy(workspace_path("deploy/nats/single.conf"), &single).expect("copy");
    let (ok, said) = config_test(&single);
    assert!(
        !ok,
        "single.conf runs without the generated accounts: {said}"
    );

    // The accounts only: an inventory without a [server] section.
    let inventory = dir.path().join("inventory.toml");
    std::fs::write(&inventory, "hosts = [\"web-1\", \"web-2\"]\n").expect("write");
    let (code, _, stderr) = nats_config(&[
        "--inventory",
        &inventory.display().to_string(),
        "--out",
        &dir.path().join("execmesh").display().to_string(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (ok, said) = config_test(&single);
    assert!(
        ok,
        "nats-server refused single.conf with the accounts: {said}"
    );
    assert!(
        dir.path().join("execmesh/identities.toml").is_file(),
        "nats-config writes the public identities file"
    );
}

/// The quickstart as a user runs it (with the debug binaries this test command built): NATS
/// refuses anonymous clients, a `bash` call through its MCP URL and token works, and the job
/// can read none of the seeds and keys; as root it runs as the dedicated account. SIGTERM stops
/// everything it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_runs_a_secured_mesh_whose_jobs_cannot_read_its_secrets() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut quickstart = Quickstart::start(&[]).await;
    let (state, log, nats_port) = (
        quickstart.state.clone(),
        quickstart.log.clone(),
        quickstart.nats_port,
    );
    let details = quickstart.details.clone();
    let mcp_url = details["mcp_url"].as_str().expect("mcp_url").to_string();
    let token = details["token"].as_str().expect("token").to_string();
    let host = details["hosts"][0].as_str().expect("a host").to_string();

    // No anonymous access to NATS.
    let anonymous = async_nats::ConnectOptions::new()
        .max_reconnects(Some(1))
        .connect(format!("nats://127.0.0.1:{nats_port}"))
        .await;
    assert!(
        anonymous.is_err(),
        "an anonymous client connected to the quickstart's NATS"
    );

    // A job through the MCP URL with the printed token.
    let client = McpClient::new(&mcp_url, &token).await;
    let run = |cmd: String| {
        let client = &client;
        let host = host.clone();
        async move {
            client
                .call("bash", json!({"host": host, "cmd": cmd, "wait": 20}))
                .await
        }
    };
    let whoami = eventually(Duration::from_secs(60), || async {
        let out = run("id -un".to_string()).await;
        (!out.is_error() && out.structured()["state"] == "exited").then_some(out)
    })
    .await;
    let account = whoami.structured()["output"]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string();

    let secrets: Vec<std::path::PathBuf> = std::fs::read_dir(state.join("nats/seeds"))
        .expect("the seeds")
        .map(|e| e.expect("an entry").path())
        .chain(
            [
                "gateway.key",
                "exec-signing.key",
                "quickstart.json",
                "policy.toml",
            ]
            .map(|f| state.join(f)),
        )
        .collect();
    assert!(secrets.len() >= 7, "{secrets:?}");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "the state directory is private");
    for seed in secrets
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "nk"))
    {
        assert_eq!(mode(seed), 0o600, "{}", seed.display());
    }

    if nix::unistd::geteuid().is_root() {
        assert_eq!(account, "execmesh-run", "jobs run as the dedicated account");
        for secret in &secrets {
            let out = run(format!("cat {}", secret.display())).await;
            let s = out.structured();
            assert_eq!(s["state"], "exited", "{}", out.text());
            assert_ne!(
                s["exit_code"],
                0,
                "a job read {}: {}",
                secret.display(),
                out.text()
            );
        }
    } else {
        // Only root can switch accounts: the quickstart says plainly what that means.
        let said = std::fs::read_to_string(&log).expect("the quickstart's output");
        assert!(
            said.contains("WARNING: this quickstart is not running as root")
                && said.contains("the NATS seeds"),
            "{said}"
        );
        assert_eq!(
            account,
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_default()
        );
    }

    // SIGTERM: everything it started stops, NATS included.
    let status = quickstart
        .terminate(Duration::from_secs(60))
        .await
        .unwrap_or_else(|s| {
            panic!(
                "the quickstart did not stop on SIGTERM ({s}):\n{}",
                quickstart.log_tail(40)
            )
        });
    assert!(status.success(), "{status}: {}", quickstart.log_tail(40));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", nats_port)).is_err(),
        "NATS still runs after the quickstart stopped"
    );
}
