-- Bookkeeping for adopting the replaced service's database and for the repair pass.
-- Additive only: the replaced Go server never reads these tables (expand phase).

-- One row when `user-service migrate` adopted a database created by the replaced service
-- (goose-managed). While `contracted_at` is NULL the old server may still be writing, so
-- `migrate` defers the contract migrations (`*_contract_*.sql`) until
-- `user-service migrate --contract`. No row: a database meshgate created itself.
CREATE TABLE legacy_adoption (
    source           text        PRIMARY KEY,
    legacy_version   bigint      NOT NULL,
    baseline_version bigint      NOT NULL,
    adopted_at       timestamptz NOT NULL DEFAULT now(),
    contracted_at    timestamptz
);

-- Every stored value a migration changed (or only reported) because it broke a rule; the
-- rules are in migrations/README.md. `new_value` NULL: reported, kept as stored.
CREATE TABLE users_repair_log (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id   uuid        NOT NULL,
    field     text        NOT NULL,
    problem   text        NOT NULL,
    old_value text,
    new_value text,
    logged_at timestamptz NOT NULL DEFAULT now()
);
