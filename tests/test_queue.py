"""Operators and the queue: the daemon as users run it, the CLI over its socket, real submission.

Messages are submitted through the real listener with credentials made by `usecase.credentials.add`
(keyed hashes), on a domain verified against the test DNS server; the `gateway` CLI drives the queue.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import aiosmtplib
import pytest

from gateway.submission import client_tls_context
from tests.support import process
from tests.support.daemon import AdminError, running_daemon
from tests.support.submission import message
from tests.support.tenancy import dns_overrides, sending_setup


def cli(d, *args: str) -> tuple[int, str]:
    """The `gateway` command as operators run it (a subprocess); stdout and stderr together."""
    result = process.run_cli("--socket", str(d.daemon.paths.socket), *args, check=None)
    return result.returncode, result.stdout + result.stderr


async def run_cli(d, *args: str) -> tuple[int, str]:
    return await asyncio.to_thread(cli, d, *args)


async def submit(d, setup, count: int = 1, rcpts: list[str] | None = None) -> list[str]:
    host, port = d.hostport("submission")
    ids = []
    smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=True, tls_context=client_tls_context(), timeout=10)
    async with smtp:
        await smtp.login(setup["username"], setup["password"])
        for _ in range(count):
            _, reply = await smtp.sendmail(setup["sender"], rcpts or ["bob@example.org"], message(sender=setup["sender"]))
            ids.append(reply.rsplit(" ", 1)[1])
    return ids


async def states(d, queue_id: str) -> list[tuple[str, str]]:
    shown = await d.call("queue.show", queue_id=queue_id)
    return [(r["state"], r["hold_reason"]) for r in shown["recipients"]]


@pytest.fixture
async def daemon(tmp_path, dns_server):
    # Delivery (when wired) would drain the queue under our feet: tests that need mail to stay put
    # take a global pause first.
    async with running_daemon(tmp_path, dns_overrides(dns_server)) as d:
        setup = await sending_setup(d, dns_server)
        yield d, setup


async def test_queue_commands_act_on_exactly_the_named_messages(daemon):
    d, setup = daemon
    await d.call("pause")  # nothing leaves while we look (whether delivery runs or not)
    a, b, c = await submit(d, setup, 3)
    assert [await states(d, q) for q in (a, b, c)] == [[("held", "paused")]] * 3

    code, out = await run_cli(d, "queue", "hold", a, "--json")
    assert code == 0 and json.loads(out)["changed"] == {a: 1}
    assert [await states(d, q) for q in (a, b, c)] == [[("held", "operator")], [("held", "paused")], [("held", "paused")]]

    code, out = await run_cli(d, "queue", "list", "--state", "held", "--json")
    assert [m["queue_id"] for m in json.loads(out)] == [a, b, c]
    code, out = await run_cli(d, "queue", "show", a.upper(), "--json")  # ids pasted upper-cased still work
    assert code == 0 and json.loads(out)["queue_id"] == a
    code, out = await run_cli(d, "queue", "list")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["QUEUE", "ID", "TENANT"] and len(out.splitlines()) == 4

    # Released from the operator's hold, it is back under the pause that still stands.
    code, out = await run_cli(d, "queue", "release", a)
    assert code == 0 and f"{a}: released 1 recipient(s)" in out
    assert await states(d, a) == [("held", "paused")]

    code, out = await run_cli(d, "queue", "delete", b)
    assert code == 0
    with pytest.raises(AdminError) as err:
        await d.call("queue.show", queue_id=b)
    assert err.value.code == "not_found"
    assert [m["queue_id"] for m in await d.call("queue.list")] == [a, c]
    assert [e["kind"] for e in await d.store.events.list(subject=b)][-1] == "deleted"

    # An unknown id refuses the whole request and changes nothing.
    code, out = await run_cli(d, "queue", "hold", a, "0000000000000000")
    assert code == 1 and "0000000000000000" in out
    assert await states(d, a) == [("held", "paused")]
    code, out = await run_cli(d, "queue", "hold", "not-an-id")
    assert code == 2

    # An operator hold outlives the pause; the others flow again.
    await run_cli(d, "queue", "hold", c)
    code, out = await run_cli(d, "resume")
    assert code == 0 and "1 recipient(s) released" in out
    assert await states(d, c) == [("held", "operator")]
    assert (await states(d, a))[0][0] != "held"


async def test_all_needs_tenant_or_yes(daemon):
    d, setup = daemon
    await d.call("pause")
    await submit(d, setup, 2)
    code, out = await run_cli(d, "queue", "hold", "ALL")
    assert code == 2 and "--tenant" in out
    with pytest.raises(AdminError) as err:
        await d.call("queue.hold", ids=["ALL"])
    assert err.value.code == "invalid"
    code, out = await run_cli(d, "queue", "release", "ALL", "--tenant", "acme")
    assert code == 0  # paused mail stays held by the pause, not by the operator
    assert "released 0 recipient(s)" in out
    code, out = await run_cli(d, "queue", "hold", "all", "--yes")
    assert code == 2  # only the literal word ALL


async def test_pause_and_resume_scopes(daemon):
    d, setup = daemon
    code, out = await run_cli(d, "pause", "--tenant", "acme", "--usecase", setup["usecase"])
    assert code == 0, out
    (held,) = await submit(d, setup)
    assert await states(d, held) == [("held", "paused")]
    code, out = await run_cli(d, "pause")  # global too
    assert code == 0
    code, out = await run_cli(d, "pause", "--list", "--json")
    assert {p["scope"] for p in json.loads(out)} == {"global", "usecase"}
    code, out = await run_cli(d, "resume", "--tenant", "acme", "--usecase", setup["usecase"])
    assert code == 0 and "1 still held by another pause" in out
    assert await states(d, held) == [("held", "paused")]
    code, out = await run_cli(d, "resume")
    assert code == 0 and "1 recipient(s) released" in out
    assert (await states(d, held))[0] != ("held", "paused")
    code, out = await run_cli(d, "resume")
    assert code == 1 and "not paused" in out
    code, out = await run_cli(d, "pause", "--usecase", "x")
    assert code == 2
    code, out = await run_cli(d, "pause", "--tenant", "nobody")
    assert code == 1 and "nobody" in out


async def test_show_status_metrics_and_flush(daemon):
    d, setup = daemon
    await d.call("pause")
    (qid,) = await submit(d, setup, rcpts=["bob@example.org", "carol@example.org"])
    code, out = await run_cli(d, "queue", "show", qid)
    assert code == 0
    assert f"queue_id    {qid}" in out and "recipient 0: bob@example.org  held (paused)" in out and "(no attempts yet)" in out
    monitor = next(c for c in d.daemon.components if c.name == "queue")
    await monitor.refresh()
    status = await d.call("status")
    assert status["queue"]["held"] == 2 and status["queue"]["messages"] == 1
    code, out = await run_cli(d, "status")
    assert "held 2" in out
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{d.address('web')}/metrics") as resp:
            text = await resp.text()
    assert 'gateway_queue_recipients{state="held"} 2.0' in text
    assert "gateway_messages_received_total 1.0" in text
    code, out = await run_cli(d, "queue", "flush", "--json")
    assert code == 0 and json.loads(out) == {"flushed": 0}
    events = await d.store.events.list(subject=qid)
    assert [e["kind"] for e in events][:2] == ["queued", "held"]


async def test_real_credentials_and_wrong_password(daemon):
    d, setup = daemon
    host, port = d.hostport("submissions")
    smtp = aiosmtplib.SMTP(hostname=host, port=port, use_tls=True, tls_context=client_tls_context(), timeout=10)
    async with smtp:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as err:
            await smtp.login(setup["username"], "wrong")
        assert err.value.code == 535
        await smtp.login(setup["username"], setup["password"])
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.sendmail("someone@acme.test", ["bob@example.org"], message(sender="someone@acme.test"))
        assert refused.value.code == 553


def test_all_is_only_the_literal_word_alone_and_narrowed():
    from gateway.errors import InvalidArgument
    from gateway.services.queue import check_ids

    qid = "01m816g4yzc6xevk"
    assert check_ids([qid, qid], None, False) == [qid]
    assert check_ids([qid.upper()], None, False) == [qid]  # ids are case-insensitive; "ALL" is not
    assert check_ids(["ALL"], "acme", False) is None and check_ids(["ALL"], None, True) is None
    for ids, tenant, yes, why in [
        (["ALL"], None, False, "--tenant"),
        (["ALL", qid], "acme", True, "mixed"),
        (["all"], "acme", True, "not a queue id"),
        (["All"], None, True, "not a queue id"),
        ([], "acme", True, "at least one"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            check_ids(ids, tenant, yes)
        assert why in str(err.value), (ids, err.value)


@pytest.mark.parametrize("how", ["operator_hold", "pause"])
async def test_hold_or_pause_while_in_flight_applies_after_a_deferred_attempt(tmp_path, how):
    """A recipient being delivered cannot change under the worker's feet; when its attempt ends
    deferred, the hold (or pause) the operator asked for meanwhile must take effect, not be lost."""
    from gateway.services.pauses import PauseService
    from gateway.services.queue import QueueService
    from gateway.store import Store
    from gateway.store.delivery import Outcome
    from gateway.store.queue import NewMessage, QueueIds
    from tests.support.submission import make_usecase

    store = await Store.open(tmp_path / "g.db")
    try:
        ctx = await make_usecase(store)
        qid = QueueIds().new()
        await store.queue.put(NewMessage(queue_id=qid, tenant_id=ctx["tenant_id"], usecase_id=ctx["id"], mail_from="app@example.com",
                                         message_id=f"{qid}@example.com", body=b"Subject: x\r\n\r\nhi\r\n",
                                         recipients=["bob@example.org", "carol@example.org"]))
        claimed = await store.delivery.claim("worker", 10)
        assert len(claimed) == 2
        if how == "operator_hold":
            result = await QueueService(store).hold([qid])
            assert result["changed"] == {qid: 0} and result["in_flight"] == {qid: 2}  # said, not silently "0 held"
        else:
            await PauseService(store).pause("acme")
        bob, carol = claimed
        outcomes = [Outcome(recipient_id=bob["id"], state="deferred", code=451, enhanced="4.3.0", reply="451 4.3.0 busy",
                            next_attempt_at=0.0, event={"rcpt": bob["rcpt"]}),
                    Outcome(recipient_id=carol["id"], state="delivered", code=250, reply="250 ok", event={"rcpt": carol["rcpt"]})]
        await store.delivery.record("worker", ctx["tenant_id"], qid, outcomes)
        shown = {r["rcpt"]: r for r in (await store.queue.show(qid))["recipients"]}
        reason = "operator" if how == "operator_hold" else "paused"
        assert (shown["bob@example.org"]["state"], shown["bob@example.org"]["hold_reason"]) == ("held", reason)
        assert shown["bob@example.org"]["attempt_log"][0]["outcome"] == "deferred"  # what the remote said stays on record
        assert shown["carol@example.org"]["state"] == "delivered"
        assert await store.delivery.claim("worker", 10) == []
        if how == "operator_hold":
            await QueueService(store).release([qid])
        else:
            await PauseService(store).resume("acme")
        assert [r["rcpt"] for r in await store.delivery.claim("worker", 10)] == ["bob@example.org"]
    finally:
        await store.close()
