-- Idempotency-Key of POST /v1/messages (gateway/api/sending.py, gateway/store/idempotency.py). A row is
-- written in the same transaction as the message it answers (store.queue.put), so a retried request
-- finds either both or neither: the same key never queues a second message, on any node. ``response``
-- is the 202 answer as sent; ``fingerprint`` a hash of the request, to tell a retry from a reuse.
-- The sweeper deletes rows older than 24 hours (rowid order is creation order).
CREATE TABLE api_idempotency (
    id           INTEGER PRIMARY KEY,
    key_id       INTEGER NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    idem_key     TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    status       INTEGER NOT NULL,
    response     BLOB NOT NULL,
    queue_id     TEXT NOT NULL,
    created_at   REAL NOT NULL,
    UNIQUE (key_id, idem_key)
);
