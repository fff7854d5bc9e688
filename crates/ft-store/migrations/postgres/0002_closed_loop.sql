-- PostgreSQL dialect of migrations/sqlite/0002_closed_loop.sql (BIGINT for INTEGER).
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
    updated_at BIGINT NOT NULL,
    object TEXT NOT NULL
);

CREATE TABLE registry_events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    version BIGINT,
    kind TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    object TEXT NOT NULL
);
CREATE INDEX registry_events_by_name ON registry_events (name, seq);

-- One row per answered (or failed) completion request. Times in unix milliseconds.
CREATE TABLE request_log (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    user_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT,
    status BIGINT NOT NULL,
    failed BIGINT NOT NULL,
    latency_ms BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cache_hit BIGINT NOT NULL,
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
    version BIGINT,
    score BIGINT NOT NULL,
    comment TEXT,
    correction TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX feedback_by_model ON feedback (model, updated_at);
