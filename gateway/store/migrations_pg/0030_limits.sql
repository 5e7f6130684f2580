-- SQLite's 0030 (see there): counters every process and node on the store shares (gateway/store/limits.py).
CREATE TABLE rate_buckets (
    key         TEXT PRIMARY KEY,      -- scope and key, e.g. 'usecase 12', 'apikey 3'
    tokens      DOUBLE PRECISION NOT NULL,         -- left at updated_at
    updated_at  DOUBLE PRECISION NOT NULL,
    full_at     DOUBLE PRECISION NOT NULL,         -- when it is full again: the row says nothing after that
    version     BIGINT NOT NULL       -- raised by every write: a write checks it is still what it read
);
CREATE INDEX rate_buckets_full ON rate_buckets (full_at);

CREATE TABLE auth_failures (
    key         TEXT NOT NULL,         -- an address, or an address and a username
    owner       TEXT NOT NULL,         -- the store handle (process) that wrote it: it counts its own itself
    failed_at   DOUBLE PRECISION NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL          -- failed_at + the cool-down: counted until then
);
CREATE INDEX auth_failures_key ON auth_failures (key, expires_at);
CREATE INDEX auth_failures_expiry ON auth_failures (expires_at);

CREATE TABLE auth_blocks (
    key         TEXT PRIMARY KEY,
    blocked_until DOUBLE PRECISION NOT NULL
);
CREATE INDEX auth_blocks_until ON auth_blocks (blocked_until);
