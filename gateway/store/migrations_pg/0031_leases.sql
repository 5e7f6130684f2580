-- Claims with a lease, and leases for the jobs that must run once: SQLite's 0031 (see there).
ALTER TABLE recipients ADD COLUMN claim_until DOUBLE PRECISION;
DROP INDEX recipients_claimed;
CREATE INDEX recipients_claimed ON recipients (claim_until, claimed_by) WHERE claimed_by IS NOT NULL;
UPDATE recipients SET claim_until = 0 WHERE claimed_by IS NOT NULL;

CREATE TABLE leases (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until  DOUBLE PRECISION NOT NULL
);
