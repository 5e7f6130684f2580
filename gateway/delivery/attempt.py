"""One attempt: a prepared work item sent over its route (the MX, an SMTP smarthost or the SendGrid
API) within a time budget, each transaction's replies kept in ``work.results`` the moment they come.

The budget is ``2 x connect_timeout + command_timeout x (4 + 3 x recipients)``: past it the
recipients the remote has not answered yet are deferred; those it accepted stay delivered. Raises
for our own failures (an unsafe address, a bug) and when cancelled; ``work.results`` then still
holds what the remote said before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from .. import verp
from ..config import Config
from .connectors import SendGridCourier, relay_courier
from .courier import DirectCourier, Envelope, MxLimits, ReplySink, SessionOptions, SessionPool
from .loops import LoopGuard
from .mx import MxResolver
from .reply import Reply
from .work import Work


class Attempts:
    def __init__(self, config: Callable[[], Config], pool: SessionPool, resolver: MxResolver,
                 http: Callable[[], aiohttp.ClientSession | None], guard: LoopGuard):
        self.config = config      # read live: a reload applies to the next attempt
        self.pool = pool
        self.resolver = resolver
        self.http = http
        self.guard = guard

    def budget(self, work: Work) -> float:
        cfg = self.config().delivery
        return cfg.connect_timeout * 2 + cfg.command_timeout * (4 + 3 * len(work.rcpts))

    async def run(self, work: Work, on_transaction: Callable[[Work, dict[str, Reply]], None]) -> None:
        """Send ``work``; every recipient ends with a reply in ``work.results`` unless this raises."""

        def report(got: dict[str, Reply]) -> None:
            work.results.update(got)
            on_transaction(work, got)

        budget = self.budget(work)
        rcpts = [r["rcpt"] for r in work.rows_left()]
        try:
            async with asyncio.timeout(budget):
                got = await self._send(work, rcpts, report)
        except TimeoutError:
            reply = Reply.temporary(f"delivery did not finish within {budget:.0f}s", "4.4.2")
            got = {r: reply for r in rcpts}
        fresh = {r: reply for r, reply in got.items() if r not in work.results}
        if fresh:
            report(fresh)

    async def _send(self, work: Work, rcpts: list[str], report: ReplySink) -> dict[str, Reply]:
        cfg, route, msg = self.config(), work.route, work.message
        connector = route.connector
        if route.kind == "sendgrid":
            return await SendGridCourier(connector, self.http(), cfg.delivery).deliver(rcpts, work.data, msg["queue_id"])
        envelopes = self.envelopes(work)
        if route.kind == "smtp":
            host, port = connector.settings["host"], int(connector.settings.get("port", 587))
            refusal = self.guard.refusal(host, port, f"connector {connector.name}")
            if refusal is not None:
                return {r: refusal for r in rcpts}
            return await relay_courier(connector, cfg.delivery, self.helo(), self.pool, self.guard).deliver(envelopes, work.data, report)
        limits = MxLimits(cfg.delivery.mx_address_limit, cfg.delivery.mx_session_limit)
        courier = DirectCourier(self.resolver, self.pool, self.options(), cfg.delivery.remote_port, limits=limits, guard=self.guard)
        return await courier.deliver(work.dest[1], envelopes, work.data, report)

    def envelopes(self, work: Work) -> list[Envelope]:
        msg, route = work.message, work.route
        rows = work.rows_left()
        sender = route.connector.settings.get("sender", "") if route.connector else ""
        if not msg["mail_from"] or sender:
            # Null sender (a DSN) or a relay that wants its own sender: one transaction for all.
            return [Envelope(sender if msg["mail_from"] else "", tuple(r["rcpt"] for r in rows))]
        base = verp.bounce_address(f"{self.config().domains.return_path_prefix}.{route.domain}")
        if work.verp_key is None:
            raise RuntimeError("a work item to a VERP route without its signing key")
        return [Envelope(verp.return_path(base, msg["queue_id"], r["index"], work.verp_key), (r["rcpt"],)) for r in rows]

    def helo(self) -> str:
        cfg = self.config()
        return cfg.delivery.helo_name or cfg.daemon.hostname

    def options(self) -> SessionOptions:
        cfg = self.config().delivery
        return SessionOptions(helo=self.helo(), connect_timeout=cfg.connect_timeout, command_timeout=cfg.command_timeout,
                              tls="opportunistic" if cfg.starttls == "opportunistic" else "off")
