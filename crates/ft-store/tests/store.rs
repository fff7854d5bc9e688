//! The store on both backends, the same cases: migrations, pages, retried creates, claims,
//! checkpoints and versions, across a reopen; workers claiming concurrently from their own
//! connections never share a job. PostgreSQL runs where `FT_TEST_DATABASE_URL` names a server
//! (`scripts/test.sh` starts one with `scripts/postgres.sh`); under `CI=true` its absence fails.

#[macro_use]
mod fresh;

use fresh::Fresh;
use ft_store::{JobRow, PageQuery, Store};
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

on_both_backends!(
    pages_are_newest_first_and_end,
    a_retried_body_finds_the_recent_job_only,
    claims_are_exclusive_until_the_lease_runs_out,
    everything_survives_a_reopen,
    concurrent_workers_never_share_a_job,
);

fn ids(items: &[Value]) -> Vec<&str> {
    items.iter().filter_map(|o| o["id"].as_str()).collect()
}

fn job(store: &Store, id: &str, created_at: i64, body: &str) -> Result<()> {
    let object = json!({"id": id, "status": "queued", "created_at": created_at});
    store.insert_job(&JobRow {
        id,
        created_at,
        idempotency_key: None,
        request_sha256: body,
        object: &object,
    })?;
    Ok(())
}

fn pages_are_newest_first_and_end(fresh: &Fresh) -> Result<()> {
    let store = fresh.open()?;
    for i in 0..5 {
        let file = json!({"id": format!("file-{i}"), "purpose": "fine-tune", "created_at": i});
        store.insert_file(&file, "00")?;
    }
    let first = store.list_files(
        None,
        &PageQuery {
            after: None,
            limit: 2,
        },
    )?;
    assert_eq!(ids(&first.items), ["file-4", "file-3"]);
    assert!(first.has_more);
    let after = Some("file-3".to_string());
    let second = store.list_files(Some("fine-tune"), &PageQuery { after, limit: 3 })?;
    assert_eq!(ids(&second.items), ["file-2", "file-1", "file-0"]);
    assert!(!second.has_more);
    let other = store.list_files(
        Some("batch"),
        &PageQuery {
            after: None,
            limit: 10,
        },
    )?;
    assert!(other.items.is_empty());
    let unknown = Some("file-nope".to_string());
    assert!(store
        .list_files(
            None,
            &PageQuery {
                after: unknown,
                limit: 10
            }
        )?
        .items
        .is_empty());
    assert!(store.delete_file("file-2")?);
    assert!(!store.delete_file("file-2")?);
    assert!(store.file("file-2")?.is_none());
    Ok(())
}

fn a_retried_body_finds_the_recent_job_only(fresh: &Fresh) -> Result<()> {
    let store = fresh.open()?;
    job(&store, "ftjob-old", 100, "body-a")?;
    assert!(store.find_retried_job(None, "body-a", 101)?.is_none());
    job(&store, "ftjob-new", 200, "body-a")?;
    let found = store.find_retried_job(None, "body-a", 150)?;
    assert_eq!(found.map(|j| j["id"].clone()), Some(json!("ftjob-new")));
    let keyed = json!({"id": "ftjob-keyed", "status": "queued"});
    store.insert_job(&JobRow {
        id: "ftjob-keyed",
        created_at: 300,
        idempotency_key: Some("key-1"),
        request_sha256: "body-b",
        object: &keyed,
    })?;
    let found = store.find_retried_job(Some("key-1"), "anything", 0)?;
    assert_eq!(found.map(|j| j["id"].clone()), Some(json!("ftjob-keyed")));
    assert!(store
        .find_retried_job(Some("key-2"), "body-b", 0)?
        .is_none());
    Ok(())
}

fn claims_are_exclusive_until_the_lease_runs_out(fresh: &Fresh) -> Result<()> {
    let store = fresh.open()?;
    job(&store, "ftjob-1", 1, "a")?;
    job(&store, "ftjob-2", 2, "b")?;
    let first = store
        .claim_job("w1", 1000, 1060)?
        .ok_or("nothing claimed")?;
    assert_eq!(first["id"], "ftjob-1");
    assert_eq!(first["status"], "running");
    let second = store
        .claim_job("w2", 1000, 1060)?
        .ok_or("nothing claimed")?;
    assert_eq!(second["id"], "ftjob-2");
    assert!(store.claim_job("w3", 1000, 1060)?.is_none());
    assert!(store.renew_lease("ftjob-1", "w1", 1200)?);
    assert!(!store.renew_lease("ftjob-1", "w2", 1200)?);
    // w2 dies: past its lease, another worker takes ftjob-2 over; ftjob-1's renewed lease holds.
    let taken = store
        .claim_job("w3", 1100, 1160)?
        .ok_or("nothing claimed")?;
    assert_eq!(taken["id"], "ftjob-2");
    assert!(store.claim_job("w4", 1100, 1160)?.is_none());
    Ok(())
}

fn everything_survives_a_reopen(fresh: &Fresh) -> Result<()> {
    {
        let store = fresh.open()?;
        job(&store, "ftjob-1", 1, "a")?;
        store.add_event("ftjob-1", &json!({"id": "ft-event-1", "created_at": 1}))?;
        let checkpoint = json!({"id": "ftckpt_1", "step_number": 10, "created_at": 1});
        store.add_checkpoint(
            "ftjob-1",
            10,
            "jobs/ftjob-1/checkpoints/step-10",
            &checkpoint,
        )?;
        // The same step saved again after a crash keeps one row and its first id.
        let again = json!({"id": "ftckpt_2", "step_number": 10, "created_at": 2});
        store.add_checkpoint("ftjob-1", 10, "jobs/ftjob-1/checkpoints/step-10", &again)?;
        assert_eq!(
            store.add_adapter_version("ft:m::x", "a/1", "h1", "base", None)?,
            1
        );
        assert_eq!(
            store.add_adapter_version("ft:m::x", "a/2", "h2", "base", None)?,
            2
        );
    }
    let store = fresh.open()?;
    assert_eq!(store.schema_version()?, 2);
    assert_eq!(store.job("ftjob-1")?.ok_or("job lost")?["status"], "queued");
    let events = store.list_events(
        "ftjob-1",
        &PageQuery {
            after: None,
            limit: 10,
        },
    )?;
    assert_eq!(ids(&events.items), ["ft-event-1"]);
    let checkpoints = store.all_checkpoints()?;
    assert_eq!(checkpoints.len(), 1);
    assert_eq!(checkpoints[0].0["id"], "ftckpt_1");
    assert_eq!(checkpoints[0].0["created_at"], 2);
    let versions = store.adapter_versions()?;
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(versions[1].content_sha256, "h2");
    assert!(store.delete_adapter("ft:m::x")?);
    assert!(store.adapter_versions()?.is_empty());
    assert!(!store.has_adapter("ft:m::x")?);
    assert_eq!(
        store.add_adapter_version("ft:m::x", "a/3", "h3", "base", None)?,
        3
    );
    Ok(())
}

/// Four workers, each with its own connection (as separate processes have), race to claim 24
/// jobs: every job is claimed exactly once.
fn concurrent_workers_never_share_a_job(fresh: &Fresh) -> Result<()> {
    let store = fresh.open()?;
    let jobs: Vec<String> = (0..24).map(|i| format!("ftjob-{i:02}")).collect();
    for (i, id) in jobs.iter().enumerate() {
        job(&store, id, i as i64, id)?;
    }
    let claimed = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                scope.spawn(move || -> Result<Vec<String>> {
                    let store = fresh.open()?;
                    let mut mine = Vec::new();
                    while let Some(job) = store.claim_job(&format!("w{w}"), 1000, 1060)? {
                        mine.push(job["id"].as_str().unwrap_or("").to_string());
                    }
                    Ok(mine)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| "a worker panicked")?)
            .collect::<Result<Vec<_>>>()
    })?;
    let mut all: Vec<String> = claimed.concat();
    all.sort();
    assert_eq!(all, jobs, "claims per worker: {claimed:?}");
    for id in &jobs {
        assert_eq!(store.job(id)?.ok_or("job lost")?["status"], "running");
    }
    Ok(())
}
