//! The closed loop's rows: version states, rollouts, registry events, the request log and
//! feedback. The rollout controller reads its numbers from here (counts per version over a
//! window), so every server sharing the store sees the same traffic and a restarted one
//! carries on with the same step.

use serde_json::Value;

use crate::{parse_object, unix_now, Result, Store};

/// One completion request as the request log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLogRow {
    /// The response id (`chatcmpl-…`), which feedback refers to.
    pub id: String,
    /// Unix milliseconds of its arrival.
    pub created_at_ms: i64,
    /// sha256 of the user id (never the id itself).
    pub user_hash: String,
    /// The adapter name asked for (or the base id).
    pub model: String,
    /// The version that answered, when an adapter did.
    pub version: Option<u32>,
    /// HTTP status.
    pub status: u16,
    /// A failed generation or a 5xx.
    pub failed: bool,
    /// From arrival to the last byte.
    pub latency_ms: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Generated tokens.
    pub completion_tokens: i64,
    /// Answered from a response cache.
    pub cache_hit: bool,
    /// sha256 of the prompt's text.
    pub prompt_sha256: String,
    /// sha256 of the answer's text.
    pub response_sha256: String,
    /// The conversation and answer as JSON, when the request asked to be stored.
    pub content: Option<String>,
}

/// A user's verdict on one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackRow {
    /// The response it is about.
    pub response_id: String,
    /// The adapter name that answered.
    pub model: String,
    /// Its version.
    pub version: Option<u32>,
    /// +1 or -1.
    pub score: i64,
    /// Free text.
    pub comment: Option<String>,
    /// The answer the user wanted.
    pub correction: Option<String>,
}

/// What one version did over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VersionStats {
    /// Requests answered (or failed).
    pub requests: u64,
    /// Failed generations and 5xx.
    pub failures: u64,
    /// Feedback on those requests.
    pub feedback: u64,
    /// Of it, negative.
    pub negative: u64,
}

/// A logged request, as feedback needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// The adapter name asked for.
    pub model: String,
    /// The version that answered.
    pub version: Option<u32>,
    /// The stored conversation, if kept.
    pub content: Option<String>,
}

/// How many verdicts of one score a version got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackTotal {
    /// The adapter name.
    pub model: String,
    /// The version.
    pub version: Option<u32>,
    /// +1 or -1.
    pub score: i64,
    /// Verdicts.
    pub count: u64,
}

/// A model's traffic over a span of time (drift signals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Requests.
    pub requests: u64,
    /// Their prompt tokens, summed.
    pub prompt_tokens: u64,
    /// Of them, answered from a response cache.
    pub cache_hits: u64,
    /// Feedback on them.
    pub feedback: u64,
    /// Of it, negative.
    pub negative: u64,
}

/// A correction: the stored conversation of a response and the answer the user gave instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    /// The response it corrects.
    pub response_id: String,
    /// The stored request content (JSON).
    pub content: String,
    /// The corrected answer.
    pub correction: String,
}

fn opt_version(v: Option<u32>) -> crate::db::Param {
    crate::db::Param::Int(v.map(i64::from))
}

impl Store {
    /// Sets the state of `name@version`.
    pub fn set_version_state(&self, name: &str, version: u32, state: &str) -> Result<()> {
        self.db(|db| {
            db.execute(
                "UPDATE adapter_versions SET state = ?1 WHERE name = ?2 AND version = ?3",
                &[state.into(), name.into(), i64::from(version).into()],
            )
        })?;
        Ok(())
    }

    /// The rollout of `name`, if one was ever started.
    pub fn rollout(&self, name: &str) -> Result<Option<Value>> {
        let row = self.db(|db| {
            db.query_one(
                "SELECT object FROM rollouts WHERE name = ?1",
                &[name.into()],
            )
        })?;
        row.map(|r| parse_object(name, &r.text(0))).transpose()
    }

    /// Every rollout, by name.
    pub fn rollouts(&self) -> Result<Vec<Value>> {
        let rows =
            self.db(|db| db.query("SELECT name, object FROM rollouts ORDER BY name", &[]))?;
        rows.iter()
            .map(|r| parse_object(&r.text(0), &r.text(1)))
            .collect()
    }

    /// Stores the rollout of `name` (replacing the previous one).
    pub fn put_rollout(&self, name: &str, rollout: &Value) -> Result<()> {
        let now = unix_now();
        let text = rollout.to_string();
        self.db(|db| {
            db.execute(
                "INSERT INTO rollouts (name, updated_at, object) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET updated_at = ?2, object = ?3",
                &[name.into(), now.into(), text.into()],
            )
        })?;
        Ok(())
    }

    /// Appends a registry event (promotion, step, rollback, gate, retrain) about `name`.
    pub fn add_registry_event(
        &self,
        name: &str,
        version: Option<u32>,
        kind: &str,
        event: &Value,
    ) -> Result<()> {
        let text = event.to_string();
        self.db(|db| {
            db.execute(
                "INSERT INTO registry_events (name, version, kind, created_at, object) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                &[
                    name.into(),
                    opt_version(version),
                    kind.into(),
                    unix_now().into(),
                    text.into(),
                ],
            )
        })?;
        Ok(())
    }

    /// The registry events of `name`, oldest first.
    pub fn registry_events(&self, name: &str) -> Result<Vec<Value>> {
        let rows = self.db(|db| {
            db.query(
                "SELECT seq, object FROM registry_events WHERE name = ?1 ORDER BY seq",
                &[name.into()],
            )
        })?;
        rows.iter()
            .map(|r| parse_object(&r.text(0), &r.text(1)))
            .collect()
    }

    /// Appends requests to the log, in one transaction.
    pub fn log_requests(&self, rows: &[RequestLogRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.db(|db| {
            db.transaction(|db| {
                for row in rows {
                    db.execute(
                        "INSERT INTO request_log (id, created_at, user_hash, model, version, status, \
                         failed, latency_ms, prompt_tokens, completion_tokens, cache_hit, \
                         prompt_sha256, response_sha256, content) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
                         ON CONFLICT (id) DO NOTHING",
                        &[
                            row.id.as_str().into(),
                            row.created_at_ms.into(),
                            row.user_hash.as_str().into(),
                            row.model.as_str().into(),
                            opt_version(row.version),
                            i64::from(row.status).into(),
                            i64::from(row.failed).into(),
                            row.latency_ms.into(),
                            row.prompt_tokens.into(),
                            row.completion_tokens.into(),
                            i64::from(row.cache_hit).into(),
                            row.prompt_sha256.as_str().into(),
                            row.response_sha256.as_str().into(),
                            row.content.as_deref().into(),
                        ],
                    )?;
                }
                Ok(())
            })
        })
    }

    /// The logged request `id`.
    pub fn logged_request(&self, id: &str) -> Result<Option<LoggedRequest>> {
        let row = self.db(|db| {
            db.query_one(
                "SELECT model, version, content FROM request_log WHERE id = ?1",
                &[id.into()],
            )
        })?;
        Ok(row.map(|r| LoggedRequest {
            model: r.text(0),
            version: r.opt_int(1).map(|v| v as u32),
            content: r.opt_text(2),
        }))
    }

    /// Records (or replaces) the feedback on a response.
    pub fn upsert_feedback(&self, feedback: &FeedbackRow) -> Result<()> {
        let now = crate::unix_now_ms();
        self.db(|db| {
            db.execute(
                "INSERT INTO feedback (response_id, model, version, score, comment, correction, \
                 created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
                 ON CONFLICT (response_id) DO UPDATE SET score = ?4, comment = ?5, \
                 correction = ?6, updated_at = ?7",
                &[
                    feedback.response_id.as_str().into(),
                    feedback.model.as_str().into(),
                    opt_version(feedback.version),
                    feedback.score.into(),
                    feedback.comment.as_deref().into(),
                    feedback.correction.as_deref().into(),
                    now.into(),
                ],
            )
        })?;
        Ok(())
    }

    /// Per version of `model`: requests and failures that arrived at or after `since_ms`,
    /// and the feedback on those requests.
    pub fn version_stats(&self, model: &str, since_ms: i64) -> Result<Vec<(u32, VersionStats)>> {
        let rows = self.db(|db| {
            db.query(
                "SELECT r.version, COUNT(*), COUNT(CASE WHEN r.failed = 1 THEN 1 END), \
                 COUNT(f.response_id), COUNT(CASE WHEN f.score < 0 THEN 1 END) \
                 FROM request_log r LEFT JOIN feedback f ON f.response_id = r.id \
                 WHERE r.model = ?1 AND r.created_at >= ?2 AND r.version IS NOT NULL \
                 GROUP BY r.version ORDER BY r.version",
                &[model.into(), since_ms.into()],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| {
                let stats = VersionStats {
                    requests: r.int(1) as u64,
                    failures: r.int(2) as u64,
                    feedback: r.int(3) as u64,
                    negative: r.int(4) as u64,
                };
                (r.int(0) as u32, stats)
            })
            .collect())
    }

    /// Corrections given on `model`'s stored responses at or after `since_ms`, oldest first.
    pub fn corrections(&self, model: &str, since_ms: i64) -> Result<Vec<Correction>> {
        let rows = self.db(|db| {
            db.query(
                "SELECT f.response_id, r.content, f.correction FROM feedback f \
                 JOIN request_log r ON r.id = f.response_id \
                 WHERE f.model = ?1 AND f.updated_at >= ?2 AND f.correction IS NOT NULL \
                 AND r.content IS NOT NULL ORDER BY f.updated_at, f.response_id",
                &[model.into(), since_ms.into()],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| Correction {
                response_id: r.text(0),
                content: r.text(1),
                correction: r.text(2),
            })
            .collect())
    }

    /// Feedback counts on `model@version` updated at or after `since_ms`: (total, negative).
    pub fn feedback_counts(&self, model: &str, version: u32, since_ms: i64) -> Result<(u64, u64)> {
        let row = self.db(|db| {
            db.query_one(
                "SELECT COUNT(*), COUNT(CASE WHEN score < 0 THEN 1 END) FROM feedback \
                 WHERE model = ?1 AND version = ?2 AND updated_at >= ?3",
                &[model.into(), i64::from(version).into(), since_ms.into()],
            )
        })?;
        Ok(row.map_or((0, 0), |r| (r.int(0) as u64, r.int(1) as u64)))
    }

    /// Feedback counts over all time by (model, version, score).
    pub fn feedback_totals(&self) -> Result<Vec<FeedbackTotal>> {
        let rows = self.db(|db| {
            db.query(
                "SELECT model, version, score, COUNT(*) FROM feedback \
                 GROUP BY model, version, score ORDER BY model, version, score",
                &[],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| FeedbackTotal {
                model: r.text(0),
                version: r.opt_int(1).map(|v| v as u32),
                score: r.int(2),
                count: r.int(3) as u64,
            })
            .collect())
    }

    /// The models asked for at or after `since_ms`.
    pub fn logged_models(&self, since_ms: i64) -> Result<Vec<String>> {
        let rows = self.db(|db| {
            db.query(
                "SELECT DISTINCT model FROM request_log WHERE created_at >= ?1 ORDER BY model",
                &[since_ms.into()],
            )
        })?;
        Ok(rows.iter().map(|r| r.text(0)).collect())
    }

    /// `model`'s requests that arrived in `[from_ms, to_ms)` and the feedback on them.
    pub fn traffic(&self, model: &str, from_ms: i64, to_ms: i64) -> Result<Traffic> {
        let row = self.db(|db| {
            db.query_one(
                "SELECT COUNT(*), CAST(COALESCE(SUM(r.prompt_tokens), 0) AS BIGINT), \
                 COUNT(CASE WHEN r.cache_hit = 1 THEN 1 END), COUNT(f.response_id), \
                 COUNT(CASE WHEN f.score < 0 THEN 1 END) \
                 FROM request_log r LEFT JOIN feedback f ON f.response_id = r.id \
                 WHERE r.model = ?1 AND r.created_at >= ?2 AND r.created_at < ?3",
                &[model.into(), from_ms.into(), to_ms.into()],
            )
        })?;
        Ok(row.map_or_else(Traffic::default, |r| Traffic {
            requests: r.int(0) as u64,
            prompt_tokens: r.int(1) as u64,
            cache_hits: r.int(2) as u64,
            feedback: r.int(3) as u64,
            negative: r.int(4) as u64,
        }))
    }

    /// Registry events counted by (name, kind).
    pub fn registry_event_counts(&self) -> Result<Vec<(String, String, u64)>> {
        let rows = self.db(|db| {
            db.query(
                "SELECT name, kind, COUNT(*) FROM registry_events GROUP BY name, kind ORDER BY name, kind",
                &[],
            )
        })?;
        Ok(rows
            .iter()
            .map(|r| (r.text(0), r.text(1), r.int(2) as u64))
            .collect())
    }
}
