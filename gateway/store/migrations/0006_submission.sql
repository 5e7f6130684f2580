-- Submission and queue control: monthly usage per tenant (quotas), listing recipients by state.

-- Messages accepted per tenant and calendar month (UTC, 'YYYY-MM'); bumped in the same commit as the
-- message itself, so the count survives queue deletions and restarts.
CREATE TABLE usage_monthly (
    tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    month     TEXT NOT NULL,
    messages  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, month)
) WITHOUT ROWID;

-- `queue list --state S` and the recipients-by-state gauge without a full scan per tenant.
CREATE INDEX recipients_by_state ON recipients (state, message_id);
-- Releasing what a pause held walks only held rows.
CREATE INDEX recipients_held ON recipients (hold_reason, tenant_id, usecase_id) WHERE state = 'held';
