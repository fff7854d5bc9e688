//! `manifest.json`: the sha256 of every file of an adapter or checkpoint directory.
//!
//! safetensors has no checksum, so a payload with a few bytes changed to other finite floats
//! loads without complaint. Every directory `ft` writes gets a manifest, written last (through
//! [`write_atomically`]); loading verifies it and names the file that does not match. A
//! directory without a manifest (a PEFT adapter, an older `ft`) loads unverified.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::adapter_io::write_atomically;
use crate::{Error, Result};

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// Always `sha256`.
    algorithm: String,
    /// File name (relative to the directory) → lowercase hex digest. Sorted, so the same
    /// files always give the same manifest bytes.
    files: BTreeMap<String, String>,
}

fn corrupt(dir: &Path, reason: String) -> Error {
    Error::Adapter {
        path: dir.to_path_buf(),
        reason,
    }
}

/// Hex sha256 of the file at `path`, read in blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut block).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Writes `dir/manifest.json` over every regular file in `dir` (not the manifest itself, nor
/// leftover `.tmp` files).
pub fn write_manifest(dir: &Path) -> Result<()> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let is_file = entry.file_type().map_err(|e| Error::io(dir, e))?.is_file();
        if !is_file || name == MANIFEST_FILE || name.ends_with(".tmp") {
            continue;
        }
        files.insert(name, sha256_file(&entry.path())?);
    }
    let manifest = Manifest {
        algorithm: "sha256".to_string(),
        files,
    };
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| corrupt(dir, format!("cannot serialise {MANIFEST_FILE}: {e}")))?;
    write_atomically(&dir.join(MANIFEST_FILE), format!("{text}\n").as_bytes())
}

/// Checks every file listed in `dir/manifest.json`. `Ok(false)` when there is no manifest;
/// an error names the first file that is missing or whose digest differs.
pub fn verify_manifest(dir: &Path) -> Result<bool> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| corrupt(dir, format!("{MANIFEST_FILE} is unreadable: {e}")))?;
    if manifest.algorithm != "sha256" {
        return Err(corrupt(
            dir,
            format!(
                "{MANIFEST_FILE}: unknown algorithm `{}`",
                manifest.algorithm
            ),
        ));
    }
    for (name, expected) in &manifest.files {
        // Names come from the file; never let one reach outside the directory.
        if name.contains(['/', '\\']) || name == ".." {
            return Err(corrupt(
                dir,
                format!("{MANIFEST_FILE} lists `{name}`, which is not a file of this directory"),
            ));
        }
        let file = dir.join(name);
        if !file.is_file() {
            return Err(corrupt(
                dir,
                format!("{name} is listed in {MANIFEST_FILE} but missing"),
            ));
        }
        let actual = sha256_file(&file)?;
        if &actual != expected {
            return Err(corrupt(
                dir,
                format!("{name} is corrupt: its sha256 is {actual}, {MANIFEST_FILE} records {expected} (changed after it was written)"),
            ));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_byte_is_named() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let weights = dir.path().join("adapter_model.safetensors");
        std::fs::write(&weights, [0u8; 64]).map_err(|e| Error::io(&weights, e))?;
        std::fs::write(dir.path().join("a.json"), "{}").map_err(|e| Error::io("a.json", e))?;
        assert!(!verify_manifest(dir.path())?, "no manifest yet");
        write_manifest(dir.path())?;
        assert!(verify_manifest(dir.path())?);
        let mut bytes = [0u8; 64];
        bytes[40..44].copy_from_slice(&1.0f32.to_le_bytes());
        std::fs::write(&weights, bytes).map_err(|e| Error::io(&weights, e))?;
        let err = verify_manifest(dir.path()).expect_err("the change is caught");
        assert!(
            err.to_string()
                .contains("adapter_model.safetensors is corrupt"),
            "{err}"
        );
        Ok(())
    }
}
