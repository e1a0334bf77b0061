//! End-to-end: NATS itself confines each identity of a secured mesh — gateway, audit-sink, each agent — to its own subjects and keys, with the configuration `execmesh-gateway nats-config` generates, a real nats-server and the real binaries.
//!
//! A stolen agent credential is played by a connection made with that agent's seed (and inbox
//! prefix): every refusal is proved by the server's own permissions-violation report naming the
//! subject, and where something could have leaked, by its absence too. Widening an agent's
//! permissions (to `>`, or to another host's subjects) makes these tests fail.

use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use execmesh_gateway::signer::Signer;
use execmesh_proto::pb;
use futures::{FutureExt as _, StreamExt as _};
use prost::Message as _;
use serde_json::json;

use execmesh_tests::nats::nats_server_binary;
use execmesh_tests::nats_accounts::{Identified, SecuredMesh};
use execmesh_tests::process::workspace_binary;
use execmesh_tests::{McpClient, Nats, RunningAgent, RunningAudit, eventually, workspace_path};

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
    let mesh = SecuredMesh::generate(&["web-1", "web-2"]);
    let nats = mesh.start_nats().await;
    // The gateway first: it creates the streams and buckets the agents may only open.
    let gw = mesh.gateway(&nats).start().await;
    let sink = mesh.audit_sink(&nats).start().await;
    let mut agents = Vec::new();
    for host in ["web-1", "web-2"] {
        agents.push(mesh.agent(&nats, host).start().await);
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
    let out = client
        .call(
            "bash",
            json!({"host": "web-2", "cmd": "sleep 0.3; seq 1 3", "bg": true}),
        )
        .await;
    let job = out.structured()["job"]
        .as_str()
        .expect("a job id")
        .to_string();
    let waited = client
        .call("job", json!({"action": "wait", "job": job, "timeout": 20}))
        .await;
    assert!(!waited.is_error(), "{}", waited.text());
    let page = client
        .call("job", json!({"action": "poll", "job": job}))
        .await;
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

    // It cannot speak for web-2 or the gateway: audit events, heartbeats, facts, job statuses.
    for subject in [
        "mesh.v1.default.audit.web-2.job-started",
        "mesh.v1.default.audit.gateway.call-received",
        "$KV.mesh_presence.default.web-2",
        "$KV.mesh_facts.default.web-2",
        &format!("$KV.mesh_jobs.default.web-2.{other_job}"),
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
/// `mesh_jobs`. The gateway recognises it (it carries the stream headers of the answer it was)
/// and treats it as absent.
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
