-- Contract phase: the input rules of the service become rules of the schema (see
-- migrations/postgres/20261130000150). The same transaction first runs the repair pass
-- (user-service/src/repair.rs, rules in migrations/README.md, changes in users_repair_log), so
-- every row satisfies them here. users_name_length is the baseline's column check.
--
-- SQLite cannot add a check to a table without rebuilding it, and a rebuild would have to name
-- every column, including those of later migrations that may already be applied (a contract
-- migration can run after them). So the name rule is a pair of triggers, with the error a check
-- would raise.

-- Unicode category Cc (GLOB ranges compare code points).
CREATE TRIGGER users_name_characters_on_insert BEFORE INSERT ON users
WHEN NEW.name GLOB ('*[' || char(1) || '-' || char(31) || char(127) || '-' || char(159) || ']*')
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: users_name_characters');
END;

CREATE TRIGGER users_name_characters_on_update BEFORE UPDATE OF name ON users
WHEN NEW.name GLOB ('*[' || char(1) || '-' || char(31) || char(127) || '-' || char(159) || ']*')
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: users_name_characters');
END;

-- Identity ignores letter case in the whole address (SQLite's lower() folds ASCII letters only,
-- as PostgreSQL's lower(… COLLATE "C")). The service maps a violation to ALREADY_EXISTS. The
-- baseline's exact users_email_key stays: whatever it refuses, this refuses too.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
