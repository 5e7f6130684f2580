-- HTTP API keys (gateway/api/, gateway/store/apikeys.py). A key is shown once when made; only a
-- keyed hash of the whole token is kept (HMAC-SHA256 under the pepper in meta 'api_key_pepper').
-- public_id is the visible part of the token (gw_live_<public_id>_<secret>), for lookup and for
-- recognising a leaked key; it is not a secret.
CREATE TABLE api_keys (
    id            INTEGER PRIMARY KEY,
    public_id     TEXT NOT NULL UNIQUE,
    tenant_id     INTEGER NOT NULL REFERENCES tenants(id),
    role          TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'agent', 'sender')),
    usecase_id    INTEGER REFERENCES usecases(id) ON DELETE CASCADE,
    name          TEXT NOT NULL DEFAULT '',
    hash          TEXT NOT NULL,
    rate_limit    REAL NOT NULL DEFAULT 0,     -- requests per second; 0: api.rate_limit
    created_at    REAL NOT NULL,
    expires_at    REAL,                        -- NULL: never
    revoked_at    REAL,
    last_used_at  REAL,
    CHECK (role != 'sender' OR usecase_id IS NOT NULL)
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);
