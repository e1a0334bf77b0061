//! End-to-end: an agent answers a short job as soon as it exits, before its status and exit record are stored, and a caller reading the job right after the reply still sees all of it.

use execmesh_tests::{Gateway, McpClient, Nats, NodeAgent, RunningAgent, RunningGateway};
use serde_json::json;

/// Calls made back to back: each read races the agent's stores of the job before it.
const ROUNDS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_read_right_after_its_reply_shows_its_end_and_all_its_output() {
    let (_mesh, client) = mesh_past_its_first_reply().await;

    for round in 0..ROUNDS {
        let out = client
            .call(
                "bash",
                json!({"host": "web-1", "cmd": format!("seq 1 5; echo {round}")}),
            )
            .await;
        let run = out.structured();
        assert_eq!(run["state"], "exited", "{run}");
        let job = run["job"].as_str().expect("a job id").to_string();
        let expected = format!("1\n2\n3\n4\n5\n{round}\n");
        assert_eq!(run["output"], expected);

        let polled = client
            .call("job", json!({"action": "poll", "job": job}))
            .await;
        let page = polled.structured();
        assert_eq!(page["job"]["state"], "exited", "{page}");
        assert_eq!(page["output"], expected, "{page}");
        assert_eq!(page["done"], true, "{page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_longer_than_a_page_is_paged_whole_right_after_the_reply() {
    let (_mesh, client) = mesh_past_its_first_reply().await;

    for _ in 0..ROUNDS {
        // Six lines do not fit a page of two: the first page comes from MESH_OUT.
        let out = client
            .call(
                "bash",
                json!({"host": "web-1", "cmd": "seq 1 6", "max_lines": 2}),
            )
            .await;
        let run = out.structured();
        assert_eq!(run["state"], "exited", "{run}");
        assert_eq!(run["output"], "1\n2\n", "{run}");
        let mut text = run["output"].as_str().expect("output").to_string();
        let mut cursor = run["next_cursor"].as_str().expect("a cursor").to_string();
        loop {
            let polled = client
                .call(
                    "job",
                    json!({"action": "poll", "cursor": cursor, "max_lines": 2}),
                )
                .await;
            let page = polled.structured();
            text.push_str(page["output"].as_str().expect("output"));
            if page["done"] == true {
                break;
            }
            cursor = page["next_cursor"].as_str().expect("a cursor").to_string();
        }
        assert_eq!(text, "1\n2\n3\n4\n5\n6\n");
    }
}

/// A mesh with one agent, `web-1`, and alice's client after one call: the first reply tells the
/// gateway the agent's instance, so the calls after it name it and take the short path.
async fn mesh_past_its_first_reply() -> ((RunningGateway, RunningAgent, Nats), McpClient) {
    let nats = Nats::start().await;
    let agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    client
        .call("bash", json!({"host": "web-1", "cmd": "true"}))
        .await;
    // Dropped in this order, as locals would be: the gateway, the agent, then NATS.
    ((gw, agent, nats), client)
}
