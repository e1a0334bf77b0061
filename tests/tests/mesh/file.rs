//! End-to-end: the `file` tool against real agents with allowed roots in temp directories.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use execmesh_tests::{Gateway, McpClient, Nats, NodeAgent, RunningAgent, ToolOutput};

/// An agent whose only allowed root is a fresh temp directory.
async fn agent_with_root(nats: &Nats, host: &str) -> (RunningAgent, tempfile::TempDir) {
    let root = tempfile::tempdir().expect("a temp dir for the agent's root");
    let agent = NodeAgent::new(nats, host)
        .arg("--file-root", root.path())
        .start()
        .await;
    (agent, root)
}

fn p(root: &tempfile::TempDir, rel: &str) -> String {
    root.path().join(rel).display().to_string()
}

pub(crate) async fn file(client: &McpClient, args: Value) -> ToolOutput {
    client.call("file", args).await
}

#[track_caller]
pub(crate) fn ok(out: &ToolOutput) -> &Value {
    assert!(!out.is_error(), "file call failed: {}", out.text());
    out.structured()
}

#[track_caller]
fn refused(out: &ToolOutput, needle: &str) {
    out.assert_refused(needle);
}

pub(crate) fn sha256_of(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum prints a digest")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_round_trips() {
    let nats = Nats::start().await;
    let (_agent, root) = agent_with_root(&nats, "web-1").await;
    let gw = Gateway::new(&nats).start().await;
    let c = gw.client("alice").await;
    let f = p(&root, "conf/app.conf");

    // write needs create_dirs for a missing parent
    refused(
        &file(
            &c,
            json!({"host": "web-1", "action": "write", "path": f, "content": "a=1\n"}),
        )
        .await,
        "conf",
    );
    let w = file(&c, json!({"host": "web-1", "action": "write", "path": f, "content": "a=1\n", "create_dirs": true, "mode": "0640"})).await;
    assert_eq!(ok(&w)["size"], 4);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "a=1\n");
    let a = file(
        &c,
        json!({"host": "web-1", "action": "append", "path": f, "content": "b=2\n"}),
    )
    .await;
    assert_eq!(ok(&a)["size"], 8);
    // a replacing write keeps the mode
    file(
        &c,
        json!({"host": "web-1", "action": "write", "path": f, "content": "a=1\nb=2\nc=3\n"}),
    )
    .await;
    let s = file(&c, json!({"host": "web-1", "action": "stat", "path": f})).await;
    let stat = &ok(&s)["stat"];
    assert_eq!(stat["kind"], "file");
    assert_eq!(stat["size"], 12);
    assert_eq!(stat["mode"], "0640");

    let r = file(&c, json!({"host": "web-1", "action": "read", "path": f})).await;
    assert_eq!(ok(&r)["text"], "a=1\nb=2\nc=3\n");
    assert_eq!(ok(&r)["eof"], true);

    for i in 0..5 {
        std::fs::write(
            root.path().join(format!("conf/n{i}.log")),
            format!("line {i}\nERROR disk {i}\n"),
        )
        .unwrap();
    }
    let l = file(
        &c,
        json!({"host": "web-1", "action": "list", "path": root.path(), "recursive": true}),
    )
    .await;
    let entries = ok(&l)["entries"].as_array().unwrap().clone();
    assert!(
        entries.iter().any(|e| e["path"] == "conf/n3.log"),
        "{}",
        l.text()
    );
    let l = file(&c, json!({"host": "web-1", "action": "list", "path": root.path(), "recursive": true, "max_entries": 3})).await;
    assert_eq!(ok(&l)["truncated"], true);
    assert_eq!(ok(&l)["entries"].as_array().unwrap().len(), 3);

    let g = file(&c, json!({"host": "web-1", "action": "grep", "path": root.path(), "pattern": "error disk [0-2]", "ignore_case": true, "globs": ["*.log"]})).await;
    let matches = ok(&g)["matches"].as_array().unwrap().clone();
    assert_eq!(matches.len(), 3, "{}", g.text());
    assert_eq!(matches[0]["line"], 2);
    let g = file(&c, json!({"host": "web-1", "action": "grep", "path": root.path(), "pattern": "ERROR", "fixed": true, "max_matches": 2, "context": 1})).await;
    assert_eq!(ok(&g)["truncated"], true);
    let before = ok(&g)["matches"][0]["before"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(before.starts_with("line 0"), "{before:?}");

    let moved = p(&root, "moved/app.conf");
    let m = file(
        &c,
        json!({"host": "web-1", "action": "move", "path": f, "to": moved, "create_dirs": true}),
    )
    .await;
    ok(&m);
    assert!(!Path::new(&f).exists() && Path::new(&moved).exists());
    refused(
        &file(
            &c,
            json!({"host": "web-1", "action": "delete", "path": p(&root, "conf")}),
        )
        .await,
        "recursive",
    );
    ok(&file(
        &c,
        json!({"host": "web-1", "action": "delete", "path": p(&root, "conf"), "recursive": true}),
    )
    .await);
    assert!(!root.path().join("conf").exists());
    refused(
        &file(
            &c,
            json!({"host": "web-1", "action": "stat", "path": p(&root, "conf")}),
        )
        .await,
        "conf",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_line_file_pages_to_the_end_every_line_once() {
    let nats = Nats::start().await;
    let (_agent, root) = agent_with_root(&nats, "web-1").await;
    let gw = Gateway::new(&nats).start().await;
    let c = gw.client("alice").await;
    let path = root.path().join("big.log");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 1..=1_000_000u32 {
            writeln!(w, "{i}").unwrap();
        }
    }
    let mut cursor: Option<String> = None;
    let mut expected = 1u32;
    let mut pages = 0;
    loop {
        let mut args = json!({"host": "web-1", "action": "read", "path": path, "max_lines": 10000});
        if let Some(cur) = &cursor {
            args["cursor"] = json!(cur);
        }
        let out = file(&c, args).await;
        let s = ok(&out);
        pages += 1;
        for line in s["text"].as_str().unwrap().lines() {
            assert_eq!(line, expected.to_string(), "page {pages}");
            expected += 1;
        }
        if s["eof"] == true {
            break;
        }
        cursor = Some(s["next_cursor"].as_str().unwrap().to_string());
    }
    assert_eq!(expected, 1_000_001);
    assert!(pages >= 100, "{pages}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_roots_are_refused() {
    let nats = Nats::start().await;
    let (_agent, root) = agent_with_root(&nats, "web-1").await;
    let gw = Gateway::new(&nats).start().await;
    let c = gw.client("alice").await;
    std::os::unix::fs::symlink("/etc", root.path().join("etc-link")).unwrap();
    let sibling = format!("{}2", root.path().display());
    let attempts = [
        "/etc/passwd".to_string(),
        format!("{}/../../etc/passwd", root.path().display()),
        p(&root, "etc-link/passwd"),
        format!("{sibling}/x"),
    ];
    for path in &attempts {
        for action in ["read", "stat", "list"] {
            let out = file(&c, json!({"host": "web-1", "action": action, "path": path})).await;
            out.assert_refused("outside");
        }
        let out = file(
            &c,
            json!({"host": "web-1", "action": "write", "path": path, "content": "x"}),
        )
        .await;
        out.assert_refused("outside");
    }
    refused(
        &file(
            &c,
            json!({"host": "web-1", "action": "read", "path": "relative/path"}),
        )
        .await,
        "absolute",
    );
    // The link itself may be described: it lives inside the root.
    let s = file(
        &c,
        json!({"host": "web-1", "action": "stat", "path": p(&root, "etc-link")}),
    )
    .await;
    assert_eq!(ok(&s)["stat"]["symlink_target"], "/etc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_files_are_refused_as_text_and_readable_as_base64() {
    let nats = Nats::start().await;
    let (_agent, root) = agent_with_root(&nats, "web-1").await;
    let gw = Gateway::new(&nats).start().await;
    let c = gw.client("alice").await;
    let path = p(&root, "blob.bin");
    let bytes: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    ok(&file(&c, json!({"host": "web-1", "action": "write", "path": path, "content": b64, "encoding": "base64"})).await);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    refused(
        &file(&c, json!({"host": "web-1", "action": "read", "path": path})).await,
        "binary",
    );
    let r = file(&c, json!({"host": "web-1", "action": "read", "path": path, "encoding": "base64", "max_bytes": 4096})).await;
    let first = ok(&r)["content_base64"].as_str().unwrap().to_string();
    let cursor = ok(&r)["next_cursor"].as_str().unwrap().to_string();
    let r = file(
        &c,
        json!({"host": "web-1", "action": "read", "cursor": cursor}),
    )
    .await;
    assert_eq!(ok(&r)["eof"], true);
    let second = ok(&r)["content_base64"].as_str().unwrap().to_string();
    let mut back = base64::engine::general_purpose::STANDARD
        .decode(first)
        .unwrap();
    back.extend(
        base64::engine::general_purpose::STANDARD
            .decode(second)
            .unwrap(),
    );
    assert_eq!(back, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_copy_between_two_agents_keeps_its_sha256() {
    let nats = Nats::start().await;
    let (_a, root_a) = agent_with_root(&nats, "web-1").await;
    let (_b, root_b) = agent_with_root(&nats, "web-2").await;
    let gw = Gateway::new(&nats).start().await;
    let c = gw
        .client("alice")
        .await
        .with_timeout(Duration::from_secs(120));
    let src = root_a.path().join("data.bin");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..(50 * 1024 * 1024 / 8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    let dst = root_b.path().join("in/data.bin");
    let out = file(&c, json!({"host": "web-1", "action": "copy", "path": src, "to_host": "web-2", "to": dst, "create_dirs": true})).await;
    let s = ok(&out);
    let expected = sha256_of(&src);
    assert_eq!(s["sha256"], expected);
    assert_eq!(sha256_of(&dst), expected);
    assert_eq!(s["size"], 50 * 1024 * 1024);
    // No temp files are left next to the destination.
    let names: Vec<String> = std::fs::read_dir(dst.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["data.bin"]);
    // An existing destination is not replaced without overwrite.
    let again = file(
        &c,
        json!({"host": "web-1", "action": "copy", "path": src, "to_host": "web-2", "to": dst}),
    )
    .await;
    again.assert_refused("exists");
}
