//! The `audit` scenario: how fast the audit-sink persists events with the hash chain, on SQLite and on PostgreSQL.
//!
//! A backlog of events is published to AUDIT first (as gateways and agents would while the sink
//! is down); then the sink starts and the clock runs from its first answered query until its
//! chain's head reaches the last event. Both stores keep their production durability: SQLite in
//! WAL mode with `synchronous = FULL`, PostgreSQL with fsync on. Then `verify` recomputes the
//! whole chain.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::HeaderMap;
use bytes::Bytes;
use execmesh_proto::pb::{self, audit_event::Body};
use execmesh_proto::subject::{self, audit_kind};
use execmesh_proto::{Token, headers, jetstream as layout};
use prost::Message as _;
use serde_json::{Value, json};

use execmesh_tests::audit_sink::Backend;
use execmesh_tests::{AuditSink, Nats, Postgres};

/// Events in the backlog.
const EVENTS: u64 = 200_000;
/// Publishes awaiting their ack at once while the backlog is built.
const PUBLISH_WINDOW: usize = 2048;
/// Longest the sink may take to store the backlog.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

pub async fn audit() -> anyhow::Result<Value> {
    let sqlite = run(None).await.context("SQLite")?;
    let pg = Postgres::builder().durable().start().await;
    let postgres = run(Some(&pg)).await.context("PostgreSQL")?;
    Ok(json!({ "events": EVENTS, "sqlite": sqlite, "postgres": postgres }))
}

async fn run(pg: Option<&Postgres>) -> anyhow::Result<Value> {
    let nats = Nats::start().await;
    let published = Instant::now();
    backlog(&nats).await?;
    let publish_s = published.elapsed().as_secs_f64();

    let sink = AuditSink::new(&nats);
    let sink = match pg {
        Some(pg) => sink.backend(Backend::Postgres(pg.url())),
        None => sink.sqlite(),
    };
    let sink = sink.start().await;
    let started = Instant::now();
    loop {
        let head = sink.head_seq().await;
        if head >= EVENTS {
            break;
        }
        if started.elapsed() > DRAIN_LIMIT {
            bail!("only {head} of {EVENTS} events stored after {DRAIN_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain_s = started.elapsed().as_secs_f64();

    let verified = Instant::now();
    let (status, out) = sink.verify();
    if !status.success() {
        bail!("verify failed: {out}");
    }
    let verify_s = verified.elapsed().as_secs_f64();
    Ok(json!({
        "persisted_events_per_s": (EVENTS as f64 / drain_s).round(),
        "drain_s": round3(drain_s),
        "backlog_published_events_per_s": (EVENTS as f64 / publish_s).round(),
        "verify_s": round3(verify_s),
        "verified_records_per_s": (EVENTS as f64 / verify_s).round(),
    }))
}

/// Publishes [`EVENTS`] call-received events with a typical redacted argument summary.
async fn backlog(nats: &Nats) -> anyhow::Result<()> {
    let js = nats.jetstream().await;
    js.get_or_create_stream(layout::audit_stream(&layout::StoreLimits::default(), 1))
        .await
        .context("create AUDIT")?;
    let tenant = Token::parse("tenant", subject::DEFAULT_TENANT)?;
    let subject = subject::audit_gateway(&tenant, audit_kind::CALL_RECEIVED);
    let base = execmesh_proto::now_ms();
    let mut acks = Vec::with_capacity(PUBLISH_WINDOW);
    for n in 0..EVENTS {
        let event = pb::AuditEvent {
            id: execmesh_proto::audit_event_id(base + n / 100, n),
            time_ms: base + n / 100,
            tenant: tenant.to_string(),
            source: pb::AuditSource::Gateway as i32,
            source_instance: "0123456789abcdef".into(),
            trace_id: format!("{:032x}", n / 5),
            user: format!("user-{}", n % 50),
            tool: "bash".into(),
            body: Some(Body::CallReceived(pb::CallReceived {
                args: format!(
                    r#"{{"host":"web-{}","cmd":"systemctl status nginx --no-pager | tail -n 20","env":{{"TOKEN":"[redacted]"}},"timeout":30}}"#,
                    n % 100
                ),
                hosts: vec![format!("web-{}", n % 100)],
                action: String::new(),
                hosts_omitted: 0,
            })),
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        h.insert(headers::MSG_ID, event.id.as_str());
        acks.push(
            js.publish_with_headers(subject.clone(), h, Bytes::from(event.encode_to_vec()))
                .await?,
        );
        if acks.len() == PUBLISH_WINDOW {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
