//! `FileChunkWrite` on an SSH target: the destination side of a copy from any host, chunks in order into a temp file beside the destination, committed by rename once the sha256 matches.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use execmesh_proto::pb;
use sha2::{Digest as _, Sha256};
use tracing::info;

use super::paths::{self, Final, Parents};
use super::read::mode_of;
use super::write::Temp;
use crate::files::{
    DEFAULT_MODE, FileError, IDLE_TRANSFER, Limits, Roots, check_chunk_write, check_sha256,
    unknown_transfer,
};
use crate::relay::sftp::RemoteFs;

/// Most copies in progress to one target.
const MAX_TRANSFERS: usize = 64;

/// One copy in progress to the target.
pub struct Transfer {
    /// The destination as the first chunk named it; every chunk must name the same.
    path: String,
    temp: Temp,
    /// Where the temp file is renamed to.
    destination: std::path::PathBuf,
    received: u64,
    hasher: Sha256,
    last_seen: Instant,
}

/// Answers a `FileChunkWrite`: offset 0 starts a transfer, every chunk continues where the
/// last ended, the one with `finish` checks the sha256 and renames the temp file into place.
/// Transfers idle for [`IDLE_TRANSFER`] are removed (with their temp files) at the next chunk.
pub fn chunk_write(
    fs: &RemoteFs,
    roots: &Roots,
    limits: &Limits,
    transfers: &Mutex<HashMap<String, Transfer>>,
    req: pb::FileChunkWrite,
) -> Result<pb::FileChunkWriteReply, FileError> {
    let (raw, id) = check_chunk_write(&req)?;
    sweep(fs, &mut lock(transfers));
    // The transfer is out of the map while its chunk is written: a chunk that fails ends it.
    let taken = lock(transfers).remove(id);
    let mut transfer = match taken {
        Some(t) => t,
        None if req.offset != 0 => return Err(unknown_transfer(raw, id)),
        None => start(fs, roots, transfers, &req)?,
    };
    if transfer.path != req.path {
        let path = transfer.path.clone();
        lock(transfers).insert(id.to_string(), transfer);
        return Err(FileError::invalid(
            raw,
            format!("transfer {id} writes to {path}, not to this path"),
        ));
    }
    if req.offset != transfer.received {
        let expected = transfer.received;
        lock(transfers).insert(id.to_string(), transfer);
        return Err(FileError::invalid(
            raw,
            format!(
                "transfer {id}: chunks must arrive in order: expected offset {expected}, received {}",
                req.offset
            ),
        ));
    }
    let total = transfer.received + req.data.len() as u64;
    if total > limits.max_copy_bytes {
        transfer.temp.discard(fs);
        return Err(FileError::too_large(
            raw,
            "the copy",
            total,
            limits.max_copy_bytes,
        ));
    }
    let written = fs
        .open_write(&transfer.temp.path)
        .and_then(|mut file| fs.write_at(&mut file, &transfer.temp.path, req.offset, &req.data));
    if let Err(e) = written {
        transfer.temp.discard(fs);
        return Err(e);
    }
    transfer.hasher.update(&req.data);
    transfer.received = total;
    transfer.last_seen = Instant::now();
    if !req.finish {
        let received = transfer.received;
        lock(transfers).insert(id.to_string(), transfer);
        return Ok(pb::FileChunkWriteReply {
            path: raw.to_string(),
            received,
            committed: false,
            sha256: String::new(),
        });
    }
    finish(fs, transfer, &req)
}

/// Checks the finished copy and renames it into place; the transfer is over either way.
fn finish(
    fs: &RemoteFs,
    transfer: Transfer,
    req: &pb::FileChunkWrite,
) -> Result<pb::FileChunkWriteReply, FileError> {
    let raw = req.path.as_str();
    let actual = hex::encode(transfer.hasher.clone().finalize());
    let refuse = |e: FileError| {
        transfer.temp.discard(fs);
        Err(e)
    };
    if let Err(e) = check_sha256(req, &actual) {
        return refuse(e);
    }
    let existing = match fs.lstat(&transfer.destination) {
        Ok(existing) => existing.map(|m| mode_of(&m)),
        Err(e) => return refuse(e),
    };
    let mode = match existing {
        Some(m) if m & libc::S_IFMT == libc::S_IFDIR => {
            return refuse(FileError::is_a_directory(raw, ""));
        }
        Some(_) if !req.overwrite => return refuse(FileError::already_exists(raw)),
        Some(m) if m & libc::S_IFMT == libc::S_IFREG => m & 0o7777,
        _ => DEFAULT_MODE,
    };
    if let Err(e) = fs.chmod(&transfer.temp.path, mode) {
        return refuse(e);
    }
    let destination = transfer.destination.clone();
    transfer.temp.commit(fs, &destination)?;
    Ok(pb::FileChunkWriteReply {
        path: destination.display().to_string(),
        received: transfer.received,
        committed: true,
        sha256: actual,
    })
}

/// A new transfer for a first chunk: the destination checked, its temp file created.
fn start(
    fs: &RemoteFs,
    roots: &Roots,
    transfers: &Mutex<HashMap<String, Transfer>>,
    req: &pb::FileChunkWrite,
) -> Result<Transfer, FileError> {
    let raw = req.path.as_str();
    if lock(transfers).len() >= MAX_TRANSFERS {
        return Err(FileError::invalid(
            raw,
            format!("{MAX_TRANSFERS} copies are already in progress to this host; try again later"),
        ));
    }
    let place = paths::place(
        fs,
        roots,
        raw,
        Final::Follow,
        Parents::create_if(req.create_dirs),
    )?;
    let destination = place.path();
    match fs.lstat(&destination)?.map(|m| mode_of(&m)) {
        Some(m) if m & libc::S_IFMT == libc::S_IFDIR => {
            return Err(FileError::is_a_directory(raw, ""));
        }
        Some(_) if !req.overwrite => return Err(FileError::already_exists(raw)),
        _ => {}
    }
    let (temp, file) = Temp::create(fs, &place)?;
    drop(file);
    Ok(Transfer {
        path: req.path.clone(),
        temp,
        destination,
        received: 0,
        hasher: Sha256::new(),
        last_seen: Instant::now(),
    })
}

/// Removes the transfers idle for [`IDLE_TRANSFER`], with their temp files.
fn sweep(fs: &RemoteFs, transfers: &mut HashMap<String, Transfer>) {
    let now = Instant::now();
    let idle: Vec<String> = transfers
        .iter()
        .filter(|(_, t)| now.saturating_duration_since(t.last_seen) >= IDLE_TRANSFER)
        .map(|(id, _)| id.clone())
        .collect();
    for id in idle {
        if let Some(t) = transfers.remove(&id) {
            info!(transfer = %id, path = %t.path, received = t.received,
                  "copy abandoned: no chunk for {} s", IDLE_TRANSFER.as_secs());
            t.temp.discard(fs);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
