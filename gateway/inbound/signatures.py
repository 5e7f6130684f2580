"""DKIM signatures (RFC 6376) and the ARC chain (RFC 8617) of a received message, verified.

dkimpy does the DKIM-specific work: tag lists, field validation, canonicalization, which header
fields a signature covers (``hash_headers``). The public-key step is OpenSSL's (``cryptography``):
dkimpy's own RSA is pure Python. One RSA-2048 signature over a 4.6 KB message, one core: dkimpy's
``verify`` 836 us CPU, this 541 us (``scripts/bench_authres.py --dkim-only``); and Ed25519 needs
no pynacl. tests/test_inbound_authres.py checks that this gives dkimpy's ``verify`` verdict on the
same messages. ARC is dkimpy's ``arc_verify`` as it is: rare, reported only, bounded to a few sets.

Keys are fetched before verification (async, through DnsCache) and handed to the synchronous code
as a dict; no DNS happens here. Results per RFC 8601 2.7.1: pass, fail (signature or body hash
does not verify, or the signature expired), neutral (the signature cannot be read), permerror
(no key, revoked, unusable or too small), temperror (the key lookup failed).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import logging
import re

import dkim
import dkim.util
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError

from ..errors import RecordError
from .dnscache import DnsCache

MAX_SIGNATURES = 5      # DKIM-Signature fields evaluated; more are reported as "policy" (RFC 8601 2.7.1)
MAX_ARC_SETS = 5        # ARC sets verified; a longer chain is reported arc=fail (RFC 8617 5.1.1 allows 50)
MIN_RSA_BITS = 1024     # RFC 8301 3.2
ALGORITHMS = {b"rsa-sha256": hashlib.sha256, b"ed25519-sha256": hashlib.sha256}  # rsa-sha1: RFC 8301 3.1

log = logging.getLogger(__name__)


def tags(value: bytes) -> dict[bytes, bytes]:
    """A signature's tag=value list; {} when it cannot be read."""
    try:
        return dkim.util.parse_tag_value(value)
    except Exception:  # noqa: BLE001 - hostile input into a third-party parser; unreadable is "neutral"
        return {}


def domain_selector(sig: dict[bytes, bytes]) -> tuple[str, str]:
    return (sig.get(b"d", b"").decode("ascii", "replace").lower(), sig.get(b"s", b"").decode("ascii", "replace"))


def key_name(sig: dict[bytes, bytes]) -> str | None:
    d, s = sig.get(b"d", b""), sig.get(b"s", b"")
    if not d or not s or not re.fullmatch(rb"[A-Za-z0-9._-]+", d + s):
        return None
    return f"{s.decode()}._domainkey.{d.decode()}".lower()


async def fetch_keys(dns: DnsCache, names: set[str]) -> dict[str, bytes | str | None]:
    """name -> the key record (bytes), None (no key published), or the DNS error (str)."""
    ordered = sorted(names)
    answers = await asyncio.gather(*(dns.txt(n) for n in ordered))
    keys: dict[str, bytes | str | None] = {}
    for name, answer in zip(ordered, answers):
        if answer.status == "error":
            keys[name] = answer.detail
        else:
            keys[name] = next((v for v in answer.values if b"p=" in v), answer.values[0] if answer.values else None)
    return keys


def arc_key_names(fields: list[tuple[str, bytes]]) -> set[str] | None:
    """Key names of every ARC-Seal and ARC-Message-Signature; None without ARC headers, an empty
    set when the chain is longer than we verify."""
    arc = [tags(v) for name, v in fields if name in ("arc-seal", "arc-message-signature")]
    if not arc:
        return None
    if len(arc) > 2 * MAX_ARC_SETS:
        return set()
    return {n for n in (key_name(t) for t in arc) if n}


@functools.lru_cache(maxsize=1024)  # the same few senders' keys, message after message
def public_key(record: bytes):
    """The key a DKIM key record publishes; RecordError when it cannot verify anything (revoked,
    malformed, of another service or type, too small)."""
    key = tags(record)
    if not key or key.get(b"v", b"DKIM1") != b"DKIM1":
        raise RecordError("not a DKIM1 key record")
    if not {b"*", b"email"} & {t.strip() for t in key.get(b"s", b"*").split(b":")}:
        raise RecordError("key is not for email (s=)")
    data = re.sub(rb"\s", b"", key.get(b"p", b""))
    if not data:
        raise RecordError("key revoked (empty p=)")
    kind = key.get(b"k", b"rsa")
    try:
        raw = base64.b64decode(data, validate=True)
        if kind == b"ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(raw)
        if kind == b"rsa":
            loaded = serialization.load_der_public_key(raw)
            if not isinstance(loaded, rsa.RSAPublicKey):
                raise RecordError("k=rsa but not an RSA key")
            if loaded.key_size < MIN_RSA_BITS:
                raise RecordError(f"RSA key of {loaded.key_size} bits (RFC 8301: at least {MIN_RSA_BITS})")
            return loaded
    except (ValueError, TypeError) as exc:
        raise RecordError(f"key cannot be parsed: {exc}") from None
    raise RecordError(f"unknown key type k={kind.decode('ascii', 'replace')}")


def invalid(sig: dict[bytes, bytes]) -> str:
    """Why the signature's fields are not a valid DKIM-Signature ('' when they are)."""
    if not sig:
        return "not a tag=value list"
    try:
        dkim.validate_signature_fields(sig)
    except Exception as exc:  # noqa: BLE001 - ValidationError, or worse on hostile input
        return str(exc) or type(exc).__name__
    return ""


def _expired(problem: str) -> bool:
    return "x= value is past" in problem or "expired" in problem


class Message:
    """One message's header fields and body as dkimpy reads them, parsed once for every signature."""

    def __init__(self, raw: bytes):
        self.headers, self.body = dkim.rfc822_parse(raw)
        self.bodies: dict[tuple[bytes, bytes, bytes], bytes] = {}  # (c=, a=, l=) -> body hash

    def signature_fields(self) -> list[tuple[bytes, bytes]]:
        return [(n, v) for n, v in self.headers if n.lower() == b"dkim-signature"]

    def body_hash(self, policy: CanonicalizationPolicy, c: bytes, algorithm: bytes, length: bytes | None) -> bytes:
        key = (c, algorithm, length or b"")
        if key not in self.bodies:
            body = policy.canonicalize_body(self.body)
            if length is not None:
                body = body[: int(length)]
            self.bodies[key] = ALGORITHMS[algorithm](body).digest()
        return self.bodies[key]

    def verify(self, index: int, sig: dict[bytes, bytes], record: bytes) -> str:
        """The result of the index-th DKIM-Signature field, whose tags are ``sig``."""
        problem = invalid(sig)
        if problem:
            return "fail" if _expired(problem) else "neutral"
        algorithm = sig[b"a"]
        if algorithm not in ALGORITHMS:
            return "fail"  # rsa-sha1 (RFC 8301 3.1: not valid)
        try:
            policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError:
            return "neutral"
        try:
            key = public_key(record)
        except RecordError as exc:
            log.debug("dkim key for d=%s unusable: %s", sig.get(b"d"), exc)
            return "permerror"
        if isinstance(key, ed25519.Ed25519PublicKey) != (algorithm == b"ed25519-sha256"):
            return "permerror"  # the key's type is not the signature's
        try:
            expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
            signature = base64.b64decode(re.sub(rb"\s+", b"", sig[b"b"]))
        except ValueError:
            return "neutral"
        if self.body_hash(policy, sig.get(b"c", b"simple/simple"), algorithm, sig.get(b"l")) != expected:
            return "fail"
        include = [h.lower() for h in re.split(rb"\s*:\s*", sig[b"h"].strip()) if h]
        if b"from" not in include:
            return "neutral"  # RFC 6376 5.4: From must be signed
        include.append(b"from")  # a second From added after signing breaks the signature (as dkimpy does)
        hasher = dkim.HashThrough(ALGORITHMS[algorithm]())
        dkim.hash_headers(hasher, policy, policy.canonicalize_headers(self.headers), include,
                          self.signature_fields()[index], sig)
        digest = hasher.digest()
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, digest)
            else:
                key.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        except InvalidSignature:
            return "fail"
        return "pass"


def verify(raw: bytes, signatures: list[dict[bytes, bytes]], keys: dict[str, bytes | str | None],
           arc_keys: dict[str, bytes | str | None] | None) -> tuple[list[tuple[str, str, str]], str]:
    """((result, d, s) for each of the first MAX_SIGNATURES signatures, arc result)."""
    results: list[tuple[str, str, str]] = []
    message = None
    for index, sig in enumerate(signatures[:MAX_SIGNATURES]):
        d, s = domain_selector(sig)
        name = key_name(sig)
        key = keys.get(name) if name else None
        problem = invalid(sig)
        if not sig or name is None or problem:
            results.append(("fail" if _expired(problem) else "neutral", d, s))
        elif isinstance(key, str):
            results.append(("temperror", d, s))
        elif key is None:
            results.append(("permerror", d, s))
        else:
            try:
                message = message or Message(raw)
                results.append((message.verify(index, sig, key), d, s))
            except Exception as exc:  # noqa: BLE001 - dkimpy on hostile input: what cannot be verified is neutral
                log.debug("dkim signature %d unverifiable: %s", index, exc)
                results.append(("neutral", d, s))
    return results, _arc(raw, arc_keys)


def _arc(raw: bytes, arc_keys: dict[str, bytes | str | None] | None) -> str:
    if arc_keys is None:
        return "none"
    if not arc_keys:
        return "fail"

    def lookup(name, timeout=5):
        key = arc_keys.get((name.decode() if isinstance(name, bytes) else name).rstrip(".").lower())
        return key if isinstance(key, bytes) else None

    try:
        cv, _, _ = dkim.arc_verify(raw, dnsfunc=lookup)
    except Exception as exc:  # noqa: BLE001 - as above
        log.debug("arc chain unverifiable: %s", exc)
        return "fail"
    return {dkim.CV_Pass: "pass", dkim.CV_None: "none"}.get(cv, "fail")
