//! Files, jobs, job events and checkpoints: inserts, lookups and the newest-first pages the
//! OpenAI list endpoints return.

use serde_json::Value;

use crate::db::{Dialect, Param, Row};
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

/// Rows of (id, object) parsed into objects.
fn objects(rows: &[Row]) -> Result<Vec<Value>> {
    rows.iter()
        .map(|r| parse_object(&r.text(0), &r.text(1)))
        .collect()
}

fn field_str<'a>(object: &'a Value, key: &str) -> &'a str {
    object.get(key).and_then(Value::as_str).unwrap_or("")
}

fn created_at(object: &Value) -> i64 {
    object
        .get("created_at")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

impl Store {
    /// Newest-first rows of `table` older than `query.after`, where `filter` (a column and its
    /// value) matches. An unknown `after` gives an empty page.
    fn page(&self, table: Table, filter: Option<(&str, &str)>, query: &PageQuery) -> Result<Page> {
        let name = table.name();
        let limit = query.limit.max(1);
        let after = Param::from(query.after.as_deref());
        let mut params = vec![after, ((limit + 1) as i64).into()];
        let clause = match filter {
            Some((column, value)) => {
                params.push(value.into());
                format!("{column} = ?3 AND")
            }
            None => String::new(),
        };
        // An `after` that names no row resolves to seq 0: nothing is older.
        let sql = format!(
            "SELECT id, object FROM {name} WHERE {clause} seq < COALESCE(\
             (SELECT seq FROM {name} WHERE id = ?1), \
             CASE WHEN ?1 IS NULL THEN 9223372036854775807 ELSE 0 END) \
             ORDER BY seq DESC LIMIT ?2"
        );
        let rows = self.db(|db| db.query(&sql, &params))?;
        let has_more = rows.len() > limit;
        let items = objects(&rows[..rows.len().min(limit)])?;
        Ok(Page { items, has_more })
    }

    fn object_by_id(&self, table: Table, id: &str) -> Result<Option<Value>> {
        let sql = format!("SELECT id, object FROM {} WHERE id = ?1", table.name());
        let row = self.db(|db| db.query_one(&sql, &[id.into()]))?;
        row.map(|r| parse_object(id, &r.text(1))).transpose()
    }

    /// Records an uploaded file (its bytes are already in the blob store).
    pub fn insert_file(&self, object: &Value, sha256: &str) -> Result<()> {
        let params = [
            field_str(object, "id").into(),
            field_str(object, "purpose").into(),
            created_at(object).into(),
            sha256.into(),
            object.to_string().into(),
        ];
        self.db(|db| {
            db.execute(
                "INSERT INTO files (id, purpose, created_at, sha256, object) VALUES (?1, ?2, ?3, ?4, ?5)",
                &params,
            )
        })?;
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
        let n = self.db(|db| db.execute("DELETE FROM files WHERE id = ?1", &[id.into()]))?;
        Ok(n > 0)
    }

    /// Records a new job.
    pub fn insert_job(&self, job: &JobRow) -> Result<()> {
        let params = [
            job.id.into(),
            status_of(job.object).into(),
            job.created_at.into(),
            job.idempotency_key.into(),
            job.request_sha256.into(),
            job.object.to_string().into(),
        ];
        self.db(|db| {
            db.execute(
                "INSERT INTO jobs (id, status, created_at, idempotency_key, request_sha256, object) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &params,
            )
        })?;
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
        let row = self.db(|db| match idempotency_key {
            Some(key) => db.query_one(
                "SELECT id, object FROM jobs WHERE idempotency_key = ?1 ORDER BY seq DESC LIMIT 1",
                &[key.into()],
            ),
            None => db.query_one(
                "SELECT id, object FROM jobs WHERE request_sha256 = ?1 AND created_at >= ?2 \
                 ORDER BY seq DESC LIMIT 1",
                &[request_sha256.into(), since.into()],
            ),
        })?;
        row.map(|r| parse_object(&r.text(0), &r.text(1)))
            .transpose()
    }

    /// The job object `id`.
    pub fn job(&self, id: &str) -> Result<Option<Value>> {
        self.object_by_id(Table::Jobs, id)
    }

    /// Replaces job `object` (by its `id`), with its status column.
    pub fn update_job(&self, object: &Value) -> Result<()> {
        let params = [
            field_str(object, "id").into(),
            status_of(object).into(),
            object.to_string().into(),
        ];
        self.db(|db| {
            db.execute(
                "UPDATE jobs SET status = ?2, object = ?3 WHERE id = ?1",
                &params,
            )
        })?;
        Ok(())
    }

    /// Jobs, newest first.
    pub fn list_jobs(&self, query: &PageQuery) -> Result<Page> {
        self.page(Table::Jobs, None, query)
    }

    /// Jobs in `status`, oldest first (the order they are worked on).
    pub fn jobs_with_status(&self, status: &str) -> Result<Vec<Value>> {
        let rows = self.db(|db| {
            db.query(
                "SELECT id, object FROM jobs WHERE status = ?1 ORDER BY seq",
                &[status.into()],
            )
        })?;
        objects(&rows)
    }

    /// Claims the oldest queued job, or a running one whose lease ran out (its worker died),
    /// for `owner` until `lease_until`: marks it running and returns it. Two workers never
    /// claim the same job: SQLite runs the statement under its write lock; PostgreSQL locks
    /// the chosen row and other workers skip it (`FOR UPDATE SKIP LOCKED`) rather than wait.
    pub fn claim_job(&self, owner: &str, now: i64, lease_until: i64) -> Result<Option<Value>> {
        const CANDIDATE: &str = "SELECT seq FROM jobs WHERE status = 'queued' \
             OR (status = 'running' AND lease_expires_at IS NOT NULL AND lease_expires_at < ?2) \
             ORDER BY seq LIMIT 1";
        let params = [owner.into(), now.into(), lease_until.into()];
        let row = self.db(|db| {
            let sql = match db.dialect() {
                Dialect::Sqlite => format!(
                    "UPDATE jobs SET status = 'running', lease_owner = ?1, lease_expires_at = ?3, \
                     object = json_set(object, '$.status', 'running') \
                     WHERE seq = ({CANDIDATE}) RETURNING id, object"
                ),
                Dialect::Postgres => format!(
                    "UPDATE jobs SET status = 'running', lease_owner = ?1, lease_expires_at = ?3, \
                     object = jsonb_set(object::jsonb, '{{status}}', '\"running\"')::text \
                     WHERE seq = ({CANDIDATE} FOR UPDATE SKIP LOCKED) RETURNING id, object"
                ),
            };
            db.query_one(&sql, &params)
        })?;
        row.map(|r| parse_object(&r.text(0), &r.text(1)))
            .transpose()
    }

    /// Extends `owner`'s lease on job `id`; false when it no longer holds it.
    pub fn renew_lease(&self, id: &str, owner: &str, lease_until: i64) -> Result<bool> {
        let n = self.db(|db| {
            db.execute(
                "UPDATE jobs SET lease_expires_at = ?3 WHERE id = ?1 AND lease_owner = ?2",
                &[id.into(), owner.into(), lease_until.into()],
            )
        })?;
        Ok(n > 0)
    }

    /// Ends any lease on job `id`.
    pub fn release_lease(&self, id: &str) -> Result<()> {
        self.db(|db| {
            db.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ?1",
                &[id.into()],
            )
        })?;
        Ok(())
    }

    /// Appends an event (an `ft-event-…` object) to job `job_id`.
    pub fn add_event(&self, job_id: &str, object: &Value) -> Result<()> {
        let params = [
            field_str(object, "id").into(),
            job_id.into(),
            created_at(object).into(),
            object.to_string().into(),
        ];
        self.db(|db| {
            db.execute(
                "INSERT INTO job_events (id, job_id, created_at, object) VALUES (?1, ?2, ?3, ?4)",
                &params,
            )
        })?;
        Ok(())
    }

    /// Events of job `job_id`, newest first.
    pub fn list_events(&self, job_id: &str, query: &PageQuery) -> Result<Page> {
        self.page(Table::Events, Some(("job_id", job_id)), query)
    }

    /// Records checkpoint `object` of job `job_id` at `step`, its adapter in `dir` (relative
    /// to the state directory). A second record of the same step (a job resumed after a
    /// crash saves it again) replaces the first but keeps its id.
    pub fn add_checkpoint(
        &self,
        job_id: &str,
        step: usize,
        dir: &str,
        object: &Value,
    ) -> Result<()> {
        self.db(|db| {
            db.transaction(|db| {
                let existing = db.query_one(
                    "SELECT id FROM checkpoints WHERE job_id = ?1 AND step = ?2",
                    &[job_id.into(), (step as i64).into()],
                )?;
                let mut object = object.clone();
                if let (Some(row), Some(fields)) = (existing, object.as_object_mut()) {
                    fields.insert("id".into(), Value::String(row.text(0)));
                }
                db.execute(
                    "INSERT INTO checkpoints (id, job_id, step, created_at, dir, object) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (job_id, step) DO UPDATE SET created_at = excluded.created_at, \
                     dir = excluded.dir, object = excluded.object",
                    &[
                        field_str(&object, "id").into(),
                        job_id.into(),
                        (step as i64).into(),
                        created_at(&object).into(),
                        dir.into(),
                        object.to_string().into(),
                    ],
                )
            })
        })?;
        Ok(())
    }

    /// Checkpoints of job `job_id`, newest first.
    pub fn list_checkpoints(&self, job_id: &str, query: &PageQuery) -> Result<Page> {
        self.page(Table::Checkpoints, Some(("job_id", job_id)), query)
    }

    /// Every checkpoint of every job, as (object, adapter directory relative to the state
    /// directory), oldest first: what a restarted server serves again.
    pub fn all_checkpoints(&self) -> Result<Vec<(Value, String)>> {
        let rows =
            self.db(|db| db.query("SELECT id, object, dir FROM checkpoints ORDER BY seq", &[]))?;
        rows.iter()
            .map(|r| Ok((parse_object(&r.text(0), &r.text(1))?, r.text(2))))
            .collect()
    }
}
