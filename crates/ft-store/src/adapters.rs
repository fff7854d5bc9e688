//! Adapter versions: each successful job (or admin load) adds `name@N` with the content hash
//! of its files and the base it belongs to; a restarted server serves the newest of each.

use rusqlite::{params, OptionalExtension};

use crate::{unix_now, Result, Store};

/// One version of an adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterVersion {
    /// The adapter's name (a fine-tuned model id).
    pub name: String,
    /// 1, 2, …
    pub version: u32,
    /// Its directory, relative to the state directory.
    pub dir: String,
    /// sha256 over its files.
    pub content_sha256: String,
    /// The base model id it was trained on.
    pub base: String,
    /// The job that made it.
    pub job_id: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

impl Store {
    /// Adds the next version of adapter `name` and returns its number.
    pub fn add_adapter_version(
        &self,
        name: &str,
        dir: &str,
        content_sha256: &str,
        base: &str,
        job_id: Option<&str>,
    ) -> Result<u32> {
        let mut connection = self.lock();
        let tx = connection.transaction().map_err(|e| self.db_error(e))?;
        let now = unix_now();
        tx.execute(
            "INSERT INTO adapters (name, created_at) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET deleted = 0",
            params![name, now],
        )
        .map_err(|e| self.db_error(e))?;
        let version: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM adapter_versions WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(|e| self.db_error(e))?;
        tx.execute(
            "INSERT INTO adapter_versions (name, version, dir, content_sha256, base, job_id, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![name, version, dir, content_sha256, base, job_id, now],
        )
        .map_err(|e| self.db_error(e))?;
        tx.commit().map_err(|e| self.db_error(e))?;
        Ok(version as u32)
    }

    /// Every version of every adapter not deleted, by name then version.
    pub fn adapter_versions(&self) -> Result<Vec<AdapterVersion>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare(
                "SELECT v.name, v.version, v.dir, v.content_sha256, v.base, v.job_id, v.created_at \
                 FROM adapter_versions v JOIN adapters a ON a.name = v.name \
                 WHERE a.deleted = 0 ORDER BY v.name, v.version",
            )
            .map_err(|e| self.db_error(e))?;
        let rows = statement
            .query_map([], |r| {
                Ok(AdapterVersion {
                    name: r.get(0)?,
                    version: r.get::<_, i64>(1)? as u32,
                    dir: r.get(2)?,
                    content_sha256: r.get(3)?,
                    base: r.get(4)?,
                    job_id: r.get(5)?,
                    created_at: r.get(6)?,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| self.db_error(e));
        rows
    }

    /// Marks adapter `name` deleted (its versions stay recorded; a later version of the same
    /// name revives it). False when there is no such live adapter.
    pub fn delete_adapter(&self, name: &str) -> Result<bool> {
        let n = self
            .lock()
            .execute(
                "UPDATE adapters SET deleted = 1 WHERE name = ?1 AND deleted = 0",
                [name],
            )
            .map_err(|e| self.db_error(e))?;
        Ok(n > 0)
    }

    /// Whether `name` is a live adapter in the store.
    pub fn has_adapter(&self, name: &str) -> Result<bool> {
        let found: Option<i64> = self
            .lock()
            .query_row(
                "SELECT 1 FROM adapters WHERE name = ?1 AND deleted = 0",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db_error(e))?;
        Ok(found.is_some())
    }
}
