//! A node-agent's share of a fan-out grep against a real nats-server: modes, caps, context, globs, refusals, the digest, reply budgets, several agents in one process.

use crate::support;

use std::ops::Deref;

use async_nats::jetstream;
use execmesh_proto::pb::{self, ErrorCode, GrepMode, JobState};
use execmesh_proto::{jetstream as layout, subject};
use prost::Message as _;
use support::{Nats, code, error_reply, exec, processes_of, request, tenant, tok};

/// The agent under test (an agent whose only file root is a fresh temp dir), with the grep
/// requests of these scenarios.
struct Host(support::RootedAgent);

impl Deref for Host {
    type Target = support::RootedAgent;

    fn deref(&self) -> &support::RootedAgent {
        &self.0
    }
}

impl Host {
    /// Starts `host` on `nats`, without warm shells.
    async fn start(nats: &Nats, host: &str) -> Host {
        Host(support::RootedAgent::start_with(nats, host, |c| c.warm_shells = 0).await)
    }

    async fn stop(self) {
        self.0.stop().await;
    }

    fn write(&self, rel: &str, text: impl AsRef<[u8]>) {
        let path = self.root.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    async fn send(&self, req: pb::GrepRequest) -> pb::ExecReply {
        let job = format!("grep-{:08x}", rand::random::<u32>());
        exec(
            &self.client,
            request(&self.agent.host, &job, pb::exec_request::Body::Grep(req)),
        )
        .await
    }

    async fn grep(&self, req: pb::GrepRequest) -> pb::GrepReply {
        match self.send(req).await.body {
            Some(pb::exec_reply::Body::Grep(reply)) => reply,
            other => panic!("expected a grep reply, got {other:?}"),
        }
    }

    /// A request for `pattern` under the root.
    fn search(&self, pattern: &str) -> pb::GrepRequest {
        pb::GrepRequest {
            paths: vec![self.path("")],
            pattern: pattern.into(),
            ..Default::default()
        }
    }
}

fn relative(host: &Host, path: &str) -> String {
    path.strip_prefix(&format!("{}/", host.root.display()))
        .unwrap_or(path)
        .to_string()
}

fn lines_of(host: &Host, reply: &pb::GrepReply) -> Vec<(String, u64, String)> {
    reply
        .matches
        .iter()
        .map(|m| (relative(host, &m.path), m.line, m.text.clone()))
        .collect()
}

fn files_of(host: &Host, reply: &pb::GrepReply) -> Vec<(String, u64)> {
    reply
        .files
        .iter()
        .map(|f| (relative(host, &f.path), f.count))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grep_modes_caps_context_globs_and_case_answer_over_nats() {
    let nats = Nats::start().await;
    let host = Host::start(&nats, "grep-1").await;
    host.write(
        "app/a.log",
        "boot\nERROR one\nok\nerror two\nok\nERROR three\n",
    );
    host.write("app/b.log", "ERROR four\n");
    host.write("app/notes.txt", "ERROR in notes\n");
    host.write("app/old.log.gz", "ERROR compressed\n");
    host.write("app/.hidden.log", "ERROR hidden\n");
    host.write("re.txt", "a.b\naxb\n");
    let mut blob = b"ERROR before nul\n".to_vec();
    blob.push(0);
    host.write("blob.bin", blob);

    // Matches mode: path order, capped, every match still counted.
    let reply = host
        .grep(pb::GrepRequest {
            max_matches: 2,
            ..host.search("ERROR")
        })
        .await;
    assert_eq!(
        lines_of(&host, &reply),
        [
            ("app/a.log".to_string(), 2, "ERROR one".to_string()),
            ("app/a.log".to_string(), 6, "ERROR three".to_string()),
        ]
    );
    assert_eq!(reply.total_matches, 5, "a.log 2, b.log, notes, gz");
    assert!(reply.truncated);
    assert_eq!(reply.truncated_reason, "max_matches 2 reached");
    assert_eq!(reply.binary_skipped, 1);
    assert_eq!((reply.files_searched, reply.files_matched), (5, 4));
    assert!(reply.path_errors.is_empty() && reply.digest.is_empty());

    // Count and files modes list files with their match counts; globs include and exclude.
    let count = host
        .grep(pb::GrepRequest {
            mode: GrepMode::Count as i32,
            globs: vec!["*.log".into(), "*.gz".into(), "!old*".into()],
            ..host.search("ERROR")
        })
        .await;
    assert_eq!(
        files_of(&host, &count),
        [("app/a.log".to_string(), 2), ("app/b.log".to_string(), 1)]
    );
    assert!(count.matches.is_empty() && !count.truncated);
    let files = host
        .grep(pb::GrepRequest {
            mode: GrepMode::Files as i32,
            max_matches: 1,
            ignore_case: true,
            ..host.search("error")
        })
        .await;
    assert_eq!(files_of(&host, &files), [("app/a.log".to_string(), 3)]);
    assert_eq!(files.total_matches, 6);
    assert!(files.truncated);

    // Context before and after, in matches mode.
    let ctx = host
        .grep(pb::GrepRequest {
            paths: vec![host.path("app/a.log")],
            context: 1,
            ignore_case: true,
            ..host.search("error two")
        })
        .await;
    let [m] = &ctx.matches[..] else {
        panic!("{ctx:?}")
    };
    assert_eq!(
        (m.line, m.before.clone(), m.after.clone()),
        (4, vec!["ok".to_string()], vec!["ok".to_string()])
    );

    // A regex versus the same text taken literally.
    let regex = host
        .grep(pb::GrepRequest {
            paths: vec![host.path("re.txt")],
            ..host.search("a.b")
        })
        .await;
    assert_eq!(regex.total_matches, 2);
    let fixed = host
        .grep(pb::GrepRequest {
            paths: vec![host.path("re.txt")],
            fixed: true,
            ..host.search("a.b")
        })
        .await;
    assert_eq!(
        lines_of(&host, &fixed),
        [("re.txt".to_string(), 1, "a.b".to_string())]
    );

    // Long lines are clamped with a marker.
    host.write("long.log", format!("needle {}\n", "x".repeat(5000)));
    let long = host
        .grep(pb::GrepRequest {
            paths: vec![host.path("long.log")],
            max_line_bytes: 40,
            ..host.search("needle")
        })
        .await;
    assert!(
        long.matches[0].text.starts_with("needle xxx")
            && long.matches[0].text.contains("[line clamped:"),
        "{}",
        long.matches[0].text
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_roots_are_refused_and_missing_ones_reported() {
    let nats = Nats::start().await;
    let host = Host::start(&nats, "grep-2").await;
    host.write("app.log", "ERROR here\n");

    let e = error_reply(
        host.send(pb::GrepRequest {
            paths: vec!["/etc/passwd".into()],
            ..host.search("root")
        })
        .await,
    );
    assert_eq!(code(&e), ErrorCode::OutsideRoots);
    assert!(
        e.message.contains("grep-2") && e.message.contains("/etc/passwd"),
        "{}",
        e.message
    );

    let e = error_reply(
        host.send(pb::GrepRequest {
            paths: vec![host.path("nope.log"), host.path("../x")],
            ..host.search("ERROR")
        })
        .await,
    );
    assert!(
        e.message.contains("grep-2") && e.message.contains("nope.log"),
        "{}",
        e.message
    );

    let reply = host
        .grep(pb::GrepRequest {
            paths: vec![host.path("app.log"), host.path("nope.log"), "/etc".into()],
            ..host.search("ERROR")
        })
        .await;
    assert_eq!(reply.total_matches, 1);
    assert_eq!(reply.path_errors.len(), 2, "{:?}", reply.path_errors);
    assert!(reply.path_errors[0].contains("nope.log"));
    assert!(reply.path_errors[1].contains("/etc") && reply.path_errors[1].contains("outside"));

    for bad in [
        host.search("(unclosed"),
        pb::GrepRequest {
            globs: vec!["[".into()],
            ..host.search("x")
        },
        pb::GrepRequest {
            paths: Vec::new(),
            ..host.search("x")
        },
    ] {
        let e = error_reply(host.send(bad).await);
        assert_eq!(code(&e), ErrorCode::Invalid, "{}", e.message);
        assert!(e.message.contains("grep-2"), "{}", e.message);
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_groups_every_matching_line_by_shape_rarest_first() {
    let nats = Nats::start().await;
    let host = Host::start(&nats, "grep-3").await;
    let mut log = String::new();
    for i in 0..50 {
        log.push_str(&format!(
            "2024-11-21T12:{:02}:{:02}Z ERROR db timeout after {}ms (req {:08x}-1111-2222-3333-444455556666)\n",
            i / 60,
            i % 60,
            100 + i,
            i * 7919
        ));
        if i % 10 == 0 {
            log.push_str(&format!("Nov 21 12:00:{i:02} web-{i} INFO all good\n"));
        }
    }
    for disk in 1..=3 {
        log.push_str(&format!(
            "Nov 21 12:01:0{disk} web-1 kernel: ERROR disk /dev/sda{disk} full on 10.0.0.{disk}\n"
        ));
    }
    host.write("var/app.log", &log);
    host.write(
        "var/other.log",
        "Nov 21 12:02:00 ERROR segfault at 0x7ffd5c3a\n",
    );

    let reply = host
        .grep(pb::GrepRequest {
            max_matches: 5,
            digest: true,
            ..host.search("ERROR")
        })
        .await;
    assert_eq!(reply.matches.len(), 5);
    assert_eq!(reply.total_matches, 54);
    let groups: Vec<(&str, u64, usize)> = reply
        .digest
        .iter()
        .map(|g| (g.key.as_str(), g.lines, g.examples.len()))
        .collect();
    assert_eq!(
        groups,
        [
            ("<ts> ERROR segfault at <hex>", 1, 1),
            (
                "<ts> web-<n> kernel: ERROR disk /dev/sda<n> full on <ip>",
                3,
                3
            ),
            ("<ts> ERROR db timeout after <n>ms (req <uuid>)", 50, 3),
        ]
    );
    assert_eq!(reply.digest_groups_total, 3);
    assert_eq!(reply.digest_lines_ungrouped, 0);
    assert!(reply.digest[1].examples[0].contains("/dev/sda1 full on 10.0.0.1"));

    let capped = host
        .grep(pb::GrepRequest {
            mode: GrepMode::Count as i32,
            digest: true,
            max_groups: 1,
            ..host.search("ERROR")
        })
        .await;
    assert_eq!(capped.digest.len(), 1);
    assert_eq!(capped.digest[0].key, "<ts> ERROR segfault at <hex>");
    assert_eq!(capped.digest_groups_total, 3);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_result_stays_under_the_reply_budget_and_counts_everything() {
    let nats = Nats::start().await;
    let host = Host::start(&nats, "grep-4").await;
    let line = format!("match {}\n", "y".repeat(1000));
    host.write("big.log", line.repeat(3000));
    let reply = host
        .grep(pb::GrepRequest {
            max_matches: 10_000,
            max_line_bytes: 4096,
            digest: true,
            ..host.search("match")
        })
        .await;
    let size = pb::ExecReply {
        body: Some(pb::exec_reply::Body::Grep(reply.clone())),
    }
    .encoded_len();
    assert!(size <= 512 * 1024 + 4096, "{size} bytes");
    assert_eq!(reply.total_matches, 3000);
    assert!(reply.truncated && !reply.matches.is_empty() && reply.matches.len() < 3000);
    assert!(
        reply.truncated_reason.contains("byte budget"),
        "{}",
        reply.truncated_reason
    );
    assert_eq!(reply.digest.len(), 1);
    assert_eq!(reply.digest[0].lines, 3000);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_in_one_process_serve_their_own_roots_and_spare_each_others_jobs() {
    let nats = Nats::start().await;
    let a = Host::start(&nats, "sim-a").await;
    a.write("a.log", "ERROR on a\n");

    // A job on sim-a, and a status that says sim-b left a job of the same id running with the
    // same pid: sim-b's recovery must not touch sim-a's process.
    let run = pb::RunRequest {
        cmd: "sleep 30".into(),
        bg: true,
        ..Default::default()
    };
    let reply = exec(
        &a.client,
        request(&a.agent.host, "sleeper-1", pb::exec_request::Body::Run(run)),
    )
    .await;
    let Some(pb::exec_reply::Body::Run(run)) = reply.body else {
        panic!("{reply:?}")
    };
    let pid = run.status.expect("status").pid;
    // A warm shell takes the job's environment when it runs the command, just after the reply.
    support::eventually(support::WAIT, || async {
        !processes_of("sleeper-1").is_empty()
    })
    .await;
    let js = jetstream::new(a.client.clone());
    let jobs = js.get_key_value(layout::JOBS_BUCKET).await.expect("bucket");
    let sim_b = tok("host id", "sim-b");
    let planted = pb::JobStatus {
        job_id: "sleeper-1".into(),
        tenant: "default".into(),
        host: "sim-b".into(),
        state: JobState::Running as i32,
        pid,
        agent_instance: "deadbeef".into(),
        ..Default::default()
    };
    jobs.put(
        subject::job_key(&tenant(), &sim_b, &tok("job id", "sleeper-1")),
        planted.encode_to_vec().into(),
    )
    .await
    .expect("put");

    let b = Host::start(&nats, "sim-b").await;
    b.write("b.log", "ERROR on b\n");
    assert!(
        !processes_of("sleeper-1").is_empty(),
        "sim-b's recovery killed sim-a's job"
    );
    let a_status = jobs
        .get(subject::job_key(
            &tenant(),
            &a.agent.host,
            &tok("job id", "sleeper-1"),
        ))
        .await
        .expect("get")
        .expect("a's status");
    let a_status = pb::JobStatus::decode(a_status.as_ref()).expect("status");
    assert_eq!(a_status.state, JobState::Running as i32);

    // Each answers for its own roots only.
    let on_a = a.grep(a.search("ERROR")).await;
    let on_b = b.grep(b.search("ERROR")).await;
    assert_eq!(lines_of(&a, &on_a)[0].2, "ERROR on a");
    assert_eq!(lines_of(&b, &on_b)[0].2, "ERROR on b");
    let e = error_reply(
        b.send(pb::GrepRequest {
            paths: vec![a.path("a.log")],
            ..b.search("ERROR")
        })
        .await,
    );
    assert_eq!(code(&e), ErrorCode::OutsideRoots);

    b.stop().await;
    assert!(
        !processes_of("sleeper-1").is_empty(),
        "sim-b's stop killed sim-a's job"
    );
    a.stop().await;
    // sim-a's job ends with its agent.
    support::eventually(support::WAIT, || async {
        processes_of("sleeper-1").is_empty()
    })
    .await;
}
