//! Blobs (uploaded files' bytes) behind one interface. The local implementation writes under
//! the state directory with temp file, fsync and rename, so a blob is either all there or not
//! there. Keys are ours (`files/file-…`), never a client's filename.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Where blobs live.
pub trait Blobs: Send + Sync {
    /// Stores `bytes` under `key`, replacing what was there, atomically.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// The bytes under `key`.
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Removes `key` (no error when it is already gone).
    fn delete(&self, key: &str) -> Result<()>;
}

/// Blobs as files under a directory.
#[derive(Debug, Clone)]
pub struct LocalBlobs {
    root: PathBuf,
}

/// Our keys are `[A-Za-z0-9_-]` segments joined by `/`: no `..`, no absolute path.
fn check_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
                && segment != "."
                && segment != ".."
        })
}

impl LocalBlobs {
    /// Blobs under `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The file that holds `key` (for readers that stream it, or train on it in place).
    pub fn path(&self, key: &str) -> Result<PathBuf> {
        if !check_key(key) {
            return Err(Error::Io {
                path: self.root.join(key),
                cause: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a blob key of ft's",
                ),
            });
        }
        Ok(self.root.join(key))
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// A blob being written: bytes go to a temp file beside the final one; [`BlobWriter::commit`]
/// fsyncs and renames it into place, and dropping it uncommitted removes the temp file.
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<File>,
    tmp: PathBuf,
    path: PathBuf,
    /// Bytes written so far.
    pub written: u64,
}

impl BlobWriter {
    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let file = self.file.as_mut().ok_or_else(|| Error::Io {
            path: self.path.clone(),
            cause: std::io::Error::other("blob already committed"),
        })?;
        file.write_all(bytes).map_err(io(&self.tmp))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Makes the blob visible under its key, all of it or nothing.
    pub fn commit(mut self) -> Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let done = (|| {
            file.sync_all()?;
            drop(file);
            std::fs::rename(&self.tmp, &self.path)?;
            File::open(&dir)?.sync_all()
        })();
        done.map_err(io(&self.path))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() || self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl LocalBlobs {
    /// Starts writing the blob `key` (replacing any blob there once committed).
    pub fn create(&self, key: &str) -> Result<BlobWriter> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), crate::new_id("")));
        let file = File::create(&tmp).map_err(io(&tmp))?;
        Ok(BlobWriter {
            file: Some(file),
            tmp,
            path,
            written: 0,
        })
    }
}

impl Blobs for LocalBlobs {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let mut writer = self.create(key)?;
        writer.write(bytes)?;
        writer.commit()
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        std::fs::read(&path).map_err(io(&path))
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_leave_the_root() {
        for bad in [
            "",
            "../x",
            "a/../../b",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a b",
        ] {
            assert!(!check_key(bad), "{bad:?} accepted");
        }
        assert!(check_key("files/file-abc_1.jsonl"));
    }

    #[test]
    fn put_get_delete_round_trip() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io(Path::new("tmp")))?;
        let blobs = LocalBlobs::new(dir.path().join("blobs"));
        blobs.put("files/a", b"one")?;
        blobs.put("files/a", b"two")?;
        assert_eq!(blobs.get("files/a")?, b"two");
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("blobs/files"))
            .map_err(io(dir.path()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1);
        blobs.delete("files/a")?;
        blobs.delete("files/a")?;
        assert!(blobs.get("files/a").is_err());
        Ok(())
    }
}
