-- Mailbox polling (IMAP, POP3): a connector's incoming password, where each polled mailbox stands,
-- and how its last polls went.

-- The incoming mailbox's password, apart from `secret` (the outgoing SMTP password or API token), so
-- one connector can carry both. Never returned by listings (they say has_incoming_secret).
ALTER TABLE connectors ADD COLUMN incoming_secret TEXT NOT NULL DEFAULT '';

-- One row per connector with incoming settings. `mailbox` names what the checkpoint is about
-- (protocol, user, host, port, folder): when the settings point elsewhere the checkpoint starts over.
-- IMAP: everything up to last_uid under uidvalidity is in the spool (a changed UIDVALIDITY rescans,
-- deduplicated by content hash and Message-ID). The rest is what `connector show` reports.
CREATE TABLE mailbox_checkpoints (
    connector_id  INTEGER PRIMARY KEY REFERENCES connectors(id) ON DELETE CASCADE,
    mailbox       TEXT NOT NULL DEFAULT '',
    uidvalidity   INTEGER NOT NULL DEFAULT 0,
    last_uid      INTEGER NOT NULL DEFAULT 0,
    last_poll_at  REAL,                          -- last attempt, whatever its outcome
    last_ok_at    REAL,                          -- last poll that reached the mailbox
    last_error    TEXT NOT NULL DEFAULT '',      -- '' after a poll that worked
    failures      INTEGER NOT NULL DEFAULT 0,    -- consecutive failed attempts (the backoff's exponent)
    backoff_until REAL,
    fetched       INTEGER NOT NULL DEFAULT 0,    -- messages spooled from this mailbox, ever
    duplicates    INTEGER NOT NULL DEFAULT 0,    -- messages found already spooled (rescans, retries)
    skipped       INTEGER NOT NULL DEFAULT 0,    -- messages left on the server: over poller.max_message_size
    last_skipped  TEXT NOT NULL DEFAULT ''
);

-- POP3: the UIDLs already spooled (or skipped) from a connector's mailbox; pruned to what the server
-- still lists after each poll.
CREATE TABLE mailbox_uidls (
    connector_id INTEGER NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    uidl         TEXT NOT NULL,
    PRIMARY KEY (connector_id, uidl)
) WITHOUT ROWID;

-- Deduplication of polled mail by Message-ID per connector (the content hash uses inbound_dedup).
CREATE INDEX inbound_connector_message_id ON inbound_messages (connector_id, header_message_id)
    WHERE connector_id IS NOT NULL;
