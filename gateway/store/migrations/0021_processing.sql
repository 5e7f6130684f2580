-- The processing stage (gateway/inbound/processor.py): thread lookups and inbound retention.

-- A reply's parent is looked up by its Message-ID alone, across tenants: a parent found only in
-- another tenant's records is refused (confused deputy) and must be told apart from an unknown one.
CREATE INDEX message_ids_by_id ON message_ids (message_id);

-- The sweeper ages processed rows out oldest first (held and spooled rows are never swept).
CREATE INDEX inbound_processed_age ON inbound_messages (processed_at) WHERE state = 'processed';
