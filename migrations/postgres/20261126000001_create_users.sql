-- Users of the meshgate user service.
-- Constraint names are part of the contract with the code: the service maps a violation of
-- `users_email_key` to ALREADY_EXISTS.
CREATE TABLE users (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text        NOT NULL CONSTRAINT users_name_length CHECK (char_length(name) BETWEEN 1 AND 100),
    email      text        NOT NULL CONSTRAINT users_email_key UNIQUE,
    age        integer     NOT NULL CONSTRAINT users_age_range CHECK (age BETWEEN 1 AND 149),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- ListUsers pages newest first.
CREATE INDEX users_created_at_idx ON users (created_at DESC, id DESC);

-- The database, not the service, keeps updated_at.
CREATE FUNCTION users_set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER users_set_updated_at
    BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION users_set_updated_at();
