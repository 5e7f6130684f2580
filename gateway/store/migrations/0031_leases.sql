-- Claims with a lease, and leases for the jobs that must run once (gateway/store/leases.py).
--
-- A claimed recipient carries claim_until (REAL epoch seconds): its holder renews it while the
-- attempt is in flight; past it, any node's next claim takes the row over (a dead node's claims
-- move on without waiting for that node to start again). The claimed rows' index now leads with
-- the lease's end, so the take-over probe is one seek that finds nothing in the normal case, and it
-- still covers claimed_by for releasing one token's, one process's or one node's claims.
ALTER TABLE recipients ADD COLUMN claim_until REAL;
DROP INDEX recipients_claimed;
CREATE INDEX recipients_claimed ON recipients (claim_until, claimed_by) WHERE claimed_by IS NOT NULL;
-- Claims made before this migration have no lease: they are taken over at once (by their own
-- node's release at start, or by another node's first claim).
UPDATE recipients SET claim_until = 0 WHERE claimed_by IS NOT NULL;

-- One row per job that must run on one node at a time: the sweeper, the domain re-verifier, the
-- inbound processor, each incoming connector's poller. holder is a process token
-- (<node>:<pid>:<random>); until is when the lease runs out unless renewed.
CREATE TABLE leases (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until  REAL NOT NULL
);
