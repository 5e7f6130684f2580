"""Checking a domain's records against DNS: every query fresh, all of them at once.

Each record gets one status: ``verified``; ``missing`` (NXDOMAIN or no record of the kind);
``mismatch`` (something else is published: ``found`` carries it); ``error`` (timeout, SERVFAIL:
we could not tell). The domain is ``verified`` when every required record is; a definite
``missing``/``mismatch`` makes a verified domain ``failing`` (a pending one stays pending); errors
alone change nothing, so a resolver hiccup never takes a tenant's mail down.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from . import spf
from .lookup import Answer, Lookup
from .records import VERIFY_PREFIX, Record, Settings, plan


def tags(text: str) -> dict[str, str]:
    """A tag=value list (DKIM RFC 6376 3.2, DMARC RFC 7489 6.4); whitespace around parts ignored."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            out.setdefault(name.strip().lower(), "".join(value.split()) if name.strip().lower() == "p" else value.strip())
    return out


def _result(record: Record, status: str, *, found: Any = None, detail: str = "", **extra: Any) -> dict[str, Any]:
    out = {"purpose": record.purpose, "type": record.type, "name": record.name, "required": record.required,
           "expected": record.value, "status": status, "found": found, "detail": detail}
    if record.selector:
        out["selector"] = record.selector
    out.update(extra)
    return out


def _absent_or_error(record: Record, answer: Answer) -> dict[str, Any] | None:
    if answer.status == "error":
        return _result(record, "error", detail=answer.detail)
    if answer.absent:
        return _result(record, "missing", detail="NXDOMAIN" if answer.status == "nxdomain" else f"no {record.type} record")
    return None


class Verifier:
    def __init__(self, lookup: Lookup, settings: Settings):
        self.lookup = lookup
        self.settings = settings

    async def check(self, domain: dict[str, Any]) -> dict[str, Any]:
        """Verify every record of ``domain`` (a store row with keys); returns the result to store."""
        started = time.monotonic()
        records = plan(domain, self.settings)
        results = list(await asyncio.gather(*(self._one(domain, r) for r in records)))
        required = [r for r in results if r["required"]]
        if all(r["status"] == "verified" for r in required):
            state, outcome = "verified", "verified"
        elif any(r["status"] in ("missing", "mismatch") for r in required):
            state = "failing" if domain["state"] in ("verified", "failing") else "pending"
            outcome = state
        else:
            state, outcome = None, "error"  # only errors: keep the state we had
        dmarc = next((r for r in results if r["purpose"] == "dmarc"), {})
        return {
            "checked_at": time.time(),
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
            "outcome": outcome,
            "state": state,
            "dmarc_policy": dmarc.get("policy"),
            "records": results,
            "verified_selectors": [r["selector"] for r in results if r["purpose"] == "dkim" and r["status"] == "verified"],
        }

    async def _one(self, domain: dict[str, Any], record: Record) -> dict[str, Any]:
        check = getattr(self, f"_check_{record.purpose}")
        return await check(domain, record)

    async def _check_verification(self, domain: dict[str, Any], record: Record) -> dict[str, Any]:
        answer = await self.lookup.txt(record.name)
        if (bad := _absent_or_error(record, answer)) is not None:
            return bad
        if record.value in answer.values:
            return _result(record, "verified")
        ours = [v for v in answer.values if v.startswith(VERIFY_PREFIX)]
        return _result(record, "mismatch" if ours else "missing", found=list(answer.values), detail="token differs" if ours else "")

    async def _spf(self, name: str, record: Record) -> dict[str, Any]:
        report = await spf.check(self.lookup, name, ips=list(self.settings.sending_ips), wanted=self.settings.spf_terms(),
                                 helo=self.settings.helo)
        return _result(record, report.status, found=report.record, detail=report.detail, lookups=report.lookups,
                       ip_results=report.results)

    async def _check_spf(self, domain: dict[str, Any], record: Record) -> dict[str, Any]:
        return await self._spf(domain["name"], record)

    async def _check_return_path_spf(self, domain: dict[str, Any], record: Record) -> dict[str, Any]:
        return await self._spf(record.name, record)

    async def _check_dkim(self, domain: dict[str, Any], record: Record) -> dict[str, Any]:
        answer = await self.lookup.txt(record.name)
        if (bad := _absent_or_error(record, answer)) is not None:
            return bad
        via = f"via CNAME to {answer.canonical}" if answer.canonical and answer.canonical != record.name else ""
        keys = [v for v in answer.values if "p=" in v and (v.startswith("v=DKIM1") or "v=" not in v.split(";")[0])]
        if not keys:
            return _result(record, "missing", found=list(answer.values), detail=" ".join(filter(None, ["no DKIM key record", via])))
        if len(keys) > 1:
            return _result(record, "mismatch", found=keys, detail="several DKIM key records at one selector")
        published = tags(keys[0])
        problems = []
        if published.get("k", "rsa").lower() != record.expected["algorithm"]:
            problems.append(f"k={published.get('k', 'rsa')} instead of k={record.expected['algorithm']}")
        try:
            same = base64.b64decode(published.get("p", ""), validate=True) == base64.b64decode(record.expected["public_key"])
        except ValueError:
            same = False
        if not published.get("p"):
            problems.append("the key is revoked (empty p=)")
        elif not same:
            problems.append("the published key is not ours")
        if problems:
            return _result(record, "mismatch", found=keys[0], detail="; ".join(problems + ([via] if via else [])))
        return _result(record, "verified", detail=via)

    async def _dmarc_at(self, name: str) -> tuple[Answer, list[str]]:
        answer = await self.lookup.txt(f"_dmarc.{name}")
        return answer, [v for v in answer.values if v.replace(" ", "").upper().startswith("V=DMARC1")]

    async def _check_dmarc(self, domain: dict[str, Any], record: Record) -> dict[str, Any]:
        name = domain["name"]
        answer, found = await self._dmarc_at(name)
        inherited = ""
        if answer.absent:
            # Receivers fall back to the organisational domain's policy (RFC 7489 6.6.3). Without the
            # public suffix list we try each parent above the top-level label.
            labels = name.split(".")
            for i in range(1, len(labels) - 1):
                parent = ".".join(labels[i:])
                answer, found = await self._dmarc_at(parent)
                if not answer.absent:
                    inherited = parent
                    break
        if (bad := _absent_or_error(record, answer)) is not None:
            return bad
        if not found:
            return _result(record, "missing", found=list(answer.values), detail="no v=DMARC1 record")
        if len(found) > 1:
            return _result(record, "mismatch", found=found, detail="several DMARC records: receivers ignore them all")
        policy = tags(found[0])
        p = policy.get("p", "").lower()
        if p not in ("none", "quarantine", "reject"):
            return _result(record, "mismatch", found=found[0], detail="unparseable: p= must be none, quarantine or reject")
        detail = f"policy p={p}" + (f", pct={policy['pct']}" if "pct" in policy else "") + (f" (inherited from {inherited})" if inherited else "")
        return _result(record, "verified", found=found[0], detail=detail, policy=p, rua=policy.get("rua"))

    async def _mx(self, record: Record) -> dict[str, Any]:
        answer = await self.lookup.mx(record.name)
        if (bad := _absent_or_error(record, answer)) is not None:
            return bad
        hosts = [h for _, h in answer.values]
        if self.settings.mx_hostname in hosts:
            return _result(record, "verified")
        found = [f"{p} {h or '.'}" for p, h in answer.values]
        return _result(record, "mismatch", found=found, detail="null MX" if hosts == [""] else "MX does not name the gateway")

    async def _check_mx(self, domain: dict[str, Any], record: Record) -> dict[str, Any]:
        return await self._mx(record)

    async def _check_return_path_mx(self, domain: dict[str, Any], record: Record) -> dict[str, Any]:
        return await self._mx(record)

    async def _check_bimi(self, domain: dict[str, Any], record: Record) -> dict[str, Any]:
        answer = await self.lookup.txt(record.name)
        if (bad := _absent_or_error(record, answer)) is not None:
            return bad
        found = [v for v in answer.values if v.startswith("v=BIMI1")]
        return _result(record, "verified" if found else "missing", found=found[0] if found else list(answer.values))
