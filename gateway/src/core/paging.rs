//! Pages of job output read from MESH_OUT by stream position, forward from a cursor or from the tail.
//!
//! A cursor names a stream sequence and a line offset inside the record stored there, so reading
//! the page at line 1,900,000 is one batch direct get from that sequence, the same cost as the
//! first page, on any gateway replica. Tail reads find their start with a binary search over
//! sequences (log₂ of the job's record count in direct gets).
//!
//! Clients get cursors sealed with a MAC ([`CursorKey`]) over the position and the user they were
//! issued to, so a cursor cannot be forged, altered to name another job, or replayed by another
//! user; any replica opens it, since the key derives from the token key they all share.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message as _;

use execmesh_proto::jetstream::OUT_STREAM;
use execmesh_proto::{Token, pb, subject};

use crate::core::mesh::{DirectGet, Mesh, MeshError, StoredMsg};

/// Records asked for per direct get; the byte cap below usually ends the batch first.
const BATCH_RECORDS: usize = 32;

/// A position in a job's output: the record at `seq` (or the next one of the job after it),
/// with its first `skip` lines already read.
///
/// Clients only ever see it sealed ([`CursorKey::seal`]): bound to the user it was issued to, its
/// host and its job, so it cannot be replayed by another user or pointed at another job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub host: Token,
    pub job: Token,
    pub seq: u64,
    pub skip: u32,
}

/// Why a cursor could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// Garbage, an altered cursor, one issued to another user or by a gateway with another key:
    /// one answer for all, so a cursor tells nothing about jobs the caller may not see.
    #[error("the cursor is not one this gateway issued to you (it must be passed back unchanged)")]
    Malformed,
    #[error("the cursor belongs to job {cursor_job}, not to job {job}")]
    OtherJob { cursor_job: Token, job: Token },
}

/// The key that seals cursors: HMAC-SHA256 with a secret derived from the gateway's token key,
/// which every replica shares, so a cursor issued by one replica opens on any other.
#[derive(Clone)]
pub struct CursorKey {
    key: ring::hmac::Key,
}

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

/// The version tag of sealed cursors; cursors of earlier versions (unsealed) are refused.
const CURSOR_VERSION: &str = "2";

// === impl CursorKey ===

impl CursorKey {
    /// A key from `secret` (32 bytes derived for this purpose only, see
    /// [`crate::core::auth::SigningKey::derive_secret`]) for the cursors of `tenant`.
    pub fn new(secret: &[u8], tenant: &Token) -> Self {
        let mut material = secret.to_vec();
        material.extend_from_slice(tenant.as_str().as_bytes());
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &material),
        }
    }

    /// The opaque text handed to `user`: the position, then a MAC over it and the user.
    pub fn seal(&self, cursor: &Cursor, user: &Token) -> String {
        let plain = cursor.plain();
        let tag = ring::hmac::sign(&self.key, &signed_bytes(user, &plain));
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(plain),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The cursor `text` names, if this key sealed it for `user`. Everything else (garbage, an
    /// altered position, another user's cursor) is [`CursorError::Malformed`].
    pub fn open(&self, text: &str, user: &Token) -> Result<Cursor, CursorError> {
        let (plain, tag) = text.trim().split_once('.').ok_or(CursorError::Malformed)?;
        let plain = URL_SAFE_NO_PAD
            .decode(plain)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(CursorError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| CursorError::Malformed)?;
        ring::hmac::verify(&self.key, &signed_bytes(user, &plain), &tag)
            .map_err(|_| CursorError::Malformed)?;
        Cursor::parse(&plain)
    }
}

/// What a cursor's MAC covers: a purpose tag, the user it was issued to and the position.
fn signed_bytes(user: &Token, plain: &str) -> Vec<u8> {
    format!("execmesh job cursor\n{user}\n{plain}").into_bytes()
}

// === impl Cursor ===

impl Cursor {
    /// The start of a job's output.
    pub fn start(host: Token, job: Token) -> Self {
        Self {
            host,
            job,
            seq: 1,
            skip: 0,
        }
    }

    /// The position as text, before it is sealed.
    fn plain(&self) -> String {
        format!(
            "{CURSOR_VERSION}:{}:{}:{}:{}",
            self.host, self.job, self.seq, self.skip
        )
    }

    fn parse(plain: &str) -> Result<Self, CursorError> {
        let parts: Vec<&str> = plain.split(':').collect();
        let [CURSOR_VERSION, host, job, seq, skip] = parts[..] else {
            return Err(CursorError::Malformed);
        };
        Ok(Self {
            host: Token::parse("host id", host).map_err(|_| CursorError::Malformed)?,
            job: Token::parse("job id", job).map_err(|_| CursorError::Malformed)?,
            seq: seq.parse().map_err(|_| CursorError::Malformed)?,
            skip: skip.parse().map_err(|_| CursorError::Malformed)?,
        })
    }
}

/// Limits of one page.
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    pub max_lines: usize,
    pub max_bytes: usize,
    /// Longer lines are cut here and marked.
    pub max_line_bytes: usize,
}

/// One page of output.
#[derive(Debug, Clone)]
pub struct Page {
    /// The lines, each ending in '\n' (except a job's unterminated last line).
    pub text: String,
    /// Number of lines in `text`.
    pub lines: usize,
    /// Job-wide number (from 0) of the first line in `text`.
    pub first_line: u64,
    /// Lines that were clamped.
    pub clamped: usize,
    /// Where the next page starts.
    pub next: Cursor,
    /// The job's exit record was reached: there is no more output, ever.
    pub exit: Option<pb::JobStatus>,
    /// Everything stored so far was read (the job may still be writing).
    pub caught_up: bool,
    /// Output before `first_line` that the cursor asked for is no longer stored: MESH_OUT
    /// evicted it (its byte limit, or age). The page starts at the oldest line still there.
    pub evicted: bool,
}

/// Reads forward from `cursor`.
pub async fn read(mesh: &Mesh, cursor: Cursor, limits: PageLimits) -> Result<Page, MeshError> {
    let subject = subject::out(&mesh.tenant, &cursor.host, &cursor.job);
    let mut page = Page {
        text: String::new(),
        lines: 0,
        first_line: 0,
        clamped: 0,
        next: cursor.clone(),
        exit: None,
        caught_up: false,
        evicted: false,
    };
    let mut seq = cursor.seq.max(1);
    let mut skip = cursor.skip as usize;
    let mut first = true;
    loop {
        let request = DirectGet {
            seq: Some(seq),
            next_by_subj: Some(subject.clone()),
            batch: Some(BATCH_RECORDS),
            max_bytes: Some(limits.max_bytes * 2 + 64 * 1024),
            ..Default::default()
        };
        let batch = mesh.direct_get(OUT_STREAM, &request).await?;
        let Some(last_pending) = batch.last().map(|m| m.pending) else {
            page.caught_up = true;
            page.next = Cursor {
                seq,
                skip: skip as u32,
                ..cursor
            };
            return Ok(page);
        };
        for msg in batch {
            if msg.rejected.is_some() {
                // Not written by the job's host (planted): skipped, and paging goes on past it.
                seq = msg.seq + 1;
                skip = 0;
                continue;
            }
            match decode(&msg)? {
                pb::output_record::Body::Exit(exit) => {
                    page.exit = Some(exit.status.unwrap_or_default());
                    page.caught_up = true;
                    page.next = Cursor {
                        seq: msg.seq,
                        skip: 0,
                        ..cursor
                    };
                    return Ok(page);
                }
                pb::output_record::Body::Chunk(chunk) => {
                    if first {
                        // A cursor into a record that is gone resumes at the oldest one left,
                        // from its start; a cursor at the start finds line 0 gone.
                        if skip > 0 && msg.seq != cursor.seq {
                            skip = 0;
                            page.evicted = true;
                        }
                        if cursor.seq <= 1 && cursor.skip == 0 && chunk.first_line > 0 {
                            page.evicted = true;
                        }
                        page.first_line = chunk.first_line + skip as u64;
                        first = false;
                    }
                    for (i, line) in chunk
                        .data
                        .split_inclusive(|b| *b == b'\n')
                        .enumerate()
                        .skip(skip)
                    {
                        let full = page.lines >= limits.max_lines
                            || (page.lines > 0
                                && page.text.len() + line.len().min(limits.max_line_bytes + 64)
                                    > limits.max_bytes);
                        if full {
                            page.next = Cursor {
                                seq: msg.seq,
                                skip: i as u32,
                                ..cursor
                            };
                            return Ok(page);
                        }
                        push_line(&mut page, line, limits.max_line_bytes);
                    }
                    seq = msg.seq + 1;
                    skip = 0;
                }
            }
        }
        if last_pending == 0 {
            page.caught_up = true;
            page.next = Cursor {
                seq,
                skip: 0,
                ..cursor
            };
            return Ok(page);
        }
    }
}

/// A cursor at the last `lines` lines of the job's output stored so far.
pub async fn tail(mesh: &Mesh, host: Token, job: Token, lines: u64) -> Result<Cursor, MeshError> {
    let subject = subject::out(&mesh.tenant, &host, &job);
    let start = Cursor::start(host, job);
    let last = mesh
        .direct_get(
            OUT_STREAM,
            &DirectGet {
                last_by_subj: Some(subject.clone()),
                ..Default::default()
            },
        )
        .await?;
    // A last record its host did not write (planted): read from the start instead.
    let Some(last) = last.into_iter().next().filter(|m| m.rejected.is_none()) else {
        return Ok(start);
    };
    let total = match decode(&last)? {
        pb::output_record::Body::Chunk(c) => c.first_line + u64::from(c.line_count),
        pb::output_record::Body::Exit(e) => e.status.map(|s| s.lines).unwrap_or(0),
    };
    let target = total.saturating_sub(lines);
    if target == 0 {
        return Ok(start);
    }
    // Find the last chunk whose first line is at or before `target`.
    let probe = |from: u64| {
        let subject = subject.clone();
        async move {
            let msg = mesh
                .direct_get(
                    OUT_STREAM,
                    &DirectGet {
                        seq: Some(from),
                        next_by_subj: Some(subject),
                        ..Default::default()
                    },
                )
                .await?
                .into_iter()
                .next();
            match msg {
                // Planted: counts as the end, so the search settles on a real chunk before it.
                Some(msg) if msg.rejected.is_some() => Ok(Some((msg.seq, None))),
                Some(msg) => match decode(&msg)? {
                    pb::output_record::Body::Chunk(c) => Ok(Some((msg.seq, Some(c.first_line)))),
                    pb::output_record::Body::Exit(_) => Ok(Some((msg.seq, None))),
                },
                None => Ok::<_, MeshError>(None),
            }
        }
    };
    let Some((mut lo, Some(mut lo_line))) = probe(1).await? else {
        return Ok(start);
    };
    let mut hi = last.seq;
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        match probe(mid).await? {
            Some((seq, Some(first_line))) if first_line <= target && seq <= hi => {
                lo = seq;
                lo_line = first_line;
            }
            _ => hi = mid - 1,
        }
    }
    Ok(Cursor {
        seq: lo,
        skip: (target - lo_line) as u32,
        ..start
    })
}

fn decode(msg: &StoredMsg) -> Result<pb::output_record::Body, MeshError> {
    pb::OutputRecord::decode(msg.payload.clone())
        .ok()
        .and_then(|r| r.body)
        .ok_or_else(|| MeshError::Corrupt {
            seq: msg.seq,
            reason: "not an output record".into(),
        })
}

fn push_line(page: &mut Page, line: &[u8], max_line_bytes: usize) {
    page.lines += 1;
    if line.len() <= max_line_bytes {
        page.text.push_str(&String::from_utf8_lossy(line));
        return;
    }
    let mut cut = max_line_bytes;
    // Never split a UTF-8 sequence: back up to a character boundary.
    while cut > 0 && (line[cut] & 0b1100_0000) == 0b1000_0000 {
        cut -= 1;
    }
    let rest = line.len() - cut - usize::from(line.ends_with(b"\n"));
    page.text.push_str(&String::from_utf8_lossy(&line[..cut]));
    page.text
        .push_str(&format!(" … [line clamped: {rest} more bytes]\n"));
    page.clamped += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor {
            host: Token::parse("host id", "web-1").unwrap(),
            job: Token::parse("job id", "build-x1").unwrap(),
            seq: 1_900_000,
            skip: 17,
        }
    }

    fn key() -> CursorKey {
        CursorKey::new(&[7; 32], &Token::parse("tenant", "default").unwrap())
    }

    fn user(name: &str) -> Token {
        Token::parse("user", name).unwrap()
    }

    #[test]
    fn cursor_round_trips_for_its_user_and_refuses_garbage() {
        let (key, alice) = (key(), user("alice"));
        let c = cursor();
        assert_eq!(key.open(&key.seal(&c, &alice), &alice).unwrap(), c);
        for bad in [
            "",
            "!!!",
            "MTox",
            &URL_SAFE_NO_PAD.encode("1:web-1:build-x1:1:0"),
            &format!("{}.AAAA", URL_SAFE_NO_PAD.encode("2:web-1:build-x1:1:0")),
        ] {
            assert!(key.open(bad, &alice).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_cursor_opens_only_for_its_user_with_its_key_and_unaltered() {
        let (key, alice) = (key(), user("alice"));
        let sealed = key.seal(&cursor(), &alice);
        assert!(matches!(
            key.open(&sealed, &user("bob")),
            Err(CursorError::Malformed)
        ));
        let other_key = CursorKey::new(&[8; 32], &Token::parse("tenant", "default").unwrap());
        assert!(other_key.open(&sealed, &alice).is_err(), "another key");
        let other_tenant = CursorKey::new(&[7; 32], &Token::parse("tenant", "acme").unwrap());
        assert!(
            other_tenant.open(&sealed, &alice).is_err(),
            "another tenant"
        );
        // The same MAC with the position moved to another host, job or sequence.
        let (_, tag) = sealed.split_once('.').unwrap();
        for plain in [
            "2:web-2:build-x1:1900000:17",
            "2:web-1:other-x1:1900000:17",
            "2:web-1:build-x1:1:0",
        ] {
            let moved = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(plain));
            assert!(key.open(&moved, &alice).is_err(), "{plain} accepted");
        }
    }

    #[test]
    fn long_lines_are_clamped_with_a_marker_on_a_char_boundary() {
        let mut page = Page {
            text: String::new(),
            lines: 0,
            first_line: 0,
            clamped: 0,
            next: cursor(),
            exit: None,
            caught_up: false,
            evicted: false,
        };
        let line = format!("{}\n", "é".repeat(100));
        push_line(&mut page, line.as_bytes(), 81);
        assert!(page.text.starts_with(&"é".repeat(40)));
        assert!(
            page.text.ends_with(" … [line clamped: 120 more bytes]\n"),
            "{}",
            page.text
        );
        assert_eq!(page.clamped, 1);
    }
}
