"""DKIM signing (RFC 6376, relaxed/relaxed), RSA-SHA256 and Ed25519-SHA256 (RFC 8463).

Canonicalisation and header selection are done here; the private-key operation goes through
``cryptography`` (OpenSSL), which is about twenty times faster than dkimpy's pure-Python RSA and
constant-time. dkimpy is only used by the tests, as the verifier.

What is signed: the usual headers that carry meaning to a reader or to a list manager. From, To,
Subject, Date, Message-ID, List-Unsubscribe and List-Unsubscribe-Post are oversigned (listed once
more than they occur), so nobody can add a second one after signing without breaking the signature.

Private keys come from the store (``dkim_keys.private_pem``, through the route: gateway/delivery/routes.py)
and are parsed once per PEM text: the cache is keyed by the PEM itself, so a rotated key, whose row
has another PEM, can never be signed with the old one, and no file is looked at per signature. A
rotation or retirement is seen when the route is read again (``ROUTE_TTL``); SIGHUP forgets every
parsed key and every route.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from ..crlf import to_crlf
from ..errors import DeliveryError
from .canonical import relaxed_body, relaxed_header

__all__ = ["OVERSIGNED", "SIGNED_HEADERS", "Signer", "SigningError", "SigningKey", "body_hash", "header_list", "relaxed_body",
           "relaxed_header", "signed_header_data", "split_message"]

SIGNED_HEADERS = (
    "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "in-reply-to", "references",
    "mime-version", "content-type", "content-transfer-encoding", "list-id", "list-unsubscribe",
    "list-unsubscribe-post", "feedback-id",
)
# List-Unsubscribe(-Post) too (RFC 8058 4: both must be signed): nobody may add a second one later.
OVERSIGNED = frozenset({"from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post"})

_SIGNED = frozenset(SIGNED_HEADERS)
_B64_LINE = 72
MAX_KEYS = 4096      # parsed keys kept; past it the ones parsed first are forgotten


class SigningError(DeliveryError):
    """A key cannot be loaded or used; the message is held, not sent unsigned."""


@dataclass(frozen=True)
class SigningKey:
    domain: str        # d=
    selector: str      # s=
    algorithm: str     # 'rsa' or 'ed25519'
    private_pem: str = field(repr=False)   # PKCS#8 PEM from the store; never in a log line or traceback


# --------------------------------------------------------------------------- canonicalisation


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(headers as (name, raw value with folding, without the final CRLF), body) of a CRLF message."""
    if message.startswith(b"\r\n"):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        block, body = message, b""
    else:
        block, body = message[: end + 2], message[end + 4:]
    headers: list[tuple[bytes, bytes]] = []
    for line in block.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b"\r\n" + line)
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue  # not a header line; a verifier would ignore it as well
        headers.append((name, value))
    return headers, body


def body_hash(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode("ascii")


def header_list(headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
    """The h= names: every present instance of a signed header, plus one more for oversigned ones."""
    counts: dict[str, int] = {}
    for name, _ in headers:
        key = _name(name)
        counts[key] = counts.get(key, 0) + 1
    names: list[str] = []
    for name in SIGNED_HEADERS:
        names += [name] * (counts.get(name, 0) + (1 if name in OVERSIGNED else 0))
    return names


def _name(name: bytes) -> str:
    return name.strip(b" \t").lower().decode("ascii", "replace")


def signed_header_data(headers: Sequence[tuple[bytes, bytes]], names: Sequence[str]) -> bytes:
    """The canonical header data for h= (RFC 6376 5.4.2: instances taken from the bottom up)."""
    by_name: dict[str, list[bytes]] = {}
    for name, value in headers:
        key = _name(name)
        if key in _SIGNED:   # only the fields h= can name are canonicalised
            by_name.setdefault(key, []).append(relaxed_header(name, value))
    out = []
    for name in names:
        stack = by_name.get(name)
        if stack:
            out.append(stack.pop() + b"\r\n")
    return b"".join(out)


# --------------------------------------------------------------------------- keys and signing


class Signer:
    """Signs messages; private keys are parsed once per PEM and kept (the module's docstring says
    why that is enough). Used from the signing threads at once: a key parsed twice by a race is
    harmless, the lock only keeps the cache's bookkeeping whole."""

    def __init__(self, *, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max_keys
        self._keys: dict[str, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey] = {}   # PEM -> parsed key
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Drop every parsed key (SIGHUP)."""
        with self._lock:
            self._keys.clear()

    def private_key(self, key: SigningKey) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
        private = self._keys.get(key.private_pem)
        if private is not None:
            return private
        private = self._load(key)
        with self._lock:
            if len(self._keys) >= self.max_keys:
                for old in list(self._keys)[: self.max_keys // 2]:
                    del self._keys[old]
            self._keys[key.private_pem] = private
        return private

    @staticmethod
    def _load(key: SigningKey) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
        try:
            private = serialization.load_pem_private_key(key.private_pem.encode("ascii"), password=None)
        except (ValueError, TypeError, UnicodeError) as exc:
            raise SigningError(f"DKIM key {key.selector} of {key.domain}: cannot load: {exc}") from exc
        if not isinstance(private, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
            raise SigningError(f"DKIM key {key.selector} of {key.domain}: unsupported key type {type(private).__name__}")
        return private

    def sign(self, message: bytes, keys: Sequence[SigningKey], *, now: float | None = None) -> bytes:
        """The message (CRLF line endings) with one DKIM-Signature per key prepended."""
        message = to_crlf(message)
        if not keys:
            return message
        headers, body = split_message(message)
        bh = body_hash(body)
        names = header_list(headers)
        data = signed_header_data(headers, names)
        stamp = int(now if now is not None else time.time())
        out = []
        for key in keys:
            out.append(self._signature(key, data, names, bh, stamp))
        return b"".join(out) + message

    def _signature(self, key: SigningKey, data: bytes, names: Sequence[str], bh: str, stamp: int) -> bytes:
        private = self.private_key(key)
        algorithm = "rsa-sha256" if key.algorithm == "rsa" else "ed25519-sha256"
        if (key.algorithm == "rsa") != isinstance(private, rsa.RSAPrivateKey):
            raise SigningError(f"DKIM key {key.selector} of {key.domain} is not an {key.algorithm} key")
        value = (
            f" v=1; a={algorithm}; c=relaxed/relaxed; d={key.domain}; s={key.selector};\r\n"
            f"\tt={stamp}; h={':'.join(names)};\r\n\tbh={bh};\r\n\tb="
        ).encode("ascii")
        signing_input = data + relaxed_header(b"DKIM-Signature", value)
        if isinstance(private, rsa.RSAPrivateKey):
            sig = private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            sig = private.sign(hashlib.sha256(signing_input).digest())
        b64 = base64.b64encode(sig)
        folded = b"\r\n\t".join(b64[i:i + _B64_LINE] for i in range(0, len(b64), _B64_LINE))
        return b"DKIM-Signature:" + value + folded + b"\r\n"
