-- Rolling upgrades: a binary that knows migrations up to N keeps working on a database that a
-- newer FastGate migrated further, as long as `requires_migration` <= N. A later migration that
-- older binaries cannot live with (a dropped or renamed column, a new NOT NULL column without a
-- default, changed meaning of a value) sets it to its own version:
--   UPDATE store_state SET requires_migration = <its version> WHERE id = 1;
-- Additive migrations (a new table, index, or nullable / defaulted column) leave it alone.
-- Keep in step with the other dialect.
ALTER TABLE store_state ADD COLUMN requires_migration BIGINT NOT NULL DEFAULT 0;
