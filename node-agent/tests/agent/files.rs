//! The file tool of a node-agent against a real nats-server: every operation over request/reply, refusals naming the host, paging, payload limits.
//!
//! The harness (a real nats-server, agents in this process) is in `support`.

use std::io::Write as _;
use std::ops::Deref;
use std::time::{Duration, Instant};

use execmesh_proto::pb::{self, ErrorCode, file_reply, file_request::Op};
use sha2::{Digest as _, Sha256};

// === harness ===

use crate::support;

use support::{Nats, code};

/// The agent under test (an agent whose only file root is a fresh temp dir), with the file
/// operations of these scenarios.
struct Agent(support::RootedAgent);

impl Deref for Agent {
    type Target = support::RootedAgent;

    fn deref(&self) -> &support::RootedAgent {
        &self.0
    }
}

impl Agent {
    async fn start(nats: &Nats, host: &str) -> Agent {
        Agent(support::RootedAgent::start_with(nats, host, |_| {}).await)
    }

    async fn stop(self) {
        self.0.stop().await;
    }

    /// Sends one file operation as `user` (on `user`'s subject) and returns the reply.
    async fn call_as(&self, user: &str, subject_user: &str, op: Op) -> pb::ExecReply {
        let req = pb::ExecRequest {
            tier: pb::Tier::Dangerous as i32,
            tenant: "default".into(),
            host: self.agent.host.to_string(),
            job_id: format!("file-{:08x}", rand::random::<u32>()),
            user: user.into(),
            expires_at_ms: execmesh_proto::now_ms() + 30_000,
            trace_id: String::new(),
            body: Some(pb::exec_request::Body::File(pb::FileRequest {
                op: Some(op),
            })),
            ..Default::default()
        };
        self.send(subject_user, req).await
    }

    async fn send(&self, subject_user: &str, req: pb::ExecRequest) -> pb::ExecReply {
        support::exec_raw(
            &self.client,
            &self.agent.host,
            subject_user,
            support::sign(req),
        )
        .await
    }

    async fn ok(&self, op: Op) -> file_reply::Result {
        match self.call_as("alice", "alice", op).await.body {
            Some(pb::exec_reply::Body::File(pb::FileReply {
                result: Some(result),
            })) => result,
            other => panic!("expected a file reply, got {other:?}"),
        }
    }

    /// Sends a grep (the file tool's search is a grep of one path) and returns its reply.
    async fn grep(&self, req: pb::GrepRequest) -> pb::GrepReply {
        let job = format!("file-{:08x}", rand::random::<u32>());
        let req = support::request(&self.agent.host, &job, pb::exec_request::Body::Grep(req));
        match support::exec(&self.client, req).await.body {
            Some(pb::exec_reply::Body::Grep(reply)) => reply,
            other => panic!("expected a grep reply, got {other:?}"),
        }
    }

    async fn refused(&self, op: Op) -> pb::ExecError {
        match self.call_as("alice", "alice", op).await.body {
            Some(pb::exec_reply::Body::Error(e)) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

fn read_op(path: String, offset: u64, line: u64, max_lines: u32) -> Op {
    Op::Read(pb::FileRead {
        path,
        offset,
        line,
        max_lines,
        max_bytes: 1024 * 1024,
        ..Default::default()
    })
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_operation_answers_over_nats() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats, "files-1").await;

    let w = agent
        .ok(Op::Write(pb::FileWrite {
            path: agent.path("etc/app.conf"),
            content: b"a=1\n".to_vec(),
            create_dirs: true,
            mode: Some(0o640),
            ..Default::default()
        }))
        .await;
    let w = expect!(w, file_reply::Result::Write);
    assert!(w.created);
    assert_eq!(w.sha256, hex::encode(Sha256::digest(b"a=1\n")));

    let a = agent
        .ok(Op::Write(pb::FileWrite {
            path: agent.path("etc/app.conf"),
            content: b"b=2\n".to_vec(),
            append: true,
            ..Default::default()
        }))
        .await;
    assert_eq!(expect!(a, file_reply::Result::Write).size, 8);

    let r = agent.ok(read_op(agent.path("etc/app.conf"), 0, 0, 0)).await;
    let r = expect!(r, file_reply::Result::Read);
    assert_eq!((r.text.as_str(), r.lines, r.eof), ("a=1\nb=2\n", 2, true));

    let s = agent
        .ok(Op::Stat(pb::FileStat {
            path: agent.path("etc/app.conf"),
        }))
        .await;
    let s = expect!(s, file_reply::Result::Stat);
    assert_eq!((s.kind.as_str(), s.size, s.mode), ("file", 8, 0o640));

    for i in 0..3 {
        std::fs::write(
            agent.root.join(format!("etc/n{i}.log")),
            format!("ok\nERROR {i}\n"),
        )
        .expect("write");
    }
    let l = agent
        .ok(Op::List(pb::FileList {
            path: agent.path(""),
            recursive: true,
            ..Default::default()
        }))
        .await;
    let l = expect!(l, file_reply::Result::List);
    let names: Vec<_> = l.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "etc",
            "etc/app.conf",
            "etc/n0.log",
            "etc/n1.log",
            "etc/n2.log"
        ]
    );

    let g = agent
        .grep(pb::GrepRequest {
            paths: vec![agent.path("")],
            pattern: "error [12]".into(),
            ignore_case: true,
            context: 1,
            globs: vec!["*.log".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(g.matches.len(), 2);
    assert!(g.matches[0].path.ends_with("etc/n1.log"));
    assert_eq!(
        (g.matches[0].line, g.matches[0].before.clone()),
        (2, vec!["ok".to_string()])
    );
    assert_eq!(g.files_searched, 3);

    let m = agent
        .ok(Op::Move(pb::FileMove {
            from: agent.path("etc/app.conf"),
            to: agent.path("moved/app.conf"),
            create_dirs: true,
            ..Default::default()
        }))
        .await;
    assert!(
        expect!(m, file_reply::Result::Change)
            .detail
            .contains("moved")
    );
    assert!(agent.root.join("moved/app.conf").is_file());

    let e = agent
        .refused(Op::Delete(pb::FileDelete {
            path: agent.path("etc"),
            recursive: false,
        }))
        .await;
    assert_eq!(code(&e), ErrorCode::IsADirectory);
    assert!(
        e.message.contains("recursive") && e.message.contains("files-1"),
        "{}",
        e.message
    );
    agent
        .ok(Op::Delete(pb::FileDelete {
            path: agent.path("etc"),
            recursive: true,
        }))
        .await;
    assert!(!agent.root.join("etc").exists());

    // A copy: chunk reads from the source, chunk writes to the destination, checked by sha256.
    let data: Vec<u8> = (0..1_200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(agent.root.join("src.bin"), &data).expect("write");
    let sha = hex::encode(Sha256::digest(&data));
    let mut offset = 0u64;
    loop {
        let c = agent
            .ok(Op::ChunkRead(pb::FileChunkRead {
                path: agent.path("src.bin"),
                offset,
                len: 512 * 1024,
            }))
            .await;
        let c = expect!(c, file_reply::Result::ChunkRead);
        let w = agent
            .ok(Op::ChunkWrite(pb::FileChunkWrite {
                path: agent.path("copy/dst.bin"),
                transfer_id: "copy-1".into(),
                offset,
                data: c.data.clone(),
                finish: c.eof,
                sha256: if c.eof { sha.clone() } else { String::new() },
                create_dirs: true,
                overwrite: false,
            }))
            .await;
        let w = expect!(w, file_reply::Result::ChunkWrite);
        offset += c.data.len() as u64;
        assert_eq!(w.received, offset);
        if c.eof {
            assert!(w.committed);
            assert_eq!(w.sha256, sha);
            break;
        }
    }
    assert_eq!(
        std::fs::read(agent.root.join("copy/dst.bin")).expect("read"),
        data
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_their_code_and_name_the_host_and_path() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats, "files-2").await;
    std::os::unix::fs::symlink("/etc", agent.root.join("etc-link")).expect("symlink");
    let sibling = format!("{}2/x", agent.root.display());
    for path in [
        "/etc/passwd".to_string(),
        format!("{}/../../etc/passwd", agent.root.display()),
        agent.path("etc-link/passwd"),
        sibling,
    ] {
        let e = agent.refused(read_op(path.clone(), 0, 0, 0)).await;
        assert_eq!(code(&e), ErrorCode::OutsideRoots, "{}", e.message);
        assert!(
            e.message.contains("files-2") && e.message.contains(&path),
            "{}",
            e.message
        );
        assert!(
            e.message.contains(&agent.root.display().to_string()),
            "lists the roots: {}",
            e.message
        );
    }
    let e = agent.refused(read_op("relative".into(), 0, 0, 0)).await;
    assert_eq!(code(&e), ErrorCode::Invalid);
    let e = agent.refused(read_op(agent.path("missing"), 0, 0, 0)).await;
    assert_eq!(code(&e), ErrorCode::NotFound);

    std::fs::write(agent.root.join("blob"), b"\x00\x01\x02").expect("write");
    let e = agent.refused(read_op(agent.path("blob"), 0, 0, 0)).await;
    assert_eq!(code(&e), ErrorCode::Binary);

    // The user must match the subject, and an expired request is refused, as for commands.
    let reply = agent
        .call_as("mallory", "alice", read_op(agent.path("blob"), 0, 0, 0))
        .await;
    let e = expect!(reply.body, Some);
    let e = expect!(e, pb::exec_reply::Body::Error);
    assert_eq!(code(&e), ErrorCode::Invalid);
    let mut req = pb::ExecRequest {
        tier: pb::Tier::Dangerous as i32,
        tenant: "default".into(),
        host: "files-2".into(),
        job_id: "file-old".into(),
        user: "alice".into(),
        expires_at_ms: execmesh_proto::now_ms() - 1_000,
        trace_id: String::new(),
        body: Some(pb::exec_request::Body::File(pb::FileRequest {
            op: Some(read_op(agent.path("blob"), 0, 0, 0)),
        })),
        ..Default::default()
    };
    let e = expect!(agent.send("alice", req.clone()).await.body, Some);
    assert_eq!(
        code(&expect!(e, pb::exec_reply::Body::Error)),
        ErrorCode::Expired
    );
    req.expires_at_ms = execmesh_proto::now_ms() + 10_000;
    req.body = Some(pb::exec_request::Body::File(pb::FileRequest { op: None }));
    let e = expect!(agent.send("alice", req).await.body, Some);
    assert_eq!(
        code(&expect!(e, pb::exec_reply::Body::Error)),
        ErrorCode::Invalid
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_line_file_pages_to_the_end_at_a_flat_cost() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats, "files-3").await;
    {
        let file = std::fs::File::create(agent.root.join("big.log")).expect("create");
        let mut w = std::io::BufWriter::new(file);
        for i in 0..1_000_000u32 {
            writeln!(w, "{i}").expect("write");
        }
    }
    let (mut offset, mut line) = (0, 0);
    let mut expected = 0u32;
    let mut times = Vec::new();
    loop {
        let started = Instant::now();
        let r = agent
            .ok(read_op(agent.path("big.log"), offset, line, 2000))
            .await;
        times.push(started.elapsed());
        let r = expect!(r, file_reply::Result::Read);
        assert_eq!(r.first_line, line);
        for text in r.text.lines() {
            assert_eq!(text, expected.to_string());
            expected += 1;
        }
        (offset, line) = (r.next_offset, r.next_line);
        if r.eof {
            break;
        }
    }
    assert_eq!((expected, line), (1_000_000, 1_000_000));
    assert_eq!(times.len(), 500);
    // A page near the end costs what one near the start costs (generous bound for noisy CI).
    let median = |ts: &[Duration]| {
        let mut ts = ts.to_vec();
        ts.sort();
        ts[ts.len() / 2]
    };
    let (first, last) = (median(&times[..50]), median(&times[times.len() - 50..]));
    assert!(
        last <= first * 4 + Duration::from_millis(20),
        "first pages {first:?}, last pages {last:?}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_stay_under_the_max_payload() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats, "files-4").await;
    let max_payload = agent.client.server_info().max_payload;
    let big = vec![b'x'; 3 * 1024 * 1024];
    std::fs::write(agent.root.join("big.bin"), &big).expect("write");
    let r = agent
        .ok(Op::Read(pb::FileRead {
            path: agent.path("big.bin"),
            raw: true,
            max_bytes: u32::MAX,
            ..Default::default()
        }))
        .await;
    let r = expect!(r, file_reply::Result::Read);
    assert!(
        !r.data.is_empty() && r.data.len() < max_payload,
        "{}",
        r.data.len()
    );
    assert_eq!(r.next_offset, r.data.len() as u64);
    assert!(!r.eof);

    // Many long matching lines: the search stops (truncated) before the reply gets too big.
    let line = format!("match {}\n", "y".repeat(3000));
    std::fs::write(agent.root.join("many.log"), line.repeat(2000)).expect("write");
    let g = agent
        .grep(pb::GrepRequest {
            paths: vec![agent.path("many.log")],
            pattern: "match".into(),
            max_matches: 100_000,
            max_line_bytes: 100_000,
            ..Default::default()
        })
        .await;
    assert!(g.truncated);
    assert!(!g.matches.is_empty() && g.matches.len() < 2000);
    agent.stop().await;
}
