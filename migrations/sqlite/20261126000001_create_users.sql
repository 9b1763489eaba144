-- Users of the meshgate user service (embedded SQLite backend).
-- Mirrors migrations/postgres: same columns, checks and unique email. SQLite reports unique
-- violations as "UNIQUE constraint failed: users.email" (it has no constraint names in errors).
-- Timestamps are unix seconds; `seq` orders rows created within the same second.
CREATE TABLE users (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,
    name       TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    email      TEXT    NOT NULL CONSTRAINT users_email_key UNIQUE,
    age        INTEGER NOT NULL CHECK (age BETWEEN 1 AND 149),
    created_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER)),
    updated_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
);

CREATE INDEX users_created_at_idx ON users (created_at DESC, seq DESC);

-- The database, not the service, keeps updated_at.
CREATE TRIGGER users_set_updated_at
    AFTER UPDATE OF name, email, age ON users
    FOR EACH ROW
BEGIN
    UPDATE users SET updated_at = CAST(strftime('%s', 'now') AS INTEGER) WHERE seq = NEW.seq;
END;
