//! `FileGrep`: searches a file or a tree with the shared searcher, in path order, capped.

use execmesh_proto::pb;

use super::clamp;
use super::error::FileError;
use super::search::{self, Hits, Query, Search, Walked};
use super::{Budget, Files};

/// Matches returned when the request names no limit.
pub const DEFAULT_MAX_MATCHES: u32 = 1000;
/// Most matches of one search.
pub const MAX_MATCHES: u32 = 100_000;
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
    let query = Query {
        pattern: &req.pattern,
        fixed: req.fixed,
        ignore_case: req.ignore_case,
        context: req.context,
        globs: &req.globs,
        hidden: req.hidden,
    };
    let mut search = Search::new(&files.roots, &query, budget.deadline)
        .map_err(|e| FileError::invalid(raw, e))?;
    let real = files.roots.resolve(raw)?;
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
        path: String::new(),
        first: 0,
        bytes_before: 0,
        before: Vec::new(),
    };
    if search.path(&real, raw, &mut found)? == Walked::TimedOut {
        found.reply.truncated = true;
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
    /// The file being searched.
    path: String,
    /// Index of this file's first match in the reply, and the size before it.
    first: usize,
    bytes_before: usize,
    /// Context lines waiting for the next match.
    before: Vec<String>,
}

impl Found {
    fn line(&self, bytes: &[u8]) -> String {
        let bytes = search::trim_terminator(bytes);
        clamp::line_text(bytes, bytes.len() as u64, self.max_line_bytes).0
    }

    fn stop(&mut self) -> bool {
        self.reply.truncated = true;
        self.full = true;
        false
    }
}

impl Hits for Found {
    fn open(&mut self, path: &str) {
        self.path = path.to_string();
        self.first = self.reply.matches.len();
        self.bytes_before = self.bytes;
        self.before.clear();
    }

    fn matched(&mut self, line_number: u64, line: &[u8]) -> bool {
        if self.reply.matches.len() >= self.max_matches {
            return self.stop();
        }
        let text = self.line(line);
        let before = std::mem::take(&mut self.before);
        let size = MATCH_OVERHEAD
            + self.path.len()
            + text.len()
            + before.iter().map(|l| l.len() + 2).sum::<usize>();
        if self.bytes + size > self.max_bytes {
            return self.stop();
        }
        self.bytes += size;
        self.reply.matches.push(pb::GrepMatch {
            path: self.path.clone(),
            line: line_number,
            text,
            before,
            after: Vec::new(),
        });
        true
    }

    fn before(&mut self, line: &[u8]) -> bool {
        let text = self.line(line);
        self.before.push(text);
        true
    }

    fn after(&mut self, line: &[u8]) -> bool {
        let text = self.line(line);
        if self.bytes + text.len() + 2 > self.max_bytes {
            return self.stop();
        }
        if self.reply.matches.len() > self.first
            && let Some(last) = self.reply.matches.last_mut()
        {
            self.bytes += text.len() + 2;
            last.after.push(text);
        }
        true
    }

    fn close(&mut self, binary: bool) {
        if binary {
            // The file tool shows text: a file that turns out binary contributes nothing.
            self.reply.matches.truncate(self.first);
            self.bytes = self.bytes_before;
            self.reply.binary_skipped += 1;
            return;
        }
        self.reply.files_searched += 1;
        if self.reply.matches.len() > self.first {
            self.reply.files_matched += 1;
        }
    }

    fn full(&self) -> bool {
        self.full
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
