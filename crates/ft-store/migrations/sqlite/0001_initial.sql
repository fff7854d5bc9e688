-- The first schema. Every object keeps its OpenAI-shaped JSON in `object`; the columns beside it
-- are the ones queries filter or order on. `seq` orders rows by insertion (lists are newest
-- first, and `after` cursors resolve to a seq).

CREATE TABLE files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    purpose TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    object TEXT NOT NULL
);

CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    -- What the client asked for again: its Idempotency-Key header, and the body's sha256.
    idempotency_key TEXT,
    request_sha256 TEXT NOT NULL,
    -- Set while a worker holds the job: who, and until when (unix seconds) unless renewed.
    lease_owner TEXT,
    lease_expires_at INTEGER,
    object TEXT NOT NULL
);
CREATE INDEX jobs_by_status ON jobs (status, seq);
CREATE INDEX jobs_by_request ON jobs (request_sha256, created_at);

CREATE TABLE job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    created_at INTEGER NOT NULL,
    object TEXT NOT NULL
);
CREATE INDEX job_events_by_job ON job_events (job_id, seq);

CREATE TABLE checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    step INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    -- The adapter directory of this checkpoint, relative to the state directory.
    dir TEXT NOT NULL,
    object TEXT NOT NULL,
    UNIQUE (job_id, step)
);

CREATE TABLE adapters (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE adapter_versions (
    name TEXT NOT NULL REFERENCES adapters (name),
    version INTEGER NOT NULL,
    -- The adapter directory, relative to the state directory.
    dir TEXT NOT NULL,
    -- sha256 over the adapter's files (name and bytes, in name order).
    content_sha256 TEXT NOT NULL,
    -- The base it was trained on (its id as `ft serve` lists it).
    base TEXT NOT NULL,
    job_id TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
