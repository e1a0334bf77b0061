//! The PostgreSQL store: the same table as SQLite, a writer and a reader connection that reconnect after a server restart.
//!
//! A batch is one transaction holding a transaction-scoped advisory lock, so sinks sharing a
//! database take turns extending the chain; its rows go in with one `INSERT … SELECT FROM
//! UNNEST(…)`, a single round trip whatever the batch size.

use std::collections::HashSet;

use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};
use tracing::{info, warn};

use super::{Appended, Filter, Param, StoreError, query_sql, unsigned};
use crate::chain::{GENESIS, Row};
use crate::record::Stored;

/// The advisory lock every sink takes to append (an arbitrary constant: "execmesh audit").
const CHAIN_LOCK: i64 = 0x6578_6d73_6175_6474;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_events (
    seq        BIGINT PRIMARY KEY,
    event_id   TEXT   NOT NULL UNIQUE,
    time_ms    BIGINT NOT NULL,
    tenant     TEXT   NOT NULL,
    source     TEXT   NOT NULL,
    kind       TEXT   NOT NULL,
    user_name  TEXT   NOT NULL,
    host       TEXT   NOT NULL,
    job_id     TEXT   NOT NULL,
    tool       TEXT   NOT NULL,
    trace_id   TEXT   NOT NULL,
    outcome    TEXT   NOT NULL,
    payload    BYTEA  NOT NULL,
    prev_hash  TEXT   NOT NULL,
    hash       TEXT   NOT NULL,
    signer     TEXT   NOT NULL DEFAULT ''
);
-- Stores created before signers were recorded: their rows keep an empty signer.
ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS signer TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS audit_events_time  ON audit_events (time_ms);
CREATE INDEX IF NOT EXISTS audit_events_trace ON audit_events (trace_id);
CREATE INDEX IF NOT EXISTS audit_events_job   ON audit_events (job_id);
CREATE INDEX IF NOT EXISTS audit_events_user  ON audit_events (user_name, time_ms);
CREATE INDEX IF NOT EXISTS audit_events_host  ON audit_events (host, time_ms);
";

const INSERT: &str = "INSERT INTO audit_events (seq, event_id, time_ms, tenant, source, kind, \
     user_name, host, job_id, tool, trace_id, outcome, payload, prev_hash, hash, signer) \
     SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
     $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
     $13::bytea[], $14::text[], $15::text[], $16::text[]) \
     ON CONFLICT (event_id) DO NOTHING";

/// A PostgreSQL store.
pub struct PgStore {
    /// The connection string.
    url: String,
    /// Appends; `None` after the connection broke, until the next call reconnects.
    writer: Mutex<Option<Client>>,
    /// Queries and verification.
    reader: Mutex<Option<Client>>,
}

// === impl PgStore ===

impl PgStore {
    /// Connects and creates the schema if missing.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut client = connect(url).await?;
        let tx = client.transaction().await?;
        // Two sinks starting together must not race on CREATE TABLE.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHAIN_LOCK])
            .await?;
        tx.batch_execute(SCHEMA).await?;
        tx.commit().await?;
        let reader = connect(url).await?;
        Ok(PgStore {
            url: url.to_string(),
            writer: Mutex::new(Some(client)),
            reader: Mutex::new(Some(reader)),
        })
    }

    pub async fn append(&self, rows: Vec<Row>) -> Result<Appended, StoreError> {
        let mut slot = self.writer.lock().await;
        let client = self.connected(&mut slot).await?;
        let result = append(client, rows).await;
        forget_if_closed(&mut slot);
        result
    }

    /// Up to `limit` records matching `filter`, and the head seq.
    pub async fn query(
        &self,
        filter: &Filter,
        limit: usize,
    ) -> Result<(Vec<Stored>, u64), StoreError> {
        let (sql, params) = query_sql(filter, limit, |n| format!("${n}"));
        let params: Vec<Box<dyn ToSql + Sync + Send>> = params
            .into_iter()
            .map(|p| -> Box<dyn ToSql + Sync + Send> {
                match p {
                    Param::Int(v) => Box::new(v),
                    Param::Text(v) => Box::new(v),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let mut slot = self.reader.lock().await;
        let client = self.connected(&mut slot).await?;
        let result = async {
            let rows = client.query(&sql, &refs).await?;
            let records = rows.iter().map(stored).collect::<Result<Vec<_>, _>>()?;
            let head: i64 = client
                .query_one("SELECT COALESCE(MAX(seq), 0) FROM audit_events", &[])
                .await?
                .try_get(0)?;
            Ok((records, unsigned(head, 0, "seq")?))
        }
        .await;
        forget_if_closed(&mut slot);
        result
    }

    /// Up to `limit` records after `after_seq`, in seq order.
    pub async fn range(&self, after_seq: u64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        let sql = format!(
            "SELECT {} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT {limit}",
            super::COLUMNS
        );
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let mut slot = self.reader.lock().await;
        let client = self.connected(&mut slot).await?;
        let result = async {
            let rows = client.query(&sql, &[&after]).await?;
            rows.iter().map(stored).collect::<Result<Vec<_>, _>>()
        }
        .await;
        forget_if_closed(&mut slot);
        result
    }

    /// The connection in `slot`, connecting first if there is none.
    async fn connected<'a>(
        &self,
        slot: &'a mut Option<Client>,
    ) -> Result<&'a mut Client, StoreError> {
        if slot.is_none() {
            let client = connect(&self.url).await?;
            info!("reconnected to PostgreSQL");
            *slot = Some(client);
        }
        slot.as_mut()
            .ok_or_else(|| StoreError::Worker("no PostgreSQL connection".into()))
    }
}

async fn append(client: &mut Client, rows: Vec<Row>) -> Result<Appended, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHAIN_LOCK])
        .await?;
    let head = tx
        .query_opt(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?;
    let (head_seq, head_hash) = match head {
        Some(row) => (
            unsigned(row.try_get(0)?, 0, "seq")?,
            row.try_get::<_, String>(1)?,
        ),
        None => (0, GENESIS.to_string()),
    };
    let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let existing: HashSet<String> = tx
        .query(
            "SELECT event_id FROM audit_events WHERE event_id = ANY($1)",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<_, _>>()?;
    let (chained, duplicates) = super::chain_new(head_seq, &head_hash, rows, &existing);
    if !chained.is_empty() {
        let rows: Vec<&Row> = chained.iter().map(|s| &s.row).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq as i64).collect();
        let times: Vec<i64> = rows.iter().map(|r| r.time_ms as i64).collect();
        let text = |f: fn(&Row) -> &str| rows.iter().map(|r| f(r)).collect::<Vec<&str>>();
        let payloads: Vec<&[u8]> = rows.iter().map(|r| r.payload.as_slice()).collect();
        let prevs: Vec<&str> = chained.iter().map(|s| s.prev_hash.as_str()).collect();
        let hashes: Vec<&str> = chained.iter().map(|s| s.hash.as_str()).collect();
        let inserted = tx
            .execute(
                INSERT,
                &[
                    &seqs,
                    &text(|r| &r.event_id),
                    &times,
                    &text(|r| &r.tenant),
                    &text(|r| &r.source),
                    &text(|r| &r.kind),
                    &text(|r| &r.user),
                    &text(|r| &r.host),
                    &text(|r| &r.job_id),
                    &text(|r| &r.tool),
                    &text(|r| &r.trace_id),
                    &text(|r| &r.outcome),
                    &payloads,
                    &prevs,
                    &hashes,
                    &text(|r| &r.signer),
                ],
            )
            .await?;
        if inserted != chained.len() as u64 {
            // Impossible under the advisory lock; never commit a chain with a gap.
            return Err(StoreError::Conflict(format!(
                "{} of {} events appeared during the batch",
                chained.len() as u64 - inserted,
                chained.len()
            )));
        }
    }
    tx.commit().await?;
    Ok(Appended {
        stored: chained.len(),
        duplicates,
        head_seq: chained.last().map_or(head_seq, |s| s.row.seq),
    })
}

fn stored(r: &tokio_postgres::Row) -> Result<Stored, StoreError> {
    let seq = unsigned(r.try_get(0)?, 0, "seq")?;
    Ok(Stored {
        row: Row {
            seq,
            event_id: r.try_get(1)?,
            time_ms: unsigned(r.try_get(2)?, seq, "time_ms")?,
            tenant: r.try_get(3)?,
            source: r.try_get(4)?,
            kind: r.try_get(5)?,
            user: r.try_get(6)?,
            host: r.try_get(7)?,
            job_id: r.try_get(8)?,
            tool: r.try_get(9)?,
            trace_id: r.try_get(10)?,
            outcome: r.try_get(11)?,
            payload: r.try_get(12)?,
            signer: r.try_get(15)?,
        },
        prev_hash: r.try_get(13)?,
        hash: r.try_get(14)?,
    })
}

async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(StoreError::ConnectPostgres)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Drops a broken connection so the next call reconnects.
fn forget_if_closed(slot: &mut Option<Client>) {
    if slot.as_ref().is_some_and(Client::is_closed) {
        *slot = None;
    }
}
