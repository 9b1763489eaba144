-- Every stored value a migration changed (or only reported) because it broke a rule; the
-- rules are in migrations/README.md. `new_value` NULL: reported, kept as stored.
-- (PostgreSQL's 20261130000100 also creates legacy_adoption: only PostgreSQL databases of the
-- replaced service are adopted.)
CREATE TABLE users_repair_log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id   TEXT    NOT NULL,
    field     TEXT    NOT NULL,
    problem   TEXT    NOT NULL,
    old_value TEXT,
    new_value TEXT,
    logged_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
);
