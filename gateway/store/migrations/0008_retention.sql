-- Retention: which messages are finished (every recipient delivered or bounced) and since when, so
-- the sweeper (gateway/sweeper.py) finds what is old enough through an index, never by scanning
-- messages. A table of its own, not columns on messages: an UPDATE of a messages row rewrites the
-- whole row, body included (up to 25 MiB), and the sweeper must not cost a copy of every body.
CREATE TABLE finished_messages (
    message_id      INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    finished_at     REAL NOT NULL,   -- when the last recipient reached delivered or bounced
    body_dropped_at REAL             -- when the sweeper dropped the body (queue.keep_bodies)
);
-- Bodies still to drop, oldest first; messages still to delete, oldest first.
CREATE INDEX finished_bodies ON finished_messages (finished_at) WHERE body_dropped_at IS NULL;
CREATE INDEX finished_by_age ON finished_messages (finished_at);

-- Bookkeeping, not policy: a message is finished the moment its last open recipient reaches a final
-- state, whoever wrote that state (delivery outcome, expiry). The NOT EXISTS probes
-- recipients_by_state (state, message_id) three times: the same cost for 1 or 2,000 recipients.
CREATE TRIGGER recipients_finish AFTER UPDATE OF state ON recipients
WHEN NEW.state IN ('delivered', 'bounced') AND OLD.state NOT IN ('delivered', 'bounced')
BEGIN
    INSERT OR IGNORE INTO finished_messages (message_id, finished_at)
    SELECT NEW.message_id, NEW.updated_at
    WHERE NOT EXISTS (SELECT 1 FROM recipients WHERE message_id = NEW.message_id AND state IN ('pending', 'deferred', 'held'));
END;

-- Messages that finished before this migration.
INSERT INTO finished_messages (message_id, finished_at)
SELECT m.id, (SELECT MAX(r.updated_at) FROM recipients r WHERE r.message_id = m.id)
FROM messages m
WHERE EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id)
  AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state IN ('pending', 'deferred', 'held'));
