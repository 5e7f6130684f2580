-- The outbound queue. A message is committed with all its recipients before the client sees 250.
CREATE TABLE messages (
    id          INTEGER PRIMARY KEY,
    queue_id    TEXT NOT NULL UNIQUE,          -- what operators and logs name it by
    tenant_id   INTEGER NOT NULL REFERENCES tenants(id),
    usecase_id  INTEGER NOT NULL REFERENCES usecases(id),
    mail_from   TEXT NOT NULL,                 -- envelope sender as the app gave it (DSNs go here)
    message_id  TEXT NOT NULL,                 -- the Message-ID header, without <>
    size        INTEGER NOT NULL,
    body        BLOB NOT NULL,                 -- prepared, unsigned: signed at delivery with the current key
    client      TEXT NOT NULL DEFAULT '',      -- submitting client's address
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,                 -- after this, deferred recipients bounce
    held        INTEGER NOT NULL DEFAULT 0,    -- 1: operator or failure hold on the whole message
    hold_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX messages_tenant ON messages (tenant_id, id);

CREATE TABLE recipients (
    id              INTEGER PRIMARY KEY,
    message_id      INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    tenant_id       INTEGER NOT NULL,          -- denormalised so pauses and listings need no join
    usecase_id      INTEGER NOT NULL,
    rcpt            TEXT NOT NULL,
    domain          TEXT NOT NULL,             -- recipient domain: the per-destination concurrency key
    state           TEXT NOT NULL CHECK (state IN ('pending', 'deferred', 'delivered', 'bounced', 'held')),
    hold_reason     TEXT NOT NULL DEFAULT '',  -- 'paused' when a pause holds it; else why it was held
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    claimed_by      TEXT,                      -- worker token while a delivery is in flight
    last_code       INTEGER,
    last_enhanced   TEXT NOT NULL DEFAULT '',
    last_reply      TEXT NOT NULL DEFAULT '',
    updated_at      REAL NOT NULL,
    dsn_sent        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX recipients_message ON recipients (message_id);
CREATE INDEX recipients_state ON recipients (tenant_id, state);
-- Picking the next due work walks this partial index only: the same cost with 1,000 or 1,000,000 rows.
CREATE INDEX recipients_due ON recipients (next_attempt_at)
    WHERE state IN ('pending', 'deferred') AND claimed_by IS NULL;
CREATE INDEX recipients_claimed ON recipients (claimed_by) WHERE claimed_by IS NOT NULL;

CREATE TABLE attempts (
    id           INTEGER PRIMARY KEY,
    recipient_id INTEGER NOT NULL REFERENCES recipients(id) ON DELETE CASCADE,
    at           REAL NOT NULL,
    duration     REAL NOT NULL,
    outcome      TEXT NOT NULL CHECK (outcome IN ('delivered', 'deferred', 'bounced', 'held')),
    code         INTEGER,
    enhanced     TEXT NOT NULL DEFAULT '',
    reply        TEXT NOT NULL DEFAULT '',
    remote       TEXT NOT NULL DEFAULT ''   -- MX host or connector that answered
);
CREATE INDEX attempts_recipient ON attempts (recipient_id);

-- Pauses: scope 'global' (tenant_id NULL), 'tenant', or 'usecase'. Paused mail is queued but held.
CREATE TABLE pauses (
    id         INTEGER PRIMARY KEY,
    scope      TEXT NOT NULL CHECK (scope IN ('global', 'tenant', 'usecase')),
    tenant_id  INTEGER REFERENCES tenants(id),
    usecase_id INTEGER REFERENCES usecases(id),
    created_at REAL NOT NULL,
    UNIQUE (scope, tenant_id, usecase_id)
);

-- Every Message-ID the gateway sent or saw, with its use case and thread, so replies resolve later.
CREATE TABLE message_ids (
    message_id TEXT NOT NULL,
    tenant_id  INTEGER NOT NULL REFERENCES tenants(id),
    usecase_id INTEGER,
    thread_id  TEXT NOT NULL,                 -- the Message-ID that started the thread
    queue_id   TEXT,
    direction  TEXT NOT NULL CHECK (direction IN ('out', 'in')),
    created_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, message_id)
);
