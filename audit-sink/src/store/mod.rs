//! The audit store: one table of chained records, on SQLite (the embedded default) or PostgreSQL, with the same schema and behaviour.
//!
//! Appending is the only write. It runs in one transaction per batch that holds the store's
//! write lock (SQLite `BEGIN IMMEDIATE`, a PostgreSQL advisory lock), reads the chain's head,
//! skips events whose id is already stored (redeliveries), chains the rest onto the head and
//! inserts them. The `event_id` column is `UNIQUE` and the insert says `ON CONFLICT DO NOTHING`
//! as a second guard, so an event is stored once however often it is delivered.

mod postgres;
mod sqlite;

use std::collections::HashSet;
use std::path::PathBuf;

use crate::chain::{self, Broken, Row, Verifier};
use crate::record::Stored;

/// The table and its columns, in the order every `SELECT` returns them.
pub(crate) const COLUMNS: &str = "seq, event_id, time_ms, tenant, source, kind, user_name, host, \
                                  job_id, tool, trace_id, outcome, payload, prev_hash, hash, \
                                  signer";
/// Ids of events signed by no known key that `verify` names (it counts them all).
pub const UNSIGNED_IDS_SHOWN: usize = 100;
/// Records read per round while verifying.
pub(crate) const VERIFY_CHUNK: usize = 5000;
/// Records one query page may hold, whatever the caller asks.
pub const MAX_PAGE: usize = 10_000;

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// A SQLite file (WAL mode); created with its directory if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL connection string (`postgresql://user@host/db` or `host=/run/postgresql
    /// dbname=audit`).
    Postgres(String),
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the SQLite store {path}: {source}")]
    OpenSqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create the directory of the SQLite store {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot connect to PostgreSQL: {0}")]
    ConnectPostgres(tokio_postgres::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the store holds a value out of range in record {seq}: {column}")]
    BadValue { seq: u64, column: &'static str },
    #[error("another writer changed the chain during a batch: {0}")]
    Conflict(String),
    #[error("the store's worker thread failed: {0}")]
    Worker(String),
}

/// Which records a query or an export wants. Every filter that is set must match exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this tenant's records (queries over NATS always set it, from the subject).
    pub tenant: Option<String>,
    /// From this time (unix ms, inclusive).
    pub since_ms: Option<u64>,
    /// Until this time (unix ms, exclusive).
    pub until_ms: Option<u64>,
    pub user: Option<String>,
    pub host: Option<String>,
    pub job_id: Option<String>,
    pub tool: Option<String>,
    pub trace_id: Option<String>,
    pub outcome: Option<String>,
    pub kind: Option<String>,
    /// Records after (or, newest first, before) this seq: the cursor.
    pub after_seq: Option<u64>,
    /// Most records in the page.
    pub limit: usize,
    /// Newest records first.
    pub newest_first: bool,
}

/// One page of a query.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub records: Vec<Stored>,
    /// The cursor of the next page, if there is one.
    pub next_cursor: Option<String>,
    /// The newest seq in the store.
    pub head_seq: u64,
}

/// What one append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Records written.
    pub stored: usize,
    /// Events skipped because their id was already stored (or repeated in the batch).
    pub duplicates: usize,
    /// The chain's head after the append.
    pub head_seq: u64,
}

/// The result of recomputing the whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records that verified.
    pub records: u64,
    /// The last verified record.
    pub head_seq: u64,
    pub head_hash: String,
    /// The first record that does not verify; `None` when the chain is intact.
    pub broken: Option<Broken>,
    /// Records (of those that verify) whose event no key of the identities file signed.
    pub unsigned: u64,
    /// The ids of the first [`UNSIGNED_IDS_SHOWN`] of them, in chain order.
    pub unsigned_ids: Vec<String>,
}

/// A parameter of a generated query.
#[derive(Debug, Clone)]
pub(crate) enum Param {
    Int(i64),
    Text(String),
}

/// An open store.
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(Box<postgres::PgStore>),
}

// === impl Store ===

impl Store {
    /// Opens the store, creating its schema if missing.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        Ok(match config {
            StoreConfig::Sqlite(path) => Store::Sqlite(sqlite::SqliteStore::open(path).await?),
            StoreConfig::Postgres(url) => {
                Store::Postgres(Box::new(postgres::PgStore::open(url).await?))
            }
        })
    }

    /// Chains `rows` (their `seq` is ignored) onto the head and stores them in one transaction;
    /// events already stored are skipped. Either every new record is stored or none is.
    pub async fn append(&self, rows: Vec<Row>) -> Result<Appended, StoreError> {
        match self {
            Store::Sqlite(s) => s.append(rows).await,
            Store::Postgres(s) => s.append(rows).await,
        }
    }

    /// One page of records matching `filter`.
    pub async fn query(&self, filter: &Filter) -> Result<Page, StoreError> {
        let limit = filter.limit.clamp(1, MAX_PAGE);
        let (mut records, head_seq) = match self {
            Store::Sqlite(s) => s.query(filter, limit + 1).await?,
            Store::Postgres(s) => s.query(filter, limit + 1).await?,
        };
        let next_cursor = if records.len() > limit {
            records.truncate(limit);
            records.last().map(|r| r.row.seq.to_string())
        } else {
            None
        };
        Ok(Page {
            records,
            next_cursor,
            head_seq,
        })
    }

    /// Recomputes the chain from the first record to the last and names the first that does
    /// not verify.
    pub async fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut verifier = Verifier::default();
        let mut after = 0u64;
        let (mut unsigned, mut unsigned_ids) = (0u64, Vec::new());
        loop {
            let chunk = match self {
                Store::Sqlite(s) => s.range(after, VERIFY_CHUNK).await?,
                Store::Postgres(s) => s.range(after, VERIFY_CHUNK).await?,
            };
            let Some(last) = chunk.last() else { break };
            after = last.row.seq;
            for stored in &chunk {
                if let Err(broken) = verifier.check(&stored.row, &stored.prev_hash, &stored.hash) {
                    let (head_seq, head_hash) = verifier.head();
                    return Ok(VerifyReport {
                        records: verifier.records,
                        head_seq,
                        head_hash: head_hash.to_string(),
                        broken: Some(broken),
                        unsigned,
                        unsigned_ids,
                    });
                }
                if stored.row.signer.is_empty() {
                    unsigned += 1;
                    if unsigned_ids.len() < UNSIGNED_IDS_SHOWN {
                        unsigned_ids.push(stored.row.event_id.clone());
                    }
                }
            }
            if chunk.len() < VERIFY_CHUNK {
                break;
            }
        }
        let (head_seq, head_hash) = verifier.head();
        Ok(VerifyReport {
            records: verifier.records,
            head_seq,
            head_hash: head_hash.to_string(),
            broken: None,
            unsigned,
            unsigned_ids,
        })
    }
}

/// Chains the rows that are new (not in `existing`, not repeated in the batch) onto the head:
/// each gets the next seq, the previous hash and its own hash.
pub(crate) fn chain_new(
    head_seq: u64,
    head_hash: &str,
    rows: Vec<Row>,
    existing: &HashSet<String>,
) -> (Vec<Stored>, usize) {
    let mut seen = HashSet::with_capacity(rows.len());
    let mut out = Vec::with_capacity(rows.len());
    let mut duplicates = 0;
    let (mut seq, mut prev) = (head_seq, head_hash.to_string());
    for mut row in rows {
        if existing.contains(&row.event_id) || !seen.insert(row.event_id.clone()) {
            duplicates += 1;
            continue;
        }
        seq += 1;
        row.seq = seq;
        let hash = chain::link(&prev, &row);
        out.push(Stored {
            row,
            prev_hash: std::mem::replace(&mut prev, hash.clone()),
            hash,
        });
    }
    (out, duplicates)
}

/// The `WHERE … ORDER BY … LIMIT …` of a query, with placeholders from `placeholder(n)` (n from
/// 1) and the parameters in order.
pub(crate) fn query_sql(
    filter: &Filter,
    limit: usize,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<Param>) {
    let mut clauses: Vec<String> = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    let mut push = |clause: &str, param: Param| {
        params.push(param);
        clauses.push(clause.replace('?', &placeholder(params.len())));
    };
    let int = |v: u64| Param::Int(i64::try_from(v).unwrap_or(i64::MAX));
    for (column, value) in [
        ("tenant", &filter.tenant),
        ("user_name", &filter.user),
        ("host", &filter.host),
        ("job_id", &filter.job_id),
        ("tool", &filter.tool),
        ("trace_id", &filter.trace_id),
        ("outcome", &filter.outcome),
        ("kind", &filter.kind),
    ] {
        if let Some(value) = value {
            push(&format!("{column} = ?"), Param::Text(value.clone()));
        }
    }
    if let Some(since) = filter.since_ms {
        push("time_ms >= ?", int(since));
    }
    if let Some(until) = filter.until_ms {
        push("time_ms < ?", int(until));
    }
    if let Some(after) = filter.after_seq {
        let op = if filter.newest_first { "<" } else { ">" };
        push(&format!("seq {op} ?"), int(after));
    }
    let mut sql = format!("SELECT {COLUMNS} FROM audit_events");
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    let order = if filter.newest_first { "DESC" } else { "ASC" };
    sql.push_str(&format!(" ORDER BY seq {order} LIMIT {limit}"));
    (sql, params)
}

/// A stored integer as u64, naming the column when it is negative.
pub(crate) fn unsigned(value: i64, seq: u64, column: &'static str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::BadValue { seq, column })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> Row {
        Row {
            seq: 0,
            event_id: id.into(),
            time_ms: 1,
            tenant: "default".into(),
            source: "gateway".into(),
            kind: "call-received".into(),
            user: "alice".into(),
            host: String::new(),
            job_id: String::new(),
            tool: "bash".into(),
            trace_id: String::new(),
            outcome: String::new(),
            payload: Vec::new(),
            signer: String::new(),
        }
    }

    #[test]
    fn known_and_repeated_ids_are_skipped_and_the_rest_chained() {
        let existing: HashSet<String> = ["b".to_string()].into();
        let (out, duplicates) = chain_new(
            4,
            chain::GENESIS,
            vec![row("a"), row("b"), row("a"), row("c")],
            &existing,
        );
        assert_eq!(duplicates, 2);
        let seqs: Vec<u64> = out.iter().map(|s| s.row.seq).collect();
        assert_eq!(seqs, [5, 6]);
        assert_eq!(out[0].prev_hash, chain::GENESIS);
        assert_eq!(out[1].prev_hash, out[0].hash);
    }

    #[test]
    fn filters_become_numbered_parameters() {
        let filter = Filter {
            tenant: Some("default".into()),
            user: Some("alice".into()),
            since_ms: Some(10),
            after_seq: Some(7),
            newest_first: true,
            ..Default::default()
        };
        let (sql, params) = query_sql(&filter, 11, |n| format!("${n}"));
        assert!(
            sql.ends_with(
                "WHERE tenant = $1 AND user_name = $2 AND time_ms >= $3 AND seq < $4 ORDER BY seq DESC LIMIT 11"
            ),
            "{sql}"
        );
        assert_eq!(params.len(), 4);
    }
}
