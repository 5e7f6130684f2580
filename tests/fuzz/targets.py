"""The listeners the network fuzzer drives, each described by ``Endpoint``s.

The grammar only needs what an endpoint says: how TLS starts, whether AUTH is wanted (and with which
credentials), which envelope sender and recipients the listener accepts. The submission listener
gives two (STARTTLS port, implicit-TLS port); the MX listener of the inbound issue plugs in as one
more target yielding an endpoint with ``tls="starttls"``, ``credentials=None`` and recipients at a
hosted domain; nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.submission import PASSWORD, submission_listener

# Small limits so that the fuzzer reaches them cheaply; the failure cool-down out of the way (every
# dialog comes from 127.0.0.1, and most of them fail AUTH on purpose).
SUBMISSION_LIMITS = {
    "max_message_size": 256 * 1024,
    "max_header_bytes": 16 * 1024,
    "max_recipients": 5,
    "max_received_headers": 10,
    "auth_failures_limit": 1_000_000_000,
    "auth_cooldown": 0.0,
    "command_timeout": 30.0,  # over the reply timeout: a case expecting a close must not pass by the idle timeout
    "session_timeout": 60.0,
    "max_connections_per_client": 1000,
}


@dataclass(frozen=True)
class Endpoint:
    name: str                                  # listener name, as the daemon's listeners() calls it
    host: str
    port: int
    tls: str                                   # "starttls", "implicit" or "none"
    credentials: tuple[str, str] | None        # AUTH wanted with these, or None (MX)
    sender: str                                # an envelope sender (and From) the listener accepts
    recipients: tuple[str, ...] = ("bob@example.org", "carol@example.net")
    limits: dict = field(default_factory=dict)


@dataclass
class Running:
    """A started target: its endpoints, and how many client sessions it still has open."""

    endpoints: list[Endpoint]
    sessions: Callable[[], int]

    async def idle(self, timeout: float = 5.0) -> None:
        """Until the listener has closed every session (so whatever a dialog made it log is logged)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.sessions() and loop.time() < end:
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def submission_target(tmp_path: Path) -> AsyncIterator[Running]:
    """The real submission listener (as the daemon builds it) over a real store, TLS and queue."""
    async with submission_listener(tmp_path, submission=SUBMISSION_LIMITS) as sub:
        common = dict(host="127.0.0.1", credentials=("app", PASSWORD), sender="app@example.com", limits=SUBMISSION_LIMITS)
        yield Running([Endpoint(name="submission", port=sub.port("submission"), tls="starttls", **common),
                       Endpoint(name="submissions", port=sub.port("submissions"), tls="implicit", **common)],
                      sessions=lambda: len(sub.server.sessions))


@contextlib.asynccontextmanager
async def daemon_target(tmp_path: Path) -> AsyncIterator[Running]:
    """The whole daemon in this process: admin-made tenant, DNS-verified domain, use case and credential
    (argon2: about 0.1 s an AUTH, so a tenth of the listener target's rate), delivery and DSNs running
    on what the fuzzer gets queued (the recipients' domains have no MX in the test DNS server)."""
    from gateway.submission.server import SubmissionServer
    from tests.support.daemon import merge, running_daemon
    from tests.support.dns import DnsServer
    from tests.support.tenancy import dns_overrides, sending_setup

    with DnsServer() as dns:
        async with running_daemon(tmp_path, merge(dns_overrides(dns), {"submission": SUBMISSION_LIMITS})) as d:
            setup = await sending_setup(d, dns, domain="acme.test", sender="app@acme.test")
            server = next(c for c in d.daemon.components if isinstance(c, SubmissionServer))
            common = dict(credentials=(setup["username"], setup["password"]), sender=setup["sender"], limits=SUBMISSION_LIMITS)
            yield Running([Endpoint(name=name, host=d.hostport(name)[0], port=d.hostport(name)[1], tls=tls, **common)
                           for name, tls in (("submission", "starttls"), ("submissions", "implicit"))],
                          sessions=lambda: len(server.sessions))


MX_LIMITS = {k: v for k, v in SUBMISSION_LIMITS.items() if not k.startswith("auth_")}


@contextlib.asynccontextmanager
async def mx_target(tmp_path: Path) -> AsyncIterator[Running]:
    """The real MX listener over a real store: a tenant domain with a channel address and a catch-all."""
    from gateway.store import Store
    from tests.support.inbound import channel_address, mx_listener, receiving_domain

    store = await Store.open(tmp_path / "gateway.db")
    try:
        tenant = (await store.tenants.add("acme"))["id"]
        await channel_address(store, await receiving_domain(store, tenant, "acme.test"), "help@acme.test")
        await receiving_domain(store, tenant, "shop.test", catchall=True)
        async with mx_listener(tmp_path, store=store, inbound=MX_LIMITS) as mx:
            yield Running([Endpoint(name="inbound", host="127.0.0.1", port=mx.port, tls="starttls", credentials=None,
                                    sender="customer@example.org", recipients=("help@acme.test", "anyone@shop.test"),
                                    limits=MX_LIMITS)],
                          sessions=lambda: len(mx.server.sessions))
    finally:
        await store.close()


TARGETS = {"submission": submission_target, "daemon": daemon_target, "mx": mx_target}
