-- Latency aggregates leave out the requests FastGate answered itself (outcome 'rejected': bad
-- key, unknown route, body too large...). Those take microseconds and would pull the averages
-- and percentiles of the dashboard down. `latency_count` counts the requests summed in
-- `duration_sum_us` (and in the latency histograms); `ttfb_*` follow the same rule. Rows written
-- before this migration summed every request, so they keep latency_count = requests.
-- Keep in step with the other dialect.

ALTER TABLE audit_rollup_minute ADD COLUMN latency_count BIGINT NOT NULL DEFAULT 0;
UPDATE audit_rollup_minute SET latency_count = requests;

ALTER TABLE audit_rollup_hour ADD COLUMN latency_count BIGINT NOT NULL DEFAULT 0;
UPDATE audit_rollup_hour SET latency_count = requests;
