-- Contract phase: the input rules of the service become constraints of the schema (see
-- migrations/postgres/20261130000150). The same transaction first runs the repair pass
-- (user-service/src/repair.rs, rules in migrations/README.md, changes in users_repair_log), so
-- every row satisfies them here. SQLite cannot add constraints to a table: it is rebuilt, and
-- its indexes and triggers (dropped with the old table) are created again.

CREATE TABLE users_new (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,
    name       TEXT    NOT NULL
        CONSTRAINT users_name_length CHECK (length(name) BETWEEN 1 AND 100)
        -- Unicode category Cc (GLOB ranges compare code points).
        CONSTRAINT users_name_characters
            CHECK (name NOT GLOB ('*[' || char(1) || '-' || char(31) || char(127) || '-' || char(159) || ']*')),
    email      TEXT    NOT NULL,
    age        INTEGER NOT NULL CONSTRAINT users_age_range CHECK (age BETWEEN 1 AND 149),
    created_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER)),
    updated_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
);

INSERT INTO users_new (seq, id, name, email, age, created_at, updated_at)
SELECT seq, id, name, email, age, created_at, updated_at FROM users;

-- Also drops the old indexes and triggers; fires no trigger (users_count stays right).
DROP TABLE users;
ALTER TABLE users_new RENAME TO users;

-- Identity ignores letter case in the whole address (SQLite's lower() folds ASCII letters only,
-- as PostgreSQL's lower(… COLLATE "C")). The service maps a violation to ALREADY_EXISTS.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

CREATE INDEX users_created_at_idx ON users (created_at DESC, seq DESC);

CREATE TRIGGER users_set_updated_at
    AFTER UPDATE OF name, email, age ON users
    FOR EACH ROW
BEGIN
    UPDATE users SET updated_at = CAST(strftime('%s', 'now') AS INTEGER) WHERE seq = NEW.seq;
END;

CREATE TRIGGER users_count_inserted AFTER INSERT ON users
BEGIN
    UPDATE users_count SET n = n + 1 WHERE slot = 0;
END;

CREATE TRIGGER users_count_deleted AFTER DELETE ON users
BEGIN
    UPDATE users_count SET n = n - 1 WHERE slot = 0;
END;
