-- ListUsers' total without reading every row per page: a count kept by triggers, so also
-- right for rows the replaced Go server writes during the cut-over (triggers are invisible
-- to its queries). Each writing statement appends its delta as a row (appends never wait on
-- each other, where one counter row would serialise every insert until commit); the total is
-- sum(n), read in the same statement as the page. Now and then a writer folds the rows into
-- one, so the sum stays a read of a few dozen rows.

-- Writers wait while the count is taken and the triggers attached; readers do not.
LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE users_count (
    n bigint NOT NULL
);

INSERT INTO users_count (n) SELECT count(*) FROM users;

-- Replaces the rows this statement can see by one row of their sum. Each row it deletes is
-- added back once, inside the sum: a concurrent fold waits for the rows this one holds and skips
-- them once it commits, so the total stays exact.
CREATE FUNCTION users_count_fold() RETURNS void
LANGUAGE sql AS $$
    WITH folded AS (DELETE FROM users_count RETURNING n)
    INSERT INTO users_count (n) SELECT sum(n) FROM folded HAVING count(*) > 0;
$$;

-- About one writing statement in 32 also folds.
CREATE FUNCTION users_count_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    delta bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM users_count;
        RETURN NULL;
    END IF;
    SELECT count(*) INTO delta FROM changed_rows;
    IF delta > 0 THEN
        INSERT INTO users_count (n)
        VALUES (CASE WHEN TG_OP = 'INSERT' THEN delta ELSE -delta END);
        IF random() < 1.0 / 32 THEN
            PERFORM users_count_fold();
        END IF;
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
