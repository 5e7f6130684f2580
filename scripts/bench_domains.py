"""Domain verification figures against a local authoritative DNS server (tests/support/dns.py).

    .venv/bin/python scripts/bench_domains.py [--domains 1000] [--concurrency 50] [--repeat 20]

Prints: the time of `domain.verify` for one domain over the admin socket (median and worst of
--repeat runs; target < 200 ms), and one re-verification round of --domains verified domains with
at most --concurrency in flight (target < 30 s). Everything runs on 127.0.0.1, in this process:
the daemon in-process (as the integration tests run it) and the DNS server on its own thread.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402

from gateway.services.domains import DomainService  # noqa: E402
from tests.support.daemon import running_daemon  # noqa: E402
from tests.support.dns import DnsServer, dns_overrides  # noqa: E402


async def bench(args: argparse.Namespace) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    with DnsServer() as dns, tempfile.TemporaryDirectory() as tmp:
        overrides = dns_overrides(dns, timeout=2.0)
        overrides["domains"]["reverify_interval"] = 0.0
        overrides["log"] = {"level": "error"}
        async with running_daemon(Path(tmp), overrides) as d:
            svc = next(s for s in d.daemon.services if isinstance(s, DomainService))
            await d.call("tenant.add", name="bench")

            # One domain, RSA-2048 key, through the admin socket as `gateway domain verify` does it.
            await d.call("domain.add", tenant="bench", domain="one.test")
            dns.load_zone((await d.call("domain.records", domain="one.test"))["zone"], origin="one.test")
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                result = await d.call("domain.verify", domain="one.test")
                times.append((time.perf_counter() - started) * 1000)
                assert result["state"] == "verified", result
            print(f"verify one domain (admin socket round trip, {len(result['records'])} records): "
                  f"median {statistics.median(times):.1f} ms, worst {max(times):.1f} ms over {args.repeat} runs "
                  f"(in-daemon {result['duration_ms']:.1f} ms)  target < 200 ms")

            # Many domains (Ed25519 keys: RSA generation would dominate the setup, not the figure).
            started = time.perf_counter()
            gate = asyncio.Semaphore(20)

            async def setup(i: int) -> None:
                async with gate:
                    name = f"d{i}.bench.test"
                    await svc.add("bench", name, dkim="ed25519")
                    dns.load_zone((await svc.records(name))["zone"], origin=name)
                    assert (await svc.verify(name))["state"] == "verified"

            await asyncio.gather(*(setup(i) for i in range(args.domains)))
            print(f"setup of {args.domains} domains (add, records, verify): {time.perf_counter() - started:.1f} s")
            dns.queries.clear()
            started = time.perf_counter()
            summary = await svc.reverify(concurrency=args.concurrency)
            seconds = time.perf_counter() - started
            print(f"re-verify {summary['checked']} domains, concurrency {args.concurrency}: {seconds:.2f} s "
                  f"({len(dns.queries)} DNS queries, {len(dns.queries) / seconds:.0f} q/s; states {summary['states']})  target < 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=20)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
