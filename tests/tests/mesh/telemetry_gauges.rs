//! Metrics that follow the mesh's state, scraped from the real processes: the gateway's
//! pending-approvals gauge moves with requests and decisions (made on another replica), and
//! every service counts a NATS reconnect once the connection is back after a server restart,
//! not while it is away.

use std::time::Duration;

use serde_json::json;

use execmesh_proto::pb;
use execmesh_tests::scrape::Scrape;
use execmesh_tests::{Gateway, McpClient, Nats, eventually};

use crate::task_approvals::policy;
use crate::telemetry::{Metered, metered};

const PENDING: &str = "execmesh_approvals_pending";
const RECONNECTS: &str = "execmesh_nats_reconnects_total";

/// Waits until `series` at `url` reads `value`.
async fn reads(url: &str, series: &str, value: f64) {
    eventually(Duration::from_secs(20), || async {
        (Scrape::get(url).await.value(series) == value).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_approvals_gauge_follows_requests_and_decisions() {
    let nats = Nats::start().await;
    let _db = nats.agent("db-1", &[("role", "db")]).await;
    let gw = Gateway::new(&nats).policy(policy()).admin().start().await;
    let process = gw.spawn_replica(&nats).await;
    let metrics = process.url().replace("/mcp", "/metrics");
    let alice = McpClient::new(process.url(), &gw.mint("alice")).await;
    let mut approvals = gw.admin_client("bob").await.approvals.clone();

    let mut held = Vec::new();
    for cmd in ["uptime", "df -h"] {
        let out = alice
            .call("bash", json!({"host": "db-1", "cmd": cmd}))
            .await;
        held.push(out.approval_id());
    }
    reads(&metrics, PENDING, 2.0).await;

    // Decided on the other gateway: this replica's gauge follows the bucket.
    approvals
        .approve(pb::ApproveRequest {
            id: held[0].clone(),
        })
        .await
        .expect("bob approves");
    reads(&metrics, PENDING, 1.0).await;
    approvals
        .deny(pb::DenyRequest {
            id: held[1].clone(),
            reason: "not now".into(),
        })
        .await
        .expect("bob denies");
    reads(&metrics, PENDING, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_counts_a_nats_reconnect_once_it_is_connected_again() {
    let Metered {
        nats,
        sink: _sink,
        agent,
        gw,
        process,
        urls,
    } = metered().await;
    for url in &urls {
        assert_eq!(Scrape::get(url).await.value(RECONNECTS), 0.0, "{url}");
    }

    // NATS goes away: while it is away, nothing has reconnected.
    nats.kill().await;
    let agent_log = agent.log_path();
    eventually(Duration::from_secs(20), || async {
        let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
        log.contains("disconnected from NATS").then_some(())
    })
    .await;
    for url in &urls {
        assert_eq!(Scrape::get(url).await.value(RECONNECTS), 0.0, "{url}");
    }

    // Back: each service counts exactly one reconnect, and the mesh works again.
    nats.restart().await;
    for url in &urls {
        reads(url, RECONNECTS, 1.0).await;
    }
    let client = McpClient::new(process.url(), &gw.mint("alice")).await;
    let out = eventually(Duration::from_secs(20), || async {
        let out = client.bash("web-1", "echo back").await;
        (!out.is_error()).then_some(out)
    })
    .await;
    out.assert_field("output", "back\n");
    for url in &urls {
        assert_eq!(Scrape::get(url).await.value(RECONNECTS), 1.0, "{url}");
    }
}
