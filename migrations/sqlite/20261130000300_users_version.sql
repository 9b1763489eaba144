-- A per-user version that every write increments (mirrors migrations/postgres). SQLite has one
-- writer at a time, so versions follow commit order.
ALTER TABLE users ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

CREATE TRIGGER users_bump_version
    AFTER UPDATE OF name, email, age ON users
    FOR EACH ROW
BEGIN
    UPDATE users SET version = OLD.version + 1 WHERE seq = NEW.seq;
END;
