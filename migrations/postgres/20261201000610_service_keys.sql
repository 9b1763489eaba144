-- Secrets the service keeps in its database, so every replica shares them and a restart keeps
-- them: `page_token` signs ListUsers (user.v2) page tokens. Generated here, once per database,
-- from gen_random_uuid()'s strong random source (two v4 UUIDs: 244 random bits).
-- Expand: a new table the replaced Go server never reads.
CREATE TABLE IF NOT EXISTS service_keys (
    name text  PRIMARY KEY,
    key  bytea NOT NULL CONSTRAINT service_keys_length CHECK (length(key) >= 16)
);

INSERT INTO service_keys (name, key)
VALUES ('page_token',
        decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'))
ON CONFLICT (name) DO NOTHING;
