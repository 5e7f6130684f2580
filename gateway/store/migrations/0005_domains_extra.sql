-- DKIM key lifecycle times, for `domain show` (key ages) and for retiring the key a rotation replaced.
ALTER TABLE dkim_keys ADD COLUMN activated_at REAL;
ALTER TABLE dkim_keys ADD COLUMN retired_at REAL;
-- The re-verifier picks the domains checked longest ago.
CREATE INDEX domains_checked ON domains (state, checked_at);
