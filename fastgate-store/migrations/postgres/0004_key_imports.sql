-- Secrets brought over from M-FastGate by `fastgate import-mfastgate` (SHA-256 hex, as in
-- api_key_hashes). Kept after the key is deleted, so that running the import again does not
-- bring a deleted key back. Keep in step with the other dialect.
CREATE TABLE key_imports (
    hash        TEXT   NOT NULL PRIMARY KEY,
    key_id      TEXT   NOT NULL,
    imported_at BIGINT NOT NULL
);
