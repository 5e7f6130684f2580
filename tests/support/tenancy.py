"""A tenant that can send, set up the way an operator does it: over the admin socket, with the
records published from `domain records --format zone` into the test DNS server.

    async with running_daemon(tmp_path, dns_overrides(dns_server)) as d:
        setup = await sending_setup(d, dns_server)
        setup["username"], setup["password"], setup["sender"]      # for SMTP AUTH and MAIL FROM
"""

from __future__ import annotations

from typing import Any

from tests.support.daemon import AdminError, DaemonHandle
from tests.support.dns import DnsServer, dns_overrides

__all__ = ["sending_setup", "publish_records", "dns_overrides"]


async def publish_records(d: DaemonHandle, dns: DnsServer, domain: str) -> dict[str, Any]:
    """Load the domain's zone text (what an operator pastes into BIND) into the test server."""
    records = await d.call("domain.records", domain=domain)
    for record in records["records"]:
        if record["type"] == "TXT" and record["purpose"] in ("spf", "return_path_spf", "dmarc", "verification"):
            dns.remove(record["name"], "TXT")  # the zone replaces what was there (SPF must stay one record)
    dns.load_zone(records["zone"], origin=records["domain"])
    return records


async def sending_setup(d: DaemonHandle, dns: DnsServer, *, tenant: str = "acme", domain: str = "acme.test",
                        sender: str = "app@acme.test", usecase: str = "receipts", kind: str = "transactional",
                        senders: list[str] | None = None, dkim: str | None = None) -> dict[str, Any]:
    """Tenant, verified domain, use case and one credential. The daemon must run with dns_overrides(dns)."""
    try:
        await d.call("tenant.add", name=tenant)
    except AdminError as exc:
        if exc.code != "conflict":
            raise
    added = await d.call("domain.add", tenant=tenant, domain=domain, **({"dkim": dkim} if dkim else {}))
    records = await publish_records(d, dns, added["name"])
    verified = await d.call("domain.verify", domain=added["name"])
    if verified["state"] != "verified":
        problems = [f"{r['name']} {r['type']}: {r['status']} {r['detail']}" for r in verified["records"] if r["status"] != "verified"]
        raise AssertionError(f"{domain} did not verify: {problems}")
    made = await d.call("usecase.add", tenant=tenant, domain=added["name"], name=usecase, entity=f"{tenant} {usecase}",
                        kind=kind, senders=senders or [sender])
    credential = await d.call("usecase.credentials.add", tenant=tenant, usecase=usecase)
    return {
        "tenant": tenant,
        "domain": added["name"],
        "usecase": usecase,
        "usecase_id": made["id"],
        "sender": (senders or [sender])[0],
        "senders": made["senders"],
        "username": credential["username"],
        "password": credential["password"],
        "return_path_domain": added["return_path_domain"],
        "selectors": [k["selector"] for k in added["keys"]],
        "records": records,
    }
