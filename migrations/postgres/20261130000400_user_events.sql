-- Events (issue 16). Expand: new tables only; the replaced server never sees them.
--
-- user_outbox: one row per committed create/update/delete, written in the write's own
-- transaction; the relay publishes rows in `seq` order and deletes them once JetStream has
-- acknowledged them, so the table is exactly the backlog. Per user, `seq` follows commit order:
-- a user's writes hold its row lock until commit, so a later write's row is inserted after the
-- earlier one committed.
CREATE TABLE user_outbox (
    seq          bigserial PRIMARY KEY,
    event_id     uuid        NOT NULL CONSTRAINT user_outbox_event_id_key UNIQUE,
    user_id      uuid        NOT NULL,
    event_type   text        NOT NULL,
    version      bigint      NOT NULL,
    payload      text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_outbox_user_idx ON user_outbox (user_id, version);

-- user_events: the audit trail the worker keeps (ListUserEvents), one row per event.
CREATE TABLE user_events (
    event_id     uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL,
    event_type   text        NOT NULL,
    version      bigint      NOT NULL,
    payload      text        NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_events_user_idx ON user_events (user_id, version);

-- processed_events: which consumer applied which event, written in the same transaction as the
-- effect, so a redelivered event changes nothing.
CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT processed_events_pkey PRIMARY KEY (consumer, event_id)
);
