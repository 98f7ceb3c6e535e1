-- Latency aggregates leave out the requests FastGate refused itself as the client's fault
-- (outcome 'rejected' with a 4xx status: bad key, unknown route, body too large). Those take
-- microseconds and would pull the dashboard's averages and percentiles down. `latency_count`
-- counts the requests summed in `duration_sum_us` (and in the latency histograms); `ttfb_*`
-- follow the same rule.
--
-- NULL means "written by a version that summed every request": read as `requests`. No default
-- and no backfill, so that the column is added without rewriting the tables, and so that rows an
-- older instance still writes during a rolling upgrade (sharing one PostgreSQL) stay consistent.
-- Keep in step with the other dialect.

ALTER TABLE audit_rollup_minute ADD COLUMN latency_count BIGINT;
ALTER TABLE audit_rollup_hour ADD COLUMN latency_count BIGINT;
