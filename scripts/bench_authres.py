#!/usr/bin/env python3
"""Inbound authentication throughput with a warm DNS cache, on one core: a 4 KB message with one
RSA-2048 DKIM signature, SPF (one include, then ip4), DMARC p=reject, answered by the tests' DNS
server on loopback (asked once, then from the cache).

    .venv/bin/python scripts/bench_authres.py [--seconds 5] [--concurrency 20]
    .venv/bin/python scripts/bench_authres.py --spf-only        # SPF check_host alone
    .venv/bin/python scripts/bench_authres.py --dkim-only       # DKIM verification alone: ours and dkimpy's
    .venv/bin/python scripts/bench_authres.py --pyspf           # pyspf 2.x in a thread, for comparison
                                                                # (pip install pyspf; not a dependency)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim  # noqa: E402
import dns.asyncresolver  # noqa: E402
import dns.resolver  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from gateway.inbound import signatures, spf  # noqa: E402
from gateway.inbound.authres import authenticate, header_fields  # noqa: E402
from gateway.inbound.dnscache import DnsCache  # noqa: E402
from tests.support.dns import DnsServer  # noqa: E402

CLIENT = "192.0.2.25"


def message(pem: bytes, size: int = 4096) -> bytes:
    head = (b"From: Shop <news@shop.test>\r\nTo: support@help.gateway.test\r\nSubject: Your order has shipped\r\n"
            b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <abc.123@shop.test>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n")
    line = b"The quick brown fox jumps over the lazy dog, again and  again.\r\n"
    raw = head + line * ((size - len(head)) // len(line))
    return dkim.sign(raw, b"s1", b"shop.test", pem, include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + raw


def publish(server: DnsServer, pem_public: str) -> None:
    server.add("shop.test", "TXT", "v=spf1 include:_spf.esp.test -all")
    server.add("_spf.esp.test", "TXT", "v=spf1 ip4:198.51.100.0/24 mx:esp.test ip4:192.0.2.0/24 -all")
    server.add("esp.test", "MX", "10 mx.esp.test.")
    server.add("mx.esp.test", "A", "203.0.113.5")
    server.add("s1._domainkey.shop.test", "TXT", pem_public)
    server.add("_dmarc.shop.test", "TXT", "v=DMARC1; p=reject; rua=mailto:dmarc@shop.test")


CPU: dict[str, float] = {}  # CPU seconds per job of the last rate(): on a shared machine, steadier than wall time


async def rate(job, seconds: float, concurrency: int) -> float:
    await job()  # warm the cache
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        await asyncio.gather(*(job() for _ in range(concurrency)))
        n += concurrency
    CPU["last"] = (time.process_time() - cpu) / n
    return n / (time.perf_counter() - start)


def pyspf_rate(server: DnsServer, seconds: float, concurrency: int) -> float:
    import spf as pyspf  # noqa: PLC0415 - optional, for the comparison only

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = [server.host], server.port
    dns.resolver.default_resolver = resolver  # pyspf asks the module's default resolver

    def one():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return pyspf.check2(i=CLIENT, s="news@shop.test", h="mail.shop.test")[0]

    async def job():
        assert await asyncio.to_thread(one) == "pass"

    return asyncio.run(rate(job, seconds, concurrency))


def dkim_rates(raw: bytes, record: bytes, seconds: float) -> None:
    sigs = [signatures.tags(v) for name, v in header_fields(raw) if name == "dkim-signature"]
    keys = {signatures.key_name(sigs[0]): record}

    def ours():
        assert signatures.verify(raw, sigs, keys, None)[0][0][0] == "pass"

    def theirs():
        assert dkim.DKIM(raw).verify(dnsfunc=lambda name, timeout=5: record)

    for label, fn in (("ours (dkimpy + OpenSSL)", ours), ("dkimpy verify", theirs)):
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds / 2:
            for _ in range(20):
                fn()
            n += 20
        elapsed = (time.perf_counter() - start) / n
        print(f"{label:<24} {1 / elapsed:8.0f} signatures/s  ({elapsed * 1e6:.0f} us each, "
              f"{(time.process_time() - cpu) / n * 1e6:.0f} us CPU; RSA-2048, {len(raw)} bytes)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--spf-only", action="store_true")
    ap.add_argument("--pyspf", action="store_true")
    ap.add_argument("--dkim-only", action="store_true")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core (the DNS server's thread too)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    record = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    if args.dkim_only:
        dkim_rates(message(pem), record.encode(), args.seconds)
        return
    with DnsServer() as server:
        publish(server, record)
        if args.pyspf:
            print(f"pyspf in a thread      {pyspf_rate(server, args.seconds, args.concurrency):8.0f} SPF checks/s "
                  f"(no cache across checks; {len(server.queries)} DNS questions; "
                  f"{CPU['last'] * 1e6:.0f} us CPU each in this process, the DNS server's included)")
            return
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers, resolver.port = [server.host], server.port
        cache = DnsCache(resolver)
        raw = message(pem)

        async def spf_job():
            result = await spf.check(cache, client_ip=CLIENT, mail_from="news@shop.test", helo="mail.shop.test")
            assert result.result == "pass", result

        async def full_job():
            verdict = await authenticate(raw, client_ip=CLIENT, helo="mail.shop.test", mail_from="news@shop.test",
                                         resolver=cache, authserv_id="mx.gateway.test")
            assert (verdict.spf, verdict.dkim[0][0], verdict.dmarc) == ("pass", "pass", "pass"), verdict

        if args.spf_only:
            print(f"SPF check_host         {asyncio.run(rate(spf_job, args.seconds, args.concurrency)):8.0f} checks/s "
                  f"(warm cache, {len(server.queries)} DNS questions in all; {CPU['last'] * 1e6:.0f} us CPU each)")
            return
        full = asyncio.run(rate(full_job, args.seconds, args.concurrency))
        print(f"message size           {len(raw)} bytes, one RSA-2048 DKIM signature, one core, warm cache")
        print(f"SPF + DKIM + DMARC     {full:8.0f} messages/s  ({1e6 / full:.0f} us each, {CPU['last'] * 1e6:.0f} us CPU; "
              f"{len(server.queries)} DNS questions in all, {cache.hits} cache hits)")


if __name__ == "__main__":
    main()
