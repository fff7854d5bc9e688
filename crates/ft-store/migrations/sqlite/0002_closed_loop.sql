-- The closed loop: each adapter version's state, rollouts between two versions, registry
-- events, the request log and user feedback joined to it.

-- candidate | canary | stable | retired | rolled_back. Before this migration the newest
-- version of each name was the one served: it becomes stable, the older ones retired.
ALTER TABLE adapter_versions ADD COLUMN state TEXT NOT NULL DEFAULT 'stable';
UPDATE adapter_versions SET state = 'retired'
    WHERE version < (SELECT MAX(v.version) FROM adapter_versions v WHERE v.name = adapter_versions.name);

-- One rollout per adapter name (the latest; a new promotion replaces a finished one).
CREATE TABLE rollouts (
    name TEXT PRIMARY KEY REFERENCES adapters (name),
    updated_at INTEGER NOT NULL,
    object TEXT NOT NULL
);

CREATE TABLE registry_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER,
    kind TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    object TEXT NOT NULL
);
CREATE INDEX registry_events_by_name ON registry_events (name, seq);

-- One row per answered (or failed) completion request. Times in unix milliseconds.
CREATE TABLE request_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    user_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    version INTEGER,
    status INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cache_hit INTEGER NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    response_sha256 TEXT NOT NULL,
    -- The conversation as JSON, kept only for `store: true` requests (or --store-completions).
    content TEXT
);
CREATE INDEX request_log_by_model ON request_log (model, created_at);

-- At most one verdict per response (a later one replaces it).
CREATE TABLE feedback (
    response_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    version INTEGER,
    score INTEGER NOT NULL,
    comment TEXT,
    correction TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX feedback_by_model ON feedback (model, updated_at);
