-- FastGate store schema, PostgreSQL dialect. Keep in step with migrations/sqlite/0001_init.sql:
-- same tables, same columns, same numbering. Times are unix milliseconds, durations microseconds.

CREATE TABLE api_keys (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT,
    source_path   TEXT    NOT NULL,
    permissions   TEXT    NOT NULL,            -- JSON array of strings
    display       TEXT    NOT NULL,            -- "fg_AbCd…wxYz", never the key
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    expires_at    BIGINT,                      -- NULL = never
    active        BOOLEAN NOT NULL,
    last_used_at  BIGINT,
    request_count BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX api_keys_created ON api_keys (created_at, id);
CREATE INDEX api_keys_source_path ON api_keys (source_path);

CREATE TABLE api_key_hashes (
    hash        TEXT   NOT NULL PRIMARY KEY,
    key_id      TEXT   NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    valid_until BIGINT
);
CREATE INDEX api_key_hashes_key ON api_key_hashes (key_id);

CREATE TABLE store_state (
    id             INTEGER NOT NULL PRIMARY KEY,
    key_generation BIGINT  NOT NULL
);
INSERT INTO store_state (id, key_generation) VALUES (1, 0);

CREATE TABLE audit_events (
    id                BIGSERIAL PRIMARY KEY,
    request_id        TEXT    NOT NULL,
    started_at        BIGINT  NOT NULL,
    key_id            TEXT,
    source_path       TEXT,
    client_ip         TEXT,
    user_agent        TEXT,
    method            TEXT    NOT NULL,
    path              TEXT    NOT NULL,
    target_url        TEXT,
    status            INTEGER NOT NULL,
    is_stream         BOOLEAN NOT NULL,
    model             TEXT,
    request_bytes     BIGINT  NOT NULL,
    response_bytes    BIGINT  NOT NULL,
    ttfb_us           BIGINT,
    duration_us       BIGINT  NOT NULL,
    outcome           TEXT    NOT NULL,
    error_code        TEXT,
    prompt_tokens     BIGINT,
    completion_tokens BIGINT,
    total_tokens      BIGINT
);
CREATE INDEX audit_events_started ON audit_events (started_at, id);
CREATE INDEX audit_events_key_started ON audit_events (key_id, started_at, id);
CREATE INDEX audit_events_request_id ON audit_events (request_id);

CREATE TABLE audit_rollup_minute (
    minute            BIGINT NOT NULL,
    key_id            TEXT   NOT NULL,
    model             TEXT   NOT NULL,
    source_path       TEXT   NOT NULL,
    requests          BIGINT NOT NULL,
    errors            BIGINT NOT NULL,
    streams           BIGINT NOT NULL,
    duration_sum_us   BIGINT NOT NULL,
    ttfb_sum_us       BIGINT NOT NULL,
    ttfb_count        BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    total_tokens      BIGINT NOT NULL,
    PRIMARY KEY (minute, key_id, model)
);

CREATE TABLE audit_latency_minute (
    minute BIGINT  NOT NULL,
    bucket INTEGER NOT NULL,
    count  BIGINT  NOT NULL,
    PRIMARY KEY (minute, bucket)
);
