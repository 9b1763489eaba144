-- Contract phase: the input rules of the service become constraints of the schema.
-- `*_contract_*` migrations run right away on a database meshgate created, but on an adopted
-- legacy database only with `user-service migrate --contract`, after the replaced Go server is
-- retired (it writes values these constraints refuse). The same transaction first runs the
-- repair pass (user-service/src/repair.rs: rows breaking the rules are changed by the rules in
-- migrations/README.md and listed in users_repair_log), so every row satisfies them here.
--
-- Written to leave later migrations alone: it may run after migrations with higher versions
-- (on an adopted database), so it only adds rules, and it changes nothing those may have
-- redefined (the updated_at trigger is the expand phase's).

ALTER TABLE users
    ALTER COLUMN name TYPE text,
    ALTER COLUMN email TYPE text,
    DROP CONSTRAINT IF EXISTS users_name_length,
    ADD CONSTRAINT users_name_length CHECK (char_length(name) BETWEEN 1 AND 100),
    -- Unicode category Cc; NUL cannot be stored at all.
    ADD CONSTRAINT users_name_characters CHECK (name !~ '[\u0001-\u001f\u007f-\u009f]'),
    DROP CONSTRAINT users_email_key;

-- Identity ignores letter case in the whole address (ASCII letters: COLLATE "C" makes lower()
-- independent of the database's locale). The service maps a violation to ALREADY_EXISTS.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email COLLATE "C"));

-- goose's history: the adoption keeps its last version in legacy_adoption.legacy_version.
DROP TABLE IF EXISTS goose_db_version;
