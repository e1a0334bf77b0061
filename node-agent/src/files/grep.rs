//! `FileGrep`: searches a file or a tree with ripgrep's crates (never a shell), in path order, capped.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use execmesh_proto::pb;
use grep_regex::{RegexMatcher, RegexMatcherBuilder};
use grep_searcher::{
    BinaryDetection, Searcher, SearcherBuilder, Sink, SinkContext, SinkContextKind, SinkMatch,
};
use ignore::WalkBuilder;
use ignore::overrides::OverrideBuilder;

use super::clamp;
use super::error::FileError;
use super::list::stays_inside;
use super::roots::Roots;
use super::{Budget, Files};

/// Matches returned when the request names no limit.
pub const DEFAULT_MAX_MATCHES: u32 = 1000;
/// Most matches of one search.
pub const MAX_MATCHES: u32 = 100_000;
/// Most context lines before and after a match.
pub const MAX_CONTEXT: u32 = 100;
/// Longest line kept whole when the request names no limit.
pub const DEFAULT_MAX_LINE_BYTES: u32 = 4096;
/// Wire bytes of a match besides its strings.
const MATCH_OVERHEAD: usize = 24;

/// Answers a `FileGrep`: a file, or every file under a directory (ignore files are not
/// honoured; hidden files only with `hidden`; symlinks are not followed). Binary files (a NUL
/// byte) are skipped and counted.
pub fn grep(
    files: &Files,
    req: pb::FileGrep,
    budget: &Budget,
) -> Result<pb::FileGrepReply, FileError> {
    let raw = req.path.as_str();
    if req.pattern.is_empty() {
        return Err(FileError::invalid(raw, "the pattern is empty"));
    }
    let real = files.roots.resolve(raw)?;
    let matcher = RegexMatcherBuilder::new()
        .case_insensitive(req.ignore_case)
        .fixed_strings(req.fixed)
        .line_terminator(Some(b'\n'))
        .build(&req.pattern)
        .map_err(|e| FileError::invalid(raw, format!("the pattern is not a valid regex: {e}")))?;
    let context = req.context.min(MAX_CONTEXT) as usize;
    let mut searcher = SearcherBuilder::new()
        .line_number(true)
        .before_context(context)
        .after_context(context)
        .binary_detection(BinaryDetection::quit(0))
        .build();
    let mut found = Found {
        reply: pb::FileGrepReply::default(),
        max_matches: match req.max_matches {
            0 => DEFAULT_MAX_MATCHES,
            n => n.min(MAX_MATCHES),
        } as usize,
        max_line_bytes: match req.max_line_bytes {
            0 => DEFAULT_MAX_LINE_BYTES,
            n => n,
        }
        .min(budget.reply_bytes as u32 / 4) as usize,
        bytes: 0,
        max_bytes: budget.reply_bytes,
        full: false,
    };
    let meta = fs::metadata(&real).map_err(|e| FileError::io(raw, "reading the status", e))?;
    if !meta.is_dir() {
        found.search(&files.roots, &real, &mut searcher, &matcher);
        return Ok(found.reply);
    }

    let mut walk = WalkBuilder::new(&real);
    walk.standard_filters(false)
        .hidden(!req.hidden)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b));
    if !req.globs.is_empty() {
        let mut globs = OverrideBuilder::new(&real);
        for glob in &req.globs {
            globs
                .add(glob)
                .map_err(|e| FileError::invalid(raw, format!("glob `{glob}`: {e}")))?;
        }
        let globs = globs
            .build()
            .map_err(|e| FileError::invalid(raw, format!("globs: {e}")))?;
        walk.overrides(globs);
    }
    let roots = Arc::new(files.roots.clone());
    let hidden = req.hidden;
    // Hidden entries are filtered here too: a glob that matches one would otherwise let it in.
    walk.filter_entry(move |entry| {
        (hidden || entry.depth() == 0 || !entry.file_name().as_encoded_bytes().starts_with(b"."))
            && stays_inside(&roots, entry)
    });
    for entry in walk.build() {
        let Ok(entry) = entry else {
            continue;
        };
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        if budget.expired() {
            found.reply.truncated = true;
            break;
        }
        found.search(&files.roots, entry.path(), &mut searcher, &matcher);
        if found.full {
            break;
        }
    }
    Ok(found.reply)
}

/// The matches so far and the limits on them.
struct Found {
    reply: pb::FileGrepReply,
    max_matches: usize,
    max_line_bytes: usize,
    /// Approximate wire size of the matches so far.
    bytes: usize,
    max_bytes: usize,
    /// A limit was hit: stop searching.
    full: bool,
}

impl Found {
    /// Searches one file, opened through the roots' checks (files that fail them, or that are
    /// not regular, are passed over).
    fn search(
        &mut self,
        roots: &Roots,
        path: &Path,
        searcher: &mut Searcher,
        matcher: &RegexMatcher,
    ) {
        let shown = path.display().to_string();
        let Ok(file) = roots.open_file(path, &shown) else {
            return;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return;
        }
        let first = self.reply.matches.len();
        let bytes_before = self.bytes;
        let mut sink = FileSink {
            found: self,
            path: shown,
            first,
            before: Vec::new(),
            binary: false,
        };
        // A read error ends this file's search with what it found.
        let _ = searcher.search_file(matcher, &file, &mut sink);
        if sink.binary {
            self.reply.matches.truncate(first);
            self.bytes = bytes_before;
            self.reply.binary_skipped += 1;
            return;
        }
        self.reply.files_searched += 1;
        if self.reply.matches.len() > first {
            self.reply.files_matched += 1;
        }
    }

    fn line(&self, bytes: &[u8]) -> String {
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        clamp::line_text(bytes, bytes.len() as u64, self.max_line_bytes).0
    }
}

/// Collects the matches of one file into [`Found`].
struct FileSink<'a> {
    found: &'a mut Found,
    path: String,
    /// Index of this file's first match in the reply.
    first: usize,
    /// Context lines waiting for the next match.
    before: Vec<String>,
    binary: bool,
}

impl Sink for FileSink<'_> {
    type Error = std::io::Error;

    fn matched(&mut self, _: &Searcher, mat: &SinkMatch<'_>) -> Result<bool, Self::Error> {
        let found = &mut *self.found;
        if found.reply.matches.len() >= found.max_matches {
            found.reply.truncated = true;
            found.full = true;
            return Ok(false);
        }
        let text = found.line(mat.bytes());
        let before = std::mem::take(&mut self.before);
        let size = MATCH_OVERHEAD
            + self.path.len()
            + text.len()
            + before.iter().map(|l| l.len() + 2).sum::<usize>();
        if found.bytes + size > found.max_bytes {
            found.reply.truncated = true;
            found.full = true;
            return Ok(false);
        }
        found.bytes += size;
        found.reply.matches.push(pb::GrepMatch {
            path: self.path.clone(),
            line: mat.line_number().unwrap_or(0),
            text,
            before,
            after: Vec::new(),
        });
        Ok(true)
    }

    fn context(&mut self, _: &Searcher, ctx: &SinkContext<'_>) -> Result<bool, Self::Error> {
        let text = self.found.line(ctx.bytes());
        match ctx.kind() {
            SinkContextKind::Before => self.before.push(text),
            SinkContextKind::After => {
                let found = &mut *self.found;
                if found.bytes + text.len() + 2 > found.max_bytes {
                    found.reply.truncated = true;
                    found.full = true;
                    return Ok(false);
                }
                if found.reply.matches.len() > self.first
                    && let Some(last) = found.reply.matches.last_mut()
                {
                    found.bytes += text.len() + 2;
                    last.after.push(text);
                }
            }
            SinkContextKind::Other => {}
        }
        Ok(true)
    }

    fn binary_data(&mut self, _: &Searcher, _offset: u64) -> Result<bool, Self::Error> {
        self.binary = true;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{Fixture, budget};
    use super::*;
    use std::os::unix::fs::symlink;

    fn request(fx: &Fixture, pattern: &str) -> pb::FileGrep {
        pb::FileGrep {
            path: fx.path(""),
            pattern: pattern.into(),
            ..Default::default()
        }
    }

    fn hits(reply: &pb::FileGrepReply) -> Vec<(String, u64, String)> {
        reply
            .matches
            .iter()
            .map(|m| {
                let rel = m.path.rsplit('/').next().unwrap_or_default().to_string();
                (rel, m.line, m.text.clone())
            })
            .collect()
    }

    fn logs() -> Fixture {
        let fx = Fixture::new();
        fx.write("b.log", "ok\nERROR disk full\nok\n");
        fx.write("a.log", "Error: one\nfine\nerror two\n");
        fx.write("sub/c.txt", "error in txt\n");
        fx.write(".hidden.log", "error hidden\n");
        let mut bin = b"error before nul\n".to_vec();
        bin.push(0);
        fx.write("blob.bin", bin);
        fx
    }

    #[test]
    fn regex_search_is_sorted_by_path_and_skips_binary_files() {
        let fx = logs();
        let reply = grep(&fx.files, request(&fx, "error|ERROR"), &budget()).unwrap();
        assert_eq!(
            hits(&reply),
            [
                ("a.log".into(), 3, "error two".into()),
                ("b.log".into(), 2, "ERROR disk full".into()),
                ("c.txt".into(), 1, "error in txt".into()),
            ]
        );
        assert_eq!(reply.binary_skipped, 1);
        assert_eq!((reply.files_searched, reply.files_matched), (3, 3));
        assert!(!reply.truncated);
    }

    #[test]
    fn ignore_case_fixed_strings_hidden_and_globs() {
        let fx = logs();
        let mut req = request(&fx, "error");
        req.ignore_case = true;
        req.globs = vec!["*.log".into()];
        let reply = grep(&fx.files, req.clone(), &budget()).unwrap();
        assert_eq!(reply.matches.len(), 3);
        assert!(reply.matches.iter().all(|m| m.path.ends_with(".log")));
        req.hidden = true;
        assert_eq!(grep(&fx.files, req, &budget()).unwrap().matches.len(), 4);

        fx.write("re.txt", "a.b\naxb\n");
        let mut req = request(&fx, "a.b");
        req.globs = vec!["re.txt".into()];
        assert_eq!(
            grep(&fx.files, req.clone(), &budget())
                .unwrap()
                .matches
                .len(),
            2
        );
        req.fixed = true;
        let reply = grep(&fx.files, req, &budget()).unwrap();
        assert_eq!(hits(&reply), [("re.txt".into(), 1, "a.b".into())]);
    }

    #[test]
    fn context_lines_come_before_and_after_each_match() {
        let fx = Fixture::new();
        fx.write("f", "1\n2\nhit a\n4\n5\n6\n7\nhit b\n9\n");
        let mut req = request(&fx, "hit");
        req.path = fx.path("f");
        req.context = 2;
        let reply = grep(&fx.files, req, &budget()).unwrap();
        let [a, b] = &reply.matches[..] else {
            panic!("{reply:?}")
        };
        assert_eq!(
            (a.line, a.before.clone(), a.after.clone()),
            (
                3,
                vec!["1".to_string(), "2".into()],
                vec!["4".to_string(), "5".into()]
            )
        );
        assert_eq!(
            (b.line, b.before.clone(), b.after.clone()),
            (8, vec!["6".to_string(), "7".into()], vec!["9".to_string()])
        );
    }

    #[test]
    fn max_matches_truncates_and_long_lines_are_clamped() {
        let fx = Fixture::new();
        let lines: String = (0..50)
            .map(|i| format!("match {i} {}\n", "y".repeat(200)))
            .collect();
        fx.write("many", lines);
        let mut req = request(&fx, "match");
        req.max_matches = 10;
        req.max_line_bytes = 20;
        let reply = grep(&fx.files, req, &budget()).unwrap();
        assert_eq!(reply.matches.len(), 10);
        assert!(reply.truncated);
        assert!(
            reply.matches[0].text.contains("[line clamped:"),
            "{}",
            reply.matches[0].text
        );
        assert!(reply.matches[0].text.starts_with("match 0 yyyy"));
    }

    #[test]
    fn symlinks_out_of_the_roots_are_not_searched_and_bad_patterns_are_invalid() {
        let fx = Fixture::new();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "needle\n").unwrap();
        symlink(outside.path(), fx.abs("out")).unwrap();
        symlink(outside.path().join("secret"), fx.abs("secret-link")).unwrap();
        let reply = grep(&fx.files, request(&fx, "needle"), &budget()).unwrap();
        assert!(reply.matches.is_empty(), "{reply:?}");
        let mut req = request(&fx, "needle");
        req.path = fx.path("out");
        assert!(matches!(
            grep(&fx.files, req, &budget()),
            Err(FileError::OutsideRoots { .. })
        ));
        let err = grep(&fx.files, request(&fx, "(unclosed"), &budget()).unwrap_err();
        assert!(matches!(err, FileError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("regex"), "{err}");
    }
}
