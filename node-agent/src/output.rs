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
//! within one line — or within one part of an overlong line — is always seen whole. The one
//! secret that spans lines, a private key block, is held back from its opening line to its
//! closing one (bounded in bytes and time, see [`Held`]) and redacted whole, however the reads
//! fell.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use execmesh_proto::pb::{self, OutputStream};
use execmesh_proto::redact::{Redactor, ends_inside_private_key};
use execmesh_proto::signing::RecordKey;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until, timeout_at};
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
        let mut held = Held::default();
        loop {
            let buf = splitter.buffer();
            buf.reserve(self.chunk_bytes);
            let read = match held.until {
                // `read_buf` is cancel safe: a read cut short by the deadline took nothing.
                Some(deadline) => match timeout_at(deadline, src.read_buf(buf)).await {
                    Ok(read) => read,
                    Err(_) => {
                        if !self.send_all([held.release(), None]).await {
                            return;
                        }
                        continue;
                    }
                },
                None => src.read_buf(buf).await,
            };
            match read {
                Ok(0) => break,
                Ok(_) => {
                    splitter.take(&mut pieces);
                    for piece in pieces.drain(..) {
                        if !self.offer(&mut held, piece).await {
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
            self.offer(&mut held, piece).await;
        }
        self.send_all([held.release(), None]).await;
    }

    /// Sends `piece` on, or holds it while it leaves a private key block open (only when
    /// redacting); false once the coalescer is gone.
    async fn offer(&self, held: &mut Held, piece: Piece) -> bool {
        if self.redactor.is_none() {
            return self.send(piece).await;
        }
        self.send_all(held.offer(piece, Instant::now())).await
    }

    async fn send_all(&self, pieces: [Option<Piece>; 2]) -> bool {
        for piece in pieces.into_iter().flatten() {
            if !self.send(piece).await {
                return false;
            }
        }
        true
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

/// Most output held back while a private key block is open: a PEM RSA key of 8192 bits is
/// about 6.3 KB. Past it the block is redacted from its opening line to the end of what is held,
/// and its remaining lines one by one.
const MAX_HELD_BYTES: usize = 16 * 1024;
/// Longest a private key block's lines are held back waiting for its closing line: a program
/// that prints a key writes it at once, and one that prints an opening line alone (a `grep` for
/// it) is not kept waiting for long.
const MAX_HOLD: Duration = Duration::from_secs(2);

/// Whole lines held back, while redacting, from a piece that opens a private key block until
/// the piece that closes it: the block is then redacted as one, whichever reads its lines
/// arrived in (a shell prints line by line; a read can fall between).
#[derive(Debug, Default)]
struct Held {
    data: Vec<u8>,
    lines: u32,
    /// When what is held goes on even if the block is still open.
    until: Option<Instant>,
}

// === impl Held ===

impl Held {
    /// Takes `piece`; gives back what is to be sent now, in order.
    fn offer(&mut self, piece: Piece, now: Instant) -> [Option<Piece>; 2] {
        // A cut part of an overlong line, or an unterminated last line, travels alone.
        let whole_lines = piece.data.ends_with(b"\n");
        if self.data.is_empty() {
            if whole_lines && ends_inside_private_key(&piece.data) {
                self.data.extend_from_slice(&piece.data);
                self.lines = piece.lines;
                self.until = Some(now + MAX_HOLD);
                return [None, None];
            }
            return [Some(piece), None];
        }
        if !whole_lines {
            return [self.release(), Some(piece)];
        }
        self.data.extend_from_slice(&piece.data);
        self.lines += piece.lines;
        if self.data.len() >= MAX_HELD_BYTES || !ends_inside_private_key(&self.data) {
            return [self.release(), None];
        }
        [None, None]
    }

    /// What is held, as one piece of whole lines.
    fn release(&mut self) -> Option<Piece> {
        self.until = None;
        if self.data.is_empty() {
            return None;
        }
        Some(Piece {
            data: std::mem::take(&mut self.data).into(),
            lines: std::mem::take(&mut self.lines),
        })
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

    const KEY: [&str; 3] = [
        "-----BEGIN PRIVATE KEY-----\n",
        "MIIEvQIBADANBgkq\nhunter2\n",
        "-----END PRIVATE KEY-----\nafter\n",
    ];

    /// A reader that redacts, reading what is written to the stream returned, and the pieces
    /// it sends.
    fn redacting_reader() -> (
        tokio::io::DuplexStream,
        mpsc::Receiver<(OutputStream, Piece)>,
        JoinHandle<()>,
    ) {
        let (write, read) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = mpsc::channel(64);
        let reader = Reader {
            stream: OutputStream::Stdout,
            chunk_bytes: 1024,
            redactor: Some(Arc::new(Redactor::new(&[]).expect("built-in rules"))),
            tx,
        };
        (write, rx, tokio::spawn(reader.read(read)))
    }

    /// Feeds `writes` to a reader that redacts, each write read on its own, and returns the
    /// pieces it sent as (text, lines).
    async fn read_redacted(writes: &[&str]) -> Vec<(String, u32)> {
        let (mut write, mut rx, reading) = redacting_reader();
        for text in writes {
            tokio::io::AsyncWriteExt::write_all(&mut write, text.as_bytes())
                .await
                .expect("duplex write");
            // Lets the reader take this write alone before the next.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(write);
        reading.await.expect("reader");
        let mut pieces = Vec::new();
        while let Some((_, p)) = rx.recv().await {
            pieces.push((String::from_utf8_lossy(&p.data).into_owned(), p.lines));
        }
        pieces
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_block_read_line_by_line_is_redacted_as_if_read_at_once() {
        let at_once = read_redacted(&[&KEY.concat()]).await;
        assert_eq!(
            at_once,
            [(
                "-----BEGIN PRIVATE KEY-----[redacted]-----END PRIVATE KEY-----\nafter\n"
                    .to_string(),
                2
            )]
        );
        assert_eq!(read_redacted(&KEY).await, at_once);

        // Lines before the block go on at once; a block opened and closed in one read is
        // not held.
        let pieces = read_redacted(&[
            "ok\n",
            "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n",
        ])
        .await;
        assert_eq!(
            pieces,
            [
                ("ok\n".to_string(), 1),
                (
                    "-----BEGIN PRIVATE KEY-----[redacted]-----END PRIVATE KEY-----\n".to_string(),
                    1
                ),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_key_block_is_held_only_so_long() {
        // Time stands still while the reader waits, so the hold's deadline is what passes.
        let (mut write, mut rx, reading) = redacting_reader();
        let started = Instant::now();
        tokio::io::AsyncWriteExt::write_all(&mut write, KEY[0].as_bytes())
            .await
            .expect("duplex write");
        let (_, first) = rx.recv().await.expect("the held line");
        assert_eq!(&first.data[..], b"-----BEGIN PRIVATE KEY-----[redacted]\n");
        assert_eq!(started.elapsed(), MAX_HOLD);
        drop(write);
        reading.await.expect("reader");
    }

    #[test]
    fn held_lines_go_on_at_the_byte_bound_and_before_a_cut_line() {
        let now = Instant::now();
        let mut held = Held::default();
        assert_eq!(held.offer(piece(KEY[0], 1), now), [None, None]);
        let body = format!("{}\n", "A".repeat(63));
        let mut released = None;
        for _ in 0..=MAX_HELD_BYTES / body.len() {
            let [first, second] = held.offer(piece(&body, 1), now);
            assert_eq!(second, None);
            if first.is_some() {
                released = first;
                break;
            }
        }
        let released = released.expect("released at the bound");
        assert!(
            released.data.len() >= MAX_HELD_BYTES,
            "{}",
            released.data.len()
        );
        assert_eq!(released.lines as usize, count_newlines(&released.data));
        assert!(held.until.is_none());

        // A cut part of a long line is never merged: what is held goes first, then it alone.
        assert_eq!(held.offer(piece(KEY[0], 1), now), [None, None]);
        let [first, second] = held.offer(piece("AAAA", 1), now);
        assert_eq!(first, Some(piece(KEY[0], 1)));
        assert_eq!(second, Some(piece("AAAA", 1)));
    }
}
