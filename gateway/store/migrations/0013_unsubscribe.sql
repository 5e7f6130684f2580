-- One-click unsubscribe (RFC 8058). list_unsubscribe: whether a use case's mail carries the
-- List-Unsubscribe fields; NULL follows its kind (on for marketing, off for transactional).
ALTER TABLE usecases ADD COLUMN list_unsubscribe INTEGER CHECK (list_unsubscribe IN (0, 1));

-- HMAC keys of the unsubscribe tokens. The newest key not retired signs; every key not retired
-- verifies, so a rotation leaves the links already sent working until the old key is retired.
-- The first key is made on first use, from the OS's CSPRNG (secrets), not SQLite's randomblob().
CREATE TABLE unsubscribe_keys (
    id          INTEGER PRIMARY KEY,
    secret      BLOB NOT NULL,
    created_at  REAL NOT NULL,
    retired_at  REAL
);
