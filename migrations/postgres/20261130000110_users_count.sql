-- ListUsers' total without reading every row per page: a count kept by triggers, so also
-- right for rows the replaced Go server writes during the cut-over (triggers are invisible
-- to its queries). Spread over 16 slots, picked by backend, so concurrent inserts do not
-- queue on one row lock; the total is sum(n), read in the same statement as the page.

-- Writers wait while the count is taken and the triggers attached; readers do not.
LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE users_count (
    slot smallint PRIMARY KEY CHECK (slot BETWEEN 0 AND 15),
    n    bigint   NOT NULL
);

INSERT INTO users_count (slot, n)
SELECT slot, CASE WHEN slot = 0 THEN (SELECT count(*) FROM users) ELSE 0 END
FROM generate_series(0, 15) AS slot;

CREATE FUNCTION users_count_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    delta bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE users_count SET n = 0;
        RETURN NULL;
    END IF;
    SELECT count(*) INTO delta FROM changed_rows;
    IF delta > 0 THEN
        UPDATE users_count
        SET n = n + CASE WHEN TG_OP = 'INSERT' THEN delta ELSE -delta END
        WHERE slot = pg_backend_pid() % 16;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_count_inserted
    AFTER INSERT ON users REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION users_count_changed();
CREATE TRIGGER users_count_deleted
    AFTER DELETE ON users REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION users_count_changed();
CREATE TRIGGER users_count_truncated
    AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION users_count_changed();
