//! `file`: read (paged), stat, list, grep, write, append, move, delete on one host, and copy a file
//! from one host to another; the agent checks every path against the host's allowed roots.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rmcp::model::{CallToolResult, Tool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use execmesh_proto::{Token, pb};

use super::grep::MatchView;
use super::{Call, dispatch, structured};
use crate::core::error::{ToolError, ToolError as E};

/// Largest content one `write`/`append` call carries (a NATS message holds about 1 MiB).
pub const MAX_WRITE_BYTES: usize = 768 * 1024;
/// Bytes per chunk of a copy.
const COPY_CHUNK: u32 = 512 * 1024;
/// Default and ceiling of a base64 read, in bytes.
const RAW_DEFAULT: u32 = 256 * 1024;
const RAW_CEILING: u32 = 768 * 1024;
/// How long a file request (a grep over a large tree) may take.
const FILE_TIMEOUT: Duration = Duration::from_secs(60);
/// Matches a `grep` returns when the call names no limit.
const DEFAULT_GREP_MATCHES: u32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileAction {
    /// A page of a text file (`cursor` to continue), or bytes as base64 (`encoding: "base64"`).
    Read,
    /// Type, size, mode, owner, mtime, symlink target.
    Stat,
    /// A directory's entries; `recursive` with `max_depth`, `max_entries`.
    List,
    /// Search a file or directory tree: `pattern`, `fixed`, `ignore_case`, `context`, `globs`.
    Grep,
    /// Replace (or create) a file atomically with `content`.
    Write,
    /// Add `content` to the end of a file (created if missing).
    Append,
    /// Rename `path` to `to`.
    Move,
    /// Delete a file, or a directory with `recursive: true`.
    Delete,
    /// Copy `path` on `host` to `to` on `to_host` (default: the same host), sha256-verified.
    Copy,
}

// === impl FileAction ===

impl FileAction {
    /// The action's name, as the schema and the tier table write it.
    pub fn as_str(self) -> &'static str {
        match self {
            FileAction::Read => "read",
            FileAction::Stat => "stat",
            FileAction::List => "list",
            FileAction::Grep => "grep",
            FileAction::Write => "write",
            FileAction::Append => "append",
            FileAction::Move => "move",
            FileAction::Delete => "delete",
            FileAction::Copy => "copy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Text,
    Base64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileParams {
    /// The host id (see `hosts`); for `copy`, the source host.
    pub host: String,
    #[serde(deserialize_with = "super::strict::name")]
    pub action: FileAction,
    /// Absolute path on the host. Not needed for `read` with a `cursor`.
    #[serde(default)]
    pub path: Option<String>,
    /// `read`: the `next_cursor` of the previous page, unchanged.
    #[serde(default)]
    pub cursor: Option<String>,
    /// `read`: `text` (default; binary files are refused) or `base64` (raw bytes).
    #[serde(default, deserialize_with = "super::strict::optional_name")]
    pub encoding: Option<Encoding>,
    /// `read`: most lines per page (default 1000).
    #[serde(default)]
    pub max_lines: Option<u32>,
    /// `read`: most bytes per page (default 65536; base64: 262144).
    #[serde(default)]
    pub max_bytes: Option<u32>,
    /// `list`: descend into subdirectories; `delete`: delete a directory and its contents.
    #[serde(default)]
    pub recursive: Option<bool>,
    /// `list`: how deep to descend (default 3).
    #[serde(default)]
    pub max_depth: Option<u32>,
    /// `list`: most entries (default 1000).
    #[serde(default)]
    pub max_entries: Option<u32>,
    /// `list`, `grep`: include dot files.
    #[serde(default)]
    pub hidden: Option<bool>,
    /// `grep`: a regular expression (or a literal with `fixed: true`).
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub fixed: Option<bool>,
    #[serde(default)]
    pub ignore_case: Option<bool>,
    /// `grep`: lines of context around each match.
    #[serde(default)]
    pub context: Option<u32>,
    /// `grep`: most matches (default 1000).
    #[serde(default)]
    pub max_matches: Option<u32>,
    /// `grep`: file-name globs to search, e.g. ["*.log"].
    #[serde(default)]
    pub globs: Option<Vec<String>>,
    /// `write`, `append`: the content (text, or base64 with `encoding: "base64"`).
    #[serde(default)]
    pub content: Option<String>,
    /// `write`, `append`, `move`, `copy`: create missing parent directories.
    #[serde(default)]
    pub create_dirs: Option<bool>,
    /// `write`: mode of a new file, octal like "0640" (a replaced file keeps its mode).
    #[serde(default)]
    pub mode: Option<String>,
    /// `move`, `copy`: the destination path.
    #[serde(default)]
    pub to: Option<String>,
    /// `copy`: the destination host (default: `host`).
    #[serde(default)]
    pub to_host: Option<String>,
    /// `move`, `copy`: replace an existing destination.
    #[serde(default)]
    pub overwrite: Option<bool>,
}

#[derive(Debug, Default, Serialize, JsonSchema)]
pub struct FileResult {
    pub host: String,
    pub action: String,
    pub path: String,
    /// `read` (text): the lines of this page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `read` (base64): the bytes of this page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    /// `read`: line number (from 1) of the first line, and lines in this page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<u32>,
    /// `read`: pass back as `cursor` for the next page; absent at the end of the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eof: Option<bool>,
    /// `read`: the file changed since the page the cursor came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stat: Option<StatView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<EntryView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<MatchView>>,
    /// `list`, `grep`: the result was cut at a cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_searched: Option<u64>,
    /// `write`, `append`, `copy`: size and sha256 of the file afterwards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `copy`: the destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `copy`: throughput.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mb_per_s: Option<f64>,
    /// What was done, in words (write, move, delete, copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct StatView {
    pub kind: String,
    pub size: u64,
    /// Permission bits, octal.
    pub mode: String,
    pub owner: String,
    pub group: String,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ms: u64,
    pub symlink_target: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct EntryView {
    pub path: String,
    pub kind: String,
    pub size: u64,
    pub mode: String,
    pub mtime_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

pub fn definition() -> Tool {
    super::tool::<FileParams, FileResult>(
        "file",
        "Files on a host",
        "Read, inspect, search and change files on a host, within the directories its owner \
         allowed. action=read pages a text file (pass `next_cursor` back as `cursor`; binary \
         files need encoding=base64); stat, list (recursive with caps) and grep (regex or fixed \
         string, context lines) only look; write (atomic replace), append, move, delete \
         (directories need recursive=true) and copy (to another host, sha256-verified) change \
         things. Paths are absolute. Confirm with the user before writing, moving, deleting or \
         copying over files.",
        super::acts(false),
    )
}

pub async fn call(call: &Call<'_>, params: FileParams) -> Result<CallToolResult, ToolError> {
    let host =
        Token::parse("host id", &params.host).map_err(|e| E::invalid("file", e.to_string()))?;
    super::reach::check(call, &host).await?;
    let action = params.action.as_str();
    // A copy is held for both ends; every other action names one host.
    let to_host = match (params.action, &params.to_host) {
        (FileAction::Copy, Some(h)) => {
            Some(Token::parse("host id", h).map_err(|e| E::invalid("file", e.to_string()))?)
        }
        _ => None,
    };
    let mut hosts = vec![&host];
    hosts.extend(to_host.as_ref().filter(|to| **to != host));
    crate::core::approvals::gate_hosts(&call.gate(), Some(action), &hosts, || {
        let path = params.path.as_deref().unwrap_or("(cursor)");
        match (params.action, &params.to) {
            (FileAction::Copy, Some(to)) => format!(
                "file copy {host}:{path} to {}:{to}",
                to_host.as_ref().unwrap_or(&host)
            ),
            _ => format!("file {action} {path} on {host}"),
        }
    })
    .await?;
    match params.action {
        FileAction::Read => read(call, &host, &params).await,
        FileAction::Copy => copy(call, &host, &params).await,
        FileAction::Grep => grep(call, &host, &params).await,
        _ => single(call, &host, &params).await,
    }
}

/// The absolute path argument, checked for the obvious before it travels.
fn path_arg(params: &FileParams, name: &str, value: Option<&String>) -> Result<String, ToolError> {
    let path = value.ok_or_else(|| {
        E::invalid(
            "file",
            format!("action `{}` needs `{name}`", params.action.as_str()),
        )
    })?;
    if !path.starts_with('/') {
        return Err(E::invalid(
            "file",
            format!("`{name}` must be an absolute path, not `{path}`"),
        ));
    }
    if path.contains('\0') {
        return Err(E::invalid("file", format!("`{name}` contains a NUL byte")));
    }
    Ok(path.clone())
}

async fn send_file(
    call: &Call<'_>,
    host: &Token,
    op: pb::file_request::Op,
) -> Result<pb::file_reply::Result, ToolError> {
    let id = dispatch::request_id("file");
    let body = pb::exec_request::Body::File(pb::FileRequest { op: Some(op) });
    match dispatch::send(call, host, &id, body, FILE_TIMEOUT).await? {
        pb::exec_reply::Body::File(pb::FileReply {
            result: Some(result),
        }) => Ok(result),
        _ => Err(E::bad_reply(
            host,
            &"it answered a file request with something else",
        )),
    }
}

/// stat, list, write, append, move, delete: one request, one reply.
async fn single(
    call: &Call<'_>,
    host: &Token,
    params: &FileParams,
) -> Result<CallToolResult, ToolError> {
    use pb::file_request::Op;
    let path = path_arg(params, "path", params.path.as_ref())?;
    let op = match params.action {
        FileAction::Stat => Op::Stat(pb::FileStat { path: path.clone() }),
        FileAction::List => Op::List(pb::FileList {
            path: path.clone(),
            recursive: params.recursive.unwrap_or(false),
            max_depth: params.max_depth.unwrap_or(0),
            max_entries: params.max_entries.unwrap_or(0),
            hidden: params.hidden.unwrap_or(false),
        }),
        FileAction::Write | FileAction::Append => Op::Write(pb::FileWrite {
            path: path.clone(),
            content: content(params)?,
            append: params.action == FileAction::Append,
            create_dirs: params.create_dirs.unwrap_or(false),
            mode: params.mode.as_deref().map(parse_mode).transpose()?,
        }),
        FileAction::Move => Op::Move(pb::FileMove {
            from: path.clone(),
            to: path_arg(params, "to", params.to.as_ref())?,
            overwrite: params.overwrite.unwrap_or(false),
            create_dirs: params.create_dirs.unwrap_or(false),
        }),
        FileAction::Delete => Op::Delete(pb::FileDelete {
            path: path.clone(),
            recursive: params.recursive.unwrap_or(false),
        }),
        FileAction::Read | FileAction::Copy | FileAction::Grep => unreachable_action()?,
    };
    let mut result = FileResult {
        host: host.to_string(),
        action: params.action.as_str().to_string(),
        path,
        ..Default::default()
    };
    let text = match send_file(call, host, op).await? {
        pb::file_reply::Result::Stat(s) => {
            let view = StatView {
                kind: s.kind,
                size: s.size,
                mode: format!("{:04o}", s.mode & 0o7777),
                owner: s.owner,
                group: s.group,
                uid: s.uid,
                gid: s.gid,
                mtime_ms: s.mtime_ms,
                symlink_target: (!s.symlink_target.is_empty()).then_some(s.symlink_target),
            };
            let text = format!(
                "{} on {host}: {} of {} bytes, mode {}, owner {}:{}{}",
                result.path,
                view.kind,
                view.size,
                view.mode,
                view.owner,
                view.group,
                view.symlink_target
                    .as_deref()
                    .map(|t| format!(", -> {t}"))
                    .unwrap_or_default()
            );
            result.stat = Some(view);
            text
        }
        pb::file_reply::Result::List(l) => {
            let entries: Vec<EntryView> = l
                .entries
                .into_iter()
                .map(|e| EntryView {
                    path: e.path,
                    kind: e.kind,
                    size: e.size,
                    mode: format!("{:04o}", e.mode & 0o7777),
                    mtime_ms: e.mtime_ms,
                    symlink_target: (!e.symlink_target.is_empty()).then_some(e.symlink_target),
                })
                .collect();
            let mut text = format!("{} entries in {} on {host}", entries.len(), result.path);
            if l.truncated {
                text.push_str(&format!(" (cut: {})", l.truncated_reason));
            }
            text.push('\n');
            for e in &entries {
                let suffix = if e.kind == "directory" { "/" } else { "" };
                text.push_str(&format!("{:>10} {} {}{suffix}\n", e.size, e.mode, e.path));
            }
            result.truncated = Some(l.truncated);
            result.entries = Some(entries);
            text
        }
        pb::file_reply::Result::Write(w) => {
            let verb = if params.action == FileAction::Append {
                "appended to"
            } else if w.created {
                "created"
            } else {
                "replaced"
            };
            let text = format!(
                "{verb} {} on {host}: now {} bytes, sha256 {}",
                w.path, w.size, w.sha256
            );
            result.size = Some(w.size);
            result.sha256 = Some(w.sha256);
            result.detail = Some(text.clone());
            text
        }
        pb::file_reply::Result::Change(c) => {
            result.detail = Some(c.detail.clone());
            format!("{} on {host}", c.detail)
        }
        _ => {
            return Err(E::Mesh(format!(
                "host {host} sent an unexpected file reply"
            )));
        }
    };
    structured(&result, vec![text])
}

/// `grep`: a grep of one path, sent as the `grep` tool sends its requests (the host's grep
/// limits, roots and run-as account apply alike), shown as the file tool shows matches.
async fn grep(
    call: &Call<'_>,
    host: &Token,
    params: &FileParams,
) -> Result<CallToolResult, ToolError> {
    let path = path_arg(params, "path", params.path.as_ref())?;
    let request = pb::GrepRequest {
        paths: vec![path.clone()],
        pattern: params
            .pattern
            .clone()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| E::invalid("file", "action `grep` needs a non-empty `pattern`"))?,
        fixed: params.fixed.unwrap_or(false),
        ignore_case: params.ignore_case.unwrap_or(false),
        context: params.context.unwrap_or(0).min(100),
        max_matches: params
            .max_matches
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_GREP_MATCHES),
        globs: params.globs.clone().unwrap_or_default(),
        hidden: params.hidden.unwrap_or(false),
        max_line_bytes: call.state.config.max_line_bytes as u32,
        ..Default::default()
    };
    let g = super::grep::send(call, host, request, FILE_TIMEOUT).await?;
    let matches: Vec<MatchView> = g.matches.into_iter().map(MatchView::from).collect();
    let mut text = format!(
        "{} match(es) in {} of {} file(s) searched under {path} on {host}{}\n",
        matches.len(),
        g.files_matched,
        g.files_searched,
        if g.truncated {
            " (cut at max_matches)"
        } else {
            ""
        }
    );
    for m in &matches {
        text.push_str(&format!(
            "{}:{}: {}\n",
            m.path,
            m.line,
            m.text.trim_end_matches('\n')
        ));
    }
    let result = FileResult {
        host: host.to_string(),
        action: params.action.as_str().to_string(),
        path,
        truncated: Some(g.truncated),
        files_searched: Some(g.files_searched),
        matches: Some(matches),
        ..Default::default()
    };
    structured(&result, vec![text])
}

fn unreachable_action() -> Result<pb::file_request::Op, ToolError> {
    Err(E::Mesh(
        "internal: read, copy and grep are handled elsewhere".into(),
    ))
}

fn content(params: &FileParams) -> Result<Vec<u8>, ToolError> {
    let text = params.content.as_ref().ok_or_else(|| {
        E::invalid(
            "file",
            format!("action `{}` needs `content`", params.action.as_str()),
        )
    })?;
    let bytes = match params.encoding.unwrap_or(Encoding::Text) {
        Encoding::Text => text.as_bytes().to_vec(),
        Encoding::Base64 => STANDARD
            .decode(text.trim())
            .map_err(|e| E::invalid("file", format!("`content` is not valid base64: {e}")))?,
    };
    if bytes.len() > MAX_WRITE_BYTES {
        return Err(E::invalid(
            "file",
            format!(
                "`content` is {} bytes; one call writes at most {MAX_WRITE_BYTES} (append the rest in further calls, or copy the file from another host)",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

fn parse_mode(text: &str) -> Result<u32, ToolError> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            E::invalid(
                "file",
                format!("`mode` `{text}` is not an octal mode like 0644"),
            )
        })
}

/// A position in a file being paged: where the next page starts, and which version of the file
/// the previous page came from.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct ReadCursor {
    host: String,
    path: String,
    offset: u64,
    line: u64,
    raw: bool,
    ino: u64,
    mtime_ns: u64,
}

impl ReadCursor {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(text: &str) -> Option<Self> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text.trim()).ok()?).ok()
    }
}

async fn read(
    call: &Call<'_>,
    host: &Token,
    params: &FileParams,
) -> Result<CallToolResult, ToolError> {
    let config = &call.state.config;
    let (path, offset, line, raw, previous) = match &params.cursor {
        Some(text) => {
            let cursor = ReadCursor::decode(text).ok_or_else(|| {
                E::invalid(
                    "file",
                    "bad cursor: pass the `next_cursor` of the previous page unchanged",
                )
            })?;
            if cursor.host != host.as_str()
                || params.path.as_ref().is_some_and(|p| *p != cursor.path)
            {
                return Err(E::invalid(
                    "file",
                    format!(
                        "the cursor belongs to {} on {}, not to this host/path",
                        cursor.path, cursor.host
                    ),
                ));
            }
            (
                cursor.path.clone(),
                cursor.offset,
                cursor.line,
                cursor.raw,
                Some(cursor),
            )
        }
        None => {
            let raw = params.encoding == Some(Encoding::Base64);
            (
                path_arg(params, "path", params.path.as_ref())?,
                0,
                0,
                raw,
                None,
            )
        }
    };
    let max_bytes = if raw {
        params
            .max_bytes
            .unwrap_or(RAW_DEFAULT)
            .clamp(1, RAW_CEILING)
    } else {
        params
            .max_bytes
            .unwrap_or(config.page_max_bytes as u32)
            .clamp(1024, crate::config::PAGE_BYTES_CEILING as u32)
    };
    let op = pb::file_request::Op::Read(pb::FileRead {
        path: path.clone(),
        offset,
        line,
        max_lines: params
            .max_lines
            .unwrap_or(config.page_max_lines as u32)
            .clamp(1, crate::config::PAGE_LINES_CEILING as u32),
        max_bytes,
        max_line_bytes: config.max_line_bytes as u32,
        raw,
    });
    let pb::file_reply::Result::Read(page) = send_file(call, host, op).await? else {
        return Err(E::Mesh(format!(
            "host {host} sent an unexpected reply to read"
        )));
    };
    let identity = page.identity.unwrap_or_default();
    let changed =
        previous.is_some_and(|p| p.ino != identity.ino || p.mtime_ns != identity.mtime_ns);
    let next = (!page.eof).then(|| {
        ReadCursor {
            host: host.to_string(),
            path: path.clone(),
            offset: page.next_offset,
            line: page.next_line,
            raw,
            ino: identity.ino,
            mtime_ns: identity.mtime_ns,
        }
        .encode()
    });
    let mut result = FileResult {
        host: host.to_string(),
        action: "read".into(),
        path: path.clone(),
        next_cursor: next.clone(),
        eof: Some(page.eof),
        changed: changed.then_some(true),
        size: Some(identity.size),
        ..Default::default()
    };
    let note = if changed {
        " (the file changed since the previous page)"
    } else {
        ""
    };
    let continuation = match &next {
        Some(c) => format!("; more: read with cursor \"{c}\""),
        None => "; end of file".to_string(),
    };
    let blocks = if raw {
        let encoded = STANDARD.encode(&page.data);
        let footer = format!(
            "bytes {}–{} of {} ({} bytes) on {host} as base64{note}{continuation}",
            offset,
            offset + page.data.len() as u64,
            path,
            identity.size
        );
        result.content_base64 = Some(encoded.clone());
        vec![encoded, footer]
    } else {
        let footer = if page.lines == 0 {
            format!(
                "no lines at line {} of {path} on {host}{note}{continuation}",
                page.first_line + 1
            )
        } else {
            format!(
                "lines {}–{} of {path} on {host} ({} bytes){note}{continuation}",
                page.first_line + 1,
                page.first_line + u64::from(page.lines),
                identity.size
            )
        };
        result.text = Some(page.text.clone());
        result.first_line = Some(page.first_line + 1);
        result.lines = Some(page.lines);
        vec![page.text, footer]
    };
    structured(&result, blocks)
}

/// Streams `path` from `host` to `to` on `to_host` in chunks through the gateway, hashing on the
/// way; the destination checks the sha256 before it renames the file into place.
async fn copy(
    call: &Call<'_>,
    host: &Token,
    params: &FileParams,
) -> Result<CallToolResult, ToolError> {
    let from = path_arg(params, "path", params.path.as_ref())?;
    let to = path_arg(params, "to", params.to.as_ref())?;
    let to_host = match &params.to_host {
        Some(h) => Token::parse("host id", h).map_err(|e| E::invalid("file", e.to_string()))?,
        None => host.clone(),
    };
    if to_host != *host {
        super::reach::check(call, &to_host).await?;
    }
    if to_host == *host && to == from {
        return Err(E::invalid(
            "file",
            "copy source and destination are the same file",
        ));
    }
    let transfer = format!("copy-{}", dispatch::random_suffix());
    let started = std::time::Instant::now();
    let read_at = |offset: u64| {
        let op = pb::file_request::Op::ChunkRead(pb::FileChunkRead {
            path: from.clone(),
            offset,
            len: COPY_CHUNK,
        });
        async move {
            match send_file(call, host, op).await? {
                pb::file_reply::Result::ChunkRead(chunk) => Ok(chunk),
                _ => Err(E::Mesh(format!(
                    "host {host} sent an unexpected reply to a chunk read"
                ))),
            }
        }
    };
    let write_at = |offset: u64, data: Vec<u8>, sha256: Option<String>| {
        let op = pb::file_request::Op::ChunkWrite(pb::FileChunkWrite {
            path: to.clone(),
            transfer_id: transfer.clone(),
            offset,
            data,
            finish: sha256.is_some(),
            sha256: sha256.unwrap_or_default(),
            create_dirs: params.create_dirs.unwrap_or(false),
            overwrite: params.overwrite.unwrap_or(false),
        });
        let to_host = to_host.clone();
        async move {
            match send_file(call, &to_host, op).await? {
                pb::file_reply::Result::ChunkWrite(written) => Ok(written),
                _ => Err(E::Mesh(format!(
                    "host {to_host} sent an unexpected reply to a chunk write"
                ))),
            }
        }
    };
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    let mut chunk = read_at(0).await?;
    let first = chunk.identity.unwrap_or_default();
    // Each chunk is written while the next one is read, so both hosts work at once.
    let written = loop {
        let identity = chunk.identity.unwrap_or_default();
        if identity.ino != first.ino || identity.mtime_ns != first.mtime_ns {
            return Err(E::invalid(
                "file",
                format!("{from} on {host} changed while it was being copied; copy it again"),
            ));
        }
        hasher.update(&chunk.data);
        let len = chunk.data.len() as u64;
        if chunk.eof {
            let sha256 = hex(&hasher.clone().finalize());
            let written = write_at(offset, chunk.data, Some(sha256)).await?;
            offset += len;
            break written;
        }
        let (written, next) =
            tokio::join!(write_at(offset, chunk.data, None), read_at(offset + len));
        written?;
        chunk = next?;
        offset += len;
    };
    if !written.committed {
        return Err(E::Mesh(format!("host {to_host} did not commit {to}")));
    }
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    let mb_per_s = ((offset as f64 / 1e6 / secs) * 10.0).round() / 10.0;
    let detail = format!(
        "copied {from} on {host} to {to} on {to_host}: {offset} bytes, sha256 {} verified, {mb_per_s} MB/s",
        written.sha256
    );
    let result = FileResult {
        host: host.to_string(),
        action: "copy".into(),
        path: from.clone(),
        size: Some(offset),
        sha256: Some(written.sha256),
        to_host: Some(to_host.to_string()),
        to: Some(to.clone()),
        mb_per_s: Some(mb_per_s),
        detail: Some(detail.clone()),
        ..Default::default()
    };
    structured(&result, vec![detail])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_cursor_round_trips_and_garbage_is_refused() {
        let c = ReadCursor {
            host: "web-1".into(),
            path: "/var/log/a:b.log".into(),
            offset: 123_456_789,
            line: 1_900_000,
            raw: false,
            ino: 42,
            mtime_ns: 7,
        };
        assert_eq!(ReadCursor::decode(&c.encode()), Some(c));
        assert_eq!(ReadCursor::decode("nope"), None);
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0640").unwrap(), 0o640);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("rwx").is_err());
    }
}
