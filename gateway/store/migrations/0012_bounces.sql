-- Bounce classification and suppression checks.

-- Each attempt's bounce class (gateway/feedback/classify.py): hard, soft, block, quota, rate,
-- unknown, or '' for a delivered one; class_reason names the rule that chose it.
ALTER TABLE attempts ADD COLUMN class TEXT NOT NULL DEFAULT '';
ALTER TABLE attempts ADD COLUMN class_reason TEXT NOT NULL DEFAULT '';

-- What a use case's submissions get for a suppressed recipient: refused at RCPT (550 5.7.1), or
-- accepted and dropped (250, a 'suppressed' event, nothing sent) for apps that cannot handle a
-- partial refusal.
ALTER TABLE usecases ADD COLUMN suppressed_action TEXT NOT NULL DEFAULT 'refuse'
    CHECK (suppressed_action IN ('refuse', 'accept-drop'));

-- Soft failures per address, counted in a window that starts with the first one: the
-- delivery.soft_bounce_limit-th within delivery.soft_bounce_window suppresses the address for
-- delivery.soft_bounce_suppress_for. A delivery to the address clears its row.
CREATE TABLE soft_bounces (
    tenant_id INTEGER NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    address   TEXT NOT NULL,
    first_at  REAL NOT NULL,
    last_at   REAL NOT NULL,
    count     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, address)
) WITHOUT ROWID;
CREATE INDEX soft_bounces_age ON soft_bounces (last_at);
CREATE INDEX suppressions_expiry ON suppressions (expires_at) WHERE expires_at IS NOT NULL;

-- A recipient found suppressed just before delivery ends in state 'suppressed' (final: nothing
-- sent, no DSN). SQLite cannot alter a CHECK constraint; widening the list of allowed values
-- changes no stored row, which is the case SQLite's ALTER TABLE documentation allows editing the
-- schema text for (section "Making other kinds of table schema changes"). The alternative, copying
-- the table, would cascade-delete the attempts that reference it.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema SET sql = replace(sql, '''bounced'', ''held''))', '''bounced'', ''held'', ''suppressed''))')
    WHERE type = 'table' AND name = 'recipients';
PRAGMA writable_schema = RESET;

DROP TRIGGER recipients_finish;
CREATE TRIGGER recipients_finish AFTER UPDATE OF state ON recipients
WHEN NEW.state IN ('delivered', 'bounced', 'suppressed') AND OLD.state NOT IN ('delivered', 'bounced', 'suppressed')
BEGIN
    INSERT OR IGNORE INTO finished_messages (message_id, finished_at)
    SELECT NEW.message_id, NEW.updated_at
    WHERE NOT EXISTS (SELECT 1 FROM recipients WHERE message_id = NEW.message_id AND state IN ('pending', 'deferred', 'held'));
END;
