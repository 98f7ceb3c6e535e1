-- Hourly rollups (same columns as the per-minute ones), maintained in the same transaction as the
-- audit insert; the 24 h and 7 d metrics windows read these. Keep in step with the other dialect.

CREATE TABLE audit_rollup_hour (
    hour              BIGINT NOT NULL,         -- start of the hour, unix ms
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
    PRIMARY KEY (hour, key_id, model)
) WITHOUT ROWID;

CREATE TABLE audit_latency_hour (
    hour   BIGINT  NOT NULL,
    bucket INTEGER NOT NULL,
    count  BIGINT  NOT NULL,
    PRIMARY KEY (hour, bucket)
) WITHOUT ROWID;

-- Backfill from the per-minute rollups written before this migration.
INSERT INTO audit_rollup_hour (hour, key_id, model, source_path, requests, errors, streams,
    duration_sum_us, ttfb_sum_us, ttfb_count, prompt_tokens, completion_tokens, total_tokens)
SELECT (minute / 3600000) * 3600000, key_id, model, MAX(source_path), SUM(requests), SUM(errors),
    SUM(streams), SUM(duration_sum_us), SUM(ttfb_sum_us), SUM(ttfb_count), SUM(prompt_tokens),
    SUM(completion_tokens), SUM(total_tokens)
FROM audit_rollup_minute GROUP BY (minute / 3600000) * 3600000, key_id, model;

INSERT INTO audit_latency_hour (hour, bucket, count)
SELECT (minute / 3600000) * 3600000, bucket, SUM(count)
FROM audit_latency_minute GROUP BY (minute / 3600000) * 3600000, bucket;
