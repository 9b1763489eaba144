-- ListUsers' total without reading every row per page: a count kept by triggers (one row:
-- SQLite has one writer at a time). The total is sum(n), read in the same statement as the page.
CREATE TABLE users_count (
    slot INTEGER PRIMARY KEY CHECK (slot = 0),
    n    INTEGER NOT NULL
);

INSERT INTO users_count (slot, n) SELECT 0, count(*) FROM users;

CREATE TRIGGER users_count_inserted AFTER INSERT ON users
BEGIN
    UPDATE users_count SET n = n + 1 WHERE slot = 0;
END;

CREATE TRIGGER users_count_deleted AFTER DELETE ON users
BEGIN
    UPDATE users_count SET n = n - 1 WHERE slot = 0;
END;
