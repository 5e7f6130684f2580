"""When the listener decides to close a session, and when the client does.

Nothing a client pipelined behind a 421 is acted on (it was told 421, so its retry would be a
duplicate), whoever decided the close: too many errors, the session time limit, the command timeout,
a stopping daemon. Every such 421 is logged once and counted. And a message whose commit has started
is committed with all its bookkeeping even when the client hangs up at once (issue 7 item 7).
"""

from __future__ import annotations

import asyncio
import ssl

import pytest
from structlog.testing import capture_logs

from gateway.submission import client_tls_context
from tests.support.submission import RawClient, message, submission_listener

TRANSACTION = b"MAIL FROM:<app@example.com>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n" + message() + b".\r\nQUIT\r\n"


def refusals(sub, step: str, code: str) -> float:
    return sub.server.metrics.registry.get_sample_value("gateway_submission_refusals_total", {"step": step, "code": code}) or 0


async def connected(sub, implicit: bool) -> RawClient:
    """Logged in over implicit TLS, or over STARTTLS on the plain port."""
    if implicit:
        client = await RawClient.connect(sub.port("submissions"))
    else:
        client = await RawClient.connect(sub.port("submission"), implicit=False)
        assert (await client.cmd("EHLO client.example"))[0] == 250
        assert (await client.cmd("STARTTLS"))[0] == 220
        await client.writer.start_tls(client_tls_context())
    await client.login()
    return client


async def replies_until_closed(client: RawClient) -> list[int]:
    codes = []
    while (code := (await client.reply())[0]) != 0:
        codes.append(code)
    return codes


async def settled(sub) -> None:
    """Every session ended and every commit it started finished: nothing more can be queued."""
    await sub.server.wait_idle()
    await sub.server.handler.drain()


async def close(client: RawClient) -> None:
    client.writer.close()
    try:
        await client.writer.wait_closed()
    except (ConnectionError, ssl.SSLError):
        pass


@pytest.mark.parametrize("bad", [10, 12, 200])
@pytest.mark.parametrize("implicit", [True, False], ids=["implicit-tls", "starttls"])
async def test_nothing_pipelined_behind_too_many_errors_is_run(tmp_path, caplog, implicit, bad):
    async with submission_listener(tmp_path, submission={"context_ttl": 60.0}) as sub:
        client = await connected(sub, implicit)
        with capture_logs() as logs:
            client.writer.write(b"FOO\r\n" * bad + TRANSACTION)  # one write: all of it is buffered at the server
            codes = await replies_until_closed(client)
            await settled(sub)
        assert codes == [500] * 10 + [421]
        assert sub.queued == [] and await sub.store.queue.list() == []
        assert [e["event"] for e in logs if e["event"].startswith("submission_") and e["log_level"] != "debug"] == ["submission_refused"] * 10 + [
            "submission_too_many_errors"]
        assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []  # no writes to a closing transport
        await close(client)


async def test_nothing_pipelined_behind_the_session_time_limit_is_run(tmp_path):
    async with submission_listener(tmp_path, submission={"session_timeout": 1.0}) as sub:
        client = await connected(sub, True)
        gate = asyncio.Event()
        real = sub.server.handler.submitter.contexts.get

        async def held(usecase_id):  # MAIL waits here until the session limit has struck
            await gate.wait()
            return await real(usecase_id)

        sub.server.handler.submitter.contexts.get = held
        with capture_logs() as logs:
            client.writer.write(TRANSACTION)
            code, text = await client.reply()
            gate.set()
            assert (code, text) == (421, "4.4.2 Session time limit reached")
            assert await replies_until_closed(client) == []
            await settled(sub)
        assert sub.queued == [] and await sub.store.queue.list() == []
        assert [e["event"] for e in logs if e["event"].startswith("submission_") and e["log_level"] != "debug"] == ["submission_session_expired"]
        assert refusals(sub, "MAIL", "421") == 1
        await close(client)


async def test_a_stop_while_committing_answers_250_then_421_and_runs_nothing_more(tmp_path):
    async with submission_listener(tmp_path) as sub:
        handler = sub.server.handler
        entered, release = asyncio.Event(), asyncio.Event()
        real = handler.submitter.submit

        async def held(new):
            entered.set()
            await release.wait()
            return await real(new)

        handler.submitter.submit = held
        mails = []
        real_mail = handler.handle_MAIL

        async def counted_mail(*args):
            mails.append(args[3])
            return await real_mail(*args)

        handler.handle_MAIL = counted_mail  # before the connection: aiosmtpd looks its hooks up once
        client = await connected(sub, True)
        client.writer.write(TRANSACTION.replace(b"QUIT\r\n", b"") + TRANSACTION)  # the second pipelined behind the first
        await entered.wait()
        stopping = asyncio.create_task(sub.server.stop(asyncio.get_running_loop().time() + 5))
        await asyncio.sleep(0)  # let stop tell the busy session (it waits for the commit's reply)
        release.set()
        codes = await replies_until_closed(client)
        await stopping
        assert codes == [250, 250, 354, 250, 421]
        assert mails == ["app@example.com"]  # the second MAIL was never run
        assert len(await sub.store.queue.list()) == 1 and len(sub.queued) == 1
        await close(client)


async def test_command_timeout_answers_421_logged_and_counted(tmp_path):
    async with submission_listener(tmp_path, submission={"command_timeout": 1.0}) as sub:
        client = await connected(sub, True)
        with capture_logs() as logs:
            assert await client.reply() == (421, "4.4.2 Timeout, closing connection")  # as Postfix says it
            assert await replies_until_closed(client) == []
            await settled(sub)
        [timeout] = [e for e in logs if e["event"].startswith("submission_") and e["log_level"] != "debug"]
        assert timeout["event"] == "submission_timeout" and timeout["log_level"] == "info" and timeout["limit"] == 1.0
        assert refusals(sub, "COMMAND", "421") == 1
        await close(client)


async def test_a_session_cancelled_during_the_commit_still_does_its_bookkeeping(tmp_path):
    async with submission_listener(tmp_path, usecase={"monthly_quota": 100}) as sub:
        client = await connected(sub, True)
        handler = sub.server.handler
        committed, gone = asyncio.Event(), asyncio.Event()
        real = handler.submitter.submit

        async def put_then_wait(new):  # the commit is done; the client hangs up before the bookkeeping
            result = await real(new)
            committed.set()
            await gone.wait()
            return result

        handler.submitter.submit = put_then_wait
        with capture_logs() as logs:
            assert (await client.cmd("MAIL FROM:<app@example.com>"))[0] == 250
            assert (await client.cmd("RCPT TO:<bob@example.org>"))[0] == 250
            assert (await client.cmd("DATA"))[0] == 354
            client.writer.write(message() + b".\r\n")
            await committed.wait()
            client.writer.transport.abort()
            await sub.server.wait_idle()  # the session is gone: its handler was cancelled
            assert sub.server.budget.in_use > 0  # the message is still held, by its commit
            gone.set()
            await handler.drain()
        assert sub.server.budget.in_use == 0
        [row] = await sub.store.queue.list()
        [queued] = [e for e in logs if e["event"] == "queued"]
        assert queued["queue_id"] == row["queue_id"]
        assert sub.queued == [row["queue_id"]]  # the scheduler was woken
        assert handler.metrics.registry.get_sample_value("gateway_messages_received_total") == 1
        assert await handler.submitter.quota.used(sub.ctx["tenant_id"]) == 1  # counted locally (read at MAIL: 0)
        assert handler.metrics.registry.get_sample_value("gateway_message_size_bytes_count") == 1
