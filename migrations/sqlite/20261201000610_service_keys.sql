-- Secrets the service keeps in its database (mirrors migrations/postgres): `page_token` signs
-- ListUsers (user.v2) page tokens; randomblob() draws from SQLite's OS-seeded CSPRNG.
CREATE TABLE service_keys (
    name TEXT PRIMARY KEY,
    key  BLOB NOT NULL CHECK (length(key) >= 16)
);

INSERT INTO service_keys (name, key) VALUES ('page_token', randomblob(32));
