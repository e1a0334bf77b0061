//! Every outcome of every tool fits the tool's declared `outputSchema`: the harness client checks
//! each `structuredContent` it receives (see `McpClient`), and this scenario provokes each
//! outcome — ok on one host, fan-out with a denied host, held for approval, denied, refused by
//! a host, error — for each tool, so no result shape is left unchecked when other scenarios
//! change.

use serde_json::{Value, json};

use execmesh_proto::Tier;
use execmesh_tests::{Gateway, McpClient, Nats, NodeAgent, Policy, ToolOutput};

/// What a result is, as a strict client tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The tool's own result.
    Ok,
    /// Held for approval: a normal result with `approval_required`.
    Held,
    /// `isError` with this code.
    Refused(&'static str),
}

/// alice reaches `web-*` and `db-*` (not `out-1`); a rule on each gated tool holds some calls.
fn policy() -> Policy {
    Policy::new()
        .group(
            "oncall",
            Tier::Dangerous,
            &["web-*", "db-*"],
            &["alice", "bob"],
        )
        .toml(
            r#"[[approvals]]
tool = "bash"
hosts = "role=db"

[[approvals]]
tool = "grep"
hosts = "role=db"

[[approvals]]
tool = "facts"
action = "refresh"
hosts = "role=db"

[[approvals]]
tool = "file"
action = "delete"

[[approvals]]
tool = "job"
action = "kill"
hosts = "web-2"

[approvers]
groups = ["oncall"]
"#,
        )
}

/// Calls `tool` (the client validates the result against the tool's schema) and checks it is
/// the `expected` kind of outcome.
async fn expect(client: &McpClient, tool: &str, args: Value, expected: Outcome) -> ToolOutput {
    let shown = args.to_string();
    let out = client.call(tool, args).await;
    let s = out.structured();
    let got = if out.is_error() {
        let code = s["error"]["code"].as_str().unwrap_or("(none)").to_string();
        match expected {
            Outcome::Refused(want) if want == code => expected,
            _ => panic!(
                "{tool} {shown}: refused `{code}`, expected {expected:?}: {}",
                out.text()
            ),
        }
    } else if s["approval_required"] == json!(true) {
        Outcome::Held
    } else {
        Outcome::Ok
    };
    assert_eq!(got, expected, "{tool} {shown}: {}", out.text());
    out
}

/// Calls `tool` with each of `cases` in turn, checking each outcome.
async fn expect_each(client: &McpClient, tool: &str, cases: Vec<(Value, Outcome)>) {
    for (args, expected) in cases {
        expect(client, tool, args, expected).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_of_every_tool_fits_its_output_schema() {
    use Outcome::{Held, Ok, Refused};
    let nats = Nats::start().await;
    let root = tempfile::tempdir().expect("a temp dir for the agents' root");
    let dir = root.path().display().to_string();
    let file_root = |host: &str| NodeAgent::new(&nats, host).arg("--file-root", root.path());
    let _web1 = file_root("web-1").label("role", "web").start().await;
    let _web2 = file_root("web-2").label("role", "web").start().await;
    let _db = file_root("db-1").label("role", "db").start().await;
    let _out = nats.agent("out-1", &[("role", "web")]).await;
    let echo = "description = \"echo\"\ncommand = [\"echo\", \"{text}\"]\nparams.text = { type = \"string\", pattern = \"[a-z]+\" }\n";
    let gw = Gateway::new(&nats)
        .policy(policy())
        .runbook("echo", echo)
        .runbook("held", &format!("{echo}approval = true\n"))
        .start()
        .await;
    let c = &gw.client("alice").await;
    let bg = |host: &str| json!({"host": host, "cmd": "sleep 30", "bg": true});
    let running = expect(c, "bash", bg("web-1"), Ok).await.job_id();
    let other = expect(c, "bash", bg("web-2"), Ok).await.job_id();
    let fanout = json!({"hosts": "web-* or out-1", "cmd": "echo hi"});
    let fanout = expect(c, "bash", fanout, Ok).await;
    assert_eq!(
        fanout.structured()["counts"]["denied"],
        1,
        "{}",
        fanout.text()
    );
    let group = fanout.structured()["group"].clone();
    let f = format!("{dir}/a.txt");

    let hosts = vec![
        (json!({}), Ok),
        (json!({"selector": "role=db"}), Ok),
        (
            json!({"selector": "web-* and ("}),
            Refused("invalid_arguments"),
        ),
    ];
    // One host (finished, non-zero), held (one host and fan-out), denied, unknown, invalid.
    let bash = vec![
        (json!({"host": "web-1", "cmd": "echo hi"}), Ok),
        (json!({"host": "web-1", "cmd": "exit 3"}), Ok),
        (json!({"host": "db-1", "cmd": "echo hi"}), Held),
        (json!({"hosts": "role=db", "cmd": "echo hi"}), Held),
        (
            json!({"host": "out-1", "cmd": "echo hi"}),
            Refused("denied"),
        ),
        (
            json!({"host": "web-9", "cmd": "echo hi"}),
            Refused("unknown_host"),
        ),
        (json!({"cmd": "echo hi"}), Refused("invalid_arguments")),
    ];
    // Every action, on a job and on a fan-out group, held, unknown, bad cursor.
    let job = vec![
        (json!({"action": "poll", "job": running}), Ok),
        (
            json!({"action": "wait", "job": running, "timeout": 0.1}),
            Ok,
        ),
        (json!({"action": "list"}), Ok),
        (json!({"action": "list", "job": group}), Ok),
        (json!({"action": "poll", "job": group, "host": "web-2"}), Ok),
        (json!({"action": "kill", "job": running}), Ok),
        (json!({"action": "kill", "job": other}), Held),
        (
            json!({"action": "poll", "job": "gone-0000aaaa"}),
            Refused("unknown_job"),
        ),
        (
            json!({"action": "poll", "job": running, "cursor": "x"}),
            Refused("bad_cursor"),
        ),
    ];
    // Each kind of result, held, a host's own refusal, denied.
    let file = vec![
        (
            json!({"host": "web-1", "action": "write", "path": f, "content": "a\nb\n"}),
            Ok,
        ),
        (json!({"host": "web-1", "action": "read", "path": f}), Ok),
        (json!({"host": "web-1", "action": "stat", "path": f}), Ok),
        (json!({"host": "web-1", "action": "list", "path": dir}), Ok),
        (
            json!({"host": "web-1", "action": "grep", "path": dir, "pattern": "a"}),
            Ok,
        ),
        (
            json!({"host": "web-1", "action": "copy", "path": f, "to_host": "web-2", "to": format!("{dir}/b.txt")}),
            Ok,
        ),
        (
            json!({"host": "web-1", "action": "delete", "path": f}),
            Held,
        ),
        (
            json!({"host": "web-1", "action": "read", "path": "/etc/hostname"}),
            Refused("outside_roots"),
        ),
        (
            json!({"host": "out-1", "action": "read", "path": f}),
            Refused("denied"),
        ),
    ];
    // Fan-outs with a denied host (each mode), every host failing (a pattern they cannot
    // compile: `error` per host in a normal result), held, invalid.
    let mut grep: Vec<(Value, Outcome)> = ["matches", "count", "files"]
        .into_iter()
        .map(|mode| {
            let args =
                json!({"hosts": "web-* or out-1", "pattern": "a", "paths": [dir], "mode": mode});
            (args, Ok)
        })
        .collect();
    grep.extend([
        (
            json!({"hosts": "web-*", "pattern": "a", "paths": [dir], "digest": true}),
            Ok,
        ),
        (
            json!({"hosts": "web-*", "pattern": "(", "paths": [dir]}),
            Ok,
        ),
        (
            json!({"hosts": "db-1", "pattern": "a", "paths": [dir]}),
            Held,
        ),
        (
            json!({"hosts": "web-* and (", "pattern": "a", "paths": [dir]}),
            Refused("invalid_arguments"),
        ),
    ]);
    let facts = vec![
        (json!({"hosts": "web-* or out-1"}), Ok),
        (json!({"hosts": "web-1", "action": "refresh"}), Ok),
        (json!({"hosts": "db-1", "action": "refresh"}), Held),
        (json!({"hosts": "("}), Refused("invalid_arguments")),
    ];
    let whoami = vec![
        (json!({}), Ok),
        (json!({"extra": 1}), Refused("invalid_arguments")),
    ];
    // One host, a fan-out with a denied host, held, a parameter refused by type, denied.
    let run = |name: &str, target: Value, text: &str| {
        let mut args = json!({"action": "run", "name": name, "params": {"text": text}});
        args.as_object_mut()
            .expect("an object")
            .extend(target.as_object().cloned().unwrap_or_default());
        args
    };
    let runbook = vec![
        (json!({"action": "list"}), Ok),
        (run("echo", json!({"host": "web-1"}), "hi"), Ok),
        (run("echo", json!({"hosts": "web-* or out-1"}), "hi"), Ok),
        (run("held", json!({"host": "web-1"}), "hi"), Held),
        (
            run("echo", json!({"host": "web-1"}), "hi; id"),
            Refused("invalid_arguments"),
        ),
        (
            run("echo", json!({"host": "out-1"}), "hi"),
            Refused("denied"),
        ),
    ];
    for (tool, cases) in [
        ("runbook", runbook),
        ("hosts", hosts),
        ("bash", bash),
        ("job", job),
        ("file", file),
        ("grep", grep),
        ("facts", facts),
        ("whoami", whoami),
    ] {
        expect_each(c, tool, cases).await;
    }
}
