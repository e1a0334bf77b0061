//! The searcher over files inside the allowed roots (ripgrep's crates, never a shell) that grep drives.
//!
//! A [`Search`] walks a file or a directory tree in path order, opens every file through the
//! roots' checks, and reports matching lines and their context to a [`Hits`], which decides what
//! to keep. It never follows symlinks out of the roots, skips hidden entries unless asked, does
//! not honour ignore files (an operator searching logs wants every file), and stops at its
//! deadline even inside one huge file: reads past the deadline fail.

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use grep_regex::{RegexMatcher, RegexMatcherBuilder};
use grep_searcher::{
    BinaryDetection, Searcher, SearcherBuilder, Sink, SinkContext, SinkContextKind, SinkMatch,
};
use ignore::WalkBuilder;
use ignore::overrides::{Override, OverrideBuilder};

use super::{FileError, Roots, stays_inside};

/// Most context lines before and after a match.
pub const MAX_CONTEXT: u32 = 100;
/// Longest line the searcher buffers; a file with a longer line is searched up to it. Keeps one
/// pathological file (a multi-gigabyte line) from taking the agent's memory.
const MAX_LINE_BUFFER: usize = 8 * 1024 * 1024;

/// What to look for and where, as a request states it.
#[derive(Debug, Clone, Default)]
pub struct Query<'a> {
    pub pattern: &'a str,
    /// `pattern` is a literal string.
    pub fixed: bool,
    pub ignore_case: bool,
    /// Lines of context before and after each match (capped at [`MAX_CONTEXT`]).
    pub context: u32,
    /// Globs on file names under directories (`*.log`, `!*.gz`); empty means every file.
    pub globs: &'a [String],
    /// Search dot files and dot directories under directories too.
    pub hidden: bool,
}

/// Receives what a [`Search`] finds, file by file. Line bytes include their terminator.
pub trait Hits {
    /// A file is about to be searched; `path` is its real path as shown in replies.
    fn open(&mut self, path: &str);
    /// A matching line, numbered from 1. Every matching line is reported, past any cap, so
    /// the receiver can count them all.
    fn matched(&mut self, line_number: u64, line: &[u8]);
    /// A context line before the next match.
    fn before(&mut self, line: &[u8]);
    /// A context line after the last match.
    fn after(&mut self, line: &[u8]);
    /// The file's search ended. `binary` when a NUL byte was found: the file was searched only
    /// up to it (not at all when it sits in the first 64 KiB, before any match is reported).
    fn close(&mut self, binary: bool);
}

/// How a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walked {
    /// Every file was searched.
    Done,
    /// The deadline passed; what was found so far was reported.
    TimedOut,
    /// A remote search read as many bytes as it may; what was found so far was reported.
    BytesSpent,
}

/// A compiled query, ready to search paths.
pub struct Search<'r> {
    roots: &'r Roots,
    matcher: RegexMatcher,
    searcher: Searcher,
    globs: Vec<String>,
    hidden: bool,
    deadline: Instant,
}

// === impl Search ===

impl<'r> Search<'r> {
    /// Compiles `query`. The error is a sentence on the pattern or a glob.
    pub fn new(roots: &'r Roots, query: &Query<'_>, deadline: Instant) -> Result<Self, String> {
        if query.pattern.is_empty() {
            return Err("the pattern is empty".into());
        }
        let matcher = RegexMatcherBuilder::new()
            .case_insensitive(query.ignore_case)
            .fixed_strings(query.fixed)
            .line_terminator(Some(b'\n'))
            .build(query.pattern)
            .map_err(|e| format!("the pattern is not a valid regex: {e}"))?;
        // Globs are checked once here, so a bad one fails the request rather than each path.
        globs_under(Path::new("/"), query.globs)?;
        let context = query.context.min(MAX_CONTEXT) as usize;
        let searcher = SearcherBuilder::new()
            .line_number(true)
            .before_context(context)
            .after_context(context)
            .binary_detection(BinaryDetection::quit(0))
            .heap_limit(Some(MAX_LINE_BUFFER))
            .build();
        Ok(Search {
            roots,
            matcher,
            searcher,
            globs: query.globs.to_vec(),
            hidden: query.hidden,
            deadline,
        })
    }

    /// The query's globs on file names under directories.
    pub fn globs(&self) -> &[String] {
        &self.globs
    }

    /// Whether dot files and dot directories under directories are searched.
    pub fn hidden(&self) -> bool {
        self.hidden
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Searches `real` (a path [`Roots::resolve`] returned): the file itself, or every regular
    /// file below the directory, in file-name order. `raw` names the path in errors.
    pub fn path(
        &mut self,
        real: &Path,
        raw: &str,
        hits: &mut impl Hits,
    ) -> Result<Walked, FileError> {
        let meta = fs::metadata(real).map_err(|e| FileError::io(raw, "reading the status", e))?;
        if !meta.is_dir() {
            return Ok(self.file(real, hits));
        }
        let mut walk = WalkBuilder::new(real);
        walk.standard_filters(false)
            .hidden(!self.hidden)
            .follow_links(false)
            .sort_by_file_name(|a, b| a.cmp(b));
        if !self.globs.is_empty() {
            walk.overrides(globs_under(real, &self.globs).map_err(|e| FileError::invalid(raw, e))?);
        }
        let roots = Arc::new(self.roots.clone());
        let hidden = self.hidden;
        // Hidden entries are filtered here too: a glob that matches one would otherwise let it in.
        walk.filter_entry(move |entry| {
            (hidden
                || entry.depth() == 0
                || !entry.file_name().as_encoded_bytes().starts_with(b"."))
                && stays_inside(&roots, entry)
        });
        for entry in walk.build() {
            // Unreadable entries (permissions, vanished) are passed over.
            let Ok(entry) = entry else {
                continue;
            };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            if self.file(entry.path(), hits) == Walked::TimedOut {
                return Ok(Walked::TimedOut);
            }
        }
        Ok(Walked::Done)
    }

    /// Searches one file, opened through the roots' checks (a file that fails them, or is not
    /// regular, is passed over).
    fn file(&mut self, path: &Path, hits: &mut impl Hits) -> Walked {
        if self.expired() {
            return Walked::TimedOut;
        }
        let shown = path.display().to_string();
        let Ok(file) = self.roots.open_file(path, &shown) else {
            return Walked::Done;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Walked::Done;
        }
        self.reader(&shown, file, hits)
    }

    /// Searches one file's content, read from `reader`, reported under `shown`; the file's
    /// search ends at the deadline like a walk's.
    pub fn reader(&mut self, shown: &str, reader: impl Read, hits: &mut impl Hits) -> Walked {
        if self.expired() {
            return Walked::TimedOut;
        }
        hits.open(shown);
        let mut sink = FileSink {
            hits,
            binary: false,
        };
        let reader = UntilDeadline {
            inner: reader,
            deadline: self.deadline,
        };
        // A read error (or the deadline) ends this file's search with what it found.
        let result = self
            .searcher
            .search_reader(&self.matcher, reader, &mut sink);
        let binary = sink.binary;
        hits.close(binary);
        match result {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Walked::TimedOut,
            _ => Walked::Done,
        }
    }
}

/// Include/exclude globs (`*.log`, `!*.gz`) on paths under `root`.
pub fn globs_under(root: &Path, globs: &[String]) -> Result<Override, String> {
    let mut builder = OverrideBuilder::new(root);
    for glob in globs {
        builder
            .add(glob)
            .map_err(|e| format!("glob `{glob}`: {e}"))?;
    }
    builder.build().map_err(|e| format!("globs: {e}"))
}

/// A reader that fails with `TimedOut` once the deadline has passed, so a search stops even
/// inside one huge file.
struct UntilDeadline<R> {
    inner: R,
    deadline: Instant,
}

impl<R: Read> Read for UntilDeadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if Instant::now() >= self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the search deadline passed",
            ));
        }
        self.inner.read(buf)
    }
}

/// Adapts a [`Hits`] to grep-searcher's sink for one file.
struct FileSink<'h, H: Hits> {
    hits: &'h mut H,
    binary: bool,
}

impl<H: Hits> Sink for FileSink<'_, H> {
    type Error = io::Error;

    fn matched(&mut self, _: &Searcher, mat: &SinkMatch<'_>) -> Result<bool, Self::Error> {
        self.hits
            .matched(mat.line_number().unwrap_or(0), mat.bytes());
        Ok(true)
    }

    fn context(&mut self, _: &Searcher, ctx: &SinkContext<'_>) -> Result<bool, Self::Error> {
        match ctx.kind() {
            SinkContextKind::Before => self.hits.before(ctx.bytes()),
            SinkContextKind::After => self.hits.after(ctx.bytes()),
            SinkContextKind::Other => {}
        }
        Ok(true)
    }

    fn binary_data(&mut self, _: &Searcher, _offset: u64) -> Result<bool, Self::Error> {
        self.binary = true;
        Ok(false)
    }
}

/// A line without its terminator (`\n` or `\r\n`).
pub fn trim_terminator(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Records every call, as `kind:text`.
    #[derive(Default)]
    struct Log(Vec<String>);

    impl Hits for Log {
        fn open(&mut self, path: &str) {
            let name = path.rsplit('/').next().unwrap_or_default();
            self.0.push(format!("open:{name}"));
        }
        fn matched(&mut self, n: u64, line: &[u8]) {
            let text = String::from_utf8_lossy(trim_terminator(line));
            self.0.push(format!("match:{n}:{text}"));
        }
        fn before(&mut self, line: &[u8]) {
            let text = String::from_utf8_lossy(trim_terminator(line));
            self.0.push(format!("before:{text}"));
        }
        fn after(&mut self, line: &[u8]) {
            let text = String::from_utf8_lossy(trim_terminator(line));
            self.0.push(format!("after:{text}"));
        }
        fn close(&mut self, binary: bool) {
            self.0.push(format!("close:{binary}"));
        }
    }

    fn fixture() -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        fs::write(root.join("b.log"), "x\nhit two\r\ny\n").unwrap();
        fs::write(root.join("a.log"), "hit one\n").unwrap();
        fs::write(root.join(".hidden"), "hit hidden\n").unwrap();
        fs::write(root.join("c.bin"), b"\0hit bin\n").unwrap();
        (dir, Roots::new(&[root]))
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[test]
    fn a_walk_reports_files_in_name_order_with_context_and_binary_files_closed_as_binary() {
        let (_dir, roots) = fixture();
        let root = roots.paths()[0].clone();
        let query = Query {
            pattern: "hit",
            context: 1,
            ..Query::default()
        };
        let mut search = Search::new(&roots, &query, later()).unwrap();
        let mut log = Log::default();
        let walked = search.path(&root, "root", &mut log).unwrap();
        assert_eq!(walked, Walked::Done);
        assert_eq!(
            log.0,
            [
                "open:a.log",
                "match:1:hit one",
                "close:false",
                "open:b.log",
                "before:x",
                "match:2:hit two",
                "after:y",
                "close:false",
                "open:c.bin",
                "close:true",
            ]
        );
    }

    #[test]
    fn a_passed_deadline_stops_the_walk_and_bad_patterns_or_globs_are_refused() {
        let (_dir, roots) = fixture();
        let root = roots.paths()[0].clone();
        let query = Query {
            pattern: "hit",
            ..Query::default()
        };
        let mut search = Search::new(&roots, &query, Instant::now()).unwrap();
        let mut log = Log::default();
        assert_eq!(
            search.path(&root, "root", &mut log).unwrap(),
            Walked::TimedOut
        );
        assert!(log.0.is_empty(), "{:?}", log.0);

        let bad = Query {
            pattern: "(",
            ..Query::default()
        };
        assert!(Search::new(&roots, &bad, later()).is_err());
        let globs = ["[".to_string()];
        let bad = Query {
            pattern: "x",
            globs: &globs,
            ..Query::default()
        };
        let err = Search::new(&roots, &bad, later()).err().unwrap();
        assert!(err.contains("glob `[`"), "{err}");
    }
}
