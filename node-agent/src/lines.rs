//! Splits one output stream of a child into whole lines, cutting lines longer than the chunk size.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// Whole lines of one stream, taken from the read buffer without copying.
///
/// A piece of several lines holds only lines that end in `\n`. A line cut because it was too
/// long, and the unterminated last line of a stream, always travel alone (`lines == 1`), so the
/// coalescer can split a piece at its newlines without ever mistaking a cut for a line end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub data: Bytes,
    pub lines: u32,
}

/// Accumulates the bytes read from one stream and hands out whole lines.
#[derive(Debug)]
pub struct LineSplitter {
    /// Bytes read and not handed out yet: at most one partial line of at most `max_line` bytes
    /// between calls to [`LineSplitter::take`].
    buf: BytesMut,
    /// Longest line content (without its `\n`) before the line is cut.
    max_line: usize,
    /// Scratch list of the pieces found by one `take`, kept to reuse its allocation.
    ranges: Vec<(Range<usize>, u32)>,
}

// === impl LineSplitter ===

impl LineSplitter {
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_line: max_line.max(1),
            ranges: Vec::new(),
        }
    }

    /// The buffer to read into; call [`LineSplitter::take`] after each read.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Moves the whole lines in the buffer (and the first `max_line` bytes of a partial line that
    /// has grown past `max_line`) into `out`, leaving only a short partial line behind.
    pub fn take(&mut self, out: &mut Vec<Piece>) {
        let max = self.max_line;
        let buf = &self.buf[..];
        self.ranges.clear();
        let mut batch_start = 0;
        let mut batch_lines = 0u32;
        let mut pos = 0;
        let consumed = loop {
            match memchr::memchr(b'\n', &buf[pos..]) {
                Some(i) => {
                    let newline = pos + i;
                    if newline - pos > max {
                        if batch_lines > 0 {
                            self.ranges.push((batch_start..pos, batch_lines));
                        }
                        let mut start = pos;
                        while newline - start > max {
                            self.ranges.push((start..start + max, 1));
                            start += max;
                        }
                        // The rest of the long line, with its `\n`, opens the next batch.
                        batch_start = start;
                        batch_lines = 1;
                    } else {
                        if batch_lines == 0 {
                            batch_start = pos;
                        }
                        batch_lines += 1;
                    }
                    pos = newline + 1;
                }
                None => {
                    if batch_lines > 0 {
                        self.ranges.push((batch_start..pos, batch_lines));
                    }
                    let mut start = pos;
                    while buf.len() - start > max {
                        self.ranges.push((start..start + max, 1));
                        start += max;
                    }
                    break start;
                }
            }
        };
        if consumed == 0 {
            return;
        }
        let data = self.buf.split_to(consumed).freeze();
        out.extend(self.ranges.drain(..).map(|(range, lines)| Piece {
            data: data.slice(range),
            lines,
        }));
    }

    /// The stream ended: the partial line left, if any, as a line of its own.
    pub fn finish(&mut self) -> Option<Piece> {
        if self.buf.is_empty() {
            return None;
        }
        Some(Piece {
            data: self.buf.split().freeze(),
            lines: 1,
        })
    }
}

/// Number of `\n` in `data`.
pub fn count_newlines(data: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', data).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `inputs` one read at a time and returns every piece as (text, lines).
    fn split(max: usize, inputs: &[&str]) -> Vec<(String, u32)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for input in inputs {
            s.buffer().extend_from_slice(input.as_bytes());
            s.take(&mut out);
        }
        out.extend(s.finish());
        out.into_iter()
            .map(|p| (String::from_utf8(p.data.to_vec()).expect("utf8"), p.lines))
            .collect()
    }

    #[test]
    fn whole_lines_travel_together_and_a_partial_line_waits() {
        assert_eq!(
            split(100, &["a\nbb\ncc", "c\n", "tail"]),
            [
                ("a\nbb\n".into(), 2),
                ("ccc\n".into(), 1),
                ("tail".into(), 1)
            ]
        );
    }

    #[test]
    fn a_long_partial_line_is_cut_at_max() {
        assert_eq!(
            split(4, &["abcdefghij", "k\n"]),
            [("abcd".into(), 1), ("efgh".into(), 1), ("ijk\n".into(), 1)]
        );
    }

    #[test]
    fn a_long_complete_line_is_cut_and_its_tail_joins_the_next_lines() {
        assert_eq!(
            split(4, &["x\nabcdefgh\ny\n"]),
            [
                ("x\n".into(), 1),
                ("abcd".into(), 1),
                ("efgh\ny\n".into(), 2)
            ]
        );
    }

    #[test]
    fn a_line_of_exactly_max_stays_whole() {
        assert_eq!(split(4, &["abcd", "\n"]), [("abcd\n".into(), 1)]);
    }

    #[test]
    fn lines_are_never_lost_or_invented() {
        let text: String = (0..500).map(|i| "x".repeat(i % 37) + "\n").collect();
        for max in [1, 3, 16, 1000] {
            for step in [1, 7, 64, 4096] {
                let reads: Vec<&str> = text
                    .as_bytes()
                    .chunks(step)
                    .map(|c| std::str::from_utf8(c).expect("ascii"))
                    .collect();
                let pieces = split(max, &reads);
                let joined: String = pieces.iter().map(|(t, _)| t.as_str()).collect();
                assert_eq!(joined, text, "max {max} step {step}");
                for (t, lines) in &pieces {
                    if *lines > 1 {
                        assert_eq!(count_newlines(t.as_bytes()), *lines as usize);
                        assert!(t.ends_with('\n'));
                    }
                    for line in t.split_inclusive('\n') {
                        assert!(line.trim_end_matches('\n').len() <= max);
                    }
                }
            }
        }
    }
}
