//! `FileRead`: a page of a text file from a line start, or raw bytes, at the same cost anywhere in the file.
//!
//! A page starts where the previous one ended (`next_offset`), found with one seek: nothing
//! before the offset is read again, except the first 8 KiB that decide whether the file is
//! binary (a NUL byte there, as ripgrep and git judge it).

use std::fs::{File, Metadata};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use execmesh_proto::pb;

use super::clamp::{self, MAX_MARKER_BYTES};
use super::error::FileError;
use super::{Budget, Files};

/// Bytes at the start of a file searched for a NUL byte to call it binary.
pub const BINARY_SNIFF_BYTES: usize = 8 * 1024;
/// Lines of a page when the request names no limit.
pub const DEFAULT_MAX_LINES: u32 = 1000;
/// Most lines of one page.
pub const MAX_LINES: u32 = 100_000;
/// Bytes of a page when the request names no limit.
pub const DEFAULT_MAX_BYTES: u32 = 64 * 1024;
/// Longest line kept whole when the request names no limit.
pub const DEFAULT_MAX_LINE_BYTES: u32 = 4096;
/// Smallest page, so that a clamped line with its marker fits.
const MIN_PAGE_BYTES: usize = 128;
/// Read-ahead of the page reader.
const READ_BUFFER: usize = 64 * 1024;

/// One page of lines.
#[derive(Debug, Default, PartialEq)]
pub struct Page {
    pub text: String,
    pub lines: u32,
    pub next_offset: u64,
    pub eof: bool,
    pub clamped: u32,
    /// Bytes read from the file for this page (for tests: the cost must not grow with the offset).
    pub scanned: u64,
}

/// What a text page may hold.
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    pub max_lines: u32,
    pub max_bytes: usize,
    pub max_line_bytes: usize,
}

/// Answers a `FileRead`.
pub fn read(
    files: &Files,
    req: pb::FileRead,
    budget: &Budget,
) -> Result<pb::FileReadReply, FileError> {
    let raw = req.path.as_str();
    let (real, file, meta) = open_regular(files, raw)?;
    let max_bytes = page_bytes(&req, &files.limits, budget);
    page_reply(&file, &req, &real, identity(&meta), meta.len(), max_bytes)
}

/// The rest of a `FileRead` once the file is open and checked, wherever it lies: raw bytes,
/// or a text page after the binary and offset checks. `real` and `identity` are the file's,
/// `size` its length.
pub fn page_reply(
    file: &impl Source,
    req: &pb::FileRead,
    real: &Path,
    identity: pb::FileIdentity,
    size: u64,
    max_bytes: usize,
) -> Result<pb::FileReadReply, FileError> {
    let raw = req.path.as_str();
    let mut reply = pb::FileReadReply {
        path: real.display().to_string(),
        identity: Some(identity),
        first_line: req.line,
        next_line: req.line,
        ..Default::default()
    };
    if req.raw {
        let data = file
            .bytes_at(req.offset, max_bytes)
            .map_err(|e| FileError::io(raw, "reading", e))?;
        reply.next_offset = req.offset + data.len() as u64;
        reply.eof = reply.next_offset >= size;
        reply.data = data;
        return Ok(reply);
    }

    if is_binary(file).map_err(|e| FileError::io(raw, "reading", e))? {
        return Err(FileError::Binary { path: raw.into() });
    }
    if req.offset > size {
        return Err(FileError::invalid(
            raw,
            format!(
                "offset {} is past the end of the file ({size} bytes): it shrank or was replaced; start again at 0",
                req.offset
            ),
        ));
    }
    if req.offset > 0 {
        let before = file
            .bytes_at(req.offset - 1, 1)
            .map_err(|e| FileError::io(raw, "reading", e))?;
        if before != b"\n" {
            return Err(FileError::invalid(
                raw,
                format!(
                    "offset {} is not the start of a line; use 0 or a previous reply's next_offset",
                    req.offset
                ),
            ));
        }
    }
    let limits = PageLimits {
        max_lines: match req.max_lines {
            0 => DEFAULT_MAX_LINES,
            n => n.min(MAX_LINES),
        },
        max_bytes,
        max_line_bytes: match req.max_line_bytes {
            0 => DEFAULT_MAX_LINE_BYTES as usize,
            n => n as usize,
        },
    };
    let page =
        page(file, req.offset, size, limits).map_err(|e| FileError::io(raw, "reading", e))?;
    reply.text = page.text;
    reply.lines = page.lines;
    reply.next_offset = page.next_offset;
    reply.next_line = req.line + u64::from(page.lines);
    reply.eof = page.eof;
    reply.clamped = page.clamped;
    Ok(reply)
}

/// The most bytes one page may carry: the request's, within the host's read limit and the
/// reply's byte budget.
pub fn page_bytes(req: &pb::FileRead, limits: &super::Limits, budget: &Budget) -> usize {
    let cap = limits.max_read_bytes.min(budget.reply_bytes as u64).max(1) as usize;
    match req.max_bytes {
        0 => DEFAULT_MAX_BYTES as usize,
        n => n as usize,
    }
    .min(cap)
}

/// A file pages are read from: a local file, or one on an SSH target read over SFTP.
pub trait Source {
    /// Up to `len` bytes at `offset`, fewer only at the end of the file.
    fn bytes_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// The file's bytes from `offset` on, as a stream.
    fn stream_from(&self, offset: u64) -> io::Result<impl Read + '_>;
}

impl Source for File {
    fn bytes_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        read_at(self, offset, len)
    }

    fn stream_from(&self, offset: u64) -> io::Result<impl Read + '_> {
        let mut handle = self;
        handle.seek(SeekFrom::Start(offset))?;
        Ok(handle)
    }
}

/// Opens `raw` for reading through the roots' checks: its real path, the file and its status.
/// Refuses what is not a regular file (directories, FIFOs, devices, sockets).
pub fn open_regular(files: &Files, raw: &str) -> Result<(PathBuf, File, Metadata), FileError> {
    let real = files.roots.resolve(raw)?;
    let file = files.roots.open_file(&real, raw)?;
    let meta = file
        .metadata()
        .map_err(|e| FileError::io(raw, "reading the status", e))?;
    regular_file(raw, &meta)?;
    Ok((real, file, meta))
}

/// Refuses what is not a regular file (directories, FIFOs, devices, sockets).
fn regular_file(raw: &str, meta: &Metadata) -> Result<(), FileError> {
    if meta.is_dir() {
        return Err(FileError::is_a_directory(raw, "; list it instead"));
    }
    if !meta.is_file() {
        return Err(FileError::invalid(
            raw,
            format!(
                "is a {}, not a regular file",
                super::stat::kind_of_mode(meta.mode())
            ),
        ));
    }
    Ok(())
}

/// The identity of an open file's current version.
pub fn identity(meta: &Metadata) -> pb::FileIdentity {
    pb::FileIdentity {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.len(),
        mtime_ns: (meta.mtime().max(0) as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec().max(0) as u64),
    }
}

/// Whether the file has a NUL byte in its first [`BINARY_SNIFF_BYTES`].
pub fn is_binary(file: &impl Source) -> io::Result<bool> {
    let head = file.bytes_at(0, BINARY_SNIFF_BYTES)?;
    Ok(memchr::memchr(0, &head).is_some())
}

/// Up to `len` bytes at `offset`, fewer only at the end of the file.
pub fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// The lines from `offset` (a line start) up to `size` (the file's size when it was opened),
/// within `limits`. A line that does not fit the byte limit ends the page and starts the next;
/// the first line of a page always fits, clamped if need be.
pub fn page(file: &impl Source, offset: u64, size: u64, limits: PageLimits) -> io::Result<Page> {
    let max_bytes = limits.max_bytes.max(MIN_PAGE_BYTES);
    let max_line_bytes = limits.max_line_bytes.clamp(1, max_bytes);
    // What a line is clamped to when even alone it would not fit the page.
    let fitting = max_bytes - MAX_MARKER_BYTES - 1;
    let mut reader = BufReader::with_capacity(
        READ_BUFFER,
        Counting {
            inner: file.stream_from(offset)?.take(size.saturating_sub(offset)),
            count: 0,
        },
    );
    let mut page = Page {
        next_offset: offset,
        ..Page::default()
    };
    // One byte more than is kept, so a cut can tell where the character at the limit starts.
    let mut kept = Vec::with_capacity(max_line_bytes + 1);
    while page.lines < limits.max_lines {
        kept.clear();
        let mut consumed = 0u64;
        let mut content = 0u64;
        let mut terminated = false;
        loop {
            let buf = reader.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let (take, found) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let line_part = if found { take - 1 } else { take };
            let room = (max_line_bytes + 1).saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..line_part.min(room)]);
            content += line_part as u64;
            consumed += take as u64;
            reader.consume(take);
            if found {
                terminated = true;
                break;
            }
        }
        if consumed == 0 {
            break;
        }
        let (mut text, mut clamped) = clamp::line_text(&kept, content, max_line_bytes);
        if page.text.len() + text.len() + usize::from(terminated) > max_bytes {
            if page.lines > 0 {
                break;
            }
            // The first line always fits: clamped harder, and harder again for invalid UTF-8,
            // which grows up to threefold as U+FFFD.
            (text, clamped) = clamp::line_text(&kept, content, fitting.min(max_line_bytes));
            if text.len() + 1 > max_bytes {
                (text, clamped) = clamp::line_text(&kept, content, fitting / 3);
            }
        }
        if terminated {
            text.push('\n');
        }
        page.text.push_str(&text);
        page.lines += 1;
        page.clamped += u32::from(clamped);
        page.next_offset += consumed;
    }
    page.eof = page.next_offset >= size;
    page.scanned = reader.get_ref().count;
    Ok(page)
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{Fixture, budget};
    use super::*;
    use std::io::Write;

    fn req(path: String) -> pb::FileRead {
        pb::FileRead {
            path,
            ..Default::default()
        }
    }

    #[test]
    fn a_small_file_is_one_page_to_the_end() {
        let fx = Fixture::new();
        fx.write("a.txt", "one\ntwo\nthree");
        let reply = read(&fx.files, req(fx.path("a.txt")), &budget()).unwrap();
        assert_eq!(reply.text, "one\ntwo\nthree");
        assert_eq!(reply.lines, 3);
        assert_eq!((reply.first_line, reply.next_line), (0, 3));
        assert_eq!(reply.next_offset, 13);
        assert!(reply.eof);
        let id = reply.identity.unwrap();
        assert_eq!(id.size, 13);
        assert!(id.ino > 0 && id.mtime_ns > 0);
        assert_eq!(reply.path, fx.abs("a.txt").display().to_string());
    }

    #[test]
    fn pages_continue_at_next_offset_and_number_lines() {
        let fx = Fixture::new();
        fx.write("a.txt", "l0\nl1\nl2\nl3\nl4\n");
        let mut r = req(fx.path("a.txt"));
        r.max_lines = 2;
        let p1 = read(&fx.files, r.clone(), &budget()).unwrap();
        assert_eq!(
            (p1.text.as_str(), p1.next_offset, p1.next_line, p1.eof),
            ("l0\nl1\n", 6, 2, false)
        );
        r.offset = p1.next_offset;
        r.line = p1.next_line;
        let p2 = read(&fx.files, r.clone(), &budget()).unwrap();
        assert_eq!(
            (p2.text.as_str(), p2.first_line, p2.next_line),
            ("l2\nl3\n", 2, 4)
        );
        r.offset = p2.next_offset;
        r.line = p2.next_line;
        let p3 = read(&fx.files, r.clone(), &budget()).unwrap();
        assert_eq!(
            (p3.text.as_str(), p3.next_offset, p3.eof),
            ("l4\n", 15, true)
        );
        // At the end: an empty page that says so.
        r.offset = p3.next_offset;
        let p4 = read(&fx.files, r, &budget()).unwrap();
        assert_eq!((p4.lines, p4.eof, p4.text.as_str()), (0, true, ""));
    }

    #[test]
    fn the_byte_limit_ends_a_page_at_a_whole_line() {
        let fx = Fixture::new();
        let line = |c: &str| format!("{}\n", c.repeat(99));
        fx.write("a.txt", line("a") + &line("b") + &line("c"));
        let mut r = req(fx.path("a.txt"));
        r.max_bytes = 250;
        let p = read(&fx.files, r.clone(), &budget()).unwrap();
        assert_eq!(
            (p.text, p.next_offset, p.eof),
            (line("a") + &line("b"), 200, false)
        );
        // A single line longer than the page is clamped to fit it.
        fx.write("long.txt", format!("{}\nnext\n", "x".repeat(500)));
        r.path = fx.path("long.txt");
        r.max_bytes = 130;
        r.max_line_bytes = 1000;
        let p = read(&fx.files, r, &budget()).unwrap();
        assert!(p.text.len() <= 130, "{}", p.text);
        assert!(p.text.ends_with("more bytes]\nnext\n"), "{}", p.text);
        assert_eq!((p.lines, p.clamped, p.next_offset), (2, 1, 506));
    }

    #[test]
    fn long_lines_are_clamped_with_a_marker() {
        let fx = Fixture::new();
        fx.write("a.txt", format!("{}\nshort\n", "x".repeat(10_000)));
        let mut r = req(fx.path("a.txt"));
        r.max_line_bytes = 100;
        let p = read(&fx.files, r, &budget()).unwrap();
        assert_eq!(p.clamped, 1);
        assert_eq!(
            p.text,
            format!(
                "{} … [line clamped: 9900 more bytes]\nshort\n",
                "x".repeat(100)
            )
        );
        assert!(p.eof);
    }

    #[test]
    fn an_offset_inside_a_line_or_past_the_end_is_refused() {
        let fx = Fixture::new();
        fx.write("a.txt", "abc\ndef\n");
        let mut r = req(fx.path("a.txt"));
        r.offset = 2;
        let err = read(&fx.files, r.clone(), &budget()).unwrap_err();
        assert!(matches!(err, FileError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("start of a line"), "{err}");
        r.offset = 99;
        let err = read(&fx.files, r, &budget()).unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");
    }

    #[test]
    fn binary_files_are_refused_unless_raw() {
        let fx = Fixture::new();
        let mut content = b"text at first".to_vec();
        content.push(0);
        content.extend_from_slice(&[1, 2, 3, 255]);
        fx.write("bin", &content);
        let err = read(&fx.files, req(fx.path("bin")), &budget()).unwrap_err();
        assert!(matches!(err, FileError::Binary { .. }), "{err}");
        assert!(err.to_string().contains(&fx.path("bin")), "{err}");
        let mut r = req(fx.path("bin"));
        r.raw = true;
        r.offset = 4;
        r.max_bytes = 6;
        let p = read(&fx.files, r, &budget()).unwrap();
        assert_eq!(p.data, &content[4..10]);
        assert_eq!((p.next_offset, p.eof), (10, false));
        // A NUL past the first 8 KiB does not make a file binary.
        let mut late = vec![b'a'; BINARY_SNIFF_BYTES];
        late.push(b'\n');
        late.push(0);
        fx.write("late", &late);
        assert!(read(&fx.files, req(fx.path("late")), &budget()).is_ok());
    }

    #[test]
    fn a_hard_link_to_a_file_outside_the_roots_is_not_read_unless_the_host_allows_it() {
        let fx = Fixture::new();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "outside the roots\n").unwrap();
        std::fs::hard_link(&secret, fx.abs("link")).unwrap();
        let err = read(&fx.files, req(fx.path("link")), &budget()).unwrap_err();
        assert_eq!(err.code(), pb::ErrorCode::PermissionDenied, "{err}");
        let message = err.to_string();
        assert!(
            message.contains(&fx.path("link")) && message.contains("2 hard links"),
            "{message}"
        );
        let err = super::super::copy::chunk_read(
            &fx.files,
            pb::FileChunkRead {
                path: fx.path("link"),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.code(), pb::ErrorCode::PermissionDenied, "{err}");

        let allowing = super::super::Files::with(
            super::super::Roots::new(std::slice::from_ref(&fx.root)).allowing_hardlinks(true),
            super::super::fixture::limits(),
        );
        let reply = read(&allowing, req(fx.path("link")), &budget()).unwrap();
        assert_eq!(reply.text, "outside the roots\n");
    }

    #[test]
    fn directories_and_fifos_are_not_read() {
        let fx = Fixture::new();
        std::fs::create_dir(fx.abs("d")).unwrap();
        let err = read(&fx.files, req(fx.path("d")), &budget()).unwrap_err();
        assert!(matches!(err, FileError::IsADirectory { .. }), "{err}");
        nix::unistd::mkfifo(
            &fx.abs("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let err = read(&fx.files, req(fx.path("fifo")), &budget()).unwrap_err();
        assert!(err.to_string().contains("fifo"), "{err}");
    }

    #[test]
    fn invalid_utf8_is_replaced_and_still_fits_the_page() {
        let fx = Fixture::new();
        fx.write("a.txt", [0xffu8; 300]);
        let mut r = req(fx.path("a.txt"));
        r.max_bytes = 200;
        r.max_line_bytes = 150;
        let p = read(&fx.files, r, &budget()).unwrap();
        assert!(p.text.len() <= 200, "{}", p.text.len());
        assert!(p.text.starts_with('\u{fffd}'));
        assert_eq!(p.clamped, 1);
    }

    #[test]
    fn paging_a_million_lines_reads_every_line_once_at_flat_cost() {
        let fx = Fixture::new();
        let path = fx.abs("big.log");
        let mut out = io::BufWriter::new(File::create(&path).unwrap());
        for i in 0..1_000_000u32 {
            writeln!(out, "line {i:07}").unwrap();
        }
        out.flush().unwrap();
        drop(out);

        let mut r = req(fx.path("big.log"));
        r.max_lines = 5000;
        r.max_bytes = 256 * 1024;
        let mut expected = 0u32;
        let mut pages = 0;
        let mut max_scanned = 0;
        loop {
            let file = File::open(&path).unwrap();
            let size = file.metadata().unwrap().len();
            let limits = PageLimits {
                max_lines: r.max_lines,
                max_bytes: r.max_bytes as usize,
                max_line_bytes: 4096,
            };
            let p = page(&file, r.offset, size, limits).unwrap();
            // The reply path agrees with the page function.
            let reply = read(&fx.files, r.clone(), &budget()).unwrap();
            assert_eq!((reply.next_offset, reply.lines), (p.next_offset, p.lines));
            for line in p.text.lines() {
                assert_eq!(line, format!("line {expected:07}"));
                expected += 1;
            }
            max_scanned = max_scanned.max(p.scanned);
            // The cost of a page is what it returns plus one read-ahead buffer, wherever it is.
            assert!(
                p.scanned <= (p.next_offset - r.offset) + READ_BUFFER as u64,
                "page at {} scanned {} bytes",
                r.offset,
                p.scanned
            );
            pages += 1;
            r.offset = reply.next_offset;
            r.line = reply.next_line;
            if reply.eof {
                break;
            }
        }
        assert_eq!(expected, 1_000_000);
        assert_eq!(r.line, 1_000_000);
        assert_eq!(pages, 200);
        assert!(max_scanned < 200 * 1024, "{max_scanned}");
    }
}
