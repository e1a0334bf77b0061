//! The host's fact pack against a real nats-server: collected at start into `mesh_facts`, served cached or refreshed, collected again every interval.

use crate::support;

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use execmesh_proto::pb;
use execmesh_proto::{jetstream as layout, subject};
use prost::Message as _;
use support::{Agent, Nats, WAIT, eventually, exec, request, tenant};

async fn facts_bucket(client: &async_nats::Client) -> kv::Store {
    jetstream::new(client.clone())
        .get_key_value(layout::FACTS_BUCKET)
        .await
        .expect("facts bucket")
}

async fn stored(bucket: &kv::Store, agent: &Agent) -> pb::HostFacts {
    let bytes = bucket
        .get(subject::host_key(&tenant(), &agent.host))
        .await
        .expect("kv get")
        .expect("the host's facts are stored");
    pb::HostFacts::decode(bytes.as_ref()).expect("HostFacts")
}

async fn ask(client: &async_nats::Client, agent: &Agent, refresh: bool) -> pb::HostFacts {
    let job = format!("facts-{:08x}", rand::random::<u32>());
    let body = pb::exec_request::Body::Facts(pb::FactsRequest { refresh });
    match exec(client, request(&agent.host, &job, body)).await.body {
        Some(pb::exec_reply::Body::Facts(pb::FactsReply { facts: Some(facts) })) => facts,
        other => panic!("expected facts, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fact_pack_is_stored_at_start_with_sensible_values_and_labels() {
    let nats = Nats::start().await;
    let agent = Agent::start_with(&nats, "facts-1", |c| {
        c.labels.insert("role".into(), "web".into());
        c.facts_interval_secs = 600;
    })
    .await;
    let client = nats.client().await;
    let facts = stored(&facts_bucket(&client).await, &agent).await;

    assert_eq!(facts.host, "facts-1");
    assert_eq!(facts.labels.get("role").map(String::as_str), Some("web"));
    assert_eq!(facts.interval_secs, 600);
    assert!(!facts.agent_version.is_empty());
    let age = execmesh_proto::now_ms().saturating_sub(facts.collected_at_ms);
    assert!(age < 60_000, "collected {age} ms ago");
    assert!(facts.cpus > 0, "{facts:?}");
    assert!(facts.memory_bytes > 0, "{facts:?}");
    assert!(facts.memory_available_bytes <= facts.memory_bytes);
    assert!(facts.uptime_secs > 0, "{facts:?}");
    assert!(!facts.kernel.is_empty() && !facts.arch.is_empty() && !facts.os.is_empty());
    assert!(!facts.os_id.is_empty(), "os-release ID: {facts:?}");
    let root = facts
        .disks
        .iter()
        .find(|d| d.mount == "/")
        .unwrap_or_else(|| panic!("a disk for /: {:?}", facts.disks));
    assert!(
        root.total_bytes > 0 && root.used_bytes <= root.total_bytes,
        "{root:?}"
    );
    assert!(
        facts
            .disks
            .iter()
            .all(|d| !["proc", "sysfs", "tmpfs", "cgroup", "cgroup2"].contains(&d.fs_type.as_str())),
        "{:?}",
        facts.disks
    );
    assert!(
        facts
            .ip_addresses
            .iter()
            .all(|a| a != "127.0.0.1" && a != "::1")
    );
    // NATS listens on this host: its port shows as a listening TCP socket.
    assert!(
        facts
            .listening_ports
            .iter()
            .any(|p| p.protocol.starts_with("tcp") && p.port == u32::from(nats.port())),
        "port {} missing from {:?}",
        nats.port(),
        facts.listening_ports
    );
    assert_eq!(facts.package_manager.is_empty(), facts.package_count == 0);

    // Without a refresh the cached pack is the stored one.
    assert_eq!(ask(&client, &agent, false).await, facts);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_collects_anew_and_stores_the_new_pack() {
    let (_nats, agent, client) = support::start_node("facts-2").await;
    let bucket = facts_bucket(&client).await;
    let first = stored(&bucket, &agent).await;
    // The clock moves on for the next stamp.
    eventually(WAIT, || async {
        execmesh_proto::now_ms() > first.collected_at_ms
    })
    .await;
    let fresh = ask(&client, &agent, true).await;
    assert!(
        fresh.collected_at_ms > first.collected_at_ms,
        "{} then {}",
        first.collected_at_ms,
        fresh.collected_at_ms
    );
    assert_eq!(stored(&bucket, &agent).await, fresh);
    assert_eq!(ask(&client, &agent, false).await, fresh);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_are_collected_again_every_interval() {
    let (_nats, agent, client) =
        support::start_node_with("facts-3", |c| c.facts_interval_secs = 1).await;
    let bucket = facts_bucket(&client).await;
    let first = stored(&bucket, &agent).await;
    let stamps = std::sync::Mutex::new(vec![first.collected_at_ms]);
    // Two more collections within 5 s.
    eventually(Duration::from_secs(5), || async {
        let now = stored(&bucket, &agent).await.collected_at_ms;
        let mut stamps = stamps.lock().expect("stamps");
        if now != *stamps.last().expect("a stamp") {
            stamps.push(now);
        }
        stamps.len() == 3
    })
    .await;
    let stamps = stamps.into_inner().expect("stamps");
    assert_eq!(
        stamps.len(),
        3,
        "two more collections within 5 s: {stamps:?}"
    );
    let gap = stamps[2] - stamps[1];
    assert!((700..=2_500).contains(&gap), "collections {gap} ms apart");
    agent.stop().await;
}
