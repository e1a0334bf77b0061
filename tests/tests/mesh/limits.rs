//! End-to-end: a full MESH_OUT evicts the oldest output, paging a job says so, and `hosts` shows the stream full.

use std::time::Duration;

use serde_json::json;

use execmesh_proto::jetstream::{MIN_STORE_BUDGET_BYTES, StoreLimits};
use execmesh_tests::{Gateway, Nats, NodeAgent, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_oldest_output_was_evicted_pages_from_what_is_left_and_says_so() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1")
        .arg(
            "--jetstream-budget-bytes",
            MIN_STORE_BUDGET_BYTES.to_string(),
        )
        .arg("--heartbeat-interval-ms", "200")
        .start()
        .await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;

    // Numbered lines of 100 bytes, half again as many as MESH_OUT may hold.
    let out_bytes = StoreLimits::from_budget(MIN_STORE_BUDGET_BYTES).out_bytes as u64;
    let lines = out_bytes * 3 / 2 / 100;
    let job = client
        .bash_bg("web-1", &format!("seq -f '%099g' 1 {lines}"))
        .await;
    client.wait_exited(&job, 120).await;

    // Paging from the start gets the oldest line still stored, and says what is gone.
    let page = client.job("poll", &job).await;
    assert!(!page.is_error(), "{}", page.text());
    let first_line = page.structured()["first_line"]
        .as_u64()
        .expect("first_line");
    assert!(
        first_line > 0,
        "the oldest output was evicted: {}",
        page.text()
    );
    assert!(
        page.text().contains(&format!(
            "output before line {} is no longer stored (MESH_OUT evicted it",
            first_line + 1
        )),
        "{}",
        page.text()
    );
    let output = page.structured()["output"].as_str().expect("output");
    let shown: u64 = output
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .expect("a numbered line");
    assert_eq!(shown, first_line + 1, "line numbers match the lines shown");

    // `hosts` shows the stream full.
    let hosts = eventually(Duration::from_secs(20), || async {
        let out = client.call("hosts", json!({"selector": "web-1"})).await;
        (out.structured()["hosts"][0]["output"]["stream_full"] == json!(true)).then_some(out)
    })
    .await;
    assert!(
        hosts
            .text()
            .contains("output limits reached: MESH_OUT full, the oldest output is evicted"),
        "{}",
        hosts.text()
    );
}
