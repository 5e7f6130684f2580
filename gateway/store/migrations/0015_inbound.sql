-- Inbound: per-domain switches, channel addresses, the spool every received message lands in, and
-- what the processor made of each message (kind, thread, bodies, attachments).

-- A domain receives on the MX only when its tenant turned inbound on (and the domain is verified).
-- catchall_usecase_id: mail for any other local part of the domain goes to this use case (NULL: none,
-- unknown users get 550 5.1.1).
ALTER TABLE domains ADD COLUMN inbound_enabled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE domains ADD COLUMN catchall_usecase_id INTEGER REFERENCES usecases(id) ON DELETE SET NULL;
-- The tenant's choice to refuse at the final dot (550 5.7.1) mail whose DMARC policy is reject and fails.
ALTER TABLE tenants ADD COLUMN dmarc_reject INTEGER NOT NULL DEFAULT 0;

-- The Message-ID a message answers (its In-Reply-To as resolved), so an outbound reply's References
-- chain can be rebuilt from our own records even when the customer's client stripped it.
ALTER TABLE message_ids ADD COLUMN parent TEXT NOT NULL DEFAULT '';

-- Channel addresses: the "email address" objects of a contact-center channel.
CREATE TABLE channel_addresses (
    id            INTEGER PRIMARY KEY,
    tenant_id     INTEGER NOT NULL REFERENCES tenants(id),
    domain_id     INTEGER NOT NULL REFERENCES domains(id),
    usecase_id    INTEGER NOT NULL REFERENCES usecases(id),
    address       TEXT NOT NULL UNIQUE,         -- suppression.normalise_address spelling (lower case, A-label domain)
    display_name  TEXT NOT NULL DEFAULT '',
    direction     TEXT NOT NULL DEFAULT 'both' CHECK (direction IN ('inbound', 'outbound', 'both')),
    enabled       INTEGER NOT NULL DEFAULT 1,
    reply_copy    TEXT NOT NULL DEFAULT '',     -- added as Bcc and Reply-To to mail sent from this address
    header_text   TEXT NOT NULL DEFAULT '',
    header_html   TEXT NOT NULL DEFAULT '',
    footer_text   TEXT NOT NULL DEFAULT '',
    footer_html   TEXT NOT NULL DEFAULT '',
    vcard         INTEGER NOT NULL DEFAULT 0,   -- attach a .vcf to the first message of each new thread
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX channel_addresses_tenant ON channel_addresses (tenant_id, id);
CREATE INDEX channel_addresses_usecase ON channel_addresses (usecase_id);

-- The spool: one row per received message and tenant (a message to two tenants' addresses is two
-- rows, each with only that tenant's envelope recipients). Written before the MX answers 250 or the
-- poller changes the mailbox. tenant_id is NULL for mail to the gateway's own addresses (return
-- paths, feedback, unsubscribe) until the processor resolves it.
CREATE TABLE inbound_messages (
    id                INTEGER PRIMARY KEY,
    inbound_id        TEXT NOT NULL UNIQUE,        -- QueueIds spelling: what operators name it by
    source            TEXT NOT NULL CHECK (source IN ('mx', 'imap', 'pop3')),
    connector_id      INTEGER REFERENCES connectors(id) ON DELETE SET NULL,
    tenant_id         INTEGER REFERENCES tenants(id),
    client            TEXT NOT NULL DEFAULT '',     -- MX: client IP; poller: host:port of the mailbox
    helo              TEXT NOT NULL DEFAULT '',
    mail_from         TEXT NOT NULL DEFAULT '',     -- envelope sender ('' for <>)
    recipients        TEXT NOT NULL DEFAULT '[]',   -- JSON list: this tenant's envelope recipients
    size              INTEGER NOT NULL,
    sha256            TEXT NOT NULL,                -- of raw: deduplication of polled mail
    header_message_id TEXT NOT NULL DEFAULT '',     -- Message-ID header without <>, '' when none
    auth_results      TEXT NOT NULL DEFAULT '',     -- Authentication-Results value, when evaluated at DATA
    received_at       REAL NOT NULL,
    state             TEXT NOT NULL DEFAULT 'spooled' CHECK (state IN ('spooled', 'processed', 'held')),
    hold_reason       TEXT NOT NULL DEFAULT '',
    processed_at      REAL,
    -- What the processor found (NULL / '' until processed).
    kind              TEXT NOT NULL DEFAULT '' ,    -- '', message, reply, dsn, arf, auto_reply, unsubscribe
    usecase_id        INTEGER REFERENCES usecases(id) ON DELETE SET NULL,
    address_id        INTEGER REFERENCES channel_addresses(id) ON DELETE SET NULL,
    thread_id         TEXT NOT NULL DEFAULT '',     -- the Message-ID that started the thread
    parent_message_id TEXT NOT NULL DEFAULT '',     -- the message it answers, '' when none was found
    flags             TEXT NOT NULL DEFAULT '[]',   -- JSON list, e.g. ["cross_usecase_parent"]
    from_address      TEXT NOT NULL DEFAULT '',     -- who it is attributed to (the original sender of a forward)
    subject           TEXT NOT NULL DEFAULT '',
    summary           TEXT NOT NULL DEFAULT '{}',   -- JSON: bodies, stripped reply, report, defects...
    raw               BLOB NOT NULL                 -- last column: written through a blob handle
);
CREATE INDEX inbound_spooled ON inbound_messages (id) WHERE state = 'spooled';
CREATE INDEX inbound_tenant ON inbound_messages (tenant_id, id);
CREATE INDEX inbound_thread ON inbound_messages (tenant_id, thread_id);
CREATE INDEX inbound_dedup ON inbound_messages (tenant_id, sha256);
CREATE INDEX inbound_received ON inbound_messages (received_at);

-- Attachments of a processed message; the bytes are content-addressed files under <state>/attachments.
CREATE TABLE inbound_attachments (
    id           INTEGER PRIMARY KEY,
    message_id   INTEGER NOT NULL REFERENCES inbound_messages(id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,               -- order of the depth-first walk
    filename     TEXT NOT NULL,                  -- sanitised; the Content-ID for inline cid: images
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,                  -- names the file
    content_id   TEXT NOT NULL DEFAULT '',
    inline       INTEGER NOT NULL DEFAULT 0,     -- 1: referenced by cid: from the HTML, not listed for download
    UNIQUE (message_id, position)
);
CREATE INDEX inbound_attachments_sha ON inbound_attachments (sha256);
