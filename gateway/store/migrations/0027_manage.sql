-- The tenant API's suppression list (gateway/api/suppressions.py) pages a tenant's entries in id
-- order, optionally only one reason or one scope: each of these reads is a range of one index, so a
-- page costs the same whether the list has a hundred rows or a million, and whether other tenants'
-- rows outnumber the tenant's own.
CREATE INDEX suppressions_tenant_page ON suppressions (tenant_id, id);
CREATE INDEX suppressions_reason_page ON suppressions (tenant_id, reason, id);
CREATE INDEX suppressions_scope_page ON suppressions (tenant_id, scope, scope_id, id);
-- A tenant's forwarding rules in id order (GET /v1/forwards).
CREATE INDEX inbound_forwards_tenant ON inbound_forwards (tenant_id, id);
