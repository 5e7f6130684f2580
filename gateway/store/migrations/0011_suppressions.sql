-- Suppression list: addresses a tenant must not mail, and why. One row per (tenant, scope, scope
-- object, address). scope: 'tenant' (every use case: hard bounces), 'domain' (use cases of one sending
-- domain), 'usecase' (one use case), 'marketing' (every marketing use case of the tenant: complaints).
CREATE TABLE suppressions (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL REFERENCES tenants(id),
    scope       TEXT NOT NULL CHECK (scope IN ('tenant', 'domain', 'usecase', 'marketing')),
    scope_id    INTEGER NOT NULL DEFAULT 0,   -- domains.id or usecases.id; 0 for tenant and marketing
    address     TEXT NOT NULL,                -- normalised: see gateway/suppression.py normalise_address
    reason      TEXT NOT NULL CHECK (reason IN ('hard_bounce', 'soft_bounce', 'complaint', 'unsubscribe', 'manual')),
    source      TEXT NOT NULL DEFAULT '',     -- what caused it: an event (queue id), 'operator', 'import'...
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    expires_at  REAL,                         -- NULL: until removed
    UNIQUE (tenant_id, address, scope, scope_id)
);
