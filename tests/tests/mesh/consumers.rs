//! The JetStream consumers a gateway replica creates: each named for its replica and purpose, and
//! the watches admin clients and task subscriptions hold bounded by `max_watches`, one more
//! refused saying which limit, and freed when their client goes away.

use std::time::Duration;

use futures::StreamExt as _;
use tonic::Code;

use execmesh_proto::pb;
use execmesh_tests::admin::assert_status;
use execmesh_tests::tasks::TaskListen;
use execmesh_tests::{Gateway, Nats, NodeAgent, eventually};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// The names of the consumers on `stream`.
async fn consumer_names(nats: &Nats, stream: &str) -> Vec<String> {
    let js = nats.jetstream().await;
    js.get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("no stream {stream}: {e}"))
        .consumer_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await
}

#[tokio::test]
async fn watches_are_named_for_their_replica_and_one_past_max_watches_is_refused_until_one_closes()
{
    let nats = Nats::start().await;
    let _web = nats.agent("web-1", &[]).await;
    let gw = Gateway::new(&nats)
        .admin()
        .configure(|c| c.max_watches = 1)
        .start()
        .await;
    let mut admin = gw.admin_client("root").await;
    let watch_hosts = || pb::WatchHostsRequest {
        selector: "*".into(),
        include_initial: true,
    };

    let first = admin
        .hosts
        .watch(watch_hosts())
        .await
        .expect("the first watch is within max_watches")
        .into_inner();

    // Every consumer on the presence stream is the gateway's and says what it is for: the
    // replica's own watches of departing hosts and for its host directory, and this client's
    // watch.
    let names = eventually(WAIT, || async {
        let names = consumer_names(&nats, "KV_mesh_presence").await;
        (names.len() >= 3).then_some(names)
    })
    .await;
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        names.iter().all(|n| n.starts_with("gw-")),
        "every consumer named for its replica: {names:?}"
    );
    for purpose in ["-departures-", "-directory-presence-", "-hosts-"] {
        assert!(
            names.iter().any(|n| n.contains(purpose)),
            "a consumer for {purpose}: {names:?}"
        );
    }

    // A second watch of any kind is one too many, and the refusal names the limit.
    assert_status(
        admin.hosts.watch(watch_hosts()).await,
        Code::ResourceExhausted,
        "max_watches",
    );
    let approvals = admin
        .approvals
        .watch(pb::WatchApprovalsRequest::default())
        .await;
    assert!(
        matches!(&approvals, Err(s) if s.message().contains("max_watches")),
        "an approvals watch counts against the same limit: {:?}",
        approvals.as_ref().err()
    );

    // The client going away frees its slot.
    drop(first);
    eventually(WAIT, || {
        let mut hosts = admin.hosts.clone();
        async move { hosts.watch(watch_hosts()).await.is_ok() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_subscription_is_one_named_watch_refused_past_max_watches_and_freed_when_closed() {
    let nats = Nats::start().await;
    let _web = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats)
        .configure(|c| c.max_watches = 1)
        .start()
        .await;
    let alice = gw.task_client("alice").await;
    let task = alice
        .call_task("bash", json!({"host": "web-1", "cmd": "sleep 30"}))
        .await;
    let (url, token) = (gw.url(), gw.mint("alice"));
    let ids = [task.id.as_str()];
    let open = || TaskListen::open(&url, &token, &ids, true);

    let mut first = open().await.unwrap_or_else(|a| panic!("no stream: {a:?}"));
    first.next(WAIT).await.expect("an acknowledgement");
    let names = consumer_names(&nats, "KV_mesh_tasks").await;
    assert!(
        names.len() == 1 && names[0].starts_with("gw-") && names[0].contains("-task-listen-"),
        "one consumer, named for its replica and purpose: {names:?}"
    );

    // A second subscription is one watch too many: refused, naming the limit.
    let (status, body) = open().await.err().expect("a second subscription refused");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["error"]["code"], -32000, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_watches"), "{body}");

    // The client going away frees the slot.
    drop(first);
    eventually(WAIT, || async { open().await.is_ok() }).await;
}
