//! Disk and output limits: streams bounded by the agent's JetStream budget, per-user and per-host output quotas, and how a host shows them reached.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use execmesh_proto::jetstream::{self as layout, StoreLimits};
use execmesh_proto::pb::{self, JobState, OutputLimit, OutputStream};
use execmesh_proto::subject;
use prost::Message as _;

use crate::agent::{check_chunks, cmd, job_status, records, run_job, run_request, state};
use crate::support::{self, Agent, Nats, WAIT, eventually, exec, tenant};

/// The smallest budget the agent takes: MESH_OUT gets about 8 MiB of it.
const BUDGET: u64 = layout::MIN_STORE_BUDGET_BYTES;

/// How long a job that fills MESH_OUT may take on a loaded machine.
const FILL_WAIT: Duration = Duration::from_secs(90);

async fn stream_info(js: &jetstream::Context, name: &str) -> Option<stream::Info> {
    let mut stream = js.get_stream(name).await.ok()?;
    stream.info().await.ok().cloned()
}

/// The host's latest heartbeat.
async fn presence(client: &async_nats::Client, host: &str) -> Option<pb::Presence> {
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value(layout::PRESENCE_BUCKET).await.ok()?;
    let key = subject::host_key(&tenant(), &support::tok("host id", host));
    let bytes = kv.get(key).await.ok()??;
    pb::Presence::decode(bytes.as_ref()).ok()
}

/// Total bytes of `seq 1 n`.
fn seq_bytes(n: u64) -> u64 {
    (1..=n).map(|i| i.to_string().len() as u64 + 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_budget_bounds_every_stream_and_a_full_mesh_out_evicts_old_output_not_heartbeats_kv_or_audit()
 {
    let nats = Nats::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    // MESH_OUT as an older execmesh created it: no byte limit.
    let mut unbounded =
        layout::out_stream(layout::DEFAULT_OUTPUT_RETENTION, &StoreLimits::default(), 1);
    unbounded.max_bytes = -1;
    js.create_stream(unbounded).await.expect("old MESH_OUT");

    let agent = Agent::start_with(&nats, "web-1", |c| c.jetstream_budget_bytes = BUDGET).await;
    let limits = StoreLimits::from_budget(BUDGET);
    for name in [
        layout::OUT_STREAM.to_string(),
        layout::AUDIT_STREAM.to_string(),
        format!("KV_{}", layout::PRESENCE_BUCKET),
        format!("KV_{}", layout::FACTS_BUCKET),
        format!("KV_{}", layout::JOBS_BUCKET),
    ] {
        let want = limits.of_stream(&name).expect("a mesh stream");
        eventually(WAIT, || async {
            stream_info(&js, &name)
                .await
                .is_some_and(|i| i.config.max_bytes == want)
        })
        .await;
    }
    let out = stream_info(&js, layout::OUT_STREAM)
        .await
        .expect("MESH_OUT");
    assert_eq!(out.config.discard, stream::DiscardPolicy::Old);

    // One job writes half again as much as MESH_OUT may hold.
    let fill = limits.out_bytes as u64 * 3 / 2;
    let flood = format!("yes {} | head -c {fill}", "x".repeat(199));
    run_job(&client, &agent.host, "flood-1", cmd(&flood)).await;
    let flooded = eventually(FILL_WAIT, || async {
        job_status(&client, &agent.host, "flood-1")
            .await
            .filter(|s| state(s) != JobState::Running)
    })
    .await;
    assert_eq!(state(&flooded), JobState::Exited, "{flooded:?}");
    assert_eq!(
        flooded.bytes, fill,
        "the agent kept all of it; the stream evicted"
    );
    let out = stream_info(&js, layout::OUT_STREAM)
        .await
        .expect("MESH_OUT");
    assert!(
        out.state.bytes <= limits.out_bytes as u64,
        "MESH_OUT holds {} bytes, over its limit {}",
        out.state.bytes,
        limits.out_bytes
    );
    assert!(
        out.state.first_sequence > 1,
        "the oldest output was evicted"
    );

    // Heartbeats, KV writes and audit events go on, and new output is stored whole.
    let audit_before = stream_info(&js, layout::AUDIT_STREAM)
        .await
        .expect("AUDIT")
        .state
        .messages;
    let reply = run_job(&client, &agent.host, "after-1", cmd("echo still here")).await;
    let status = reply.status.expect("status");
    assert_eq!(state(&status), JobState::Exited);
    let stored = job_status(&client, &agent.host, "after-1")
        .await
        .expect("status stored in mesh_jobs");
    assert_eq!(state(&stored), JobState::Exited);
    let (chunks, _) = records(&client, &agent.host, "after-1")
        .await
        .expect("records");
    assert_eq!(check_chunks(&chunks), b"still here\n");
    eventually(WAIT, || async {
        stream_info(&js, layout::AUDIT_STREAM)
            .await
            .is_some_and(|i| i.state.messages > audit_before)
    })
    .await;
    // The heartbeat shows the stream full against its limit (looked up every few beats). Only a
    // beat written after the last job's output was stored can count its bytes: one written
    // between the fill and that job (heartbeats are retried within a second) cannot.
    let after_job = execmesh_proto::now_ms();
    let usage = eventually(Duration::from_secs(20), || async {
        presence(&client, "web-1")
            .await
            .filter(|p| p.heartbeat_at_ms > after_job)
            .and_then(|p| p.output)
            .filter(|o| o.stream_bytes > o.stream_max_bytes / 10 * 9)
    })
    .await;
    assert_eq!(usage.stream_max_bytes, limits.out_bytes as u64);
    assert_eq!(usage.host_bytes, fill + b"still here\n".len() as u64);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_and_per_host_quotas_drop_output_with_a_marker_count_it_and_show_it() {
    let (_nats, agent, client) = support::start_node_with("web-1", |c| {
        c.max_output_bytes_per_user = 2000;
        c.max_output_bytes_per_host = 3000;
    })
    .await;
    let total = seq_bytes(10_000);

    // Alice's job stops at her quota; the job runs to its end.
    let reply = run_job(&client, &agent.host, "alice-1", cmd("seq 1 10000")).await;
    let alice = reply.status.expect("status");
    assert_eq!(state(&alice), JobState::Exited);
    assert_eq!(alice.exit_code, Some(0));
    assert_eq!(alice.dropped_by, OutputLimit::UserQuota as i32, "{alice:?}");
    assert!(
        alice
            .reason
            .contains("output quota of 2000 bytes for user alice")
    );
    let (chunks, exit) = records(&client, &agent.host, "alice-1")
        .await
        .expect("records");
    assert_eq!(exit.dropped_by, OutputLimit::UserQuota as i32);
    let data = check_chunks(&chunks);
    let marker = chunks.last().expect("marker chunk");
    assert_eq!(marker.stream, OutputStream::Agent as i32);
    assert!(
        String::from_utf8_lossy(&marker.data)
            .contains("output quota of 2000 bytes per 24h for user alice"),
        "{}",
        String::from_utf8_lossy(&marker.data)
    );
    let alice_kept = (data.len() - marker.data.len()) as u64;
    assert!(alice_kept <= 2000 && alice_kept > 1900, "{alice_kept}");
    assert_eq!(alice_kept + alice.dropped_bytes, total);

    // Bob has his own quota, but the host only has what Alice left of its quota.
    let req = pb::ExecRequest {
        user: "bob".into(),
        ..run_request(&agent.host, "bob-1", cmd("seq 1 10000"))
    };
    let bob = match exec(&client, req).await.body {
        Some(pb::exec_reply::Body::Run(run)) => run.status.expect("status"),
        other => panic!("expected a run reply, got {other:?}"),
    };
    assert_eq!(bob.dropped_by, OutputLimit::HostQuota as i32, "{bob:?}");
    assert!(
        bob.reason
            .contains("output quota of 3000 bytes for this host")
    );
    let (chunks, _) = records(&client, &agent.host, "bob-1")
        .await
        .expect("records");
    let data = check_chunks(&chunks);
    let marker = chunks.last().expect("marker chunk");
    assert!(String::from_utf8_lossy(&marker.data).contains("this host's output quota"));
    let bob_kept = (data.len() - marker.data.len()) as u64;
    assert!(alice_kept + bob_kept <= 3000);
    assert_eq!(bob_kept + bob.dropped_bytes, total);

    // The heartbeat says which quotas are reached and what they dropped.
    let beat = eventually(WAIT, || async {
        presence(&client, "web-1")
            .await
            .and_then(|p| p.output)
            .filter(|o| o.dropped_host_quota_bytes > 0)
    })
    .await;
    assert_eq!(beat.users_at_quota, vec!["alice".to_string()]);
    assert_eq!(beat.dropped_user_quota_bytes, alice.dropped_bytes);
    assert_eq!(beat.dropped_host_quota_bytes, bob.dropped_bytes);
    assert_eq!(beat.host_bytes, alice_kept + bob_kept);
    assert_eq!((beat.user_quota_bytes, beat.host_quota_bytes), (2000, 3000));
    agent.stop().await;
}
