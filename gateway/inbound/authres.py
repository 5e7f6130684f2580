"""Message authentication of received mail: SPF, DKIM, DMARC, ARC, and the Authentication-Results
header (RFC 8601) that records them.

What flows in: the message as received (bytes), the client's address, HELO name and MAIL FROM,
a DnsCache (gateway/inbound/dnscache.py) and our authserv-id (the MX hostname). What flows out: a
``Verdict``: each method's result, the DMARC policy that applies, the Authentication-Results value,
and ``reject_by_dmarc`` (DMARC fail under p=reject; whether to refuse is the caller's decision,
with the tenant's ``dmarc_reject`` switch).

    authenticate -> spf.check (MAIL FROM or HELO)          \\
                 -> DKIM keys (each signature, at most 5)  -> signatures.verify -> dmarc.judge (each From domain)
                 -> ARC keys (at most 5 sets)              -> dkimpy verifies the chain (reported only)
                 -> dmarc.discover (each From domain, at most 5) /

What it promises: it never raises for what DNS or the message does; a DNS failure or timeout is
``temperror`` (and a DMARC temperror is never a reject); the whole evaluation ends within
``timeout`` seconds. ``with_header`` adds our Authentication-Results on the stored copy, removes
any that claim our authserv-id (forged, RFC 8601 5) and leaves everything else, ARC sets
included, byte for byte.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
from dataclasses import dataclass, field

import dns.asyncresolver
import idna

from . import dmarc as dmarc_policy
from . import signatures as signatures_
from . import spf as spf_check
from .dnscache import DnsCache
from .signatures import MAX_SIGNATURES, domain_selector, invalid, key_name, tags

MAX_FROM_DOMAINS = 5    # From domains DMARC is applied to (RFC 7489 6.6.1: the strictest wins)
THREAD_ABOVE = 256 * 1024  # messages larger than this are hashed in a worker thread, off the loop
SAFE_VALUE = re.compile(r"""^([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+|"([^"\\]|\\.)*")?(@[A-Za-z0-9.-]+)?$""")
RESULT_ORDER = {"fail": 0, "temperror": 1, "permerror": 2, "pass": 3, "none": 4}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    spf: str                                   # pass fail softfail neutral none temperror permerror
    spf_domain: str                            # MAIL FROM's domain, or HELO's for a null sender
    dkim: list[tuple[str, str, str]]           # (result, d=, s=) per signature, top first
    dmarc: str                                 # pass fail none temperror permerror
    dmarc_policy: str                          # reject quarantine none; '' without a DMARC record
    header: str                                # the Authentication-Results value (RFC 8601), unfolded
    from_domain: str = ""
    arc: str = "none"                          # pass fail none (RFC 8617), reported, not acted on
    reasons: dict[str, str] = field(default_factory=dict, compare=False)  # method -> why, for the log

    @property
    def reject_by_dmarc(self) -> bool:
        return self.dmarc == "fail" and self.dmarc_policy == "reject"

    def summary(self) -> dict[str, str]:
        """The ``auth`` entry of a processed message's summary."""
        return {"spf": self.spf, "dkim": dkim_overall(self.dkim), "dmarc": self.dmarc, "header": self.header}


def dkim_overall(results: list[tuple[str, str, str]]) -> str:
    if not results:
        return "none"
    if any(r == "pass" for r, _, _ in results):
        return "pass"
    return results[0][0]


def summarise(header: str) -> dict[str, str]:
    """The summary ``auth`` entry from a stored Authentication-Results value (the MX evaluated at
    DATA and kept only the value): the first result of each method, DKIM's best."""
    results: dict[str, list[str]] = {}
    for clause in _unquoted_split(header)[1:]:
        m = re.match(r"\s*([a-z0-9-]+)\s*=\s*([a-z]+)", clause, re.I)
        if m:
            results.setdefault(m.group(1).lower(), []).append(m.group(2).lower())
    dkims = results.get("dkim", [])
    return {"spf": (results.get("spf") or ["none"])[0], "dkim": "pass" if "pass" in dkims else (dkims or ["none"])[0],
            "dmarc": (results.get("dmarc") or ["none"])[0], "header": header}


def make_dns(resolver: dns.asyncresolver.Resolver | DnsCache) -> DnsCache:
    return resolver if isinstance(resolver, DnsCache) else DnsCache(resolver)


async def authenticate(message: bytes, *, client_ip: str, helo: str, mail_from: str, resolver,
                       authserv_id: str, timeout: float | None = None) -> Verdict:
    """See the module docstring. ``resolver`` is a DnsCache (give one to every call: it is the
    cache) or a bare dnspython async resolver (then nothing is cached between calls). ``timeout``
    defaults to three DNS timeouts."""
    dns = make_dns(resolver)
    budget = timeout if timeout is not None else 3 * dns.timeout
    fields = header_fields(message)
    from_domains = _from_domains(fields)
    signatures = [tags(value) for name, value in fields if name == "dkim-signature"]
    arc_names = signatures_.arc_key_names(fields)
    try:
        async with asyncio.timeout(budget):
            # Every lookup at once: SPF's walk, the DKIM and ARC keys, the From domains' policies.
            spf, keys, arc, *policies = await asyncio.gather(
                spf_check.check(dns, client_ip=client_ip, mail_from=mail_from, helo=helo),
                signatures_.fetch_keys(dns, {key_name(sig) for sig in signatures[:MAX_SIGNATURES]
                                             if key_name(sig) and not invalid(sig)}),
                _arc_keys(dns, arc_names),
                *(dmarc_policy.discover(dns, d) for d in from_domains[:MAX_FROM_DOMAINS]),
            )
            dkim_results, arc_result = await _verify(message, signatures, keys, arc)
            dmarcs = [dmarc_policy.judge(p, d, spf=spf.result, spf_domain=spf.domain, dkim=dkim_results)
                      for p, d in zip(policies, from_domains)]
    except TimeoutError:
        reason = f"authentication took longer than {budget:g}s"
        sender = spf_check.identity(mail_from, helo)
        spf = spf_check.SpfResult("temperror", sender[1], sender[2], reason)
        dkim_results = [("temperror", *domain_selector(sig)) for sig in signatures[:MAX_SIGNATURES]]
        arc_result = "none"
        dmarcs = [dmarc_policy.DmarcResult("temperror", "", d, reason) for d in from_domains[:MAX_FROM_DOMAINS]]
    dmarc = min(dmarcs, key=lambda r: (RESULT_ORDER.get(r.result, 5), -dmarc_policy.POLICIES.index(r.policy or "none"))) \
        if dmarcs else dmarc_policy.DmarcResult("none", "", "", "no From domain")
    dkim_results += [("policy", *domain_selector(sig)) for sig in signatures[MAX_SIGNATURES:]]
    value = _header(authserv_id, spf, mail_from, helo, dkim_results, signatures, dmarc, arc_result)
    return Verdict(spf.result, spf.domain, dkim_results, dmarc.result, dmarc.policy, value, dmarc.from_domain,
                   arc_result, {"spf": spf.reason, "dmarc": dmarc.reason})


# ---------------------------------------------------------------------------- DKIM and ARC


async def _verify(message: bytes, signatures, keys, arc_keys):
    if not signatures and arc_keys is None:
        return [], "none"
    if len(message) > THREAD_ABOVE:
        return await asyncio.to_thread(signatures_.verify, message, signatures, keys, arc_keys)
    return signatures_.verify(message, signatures, keys, arc_keys)


# ---------------------------------------------------------------------------- headers


def _split(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(header section with its last line ending, the empty line, body), CRLF or LF."""
    if raw.startswith((b"\r\n", b"\n")):
        sep = b"\r\n" if raw.startswith(b"\r\n") else b"\n"
        return b"", sep, raw[len(sep):]
    m = re.search(rb"\r?\n(\r?\n)", raw)
    if not m:
        return raw, b"", b""
    return raw[: m.start(1)], m.group(1), raw[m.end():]


def _raw_fields(head: bytes) -> list[bytes]:
    """Each header field of the section, with its continuation lines and line ending."""
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def header_fields(message: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, unfolded value) of each header field, top first."""
    out = []
    for raw in _raw_fields(_split(message)[0]):
        name, sep, value = raw.partition(b":")
        if sep:
            out.append((name.strip().decode("ascii", "replace").lower(), re.sub(rb"\r?\n", b"", value).strip()))
    return out


def _from_domains(fields: list[tuple[str, bytes]]) -> list[str]:
    values = [v.decode("utf-8", "replace") for name, v in fields if name == "from"]
    domains: list[str] = []
    for _, address in email.utils.getaddresses(values):
        domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        if "@" in address and domain:
            if not domain.isascii():  # U-labels to A-labels; idna is slow, so only when needed
                try:
                    domain = idna.encode(domain, uts46=True).decode()
                except idna.IDNAError:
                    pass
            if domain not in domains:
                domains.append(domain)
    return domains


def _unquoted_split(value: str) -> list[str]:
    """The value split at semicolons outside quoted strings and comments."""
    parts, current, depth, quoted, escaped = [], [], 0, False, False
    for c in value:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif quoted:
            quoted = c != '"'
        elif c == '"':
            quoted = True
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif c == ";" and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(c)
    parts.append("".join(current))
    return parts


def authserv_id_of(value: str) -> str:
    """The authserv-id an Authentication-Results value claims (comments removed, unquoted)."""
    first = re.sub(r"\([^()]*\)", " ", _unquoted_split(value)[0]).strip()
    first = first.split()[0] if first.split() else ""
    return first.strip('"').lower()


def _pvalue(value: str) -> str:
    value = re.sub(r"[\x00-\x1f\x7f]", "", value)
    if SAFE_VALUE.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    return "(" + re.sub(r"[\x00-\x1f\x7f()\\]", "", text)[:200] + ")"


async def _arc_keys(dns: DnsCache, names: set[str] | None):
    """The ARC keys: None without ARC headers, {} for a chain too long to verify."""
    if names is None:
        return None
    return await signatures_.fetch_keys(dns, names) if names else {}


def _header(authserv_id, spf, mail_from, helo, dkim_results, signatures, dmarc, arc) -> str:
    parts = [_pvalue(authserv_id)]
    sender = mail_from.strip().strip("<>")
    prop = f"smtp.mailfrom={_pvalue(sender)}" if spf.identity == "mailfrom" else f"smtp.helo={_pvalue(helo.strip())}"
    parts.append(f"spf={spf.result} {prop}")
    for (result, d, s), sig in zip(dkim_results, signatures):
        b = re.sub(rb"\s", b"", sig.get(b"b", b""))[:8].decode("ascii", "replace")
        clause = f"dkim={result}"
        clause += f" header.d={_pvalue(d)}" if d else ""
        clause += f" header.s={_pvalue(s)}" if s else ""
        clause += f" header.b={_pvalue(b)}" if b else ""
        parts.append(clause)
    if not dkim_results:
        parts.append("dkim=none")
    comment = f" {_comment(f'p={dmarc.policy}')}" if dmarc.policy else ""
    parts.append(f"dmarc={dmarc.result}{comment}" + (f" header.from={_pvalue(dmarc.from_domain)}" if dmarc.from_domain else ""))
    if arc != "none":
        parts.append(f"arc={arc}")
    return "; ".join(parts)


def with_header(raw: bytes, verdict: Verdict | str) -> bytes:
    """The message with our Authentication-Results field on top, and every incoming one that claims
    our authserv-id removed (RFC 8601 5); all other fields, ARC sets included, unchanged."""
    value = verdict.header if isinstance(verdict, Verdict) else verdict
    ours = authserv_id_of(value)
    head, sep, body = _split(raw)
    newline = b"\r\n" if (head or sep or b"\r\n").endswith(b"\r\n") else b"\n"
    kept = []
    for f in _raw_fields(head):
        name, colon, rest = f.partition(b":")
        if colon and name.strip().lower() == b"authentication-results":
            if authserv_id_of(re.sub(rb"\r?\n", b"", rest).decode("utf-8", "replace")) == ours:
                continue
        kept.append(f)
    folded = (";" + newline.decode() + "\t").join(p.strip() for p in _unquoted_split(value))
    field_ = ("Authentication-Results: " + folded).encode("utf-8", "replace") + newline
    return field_ + b"".join(kept) + sep + body
