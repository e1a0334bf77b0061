//! End-to-end audit: tool calls become events in AUDIT, the audit-sink stores each once in a verifiable hash chain, on SQLite and on PostgreSQL.
//!
//! Every scenario runs twice, once per store (`<scenario>::sqlite`, `<scenario>::postgres`),
//! against a real nats-server, the real sink binary and, for PostgreSQL, a real server.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use execmesh_proto::pb::{self, audit_event::Body};
use execmesh_proto::subject::{self, audit_kind};
use execmesh_proto::{Tier, Token, headers};
use prost::Message as _;

use execmesh_tests::admin::get_job;
use execmesh_tests::audit_sink::Backend;
use execmesh_tests::{AuditSink, Gateway, Nats, NodeAgent, Policy, Postgres, eventually};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Runs each scenario once per store, as `<scenario>::sqlite` and `<scenario>::postgres`.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario(super::Store::sqlite().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$scenario(super::Store::postgres().await).await
            }
        }
    )*};
}

on_both_stores!(
    a_sequence_of_tool_calls_is_recorded_in_order_by_trace_and_job,
    secrets_are_redacted_before_events_are_published,
    a_fan_out_is_recorded_per_host_and_policy_denials_name_who_refused,
    tool_calls_work_while_the_sink_is_down_and_their_events_arrive_when_it_returns,
    nothing_is_lost_or_duplicated_when_the_sink_is_killed_mid_stream,
    verify_names_a_record_altered_or_removed_in_the_database,
    queries_and_exports_filter_by_every_field_and_page_by_cursor,
    a_hosts_own_refusal_is_audited_as_a_denied_call_naming_its_rule,
    every_use_of_operator_rights_on_another_users_job_is_audited,
);

/// The store a scenario runs on; holds the PostgreSQL server, if any, for the test's length.
struct Store {
    pg: Option<Postgres>,
}

impl Store {
    async fn sqlite() -> Store {
        Store { pg: None }
    }

    async fn postgres() -> Store {
        Store {
            pg: Some(Postgres::start().await),
        }
    }

    /// A sink on this store.
    fn sink(&self, nats: &Nats) -> AuditSink {
        let sink = AuditSink::new(nats);
        match &self.pg {
            Some(pg) => sink.backend(Backend::Postgres(pg.url())),
            None => sink.sqlite(),
        }
    }
}

const WAIT: Duration = Duration::from_secs(30);
/// 2023-11-14T22:13:20Z, a fixed base for event times.
const BASE_MS: u64 = 1_700_000_000_000;

/// A synthetic event as a publisher would make it; `n` makes the id unique.
fn event(n: u64, kind: &str) -> pb::AuditEvent {
    let body = match kind {
        audit_kind::CALL_RECEIVED => Body::CallReceived(pb::CallReceived {
            args: r#"{"cmd":"true"}"#.into(),
            ..Default::default()
        }),
        audit_kind::CALL_COMPLETED => Body::CallCompleted(pb::CallCompleted {
            status: "ok".into(),
            ..Default::default()
        }),
        audit_kind::JOB_FINISHED => Body::JobFinished(pb::JobFinished {
            state: pb::JobState::Exited as i32,
            exit_code: Some(0),
            ..Default::default()
        }),
        _ => Body::CallDenied(pb::CallDenied {
            reason: "no".into(),
            ..Default::default()
        }),
    };
    pb::AuditEvent {
        id: execmesh_proto::audit_event_id(BASE_MS + n, n),
        time_ms: BASE_MS + n,
        tenant: "default".into(),
        source: pb::AuditSource::Gateway as i32,
        user: "alice".into(),
        tool: "bash".into(),
        body: Some(body),
        ..Default::default()
    }
}

/// Publishes `events` to AUDIT (creating the stream if needed) and waits for every ack. With
/// `msg_id` the stream dedupes retries; without it, it stores every copy (as for a publisher
/// retrying after the duplicate window), leaving the dedupe to the sink.
async fn publish(nats: &Nats, events: &[pb::AuditEvent], msg_id: bool) {
    let js = nats.jetstream().await;
    js.get_or_create_stream(execmesh_proto::jetstream::audit_stream(
        &Default::default(),
        1,
    ))
    .await
    .expect("create AUDIT");
    let mut acks = Vec::with_capacity(events.len());
    for event in events {
        let tenant = Token::parse("tenant", &event.tenant).expect("a tenant token");
        let subject = match pb::AuditSource::try_from(event.source) {
            Ok(pb::AuditSource::Agent) => subject::audit_agent(
                &tenant,
                &Token::parse("host", &event.host).expect("a host token"),
                audit_kind::of(event.body.as_ref()),
            ),
            _ => subject::audit_gateway(&tenant, audit_kind::of(event.body.as_ref())),
        };
        let mut h = HeaderMap::new();
        if msg_id {
            h.insert(headers::MSG_ID, event.id.as_str());
        }
        // Signed as the publisher the subject names, as the gateway and the agents sign theirs.
        let payload = Bytes::from(event.encode_to_vec());
        let signer = match pb::AuditSource::try_from(event.source) {
            Ok(pb::AuditSource::Agent) => format!("agent-{}", event.host),
            _ => "gateway".to_string(),
        };
        nats.identities()
            .record_key(&signer)
            .sign(&subject, &mut h, &payload);
        let ack = js
            .publish_with_headers(subject, h, payload)
            .await
            .expect("publish an audit event");
        acks.push(ack);
        if acks.len() >= 256 {
            for ack in acks.drain(..) {
                ack.await.expect("AUDIT acknowledges the event");
            }
        }
    }
    for ack in acks {
        ack.await.expect("AUDIT acknowledges the event");
    }
}

fn ids(records: &[pb::AuditRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| r.event.as_ref().map(|e| e.id.clone()).unwrap_or_default())
        .collect()
}

async fn nothing_is_lost_or_duplicated_when_the_sink_is_killed_mid_stream(store: Store) {
    let nats = Nats::start().await;
    // Small batches, so the kill lands between many commits.
    let mut sink = store.sink(&nats).arg("--batch-size", 100).start().await;
    let first: Vec<_> = (0..3000)
        .map(|n| event(n, audit_kind::CALL_RECEIVED))
        .collect();
    publish(&nats, &first, true).await;
    eventually(WAIT, || async { sink.head_seq().await >= 300 }).await;
    sink.kill_hard().await;

    // While the sink is down: more events, and copies of stored ones that the stream keeps
    // (no Nats-Msg-Id), as a publisher retrying after the duplicate window would send.
    let second: Vec<_> = (3000..4000)
        .map(|n| event(n, audit_kind::CALL_COMPLETED))
        .collect();
    publish(&nats, &second, true).await;
    publish(&nats, &first[..200], false).await;

    sink.restart().await;
    eventually(WAIT, || async { sink.head_seq().await >= 4000 }).await;
    let stored = sink.query_all(pb::AuditQuery::default()).await;
    let stored_ids = ids(&stored);
    let unique: BTreeSet<&String> = stored_ids.iter().collect();
    assert_eq!(stored.len(), 4000, "every event stored exactly once");
    assert_eq!(unique.len(), 4000, "no event stored twice");
    let published: BTreeSet<String> = first.iter().chain(&second).map(|e| e.id.clone()).collect();
    assert_eq!(
        unique.into_iter().cloned().collect::<BTreeSet<_>>(),
        published
    );
    let seqs: Vec<u64> = stored.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=4000).collect::<Vec<_>>(),
        "the chain has no gaps"
    );
    // Nothing more arrives later: the redelivered copies were skipped, not queued.
    let page = sink
        .query(pb::AuditQuery {
            limit: 1,
            ..Default::default()
        })
        .await;
    assert_eq!(page.head_seq, 4000);

    let (status, out) = sink.verify();
    assert!(status.success(), "verify failed: {out}");
    assert!(out.contains("chain intact: 4000 records"), "{out}");
    let over_nats = sink.verify_over_nats().await;
    assert!(over_nats.ok, "{over_nats:?}");
    assert_eq!((over_nats.records, over_nats.head_seq), (4000, 4000));
}

async fn verify_names_a_record_altered_or_removed_in_the_database(store: Store) {
    let nats = Nats::start().await;
    let sink = store.sink(&nats).start().await;
    let events: Vec<_> = (0..20)
        .map(|n| event(n, audit_kind::CALL_RECEIVED))
        .collect();
    publish(&nats, &events, true).await;
    eventually(WAIT, || async { sink.head_seq().await == 20 }).await;
    let (status, out) = sink.verify();
    assert!(status.success(), "{out}");

    // An intruder hides who ran record 7.
    sink.execute_sql("UPDATE audit_events SET user_name = 'mallory' WHERE seq = 7")
        .await;
    let (status, out) = sink.verify();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("chain broken at record 7"), "{out}");
    assert!(out.contains("changed"), "{out}");
    let over_nats = sink.verify_over_nats().await;
    assert!(!over_nats.ok);
    assert_eq!(over_nats.first_bad_seq, 7);

    // Put back, then remove record 12 instead.
    sink.execute_sql("UPDATE audit_events SET user_name = 'alice' WHERE seq = 7")
        .await;
    let (status, out) = sink.verify();
    assert!(status.success(), "{out}");
    sink.execute_sql("DELETE FROM audit_events WHERE seq = 12")
        .await;
    let (status, out) = sink.verify();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("chain broken at record 12"), "{out}");
    assert!(out.contains("missing"), "{out}");
}

/// One synthetic event with every filterable field chosen by `n`.
fn varied(n: u64) -> pb::AuditEvent {
    let kinds = [
        audit_kind::CALL_RECEIVED,
        audit_kind::CALL_COMPLETED,
        audit_kind::JOB_FINISHED,
        audit_kind::CALL_DENIED,
    ];
    let mut e = event(n, kinds[(n % 4) as usize]);
    e.time_ms = BASE_MS + n * 1000;
    e.user = ["alice", "bob", "carol"][(n % 3) as usize].into();
    e.host = ["web-1", "web-2"][(n % 2) as usize].into();
    e.job_id = format!("job-{}", n % 5);
    e.tool = ["bash", "file", "grep"][(n % 3) as usize].into();
    e.trace_id = format!("{:032x}", n % 7);
    e.outcome = ["ok", "error", "denied", ""][(n % 4) as usize].into();
    e
}

async fn queries_and_exports_filter_by_every_field_and_page_by_cursor(store: Store) {
    let nats = Nats::start().await;
    let sink = store.sink(&nats).start().await;
    let events: Vec<_> = (0..60).map(varied).collect();
    publish(&nats, &events, true).await;
    // Another tenant's event is never returned to this tenant's queries.
    let mut foreign = varied(1000);
    foreign.tenant = "acme".into();
    publish(&nats, &[foreign.clone()], true).await;
    eventually(WAIT, || async { sink.head_seq().await == 61 }).await;

    type Pick = fn(&pb::AuditEvent) -> bool;
    let cases: Vec<(&str, pb::AuditQuery, Vec<&str>, Pick)> = vec![
        (
            "user",
            pb::AuditQuery {
                user: "bob".into(),
                ..Default::default()
            },
            vec!["--user", "bob"],
            |e| e.user == "bob",
        ),
        (
            "host",
            pb::AuditQuery {
                host: "web-2".into(),
                ..Default::default()
            },
            vec!["--host", "web-2"],
            |e| e.host == "web-2",
        ),
        (
            "job",
            pb::AuditQuery {
                job_id: "job-3".into(),
                ..Default::default()
            },
            vec!["--job", "job-3"],
            |e| e.job_id == "job-3",
        ),
        (
            "tool",
            pb::AuditQuery {
                tool: "file".into(),
                ..Default::default()
            },
            vec!["--tool", "file"],
            |e| e.tool == "file",
        ),
        (
            "trace",
            pb::AuditQuery {
                trace_id: format!("{:032x}", 4),
                ..Default::default()
            },
            vec!["--trace", "00000000000000000000000000000004"],
            |e| e.trace_id == format!("{:032x}", 4),
        ),
        (
            "outcome",
            pb::AuditQuery {
                outcome: "denied".into(),
                ..Default::default()
            },
            vec!["--outcome", "denied"],
            |e| e.outcome == "denied",
        ),
        (
            "kind",
            pb::AuditQuery {
                kind: audit_kind::JOB_FINISHED.into(),
                ..Default::default()
            },
            vec!["--kind", "job-finished"],
            |e| matches!(e.body, Some(Body::JobFinished(_))),
        ),
        (
            "time range",
            pb::AuditQuery {
                since_ms: BASE_MS + 10_000,
                until_ms: BASE_MS + 25_000,
                ..Default::default()
            },
            vec![
                "--since",
                "2023-11-14T22:13:30Z",
                "--until",
                "1700000025000",
            ],
            |e| (BASE_MS + 10_000..BASE_MS + 25_000).contains(&e.time_ms),
        ),
        (
            "several at once",
            pb::AuditQuery {
                user: "alice".into(),
                host: "web-1".into(),
                since_ms: BASE_MS + 6_000,
                ..Default::default()
            },
            vec![
                "--user",
                "alice",
                "--host",
                "web-1",
                "--since",
                "1700000006000",
            ],
            |e| e.user == "alice" && e.host == "web-1" && e.time_ms >= BASE_MS + 6_000,
        ),
    ];
    for (name, query, flags, pick) in cases {
        let expected: Vec<String> = events
            .iter()
            .filter(|e| pick(e))
            .map(|e| e.id.clone())
            .collect();
        assert!(!expected.is_empty(), "{name}: the case selects something");
        assert!(expected.len() < events.len(), "{name}: the case filters");
        let got = ids(&sink.query_all(query).await);
        assert_eq!(got, expected, "query by {name}");
        let mut flags = flags;
        flags.extend(["--tenant", "default"]);
        let exported: Vec<String> = sink
            .export(&flags)
            .iter()
            .map(|l| l["id"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(exported, expected, "export by {name}");
    }

    // Pages of 7, forwards and newest first, cover every record once and in order.
    let mut cursor = String::new();
    let mut pages = Vec::new();
    loop {
        let page = sink
            .query(pb::AuditQuery {
                limit: 7,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await;
        assert!(page.records.len() <= 7);
        pages.push(page.records.len());
        cursor = page.next_cursor;
        if cursor.is_empty() {
            break;
        }
    }
    assert_eq!(pages.iter().sum::<usize>(), 60);
    assert_eq!(pages.len(), 9);
    let newest = ids(&sink
        .query_all(pb::AuditQuery {
            limit: 7,
            newest_first: true,
            ..Default::default()
        })
        .await);
    let mut oldest: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    oldest.reverse();
    assert_eq!(newest, oldest);

    // A bad cursor is refused with a reason; the whole export holds both tenants' records.
    let err = sink
        .try_query(pb::AuditQuery {
            cursor: "not-a-cursor".into(),
            ..Default::default()
        })
        .await
        .expect_err("a bad cursor is refused");
    assert!(err.contains("bad cursor"), "{err}");
    let all = sink.export(&[]);
    assert_eq!(all.len(), 61);
    let by_tenant: BTreeMap<String, usize> = all.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l["tenant"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
        m
    });
    assert_eq!(by_tenant.get("acme"), Some(&1));
    assert_eq!(all[0]["hash"], all[1]["prev_hash"]);
}

// === scenarios with real tool calls ===

/// The events of one trace, in chain order, once `count` of them are stored.
async fn trace_events(
    sink: &execmesh_tests::RunningAudit,
    trace: &str,
    count: usize,
) -> Vec<pb::AuditRecord> {
    let query = pb::AuditQuery {
        trace_id: trace.to_string(),
        ..Default::default()
    };
    eventually(WAIT, || async {
        sink.query_all(query.clone()).await.len() >= count
    })
    .await;
    let records = sink.query_all(query).await;
    assert_eq!(records.len(), count, "{}", describe(&records));
    records
}

fn describe(records: &[pb::AuditRecord]) -> String {
    records
        .iter()
        .map(|r| {
            let e = r.event.clone().unwrap_or_default();
            format!(
                "{} {} {} host={} job={} outcome={}",
                r.seq, e.time_ms, r.kind, e.host, e.job_id, e.outcome
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The one record of `kind` among `records`.
fn one<'a>(records: &'a [pb::AuditRecord], kind: &str) -> &'a pb::AuditEvent {
    let found: Vec<_> = records.iter().filter(|r| r.kind == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in\n{}", describe(records));
    found[0].event.as_ref().expect("a decodable event")
}

async fn a_sequence_of_tool_calls_is_recorded_in_order_by_trace_and_job(store: Store) {
    let nats = Nats::start().await;
    let sink = store.sink(&nats).start().await;
    let agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;

    // 1. A command.
    let out = client.bash("web-1", "echo hi").await;
    assert!(!out.is_error(), "{}", out.text());
    let trace = out.structured()["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_string();
    let job = out.job_id();
    let records = trace_events(&sink, &trace, 5).await;
    let kinds = |source: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| {
                r.event
                    .as_ref()
                    .is_some_and(|e| e.source == source_of(source))
            })
            .map(|r| r.kind.clone())
            .collect()
    };
    assert_eq!(
        kinds("gateway"),
        ["call-received", "call-dispatched", "call-completed"]
    );
    assert_eq!(kinds("agent"), ["job-started", "job-finished"]);
    let received = one(&records, audit_kind::CALL_RECEIVED);
    let dispatched = one(&records, audit_kind::CALL_DISPATCHED);
    let started = one(&records, audit_kind::JOB_STARTED);
    let finished = one(&records, audit_kind::JOB_FINISHED);
    let completed = one(&records, audit_kind::CALL_COMPLETED);
    // Causal order, by the one clock of this machine.
    let times = [received, started, finished, dispatched, completed].map(|e| e.time_ms);
    assert!(times.is_sorted(), "{times:?}\n{}", describe(&records));
    for e in [received, dispatched, started, finished, completed] {
        assert_eq!(e.user, "alice");
        assert_eq!(e.trace_id, trace);
    }
    for e in [dispatched, started, finished] {
        assert_eq!(
            (e.host.as_str(), e.job_id.as_str()),
            ("web-1", job.as_str())
        );
    }
    assert_eq!(
        (received.tool.as_str(), completed.tool.as_str()),
        ("bash", "bash")
    );
    let Some(Body::CallReceived(r)) = &received.body else {
        unreachable!()
    };
    assert_eq!(r.hosts, ["web-1"]);
    assert!(r.args.contains("echo hi"), "{}", r.args);
    let Some(Body::JobStarted(s)) = &started.body else {
        unreachable!()
    };
    assert!(s.pid > 0);
    assert_eq!(s.uid, nix::unistd::geteuid().as_raw());
    let Some(Body::JobFinished(f)) = &finished.body else {
        unreachable!()
    };
    assert_eq!(
        (f.exit_code, f.output_bytes, f.output_lines),
        (Some(0), 3, 1)
    );
    assert_eq!(finished.outcome, "ok");
    assert_eq!(dispatched.outcome, "ok");
    let Some(Body::CallCompleted(c)) = &completed.body else {
        unreachable!()
    };
    assert_eq!(
        (c.status.as_str(), c.hosts.as_slice()),
        ("ok", ["web-1".to_string()].as_slice())
    );

    // The job id finds the agent's events and the dispatch that started it.
    let by_job = sink
        .query_all(pb::AuditQuery {
            job_id: job.clone(),
            ..Default::default()
        })
        .await;
    let kinds: Vec<&str> = by_job.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    for kind in ["call-dispatched", "job-started", "job-finished"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }

    // 2. A failing command, 3. a file write, 4. a write outside the host's roots (denied).
    let out = client.bash("web-1", "exit 3").await;
    let failing = out.structured()["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_string();
    let records = trace_events(&sink, &failing, 5).await;
    assert_eq!(
        one(&records, audit_kind::JOB_FINISHED).outcome,
        "exit_nonzero"
    );
    assert_eq!(
        one(&records, audit_kind::CALL_COMPLETED).outcome,
        "ok",
        "a non-zero exit is a result"
    );

    let path = agent.dir().join("note.txt");
    let content = "audited\n";
    let out = client
        .call(
            "file",
            json!({"action": "write", "host": "web-1", "path": path, "content": content}),
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
    let changed = eventually(WAIT, || async {
        let records = sink
            .query_all(pb::AuditQuery {
                kind: audit_kind::FILE_CHANGED.into(),
                ..Default::default()
            })
            .await;
        (records.len() == 1).then(|| records[0].event.clone().expect("a decodable event"))
    })
    .await;
    let Some(Body::FileChanged(fc)) = &changed.body else {
        unreachable!()
    };
    assert_eq!(fc.action, "write");
    assert!(fc.path.ends_with("note.txt"), "{}", fc.path);
    assert_eq!(fc.size, content.len() as u64);
    assert_eq!(fc.sha256, hex(&Sha256::digest(content)));
    assert_eq!(
        (changed.user.as_str(), changed.host.as_str()),
        ("alice", "web-1")
    );
    let write_trace = changed.trace_id.clone();
    let records = trace_events(&sink, &write_trace, 4).await;
    let Some(Body::CallDispatched(d)) = &one(&records, audit_kind::CALL_DISPATCHED).body else {
        unreachable!()
    };
    assert_eq!(d.request, "file.write");
    assert_eq!(one(&records, audit_kind::CALL_RECEIVED).tool, "file");

    let out = client
        .call("file", json!({"action": "write", "host": "web-1", "path": "/proc/execmesh-audit", "content": "x"}))
        .await;
    assert!(out.is_error());
    let denied = eventually(WAIT, || async {
        let r = sink
            .query_all(pb::AuditQuery {
                outcome: "denied".into(),
                user: "alice".into(),
                ..Default::default()
            })
            .await;
        (r.len() == 1).then_some(r)
    })
    .await;
    let denied = denied[0].event.clone().expect("a decodable event");
    let Some(Body::CallDenied(d)) = &denied.body else {
        panic!("{denied:?}")
    };
    assert_eq!((d.by.as_str(), d.code.as_str()), ("web-1", "outside_roots"));
    assert!(d.reason.contains("/proc/execmesh-audit"), "{}", d.reason);
    let records = trace_events(&sink, &denied.trace_id, 3).await;
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["call-received", "call-dispatched", "call-denied"]);

    let (status, out) = sink.verify();
    assert!(status.success(), "{out}");
}

fn source_of(name: &str) -> i32 {
    match name {
        "gateway" => pb::AuditSource::Gateway as i32,
        _ => pb::AuditSource::Agent as i32,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn secrets_are_redacted_before_events_are_published(store: Store) {
    let nats = Nats::start().await;
    let sink = store.sink(&nats).start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats)
        .configure(|c| c.audit_redact_patterns = vec![r"corp-[0-9]{4}".into()])
        .start()
        .await;
    let client = gw.client("alice").await;
    let cmd = "true --password=hunter2SECRET -H 'Authorization: Bearer abcdefSECRET42' \
               https://bob:pwSECRET@example.com API_TOKEN=tokSECRET corp-1234";
    let out = client
        .call(
            "bash",
            json!({"host": "web-1", "cmd": cmd, "env": {"DB_URL": "postgres://u:envSECRET@db/x"}}),
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
    let trace = out.structured()["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_string();
    let records = trace_events(&sink, &trace, 5).await;

    // Nothing secret ever reached the stream, let alone the store.
    for msg in nats.stored_messages("AUDIT").await {
        let (seq, text) = (msg.sequence, String::from_utf8_lossy(&msg.payload));
        assert!(
            !text.contains("SECRET"),
            "event {seq} leaks a secret: {text}"
        );
        assert!(
            !text.contains("corp-1234"),
            "event {seq} leaks a configured pattern: {text}"
        );
    }
    let Some(Body::CallReceived(r)) = &one(&records, audit_kind::CALL_RECEIVED).body else {
        unreachable!()
    };
    let args: serde_json::Value = serde_json::from_str(&r.args).expect("the summary is JSON");
    assert_eq!(
        args["env"]["DB_URL"], "[redacted]",
        "env values are never recorded"
    );
    let cmd = args["cmd"].as_str().expect("the command");
    for kept in [
        "true",
        "--password=[redacted]",
        "Bearer [redacted]",
        "bob:[redacted]@example.com",
        "API_TOKEN=[redacted]",
    ] {
        assert!(cmd.contains(kept), "{kept} in {cmd}");
    }
    let exported = sink.export(&["--trace", &trace]);
    assert_eq!(exported.len(), 5);
    assert!(
        !serde_json::to_string(&exported)
            .expect("JSON")
            .contains("SECRET")
    );
}

/// A command with the secret forms an earlier redaction missed, each secret marked `SECRET`,
/// inside a function that is never called (so nothing real runs).
const MISSED_FORMS: &str = "f() { curl -u a:pwSECRET1 x; DB_PASS=pwSECRET2 m; \
     redis-cli -a pwSECRET3 ping; docker login -p pwSECRET4 r; openssl rsa -passin pass:pwSECRET5; \
     echo pwSECRET6 | sudo -S true; htpasswd -b h u pwSECRET7; }; echo done";

/// What must remain of [`MISSED_FORMS`] wherever it is recorded or shown (the argument summary
/// keeps 256 characters of it, enough for all of them).
const MISSED_FORMS_KEPT: &[&str] = &[
    "curl -u a:[redacted] x",
    "DB_PASS=[redacted] m",
    "redis-cli -a [redacted] ping",
    "docker login -p [redacted] r",
    "-passin pass:[redacted];",
    "echo [redacted] | sudo -S true",
    "htpasswd -b h u [redacted];",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_the_audit_missed_reach_no_event_job_record_or_exit_record() {
    let nats = Nats::start().await;
    let sink = Store::sqlite().await.sink(&nats).start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let out = client.bash("web-1", MISSED_FORMS).await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(out.structured()["output"], "done\n");
    assert!(
        !out.text().contains("SECRET") && !out.structured().to_string().contains("SECRET"),
        "the bash result shows a secret: {}",
        out.structured()
    );
    let trace = out.structured()["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_string();
    let job = out.job_id();
    let records = trace_events(&sink, &trace, 5).await;

    // The gateway's argument summary keeps the command readable, secrets replaced.
    let Some(Body::CallReceived(received)) = &one(&records, audit_kind::CALL_RECEIVED).body else {
        unreachable!()
    };
    let args: serde_json::Value =
        serde_json::from_str(&received.args).expect("the summary is JSON");
    let summary = args["cmd"].as_str().expect("the command");
    for kept in MISSED_FORMS_KEPT {
        assert!(summary.contains(kept), "{kept:?} in {summary}");
    }

    // No event in the stream carries a secret, the agent's included.
    for msg in nats.stored_messages("AUDIT").await {
        let (seq, text) = (msg.sequence, String::from_utf8_lossy(&msg.payload));
        assert!(
            !text.contains("SECRET"),
            "event {seq} leaks a secret: {text}"
        );
    }

    // The job's status record, kept for days, never held the command as sent.
    let js = nats.jetstream().await;
    let jobs = js.get_key_value("mesh_jobs").await.expect("mesh_jobs");
    let key = format!("default.web-1.{job}");
    let mut history = jobs.history(&key).await.expect("the record's history");
    let mut revisions = 0;
    while let Some(entry) = futures::StreamExt::next(&mut history).await {
        let entry = entry.expect("a revision");
        let raw = String::from_utf8_lossy(&entry.value);
        assert!(
            !raw.contains("SECRET"),
            "revision {} leaks: {raw}",
            entry.revision
        );
        revisions += 1;
        let status = pb::JobStatus::decode(entry.value).expect("a job status");
        for kept in MISSED_FORMS_KEPT {
            assert!(status.cmd.contains(kept), "{kept:?} in {}", status.cmd);
        }
    }
    assert!(revisions >= 1, "no status record under {key}");

    // Nor did the exit record in MESH_OUT, which carries the final status.
    for msg in nats.stored_messages("MESH_OUT").await {
        let (seq, text) = (msg.sequence, String::from_utf8_lossy(&msg.payload));
        assert!(
            !text.contains("SECRET"),
            "output record {seq} leaks: {text}"
        );
    }
}

async fn tool_calls_work_while_the_sink_is_down_and_their_events_arrive_when_it_returns(
    store: Store,
) {
    let nats = Nats::start().await;
    let mut sink = store.sink(&nats).start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let mut traces = Vec::new();
    let run = async |n: usize| {
        let out = client
            .call(
                "bash",
                json!({"host": "web-1", "cmd": format!("echo call-{n}")}),
            )
            .await;
        assert!(!out.is_error(), "{}", out.text());
        assert_eq!(out.structured()["output"], format!("call-{n}\n"));
        out.structured()["trace_id"]
            .as_str()
            .expect("a trace id")
            .to_string()
    };
    traces.push(run(0).await);
    traces.push(run(1).await);
    sink.kill_hard().await;
    for n in 2..6 {
        traces.push(run(n).await);
    }
    sink.restart().await;
    for trace in &traces {
        trace_events(&sink, trace, 5).await;
    }
    let all = sink.query_all(pb::AuditQuery::default()).await;
    let unique: BTreeSet<String> = ids(&all).into_iter().collect();
    assert_eq!(unique.len(), all.len(), "no event stored twice");
    assert_eq!(all.len(), 30);
    let (status, out) = sink.verify();
    assert!(status.success(), "{out}");
}

async fn a_fan_out_is_recorded_per_host_and_policy_denials_name_who_refused(store: Store) {
    let nats = Nats::start().await;
    let sink = store.sink(&nats).start().await;
    let _prod = nats.agent("web-1", &[("env", "prod")]).await;
    let _dev = nats.agent("web-2", &[("env", "dev")]).await;
    let gw = Gateway::new(&nats)
        .policy(
            Policy::new()
                .group("devs", Tier::Standard, &["env=dev"], &["dana"])
                .group("readers", Tier::Readonly, &["*"], &["rita"]),
        )
        .start()
        .await;

    // dana may reach web-2 only: web-1 is denied by the gateway and never contacted.
    let out = gw
        .client("dana")
        .await
        .call("bash", json!({"hosts": "web-*", "cmd": "true"}))
        .await;
    assert!(!out.is_error(), "{}", out.text());
    let received = eventually(WAIT, || async {
        let r = sink
            .query_all(pb::AuditQuery {
                user: "dana".into(),
                kind: audit_kind::CALL_RECEIVED.into(),
                ..Default::default()
            })
            .await;
        (r.len() == 1).then(|| r[0].event.clone().expect("a decodable event"))
    })
    .await;
    let records = trace_events(&sink, &received.trace_id, 6).await;
    let dispatched = one(&records, audit_kind::CALL_DISPATCHED);
    assert_eq!(dispatched.host, "web-2");
    assert_eq!(one(&records, audit_kind::JOB_STARTED).host, "web-2");
    assert_eq!(
        one(&records, audit_kind::JOB_FINISHED).job_id,
        dispatched.job_id
    );
    let denied = one(&records, audit_kind::CALL_DENIED);
    let Some(Body::CallDenied(d)) = &denied.body else {
        unreachable!()
    };
    assert_eq!((denied.host.as_str(), d.by.as_str()), ("web-1", "gateway"));
    let Some(Body::CallCompleted(c)) = &one(&records, audit_kind::CALL_COMPLETED).body else {
        unreachable!()
    };
    assert_eq!(c.hosts, ["web-2"]);

    // rita's tier does not allow commands: the call is denied before anything is sent.
    let out = gw.client("rita").await.bash("web-1", "true").await;
    assert!(out.is_error());
    let denied = eventually(WAIT, || async {
        let r = sink
            .query_all(pb::AuditQuery {
                user: "rita".into(),
                outcome: "denied".into(),
                ..Default::default()
            })
            .await;
        (r.len() == 1).then(|| r[0].event.clone().expect("a decodable event"))
    })
    .await;
    let Some(Body::CallDenied(d)) = &denied.body else {
        unreachable!()
    };
    assert_eq!((d.by.as_str(), d.code.as_str()), ("gateway", "tier"));
    let kinds: Vec<String> = trace_events(&sink, &denied.trace_id, 2)
        .await
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, ["call-received", "call-denied"]);
}

/// The one `call-denied` event of `user`, once stored, and the kinds of its trace in order.
async fn denial_of(
    sink: &execmesh_tests::RunningAudit,
    user: &str,
    trace_len: usize,
) -> (pb::AuditEvent, pb::CallDenied, Vec<String>) {
    let denied = eventually(WAIT, || async {
        let r = sink
            .query_all(pb::AuditQuery {
                user: user.into(),
                kind: audit_kind::CALL_DENIED.into(),
                ..Default::default()
            })
            .await;
        (r.len() == 1).then(|| r[0].event.clone().expect("a decodable event"))
    })
    .await;
    let Some(Body::CallDenied(body)) = denied.body.clone() else {
        panic!("a call-denied body: {denied:?}")
    };
    let kinds = trace_events(sink, &denied.trace_id, trace_len)
        .await
        .into_iter()
        .filter(|r| {
            r.event
                .as_ref()
                .is_some_and(|e| e.source == source_of("gateway"))
        })
        .map(|r| r.kind)
        .collect();
    (denied, body, kinds)
}

async fn a_hosts_own_refusal_is_audited_as_a_denied_call_naming_its_rule(store: Store) {
    let nats = Nats::start().await;
    let sink = store.sink(&nats).start().await;
    let _guarded = NodeAgent::new(&nats, "web-1").start().await;
    let _guarded_too = NodeAgent::new(&nats, "web-2").start().await;
    let _capped = NodeAgent::new(&nats, "db-1")
        .arg("--max-tier", "readonly")
        .start()
        .await;
    let _mapped = NodeAgent::new(&nats, "app-1")
        .arg("--run-as", "alice=daemon")
        .start()
        .await;
    let gw = Gateway::new(&nats).start().await;
    // Harmless even if it ran: there is no such device.
    let mkfs = "mkfs.ext4 /nonexistent/execmesh-guard";

    // The CommandGuard of web-1 refuses: a denied call, by web-1, naming the rule.
    let out = gw.client("gina").await.bash("web-1", mkfs).await;
    assert!(out.is_error(), "{}", out.text());
    let (denied, body, kinds) = denial_of(&sink, "gina", 3).await;
    assert_eq!(denied.outcome, "denied");
    assert_eq!(denied.host, "web-1");
    assert_eq!((body.by.as_str(), body.code.as_str()), ("web-1", "guard"));
    assert!(body.reason.contains("rule mkfs"), "{}", body.reason);
    assert_eq!(kinds, ["call-received", "call-dispatched", "call-denied"]);

    // db-1 caps the tier at readonly.
    let out = gw.client("tess").await.bash("db-1", "true").await;
    assert!(out.is_error(), "{}", out.text());
    let (_, body, _) = denial_of(&sink, "tess", 3).await;
    assert_eq!((body.by.as_str(), body.code.as_str()), ("db-1", "tier"));
    assert!(
        body.reason.contains("needs tier standard"),
        "{}",
        body.reason
    );

    // app-1 maps alice only: rudi has no account there.
    let out = gw.client("rudi").await.bash("app-1", "true").await;
    assert!(out.is_error(), "{}", out.text());
    let (_, body, _) = denial_of(&sink, "rudi", 3).await;
    assert_eq!((body.by.as_str(), body.code.as_str()), ("app-1", "run_as"));

    // In a fan-out, each refusing host is `denied` with its own call-denied, then the call
    // completes.
    let out = gw
        .client("fran")
        .await
        .call("bash", json!({"hosts": "web-*", "cmd": mkfs}))
        .await;
    assert!(!out.is_error(), "{}", out.text());
    let statuses: Vec<&str> = out.structured()["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .filter_map(|h| h["status"].as_str())
        .collect();
    assert_eq!(statuses, ["denied", "denied"], "{}", out.text());
    let denials = eventually(WAIT, || async {
        let r = sink
            .query_all(pb::AuditQuery {
                user: "fran".into(),
                kind: audit_kind::CALL_DENIED.into(),
                ..Default::default()
            })
            .await;
        (r.len() == 2).then_some(r)
    })
    .await;
    let mut by_host: Vec<(String, String, String)> = denials
        .iter()
        .filter_map(|r| {
            let e = r.event.as_ref()?;
            let Some(Body::CallDenied(d)) = &e.body else {
                return None;
            };
            Some((e.host.clone(), d.by.clone(), d.code.clone()))
        })
        .collect();
    by_host.sort();
    assert_eq!(
        by_host,
        [
            ("web-1".into(), "web-1".into(), "guard".into()),
            ("web-2".into(), "web-2".into(), "guard".into()),
        ]
    );
}

async fn every_use_of_operator_rights_on_another_users_job_is_audited(store: Store) {
    let nats = Nats::start().await;
    let sink = store.sink(&nats).start().await;
    let _web = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats)
        .admin()
        .policy(Policy::new().operators(&["olive"]).group(
            "devs",
            Tier::Standard,
            &["*"],
            &["bob", "olive"],
        ))
        .start()
        .await;
    let bob = gw.client("bob").await;
    let job = bob.bash_bg("web-1", "sleep 300").await;
    // bob following his own job is no use of operator rights.
    bob.job("poll", &job).await;

    let olive = gw.client("olive").await;
    for args in [
        json!({"action": "poll", "job": job}),
        json!({"action": "list", "user": "bob"}),
        json!({"action": "kill", "job": job}),
    ] {
        let out = olive.call("job", args).await;
        assert!(!out.is_error(), "{}", out.text());
    }
    let mut admin = gw.admin_client("olive").await;
    admin
        .jobs
        .get(get_job(&job))
        .await
        .expect("an operator gets bob's job");

    let records = eventually(WAIT, || async {
        let r = sink
            .query_all(pb::AuditQuery {
                kind: audit_kind::JOB_ACCESSED.into(),
                ..Default::default()
            })
            .await;
        (r.len() >= 4).then_some(r)
    })
    .await;
    let uses: Vec<(String, String, String, Vec<String>, String, String)> = records
        .iter()
        .filter_map(|r| {
            let e = r.event.as_ref()?;
            let Some(Body::JobAccessed(a)) = &e.body else {
                return None;
            };
            Some((
                e.user.clone(),
                e.outcome.clone(),
                e.job_id.clone(),
                a.owners.clone(),
                a.action.clone(),
                a.via.clone(),
            ))
        })
        .collect();
    let bob_only = vec!["bob".to_string()];
    assert_eq!(
        uses,
        [
            (
                "olive".into(),
                "poll".into(),
                job.clone(),
                bob_only.clone(),
                "poll".into(),
                "mcp".into()
            ),
            (
                "olive".into(),
                "list".into(),
                job.clone(),
                bob_only.clone(),
                "list".into(),
                "mcp".into()
            ),
            (
                "olive".into(),
                "kill".into(),
                job.clone(),
                bob_only.clone(),
                "kill".into(),
                "mcp".into()
            ),
            (
                "olive".into(),
                "get".into(),
                job.clone(),
                bob_only.clone(),
                "get".into(),
                "admin-api".into()
            ),
        ]
    );
    let mine = sink
        .query_all(pb::AuditQuery {
            user: "bob".into(),
            kind: audit_kind::JOB_ACCESSED.into(),
            ..Default::default()
        })
        .await;
    assert!(mine.is_empty(), "{}", describe(&mine));
}

/// The `auth-failed` events stored, once there are at least `count`.
async fn auth_failures(sink: &execmesh_tests::RunningAudit, count: usize) -> Vec<pb::AuditEvent> {
    eventually(Duration::from_secs(30), || async {
        let records = sink
            .query_all(pb::AuditQuery {
                kind: audit_kind::AUTH_FAILED.into(),
                ..Default::default()
            })
            .await;
        (records.len() >= count).then(|| records.into_iter().filter_map(|r| r.event).collect())
    })
    .await
}

fn failed(event: &pb::AuditEvent) -> &pb::AuthFailed {
    match &event.body {
        Some(Body::AuthFailed(f)) => f,
        other => panic!("not an auth-failed body: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tokens_are_audited_coalesced_per_address_and_reason_never_with_the_token() {
    let nats = Nats::start().await;
    let sink = AuditSink::new(&nats).sqlite().start().await;
    let mut gw = Gateway::new(&nats)
        .policy("[users.alice]\ntier = \"standard\"\nhosts = [\"*\"]\n")
        .admin()
        .start()
        .await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    // A real token with its signature altered: the signature no longer verifies.
    let valid = gw.mint("alice");
    let cut = valid.rfind('.').expect("a JWT") + 10;
    let flipped = if &valid[cut..cut + 1] == "A" {
        "B"
    } else {
        "A"
    };
    let forged = format!("{}{flipped}{}", &valid[..cut], &valid[cut + 1..]);
    // A flood of the same bad token from one address.
    for _ in 0..20 {
        assert_eq!(gw.post_raw(Some(&forged), list.clone()).await.status(), 401);
    }
    // A valid token of a user the policy does not know, and a bad one at the admin API.
    let stranger = gw.mint("mallory");
    assert_eq!(
        gw.post_raw(Some(&stranger), list.clone()).await.status(),
        401
    );
    let mut admin = gw.admin_client_with_token(Some(&forged)).await;
    assert_eq!(
        admin
            .hosts
            .list(pb::ListHostsRequest::default())
            .await
            .expect_err("refused")
            .code(),
        tonic::Code::Unauthenticated
    );
    // A missing token is how OAuth clients discover the server: not audited.
    assert_eq!(gw.post_raw(None, list.clone()).await.status(), 401);

    // One event per (endpoint, address, reason) at once; the other 19 are only counted.
    let events = auth_failures(&sink, 3).await;
    let mut seen: Vec<(String, String, String, u64)> = events
        .iter()
        .map(|e| {
            let f = failed(e);
            (
                f.endpoint.clone(),
                f.code.clone(),
                f.client_addr.clone(),
                f.count,
            )
        })
        .collect();
    seen.sort();
    let row = |endpoint: &str, code: &str| {
        (
            endpoint.to_string(),
            code.to_string(),
            "127.0.0.1".to_string(),
            1,
        )
    };
    assert_eq!(
        seen,
        [
            row("admin", "bad_signature"),
            row("mcp", "bad_signature"),
            row("mcp", "unknown_user"),
        ]
    );
    let unknown = events
        .iter()
        .find(|e| failed(e).code == "unknown_user")
        .expect("the unknown user's event");
    assert_eq!(unknown.user, "mallory");
    assert_eq!(unknown.outcome, "unknown_user");
    assert!(!failed(unknown).token_id.is_empty());

    // The counts of the window are published when it closes, or when the gateway stops.
    gw.stop().await;
    let events = auth_failures(&sink, 4).await;
    let counted: Vec<&pb::AuthFailed> = events.iter().map(failed).filter(|f| f.count > 1).collect();
    assert_eq!(counted.len(), 1, "{events:?}");
    assert_eq!(
        (
            counted[0].endpoint.as_str(),
            counted[0].code.as_str(),
            counted[0].count
        ),
        ("mcp", "bad_signature", 19)
    );
    assert!(counted[0].first_ms <= counted[0].last_ms);
    let stored = format!("{:?}", sink.export(&[]));
    for token in [&forged, &valid, &stranger] {
        let signature = token.rsplit('.').next().expect("a signature");
        assert!(
            !stored.contains(signature),
            "a token reached the audit trail"
        );
    }
}

/// A fan-out records one `call-dispatched` event per host. When they come faster than they are
/// published (here a queue of one event), the call waits for room instead of dropping them: a
/// 7,500-host `grep` in the scale benchmark lost 65,536 of them before.
#[tokio::test]
async fn a_fan_out_faster_than_the_audit_queue_waits_for_it_and_loses_no_host_event() {
    use futures::StreamExt as _;
    const HOSTS: usize = 40;
    const CALLS: usize = 3;
    let nats = Nats::start().await;
    let fleet = execmesh_tests::Fleet::new(&nats, "fan", HOSTS).light();
    let gw = Gateway::new(&nats)
        .configure(|c| c.audit_queue = 1)
        .start()
        .await;
    let fleet = fleet.start().await;
    let client = gw.client("alice").await;
    for _ in 0..CALLS {
        let ran = client
            .call("bash", json!({"hosts": "fan-*", "cmd": "true"}))
            .await;
        assert_eq!(
            ran.structured()["counts"]["ok"],
            json!(HOSTS),
            "{}",
            ran.text()
        );
    }
    let js = nats.jetstream().await;
    let tenant = Token::parse("tenant", subject::DEFAULT_TENANT).expect("tenant");
    let dispatched = subject::audit_gateway(&tenant, "call-dispatched");
    let stored = || {
        let js = js.clone();
        let dispatched = dispatched.clone();
        async move {
            let stream = js.get_stream("AUDIT").await.ok()?;
            let counts: Vec<_> = stream
                .info_with_subjects(&dispatched)
                .await
                .ok()?
                .collect()
                .await;
            let n: usize = counts
                .into_iter()
                .filter_map(Result::ok)
                .map(|(_, n)| n)
                .sum();
            (n == HOSTS * CALLS).then_some(n)
        }
    };
    eventually(Duration::from_secs(20), stored).await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_larger_than_audit_takes_is_dropped_at_once_and_holds_up_no_other() {
    use execmesh_runtime::audit_publisher::Publisher;
    let nats = Nats::start().await;
    let publisher = Publisher::start(nats.client().await, 1, 16, 8, None);
    let tenant = Token::parse("tenant", subject::DEFAULT_TENANT).expect("tenant");
    let subject = subject::audit_gateway(&tenant, "call-received");
    let event = |id: &str, args: String| pb::AuditEvent {
        id: id.to_string(),
        body: Some(Body::CallReceived(pb::CallReceived {
            args,
            ..Default::default()
        })),
        ..Default::default()
    };
    // Past the stream's 64 KiB a message: AUDIT would refuse it every time it is tried.
    publisher.send(
        subject.clone(),
        &event("evt-too-large", "x".repeat(70 * 1024)),
    );
    publisher.send(subject.clone(), &event("evt-after-it", "{}".to_string()));

    let ids = eventually(Duration::from_secs(20), || async {
        let js = nats.jetstream().await;
        js.get_stream("AUDIT").await.ok()?;
        let ids: Vec<String> = nats
            .stored_messages("AUDIT")
            .await
            .iter()
            .filter_map(|m| pb::AuditEvent::decode(m.payload.clone()).ok())
            .map(|e| e.id)
            .collect();
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    assert_eq!(ids, ["evt-after-it"]);
    assert_eq!(
        publisher.dropped(),
        1,
        "the event too large is counted dropped"
    );
}
