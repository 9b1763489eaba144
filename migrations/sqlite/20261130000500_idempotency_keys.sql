-- Idempotency-Key on CreateUser (issue 16); mirrors migrations/postgres. Times in unix seconds.
CREATE TABLE idempotency_keys (
    key          TEXT    NOT NULL PRIMARY KEY,
    fingerprint  TEXT    NOT NULL,
    response     TEXT,
    created_at   INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER)),
    expires_at   INTEGER NOT NULL
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);
