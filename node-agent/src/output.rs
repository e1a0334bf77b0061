//! Streams a job's stdout and stderr into MESH_OUT: two readers, one coalescer, acked publishes.
//!
//! The readers split each stream into lines and send them, in the order they were read, through
//! a bounded channel to the job's coalescer. When NATS is slow the channel fills, the readers stop
//! reading, and the child blocks on its next write: output is delayed, never lost. The coalescer
//! publishes one chunk at a time and awaits its ack before the next (stream order = line order,
//! even across a NATS restart); while an ack is pending, more output gathers in the next chunk.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use execmesh_proto::pb::{self, OutputStream};
use execmesh_proto::signing::RecordKey;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{ChildStderr, ChildStdout};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, warn};

use crate::chunker::{Chunk, Chunker, Totals};
use crate::lines::{LineSplitter, Piece};
use crate::publish::publish_acked;
use crate::retry::GaveUp;

/// Lines in flight between the readers and the coalescer, per job.
const CHANNEL_PIECES: usize = 16;

/// Where a job's output goes.
#[derive(Clone)]
pub struct Sink {
    pub js: jetstream::Context,
    /// `mesh.v1.<tenant>.out.<host>.<job>`, also the prefix of every `Nats-Msg-Id`.
    pub subject: String,
    /// Gives up retrying publishes.
    pub stop: CancellationToken,
    /// Signs every record as this agent (`None`: unsigned, see `Node::record_key`).
    pub signer: Option<Arc<RecordKey>>,
}

/// How a job's output was stored.
#[derive(Debug, Default)]
pub struct Report {
    pub totals: Totals,
    /// The whole output, if it fit the inline limit.
    pub inline: Option<Vec<u8>>,
    /// False when publishing was abandoned at shutdown: MESH_OUT lacks some of the output.
    pub complete: bool,
}

/// The running output pipeline of one job.
pub struct Output {
    readers: JoinSet<()>,
    pump: JoinHandle<Report>,
}

/// Settings of one job's pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub chunk_bytes: usize,
    pub cap: u64,
    pub coalesce: Duration,
    /// Keep a copy of the output up to this many bytes for the reply.
    pub inline_max: Option<usize>,
}

// === impl Output ===

impl Output {
    /// Starts the readers and the coalescer.
    pub fn start(
        sink: Sink,
        stdout: Option<ChildStdout>,
        stderr: Option<ChildStderr>,
        limits: Limits,
    ) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_PIECES);
        let mut readers = JoinSet::new();
        if let Some(stdout) = stdout {
            let tx = tx.clone();
            readers.spawn(
                read_stream(stdout, OutputStream::Stdout, limits.chunk_bytes, tx).in_current_span(),
            );
        }
        if let Some(stderr) = stderr {
            readers.spawn(
                read_stream(stderr, OutputStream::Stderr, limits.chunk_bytes, tx).in_current_span(),
            );
        }
        let chunker = Chunker::new(limits.chunk_bytes, limits.cap, limits.inline_max);
        let pump = tokio::spawn(pump(rx, chunker, sink, limits.coalesce).in_current_span());
        Self { readers, pump }
    }

    /// Resolves when both streams reached EOF (every process holding them exited or closed
    /// them). Cancel-safe.
    pub async fn readers_done(&mut self) {
        while self.readers.join_next().await.is_some() {}
    }

    /// Stops reading: for pipes that processes outside the job's group still hold open.
    pub fn abort_readers(&mut self) {
        self.readers.abort_all();
    }

    /// Waits until every chunk read so far is acked (or publishing was abandoned).
    pub async fn finish(mut self) -> Report {
        self.readers_done().await;
        match self.pump.await {
            Ok(report) => report,
            Err(e) => {
                warn!(error = %e, "output task failed");
                Report::default()
            }
        }
    }
}

/// Reads one stream into lines until EOF and sends them to the coalescer.
async fn read_stream<R: AsyncRead + Unpin>(
    mut src: R,
    stream: OutputStream,
    chunk_bytes: usize,
    tx: mpsc::Sender<(OutputStream, Piece)>,
) {
    let mut splitter = LineSplitter::new(chunk_bytes);
    let mut pieces = Vec::new();
    loop {
        let buf = splitter.buffer();
        buf.reserve(chunk_bytes);
        match src.read_buf(buf).await {
            Ok(0) => break,
            Ok(_) => {
                splitter.take(&mut pieces);
                for piece in pieces.drain(..) {
                    if tx.send((stream, piece)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(stream = stream.as_str_name(), error = %e, "reading job output failed");
                break;
            }
        }
    }
    if let Some(piece) = splitter.finish() {
        let _ = tx.send((stream, piece)).await;
    }
}

type Publishing = Pin<Box<dyn Future<Output = Result<(), GaveUp>> + Send>>;

/// Coalesces lines into chunks and publishes them, one acked chunk at a time.
async fn pump(
    mut rx: mpsc::Receiver<(OutputStream, Piece)>,
    mut chunker: Chunker,
    sink: Sink,
    coalesce: Duration,
) -> Report {
    let mut input_done = false;
    // When the open chunk must be published even if it is not full.
    let mut deadline: Option<Instant> = None;
    let mut inflight: Option<Publishing> = None;
    let complete = loop {
        if inflight.is_none() {
            let due = input_done || deadline.is_some_and(|d| d <= Instant::now());
            if !chunker.has_sealed() && chunker.open_len() > 0 && due {
                chunker.flush();
                deadline = None;
            }
            if let Some(chunk) = chunker.pop_sealed() {
                inflight = Some(Box::pin(publish_chunk(sink.clone(), chunk)));
            } else if input_done && chunker.is_empty() {
                break true;
            }
        }
        tokio::select! {
            piece = rx.recv(), if !input_done && !chunker.has_sealed() => match piece {
                Some((stream, piece)) => {
                    chunker.push(stream, piece);
                    if chunker.open_len() == 0 {
                        deadline = None;
                    } else if deadline.is_none() {
                        deadline = Some(Instant::now() + coalesce);
                    }
                }
                None => input_done = true,
            },
            result = async {
                match inflight.as_mut() {
                    Some(publishing) => publishing.await,
                    None => std::future::pending().await,
                }
            }, if inflight.is_some() => {
                inflight = None;
                if result.is_err() {
                    break false;
                }
            },
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)),
                if inflight.is_none() && deadline.is_some() && chunker.open_len() > 0 => {}
        }
    };
    Report {
        totals: chunker.totals(),
        inline: chunker.take_inline(),
        complete,
    }
}

async fn publish_chunk(sink: Sink, chunk: Chunk) -> Result<(), GaveUp> {
    // The subject names tenant, host and job: a fan-out gives every host the same job id, and
    // the stream dedupes by message id across all subjects.
    let msg_id = format!("{}.{}", sink.subject, chunk.index);
    let record = pb::OutputRecord {
        body: Some(pb::output_record::Body::Chunk(pb::OutputChunk {
            index: chunk.index,
            stream: chunk.stream as i32,
            first_line: chunk.first_line,
            line_count: chunk.line_count,
            data: chunk.data,
        })),
    };
    publish_acked(
        &sink.js,
        &sink.subject,
        &msg_id,
        &record,
        sink.signer.as_deref(),
        &sink.stop,
    )
    .await
}

/// Publishes the job's last record, `<job>.exit`, carrying its final status.
pub async fn publish_exit(sink: &Sink, status: &pb::JobStatus) -> Result<(), GaveUp> {
    let record = pb::OutputRecord {
        body: Some(pb::output_record::Body::Exit(pb::ExitRecord {
            status: Some(status.clone()),
        })),
    };
    let msg_id = format!("{}.exit", sink.subject);
    publish_acked(
        &sink.js,
        &sink.subject,
        &msg_id,
        &record,
        sink.signer.as_deref(),
        &sink.stop,
    )
    .await
}
