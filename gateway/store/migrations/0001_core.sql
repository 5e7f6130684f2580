-- Core: key/value metadata, tenants, and the events table every stage appends to.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE tenants (
    id               INTEGER PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    display_name     TEXT NOT NULL DEFAULT '',
    enabled          INTEGER NOT NULL DEFAULT 1,
    outbound_enabled INTEGER NOT NULL DEFAULT 1,
    monthly_quota    INTEGER NOT NULL DEFAULT 0,   -- messages per calendar month; 0 = unlimited
    created_at       REAL NOT NULL
);

-- One row per thing that happened (queued, delivered, bounced, tenant_added, domain_failing...).
-- Logs, metrics and the later webhooks are all fed from here; rows are only ever appended.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    tenant_id  INTEGER REFERENCES tenants(id) ON DELETE SET NULL,
    kind       TEXT NOT NULL,
    subject    TEXT NOT NULL DEFAULT '',   -- what it is about: a queue id, a domain name...
    data       TEXT NOT NULL DEFAULT '{}'  -- JSON object
);
CREATE INDEX events_tenant ON events (tenant_id, id);
CREATE INDEX events_subject ON events (subject, id);
