//! Streams a job's stdout and stderr into MESH_OUT: two readers, one coalescer, acked publishes.
//!
//! The readers split each stream into lines and send them, in the order they were read, through
//! a bounded channel to the job's coalescer. When NATS is slow the channel fills, the readers stop
//! reading, and the child blocks on its next write: output is delayed, never lost. The coalescer
//! publishes one chunk at a time and awaits its ack before the next (stream order = line order,
//! even across a NATS restart); while an ack is pending, more output gathers in the next chunk.
//!
//! With `output_redaction` the readers redact every piece before it leaves them. A piece holds
//! whole lines (a line longer than `chunk_bytes` comes in `chunk_bytes` parts), so a secret
//! within one line — or within one part of an overlong line — is always seen whole; a secret
//! that spans lines (a private key) is seen whole when its lines arrive in one read, and line
//! by line otherwise.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use execmesh_proto::pb::{self, OutputStream};
use execmesh_proto::redact::Redactor;
use execmesh_proto::signing::RecordKey;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;
use tracing::{Instrument, info_span, warn};

use crate::chunker::{Chunk, Chunker, QuotaRoom, Totals};
use crate::lines::{LineSplitter, Piece, count_newlines};
use crate::publish::publish_acked;
use crate::quota::Quotas;
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

// === impl Sink ===

impl Sink {
    /// Publishes one record of the job as `msg_id` (signed when the agent signs), retrying
    /// until it is acknowledged or the sink is stopped.
    async fn publish(&self, msg_id: &str, record: &pb::OutputRecord) -> Result<(), GaveUp> {
        publish_acked(
            &self.js,
            &self.subject,
            msg_id,
            record,
            self.signer.as_deref(),
            &self.stop,
        )
        .await
    }
}

/// One of a job's output streams: a local child's pipe or a remote process's channel.
pub type Pipe = Box<dyn AsyncRead + Send + Unpin>;

/// How a job's output was stored.
#[derive(Debug, Default)]
pub struct Report {
    pub totals: Totals,
    /// The whole output, if it fit the inline limit.
    pub inline: Option<Vec<u8>>,
    /// False when publishing was abandoned at shutdown: MESH_OUT lacks some of the output.
    pub complete: bool,
    /// When the job last wrote output (unix ms); 0 if it wrote none.
    pub last_output_at_ms: u64,
}

/// The quotas a job's output counts against, and the user it counts for.
#[derive(Debug, Clone)]
pub struct Charge {
    pub quotas: Arc<Quotas>,
    pub user: String,
}

// === impl Charge ===

impl Charge {
    /// Chunks `piece` within what the user's and the host's quotas have left, and gives back
    /// what the chunker did not keep of it.
    fn push(&self, chunker: &mut Chunker, stream: OutputStream, piece: Piece) {
        if chunker.is_cut() {
            chunker.push(stream, piece, None);
            return;
        }
        let grant = self.quotas.take(&self.user, piece.data.len() as u64);
        let marker = grant
            .short_by
            .map(|limit| (limit, self.quotas.marker(limit, &self.user)));
        let room = marker.as_ref().map(|(limit, marker)| QuotaRoom {
            room: grant.bytes,
            limit: *limit,
            marker,
        });
        let kept = chunker.push(stream, piece, room);
        self.quotas
            .give_back(&self.user, grant.bytes.saturating_sub(kept));
    }
}

/// The running output pipeline of one job.
pub struct Output {
    readers: JoinSet<()>,
    pump: JoinHandle<Report>,
    /// The output stored so far, updated as each chunk is acked.
    progress: watch::Receiver<Progress>,
}

/// How much of a running job's output is stored, for its status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes and lines in acked chunks (as [`Totals`] counts them).
    pub bytes: u64,
    pub lines: u64,
    /// Bytes read past the cap and dropped.
    pub dropped_bytes: u64,
    /// When the job last wrote output (unix ms); 0 before its first.
    pub last_output_at_ms: u64,
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
    /// Starts the readers and the coalescer; with a `redactor`, every piece is redacted before
    /// it is chunked, and what is kept counts against `charge`'s quotas.
    pub fn start(
        sink: Sink,
        stdout: Option<Pipe>,
        stderr: Option<Pipe>,
        limits: Limits,
        redactor: Option<Arc<Redactor>>,
        charge: Charge,
    ) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_PIECES);
        let mut readers = JoinSet::new();
        if let Some(stdout) = stdout {
            let reader = Reader {
                stream: OutputStream::Stdout,
                chunk_bytes: limits.chunk_bytes,
                redactor: redactor.clone(),
                tx: tx.clone(),
            };
            readers.spawn(reader.read(stdout).in_current_span());
        }
        if let Some(stderr) = stderr {
            let reader = Reader {
                stream: OutputStream::Stderr,
                chunk_bytes: limits.chunk_bytes,
                redactor,
                tx,
            };
            readers.spawn(reader.read(stderr).in_current_span());
        }
        let chunker = Chunker::new(limits.chunk_bytes, limits.cap, limits.inline_max);
        let (progress_tx, progress) = watch::channel(Progress::default());
        // Publishing is a span of its own under the job's: a trace shows how long the output
        // took to be stored, apart from how long the command ran.
        let span = info_span!(
            "output",
            chunks = Empty,
            bytes = Empty,
            lines = Empty,
            dropped_bytes = Empty,
            complete = Empty
        );
        let pump = tokio::spawn(
            pump(rx, chunker, charge, sink, limits.coalesce, progress_tx).instrument(span),
        );
        Self {
            readers,
            pump,
            progress,
        }
    }

    /// The output stored so far, changed as each chunk is acked.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
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

/// One stream's reader: splits it into lines, redacts them if asked, sends them on.
struct Reader {
    stream: OutputStream,
    chunk_bytes: usize,
    redactor: Option<Arc<Redactor>>,
    tx: mpsc::Sender<(OutputStream, Piece)>,
}

impl Reader {
    /// Reads the stream into lines until EOF and sends them to the coalescer.
    async fn read<R: AsyncRead + Unpin>(self, mut src: R) {
        let mut splitter = LineSplitter::new(self.chunk_bytes);
        let mut pieces = Vec::new();
        loop {
            let buf = splitter.buffer();
            buf.reserve(self.chunk_bytes);
            match src.read_buf(buf).await {
                Ok(0) => break,
                Ok(_) => {
                    splitter.take(&mut pieces);
                    for piece in pieces.drain(..) {
                        if !self.send(piece).await {
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(stream = self.stream.as_str_name(), error = %e, "reading job output failed");
                    break;
                }
            }
        }
        if let Some(piece) = splitter.finish() {
            self.send(piece).await;
        }
    }

    /// Sends one piece (redacted, when asked); false once the coalescer is gone.
    async fn send(&self, piece: Piece) -> bool {
        let piece = match &self.redactor {
            Some(redactor) => redact_piece(redactor, piece),
            None => piece,
        };
        self.tx.send((self.stream, piece)).await.is_ok()
    }
}

/// `piece` with its secrets redacted. The lines are counted again (a private key block becomes
/// one marker), and a piece that ended a line still does: whole-line pieces stay whole lines.
pub fn redact_piece(redactor: &Redactor, piece: Piece) -> Piece {
    let redacted = match redactor.bytes(&piece.data) {
        Cow::Borrowed(_) => return piece,
        Cow::Owned(data) => data,
    };
    let mut data = redacted;
    if piece.data.ends_with(b"\n") && !data.ends_with(b"\n") {
        data.push(b'\n');
    }
    let newlines = count_newlines(&data);
    let lines = if data.ends_with(b"\n") {
        newlines
    } else {
        newlines + 1
    };
    Piece {
        data: data.into(),
        lines: u32::try_from(lines).unwrap_or(u32::MAX).max(1),
    }
}

type Publishing = Pin<Box<dyn Future<Output = Result<(), GaveUp>> + Send>>;

/// Coalesces lines into chunks and publishes them, one acked chunk at a time.
async fn pump(
    mut rx: mpsc::Receiver<(OutputStream, Piece)>,
    mut chunker: Chunker,
    charge: Charge,
    sink: Sink,
    coalesce: Duration,
    progress: watch::Sender<Progress>,
) -> Report {
    let mut input_done = false;
    let mut last_output_at_ms = 0;
    // When the open chunk must be published even if it is not full.
    let mut deadline: Option<Instant> = None;
    let mut inflight: Option<Publishing> = None;
    // Chunks acked, for the span.
    let mut published = 0u64;
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
                    last_output_at_ms = execmesh_proto::now_ms();
                    charge.push(&mut chunker, stream, piece);
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
                published += 1;
                let totals = chunker.totals();
                progress.send_replace(Progress {
                    bytes: totals.bytes,
                    lines: totals.lines,
                    dropped_bytes: totals.dropped_bytes,
                    last_output_at_ms,
                });
            },
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)),
                if inflight.is_none() && deadline.is_some() && chunker.open_len() > 0 => {}
        }
    };
    let totals = chunker.totals();
    let span = tracing::Span::current();
    span.record("chunks", published);
    span.record("bytes", totals.bytes);
    span.record("lines", totals.lines);
    span.record("dropped_bytes", totals.dropped_bytes);
    span.record("complete", complete);
    Report {
        totals: chunker.totals(),
        inline: chunker.take_inline(),
        complete,
        last_output_at_ms,
    }
}

async fn publish_chunk(sink: Sink, chunk: Chunk) -> Result<(), GaveUp> {
    // The subject names tenant, host and job: a fan-out gives every host the same job id, and
    // the stream dedupes by message id across all subjects.
    let msg_id = format!("{}.{}", sink.subject, chunk.index);
    let stream = match chunk.stream {
        pb::OutputStream::Stdout => "stdout",
        pb::OutputStream::Stderr => "stderr",
        pb::OutputStream::Agent | pb::OutputStream::Unspecified => "agent",
    };
    crate::metrics::output(stream, chunk.data.len());
    let record = pb::OutputRecord {
        body: Some(pb::output_record::Body::Chunk(pb::OutputChunk {
            index: chunk.index,
            stream: chunk.stream as i32,
            first_line: chunk.first_line,
            line_count: chunk.line_count,
            data: chunk.data,
        })),
    };
    sink.publish(&msg_id, &record).await
}

/// Publishes the job's last record, `<job>.exit`, carrying its final status.
pub async fn publish_exit(sink: &Sink, status: &pb::JobStatus) -> Result<(), GaveUp> {
    let record = pb::OutputRecord {
        body: Some(pb::output_record::Body::Exit(pb::ExitRecord {
            status: Some(status.clone()),
        })),
    };
    let msg_id = format!("{}.exit", sink.subject);
    sink.publish(&msg_id, &record).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str, lines: u32) -> Piece {
        Piece {
            data: text.to_string().into(),
            lines,
        }
    }

    #[test]
    fn redacted_pieces_keep_their_lines_whole_and_counted() {
        let r = Redactor::builtin();
        let p = redact_piece(r, piece("ok\nDB_PASS=hunter2 ./run\nbye\n", 3));
        assert_eq!(&p.data[..], b"ok\nDB_PASS=[redacted] ./run\nbye\n");
        assert_eq!(p.lines, 3);

        // A key block becomes one line; the piece still ends its last line.
        let key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n";
        let p = redact_piece(r, piece(key, 2));
        assert_eq!(&p.data[..], b"-----BEGIN PRIVATE KEY-----[redacted]\n");
        assert_eq!(p.lines, 1);

        // A cut part of a long line, or an unterminated last line, stays one line.
        let p = redact_piece(r, piece("token=abc123", 1));
        assert_eq!((&p.data[..], p.lines), (&b"token=[redacted]"[..], 1));

        // Nothing to redact: the very same bytes.
        let original = piece("plain\n", 1);
        let p = redact_piece(r, original.clone());
        assert_eq!(p, original);
    }
}
