//! Adapter versions: each successful job (or admin load) adds `name@N` with the content hash
//! of its files and the base it belongs to; a restarted server serves the newest of each.

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
    /// `candidate`, `canary`, `stable`, `retired` or `rolled_back`.
    pub state: String,
}

impl Store {
    /// Adds the next version of adapter `name` and returns its number. The first version of
    /// a name is `stable` (served under the name at once); a later one enters as `candidate`
    /// and is served under the name only once promoted (`name@N` reaches it before).
    pub fn add_adapter_version(
        &self,
        name: &str,
        dir: &str,
        content_sha256: &str,
        base: &str,
        job_id: Option<&str>,
    ) -> Result<u32> {
        let now = unix_now();
        let version = self.db(|db| {
            db.transaction(|db| {
                // The adapter's row first: on PostgreSQL the upsert locks it, so two processes
                // adding versions of one name number them one after the other.
                db.execute(
                    "INSERT INTO adapters (name, created_at) VALUES (?1, ?2) \
                     ON CONFLICT (name) DO UPDATE SET deleted = 0",
                    &[name.into(), now.into()],
                )?;
                let version = db
                    .query_one(
                        "SELECT COALESCE(MAX(version), 0) + 1 FROM adapter_versions WHERE name = ?1",
                        &[name.into()],
                    )?
                    .map_or(1, |r| r.int(0));
                let state = if version == 1 { "stable" } else { "candidate" };
                db.execute(
                    "INSERT INTO adapter_versions (name, version, dir, content_sha256, base, job_id, created_at, state) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    &[
                        name.into(),
                        version.into(),
                        dir.into(),
                        content_sha256.into(),
                        base.into(),
                        job_id.into(),
                        now.into(),
                        state.into(),
                    ],
                )?;
                Ok(version)
            })
        })?;
        Ok(version as u32)
    }

    /// Every version of every adapter not deleted, by name then version.
    pub fn adapter_versions(&self) -> Result<Vec<AdapterVersion>> {
        let rows = self.db(|db| {
            db.query(
                "SELECT v.name, v.version, v.dir, v.content_sha256, v.base, v.job_id, v.created_at, v.state \
                 FROM adapter_versions v JOIN adapters a ON a.name = v.name \
                 WHERE a.deleted = 0 ORDER BY v.name, v.version",
                &[],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| AdapterVersion {
                name: r.text(0),
                version: r.int(1) as u32,
                dir: r.text(2),
                content_sha256: r.text(3),
                base: r.text(4),
                job_id: r.opt_text(5),
                created_at: r.int(6),
                state: r.text(7),
            })
            .collect())
    }

    /// Marks adapter `name` deleted (its versions stay recorded; a later version of the same
    /// name revives it). False when there is no such live adapter.
    pub fn delete_adapter(&self, name: &str) -> Result<bool> {
        let n = self.db(|db| {
            db.execute(
                "UPDATE adapters SET deleted = 1 WHERE name = ?1 AND deleted = 0",
                &[name.into()],
            )
        })?;
        Ok(n > 0)
    }

    /// Whether `name` is a live adapter in the store.
    pub fn has_adapter(&self, name: &str) -> Result<bool> {
        let found = self.db(|db| {
            db.query_one(
                "SELECT name FROM adapters WHERE name = ?1 AND deleted = 0",
                &[name.into()],
            )
        })?;
        Ok(found.is_some())
    }
}
