-- Sending domains, their DKIM keys and DNS verification state; use cases and their credentials.
CREATE TABLE domains (
    id                 INTEGER PRIMARY KEY,
    tenant_id          INTEGER NOT NULL REFERENCES tenants(id),
    name               TEXT NOT NULL UNIQUE,          -- normalised: lower case, IDNA A-labels, no trailing dot
    verification_token TEXT NOT NULL,
    state              TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'verified', 'failing')),
    verified_at        REAL,                          -- last time every required record passed
    checked_at         REAL,                          -- last verification run
    last_result        TEXT NOT NULL DEFAULT '{}',    -- JSON: per-record outcome of the last run
    created_at         REAL NOT NULL
);
CREATE INDEX domains_tenant ON domains (tenant_id);

CREATE TABLE dkim_keys (
    id          INTEGER PRIMARY KEY,
    domain_id   INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    selector    TEXT NOT NULL,
    algorithm   TEXT NOT NULL CHECK (algorithm IN ('rsa', 'ed25519')),
    key_path    TEXT NOT NULL,                        -- PEM file under <state>/keys, mode 0600
    public_key  TEXT NOT NULL,                        -- base64 for the p= tag
    -- pending: published record not yet verified, not used to sign; active: signs; retired: kept until removed
    state       TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'active', 'retired')),
    created_at  REAL NOT NULL,
    UNIQUE (domain_id, selector, algorithm)
);

CREATE TABLE usecases (
    id                INTEGER PRIMARY KEY,
    tenant_id         INTEGER NOT NULL REFERENCES tenants(id),
    domain_id         INTEGER NOT NULL REFERENCES domains(id),
    name              TEXT NOT NULL,
    entity            TEXT NOT NULL DEFAULT '',
    kind              TEXT NOT NULL CHECK (kind IN ('transactional', 'marketing')),
    unsubscribe_scope TEXT NOT NULL DEFAULT 'usecase' CHECK (unsubscribe_scope IN ('usecase', 'domain')),
    route             TEXT NOT NULL DEFAULT 'direct', -- 'direct' or 'connector:<name>'
    rate_limit        INTEGER NOT NULL DEFAULT 0,     -- messages per minute; 0 = unlimited
    created_at        REAL NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE INDEX usecases_domain ON usecases (domain_id);

CREATE TABLE usecase_senders (
    usecase_id INTEGER NOT NULL REFERENCES usecases(id) ON DELETE CASCADE,
    address    TEXT NOT NULL,                         -- lower-cased domain part
    PRIMARY KEY (usecase_id, address)
) WITHOUT ROWID;

CREATE TABLE credentials (
    id            INTEGER PRIMARY KEY,
    usecase_id    INTEGER NOT NULL REFERENCES usecases(id) ON DELETE CASCADE,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,                      -- argon2id
    created_at    REAL NOT NULL,
    last_used_at  REAL,
    revoked_at    REAL
);
CREATE INDEX credentials_usecase ON credentials (usecase_id);
