#!/usr/bin/env python3
"""DKIM signing throughput on one core: RSA-2048 alone, and RSA-2048 + Ed25519, over a 4 KB message.

    .venv/bin/python scripts/bench_dkim.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: E402

from gateway.delivery.dkim import Signer, SigningKey  # noqa: E402


def message(size: int = 4096) -> bytes:
    head = (b"From: Shop <news@example.com>\r\nTo: someone@example.org\r\nSubject: Your order has shipped\r\n"
            b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <abc.123@example.com>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n")
    line = b"The quick brown fox jumps over the lazy dog, again and  again.\r\n"
    return head + line * ((size - len(head)) // len(line))


def run(signer: Signer, msg: bytes, keys: list[SigningKey], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            signer.sign(msg, keys)
        n += 50
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    with tempfile.TemporaryDirectory() as tmp:
        keys = {}
        for alg, key in (("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                         ("ed25519", ed25519.Ed25519PrivateKey.generate())):
            path = Path(tmp) / f"{alg}.pem"
            path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
            keys[alg] = SigningKey("example.com", alg, alg, path.read_text())
        signer, msg = Signer(), message()
        rsa_rate = run(signer, msg, [keys["rsa"]], args.seconds)
        both_rate = run(signer, msg, [keys["rsa"], keys["ed25519"]], args.seconds)
        ed_rate = run(signer, msg, [keys["ed25519"]], args.seconds)
    print(f"message size           {len(msg)} bytes, one core")
    print(f"RSA-2048               {rsa_rate:8.0f} signatures/s  ({1e6 / rsa_rate:.0f} us each; target >= 2000/s)")
    print(f"Ed25519                {ed_rate:8.0f} signatures/s  ({1e6 / ed_rate:.0f} us each)")
    print(f"RSA-2048 + Ed25519     {both_rate:8.0f} messages/s")


if __name__ == "__main__":
    main()
