//! Grep on this host — a share of a fan-out `grep`, or the `file` tool's grep of one path: several paths inside the roots, three result modes, caps, and the digest of every matching line.
//!
//! Every path is checked like a file-tool path; one that fails goes to `path_errors` and the
//! others are still searched (a request where every path fails is refused, naming each). Paths
//! inside another requested directory are searched once. The search counts every matching line
//! (`total_matches`) even past the result cap, and the digest sees every one of them; only the
//! results shown are capped, by `max_matches` and by the reply's byte budget. A file in which a
//! NUL byte shows up after text matched keeps those matches and is not searched further (as
//! ripgrep does); one that starts binary is skipped and counted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use execmesh_proto::pb::{self, ErrorCode, GrepMode};

use crate::digest::{self, Digest};
use crate::files::search::{self, Hits, Query, Search, Walked};
use crate::files::{FileError, Files, Roots, clamp};

/// Longest line kept whole when the request names no limit.
pub const DEFAULT_MAX_LINE_BYTES: u32 = 1024;
/// Longest line kept whole whatever the request asks.
pub const MAX_LINE_BYTES: u32 = 64 * 1024;
/// Most paths one request may name.
pub const MAX_PATHS: usize = 64;
/// Most globs one request may name.
pub const MAX_GLOBS: usize = 64;
/// Longest pattern accepted.
pub const MAX_PATTERN_BYTES: usize = 64 * 1024;
/// Wire bytes of a match or file entry besides its strings.
const ENTRY_OVERHEAD: usize = 24;

/// The host's grep limits, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrepLimits {
    /// Results (matches, or files in count / files mode) when the request names no limit.
    pub default_max_matches: u32,
    /// Most results whatever the request asks.
    pub max_matches: u32,
    /// Longest a search runs before it returns what it found.
    pub timeout: Duration,
    /// Most bytes of results (matches, files, digest) in one reply.
    pub max_reply_bytes: usize,
}

/// Why a grep was refused. The dispatcher prefixes the host.
#[derive(Debug, thiserror::Error)]
pub enum GrepError {
    /// The request cannot be carried out as asked (pattern, glob, mode, too many paths).
    #[error("{0}")]
    Invalid(String),
    /// The search could not run as the request's account, or its worker failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// Not one of the paths could be searched; each problem names its path.
    #[error("no path could be searched: {}", problems.join("; "))]
    NoPath {
        /// The code of the first path's problem (outside the roots, not found, …).
        code: ErrorCode,
        problems: Vec<String>,
    },
}

// === impl GrepError ===

impl GrepError {
    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            GrepError::Invalid(_) => ErrorCode::Invalid,
            GrepError::File(e) => e.code(),
            GrepError::NoPath { code, .. } => *code,
        }
    }
}

/// Where a grep's paths are resolved and searched: this host's files, or an SSH target's.
pub trait Tree {
    /// The roots every path must resolve inside.
    fn roots(&self) -> &Roots;
    /// The real path of an existing `raw` inside the roots.
    fn resolve(&mut self, raw: &str) -> Result<PathBuf, FileError>;
    /// Searches `real` (a file, or every file below a directory) with `search`.
    fn search(
        &mut self,
        search: &mut Search<'_>,
        real: &Path,
        raw: &str,
        hits: &mut impl Hits,
    ) -> Result<Walked, FileError>;
}

/// This host's files.
struct Local<'f>(&'f Files);

impl Tree for Local<'_> {
    fn roots(&self) -> &Roots {
        self.0.roots()
    }

    fn resolve(&mut self, raw: &str) -> Result<PathBuf, FileError> {
        self.0.roots().resolve(raw)
    }

    fn search(
        &mut self,
        search: &mut Search<'_>,
        real: &Path,
        raw: &str,
        hits: &mut impl Hits,
    ) -> Result<Walked, FileError> {
        search.path(real, raw, hits)
    }
}

/// Runs `req` on this thread: resolves the paths, searches them in order until done or
/// `deadline`, and builds a reply of at most `reply_bytes` of results.
pub fn grep(
    files: &Files,
    limits: &GrepLimits,
    req: pb::GrepRequest,
    reply_bytes: usize,
    deadline: Instant,
) -> Result<pb::GrepReply, GrepError> {
    grep_in(&mut Local(files), limits, req, reply_bytes, deadline)
}

/// [`grep`] over any [`Tree`].
pub fn grep_in(
    tree: &mut impl Tree,
    limits: &GrepLimits,
    req: pb::GrepRequest,
    reply_bytes: usize,
    deadline: Instant,
) -> Result<pb::GrepReply, GrepError> {
    let invalid = |what: String| GrepError::Invalid(what);
    let mode = GrepMode::try_from(req.mode)
        .map_err(|_| invalid(format!("unknown grep mode {}", req.mode)))?;
    if req.paths.is_empty() {
        return Err(invalid("no path to search was given".into()));
    }
    if req.paths.len() > MAX_PATHS {
        return Err(invalid(format!(
            "{} paths were given; the most is {MAX_PATHS}",
            req.paths.len()
        )));
    }
    if req.globs.len() > MAX_GLOBS {
        return Err(invalid(format!(
            "{} globs were given; the most is {MAX_GLOBS}",
            req.globs.len()
        )));
    }
    if req.pattern.len() > MAX_PATTERN_BYTES {
        return Err(invalid(format!(
            "the pattern is longer than {MAX_PATTERN_BYTES} bytes"
        )));
    }
    let started = Instant::now();
    let deadline = deadline.min(started + limits.timeout);
    let query = Query {
        pattern: &req.pattern,
        fixed: req.fixed,
        ignore_case: req.ignore_case,
        context: if mode == GrepMode::Matches {
            req.context
        } else {
            0
        },
        globs: &req.globs,
        hidden: req.hidden,
    };
    let roots = tree.roots().clone();
    let mut search = Search::new(&roots, &query, deadline).map_err(invalid)?;

    let mut path_errors = Vec::new();
    let mut first_code = None;
    let mut targets: Vec<(PathBuf, &str)> = Vec::new();
    for raw in &req.paths {
        match tree.resolve(raw) {
            Ok(real) => targets.push((real, raw)),
            Err(e) => {
                first_code.get_or_insert(e.code());
                path_errors.push(e.to_string());
            }
        }
    }
    if targets.is_empty() {
        return Err(GrepError::NoPath {
            code: first_code.unwrap_or(ErrorCode::Invalid),
            problems: path_errors,
        });
    }
    // In path order, and a path inside another requested one is searched once.
    targets.sort();
    let mut kept: Vec<(PathBuf, &str)> = Vec::with_capacity(targets.len());
    for (real, raw) in targets {
        if !kept.iter().any(|(k, _)| real.starts_with(k)) {
            kept.push((real, raw));
        }
    }

    let max_results = match req.max_matches {
        0 => limits.default_max_matches,
        n => n.min(limits.max_matches),
    } as usize;
    let max_line_bytes = match req.max_line_bytes {
        0 => DEFAULT_MAX_LINE_BYTES,
        n => n.min(MAX_LINE_BYTES),
    } as usize;
    let reply_bytes = reply_bytes.min(limits.max_reply_bytes);
    // With a digest, results and groups share the budget half and half.
    let result_bytes = if req.digest {
        reply_bytes / 2
    } else {
        reply_bytes
    };
    let mut found = Found {
        mode,
        reply: pb::GrepReply::default(),
        max_results,
        max_line_bytes: max_line_bytes.min(result_bytes / 4),
        bytes: 0,
        max_bytes: result_bytes,
        cut: None,
        digest: req.digest.then(|| Digest::new(max_line_bytes)),
        path: String::new(),
        file_matches: 0,
        before: Vec::new(),
        attach_after: false,
    };
    let mut stopped = Walked::Done;
    for (real, raw) in &kept {
        match tree.search(&mut search, real, raw, &mut found) {
            Ok(Walked::Done) => {}
            Ok(walked) => {
                stopped = walked;
                break;
            }
            Err(e) => path_errors.push(e.to_string()),
        }
    }

    let mut reasons: Vec<String> = found.cut.iter().map(|c| c.to_string()).collect();
    match stopped {
        Walked::Done => {}
        Walked::TimedOut => {
            let ms = started.elapsed().as_millis();
            reasons.push(format!(
                "the time limit was reached after {ms} ms; later files were not searched"
            ));
        }
        Walked::BytesSpent => reasons.push(
            "the byte budget for reading files from the SSH target was spent; later files \
             were not searched"
                .into(),
        ),
    }
    let mut reply = found.reply;
    if let Some(digest) = found.digest {
        let max_groups = match req.max_groups {
            0 => digest::DEFAULT_MAX_GROUPS,
            n => n.min(digest::MAX_GROUPS),
        } as usize;
        let summary = digest.finish(max_groups, reply_bytes.saturating_sub(found.bytes));
        reply.digest = summary.groups;
        reply.digest_groups_total = summary.total;
        reply.digest_lines_ungrouped = summary.ungrouped;
        if summary.cut_for_bytes {
            reasons.push("digest groups were cut to fit the reply's byte budget".into());
        }
    }
    reply.path_errors = path_errors;
    reply.truncated = !reasons.is_empty();
    reply.truncated_reason = reasons.join("; ");
    Ok(reply)
}

/// The results so far, the limits on them, and the state of the file being searched.
struct Found {
    mode: GrepMode,
    reply: pb::GrepReply,
    /// Matches (matches mode) or files (count / files mode) returned at most.
    max_results: usize,
    max_line_bytes: usize,
    /// Approximate wire size of the results so far.
    bytes: usize,
    max_bytes: usize,
    /// Why results stopped being collected (counting goes on).
    cut: Option<String>,
    digest: Option<Digest>,
    /// The file being searched.
    path: String,
    /// Matching lines in it so far.
    file_matches: u64,
    /// Context lines waiting for the next match.
    before: Vec<String>,
    /// The last match was kept, so after-context lines belong to it.
    attach_after: bool,
}

impl Found {
    fn line(&self, bytes: &[u8]) -> String {
        let bytes = search::trim_terminator(bytes);
        clamp::line_text(bytes, bytes.len() as u64, self.max_line_bytes).0
    }

    /// Stops collecting results, saying why (the first reason wins).
    fn cut(&mut self, why: impl FnOnce() -> String) {
        if self.cut.is_none() {
            self.cut = Some(why());
        }
    }

    fn budget_cut(&mut self) {
        let max = self.max_bytes;
        self.cut(|| format!("results were cut to fit the reply's byte budget of {max} bytes"));
    }

    /// Counts `size` more bytes of results against the reply's budget: `false`, and the search
    /// cut, when they do not fit.
    fn spend(&mut self, size: usize) -> bool {
        if self.bytes + size > self.max_bytes {
            self.budget_cut();
            return false;
        }
        self.bytes += size;
        true
    }
}

impl Hits for Found {
    fn open(&mut self, path: &str) {
        self.path.clear();
        self.path.push_str(path);
        self.file_matches = 0;
        self.before.clear();
        self.attach_after = false;
    }

    fn matched(&mut self, line_number: u64, line: &[u8]) {
        self.reply.total_matches += 1;
        self.file_matches += 1;
        if let Some(digest) = &mut self.digest {
            digest.add(search::trim_terminator(line));
        }
        if self.mode != GrepMode::Matches {
            return;
        }
        self.attach_after = false;
        if self.cut.is_some() {
            self.before.clear();
            return;
        }
        if self.reply.matches.len() >= self.max_results {
            let max = self.max_results;
            self.cut(|| format!("max_matches {max} reached"));
            self.before.clear();
            return;
        }
        let text = self.line(line);
        let before = std::mem::take(&mut self.before);
        let size = ENTRY_OVERHEAD
            + self.path.len()
            + text.len()
            + before.iter().map(|l| l.len() + 2).sum::<usize>();
        if !self.spend(size) {
            return;
        }
        self.reply.matches.push(pb::GrepMatch {
            path: self.path.clone(),
            line: line_number,
            text,
            before,
            after: Vec::new(),
        });
        self.attach_after = true;
    }

    fn before(&mut self, line: &[u8]) {
        if self.cut.is_none() {
            let text = self.line(line);
            self.before.push(text);
        }
    }

    fn after(&mut self, line: &[u8]) {
        if !self.attach_after {
            return;
        }
        let text = self.line(line);
        if self.bytes + text.len() + 2 > self.max_bytes {
            self.attach_after = false;
            self.budget_cut();
            return;
        }
        if let Some(last) = self.reply.matches.last_mut() {
            self.bytes += text.len() + 2;
            last.after.push(text);
        }
    }

    fn close(&mut self, binary: bool) {
        if binary && self.file_matches == 0 {
            self.reply.binary_skipped += 1;
            return;
        }
        self.reply.files_searched += 1;
        if self.file_matches == 0 {
            return;
        }
        self.reply.files_matched += 1;
        if self.mode == GrepMode::Matches || self.cut.is_some() {
            return;
        }
        if self.reply.files.len() >= self.max_results {
            let max = self.max_results;
            self.cut(|| format!("max_matches {max} reached (files listed)"));
            return;
        }
        let size = ENTRY_OVERHEAD + self.path.len();
        if !self.spend(size) {
            return;
        }
        self.reply.files.push(pb::GrepFileCount {
            path: self.path.clone(),
            count: self.file_matches,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::fixture::Fixture;
    use std::os::unix::fs::symlink;

    fn fixture() -> Fixture {
        let fx = Fixture::new();
        fx.write(
            "app/a.log",
            "start\nERROR db timeout after 31ms\nok\nERROR db timeout after 45ms\nend\n",
        );
        fx.write("app/b.log", "ERROR disk /dev/sda1 full\nfine\n");
        fx.write("app/c.txt", "ERROR in text\n");
        fx.write("other/d.log", "nothing here\n");
        fx
    }

    fn limits() -> GrepLimits {
        GrepLimits {
            default_max_matches: 200,
            max_matches: 1000,
            timeout: Duration::from_secs(30),
            max_reply_bytes: 512 * 1024,
        }
    }

    impl Fixture {
        fn run(&self, req: pb::GrepRequest) -> Result<pb::GrepReply, GrepError> {
            let deadline = Instant::now() + Duration::from_secs(30);
            grep(&self.files, &limits(), req, 1 << 20, deadline)
        }
    }

    fn names(reply: &pb::GrepReply) -> Vec<(String, u64)> {
        reply
            .files
            .iter()
            .map(|f| (f.path.rsplit('/').next().unwrap().to_string(), f.count))
            .collect()
    }

    #[test]
    fn modes_count_every_match_and_cap_what_they_return() {
        let fx = fixture();
        let req = pb::GrepRequest {
            paths: vec![fx.path("app"), fx.path("app/a.log")],
            pattern: "ERROR".into(),
            max_matches: 2,
            ..Default::default()
        };
        let reply = fx.run(req.clone()).unwrap();
        assert_eq!(reply.total_matches, 4, "a.log is searched once");
        assert_eq!(reply.matches.len(), 2);
        assert!(reply.truncated);
        assert_eq!(reply.truncated_reason, "max_matches 2 reached");
        assert_eq!((reply.files_searched, reply.files_matched), (3, 3));

        let count = fx
            .run(pb::GrepRequest {
                mode: GrepMode::Count as i32,
                max_matches: 0,
                ..req.clone()
            })
            .unwrap();
        assert_eq!(
            names(&count),
            [
                ("a.log".into(), 2),
                ("b.log".into(), 1),
                ("c.txt".into(), 1)
            ]
        );
        assert!(count.matches.is_empty() && !count.truncated);

        let files = fx
            .run(pb::GrepRequest {
                mode: GrepMode::Files as i32,
                ..req
            })
            .unwrap();
        assert_eq!(names(&files), [("a.log".into(), 2), ("b.log".into(), 1)]);
        assert_eq!(files.total_matches, 4);
        assert!(files.truncated);
    }

    #[test]
    fn bad_paths_are_reported_and_all_bad_paths_refuse_the_request() {
        let fx = fixture();
        let req = pb::GrepRequest {
            paths: vec![fx.path("app/b.log"), fx.path("missing"), "/etc".into()],
            pattern: "full".into(),
            ..Default::default()
        };
        let reply = fx.run(req).unwrap();
        assert_eq!(reply.total_matches, 1);
        assert_eq!(reply.path_errors.len(), 2, "{:?}", reply.path_errors);
        assert!(reply.path_errors[0].contains("missing"));
        assert!(reply.path_errors[1].contains("/etc") && reply.path_errors[1].contains("outside"));

        let err = fx
            .run(pb::GrepRequest {
                paths: vec!["/etc/passwd".into(), fx.path("missing")],
                pattern: "x".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::OutsideRoots);
        let text = err.to_string();
        assert!(
            text.contains("/etc/passwd") && text.contains("missing"),
            "{text}"
        );

        let err = fx
            .run(pb::GrepRequest {
                paths: vec![fx.path("app")],
                pattern: "(".into(),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::Invalid);
    }

    #[test]
    fn the_digest_groups_every_matching_line_even_past_the_cap() {
        let fx = fixture();
        let reply = fx
            .run(pb::GrepRequest {
                paths: vec![fx.path("app")],
                pattern: "ERROR".into(),
                globs: vec!["*.log".into()],
                max_matches: 1,
                digest: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(reply.matches.len(), 1);
        assert_eq!(reply.total_matches, 3);
        let groups: Vec<(&str, u64)> = reply
            .digest
            .iter()
            .map(|g| (g.key.as_str(), g.lines))
            .collect();
        assert_eq!(
            groups,
            [
                ("ERROR disk /dev/sda<n> full", 1),
                ("ERROR db timeout after <n>ms", 2),
            ]
        );
        assert_eq!(reply.digest_groups_total, 2);
        assert_eq!(reply.digest[1].examples.len(), 2);
    }

    #[test]
    fn a_search_past_its_deadline_returns_what_it_has_and_says_why() {
        let fx = fixture();
        let req = pb::GrepRequest {
            paths: vec![fx.path("app")],
            pattern: "ERROR".into(),
            ..Default::default()
        };
        let reply = grep(&fx.files, &limits(), req, 1 << 20, Instant::now()).unwrap();
        assert_eq!((reply.total_matches, reply.files_searched), (0, 0));
        assert!(reply.truncated);
        assert!(
            reply
                .truncated_reason
                .starts_with("the time limit was reached"),
            "{}",
            reply.truncated_reason
        );
    }

    #[test]
    fn context_after_the_cap_is_not_attached_to_the_last_kept_match() {
        let fx = fixture();
        let reply = fx
            .run(pb::GrepRequest {
                paths: vec![fx.path("app/a.log")],
                pattern: "ERROR".into(),
                context: 1,
                max_matches: 1,
                ..Default::default()
            })
            .unwrap();
        let [m] = &reply.matches[..] else {
            panic!("{reply:?}")
        };
        assert_eq!(
            (m.line, &m.before[..], &m.after[..]),
            (2, &["start".to_string()][..], &["ok".to_string()][..])
        );
    }

    /// A search for `pattern` under the whole root (a grep of one path, as the file tool sends).
    fn request(fx: &Fixture, pattern: &str) -> pb::GrepRequest {
        pb::GrepRequest {
            paths: vec![fx.path("")],
            pattern: pattern.into(),
            ..Default::default()
        }
    }

    fn hits(reply: &pb::GrepReply) -> Vec<(String, u64, String)> {
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
        let reply = fx.run(request(&fx, "error|ERROR")).unwrap();
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
        let reply = fx.run(req.clone()).unwrap();
        assert_eq!(reply.matches.len(), 3);
        assert!(reply.matches.iter().all(|m| m.path.ends_with(".log")));
        req.hidden = true;
        assert_eq!(fx.run(req).unwrap().matches.len(), 4);

        fx.write("re.txt", "a.b\naxb\n");
        let mut req = request(&fx, "a.b");
        req.globs = vec!["re.txt".into()];
        assert_eq!(fx.run(req.clone()).unwrap().matches.len(), 2);
        req.fixed = true;
        let reply = fx.run(req).unwrap();
        assert_eq!(hits(&reply), [("re.txt".into(), 1, "a.b".into())]);
    }

    #[test]
    fn context_lines_come_before_and_after_each_match() {
        let fx = Fixture::new();
        fx.write("f", "1\n2\nhit a\n4\n5\n6\n7\nhit b\n9\n");
        let mut req = request(&fx, "hit");
        req.paths = vec![fx.path("f")];
        req.context = 2;
        let reply = fx.run(req).unwrap();
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
        let reply = fx.run(req).unwrap();
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
        let reply = fx.run(request(&fx, "needle")).unwrap();
        assert!(reply.matches.is_empty(), "{reply:?}");
        let mut req = request(&fx, "needle");
        req.paths = vec![fx.path("out")];
        assert_eq!(fx.run(req).unwrap_err().code(), ErrorCode::OutsideRoots);
        let err = fx.run(request(&fx, "(unclosed")).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Invalid, "{err}");
        assert!(err.to_string().contains("regex"), "{err}");
    }
}
