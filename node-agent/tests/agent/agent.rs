//! The node-agent against a real nats-server: requests, output in MESH_OUT, kills, recovery, restarts.
//!
//! The harness (a real nats-server, agents in this process) is in `support`.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use async_nats::jetstream::consumer::{DeliverPolicy, push};
use async_nats::jetstream::{self, kv};
use execmesh_node_agent::Config;
use execmesh_node_agent::guard::GuardConfig;
use execmesh_proto::pb::{self, ErrorCode, JobState, OutputStream};
use execmesh_proto::{Token, jetstream as layout, subject};
use futures::StreamExt;
use prost::Message as _;
use tokio::time::timeout;

// === harness ===

use crate::support;

use support::{
    Agent, Nats, WAIT, config, error_reply, eventually, exec, exec_raw, processes_of, sign, tenant,
    tok,
};

/// A [`support::request`] to run `run`, at the `standard` tier a `bash` call needs.
pub(crate) fn run_request(host: &Token, job: &str, run: pb::RunRequest) -> pb::ExecRequest {
    pb::ExecRequest {
        tier: pb::Tier::Standard as i32,
        ..support::request(host, job, pb::exec_request::Body::Run(run))
    }
}

pub(crate) fn cmd(cmd: &str) -> pb::RunRequest {
    pb::RunRequest {
        cmd: cmd.into(),
        inline_window_ms: 5_000,
        inline_max_bytes: 64 * 1024,
        ..Default::default()
    }
}

/// Runs `run` as job `job` on `host` and returns its run reply (panics on an error reply).
pub(crate) async fn run_job(
    client: &async_nats::Client,
    host: &Token,
    job: &str,
    run: pb::RunRequest,
) -> pb::RunReply {
    run_reply(exec(client, run_request(host, job, run)).await)
}

fn run_reply(reply: pb::ExecReply) -> pb::RunReply {
    match reply.body {
        Some(pb::exec_reply::Body::Run(run)) => run,
        other => panic!("expected a run reply, got {other:?}"),
    }
}

async fn kill(
    client: &async_nats::Client,
    host: &Token,
    job: &str,
    grace_ms: u64,
) -> pb::ControlReply {
    let kill = pb::control_request::Body::Kill(pb::KillRequest { grace_ms });
    control(client, host, job, pb::Tier::Standard, kill).await
}

/// Asks whether `job` still runs, with the lowest tier.
async fn query(client: &async_nats::Client, host: &Token, job: &str) -> pb::ControlReply {
    let query = pb::control_request::Body::Query(pb::JobQuery {});
    control(client, host, job, pb::Tier::Readonly, query).await
}

async fn control(
    client: &async_nats::Client,
    host: &Token,
    job: &str,
    tier: pb::Tier,
    body: pb::control_request::Body,
) -> pb::ControlReply {
    let req = pb::ControlRequest {
        tenant: "default".into(),
        host: host.to_string(),
        job_id: job.into(),
        user: "bob".into(),
        expires_at_ms: execmesh_proto::now_ms() + 30_000,
        tier: tier as i32,
        body: Some(body),
        ..Default::default()
    };
    let msg = timeout(
        Duration::from_secs(20),
        client.request(subject::ctl(&tenant(), host), sign(req).into()),
    )
    .await
    .expect("reply in time")
    .expect("request");
    pb::ControlReply::decode(msg.payload.as_ref()).expect("ControlReply")
}

/// The job status a control request answered with (panics on an error reply).
fn status_reply(reply: pb::ControlReply) -> pb::JobStatus {
    match reply.body {
        Some(pb::control_reply::Body::Status(status)) => status,
        other => panic!("expected a status, got {other:?}"),
    }
}

/// A fresh server on which an agent run for `host` provisioned the buckets and stopped, a
/// client of it and the host id: what an agent restarting after a crash finds.
async fn provisioned(host: &str) -> (Nats, async_nats::Client, Token) {
    let nats = Nats::start().await;
    Agent::start(config(&nats, host)).await.stop().await;
    let client = nats.client().await;
    (nats, client, tok("host id", host))
}

/// Starts the agent for `host` again and returns it with the status it recovered `job` to,
/// which must be `lost`.
async fn restart_and_find_lost(
    nats: &Nats,
    client: &async_nats::Client,
    host: &Token,
    job: &str,
) -> (Agent, pb::JobStatus) {
    let agent = Agent::start(config(nats, host.as_str())).await;
    let lost = job_status(client, host, job).await.expect("status");
    assert_eq!(state(&lost), JobState::Lost);
    (agent, lost)
}

/// Whether a process of `job` runs `sleep` (the job's shell has reached it).
fn sleeping(job: &str) -> bool {
    processes_of(job).iter().any(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
    })
}

/// Every record of a job in MESH_OUT, up to and including its exit record.
pub(crate) async fn records(
    client: &async_nats::Client,
    host: &Token,
    job: &str,
) -> Result<(Vec<pb::OutputChunk>, pb::JobStatus)> {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(layout::OUT_STREAM).await?;
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: subject::out(&tenant(), host, &tok("job id", job)),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut chunks = Vec::new();
    loop {
        let msg = timeout(Duration::from_secs(20), messages.next())
            .await
            .context("waiting for output records")?
            .ok_or_else(|| anyhow!("record stream ended"))??;
        match pb::OutputRecord::decode(msg.payload.as_ref())?.body {
            Some(pb::output_record::Body::Chunk(c)) => chunks.push(c),
            Some(pb::output_record::Body::Exit(e)) => {
                return Ok((chunks, e.status.context("exit status")?));
            }
            None => bail!("empty record"),
        }
    }
}

/// Checks numbering (index and first_line without gaps) and returns the concatenated data.
pub(crate) fn check_chunks(chunks: &[pb::OutputChunk]) -> Vec<u8> {
    let mut next_line = 0;
    let mut data = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.index, i as u64, "chunk index");
        assert_eq!(c.first_line, next_line, "first_line of chunk {i}");
        next_line += u64::from(c.line_count);
        data.extend_from_slice(&c.data);
    }
    data
}

pub(crate) async fn job_status(
    client: &async_nats::Client,
    host: &Token,
    job: &str,
) -> Option<pb::JobStatus> {
    let js = jetstream::new(client.clone());
    let kv = js
        .get_key_value(layout::JOBS_BUCKET)
        .await
        .expect("jobs bucket");
    let bytes = kv
        .get(subject::job_key(&tenant(), host, &tok("job id", job)))
        .await
        .expect("kv get")?;
    Some(pb::JobStatus::decode(bytes.as_ref()).expect("JobStatus"))
}

/// Stores a RUNNING status for `job` on web-1, as an agent instance `deadbeef` that died
/// would have left it.
async fn plant_running_status(client: &async_nats::Client, host: &Token, job: &str, pid: u32) {
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value(layout::JOBS_BUCKET).await.expect("bucket");
    let status = pb::JobStatus {
        job_id: job.into(),
        tenant: "default".into(),
        host: host.to_string(),
        state: JobState::Running as i32,
        pid,
        agent_instance: "deadbeef".into(),
        ..Default::default()
    };
    kv.put(
        subject::job_key(&tenant(), host, &tok("job id", job)),
        status.encode_to_vec().into(),
    )
    .await
    .expect("put");
}

pub(crate) fn state(status: &pb::JobStatus) -> JobState {
    JobState::try_from(status.state).expect("known state")
}

// === scenarios ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_command_replies_inline_and_streams_chunks_then_an_exit_record() {
    let (_nats, agent, client) = support::start_node("web-1").await;

    let reply = run_job(&client, &agent.host, "hello-1", cmd("echo hi; echo there")).await;
    let status = reply.status.expect("status");
    assert_eq!(state(&status), JobState::Exited);
    assert_eq!(status.exit_code, Some(0));
    assert_eq!(status.lines, 2);
    assert_eq!(status.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(status.agent_instance, agent.ready.instance);
    assert_eq!(reply.inline_output.as_deref(), Some(&b"hi\nthere\n"[..]));

    let (chunks, exit) = records(&client, &agent.host, "hello-1")
        .await
        .expect("records");
    assert_eq!(check_chunks(&chunks), b"hi\nthere\n");
    assert_eq!(exit, status);
    assert_eq!(
        job_status(&client, &agent.host, "hello-1").await,
        Some(status)
    );

    // Presence is there while the agent runs.
    let js = jetstream::new(client.clone());
    let presence: kv::Store = js
        .get_key_value(layout::PRESENCE_BUCKET)
        .await
        .expect("bucket");
    let key = subject::host_key(&tenant(), &agent.host);
    let beat = presence.get(&key).await.expect("get").expect("presence");
    let beat = pb::Presence::decode(beat.as_ref()).expect("Presence");
    assert_eq!(beat.agent_instance, agent.ready.instance);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_lines_from_both_streams_arrive_complete_numbered_and_in_order() {
    let (_nats, agent, client) = support::start_node("web-1").await;

    let script = "seq 1 200000; seq 1 1000 >&2; printf 'no newline'";
    let reply = run_job(&client, &agent.host, "seq-1", cmd(script)).await;
    let status = reply.status.expect("status");
    assert_eq!(state(&status), JobState::Exited, "{status:?}");
    assert_eq!(status.lines, 201_001);
    assert_eq!(reply.inline_output, None, "too big for inline");

    let (chunks, exit) = records(&client, &agent.host, "seq-1")
        .await
        .expect("records");
    check_chunks(&chunks);
    let stream_text = |s: OutputStream| -> String {
        chunks
            .iter()
            .filter(|c| c.stream == s as i32)
            .map(|c| String::from_utf8(c.data.clone()).expect("utf8"))
            .collect()
    };
    let expected_out: String =
        (1..=200_000).map(|i| format!("{i}\n")).collect::<String>() + "no newline";
    let expected_err: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    assert_eq!(stream_text(OutputStream::Stdout), expected_out);
    assert_eq!(stream_text(OutputStream::Stderr), expected_err);
    assert_eq!(exit.bytes, (expected_out.len() + expected_err.len()) as u64);
    assert!(chunks.iter().all(|c| c.data.len() <= 16 * 1024 + 1));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_whole_process_group() {
    let (_nats, agent, client) = support::start_node("web-1").await;

    let mut run = cmd("sleep 300 & sleep 300");
    run.timeout_ms = 500;
    let reply = run_job(&client, &agent.host, "slow-1", run).await;
    let status = reply.status.expect("status");
    assert_eq!(state(&status), JobState::TimedOut, "{status:?}");
    assert_eq!(status.reason, "timed out after 500ms");
    assert_eq!(status.signal, "SIGTERM");
    // The group is gone.
    eventually(WAIT, || async { processes_of("slow-1").is_empty() }).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_request_stops_a_background_job_that_ignores_sigterm() {
    let (_nats, agent, client) = support::start_node("web-1").await;

    let mut run = cmd("trap '' TERM; echo started; sleep 300");
    run.bg = true;
    let reply = run_job(&client, &agent.host, "stubborn-1", run).await;
    let running = reply.status.expect("status");
    assert_eq!(state(&running), JobState::Running);
    assert!(running.pid > 1);
    assert_eq!(reply.inline_output, None);
    // The trap is set once the shell runs `sleep`.
    eventually(WAIT, || async { sleeping("stubborn-1") }).await;

    // Asked with the lowest tier, the agent says from its own table that this instance runs it.
    let asked = status_reply(query(&client, &agent.host, "stubborn-1").await);
    assert_eq!(
        (state(&asked), asked.job_id.as_str(), asked.host.as_str()),
        (JobState::Running, "stubborn-1", "web-1")
    );
    assert_eq!(asked.agent_instance, running.agent_instance);
    assert!(!asked.agent_instance.is_empty());

    let killed = status_reply(kill(&client, &agent.host, "stubborn-1", 200).await);
    assert_eq!(state(&killed), JobState::Killed);
    assert_eq!(killed.signal, "SIGKILL");
    assert_eq!(killed.reason, "killed on request of bob");
    // The group is gone.
    eventually(WAIT, || async { processes_of("stubborn-1").is_empty() }).await;

    // Killing it again reports how it ended; an unknown job is named. Asked after, the ended
    // job is no longer this agent's own.
    assert_eq!(
        status_reply(kill(&client, &agent.host, "stubborn-1", 0).await),
        killed
    );
    match query(&client, &agent.host, "stubborn-1").await.body {
        Some(pb::control_reply::Body::Error(e)) => {
            assert_eq!(e.code, ErrorCode::UnknownJob as i32, "{e:?}");
            assert!(e.message.contains("stubborn-1"), "{e:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match kill(&client, &agent.host, "nope-1", 0).await.body {
        Some(pb::control_reply::Body::Error(e)) => {
            assert_eq!(e.code, ErrorCode::UnknownJob as i32);
            assert!(
                e.message.contains("nope-1") && e.message.contains("web-1"),
                "{e:?}"
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let (chunks, _) = records(&client, &agent.host, "stubborn-1")
        .await
        .expect("records");
    assert_eq!(check_chunks(&chunks), b"started\n");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_a_reason_naming_the_host() {
    let (_nats, agent, client) = support::start_node_with("web-1", |c| c.max_jobs = 1).await;
    let host = agent.host.clone();

    let e = error_reply(exec_raw(&client, &host, "alice", b"\xff\xff\xff".to_vec()).await);
    assert_eq!(e.code, ErrorCode::Invalid as i32);
    assert!(e.message.contains("web-1"), "{e:?}");

    let req = run_request(&host, "who-1", cmd("true"));
    let e = error_reply(exec_raw(&client, &host, "mallory", sign(req)).await);
    assert_eq!(e.code, ErrorCode::Invalid as i32);

    let mut req = run_request(&host, "late-1", cmd("true"));
    req.expires_at_ms = 1;
    assert_eq!(
        error_reply(exec(&client, req).await).code,
        ErrorCode::Expired as i32
    );

    let mut run = cmd("true");
    run.cwd = "/nonexistent/place".into();
    let e = error_reply(exec(&client, run_request(&host, "cwd-1", run)).await);
    assert_eq!(e.code, ErrorCode::SpawnFailed as i32);
    assert!(e.message.contains("/nonexistent/place"), "{e:?}");
    let failed = job_status(&client, &host, "cwd-1").await.expect("status");
    assert_eq!(state(&failed), JobState::Failed);

    run_job(&client, &host, "once-1", cmd("true")).await;
    let e = error_reply(exec(&client, run_request(&host, "once-1", cmd("true"))).await);
    assert_eq!(e.code, ErrorCode::Invalid as i32);
    assert!(e.message.contains("already exists"), "{e:?}");

    let mut run = cmd("sleep 300");
    run.bg = true;
    run_job(&client, &host, "hog-1", run).await;
    let e = error_reply(exec(&client, run_request(&host, "more-1", cmd("true"))).await);
    assert_eq!(e.code, ErrorCode::Busy as i32);
    assert_eq!(e.message, "host web-1 runs its maximum of 1 jobs");
    kill(&client, &host, "hog-1", 100).await;
    run_job(&client, &host, "more-1", cmd("true")).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_cap_is_counted_dropped_and_marked() {
    let (_nats, agent, client) =
        support::start_node_with("web-1", |c| c.max_output_bytes_per_job = 1000).await;

    let reply = run_job(&client, &agent.host, "loud-1", cmd("seq 1 10000")).await;
    let status = reply.status.expect("status");
    assert_eq!(state(&status), JobState::Exited);
    let total: u64 = (1..=10000u64).map(|i| i.to_string().len() as u64 + 1).sum();
    let (chunks, _) = records(&client, &agent.host, "loud-1")
        .await
        .expect("records");
    let data = check_chunks(&chunks);
    let last = chunks.last().expect("marker chunk");
    assert_eq!(last.stream, OutputStream::Agent as i32);
    assert!(String::from_utf8_lossy(&last.data).contains("output cap of 1000 bytes"));
    let kept = data.len() as u64 - last.data.len() as u64;
    assert!(kept <= 1000);
    assert_eq!(kept + status.dropped_bytes, total);
    assert!(status.reason.contains("output cap"), "{status:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_kills_running_jobs_and_withdraws_presence() {
    let (_nats, agent, client) = support::start_node("web-1").await;
    let host = agent.host.clone();

    let mut run = cmd("sleep 300");
    run.bg = true;
    run_job(&client, &host, "long-1", run).await;
    agent.stop().await;

    let status = job_status(&client, &host, "long-1").await.expect("status");
    assert_eq!(state(&status), JobState::Killed);
    assert_eq!(status.reason, "agent shut down");
    assert!(processes_of("long-1").is_empty());
    let js = jetstream::new(client.clone());
    let presence = js
        .get_key_value(layout::PRESENCE_BUCKET)
        .await
        .expect("bucket");
    assert_eq!(
        presence
            .get(subject::host_key(&tenant(), &host))
            .await
            .expect("get"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_marks_unfinished_jobs_lost_and_kills_their_processes() {
    let (nats, client, host) = provisioned("web-1").await;

    // What a crashed agent leaves: a RUNNING status and a process carrying the job id.
    let mut orphan = Command::new("/bin/sh")
        .args(["-c", "sleep 300"])
        .envs(HashMap::from([
            ("EXECMESH_JOB", "crashed-1"),
            ("EXECMESH_HOST", "web-1"),
        ]))
        .spawn()
        .expect("orphan starts");
    plant_running_status(&client, &host, "crashed-1", orphan.id()).await;

    let (agent, lost) = restart_and_find_lost(&nats, &client, &host, "crashed-1").await;
    assert_eq!(
        lost.reason,
        format!(
            "agent restarted (instance {} replaced deadbeef)",
            agent.ready.instance
        )
    );
    let exit = orphan.wait().expect("orphan reaped");
    assert!(!exit.success(), "the orphan was killed");
    let (_, exit_status) = records(&client, &host, "crashed-1").await.expect("records");
    assert_eq!(exit_status, lost);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_survives_a_nats_restart_without_loss_or_duplicates() {
    let nats = Nats::start().await;
    let agent = Agent::start(config(&nats, "web-1")).await;
    let host = agent.host.clone();
    {
        let client = nats.client().await;
        let mut run = cmd("for i in $(seq 1 80); do echo line-$i; sleep 0.025; done");
        run.bg = true;
        run_job(&client, &host, "steady-1", run).await;
        // The server goes down while the job is writing: once its first records are stored.
        let js = jetstream::new(client.clone());
        eventually(WAIT, || async {
            let mut stream = js.get_stream(layout::OUT_STREAM).await.ok()?;
            let stored = stream.info().await.ok()?.state.messages;
            (stored > 0).then_some(())
        })
        .await;
    }
    // Down for longer than the publish ack timeout (5 s): acks are missed and the same records
    // are published again; the duplicate window must store each once. The outage itself is
    // what is tested, so it is a fixed time, not a condition.
    nats.kill().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    nats.restart().await;

    let client = nats.client().await;
    let (chunks, exit) = timeout(Duration::from_secs(60), records(&client, &host, "steady-1"))
        .await
        .expect("exit record in time")
        .expect("records");
    let text = String::from_utf8(check_chunks(&chunks)).expect("utf8");
    let expected: String = (1..=80).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(text, expected);
    assert_eq!(state(&exit), JobState::Exited);
    assert_eq!(exit.lines, 80);
    agent.stop().await;
}

// === the binary ===

fn agent_binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_execmesh-node-agent"))
}

/// Starts the agent binary as `host` on `nats` with `args` besides, logging warnings only and
/// with its output discarded.
fn spawn_agent(nats: &Nats, host: &str, args: &[&str]) -> std::process::Child {
    agent_binary()
        .args(["--nats-url", &nats.url(), "--host-id", host])
        .args(args)
        .env("EXECMESH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent starts")
}

#[test]
fn bad_usage_exits_64() {
    let out = agent_binary().arg("--no-such-flag").output().expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let out = agent_binary().arg("--help").output().expect("runs");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--max-jobs"));
}

#[test]
fn guard_check_says_whether_the_hosts_guard_refuses_a_command_by_its_exit_code() {
    let config = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        config.path(),
        "host_id = \"db-1\"\n[guard]\ndeny = [\"iptables -F\"]\n",
    )
    .expect("write the config");
    let check = |args: &[&str]| {
        let out = agent_binary()
            .args(["guard", "check", "--config"])
            .arg(config.path())
            .args(args)
            .env_remove("EXECMESH_AGENT_CONFIG")
            .output()
            .expect("runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = check(&["--", "cd / && rm --recur *"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("refused by rule recursive-delete:"),
        "{out}"
    );
    let (code, out, _) = check(&["--", "iptables", "--flush"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("host rule `iptables -F`"), "{out}");
    let (code, out, _) = check(&["--env", "LD_PRELOAD=/tmp/x.so", "--", "ls"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("`LD_PRELOAD`"), "{out}");
    let (code, out, _) = check(&["--cwd", "/srv/app", "--", "rm", "-rf", "*"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("allowed") && out.contains("db-1"), "{out}");
    // No command, an unknown flag, a bad configuration: usage errors.
    let (code, _, err) = check(&[]);
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = check(&["--colour", "--", "ls"]);
    assert_eq!(code, Some(2), "{err}");
    let out = agent_binary()
        .args([
            "guard",
            "check",
            "--config",
            "/nonexistent/agent.toml",
            "--",
            "ls",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"));
}

#[test]
fn bad_configuration_exits_64_naming_every_bad_value() {
    let out = agent_binary()
        .args([
            "--max-jobs",
            "lots",
            "--host-id",
            "Not.A.Token",
            "--coalesce-ms",
            "soon",
        ])
        .env_remove("EXECMESH_AGENT_CONFIG")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["max_jobs", "host_id", "coalesce_ms"] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_goes_offline_when_its_heartbeat_expires_and_sigterm_stops_it_cleanly() {
    let nats = Nats::start().await;
    let client = nats.client().await;
    let start = || spawn_agent(&nats, "bin-1", &["--heartbeat-interval-ms", "300"]);
    let key = subject::host_key(&tenant(), &tok("host id", "bin-1"));
    let presence = async || -> Option<bytes::Bytes> {
        let js = jetstream::new(client.clone());
        let kv = js.get_key_value(layout::PRESENCE_BUCKET).await.ok()?;
        kv.get(&key).await.ok().flatten()
    };
    let wait_presence = async |want: bool, within: Duration| {
        eventually(within, || async { presence().await.is_some() == want }).await;
    };

    let mut agent = start();
    wait_presence(true, Duration::from_secs(10)).await;
    agent.kill().expect("SIGKILL");
    agent.wait().expect("reaped");
    // TTL is 3 × 300 ms rounded up to 1 s; allow the server's expiry sweep some slack.
    wait_presence(false, Duration::from_secs(5)).await;

    let mut agent = start();
    wait_presence(true, Duration::from_secs(10)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = tokio::task::spawn_blocking(move || agent.wait())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    assert!(
        presence().await.is_none(),
        "presence removed at once on a graceful stop"
    );
}

// === warm shells ===

/// Pids of the warm shells (idle or running a job) started by the agent run `instance`.
fn warm_shells_of(instance: &str) -> Vec<u32> {
    support::processes_with_env(&format!("EXECMESH_WARM={instance}"))
}

/// Whether `pid` is a warm shell (its command line is the boot script that closes fd 3).
fn is_warm_shell(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.windows(9).any(|w| w == b"exec 3<&-"))
}

/// Whether any process belongs to process group `pgid`.
fn group_alive(pgid: u32) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|stat| {
                // Fields after the command's closing parenthesis: state ppid pgrp …
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(2).map(str::to_string))
                    .is_some_and(|pgrp| pgrp == pgid.to_string())
            })
        })
}

/// Starts an agent and waits until its pool holds `shells` warm shells.
async fn warm_agent(nats: &Nats, shells: usize) -> Agent {
    let agent = Agent::start(Config {
        warm_shells: shells,
        // These tests are about the shell itself, also with a command that does not parse,
        // which the guard would refuse before any shell saw it.
        guard: GuardConfig {
            enabled: false,
            ..GuardConfig::default()
        },
        ..config(nats, "web-1")
    })
    .await;
    let instance = agent.ready.instance.clone();
    // The warm shells are up.
    eventually(WAIT, || async { warm_shells_of(&instance).len() == shells }).await;
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_shell_runs_a_job_like_bash_c() {
    let nats = Nats::start().await;
    let agent = warm_agent(&nats, 2).await;
    let client = nats.client().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cwd = dir.path().canonicalize().expect("canonical");

    let mut run = cmd(concat!(
        // Split so that a fresh shell's command line (which holds this command) does not match.
        "grep -qF 'exec 3<&''-' /proc/$$/cmdline && echo warm; ",
        "echo \"$GREETING|$EXECMESH_JOB|$EXECMESH_HOST|$PWD|${EXECMESH_WARM-none}\"; ",
        "env | grep -c '^EXECMESH_JOB=warm-1$'; ",
        "ls /proc/$$/fd; ",
        "echo oops >&2; exit 3"
    ));
    run.cwd = cwd.display().to_string();
    run.env = HashMap::from([("GREETING".to_string(), "it's \"me\" $HOME".to_string())]);
    let reply = run_job(&client, &agent.host, "warm-1", run).await;
    let status = reply.status.expect("status");
    assert_eq!(state(&status), JobState::Exited, "{status:?}");
    assert_eq!(status.exit_code, Some(3));
    let text = String::from_utf8(reply.inline_output.expect("inline")).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "warm", "{text}");
    assert_eq!(
        lines[1],
        format!("it's \"me\" $HOME|warm-1|web-1|{}|none", cwd.display())
    );
    assert_eq!(lines[2], "1", "EXECMESH_JOB is exported: {text}");
    // The shell's own descriptors: the script pipe (fd 3) is closed before the command runs.
    assert!(lines.contains(&"0") && !lines.contains(&"3"), "{text}");
    assert_eq!(lines.last(), Some(&"oops"), "{text}");

    // A syntax error exits 2, as `bash -c` does.
    let reply = run_job(&client, &agent.host, "syntax-1", cmd("echo a; if")).await;
    assert_eq!(reply.status.expect("status").exit_code, Some(2));

    // A working directory that cannot be entered is refused, naming it, and the shell survives.
    let mut run = cmd("true");
    run.cwd = "/nonexistent/warm".into();
    let e = error_reply(exec(&client, run_request(&agent.host, "cwd-warm-1", run)).await);
    assert_eq!(e.code, ErrorCode::SpawnFailed as i32);
    assert!(e.message.contains("/nonexistent/warm"), "{e:?}");

    let instance = agent.ready.instance.clone();
    // The pool is refilled.
    eventually(WAIT, || async { warm_shells_of(&instance).len() == 2 }).await;
    agent.stop().await;
    assert!(
        warm_shells_of(&instance).is_empty(),
        "idle warm shells outlived the agent"
    );
}

/// The uid `pid` runs as.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_the_account_most_users_map_to_take_warm_shells_started_as_that_account() {
    let nats = Nats::start().await;
    let daemon = nix::unistd::User::from_name("daemon")
        .expect("passwd lookup")
        .expect("the daemon account exists");
    let home = if daemon.dir.is_dir() {
        daemon.dir.clone()
    } else {
        "/".into()
    };
    let agent = Agent::start(Config {
        warm_shells: 2,
        run_as: [("*".to_string(), vec!["daemon".to_string()])].into(),
        guard: GuardConfig {
            enabled: false,
            ..GuardConfig::default()
        },
        ..config(&nats, "web-1")
    })
    .await;
    let client = nats.client().await;
    let instance = agent.ready.instance.clone();
    let probe = concat!(
        "grep -qF 'exec 3<&''-' /proc/$$/cmdline && echo warm || echo fresh; ",
        "id -u; id -G; echo \"$HOME|$USER|$PWD|${EXECMESH_WARM-none}|$EXECMESH_JOB\""
    );
    if !nix::unistd::geteuid().is_root() {
        // Only root switches accounts: the job is refused and no shell runs as daemon.
        let e = error_reply(exec(&client, run_request(&agent.host, "ra-1", cmd(probe))).await);
        assert_eq!(e.code, ErrorCode::RunAs as i32, "{e:?}");
        assert!(
            warm_shells_of(&instance)
                .iter()
                .all(|p| uid_of(*p) != Some(daemon.uid.as_raw()))
        );
        return;
    }
    // The pool's shells run as daemon.
    eventually(WAIT, || async { warm_shells_of(&instance).len() == 2 }).await;
    for pid in warm_shells_of(&instance) {
        assert_eq!(uid_of(pid), Some(daemon.uid.as_raw()), "warm shell {pid}");
    }
    let groups = |text: &str| -> String { text.lines().nth(2).unwrap_or("").to_string() };

    // A job in the account's default directory takes one, and runs exactly as a fresh one does.
    let reply = run_job(&client, &agent.host, "ra-warm", cmd(probe)).await;
    let warm = String::from_utf8(reply.inline_output.expect("inline")).expect("utf8");
    let mut run = cmd(probe);
    run.cwd = home.display().to_string();
    let reply = run_job(&client, &agent.host, "ra-home", run).await;
    let also_warm = String::from_utf8(reply.inline_output.expect("inline")).expect("utf8");
    // Another directory: a fresh shell, which enters it as the account.
    let mut run = cmd(probe);
    run.cwd = "/tmp".into();
    let reply = run_job(&client, &agent.host, "ra-fresh", run).await;
    let fresh = String::from_utf8(reply.inline_output.expect("inline")).expect("utf8");

    let uid = daemon.uid.to_string();
    assert_eq!(
        warm.lines().take(2).collect::<Vec<_>>(),
        ["warm", uid.as_str()],
        "{warm}"
    );
    assert_eq!(also_warm.lines().next(), Some("warm"), "{also_warm}");
    assert_eq!(
        fresh.lines().take(2).collect::<Vec<_>>(),
        ["fresh", uid.as_str()],
        "{fresh}"
    );
    assert_eq!(
        groups(&warm),
        groups(&fresh),
        "the same supplementary groups"
    );
    assert_eq!(
        warm.lines().nth(3),
        Some(
            format!(
                "{}|daemon|{}|none|ra-warm",
                daemon.dir.display(),
                home.display()
            )
            .as_str()
        )
    );
    assert_eq!(
        fresh.lines().nth(3),
        Some(format!("{}|daemon|/tmp|none|ra-fresh", daemon.dir.display()).as_str())
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_warm_jobs_get_their_own_shells_and_a_kill_empties_the_group() {
    let nats = Nats::start().await;
    let agent = warm_agent(&nats, 2).await;
    let client = nats.client().await;

    let mut pids = Vec::new();
    for job in ["pair-1", "pair-2"] {
        let mut run = cmd("trap '' TERM; sleep 300 & sleep 300");
        run.bg = true;
        let reply = run_job(&client, &agent.host, job, run).await;
        let status = reply.status.expect("status");
        assert_eq!(state(&status), JobState::Running);
        assert!(
            is_warm_shell(status.pid),
            "job {job} did not get a warm shell"
        );
        // The first status already carried the pid: no second write was needed.
        let stored = job_status(&client, &agent.host, job).await.expect("status");
        assert_eq!(stored.pid, status.pid);
        pids.push(status.pid);
    }
    assert_ne!(pids[0], pids[1], "each job has a shell of its own");
    // Both jobs sleep.
    eventually(WAIT, || async {
        ["pair-1", "pair-2"].iter().all(|job| sleeping(job))
    })
    .await;

    let killed = status_reply(kill(&client, &agent.host, "pair-1", 200).await);
    assert_eq!(state(&killed), JobState::Killed);
    // The killed job's group is gone.
    eventually(WAIT, || async { !group_alive(pids[0]) }).await;
    assert!(processes_of("pair-1").is_empty());
    assert!(group_alive(pids[1]), "the other job runs on");
    kill(&client, &agent.host, "pair-2", 200).await;
    // The second group is gone.
    eventually(WAIT, || async { !group_alive(pids[1]) }).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_warm_shells_every_job_starts_its_own_shell() {
    let (_nats, agent, client) = support::start_node_with("web-1", |c| c.warm_shells = 0).await;
    let reply = run_job(
        &client,
        &agent.host,
        "cold-1",
        cmd("grep -qF 'exec 3<&''-' /proc/$$/cmdline && echo warm; echo $EXECMESH_JOB; exit 4"),
    )
    .await;
    let status = reply.status.expect("status");
    assert_eq!(status.exit_code, Some(4));
    assert_eq!(reply.inline_output.as_deref(), Some(&b"cold-1\n"[..]));
    assert!(warm_shells_of(&agent.ready.instance).is_empty());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_kills_the_warm_shell_of_a_leftover_job_by_its_marker() {
    let (nats, client, host) = provisioned("web-1").await;

    // A warm shell that outlived its agent: its environment at exec names the agent run, not
    // the job (the job id was exported later). A process with another run's marker at another
    // pid is left alone.
    let spawn = |instance: &str| {
        Command::new("/bin/sleep")
            .arg("300")
            .env("EXECMESH_WARM", instance)
            .env("EXECMESH_HOST", "web-1")
            .spawn()
            .expect("starts")
    };
    let mut shell = spawn("deadbeef");
    let mut bystander = spawn("cafe");
    plant_running_status(&client, &host, "warm-crashed-1", shell.id()).await;

    let (agent, _lost) = restart_and_find_lost(&nats, &client, &host, "warm-crashed-1").await;
    let exit = shell.wait().expect("reaped");
    assert!(!exit.success(), "the leftover warm shell was killed");
    assert!(
        bystander.try_wait().expect("try_wait").is_none(),
        "a process with another run's marker survives"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_agent_leaves_no_process_of_a_warm_shell_job_after_restart() {
    let nats = Nats::start().await;
    let client = nats.client().await;
    let gateway_key = support::gateway_public_key();
    let start = || {
        spawn_agent(
            &nats,
            "bin-2",
            &["--warm-shells", "2", "--gateway-key", &gateway_key],
        )
    };
    let host = tok("host id", "bin-2");
    let mut agent = start();
    // Ready once it answers; retry while it starts.
    let attempts = AtomicUsize::new(0);
    let (job, reply) = eventually(Duration::from_secs(20), || async {
        let attempt = attempts.fetch_add(1, Ordering::Relaxed);
        let mut run = cmd("setsid sleep 300 & sleep 300");
        run.bg = true;
        let subject = subject::exec(&tenant(), &host, &tok("user", "alice"));
        let req = run_request(&host, &format!("orphan-{attempt}"), run);
        let msg = timeout(
            Duration::from_secs(2),
            client.request(subject, sign(req).into()),
        )
        .await
        .ok()?
        .ok()?;
        Some((
            format!("orphan-{attempt}"),
            run_reply(pb::ExecReply::decode(msg.payload.as_ref()).expect("reply")),
        ))
    })
    .await;
    // The first answer may have come before the pool was filled; use a job a warm shell runs.
    let first = (job, reply.status.expect("status").pid);
    let current = std::sync::Mutex::new(first);
    let attempts = AtomicUsize::new(0);
    let (job, pgid) = eventually(Duration::from_secs(10), || async {
        let (job, pgid) = current.lock().expect("current job").clone();
        if is_warm_shell(pgid) {
            return Some((job, pgid));
        }
        let attempt = attempts.fetch_add(1, Ordering::Relaxed);
        let mut run = cmd("setsid sleep 300 & sleep 300");
        run.bg = true;
        let job = format!("warm-orphan-{attempt}");
        let reply = run_job(&client, &host, &job, run).await;
        *current.lock().expect("current job") = (job, reply.status.expect("status").pid);
        None
    })
    .await;
    assert!(is_warm_shell(pgid), "no job got a warm shell");
    // The job sleeps.
    eventually(WAIT, || async { processes_of(&job).len() >= 2 }).await;

    agent.kill().expect("SIGKILL");
    agent.wait().expect("reaped");
    let mut agent = start();
    // The job's group is gone, and no process of the job is left.
    eventually(WAIT, || async { !group_alive(pgid) }).await;
    eventually(WAIT, || async { processes_of(&job).is_empty() }).await;
    // The job is marked lost.
    eventually(Duration::from_secs(10), || async {
        job_status(&client, &host, &job)
            .await
            .is_some_and(|s| state(&s) == JobState::Lost)
    })
    .await;
    agent.kill().expect("SIGKILL");
    agent.wait().expect("reaped");
}
