-- Connectors: external mail servers a tenant configures (SMTP or SendGrid out; IMAP or POP3 in, later).
CREATE TABLE connectors (
    id         INTEGER PRIMARY KEY,
    tenant_id  INTEGER NOT NULL REFERENCES tenants(id),
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('smtp', 'sendgrid', 'imap', 'pop3')),
    direction  TEXT NOT NULL DEFAULT 'out' CHECK (direction IN ('in', 'out', 'both')),
    enabled    INTEGER NOT NULL DEFAULT 1,
    settings   TEXT NOT NULL DEFAULT '{}',  -- JSON: host, port, tls, username, sender, reply_to, base_url...
    secret     TEXT NOT NULL DEFAULT '',    -- password or API token; never returned by listings
    created_at REAL NOT NULL,
    UNIQUE (tenant_id, name)
);
