"""Aggregate bounds of delivery: MX addresses and sessions per attempt, the loop guard, the memory
budget for bodies in flight, the SendGrid MIME mapping; and the hold policy's pure function."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from gateway import holds
from gateway.config import DeliveryConfig
from gateway.delivery.connectors import SENDGRID_MAX_PARTS, ConnectorSpec, PayloadRefused, SendGridCourier, sendgrid_payload
from gateway.delivery import loops
from gateway.delivery.loops import LoopGuard
from tests.support.delivery import delivering_daemon, enqueue, message, publish_mx, wait_events
from tests.support.sink import mail_sink


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- the loop guard


async def test_mx_on_loopback_bounces_as_a_loop_unless_allowed(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, {"delivery": {"allow_loopback": False}}) as (d, setup):
            qid = await enqueue(d, setup, ["bob@dest.test"])
            [bounced] = await wait_events(d, qid, "bounced")
            assert bounced["data"]["enhanced"] == "5.4.6" and bounced["data"]["code"] == 554
            assert "loops back to myself" in bounced["data"]["reply"] and "allow_loopback" in bounced["data"]["reply"]
            assert sink.messages == [] and sink.connections == 0


async def test_mail_to_our_own_listener_bounces_even_with_loopback_allowed(tmp_path, dns_server):
    port = free_port()
    publish_mx(dns_server, "dest.test")
    extra = {"submission": {"listen": f"127.0.0.1:{port}"}}
    async with delivering_daemon(tmp_path, dns_server, port, extra) as (d, setup):
        qid = await enqueue(d, setup, ["bob@dest.test"])
        [bounced] = await wait_events(d, qid, "bounced")
        assert bounced["data"]["enhanced"] == "5.4.6" and "own listener" in bounced["data"]["reply"]


@pytest.mark.parametrize(("host", "port", "allow", "refused"), [
    ("127.0.0.1", 25, False, True), ("127.0.0.9", 25, False, True), ("::1", 25, False, True),
    ("::ffff:127.0.0.1", 25, False, True), ("0.0.0.0", 25, False, True), ("localhost", 587, False, True),
    ("127.0.0.1", 25, True, False), ("192.0.2.7", 25, False, False), ("mx.example.org", 25, False, False),
    ("192.0.2.1", 2587, True, True),     # our own listener's address and port
    ("127.0.0.1", 2465, True, True),     # a wildcard listener covers loopback
    ("192.0.2.1", 25, True, False),      # our address, another port: not us
])
def test_loop_guard(host, port, allow, refused):
    guard = LoopGuard(allow_loopback=allow, own=lambda: ["192.0.2.1:2587", "0.0.0.0:2465", "/run/gateway/admin.sock"])
    reply = guard.refusal(host, port, "dest.test")
    assert (reply is not None) == refused
    if reply is not None:
        assert reply.outcome == "bounced" and reply.enhanced == "5.4.6"


def test_loop_guard_remembered_verdicts_follow_listeners_and_reload():
    """The guard remembers its verdict per address and own()'s answer for OWN_RECHECK seconds once
    it is complete; a listener not bound yet (port 0) is asked about again on every delivery, so
    its bound address counts at once; a reload that turns allow_loopback off counts at once."""
    listening = ["/run/gateway/admin.sock", "127.0.0.1:0"]   # the MX listener, configured on port 0, not bound yet
    now = [100.0]
    asked = []

    def own() -> list[str]:
        asked.append(now[0])
        return list(listening)

    guard = LoopGuard(allow_loopback=True, own=own, clock=lambda: now[0])
    assert guard.refusal("127.0.0.1", 2525, "dest.test") is None
    assert guard.refusal("127.0.0.1", 2525, "dest.test") is None
    assert len(asked) == 2                                             # incomplete: asked every time
    listening[1] = "127.0.0.1:2525"                                    # bound now
    assert guard.refusal("127.0.0.1", 2525, "dest.test").enhanced == "5.4.6"
    assert guard.refusal("127.0.0.1", 2600, "dest.test") is None
    assert len(asked) == 3                                             # complete: remembered
    listening.append("0.0.0.0:2465")
    assert guard.refusal("127.0.0.1", 2465, "dest.test") is None       # not asked again yet ...
    now[0] += loops.OWN_RECHECK
    assert guard.refusal("127.0.0.1", 2465, "dest.test").enhanced == "5.4.6"   # ... and asked after OWN_RECHECK
    guard.allow_loopback = False                                       # SIGHUP: Scheduler.reload
    reply = guard.refusal("127.0.0.1", 2600, "dest.test")
    assert reply is not None and "delivery.allow_loopback is off" in reply.text
    assert guard.refusal("169.254.169.254", 25, "dest.test").enhanced == "5.4.4"


# ---------------------------------------------------------------------- MX limits


async def test_mx_address_limit_bounds_one_attempt(tmp_path, dns_server):
    closed = free_port()  # nothing listens there: each address is refused at once
    dns_server.set("many.test", "MX", *[f"{10 * i} mx{i}.many.test." for i in range(1, 9)])
    for i in range(1, 9):
        dns_server.set(f"mx{i}.many.test", "A", f"127.0.0.{i + 1}")
    async with delivering_daemon(tmp_path, dns_server, closed, {"delivery": {"mx_address_limit": 3}}) as (d, setup):
        qid = await enqueue(d, setup, ["bob@many.test"])
        [deferred] = await wait_events(d, qid, "deferred")
        assert "gave up after 3 MX addresses" in deferred["data"]["reply"], deferred["data"]["reply"]
        assert deferred["data"]["remote"].startswith("mx3.many.test[127.0.0.4]")


async def test_mx_session_limit_counts_sessions_past_the_greeting(tmp_path, dns_server):
    """Three MX hosts that greet and then refuse EHLO: two sessions, then the attempt is deferred."""
    connections = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer.get_extra_info("sockname")[0])
        writer.write(b"220 busy.test ESMTP\r\n")
        await reader.readline()
        writer.write(b"421 4.3.2 too busy, closing\r\n")
        await writer.drain()
        writer.close()

    first = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = first.sockets[0].getsockname()[1]
    servers = [first] + [await asyncio.start_server(refuse, f"127.0.0.{i}", port) for i in (2, 3)]
    try:
        dns_server.set("busy.test", "MX", "10 a.busy.test.", "20 b.busy.test.", "30 c.busy.test.")
        for name, ip in (("a", "127.0.0.1"), ("b", "127.0.0.2"), ("c", "127.0.0.3")):
            dns_server.set(f"{name}.busy.test", "A", ip)
        async with delivering_daemon(tmp_path, dns_server, port, {"delivery": {"mx_session_limit": 2}}) as (d, setup):
            qid = await enqueue(d, setup, ["bob@busy.test"])
            [deferred] = await wait_events(d, qid, "deferred")
            assert "mx_session_limit" in deferred["data"]["reply"], deferred["data"]["reply"]
            assert connections[:2] == ["127.0.0.1", "127.0.0.2"] and "127.0.0.3" not in connections
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


# ---------------------------------------------------------------------- the memory budget


async def test_delivery_takes_bodies_from_the_memory_budget(tmp_path, dns_server):
    """Bodies of 700 KB under a 1 MiB budget: never two in memory at once, all delivered, all given back."""
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, {"daemon": {"memory_budget": 1048576}}) as (d, setup):
            body = message(setup["sender"], ["x@dest.test"], body="y" * 76 + "\r\n") * 1
            big = body + (("z" * 998 + "\r\n") * 700).encode()
            qids = [await enqueue(d, setup, [f"r{i}@dest.test"], body=big) for i in range(3)]
            for qid in qids:
                await wait_events(d, qid, "delivered")
            budget = d.daemon.scheduler.budget
            assert budget is d.daemon.budget  # the one budget the daemon shares with submission
            assert len(big) <= budget.peak <= budget.limit, (budget.peak, len(big))
            assert budget.in_use == 0
            assert len(sink.messages) == 3


# ---------------------------------------------------------------------- SendGrid


def _multipart(parts: int) -> bytes:
    lines = ["From: a@acme.test", "To: b@far.example", "Subject: many", "MIME-Version: 1.0",
             'Content-Type: multipart/mixed; boundary="b"', ""]
    for i in range(parts):
        lines += ["--b", "Content-Type: text/plain", "", f"part {i}"]
    lines += ["--b--", ""]
    return "\r\n".join(lines).encode()


async def test_sendgrid_mapping_is_bounded_and_refusals_bounce():
    spec = ConnectorSpec(1, 1, "sg", "sendgrid", True, {}, "SG.x")
    assert len(sendgrid_payload(_multipart(3), ["b@far.example"], spec, "q")["content"]) == 1
    with pytest.raises(PayloadRefused):
        sendgrid_payload(_multipart(SENDGRID_MAX_PARTS + 1), ["b@far.example"], spec, "q")
    async with aiohttp.ClientSession() as http:  # never called: the refusal comes before the request
        courier = SendGridCourier(spec, http, DeliveryConfig(sendgrid_url="http://127.0.0.1:9"))
        got = await courier.deliver(["b@far.example"], _multipart(SENDGRID_MAX_PARTS + 1), "q")
    assert got["b@far.example"].outcome == "bounced" and got["b@far.example"].enhanced == "5.3.4"


# ---------------------------------------------------------------------- hold policy


@pytest.mark.parametrize(("operator", "scopes", "expected"), [
    (False, [], ""), (False, ["tenant"], "paused"), (True, [], "operator"), (True, ["global"], "operator"),
])
def test_hold_reason(operator, scopes, expected):
    assert holds.hold_reason(operator_held=operator, pauses=scopes) == expected


def test_covering_pauses():
    pauses = [holds.Pause("tenant", 1, None), holds.Pause("usecase", 2, 7)]
    assert holds.covering(pauses, 1, 5) == ["tenant"]
    assert holds.covering(pauses, 2, 7) == ["usecase"]
    assert holds.covering(pauses, 3, 8) == []
    assert holds.covering([holds.Pause("global", None, None)], 3, 8) == ["global"]


async def test_a_smarthost_whose_name_reaches_loopback_is_refused_once_connected():
    """The guard checks the address a connection really reached, not only the name it was given: a
    smarthost name that resolves to loopback (or to our own listener) is refused before MAIL."""
    from gateway.delivery.courier import SessionError, SessionOptions, SmtpSession

    async with mail_sink() as sink:
        options = SessionOptions(helo="gw.test", connect_timeout=5, command_timeout=5, tls="off")
        session = SmtpSession("127.0.0.1", sink.port, "relay.example.net", options,
                              guard=LoopGuard(allow_loopback=False), target="connector relay")
        with pytest.raises(SessionError) as caught:
            await session.open()
        reply = caught.value.reply
        assert reply.code == 554 and reply.enhanced == "5.4.6" and "loops back to myself" in reply.line
        assert sink.messages == [] and not session.alive
        # Allowed loopback (tests, a local relay on purpose): the same session opens.
        allowed = SmtpSession("127.0.0.1", sink.port, "relay.example.net", options,
                              guard=LoopGuard(allow_loopback=True), target="connector relay")
        await allowed.open()
        assert allowed.alive
        await allowed.close()
