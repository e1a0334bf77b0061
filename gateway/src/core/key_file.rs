//! Writes a secret key file: created new (never over an existing key), owner-only (0600), its
//! parent directories made as needed, the key base64-encoded on one line, synced to disk.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Writes `key` to a new file at `path`.
pub fn write_new(path: &Path, key: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{}", STANDARD.encode(key))?;
    file.sync_all()
}
