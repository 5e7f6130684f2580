-- What tenants read through the API (gateway/api/messages.py, events.py, stats.py).

-- The use case an event is about: the 'usecase_id' its data names (received mail, unsubscribes), or
-- for an event about an outbound message (its subject is the queue id) the message's use case. Set
-- by append_event; a sender key reads only its use case's events through this index. Events from
-- before this migration have none (they are the tenant's other roles' to read).
ALTER TABLE events ADD COLUMN usecase_id INTEGER;
CREATE INDEX events_usecase ON events (usecase_id, id) WHERE usecase_id IS NOT NULL;

-- A sender key lists its use case's messages, newest first, without walking the tenant's others.
CREATE INDEX messages_usecase ON messages (usecase_id, id);

-- The numbers a dashboard shows, per tenant, UTC day and use case: incremented by append_event in
-- the transaction of the event that counts (gateway/store/stats.py says which do), so a read is a
-- range of this primary key and never a scan of events. Counts start at this migration.
CREATE TABLE daily_stats (
    tenant_id     INTEGER NOT NULL,
    day           TEXT NOT NULL,               -- YYYY-MM-DD (UTC)
    usecase_id    INTEGER NOT NULL,
    sent          INTEGER NOT NULL DEFAULT 0,  -- recipients accepted into the queue (not the gateway's own DSNs)
    delivered     INTEGER NOT NULL DEFAULT 0,
    deferred      INTEGER NOT NULL DEFAULT 0,  -- temporary failures (each attempt that was deferred)
    bounced_hard  INTEGER NOT NULL DEFAULT 0,
    bounced_soft  INTEGER NOT NULL DEFAULT 0,
    bounced_block INTEGER NOT NULL DEFAULT 0,  -- refused for policy or reputation (5.7.x, blocklists)
    bounced_other INTEGER NOT NULL DEFAULT 0,  -- quota, rate, unclassified
    suppressed    INTEGER NOT NULL DEFAULT 0,  -- on the suppression list when delivery came to them
    complained    INTEGER NOT NULL DEFAULT 0,
    unsubscribed  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, usecase_id)
) WITHOUT ROWID;

-- SQLite may reuse a deleted row's id: a new tenant or use case must not inherit another's numbers.
CREATE TRIGGER daily_stats_tenant_gone AFTER DELETE ON tenants BEGIN
    DELETE FROM daily_stats WHERE tenant_id = OLD.id;
END;
CREATE TRIGGER daily_stats_usecase_gone AFTER DELETE ON usecases BEGIN
    DELETE FROM daily_stats WHERE tenant_id = OLD.tenant_id AND usecase_id = OLD.id;
END;
