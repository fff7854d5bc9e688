//! The closed loop's rows on both backends: version states, rollouts, registry events, the
//! request log with feedback joined to it (per-version counts over a window, corrections),
//! and the drift counts.

#[macro_use]
mod fresh;

use fresh::Fresh;
use ft_store::{FeedbackRow, RequestLogRow, Store, VersionStats};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

on_both_backends!(
    the_first_version_is_stable_and_later_ones_candidates,
    counts_per_version_join_feedback_within_the_window,
    rollouts_and_events_survive_a_reopen,
);

fn request(id: &str, at: i64, version: u32, failed: bool, content: Option<&str>) -> RequestLogRow {
    RequestLogRow {
        id: id.into(),
        created_at_ms: at,
        user_hash: "u".into(),
        model: "support".into(),
        version: Some(version),
        status: if failed { 500 } else { 200 },
        failed,
        latency_ms: 5,
        prompt_tokens: 10,
        completion_tokens: 1,
        cache_hit: false,
        prompt_sha256: "p".into(),
        response_sha256: "r".into(),
        content: content.map(str::to_string),
    }
}

fn the_first_version_is_stable_and_later_ones_candidates(fresh: &Fresh) -> Result<()> {
    let store = fresh.open()?;
    assert_eq!(
        store.add_adapter_version("support", "a", "00", "base", None)?,
        1
    );
    assert_eq!(
        store.add_adapter_version("support", "b", "11", "base", None)?,
        2
    );
    let states: Vec<(u32, String)> = store
        .adapter_versions()?
        .into_iter()
        .map(|v| (v.version, v.state))
        .collect();
    assert_eq!(states, vec![(1, "stable".into()), (2, "candidate".into())]);
    store.set_version_state("support", 2, "stable")?;
    store.set_version_state("support", 1, "retired")?;
    let states: Vec<String> = store
        .adapter_versions()?
        .into_iter()
        .map(|v| v.state)
        .collect();
    assert_eq!(states, ["retired", "stable"]);
    Ok(())
}

fn counts_per_version_join_feedback_within_the_window(fresh: &Fresh) -> Result<()> {
    let store = fresh.open()?;
    let stored = r#"{"messages": [{"role": "user", "content": "Hi"}], "response": "Yo"}"#;
    store.log_requests(&[
        request("old", 1_000, 1, true, None), // before the window
        request("a", 5_000, 1, false, None),
        request("b", 5_001, 1, true, None),
        request("c", 5_002, 2, false, Some(stored)),
        request("d", 5_003, 2, false, None),
    ])?;
    // A row logged twice (a retried flush) counts once.
    store.log_requests(&[request("a", 5_000, 1, false, None)])?;
    let verdict = |id: &str, version: u32, score: i64, correction: Option<&str>| FeedbackRow {
        response_id: id.into(),
        model: "support".into(),
        version: Some(version),
        score,
        comment: None,
        correction: correction.map(str::to_string),
    };
    store.upsert_feedback(&verdict("a", 1, 1, None))?;
    store.upsert_feedback(&verdict("c", 2, 1, None))?;
    // The user changed their mind: the later verdict replaces the first.
    store.upsert_feedback(&verdict("c", 2, -1, Some("Hello!")))?;
    let stats = store.version_stats("support", 4_000)?;
    assert_eq!(
        stats,
        vec![
            (
                1,
                VersionStats {
                    requests: 2,
                    failures: 1,
                    feedback: 1,
                    negative: 0
                }
            ),
            (
                2,
                VersionStats {
                    requests: 2,
                    failures: 0,
                    feedback: 1,
                    negative: 1
                }
            ),
        ]
    );
    assert_eq!(store.version_stats("support", 0)?[0].1.requests, 3);
    assert_eq!(store.feedback_counts("support", 2, 0)?, (1, 1));
    let corrections = store.corrections("support", 0)?;
    assert_eq!(corrections.len(), 1);
    assert_eq!(
        (
            corrections[0].response_id.as_str(),
            corrections[0].correction.as_str()
        ),
        ("c", "Hello!")
    );
    assert_eq!(corrections[0].content, stored);
    let logged = store.logged_request("c")?.ok_or("c is logged")?;
    assert_eq!(
        (
            logged.model.as_str(),
            logged.version,
            logged.content.as_deref()
        ),
        ("support", Some(2), Some(stored))
    );
    assert!(store.logged_request("nope")?.is_none());
    let traffic = store.traffic("support", 4_000, 6_000)?;
    assert_eq!(
        (
            traffic.requests,
            traffic.prompt_tokens,
            traffic.feedback,
            traffic.negative
        ),
        (4, 40, 2, 1)
    );
    let totals: Vec<(String, Option<u32>, i64, u64)> = store
        .feedback_totals()?
        .into_iter()
        .map(|t| (t.model, t.version, t.score, t.count))
        .collect();
    assert_eq!(
        totals,
        vec![
            ("support".into(), Some(1), 1, 1),
            ("support".into(), Some(2), -1, 1)
        ]
    );
    assert_eq!(store.logged_models(0)?, ["support"]);
    Ok(())
}

fn rollouts_and_events_survive_a_reopen(fresh: &Fresh) -> Result<()> {
    {
        let store = fresh.open()?;
        store.add_adapter_version("support", "a", "00", "base", None)?;
        store.put_rollout("support", &json!({"name": "support", "percent": 5}))?;
        store.put_rollout("support", &json!({"name": "support", "percent": 25}))?;
        store.add_registry_event(
            "support",
            Some(2),
            "canary_step",
            &json!({"kind": "canary_step"}),
        )?;
        store.add_registry_event(
            "support",
            Some(2),
            "rolled_back",
            &json!({"kind": "rolled_back"}),
        )?;
    }
    let store: Store = fresh.open()?;
    assert_eq!(store.rollout("support")?.ok_or("stored")?["percent"], 25);
    assert_eq!(store.rollouts()?.len(), 1);
    let kinds: Vec<String> = store
        .registry_events("support")?
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(kinds, ["canary_step", "rolled_back"]);
    assert_eq!(
        store.registry_event_counts()?,
        vec![
            ("support".into(), "canary_step".into(), 1),
            ("support".into(), "rolled_back".into(), 1)
        ]
    );
    assert_eq!(store.schema_version()?, 2);
    Ok(())
}

/// A state directory written before the closed loop (schema 1) with two versions of a name:
/// after the upgrade the newest is stable (it was the one served) and the older retired.
#[test]
fn an_upgraded_store_keeps_serving_the_newest_version() -> Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let old = rusqlite::Connection::open(dir.path().join("state.db"))?;
        old.execute_batch(include_str!("../migrations/sqlite/0001_initial.sql"))?;
        old.execute_batch(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);
             INSERT INTO schema_migrations VALUES (1, 0);
             INSERT INTO adapters (name, created_at) VALUES ('m', 0);
             INSERT INTO adapter_versions VALUES ('m', 1, 'a', 'h1', 'base', NULL, 0);
             INSERT INTO adapter_versions VALUES ('m', 2, 'b', 'h2', 'base', NULL, 0);",
        )?;
    }
    let store = Store::open(dir.path())?;
    assert_eq!(store.schema_version()?, 2);
    let states: Vec<(u32, String)> = store
        .adapter_versions()?
        .into_iter()
        .map(|v| (v.version, v.state))
        .collect();
    assert_eq!(states, vec![(1, "retired".into()), (2, "stable".into())]);
    Ok(())
}
