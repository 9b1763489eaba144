-- A per-user version that every write increments, so the cache can keep the newest entry.
-- The trigger runs after the row lock is taken, on the newest committed row, so versions
-- follow commit order; updated_at does not (now() is the transaction's start time).
-- Additive: the previous release keeps working (its updates bump the version too).
ALTER TABLE users ADD COLUMN version bigint NOT NULL DEFAULT 1;

CREATE FUNCTION users_bump_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END;
$$;

CREATE TRIGGER users_bump_version
    BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION users_bump_version();
