"""DKIM keys: generation with `cryptography`, the public half for the p= tag, and old key files.

RSA keys are 2048 bits (RFC 8301 asks at least 1024, 2048 is what every large receiver accepts in a
single TXT record). Ed25519 keys (RFC 8463) are for dual signing next to RSA: receivers that do not
know ed25519-sha256 ignore that signature. Private keys are PKCS#8 PEM, kept in the store beside
the other secrets (``dkim_keys.private_pem``); keys made before migration 0033 were files under
``<state>/keys`` (imported by gateway/domains/keyimport.py, removed here with their key).
"""

from __future__ import annotations

import base64
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ..errors import InvalidArgument
from ..validate import shown

RSA_BITS = 2048
SELECTOR = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
ALGORITHMS = {"rsa": ("rsa",), "ed25519": ("ed25519",), "both": ("rsa", "ed25519")}


@dataclass(frozen=True)
class NewKey:
    selector: str
    algorithm: str
    private_pem: bytes
    public_key: str  # base64 for p=


def check_selector(selector: str) -> str:
    selector = selector.strip().lower()
    if not SELECTOR.match(selector):
        raise InvalidArgument(f"invalid DKIM selector {shown(selector)}: use 1-63 letters, digits or '-' (one DNS label)")
    return selector


def algorithms(choice: str) -> tuple[str, ...]:
    try:
        return ALGORITHMS[choice]
    except KeyError:
        raise InvalidArgument(f"invalid DKIM choice {shown(choice)}: expected rsa, ed25519 or both") from None


def selector_for(base: str, algorithm: str, dual: bool) -> str:
    """With dual signing each key needs its own selector: one DNS name holds one key record."""
    return f"{base}-ed" if dual and algorithm == "ed25519" else base


def next_selector(taken: set[str], now: float | None = None) -> str:
    """gw<YYYYMM>, then gw<YYYYMM>b, c... so a rotation in the same month still gets a new name."""
    base = time.strftime("gw%Y%m", time.gmtime(now))
    for suffix in [""] + [chr(c) for c in range(ord("b"), ord("z") + 1)]:
        candidate = base + suffix
        if candidate not in taken and f"{candidate}-ed" not in taken:
            return candidate
    return f"{base}-{os.urandom(3).hex()}"


def generate(selector: str, algorithm: str) -> NewKey:
    """A new key pair (RSA generation takes ~0.1 s: call it off the event loop)."""
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    elif algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        # RFC 8463: p= is the raw 32-byte public key, not an ASN.1 structure.
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raise InvalidArgument(f"unknown DKIM algorithm {algorithm!r}")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return NewKey(selector, algorithm, pem, base64.b64encode(public).decode("ascii"))


def remove_key(path: Path) -> None:
    """Remove the file a key from before migration 0033 named (and its domain's directory once empty)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    try:
        path.parent.rmdir()  # only when it was the domain's last key
    except OSError:
        pass
