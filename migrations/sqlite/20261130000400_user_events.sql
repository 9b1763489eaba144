-- Events (issue 16); mirrors migrations/postgres. SQLite has one writer at a time, so `seq`
-- follows commit order.
CREATE TABLE user_outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT    NOT NULL CONSTRAINT user_outbox_event_id_key UNIQUE,
    user_id      TEXT    NOT NULL,
    event_type   TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    payload      TEXT    NOT NULL,
    created_at   INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
);
CREATE INDEX user_outbox_user_idx ON user_outbox (user_id, version);

CREATE TABLE user_events (
    event_id     TEXT    PRIMARY KEY,
    user_id      TEXT    NOT NULL,
    event_type   TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    payload      TEXT    NOT NULL,
    recorded_at  INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER))
);
CREATE INDEX user_events_user_idx ON user_events (user_id, version);

CREATE TABLE processed_events (
    consumer     TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    processed_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER)),
    PRIMARY KEY (consumer, event_id)
);
