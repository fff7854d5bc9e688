//! Files, jobs, job events and checkpoints: inserts, lookups and the newest-first pages the
//! OpenAI list endpoints return.

use rusqlite::{params, OptionalExtension};
use serde_json::Value;

use crate::{parse_object, Result, Store};

/// A page request: rows older than `after` (an id), at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct PageQuery {
    /// The last id of the previous page.
    pub after: Option<String>,
    /// Most rows.
    pub limit: usize,
}

/// A page of objects, newest first.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The objects.
    pub items: Vec<Value>,
    /// Older rows remain.
    pub has_more: bool,
}

/// A job as inserted.
#[derive(Debug, Clone)]
pub struct JobRow<'a> {
    /// `ftjob-…`.
    pub id: &'a str,
    /// Unix seconds.
    pub created_at: i64,
    /// The client's `Idempotency-Key`, if any.
    pub idempotency_key: Option<&'a str>,
    /// sha256 of the request body.
    pub request_sha256: &'a str,
    /// The job object (its `status` is stored beside it).
    pub object: &'a Value,
}

fn status_of(object: &Value) -> &str {
    object.get("status").and_then(Value::as_str).unwrap_or("")
}

/// Tables listed through [`Store::page`]; the name is never from a request.
#[derive(Clone, Copy)]
enum Table {
    Files,
    Jobs,
    Events,
    Checkpoints,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Self::Files => "files",
            Self::Jobs => "jobs",
            Self::Events => "job_events",
            Self::Checkpoints => "checkpoints",
        }
    }
}

impl Store {
    /// Newest-first rows of `table` older than `query.after`, where `filter` (a column and its
    /// value) matches. An unknown `after` gives an empty page.
    fn page(&self, table: Table, filter: Option<(&str, &str)>, query: &PageQuery) -> Result<Page> {
        let name = table.name();
        let (clause, value) = match filter {
            Some((column, value)) => (format!("{column} = ?1"), value),
            None => ("?1 = ?1".to_string(), ""),
        };
        let sql = format!(
            "SELECT id, object FROM {name} WHERE {clause} AND seq < COALESCE(\
             (SELECT seq FROM {name} WHERE id = ?2), CASE WHEN ?2 IS NULL THEN 9223372036854775807 ELSE 0 END) \
             ORDER BY seq DESC LIMIT ?3"
        );
        let limit = query.limit.max(1);
        let connection = self.lock();
        let mut statement = connection.prepare(&sql).map_err(|e| self.db_error(e))?;
        let rows: Vec<(String, String)> = statement
            .query_map(params![value, query.after, (limit + 1) as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| self.db_error(e))?;
        let has_more = rows.len() > limit;
        let items = rows
            .iter()
            .take(limit)
            .map(|(id, text)| parse_object(id, text))
            .collect::<Result<_>>()?;
        Ok(Page { items, has_more })
    }

    fn object_by_id(&self, table: Table, id: &str) -> Result<Option<Value>> {
        let sql = format!("SELECT object FROM {} WHERE id = ?1", table.name());
        let text: Option<String> = self
            .lock()
            .query_row(&sql, [id], |r| r.get(0))
            .optional()
            .map_err(|e| self.db_error(e))?;
        text.map(|t| parse_object(id, &t)).transpose()
    }

    /// Records an uploaded file (its bytes are already in the blob store).
    pub fn insert_file(&self, object: &Value, sha256: &str) -> Result<()> {
        let id = object.get("id").and_then(Value::as_str).unwrap_or("");
        let purpose = object.get("purpose").and_then(Value::as_str).unwrap_or("");
        let created = object
            .get("created_at")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        self.lock()
            .execute(
                "INSERT INTO files (id, purpose, created_at, sha256, object) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, purpose, created, sha256, object.to_string()],
            )
            .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    /// The file object `id`.
    pub fn file(&self, id: &str) -> Result<Option<Value>> {
        self.object_by_id(Table::Files, id)
    }

    /// Files, newest first, of one `purpose` or all.
    pub fn list_files(&self, purpose: Option<&str>, query: &PageQuery) -> Result<Page> {
        self.page(Table::Files, purpose.map(|p| ("purpose", p)), query)
    }

    /// Forgets file `id`; false when there was none.
    pub fn delete_file(&self, id: &str) -> Result<bool> {
        let n = self
            .lock()
            .execute("DELETE FROM files WHERE id = ?1", [id])
            .map_err(|e| self.db_error(e))?;
        Ok(n > 0)
    }

    /// Records a new job.
    pub fn insert_job(&self, job: &JobRow) -> Result<()> {
        self.lock()
            .execute(
                "INSERT INTO jobs (id, status, created_at, idempotency_key, request_sha256, object) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    job.id,
                    status_of(job.object),
                    job.created_at,
                    job.idempotency_key,
                    job.request_sha256,
                    job.object.to_string()
                ],
            )
            .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    /// The job a retried create refers to: the one with the same idempotency key (when the
    /// client sent one), else the newest with the same body created at or after `since`.
    pub fn find_retried_job(
        &self,
        idempotency_key: Option<&str>,
        request_sha256: &str,
        since: i64,
    ) -> Result<Option<Value>> {
        let row: Option<(String, String)> = {
            let connection = self.lock();
            let found = match idempotency_key {
                Some(key) => connection.query_row(
                    "SELECT id, object FROM jobs WHERE idempotency_key = ?1 ORDER BY seq DESC LIMIT 1",
                    [key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                ),
                None => connection.query_row(
                    "SELECT id, object FROM jobs WHERE request_sha256 = ?1 AND created_at >= ?2 \
                     ORDER BY seq DESC LIMIT 1",
                    params![request_sha256, since],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                ),
            };
            found.optional().map_err(|e| self.db_error(e))?
        };
        row.map(|(id, text)| parse_object(&id, &text)).transpose()
    }

    /// The job object `id`.
    pub fn job(&self, id: &str) -> Result<Option<Value>> {
        self.object_by_id(Table::Jobs, id)
    }

    /// Replaces job `object` (by its `id`), with its status column.
    pub fn update_job(&self, object: &Value) -> Result<()> {
        let id = object.get("id").and_then(Value::as_str).unwrap_or("");
        self.lock()
            .execute(
                "UPDATE jobs SET status = ?2, object = ?3 WHERE id = ?1",
                params![id, status_of(object), object.to_string()],
            )
            .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    /// Jobs, newest first.
    pub fn list_jobs(&self, query: &PageQuery) -> Result<Page> {
        self.page(Table::Jobs, None, query)
    }

    /// Jobs in `status`, oldest first (the order they are worked on).
    pub fn jobs_with_status(&self, status: &str) -> Result<Vec<Value>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare("SELECT id, object FROM jobs WHERE status = ?1 ORDER BY seq")
            .map_err(|e| self.db_error(e))?;
        let rows: Vec<(String, String)> = statement
            .query_map([status], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.db_error(e))?;
        rows.iter().map(|(id, t)| parse_object(id, t)).collect()
    }

    /// Claims the oldest queued job, or a running one whose lease ran out (its worker died),
    /// for `owner` until `lease_until`: marks it running and returns it. In one statement, so
    /// two workers never claim the same job.
    pub fn claim_job(&self, owner: &str, now: i64, lease_until: i64) -> Result<Option<Value>> {
        let row: Option<(String, String)> = self
            .lock()
            .query_row(
                "UPDATE jobs SET status = 'running', lease_owner = ?1, lease_expires_at = ?3, \
                 object = json_set(object, '$.status', 'running') \
                 WHERE seq = (SELECT seq FROM jobs WHERE status = 'queued' \
                     OR (status = 'running' AND lease_expires_at IS NOT NULL AND lease_expires_at < ?2) \
                     ORDER BY seq LIMIT 1) \
                 RETURNING id, object",
                params![owner, now, lease_until],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.db_error(e))?;
        row.map(|(id, text)| parse_object(&id, &text)).transpose()
    }

    /// Extends `owner`'s lease on job `id`; false when it no longer holds it.
    pub fn renew_lease(&self, id: &str, owner: &str, lease_until: i64) -> Result<bool> {
        let n = self
            .lock()
            .execute(
                "UPDATE jobs SET lease_expires_at = ?3 WHERE id = ?1 AND lease_owner = ?2",
                params![id, owner, lease_until],
            )
            .map_err(|e| self.db_error(e))?;
        Ok(n > 0)
    }

    /// Ends any lease on job `id`.
    pub fn release_lease(&self, id: &str) -> Result<()> {
        self.lock()
            .execute(
                "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ?1",
                [id],
            )
            .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    /// Appends an event (an `ft-event-…` object) to job `job_id`.
    pub fn add_event(&self, job_id: &str, object: &Value) -> Result<()> {
        let id = object.get("id").and_then(Value::as_str).unwrap_or("");
        let created = object
            .get("created_at")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        self.lock()
            .execute(
                "INSERT INTO job_events (id, job_id, created_at, object) VALUES (?1, ?2, ?3, ?4)",
                params![id, job_id, created, object.to_string()],
            )
            .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    /// Events of job `job_id`, newest first.
    pub fn list_events(&self, job_id: &str, query: &PageQuery) -> Result<Page> {
        self.page(Table::Events, Some(("job_id", job_id)), query)
    }

    /// Records checkpoint `object` of job `job_id` at `step`, its adapter in `dir` (relative
    /// to the state directory). A second record of the same step (a job resumed after a
    /// crash saves it again) replaces the first.
    pub fn add_checkpoint(
        &self,
        job_id: &str,
        step: usize,
        dir: &str,
        object: &Value,
    ) -> Result<()> {
        let id = object.get("id").and_then(Value::as_str).unwrap_or("");
        let created = object
            .get("created_at")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let connection = self.lock();
        connection
            .execute(
                "INSERT INTO checkpoints (id, job_id, step, created_at, dir, object) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (job_id, step) DO UPDATE SET created_at = excluded.created_at, \
                 dir = excluded.dir, object = json_set(excluded.object, '$.id', checkpoints.id)",
                params![id, job_id, step as i64, created, dir, object.to_string()],
            )
            .map_err(|e| self.db_error(e))?;
        Ok(())
    }

    /// Checkpoints of job `job_id`, newest first.
    pub fn list_checkpoints(&self, job_id: &str, query: &PageQuery) -> Result<Page> {
        self.page(Table::Checkpoints, Some(("job_id", job_id)), query)
    }

    /// Every checkpoint of every job, as (object, adapter directory relative to the state
    /// directory), oldest first: what a restarted server serves again.
    pub fn all_checkpoints(&self) -> Result<Vec<(Value, String)>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare("SELECT id, object, dir FROM checkpoints ORDER BY seq")
            .map_err(|e| self.db_error(e))?;
        let rows: Vec<(String, String, String)> = statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.db_error(e))?;
        rows.into_iter()
            .map(|(id, text, dir)| Ok((parse_object(&id, &text)?, dir)))
            .collect()
    }
}
