//! End-to-end: the `file` tool and `grep` on an SSH target served by a relay (SFTP over its master connection) against a real sshd — every action, root escapes on the remote side, copies between agent hosts and the target, grep with a digest next to an agent host.
//!
//! The test sshd logs in as the user running the tests, on this machine: the target's files
//! are this machine's files, so what the relay did is checked on the disk directly.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use execmesh_tests::quickstart::Quickstart;
use execmesh_tests::relay::{Relay, RunningRelay};
use execmesh_tests::sshd::Sshd;
use execmesh_tests::{
    Gateway, McpClient, Nats, NodeAgent, RunningAgent, RunningGateway, eventually,
};

use crate::file::{file, ok, sha256_of};

/// A temp dir made canonical (the relay reports the target's real paths).
fn root_dir(prefix: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("a temp dir");
    let real = std::fs::canonicalize(dir.path()).expect("canonical temp dir");
    (dir, real.display().to_string())
}

/// A relay serving `box-1` (its only root `target_root`) on a fresh sshd, an agent `web-1`
/// when `agent_root` is given (its only root), a gateway and alice's client. Every part is
/// held until the scenario ends.
struct Scene {
    c: McpClient,
    sshd: Sshd,
    _gw: RunningGateway,
    _relay: RunningRelay,
    _agent: Option<RunningAgent>,
    _nats: Nats,
}

async fn scene(agent_root: Option<&str>, target_root: &str) -> Scene {
    let nats = Nats::start().await;
    let sshd = Sshd::start().await;
    let agent = match agent_root {
        Some(root) => Some(
            NodeAgent::new(&nats, "web-1")
                .arg("--file-root", root)
                .start()
                .await,
        ),
        None => None,
    };
    let relay = Relay::new(&nats, "alice")
        .target("box-1", &sshd)
        .target_setting(&format!("file_roots = [{target_root:?}]"))
        .start(&nats)
        .await;
    let gw = Gateway::new(&nats)
        .configure(|c| c.request_timeout = Duration::from_secs(60))
        .start()
        .await;
    let c = gw.client("alice").await;
    Scene {
        c,
        sshd,
        _gw: gw,
        _relay: relay,
        _agent: agent,
        _nats: nats,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_action_works_on_a_relay_target_over_sftp() {
    let (_dir, root) = root_dir("execmesh-relay-files-");
    let Scene { c, .. } = &scene(None, &root).await;
    let f = format!("{root}/conf/app.conf");

    // A missing parent needs create_dirs; then the write lands on the target, atomically.
    let w = file(
        c,
        json!({"host": "box-1", "action": "write", "path": f, "content": "a=1\n"}),
    )
    .await;
    w.assert_refused("create_dirs");
    let w = file(c, json!({"host": "box-1", "action": "write", "path": f, "content": "a=1\n", "create_dirs": true, "mode": "0640"})).await;
    assert_eq!(ok(&w)["size"], 4, "{}", w.text());
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "a=1\n");
    let a = file(
        c,
        json!({"host": "box-1", "action": "append", "path": f, "content": "b=2\n"}),
    )
    .await;
    assert_eq!(ok(&a)["size"], 8, "{}", a.text());
    // A replacing write keeps the file's mode and leaves no temp file behind.
    let w = file(
        c,
        json!({"host": "box-1", "action": "write", "path": f, "content": "a=1\nb=2\nc=3\n"}),
    )
    .await;
    ok(&w);
    let names: Vec<String> = std::fs::read_dir(format!("{root}/conf"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["app.conf"], "temp files left: {names:?}");
    let s = file(c, json!({"host": "box-1", "action": "stat", "path": f})).await;
    let stat = &ok(&s)["stat"];
    assert_eq!(stat["kind"], "file", "{}", s.text());
    assert_eq!(stat["size"], 12);
    assert_eq!(stat["mode"], "0640");

    // Reads page by offset to the end, every line once.
    let mut text = String::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut args = json!({"host": "box-1", "action": "read", "path": f, "max_lines": 2});
        if let Some(cur) = &cursor {
            args["cursor"] = json!(cur);
        }
        let r = file(c, args).await;
        let s = ok(&r);
        pages += 1;
        text.push_str(s["text"].as_str().unwrap());
        if s["eof"] == true {
            break;
        }
        cursor = Some(s["next_cursor"].as_str().unwrap().to_string());
    }
    assert_eq!(text, "a=1\nb=2\nc=3\n");
    assert_eq!(pages, 2);

    for i in 0..3 {
        std::fs::write(format!("{root}/conf/n{i}.log"), format!("line {i}\n")).unwrap();
    }
    let l = file(
        c,
        json!({"host": "box-1", "action": "list", "path": root, "recursive": true}),
    )
    .await;
    let paths: Vec<&str> = ok(&l)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "conf",
            "conf/app.conf",
            "conf/n0.log",
            "conf/n1.log",
            "conf/n2.log"
        ],
        "{}",
        l.text()
    );

    let moved = format!("{root}/moved/app.conf");
    let m = file(
        c,
        json!({"host": "box-1", "action": "move", "path": f, "to": moved, "create_dirs": true}),
    )
    .await;
    ok(&m);
    assert!(!Path::new(&f).exists() && Path::new(&moved).exists());
    file(
        c,
        json!({"host": "box-1", "action": "delete", "path": format!("{root}/conf")}),
    )
    .await
    .assert_refused("recursive");
    ok(&file(
        c,
        json!({"host": "box-1", "action": "delete", "path": format!("{root}/conf"), "recursive": true}),
    )
    .await);
    assert!(!Path::new(&format!("{root}/conf")).exists());
    // The root itself is never deleted.
    file(
        c,
        json!({"host": "box-1", "action": "delete", "path": root, "recursive": true}),
    )
    .await
    .assert_refused("allowed root");
    assert!(Path::new(&moved).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_leaving_a_relay_targets_roots_are_refused_naming_host_and_path() {
    let (_dir, root) = root_dir("execmesh-relay-root-");
    let (_outside_dir, outside) = root_dir("execmesh-relay-outside-");
    std::fs::write(format!("{outside}/secret"), "s3cret\n").unwrap();
    let Scene { c, sshd, .. } = &scene(None, &root).await;

    // `..` out of the root.
    let dotdot = format!(
        "{root}/../{}/secret",
        Path::new(&outside).file_name().unwrap().to_string_lossy()
    );
    let r = file(
        c,
        json!({"host": "box-1", "action": "read", "path": dotdot}),
    )
    .await;
    r.assert_refused("outside the allowed roots");
    assert!(r.text().contains("box-1"), "names the host: {}", r.text());
    assert!(r.text().contains(&dotdot), "names the path: {}", r.text());
    assert!(!r.text().contains("s3cret"), "{}", r.text());

    // A symlink made on the target's side, pointing out of the root: followed there, refused.
    sshd.ssh(&format!("ln -s {outside} {root}/escape"));
    let through = format!("{root}/escape/secret");
    let r = file(
        c,
        json!({"host": "box-1", "action": "read", "path": through}),
    )
    .await;
    r.assert_refused("outside the allowed roots");
    assert!(
        r.text().contains("box-1") && r.text().contains(&through),
        "{}",
        r.text()
    );
    let w = file(
        c,
        json!({"host": "box-1", "action": "write", "path": format!("{root}/escape/planted"), "content": "x"}),
    )
    .await;
    w.assert_refused("outside the allowed roots");
    assert!(!Path::new(&format!("{outside}/planted")).exists());
    let l = file(
        c,
        json!({"host": "box-1", "action": "list", "path": format!("{root}/escape")}),
    )
    .await;
    l.assert_refused("outside the allowed roots");
    let g = c
        .call(
            "grep",
            json!({"hosts": "box-1", "pattern": "s3cret", "paths": [through]}),
        )
        .await;
    assert!(!g.text().contains("s3cret\""), "grep leaked: {}", g.text());
    assert!(
        g.text().contains("outside the allowed roots"),
        "{}",
        g.text()
    );
    // The link itself lies inside: stat describes it without following it.
    let s = file(
        c,
        json!({"host": "box-1", "action": "stat", "path": format!("{root}/escape")}),
    )
    .await;
    assert_eq!(ok(&s)["stat"]["kind"], "symlink", "{}", s.text());
    // A path outside every root, named directly.
    file(
        c,
        json!({"host": "box-1", "action": "read", "path": "/etc/passwd"}),
    )
    .await
    .assert_refused("outside the allowed roots");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_from_an_agent_to_a_relay_target_and_back_keeps_its_sha256() {
    let (_agent_dir, agent_root) = root_dir("execmesh-copy-agent-");
    let (_target_dir, target_root) = root_dir("execmesh-copy-target-");
    let Scene { c, .. } = &scene(Some(&agent_root), &target_root).await;

    // Several chunks' worth of bytes no text file would hold.
    let src = format!("{agent_root}/blob.bin");
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let expected = sha256_of(Path::new(&src));

    let there = format!("{target_root}/in/blob.bin");
    let out = file(c, json!({"host": "web-1", "action": "copy", "path": src, "to_host": "box-1", "to": there, "create_dirs": true})).await;
    assert_eq!(ok(&out)["sha256"], expected, "{}", out.text());
    assert_eq!(sha256_of(Path::new(&there)), expected);

    let back = format!("{agent_root}/back/blob.bin");
    let out = file(c, json!({"host": "box-1", "action": "copy", "path": there, "to_host": "web-1", "to": back, "create_dirs": true})).await;
    assert_eq!(ok(&out)["sha256"], expected, "{}", out.text());
    assert_eq!(sha256_of(Path::new(&back)), expected);

    // An existing destination on the target is kept unless overwrite is asked for.
    let out = file(
        c,
        json!({"host": "web-1", "action": "copy", "path": src, "to_host": "box-1", "to": there}),
    )
    .await;
    out.assert_refused("exists");
    let leftovers: Vec<String> = std::fs::read_dir(format!("{target_root}/in"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["blob.bin"], "temp files left: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grep_with_a_digest_spans_an_agent_host_and_a_relay_target() {
    let (_dir, root) = root_dir("execmesh-relay-grep-");
    for (host, n) in [("web-1", 3), ("box-1", 4)] {
        let dir = format!("{root}/{host}");
        std::fs::create_dir_all(&dir).unwrap();
        let mut text: String = (0..n)
            .map(|i| {
                format!("2026-12-02T10:00:0{i}Z ERROR request {i}{i} to 10.0.0.{i} timed out\n")
            })
            .collect();
        text.push_str("2026-12-02T10:01:00Z INFO fine\n");
        if host == "box-1" {
            text.push_str("2026-12-02T10:02:00Z ERROR disk /dev/sdb1 failed\n");
        }
        std::fs::write(format!("{dir}/app.log"), text).unwrap();
        std::fs::write(format!("{dir}/skip.txt"), "ERROR not a log\n").unwrap();
    }
    let Scene { c, .. } = &scene(Some(&root), &root).await;

    // One search over both hosts: each answers for itself, the digest merges them.
    let out = c
        .call(
            "grep",
            json!({"hosts": "web-1 or box-1", "pattern": "ERROR", "paths": [root],
                   "globs": ["*.log"], "digest": true}),
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
    let s = out.structured();
    assert_eq!(s["counts"]["ok"], 2, "{}", out.text());
    let host = |id: &str| {
        s["hosts"]
            .as_array()
            .expect("a hosts list")
            .iter()
            .find(|h| h["host"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {}", out.text()))
            .clone()
    };
    // Both hosts see the same files (one machine): 3 + 4 timeouts and one disk error each,
    // never the .txt file.
    for id in ["web-1", "box-1"] {
        let h = host(id);
        assert_eq!(h["status"], "ok", "{h}");
        assert_eq!(h["total_matches"], 8, "{id}: {h}");
        assert_eq!(h["files_matched"], 2, "{id}: {h}");
    }
    assert_eq!(s["total_matches"], 16, "{}", out.text());
    let digest = s["digest"].as_array().expect("a digest");
    assert_eq!(s["digest_groups_total"], 2, "{}", out.text());
    assert_eq!(
        digest[0]["pattern"],
        "<ts> ERROR disk /dev/sdb<n> failed",
        "rarest first: {}",
        out.text()
    );
    assert_eq!(digest[0]["host_count"], 2, "{}", out.text());
    assert_eq!(digest[1]["lines"], 14, "{}", out.text());

    // Only the relay target's own directory: its counts alone, and a path missing there is
    // reported for it without failing the search.
    let out = c
        .call(
            "grep",
            json!({"hosts": "box-1", "pattern": "disk", "mode": "count",
                   "paths": [format!("{root}/box-1"), format!("{root}/nowhere")]}),
        )
        .await;
    let s = out.structured();
    let h = &s["hosts"][0];
    assert_eq!(h["files"][0]["count"], 1, "{}", out.text());
    assert_eq!(
        h["path_errors"].as_array().map(Vec::len),
        Some(1),
        "{}",
        out.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_grep_stops_at_the_targets_byte_budget_and_says_so() {
    let (_dir, root) = root_dir("execmesh-relay-budget-");
    // Two files of 64 KiB, the match in each: a budget of 80 KiB reads the first whole and
    // stops in the second.
    for name in ["a.log", "b.log"] {
        let mut text = "ERROR here\n".to_string();
        text.push_str(&"x".repeat(64 * 1024));
        text.push('\n');
        std::fs::write(format!("{root}/{name}"), text).unwrap();
    }
    let nats = Nats::start().await;
    let sshd = Sshd::start().await;
    let _relay = Relay::new(&nats, "alice")
        .target("box-1", &sshd)
        .target_setting(&format!("file_roots = [{root:?}]"))
        .target_setting("grep_max_bytes = 81920")
        .start(&nats)
        .await;
    let gw = Gateway::new(&nats).start().await;
    let c = gw.client("alice").await;
    let out = c
        .call(
            "grep",
            json!({"hosts": "box-1", "pattern": "ERROR", "paths": [root], "mode": "files"}),
        )
        .await;
    let h = &out.structured()["hosts"][0];
    assert_eq!(h["status"], "ok", "{}", out.text());
    assert_eq!(h["truncated"], true, "{}", out.text());
    assert!(
        h["truncated_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("byte budget"),
        "{}",
        out.text()
    );
    assert_eq!(
        h["files"][0]["path"],
        format!("{root}/a.log"),
        "{}",
        out.text()
    );
}

/// `deploy/quickstart.sh --ssh-demo` as a new user runs it: next to the agent host, the
/// agentless target `ssh-demo` served by the user's relay through the demo sshd, with `bash`
/// and the file tool working on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstarts_ssh_demo_serves_an_agentless_target_next_to_the_agent() {
    let quickstart = Quickstart::start(&["--ssh-demo"]).await;
    let client = McpClient::new(&quickstart.detail("mcp_url"), &quickstart.detail("token")).await;
    let out = eventually(Duration::from_secs(90), || async {
        let out = client
            .call(
                "bash",
                json!({"host": "ssh-demo", "cmd": "echo \"on $EXECMESH_HOST\"", "wait": 20}),
            )
            .await;
        (!out.is_error() && out.structured()["state"] == "exited").then_some(out)
    })
    .await;
    assert_eq!(
        out.structured()["output"],
        "on ssh-demo\n",
        "{}",
        out.text()
    );
    // The quickstart returns while its services may still be starting, and its agent and the
    // relay register independently: under load the relay's target can answer a command before
    // the agent's own registration is stored. Both are listed once both registered.
    let hosts = eventually(Duration::from_secs(30), || async {
        let hosts = client.call("hosts", json!({})).await;
        let listed = hosts.structured()["hosts"].as_array()?.clone();
        listed.iter().any(|h| h["kind"] != "relay").then_some(hosts)
    })
    .await;
    let listed = hosts.structured()["hosts"]
        .as_array()
        .expect("hosts")
        .clone();
    let demo = listed
        .iter()
        .find(|h| h["host"] == "ssh-demo")
        .unwrap_or_else(|| panic!("no ssh-demo in {}", hosts.text()));
    assert_eq!(demo["kind"], "relay", "{}", hosts.text());
    // The demo target's files, over SFTP, inside its default roots (/tmp among them).
    let path = quickstart.parent.path().join("demo-note.txt");
    let path = path.display().to_string();
    let w = file(
        &client,
        json!({"host": "ssh-demo", "action": "write", "path": path, "content": "hello\n"}),
    )
    .await;
    ok(&w);
    let r = file(
        &client,
        json!({"host": "ssh-demo", "action": "read", "path": path}),
    )
    .await;
    assert_eq!(ok(&r)["text"], "hello\n", "{}", r.text());
}
