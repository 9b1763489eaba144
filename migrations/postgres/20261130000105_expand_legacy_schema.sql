-- Expand phase of an adopted legacy database: gives it every object of the baseline
-- (20261126000001, which adoption records as applied without running it) that the replaced Go
-- server cannot notice. Every statement is a no-op on a database meshgate created.
-- Left for the contract phase (20261130000150), because the old server would trip on them:
-- varchar → text (prepared statements returning the column fail with "cached plan must not
-- change result type"), the name checks and the case-insensitive email index (it writes such
-- values), dropping goose's table (it reads it at start).

-- ListUsers pages newest first through this index; the legacy ones are superseded.
CREATE INDEX IF NOT EXISTS users_created_at_idx ON users (created_at DESC, id DESC);
DROP INDEX IF EXISTS idx_users_created_at;
-- users_email_key's own index already serves lookups by email.
DROP INDEX IF EXISTS idx_users_email;

-- Same default, without the uuid-ossp extension (left installed: nothing else is assumed of it).
ALTER TABLE users ALTER COLUMN id SET DEFAULT gen_random_uuid();

-- The legacy check (age > 0 AND age < 150) is the same rule; it takes meshgate's name.
ALTER TABLE users DROP CONSTRAINT IF EXISTS users_age_check;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'users'::regclass AND conname = 'users_age_range') THEN
        ALTER TABLE users ADD CONSTRAINT users_age_range CHECK (age BETWEEN 1 AND 149);
    END IF;
END;
$$;

-- updated_at: meshgate's trigger replaces the legacy one (same behaviour: now() on UPDATE).
DROP TRIGGER IF EXISTS update_users_updated_at ON users;
DROP FUNCTION IF EXISTS update_updated_at_column();

-- The legacy timestamps were nullable. A missing one is taken from the other (or the time of
-- this migration when both are missing), reported in users_repair_log. The trigger is not in
-- place yet, so this UPDATE keeps the values it writes.
INSERT INTO users_repair_log (user_id, field, problem, old_value, new_value)
SELECT id, 'created_at', 'missing (NULL)', NULL, COALESCE(created_at, updated_at, now())::text
FROM users WHERE created_at IS NULL
UNION ALL
SELECT id, 'updated_at', 'missing (NULL)', NULL, COALESCE(updated_at, created_at, now())::text
FROM users WHERE updated_at IS NULL;
UPDATE users
SET created_at = COALESCE(created_at, updated_at, now()),
    updated_at = COALESCE(updated_at, created_at, now())
WHERE created_at IS NULL OR updated_at IS NULL;
ALTER TABLE users
    ALTER COLUMN created_at SET NOT NULL,
    ALTER COLUMN updated_at SET NOT NULL;

DO $$
BEGIN
    IF to_regprocedure('users_set_updated_at()') IS NULL THEN
        -- The body is the baseline's, byte for byte (adopted and created schemas compare equal).
        CREATE FUNCTION users_set_updated_at() RETURNS trigger
        LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$fn$;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'users'::regclass AND tgname = 'users_set_updated_at') THEN
        CREATE TRIGGER users_set_updated_at
            BEFORE UPDATE ON users
            FOR EACH ROW EXECUTE FUNCTION users_set_updated_at();
    END IF;
END;
$$;
