-- Webhooks: per-tenant endpoints, the durable outbox that feeds them, and a short delivery log.
-- The outbox is filled by append_event (store/events.py) in the same transaction as the event, so
-- an event is never lost between its commit and its enqueue; a row leaves the outbox once the
-- endpoint answered 2xx (its delivery log row is the record of that).
CREATE TABLE webhook_endpoints (
    id              INTEGER PRIMARY KEY,
    tenant_id       INTEGER NOT NULL REFERENCES tenants(id),
    name            TEXT NOT NULL,
    url             TEXT NOT NULL,
    secret          TEXT NOT NULL,                -- HMAC-SHA256 key; read only by the sender
    events          TEXT NOT NULL DEFAULT '*',    -- '*' or ',kind,kind,' (commas around each kind)
    enabled         INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT NOT NULL DEFAULT '',
    failures        INTEGER NOT NULL DEFAULT 0,   -- consecutive failed POSTs of the head of the outbox
    failing_since   REAL,                         -- first failure of the current run of failures
    next_attempt_at REAL NOT NULL DEFAULT 0,      -- the head waits until then (backoff)
    last_status     INTEGER,
    last_error      TEXT NOT NULL DEFAULT '',
    last_success_at REAL,
    lease_owner     TEXT,                         -- the gateway node sending for it now (one at a time: order)
    lease_until     REAL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    UNIQUE (tenant_id, name)
);
-- The probe append_event makes for every event: enabled endpoints of the event's tenant.
CREATE INDEX webhook_endpoints_live ON webhook_endpoints (tenant_id) WHERE enabled = 1;

CREATE TABLE webhook_outbox (
    id          INTEGER PRIMARY KEY,
    endpoint_id INTEGER NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    event_id    INTEGER NOT NULL,   -- events.id (no foreign key: the events sweep must not cascade here)
    created_at  REAL NOT NULL
);
-- An endpoint's lane reads its head in id order.
CREATE INDEX webhook_outbox_lane ON webhook_outbox (endpoint_id, id);

CREATE TABLE webhook_deliveries (
    id          INTEGER PRIMARY KEY,
    endpoint_id INTEGER NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    at          REAL NOT NULL,
    first_event INTEGER NOT NULL,
    last_event  INTEGER NOT NULL,
    events      INTEGER NOT NULL,   -- events in the POST
    status      INTEGER,            -- HTTP status; NULL when no answer (refused, timeout)
    latency     REAL NOT NULL,      -- seconds
    ok          INTEGER NOT NULL,
    error       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
