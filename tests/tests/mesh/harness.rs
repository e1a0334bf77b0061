//! The harness itself: a real nats-server that restarts in place, agents that announce themselves, an in-process gateway.

use std::time::Duration;

use async_nats::jetstream::stream;
use execmesh_proto::jetstream::PRESENCE_BUCKET;
use execmesh_tests::presence::presence_key;
use execmesh_tests::{Gateway, Nats, NodeAgent, eventually};
use futures::StreamExt as _;
use rmcp::model::ProtocolVersion;
use serde_json::json;

/// Creates a file-stored stream and publishes one acknowledged message to it.
async fn stream_with_one_message(js: &async_nats::jetstream::Context) {
    js.create_stream(stream::Config {
        name: "HARNESS".to_string(),
        subjects: vec!["harness.>".to_string()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create stream HARNESS");
    js.publish("harness.kept", "survives restarts".into())
        .await
        .expect("publish")
        .await
        .expect("publish acknowledged");
}

/// Reads message 1 of the stream, once the server answers again.
async fn first_message(js: &async_nats::jetstream::Context) -> String {
    let message = eventually(Duration::from_secs(10), || async {
        js.get_stream("HARNESS")
            .await
            .ok()?
            .get_raw_message(1)
            .await
            .ok()
    })
    .await;
    String::from_utf8(message.payload.to_vec()).expect("utf-8 payload")
}

#[tokio::test]
async fn nats_restart_keeps_port_and_jetstream_data() {
    let nats = Nats::start().await;
    let port = nats.port();
    let url = nats.url();
    let js = nats.jetstream().await;
    stream_with_one_message(&js).await;
    let first_pid = nats.pid().await.expect("running");

    nats.restart().await;

    assert_eq!(nats.port(), port);
    assert_eq!(nats.url(), url);
    assert_ne!(nats.pid().await, Some(first_pid), "a new process");
    // The old connection reconnects by itself, and a new one sees the same store.
    assert_eq!(first_message(&js).await, "survives restarts");
    assert_eq!(
        first_message(&nats.jetstream().await).await,
        "survives restarts"
    );
}

#[tokio::test]
async fn nats_hard_restart_after_kill_keeps_acknowledged_data() {
    let nats = Nats::start().await;
    let js = nats.jetstream().await;
    stream_with_one_message(&js).await;

    nats.kill().await;
    assert_eq!(nats.pid().await, None);
    nats.restart().await;

    assert_eq!(first_message(&js).await, "survives restarts");
}

#[tokio::test]
async fn nats_drop_kills_the_server_and_removes_its_store() {
    let nats = Nats::start().await;
    let pid = nats.pid().await.expect("running");
    let store = nats.store_dir();
    let port = nats.port();
    drop(nats);

    assert!(!store.exists(), "{} left behind", store.display());
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(!proc.exists(), "nats-server {pid} still running");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "port {port} still accepts connections"
    );
}

#[tokio::test]
async fn agent_is_ready_once_its_presence_is_written() {
    let nats = Nats::start().await;
    let agent = nats.agent("web-1", &[("role", "web")]).await;

    assert_eq!(agent.host(), "web-1");
    let js = nats.jetstream().await;
    let bucket = js
        .get_key_value(PRESENCE_BUCKET)
        .await
        .expect("the agent provisions mesh_presence");
    let entry = bucket
        .entry(presence_key("web-1"))
        .await
        .expect("read presence");
    assert!(entry.is_some(), "presence key default.web-1 exists");

    let presence = nats.presence("web-1").await.expect("a live heartbeat");
    assert_eq!(presence.host, "web-1");
    assert_eq!(presence.agent_instance, agent.instance());
    assert!(!presence.agent_instance.is_empty());
}

#[tokio::test]
async fn agent_stop_removes_its_presence() {
    let nats = Nats::start().await;
    let mut agent = NodeAgent::new(&nats, "web-1").start().await;
    let pid = agent.pid();

    let status = agent.stop().await;

    assert!(status.success(), "graceful exit, got {status}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    eventually(Duration::from_secs(5), || async {
        nats.presence("web-1").await.is_none()
    })
    .await;
}

#[tokio::test]
async fn an_agent_stops_promptly_on_sigterm_while_nats_is_down() {
    let nats = Nats::start().await;
    let mut agent = NodeAgent::new(&nats, "web-1").start().await;
    nats.kill().await;
    // The premise is an agent that knows NATS is down: SIGTERM sent before it noticed the
    // connection drop would find it still "connected".
    eventually(Duration::from_secs(5), || async {
        agent.log_tail(50).contains("disconnected from NATS")
    })
    .await;

    // Nothing can be said goodbye to: the agent gives up its farewells instead of hanging.
    let started = std::time::Instant::now();
    let status = agent.stop().await;

    assert!(status.success(), "graceful exit, got {status}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        agent.log_tail(50).contains("NATS is unreachable"),
        "{}",
        agent.log_tail(50)
    );
}

#[tokio::test]
async fn logs_written_to_a_file_carry_no_colour_escapes() {
    let nats = Nats::start().await;
    let mut agent = NodeAgent::new(&nats, "web-1").start().await;
    agent.stop().await;

    // The agent's stderr is a file here, as under systemd or a redirect: plain text lines.
    let log = agent.log_tail(200);
    assert!(log.contains("INFO"), "the agent logged nothing: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour escapes in the log: {log:?}"
    );
}

#[tokio::test]
async fn agent_restart_after_kill_waits_for_a_new_instance() {
    let nats = Nats::start().await;
    let mut agent = NodeAgent::new(&nats, "web-1").start().await;
    let first = agent.instance().to_string();
    let first_pid = agent.pid();

    agent.kill_hard().await;
    // SIGKILL gives no chance to clean up: the old heartbeat is still there.
    assert_eq!(
        nats.presence("web-1").await.map(|p| p.agent_instance),
        Some(first.clone())
    );
    agent.restart().await;

    assert_ne!(agent.pid(), first_pid);
    assert_ne!(agent.instance(), first);
    let presence = nats.presence("web-1").await.expect("a live heartbeat");
    assert_eq!(presence.agent_instance, agent.instance());
}

#[tokio::test]
async fn eventually_returns_the_first_settled_value() {
    let mut calls = 0;
    let value = eventually(Duration::from_secs(5), || {
        calls += 1;
        let n = calls;
        async move { (n >= 3).then_some(n) }
    })
    .await;
    assert_eq!(value, 3);
}

#[tokio::test]
#[should_panic(expected = "did not hold within")]
async fn eventually_panics_at_the_deadline() {
    eventually(Duration::from_millis(100), || async { false }).await;
}

/// Depends on the real gateway (the interface stub serves nothing): a request without a bearer
/// token, or with a bad one, is refused with 401 and a `WWW-Authenticate` challenge.
#[tokio::test]
async fn gateway_refuses_requests_without_a_valid_token() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).start().await;
    assert!(gw.addr().ip().is_loopback());
    assert_ne!(gw.addr().port(), 0);
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});

    for token in [None, Some("not-a-token")] {
        let response = gw.post_raw(token, ping.clone()).await;
        assert_eq!(response.status(), 401, "token {token:?}");
        assert!(
            response
                .headers()
                .contains_key(reqwest::header::WWW_AUTHENTICATE),
            "token {token:?}: 401 without WWW-Authenticate"
        );
    }
}

/// Depends on the real gateway: the harness's MCP client connects with the newest protocol
/// (`server/discover`, no `initialize`) and with an older one (`initialize` handshake).
#[tokio::test]
async fn client_speaks_the_newest_and_a_legacy_protocol() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).start().await;

    let modern = gw.client("alice").await;
    assert_eq!(modern.protocol_version(), ProtocolVersion::LATEST);
    let legacy = gw.legacy_client("alice", "2025-06-18").await;
    assert_eq!(legacy.protocol_version(), ProtocolVersion::V_2025_06_18);

    for client in [&modern, &legacy] {
        let tools = client.list_tools().await;
        assert!(
            tools.iter().any(|tool| tool.name == "bash"),
            "{:?} lists {:?}",
            client.protocol_version(),
            tools.iter().map(|t| &t.name).collect::<Vec<_>>()
        );
    }
}

/// A light simulated fleet (what `execmesh-bench scale` runs by the ten thousand) creates nothing
/// of the mesh, and once the gateway has, serves calls as real agents do.
#[tokio::test]
async fn a_light_simulated_fleet_creates_nothing_and_serves_calls_like_agents() {
    use execmesh_node_agent::{Config, Launch, Startup};
    let nats = Nats::start().await;

    // Before any gateway: a light agent refuses to start, naming the bucket, and the server
    // still holds no stream.
    let mut config = Config::new(&nats.url(), "lone").expect("config");
    config.gateway_keys = vec![nats.mesh_public_key().to_string()];
    config.warm_shells = 0;
    let launch = Launch {
        ready: None,
        startup: Startup::Light,
    };
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        execmesh_node_agent::run_with(config, Default::default(), launch),
    )
    .await
    .expect("a light start fails at once")
    .expect_err("no buckets: a light start must not create them");
    let refused = refused.to_string();
    assert!(
        refused.contains("KV bucket mesh_") && refused.contains("light start creates nothing"),
        "{refused}"
    );
    let js = nats.jetstream().await;
    let streams: Vec<String> = js
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await;
    assert!(streams.is_empty(), "a light agent created {streams:?}");

    let fleet = execmesh_tests::Fleet::new(&nats, "sim", 20)
        .light()
        .heartbeat(Duration::from_secs(1));
    let gw = Gateway::new(&nats).start().await;
    let fleet = fleet.start().await;
    let client = gw.client("alice").await;
    let hosts = client.call("hosts", json!({"selector": "sim-*"})).await;
    assert_eq!(hosts.structured()["online"], json!(20), "{}", hosts.text());
    let ran = client
        .call(
            "bash",
            json!({"hosts": "sim-*", "cmd": "echo from $((1+1))"}),
        )
        .await;
    assert_eq!(
        ran.structured()["counts"]["ok"],
        json!(20),
        "{}",
        ran.text()
    );
    assert!(ran.text().contains("from 2"), "{}", ran.text());
    assert_eq!(fleet.alive(), 20);
    fleet.stop().await;
}
