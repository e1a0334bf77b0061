//! The mesh on both nats-server release lines it supports: every scenario runs on the current release (the default), and these run on the minimum one too — a command, a paged job, host state from heartbeats (KV watchers), and the bounded consumers the mesh creates.

use std::time::Duration;

use execmesh_nats_server::{MINIMUM_RELEASE, nats_server_binary, nats_server_version};
use execmesh_tests::{Gateway, Nats, NodeAgent, eventually};
use serde_json::json;

/// The release line the suite defaults to: 2.15 changed defaults the mesh depends on (at most
/// 1,000 consumers per stream), so the suite must run on it, not on an older line.
const CURRENT_RELEASE: (u64, u64) = (2, 15);

#[test]
fn the_suite_runs_on_the_current_release_by_default() {
    let (major, minor, _) = nats_server_version(nats_server_binary());
    assert!(
        (major, minor) >= CURRENT_RELEASE,
        "the default nats-server is {major}.{minor}; deploy/install-nats.sh installs {}.{}",
        CURRENT_RELEASE.0,
        CURRENT_RELEASE.1
    );
}

/// A command, a job paged to its end, the host online and then gone: on `nats`.
async fn the_mesh_works_on(nats: Nats) {
    let mut agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;

    let out = client
        .call("bash", json!({"host": "web-1", "cmd": "echo hi"}))
        .await;
    assert_eq!(out.structured()["output"], "hi\n");

    let job = client.bash_bg("web-1", "seq 1 30000").await;
    let paged = tokio::time::timeout(Duration::from_secs(60), async {
        let mut lines: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut args = json!({"action": "poll", "job": job, "max_lines": 10_000});
            if let Some(c) = &cursor {
                args["cursor"] = json!(c);
            }
            let out = client.call("job", args).await;
            let s = out.structured();
            let page = s["output"].as_str().unwrap_or_default();
            lines.extend(page.lines().map(str::to_string));
            if s["done"] == true {
                return lines;
            }
            cursor = s["next_cursor"].as_str().map(str::to_string);
            if page.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let lines = paged.await.expect("the job pages to its end within 60 s");
    let expected: Vec<String> = (1..=30000).map(|n| n.to_string()).collect();
    assert_eq!(lines, expected, "every line once, in order");

    // Host state comes from the heartbeats' KV watch; a stopped agent's departure too.
    let state = || async {
        let out = client.call("hosts", json!({"selector": "web-1"})).await;
        out.structured()["hosts"][0]["state"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(state().await.as_deref(), Some("online"));
    agent.stop().await;
    eventually(Duration::from_secs(30), || async {
        state().await.as_deref() == Some("offline")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_works_on_the_minimum_release() {
    let nats = Nats::builder().minimum_version().start().await;
    let (major, minor, _) = nats_server_version(nats.binary());
    assert_eq!((major, minor), MINIMUM_RELEASE);
    the_mesh_works_on(nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_works_on_the_current_release() {
    let nats = Nats::start().await;
    let (major, minor, _) = nats_server_version(nats.binary());
    assert!((major, minor) >= CURRENT_RELEASE);
    the_mesh_works_on(nats).await;
}

/// `deploy/nats/cluster/` as an operator installs it (the node file, `cluster.conf` beside it,
/// the generated accounts under `execmesh/`, certificates where the files say), with the
/// certificate paths pointed at test certificates: `nats-server -t` accepts every node's file on
/// both release lines.
#[test]
fn the_cluster_configuration_is_valid_on_both_releases() {
    use execmesh_tests::certificates::TestCa;
    use execmesh_tests::nats_accounts::SecuredMesh;

    let dir = tempfile::tempdir().expect("temp dir");
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).expect("tls dir");
    let ca = TestCa::new("execmesh cluster test CA");
    ca.write(&tls, "ca");
    ca.server(&["nats-1.example.internal"])
        .write(&tls, "server");
    ca.client("nats-1.example.internal").write(&tls, "route");

    let source = execmesh_tests::workspace_path("deploy/nats/cluster");
    let shared = std::fs::read_to_string(source.join("cluster.conf")).expect("cluster.conf");
    let shared = shared.replace("/etc/nats/tls/", &format!("{}/", tls.display()));
    let shared = shared.replace(
        "/var/lib/nats",
        &dir.path().join("store").display().to_string(),
    );
    std::fs::write(dir.path().join("cluster.conf"), shared).expect("write cluster.conf");
    std::fs::create_dir(dir.path().join("execmesh")).expect("execmesh dir");
    let accounts = SecuredMesh::generate(&["web-1", "db-1"]).generated_config();
    std::fs::write(dir.path().join("execmesh/nats.conf"), accounts).expect("write accounts");

    for node in ["nats-1.conf", "nats-2.conf", "nats-3.conf"] {
        let file = dir.path().join(node);
        std::fs::copy(source.join(node), &file).expect("copy the node file");
        for binary in [
            nats_server_binary(),
            execmesh_nats_server::minimum_nats_server_binary(),
        ] {
            let out = std::process::Command::new(binary)
                .arg("-t")
                .arg("-c")
                .arg(&file)
                .output()
                .expect("run nats-server -t");
            assert!(
                out.status.success(),
                "{} -t refused {node}: {}{}",
                binary.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
