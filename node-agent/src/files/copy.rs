//! `FileChunkRead` and `FileChunkWrite`: a copy between hosts in ordered chunks, checked by sha256 before it replaces anything.
//!
//! The destination keeps one transfer per `transfer_id` in memory: a temp file beside the
//! destination, the next offset it expects, and a running sha256. The last chunk (`finish`)
//! compares the checksum, then renames the temp file into place. A transfer that sees no chunk
//! for [`IDLE_TRANSFER`] is removed (with its temp file) by the sweeper, and so is every
//! transfer when the agent stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use execmesh_proto::pb;
use sha2::{Digest, Sha256};
use tracing::info;

use super::Files;
use super::error::FileError;
use super::read::{identity, open_regular, read_at};
use super::roots::{Final, Parents};
use super::write::{DEFAULT_MODE, Keep, Temp};

/// Largest chunk read or written at once.
pub const MAX_CHUNK_BYTES: u32 = 512 * 1024;
/// A transfer without a chunk for this long is abandoned.
pub const IDLE_TRANSFER: Duration = Duration::from_secs(60);
/// Most copies in progress on one host.
pub const MAX_TRANSFERS: usize = 64;
/// Longest transfer id.
const MAX_TRANSFER_ID: usize = 128;

/// Answers a `FileChunkRead`: up to `len` (at most [`MAX_CHUNK_BYTES`]; 0 means that much)
/// raw bytes at `offset`, with the file's identity so the caller can tell it changed.
pub fn chunk_read(
    files: &Files,
    req: pb::FileChunkRead,
) -> Result<pb::FileChunkReadReply, FileError> {
    let raw = req.path.as_str();
    let len = chunk_len(req.len);
    let (real, file, meta) = open_regular(files, raw)?;
    let data = read_at(&file, req.offset, len).map_err(|e| FileError::io(raw, "reading", e))?;
    Ok(pb::FileChunkReadReply {
        path: real.display().to_string(),
        eof: req.offset + data.len() as u64 >= meta.len(),
        data,
        identity: Some(identity(&meta)),
    })
}

/// Answers a `FileChunkWrite`: the first chunk (offset 0) starts a transfer, every chunk must
/// continue exactly where the previous one ended, and the one with `finish` commits.
pub fn chunk_write(
    files: &Files,
    req: pb::FileChunkWrite,
) -> Result<pb::FileChunkWriteReply, FileError> {
    let (raw, id) = check_chunk_write(&req)?;
    let transfer = files.transfers.get_or_start(files, &req)?;
    let mut t = lock(&transfer);
    if t.temp.is_none() {
        return Err(unknown(raw, id));
    }
    if t.path != req.path {
        return Err(FileError::invalid(
            raw,
            format!("transfer {id} writes to {}, not to this path", t.path),
        ));
    }
    if req.offset != t.received {
        return Err(FileError::invalid(
            raw,
            format!(
                "transfer {id}: chunks must arrive in order: expected offset {}, received {}",
                t.received, req.offset
            ),
        ));
    }
    let total = t.received + req.data.len() as u64;
    if total > files.limits.max_copy_bytes {
        files.transfers.remove(id);
        t.temp = None;
        return Err(FileError::too_large(
            raw,
            "the copy",
            total,
            files.limits.max_copy_bytes,
        ));
    }
    let filled = t.temp.as_mut().map_or(Ok(()), |temp| temp.fill(&req.data));
    if let Err(e) = filled {
        files.transfers.remove(id);
        t.temp = None;
        return Err(e);
    }
    t.hasher.update(&req.data);
    t.received = total;
    t.last_seen = Instant::now();
    if !req.finish {
        return Ok(pb::FileChunkWriteReply {
            path: raw.to_string(),
            received: t.received,
            committed: false,
            sha256: String::new(),
        });
    }

    // Finishing: whatever happens next, the transfer is over.
    files.transfers.remove(id);
    let Some(mut temp) = t.temp.take() else {
        return Err(unknown(raw, id));
    };
    let actual = hex::encode(t.hasher.clone().finalize());
    check_sha256(&req, &actual)?;
    let existing = temp.place.lstat()?;
    let keep = match &existing {
        Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            return Err(FileError::is_a_directory(raw, ""));
        }
        Some(_) if !req.overwrite => return Err(FileError::already_exists(raw)),
        Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
            Some(Keep::of(&files.roots, &temp.place, st)?)
        }
        _ => None,
    };
    temp.finish(DEFAULT_MODE, keep)?;
    let path = temp.place.path();
    temp.commit(req.overwrite)?;
    Ok(pb::FileChunkWriteReply {
        path: path.display().to_string(),
        received: t.received,
        committed: true,
        sha256: actual,
    })
}

/// Refuses a finished copy whose sha256 (`actual`) is not the one the finishing chunk names.
pub(crate) fn check_sha256(req: &pb::FileChunkWrite, actual: &str) -> Result<(), FileError> {
    let raw = req.path.as_str();
    if req.sha256.is_empty() {
        return Err(FileError::invalid(
            raw,
            "the finishing chunk carries no sha256; the copy was discarded",
        ));
    }
    if !actual.eq_ignore_ascii_case(req.sha256.trim()) {
        return Err(FileError::ChecksumMismatch {
            path: raw.to_string(),
            expected: req.sha256.clone(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// The bytes a `FileChunkRead` of `len` returns at most: [`MAX_CHUNK_BYTES`], which 0 means.
pub(crate) fn chunk_len(len: u32) -> usize {
    let len = match len {
        0 => MAX_CHUNK_BYTES,
        n => n.min(MAX_CHUNK_BYTES),
    };
    len as usize
}

/// Checks a chunk's transfer id and size: its path and transfer id as the chunk names them.
pub(crate) fn check_chunk_write(req: &pb::FileChunkWrite) -> Result<(&str, &str), FileError> {
    let raw = req.path.as_str();
    let id = req.transfer_id.as_str();
    check_transfer_id(raw, id)?;
    check_chunk(raw, &req.data)?;
    Ok((raw, id))
}

/// Refuses a transfer id that is empty, too long, or more than `[A-Za-z0-9._-]`.
fn check_transfer_id(raw: &str, id: &str) -> Result<(), FileError> {
    if id.is_empty()
        || id.len() > MAX_TRANSFER_ID
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(FileError::invalid(
            raw,
            format!("transfer_id must be 1 to {MAX_TRANSFER_ID} of [A-Za-z0-9._-]"),
        ));
    }
    Ok(())
}

/// Refuses a chunk over [`MAX_CHUNK_BYTES`].
fn check_chunk(raw: &str, data: &[u8]) -> Result<(), FileError> {
    if data.len() > MAX_CHUNK_BYTES as usize {
        return Err(FileError::too_large(
            raw,
            "the chunk",
            data.len() as u64,
            u64::from(MAX_CHUNK_BYTES),
        ));
    }
    Ok(())
}

/// The refusal of a chunk for a transfer this host does not hold.
pub(crate) fn unknown(raw: &str, id: &str) -> FileError {
    FileError::invalid(
        raw,
        format!(
            "transfer {id} is not in progress on this host (it finished, failed, or was abandoned after {} s without a chunk); start again at offset 0",
            IDLE_TRANSFER.as_secs()
        ),
    )
}

/// The copies in progress on this host, by transfer id.
#[derive(Default)]
pub struct Transfers {
    active: Mutex<HashMap<String, Arc<Mutex<Transfer>>>>,
}

/// One copy in progress.
struct Transfer {
    /// The temp file and its destination; `None` once committed or abandoned.
    temp: Option<Temp>,
    /// The destination as the first chunk named it; every chunk must name the same.
    path: String,
    /// Bytes written so far: the offset the next chunk must have.
    received: u64,
    hasher: Sha256,
    last_seen: Instant,
}

// === impl Transfers ===

impl Transfers {
    /// The transfer `req` continues, or a new one when it starts at offset 0.
    fn get_or_start(
        &self,
        files: &Files,
        req: &pb::FileChunkWrite,
    ) -> Result<Arc<Mutex<Transfer>>, FileError> {
        let mut active = lock(&self.active);
        if let Some(t) = active.get(&req.transfer_id) {
            return Ok(Arc::clone(t));
        }
        let raw = req.path.as_str();
        if req.offset != 0 {
            return Err(unknown(raw, &req.transfer_id));
        }
        if active.len() >= MAX_TRANSFERS {
            return Err(FileError::invalid(
                raw,
                format!(
                    "{MAX_TRANSFERS} copies are already in progress on this host; try again later"
                ),
            ));
        }
        let place = files
            .roots
            .place(raw, Final::Follow, Parents::create_if(req.create_dirs))?;
        match place.lstat()? {
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                return Err(FileError::is_a_directory(raw, ""));
            }
            Some(_) if !req.overwrite => return Err(FileError::already_exists(raw)),
            _ => {}
        }
        let temp = Temp::create(&files.roots, place)?;
        let transfer = Arc::new(Mutex::new(Transfer {
            temp: Some(temp),
            path: req.path.clone(),
            received: 0,
            hasher: Sha256::new(),
            last_seen: Instant::now(),
        }));
        active.insert(req.transfer_id.clone(), Arc::clone(&transfer));
        Ok(transfer)
    }

    fn remove(&self, id: &str) {
        lock(&self.active).remove(id);
    }

    /// Number of copies in progress.
    pub fn len(&self) -> usize {
        lock(&self.active).len()
    }

    /// Whether no copy is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes (with their temp files) the transfers idle for [`IDLE_TRANSFER`] at `now`; a
    /// transfer busy with a chunk is not idle. Returns how many were removed.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut active = lock(&self.active);
        let before = active.len();
        active.retain(|id, t| {
            let Ok(mut t) = t.try_lock() else {
                return true;
            };
            if now.saturating_duration_since(t.last_seen) < IDLE_TRANSFER {
                return true;
            }
            info!(transfer = %id, path = %t.path, received = t.received,
                  "copy abandoned: no chunk for {} s", IDLE_TRANSFER.as_secs());
            t.temp = None;
            false
        });
        before - active.len()
    }

    /// Removes every transfer and its temp file (at shutdown). Returns how many there were.
    pub fn abandon_all(&self) -> usize {
        // Out of the map first: a chunk in progress may need the map's lock to finish.
        let all: Vec<_> = lock(&self.active).drain().collect();
        for (_, t) in &all {
            lock(t).temp = None;
        }
        all.len()
    }
}

/// Locks a mutex, taking over the data of a panicked holder (transfers stay consistent:
/// a chunk either counted or not).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{Fixture, limits};
    use super::super::{Files, Limits, Roots};
    use super::*;

    fn chunk(fx: &Fixture, rel: &str, id: &str, offset: u64, data: &[u8]) -> pb::FileChunkWrite {
        pb::FileChunkWrite {
            path: fx.path(rel),
            transfer_id: id.into(),
            offset,
            data: data.to_vec(),
            ..Default::default()
        }
    }

    fn finish(mut c: pb::FileChunkWrite, sha: &str) -> pb::FileChunkWrite {
        c.finish = true;
        c.sha256 = sha.into();
        c
    }

    fn temps(fx: &Fixture) -> Vec<String> {
        std::fs::read_dir(&fx.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn a_file_copied_in_chunks_arrives_whole() {
        let fx = Fixture::new();
        let source: Vec<u8> = (0..1_300_000u32).map(|i| (i % 251) as u8).collect();
        fx.write("src.bin", &source);
        // Read the source in chunks, as the gateway does, and write them to the destination.
        let mut offset = 0;
        let mut pieces = Vec::new();
        loop {
            let r = chunk_read(
                &fx.files,
                pb::FileChunkRead {
                    path: fx.path("src.bin"),
                    offset,
                    len: 0,
                },
            )
            .unwrap();
            assert!(r.data.len() <= MAX_CHUNK_BYTES as usize);
            assert_eq!(r.identity.as_ref().unwrap().size, source.len() as u64);
            offset += r.data.len() as u64;
            pieces.push(r.data);
            if r.eof {
                break;
            }
        }
        assert_eq!(pieces.len(), 3);
        let mut offset = 0;
        for (i, piece) in pieces.iter().enumerate() {
            let mut c = chunk(&fx, "dst.bin", "t-1", offset, piece);
            if i + 1 == pieces.len() {
                c = finish(c, &sha(&source));
            }
            let reply = chunk_write(&fx.files, c).unwrap();
            offset += piece.len() as u64;
            assert_eq!(reply.received, offset);
            assert_eq!(reply.committed, i + 1 == pieces.len());
            if reply.committed {
                assert_eq!(reply.sha256, sha(&source));
                assert!(reply.path.ends_with("dst.bin"));
            } else {
                // In progress: only the temp file exists.
                assert!(!fx.exists("dst.bin"));
                assert_eq!(temps(&fx).len(), 1);
            }
        }
        assert_eq!(std::fs::read(fx.abs("dst.bin")).unwrap(), source);
        assert!(temps(&fx).is_empty());
        assert!(fx.files.transfers.is_empty());
    }

    #[test]
    fn chunks_out_of_order_are_refused_naming_both_offsets() {
        let fx = Fixture::new();
        chunk_write(&fx.files, chunk(&fx, "d", "t", 0, b"abc")).unwrap();
        let err = chunk_write(&fx.files, chunk(&fx, "d", "t", 10, b"x")).unwrap_err();
        assert!(matches!(err, FileError::Invalid { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("expected offset 3") && text.contains("received 10"),
            "{text}"
        );
        // The transfer survives the refused chunk.
        let reply = chunk_write(
            &fx.files,
            finish(chunk(&fx, "d", "t", 3, b"def"), &sha(b"abcdef")),
        )
        .unwrap();
        assert!(reply.committed);
        // An unknown transfer that does not start at 0 is refused.
        let err = chunk_write(&fx.files, chunk(&fx, "e", "other", 5, b"x")).unwrap_err();
        assert!(err.to_string().contains("not in progress"), "{err}");
    }

    #[test]
    fn a_checksum_mismatch_is_refused_and_leaves_nothing_behind() {
        let fx = Fixture::new();
        chunk_write(&fx.files, chunk(&fx, "d", "t", 0, b"abc")).unwrap();
        let err = chunk_write(
            &fx.files,
            finish(chunk(&fx, "d", "t", 3, b"def"), &sha(b"other")),
        )
        .unwrap_err();
        assert!(matches!(err, FileError::ChecksumMismatch { .. }), "{err}");
        assert!(!fx.exists("d"));
        assert!(temps(&fx).is_empty());
        assert!(fx.files.transfers.is_empty());
    }

    #[test]
    fn an_existing_destination_is_kept_unless_overwrite() {
        let fx = Fixture::new();
        fx.write("d", "old");
        let err = chunk_write(&fx.files, chunk(&fx, "d", "t", 0, b"new")).unwrap_err();
        assert!(matches!(err, FileError::AlreadyExists { .. }), "{err}");
        let mut c = finish(chunk(&fx, "d", "t", 0, b"new"), &sha(b"new"));
        c.overwrite = true;
        assert!(chunk_write(&fx.files, c).unwrap().committed);
        assert_eq!(std::fs::read(fx.abs("d")).unwrap(), b"new");
    }

    #[test]
    fn copies_over_the_limit_are_refused_and_removed() {
        let fx = Fixture::with_limits(Limits {
            max_copy_bytes: 5,
            ..limits()
        });
        chunk_write(&fx.files, chunk(&fx, "d", "t", 0, b"abc")).unwrap();
        let err = chunk_write(&fx.files, chunk(&fx, "d", "t", 3, b"def")).unwrap_err();
        assert!(
            matches!(
                err,
                FileError::TooLarge {
                    size: 6,
                    limit: 5,
                    ..
                }
            ),
            "{err}"
        );
        assert!(temps(&fx).is_empty());
        assert!(fx.files.transfers.is_empty());
    }

    #[test]
    fn idle_transfers_are_swept_and_all_are_removed_at_shutdown() {
        let fx = Fixture::new();
        chunk_write(&fx.files, chunk(&fx, "a", "t1", 0, b"abc")).unwrap();
        chunk_write(&fx.files, chunk(&fx, "b", "t2", 0, b"abc")).unwrap();
        assert_eq!(temps(&fx).len(), 2);
        assert_eq!(fx.files.transfers.sweep(Instant::now()), 0);
        assert_eq!(
            fx.files
                .transfers
                .sweep(Instant::now() + IDLE_TRANSFER + Duration::from_secs(1)),
            2
        );
        assert!(temps(&fx).is_empty());
        chunk_write(&fx.files, chunk(&fx, "c", "t3", 0, b"abc")).unwrap();
        assert_eq!(fx.files.transfers.abandon_all(), 1);
        assert!(temps(&fx).is_empty());
        let err = chunk_write(&fx.files, chunk(&fx, "c", "t3", 3, b"def")).unwrap_err();
        assert!(err.to_string().contains("not in progress"), "{err}");
    }

    #[test]
    fn a_destination_outside_the_roots_is_refused() {
        let fx = Fixture::new();
        let files = Files::with(Roots::new(std::slice::from_ref(&fx.root)), limits());
        let mut c = chunk(&fx, "x", "t", 0, b"abc");
        c.path = "/etc/execmesh-copy".into();
        let err = chunk_write(&files, c).unwrap_err();
        assert!(matches!(err, FileError::OutsideRoots { .. }), "{err}");
        let err = chunk_read(
            &files,
            pb::FileChunkRead {
                path: "/etc/hostname".into(),
                offset: 0,
                len: 10,
            },
        )
        .unwrap_err();
        assert!(matches!(err, FileError::OutsideRoots { .. }), "{err}");
    }
}
