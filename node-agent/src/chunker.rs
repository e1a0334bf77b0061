//! Coalesces a job's lines into numbered output chunks of one stream each, under the byte cap and the quotas.
//!
//! Pure bookkeeping, no I/O or clocks: the output task decides when to [`Chunker::flush`].

use std::collections::VecDeque;

use execmesh_proto::pb::{OutputLimit, OutputStream};

use crate::lines::{Piece, count_newlines};

/// One output chunk, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Position within the job, from 0, without gaps.
    pub index: u64,
    pub stream: OutputStream,
    /// Job-wide number (both streams) of the first line in `data`.
    pub first_line: u64,
    pub line_count: u32,
    pub data: Vec<u8>,
}

/// What a job's output amounted to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Bytes in chunks (including the agent's cap marker).
    pub bytes: u64,
    /// Lines in chunks.
    pub lines: u64,
    /// Bytes read past the cap (or a quota) and dropped.
    pub dropped_bytes: u64,
    /// The limit that cut the output off, once one did.
    pub dropped_by: Option<OutputLimit>,
    /// Chunks made.
    pub chunks: u64,
}

/// Turns pieces (whole lines of one stream) into chunks.
#[derive(Debug)]
pub struct Chunker {
    /// A chunk is sealed when it reaches this size.
    chunk_bytes: usize,
    /// Bytes of output kept per job.
    cap: u64,
    /// Set once the cap or a quota was reached: everything after is counted and dropped.
    cut: bool,
    next_index: u64,
    totals: Totals,
    /// The chunk being filled.
    open: Option<Open>,
    /// Chunks complete and not yet taken.
    sealed: VecDeque<Chunk>,
    /// Copy of the output for an inline reply; `None` once it outgrew its limit (or was not
    /// wanted).
    inline: Option<Vec<u8>>,
    inline_max: usize,
}

#[derive(Debug)]
struct Open {
    stream: OutputStream,
    first_line: u64,
    lines: u32,
    data: Vec<u8>,
}

/// What a quota lets one piece keep, and the marker written where it cuts the output off.
#[derive(Debug, Clone, Copy)]
pub struct QuotaRoom<'a> {
    pub room: u64,
    pub limit: OutputLimit,
    pub marker: &'a str,
}

/// The line the agent writes into the output where the cap cut it off.
pub fn cap_marker(cap: u64) -> String {
    format!(
        "[execmesh: output cap of {cap} bytes reached; further output is counted and dropped]\n"
    )
}

// === impl Chunker ===

impl Chunker {
    /// `inline_max`: keep a copy of the output up to that many bytes (`None`: keep none).
    pub fn new(chunk_bytes: usize, cap: u64, inline_max: Option<usize>) -> Self {
        Self {
            chunk_bytes: chunk_bytes.max(1),
            cap,
            cut: false,
            next_index: 0,
            totals: Totals::default(),
            open: None,
            sealed: VecDeque::new(),
            inline: inline_max.map(|_| Vec::new()),
            inline_max: inline_max.unwrap_or(0),
        }
    }

    /// Adds a piece of `stream`, sealing chunks as they fill up or the stream changes; with a
    /// `quota`, the piece keeps at most `quota.room` bytes. Returns the bytes of the piece kept:
    /// past the cap or the quota, the output is cut off with the limit's marker line
    /// (`quota.marker` for a quota) and everything after is counted and dropped.
    pub fn push(
        &mut self,
        stream: OutputStream,
        piece: Piece,
        quota: Option<QuotaRoom<'_>>,
    ) -> u64 {
        let len = piece.data.len() as u64;
        if self.cut {
            self.totals.dropped_bytes += len;
            return 0;
        }
        let cap_room = self.cap.saturating_sub(self.totals.bytes);
        let (room, limit) = match quota {
            Some(q) if q.room < cap_room => (q.room, Some(q)),
            _ => (cap_room, None),
        };
        if len <= room {
            self.append(stream, piece);
            return len;
        }
        // Keep the whole lines that still fit, then the marker, then nothing more.
        self.cut = true;
        self.totals.dropped_by = Some(limit.map_or(OutputLimit::JobCap, |q| q.limit));
        let keep = if piece.lines > 1 {
            whole_lines_within(&piece.data, room as usize)
        } else {
            (0, 0)
        };
        let (kept, dropped_len) = if keep.0 > 0 {
            (
                Some(Piece {
                    data: piece.data.slice(..keep.0),
                    lines: keep.1,
                }),
                len - keep.0 as u64,
            )
        } else {
            (None, len)
        };
        if let Some(kept) = kept {
            self.append(stream, kept);
        }
        self.totals.dropped_bytes += dropped_len;
        let marker = limit.map_or_else(|| cap_marker(self.cap), |q| q.marker.to_string());
        self.append(
            OutputStream::Agent,
            Piece {
                data: marker.into(),
                lines: 1,
            },
        );
        len - dropped_len
    }

    /// Whether the output was cut off: nothing more is kept.
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// Seals the open chunk (its time is up, or the output ended).
    pub fn flush(&mut self) {
        if let Some(open) = self.open.take() {
            self.sealed.push_back(Chunk {
                index: self.next_index,
                stream: open.stream,
                first_line: open.first_line,
                line_count: open.lines,
                data: open.data,
            });
            self.next_index += 1;
            self.totals.chunks += 1;
        }
    }

    /// The oldest sealed chunk.
    pub fn pop_sealed(&mut self) -> Option<Chunk> {
        self.sealed.pop_front()
    }

    pub fn has_sealed(&self) -> bool {
        !self.sealed.is_empty()
    }

    /// Bytes in the chunk being filled.
    pub fn open_len(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.data.len())
    }

    /// Nothing open, nothing sealed.
    pub fn is_empty(&self) -> bool {
        self.open.is_none() && self.sealed.is_empty()
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// The whole output, when it stayed within the inline limit.
    pub fn take_inline(&mut self) -> Option<Vec<u8>> {
        self.inline.take()
    }

    /// Appends a piece the cap allows, splitting it across chunks at line ends when needed.
    fn append(&mut self, stream: OutputStream, mut piece: Piece) {
        loop {
            if self.open.as_ref().is_some_and(|o| o.stream != stream) {
                self.flush();
            }
            let open_len = self.open_len();
            let room = self.chunk_bytes.saturating_sub(open_len);
            if piece.data.len() <= room {
                self.add(stream, &piece.data, piece.lines);
                if self.open_len() >= self.chunk_bytes {
                    self.flush();
                }
                return;
            }
            if piece.lines == 1 {
                if open_len > 0 {
                    self.flush();
                    continue;
                }
                // A single line a little longer than a chunk (content of `max_line` plus `\n`).
                self.add(stream, &piece.data, 1);
                self.flush();
                return;
            }
            let (mut cut, mut lines) = whole_lines_within(&piece.data, room);
            if cut == 0 {
                if open_len > 0 {
                    self.flush();
                    continue;
                }
                // Not even the first line fits an empty chunk: it goes alone.
                cut = memchr::memchr(b'\n', &piece.data).map_or(piece.data.len(), |i| i + 1);
                lines = 1;
            }
            self.add(stream, &piece.data[..cut], lines);
            self.flush();
            piece = Piece {
                data: piece.data.slice(cut..),
                lines: piece.lines - lines,
            };
            if piece.data.is_empty() {
                return;
            }
        }
    }

    fn add(&mut self, stream: OutputStream, data: &[u8], lines: u32) {
        let first_line = self.totals.lines;
        let chunk_bytes = self.chunk_bytes;
        let open = self.open.get_or_insert_with(|| Open {
            stream,
            first_line,
            lines: 0,
            data: Vec::with_capacity(chunk_bytes.max(data.len())),
        });
        open.data.extend_from_slice(data);
        open.lines += lines;
        self.totals.lines += u64::from(lines);
        self.totals.bytes += data.len() as u64;
        if let Some(copy) = &mut self.inline {
            if copy.len() + data.len() <= self.inline_max {
                copy.extend_from_slice(data);
            } else {
                self.inline = None;
            }
        }
    }
}

/// Length and line count of the longest prefix of `data` made of whole lines and at most
/// `limit` bytes long.
fn whole_lines_within(data: &[u8], limit: usize) -> (usize, u32) {
    let mut end = 0;
    let mut lines = 0;
    for i in memchr::memchr_iter(b'\n', data) {
        if i + 1 > limit {
            break;
        }
        end = i + 1;
        lines += 1;
    }
    debug_assert_eq!(count_newlines(&data[..end]), lines as usize);
    (end, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str) -> Piece {
        let lines = count_newlines(text.as_bytes()).max(1) as u32;
        Piece {
            data: text.to_string().into(),
            lines,
        }
    }

    fn drain(c: &mut Chunker) -> Vec<(u64, OutputStream, u64, u32, String)> {
        c.flush();
        std::iter::from_fn(|| c.pop_sealed())
            .map(|ch| {
                let text = String::from_utf8(ch.data).expect("utf8");
                (ch.index, ch.stream, ch.first_line, ch.line_count, text)
            })
            .collect()
    }

    use OutputStream::{Agent, Stderr, Stdout};

    #[test]
    fn a_stream_change_starts_a_new_chunk_and_lines_count_across_streams() {
        let mut c = Chunker::new(1024, u64::MAX, None);
        c.push(Stdout, piece("a\nb\n"), None);
        c.push(Stderr, piece("e\n"), None);
        c.push(Stdout, piece("c\n"), None);
        assert_eq!(
            drain(&mut c),
            [
                (0, Stdout, 0, 2, "a\nb\n".into()),
                (1, Stderr, 2, 1, "e\n".into()),
                (2, Stdout, 3, 1, "c\n".into()),
            ]
        );
        assert_eq!(c.totals().lines, 4);
        assert_eq!(c.totals().chunks, 3);
    }

    #[test]
    fn a_full_chunk_is_sealed_at_a_line_end() {
        let mut c = Chunker::new(8, u64::MAX, None);
        c.push(Stdout, piece("aaa\nbbb\nccc\n"), None);
        assert!(c.has_sealed(), "the first 8 bytes make a full chunk");
        assert_eq!(
            drain(&mut c),
            [
                (0, Stdout, 0, 2, "aaa\nbbb\n".into()),
                (1, Stdout, 2, 1, "ccc\n".into()),
            ]
        );
    }

    #[test]
    fn pieces_coalesce_until_flushed() {
        let mut c = Chunker::new(100, u64::MAX, None);
        c.push(Stdout, piece("a\n"), None);
        c.push(Stdout, piece("b\n"), None);
        assert!(!c.has_sealed());
        assert_eq!(c.open_len(), 4);
        assert_eq!(drain(&mut c), [(0, Stdout, 0, 2, "a\nb\n".into())]);
        assert!(c.is_empty());
    }

    #[test]
    fn a_quota_smaller_than_the_cap_cuts_with_its_own_marker_and_limit() {
        let mut c = Chunker::new(100, 1000, None);
        let quota = |room| {
            Some(QuotaRoom {
                room,
                limit: OutputLimit::UserQuota,
                marker: "[quota]\n",
            })
        };
        assert_eq!(c.push(Stdout, piece("ab\n"), quota(10)), 3);
        assert_eq!(c.push(Stdout, piece("cd\nef\n"), quota(4)), 3);
        assert_eq!(c.push(Stdout, piece("gh\n"), quota(100)), 0);
        let chunks = drain(&mut c);
        assert_eq!(chunks[0], (0, Stdout, 0, 2, "ab\ncd\n".into()));
        assert_eq!(chunks[1], (1, Agent, 2, 1, "[quota]\n".into()));
        let t = c.totals();
        assert_eq!(
            (t.dropped_bytes, t.dropped_by),
            (3 + 3, Some(OutputLimit::UserQuota))
        );
    }

    #[test]
    fn output_past_the_cap_is_counted_dropped_and_marked_once() {
        let mut c = Chunker::new(100, 5, Some(1000));
        c.push(Stdout, piece("ab\ncd\nef\n"), None);
        c.push(Stdout, piece("gh\n"), None);
        c.push(Stderr, piece("ij\n"), None);
        let chunks = drain(&mut c);
        assert_eq!(chunks[0], (0, Stdout, 0, 1, "ab\n".into()));
        assert_eq!(chunks[1], (1, Agent, 1, 1, cap_marker(5)));
        assert_eq!(chunks.len(), 2);
        let t = c.totals();
        assert_eq!(t.dropped_bytes, 6 + 3 + 3);
        assert_eq!(t.dropped_by, Some(OutputLimit::JobCap));
        assert_eq!(t.lines, 2);
        assert_eq!(t.bytes, 3 + cap_marker(5).len() as u64);
        let inline = c.take_inline().expect("fits");
        assert_eq!(
            String::from_utf8(inline).expect("utf8"),
            format!("ab\n{}", cap_marker(5))
        );
    }

    #[test]
    fn inline_copy_keeps_line_order_and_gives_up_past_its_limit() {
        let mut c = Chunker::new(100, u64::MAX, Some(6));
        c.push(Stdout, piece("a\n"), None);
        c.push(Stderr, piece("b\n"), None);
        assert_eq!(c.take_inline().as_deref(), Some(&b"a\nb\n"[..]));

        let mut c = Chunker::new(100, u64::MAX, Some(3));
        c.push(Stdout, piece("a\n"), None);
        c.push(Stderr, piece("b\n"), None);
        assert_eq!(c.take_inline(), None);
    }

    #[test]
    fn an_overlong_single_line_gets_a_chunk_of_its_own() {
        let mut c = Chunker::new(4, u64::MAX, None);
        c.push(Stdout, piece("x\n"), None);
        c.push(Stdout, piece("abcd\n"), None);
        assert_eq!(
            drain(&mut c),
            [
                (0, Stdout, 0, 1, "x\n".into()),
                (1, Stdout, 1, 1, "abcd\n".into()),
            ]
        );
    }

    #[test]
    fn chunks_reassemble_the_output_exactly() {
        let text: String = (0..300).map(|i| format!("line {i}\n")).collect();
        let mut c = Chunker::new(64, u64::MAX, None);
        for part in text.as_bytes().chunks(50) {
            // Feed whole-line pieces as the splitter would.
            let mut s = crate::lines::LineSplitter::new(64);
            s.buffer().extend_from_slice(part);
            let mut pieces = Vec::new();
            s.take(&mut pieces);
            pieces.extend(s.finish());
            for p in pieces {
                c.push(Stdout, p, None);
            }
        }
        let chunks = drain(&mut c);
        let mut next_line = 0;
        for (i, ch) in chunks.iter().enumerate() {
            assert_eq!(ch.0, i as u64);
            assert_eq!(ch.2, next_line);
            assert!(ch.4.len() <= 64);
            next_line += u64::from(ch.3);
        }
        let joined: String = chunks.iter().map(|c| c.4.as_str()).collect();
        assert_eq!(joined, text);
    }
}
