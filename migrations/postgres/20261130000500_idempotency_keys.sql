-- Idempotency-Key on CreateUser (issue 16). Expand: a new table only.
-- A key is claimed by inserting its row in the creating transaction: a concurrent duplicate
-- waits on the unique index until that transaction ends, then reads the outcome. `response` is
-- the created user (the user.created event's JSON), answered again to a same-request retry.
CREATE TABLE idempotency_keys (
    key          text        NOT NULL CONSTRAINT idempotency_keys_pkey PRIMARY KEY,
    fingerprint  text        NOT NULL,
    response     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);
