-- Delivery of received mail to the tenant's application: webhook endpoints narrowed to one use case
-- or one channel address, and forwarding rules with the outbox that feeds the forwarder.

-- An endpoint with a use case (or address) gets only the events whose data names that use case (or
-- address): the 'received' events of inbound mail. NULL: no narrowing. Deleting the use case or the
-- address deletes the endpoints narrowed to it (its rowid could be reused by a new one, which must
-- not inherit another's subscriber).
ALTER TABLE webhook_endpoints ADD COLUMN usecase_id INTEGER REFERENCES usecases(id) ON DELETE CASCADE;
ALTER TABLE webhook_endpoints ADD COLUMN address_id INTEGER REFERENCES channel_addresses(id) ON DELETE CASCADE;

-- Forward received mail of a use case or of one channel address to another mailbox, over SMTP
-- through the outbound queue. Exactly one of usecase_id and address_id is set.
CREATE TABLE inbound_forwards (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL REFERENCES tenants(id),
    usecase_id  INTEGER REFERENCES usecases(id) ON DELETE CASCADE,
    address_id  INTEGER REFERENCES channel_addresses(id) ON DELETE CASCADE,
    to_address  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    CHECK ((usecase_id IS NULL) != (address_id IS NULL))
);
CREATE UNIQUE INDEX inbound_forwards_rule ON inbound_forwards (tenant_id, IFNULL(usecase_id, 0), IFNULL(address_id, 0), to_address);
CREATE INDEX inbound_forwards_usecase ON inbound_forwards (usecase_id) WHERE usecase_id IS NOT NULL;
CREATE INDEX inbound_forwards_address ON inbound_forwards (address_id) WHERE address_id IS NOT NULL;

-- Filled by append_event with the 'received' event (same transaction) when a rule matches; a row
-- leaves once its message is in the outbound queue (same transaction as the queue's put).
CREATE TABLE inbound_forward_outbox (
    id          INTEGER PRIMARY KEY,
    tenant_id   INTEGER NOT NULL,
    inbound_id  TEXT NOT NULL,         -- inbound_messages.inbound_id (the event's subject)
    created_at  REAL NOT NULL
);

-- `gateway thread show`: a tenant's messages of one thread, both directions.
CREATE INDEX IF NOT EXISTS message_ids_thread ON message_ids (tenant_id, thread_id);
