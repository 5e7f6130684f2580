"""A tenant with one of every object the API names, and keys of every role: for the generic tests
that walk the whole route table (tests/test_api_conformance.py, tests/test_api_schemathesis.py).

    async with api_world(tmp_path, dns_server) as world:
        world.keys["owner"], world.keys["sender"], world.other     # acme's keys; globex's owner key
        world.params["domain"], world.params["queue_id"], ...      # acme's objects, by path parameter
        world.fill("/v1/domains/{domain}")                          # the path with acme's objects

Objects are made the way an operator makes them (the admin socket, the same services the API
calls); mail the way it arrives: a queued outbound message through the store as submission puts
it, a received one as the processor stores it (with an attachment and its thread).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import msgspec

from gateway.api.routes import PARAM
from tests.support.api import api_key
from tests.support.daemon import DaemonHandle, merge, running_daemon
from tests.support.delivery import enqueue
from tests.support.dns import DnsServer, dns_overrides
from tests.support.processed import Part, processed_message
from tests.support.tenancy import sending_setup

TENANT = "acme"
OTHER = "globex"
ROLES = ("owner", "admin", "agent", "sender")
CONFIG = {"webhooks": {"allow_loopback": True}}


@dataclass
class World:
    d: DaemonHandle
    keys: dict[str, str]                 # role -> a key of TENANT
    other: str                           # an owner key of OTHER (which has objects of its own too)
    params: dict[str, str]               # path parameter -> TENANT's object of that kind
    foreign: dict[str, str]              # path parameter -> TENANT's object of another use case than the sender key's
    setup: dict[str, Any] = field(default_factory=dict)

    def fill(self, template: str, params: dict[str, str] | None = None) -> str:
        """The path with every {name} replaced; KeyError for a parameter the world has no object for."""
        values = {**self.params, **(params or {})}
        return PARAM.sub(lambda m: _quote(values[m.group(1)]), template)


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="@+")


async def populate(d: DaemonHandle, dns: DnsServer, *, tenant: str = TENANT, domain: str = "acme.test") -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """One of each object in ``tenant``: (sending_setup's facts, path parameter ->
    object, path parameter -> an object of another use case)."""
    # Names of the tenant's own (another tenant with the same names would find its own objects).
    usecase, connector, webhook, suppressed = f"{tenant}-receipts", f"{tenant}-relay", f"{tenant}-hooks", f"gone-{tenant}@dest.test"
    setup = await sending_setup(d, dns, tenant=tenant, domain=domain, sender=f"app@{domain}", usecase=usecase)
    await d.call("domain.inbound", domain=domain, enabled=True, tenant=tenant)
    address = f"help@{domain}"
    await d.call("address.add", tenant=tenant, address=address, usecase=usecase)
    address_id = (await d.store.addresses.get(tenant, address))["id"]
    await d.call("connector.add", tenant=tenant, name=connector, kind="smtp", host="relay.example.net", port=587)
    await d.call("suppression.add", tenant=tenant, address=suppressed)
    await d.call("webhook.add", tenant=tenant, url="http://127.0.0.1:9/hook", name=webhook)
    forward = await d.call("forward.add", tenant=tenant, to="ops@elsewhere.test", usecase=usecase)
    queue_id = await enqueue(d, setup, ["bob@dest.test"])
    tenant_id = (await d.store.tenants.get(tenant))["id"]
    received = await processed_message(d.store, d.daemon.paths.state_dir, tenant_id=tenant_id, usecase_id=setup["usecase_id"],
                                       address_id=address_id, recipients=(address,),
                                       attachments=[Part("invoice.pdf", "application/pdf", b"%PDF-1.4 conformance\n")])
    spare = await d.call("apikey.add", tenant=tenant, role="agent", name="spare")
    # A second use case, for "a sender key sees only its own use case's objects".
    other_usecase = await d.call("usecase.add", tenant=tenant, domain=domain, name=f"{tenant}-newsletter", entity=f"{tenant} news",
                                 kind="transactional", senders=[f"news@{domain}"])
    foreign_queue_id = await enqueue(d, {**setup, "usecase_id": other_usecase["id"], "sender": f"news@{domain}"}, ["carol@dest.test"])
    params = {
        "domain": setup["domain"], "selector": setup["selectors"][0], "usecase": usecase,
        "credential": setup["username"], "address": address, "connector": connector, "suppression": suppressed,
        "webhook": webhook, "forward_id": str(forward["id"]), "queue_id": queue_id, "inbound_id": received["inbound_id"],
        "thread_id": received["message_id"], "attachment": "0", "public_id": spare["public_id"],
    }
    foreign = {"queue_id": foreign_queue_id, "usecase": f"{tenant}-newsletter"}
    return setup, params, foreign


@contextlib.asynccontextmanager
async def api_world(tmp_path: Path, dns: DnsServer, config: dict[str, Any] | None = None) -> AsyncIterator[World]:
    async with running_daemon(tmp_path, merge(merge(dns_overrides(dns), CONFIG), config or {})) as d:
        setup, params, foreign = await populate(d, dns)
        await populate(d, dns, tenant=OTHER, domain="globex.test")    # so "not found" is not "the tenant has none"
        keys = {role: await api_key(d, TENANT, role, usecase=params["usecase"] if role == "sender" else None, name=role) for role in ROLES}
        other = await api_key(d, OTHER, "owner", name="other")
        yield World(d=d, keys=keys, other=other, params=params, foreign=foreign, setup=setup)


def minimal(model: Any) -> Any:
    """The smallest value of a msgspec type that decodes: required fields only, each its simplest valid
    value (a pattern's shortest match, the first of a choice). For requests that must reach the handler."""
    return _minimal(msgspec.inspect.type_info(model))


def _minimal(t: Any) -> Any:
    i = msgspec.inspect
    if isinstance(t, i.Metadata):
        if t.extra_json_schema and "examples" in t.extra_json_schema:
            return t.extra_json_schema["examples"][0]
        return _minimal(t.type)
    if isinstance(t, (i.StructType, i.DataclassType, i.TypedDictType)):
        return {f.encode_name: _minimal(f.type) for f in t.fields if f.required}
    if isinstance(t, i.UnionType):
        options = [x for x in t.types if not isinstance(x, i.NoneType)]
        return _minimal(options[0]) if options else None
    if isinstance(t, i.LiteralType):
        return t.values[0]
    if isinstance(t, i.EnumType):
        return next(iter(t.cls)).value
    if isinstance(t, i.StrType):
        if t.pattern:
            return hypothesis.find(st.from_regex(t.pattern, fullmatch=True), lambda s: len(s) >= (t.min_length or 0),
                                   settings=hypothesis.settings(database=None))
        return "x" * max(1, t.min_length or 0)
    if isinstance(t, i.BoolType):
        return False
    if isinstance(t, (i.IntType, i.FloatType)):
        low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else 1)
        return low
    if isinstance(t, (i.ListType, i.SetType, i.FrozenSetType, i.VarTupleType)):
        return [_minimal(t.item_type) for _ in range(t.min_length or 0)]
    if isinstance(t, i.DictType):
        return {}
    if isinstance(t, (i.BytesType, i.ByteArrayType)):
        return ""
    if isinstance(t, i.AnyType):
        return None
    raise TypeError(f"no minimal value for {t!r}")
