"""Secrets stay secret (DESIGN rule 10), checked where they could leak: the daemon's own log output
(at debug level, every library included) and every CLI output, with real traffic that uses them.

The daemon runs as users run it (`gateway run`, a subprocess, JSON lines on stderr); the relay is a
recording MX that requires AUTH; the app authenticates with a credential made by the CLI. Three more
smarthosts stop answering in the middle of AUTH (LOGIN after the username, LOGIN after the password,
PLAIN after its blob): the timeout's text, `connector test` and the deferral must name the step, never
the line they were waiting on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json

import aiosmtplib
import pytest

from gateway.submission import client_tls_context
from tests.support.dns import dns_overrides
from tests.support.process import AdminHandle, GatewayProcess
from tests.support.sink import mail_sink
from tests.support.submission import message
from tests.support.tenancy import sending_setup

RELAY_SECRET = "relay-Pa55-zq81xv"
WRONG_PASSWORD = "not-the-Pa55-7731"


def variants(secret: str, username: str = "relay") -> list[str]:
    """The secret and the encodings it travels in (AUTH LOGIN sends it base64-encoded, AUTH PLAIN in
    the base64 of NUL user NUL password)."""
    return [secret, base64.b64encode(secret.encode()).decode(), base64.b64encode(f"\0{username}\0{secret}".encode()).decode()]


STALLS = ("username", "password", "plain")


async def test_secrets_never_in_logs_or_cli_output(tmp_path, dns_server):
    overrides = {**dns_overrides(dns_server), "log": {"level": "debug", "format": "json"},
                 "delivery": {"backoff_base": 0.2, "backoff_max": 0.4, "backoff_jitter": 0.0, "poll_interval": 0.1,
                              "command_timeout": 1.0}}
    async with contextlib.AsyncExitStack() as stack:
        relay = await stack.enter_async_context(mail_sink(starttls=True, users={"relay": RELAY_SECRET}))
        stalls = {step: await stack.enter_async_context(mail_sink(starttls=True, users={"relay": RELAY_SECRET}, stall_auth=step))
                  for step in STALLS}
        with GatewayProcess(tmp_path, overrides) as gw:
            d = AdminHandle(gw)
            outputs: list[str] = []

            async def cli(*args: str, env: dict[str, str] | None = None, check: int | None = 0) -> str:
                result = await asyncio.to_thread(gw.cli, *args, env=env, check=check)
                outputs.append(result.stdout + result.stderr)
                return result.stdout

            setup = await sending_setup(d, dns_server)
            # A credential made by the CLI: the password is printed exactly once, by `add`.
            added = json.loads(await cli("usecase", "credentials", "add", "acme", setup["usecase"], "--json"))
            password = added["password"]
            assert sum(password in o for o in outputs) == 1
            await cli("usecase", "credentials", "list", "acme", setup["usecase"])
            await cli("usecase", "credentials", "list", "acme", setup["usecase"], "--json")
            await cli("usecase", "show", "acme", setup["usecase"], "--json")

            # A relay connector whose password comes from the environment, never the command line.
            await cli("connector", "add", "acme", "relay", "--kind", "smtp", "--host", "127.0.0.1", "--port", str(relay.port),
                      "--tls", "starttls", "--no-verify-tls", "--username", "relay", "--secret-env", "RELAY_SECRET",
                      env={"RELAY_SECRET": RELAY_SECRET})
            for args in (["connector", "show", "acme", "relay"], ["connector", "show", "acme", "relay", "--json"],
                         ["connector", "list"], ["connector", "list", "--json"], ["connector", "test", "acme", "relay"],
                         ["connector", "test", "acme", "relay", "--json"], ["config", "show", "--running"],
                         ["status", "--json"]):
                await cli(*args)
            await cli("usecase", "update", "acme", setup["usecase"], "--route", "connector:relay")

            # Real traffic with both secrets: a failed and a good AUTH (PLAIN and LOGIN), then the relay's AUTH.
            status = json.loads(await cli("status", "--json"))
            listeners = {item["name"]: item["address"] for item in status["listeners"]}
            host, _, port = listeners["submission"].rpartition(":")
            smtp = aiosmtplib.SMTP(hostname=host, port=int(port), start_tls=True, tls_context=client_tls_context(), timeout=10)
            async with smtp:
                await smtp.ehlo()
                with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                    await smtp.auth_login(added["username"], WRONG_PASSWORD)
                with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                    await smtp.auth_plain(added["username"], WRONG_PASSWORD)
                await smtp.auth_login(added["username"], password)
                await smtp.sendmail(setup["sender"], ["bob@far.example"], message(sender=setup["sender"], to="bob@far.example"))
            # A refused AUTH (538: no TLS yet) with its answers pipelined behind it: they are read as
            # commands and refused, and the debug log of command lines must not show them.
            reader, writer = await asyncio.open_connection(host, int(port))
            await reader.readline()
            b64 = lambda text: base64.b64encode(text.encode())  # noqa: E731
            writer.write(b"EHLO client.example\r\nAUTH LOGIN\r\n" + b64(added["username"]) + b"\r\n" + b64(password)
                         + b"\r\nAUTH PLAIN\r\n" + b64(f"\0{added['username']}\0{password}") + b"\r\nQUIT\r\n")
            assert b"221 " in await asyncio.wait_for(reader.read(), 10)
            writer.close()
            [got] = await relay.wait_for(1)
            assert got.auth_user == "relay"
            assert ("relay", True) in relay.auth_attempts

            # A wrong relay password: the failure is reported, the password is not.
            await d.call("connector.update", tenant="acme", name="relay", secret=WRONG_PASSWORD)
            await cli("connector", "test", "acme", "relay", check=1)

            # Smarthosts that stall in the middle of AUTH: `connector test` names the step that timed out.
            for step, sink in stalls.items():
                await cli("connector", "add", "acme", f"stall-{step}", "--kind", "smtp", "--host", "127.0.0.1", "--port",
                          str(sink.port), "--tls", "starttls", "--no-verify-tls", "--username", "relay",
                          "--secret-env", "RELAY_SECRET", env={"RELAY_SECRET": RELAY_SECRET})
                shown = json.loads(await cli("connector", "test", "acme", f"stall-{step}", "--json", check=1))
                [failed] = [s for s in shown["steps"] if not s["ok"]]
                assert failed["step"] == "auth" and "timed out" in failed["detail"], shown
                await cli("connector", "test", "acme", f"stall-{step}", check=1)
                assert sink.stalled == 2
            # ... and mail routed through one: the deferral (attempt log, event, log line) names no secret either.
            await d.call("usecase.add", tenant="acme", domain=setup["domain"], name="stalled", entity="acme stalled",
                         kind="transactional", senders=[setup["sender"]], route="connector:stall-password")
            stalled_login = await d.call("usecase.credentials.add", tenant="acme", usecase="stalled")
            async with smtp:
                await smtp.ehlo()
                await smtp.auth_plain(stalled_login["username"], stalled_login["password"])
                _, reply = await smtp.sendmail(setup["sender"], ["carol@far.example"],
                                               message(sender=setup["sender"], to="carol@far.example"))
            stalled_id = reply.rsplit(" ", 1)[1]
            async with asyncio.timeout(20):
                while not (await d.call("queue.show", queue_id=stalled_id))["recipients"][0]["attempt_log"]:
                    await asyncio.sleep(0.1)
            await cli("queue", "show", stalled_id)
            shown = json.loads(await cli("queue", "show", stalled_id, "--json"))
            assert "timed out" in json.dumps(shown["recipients"][0]["attempt_log"])
            assert gw.stop() == 0

    log = gw.stderr
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    # One line per event keyed by queue id, with the delay and the remote reply (issue 4).
    [delivered] = [line for line in lines if line["event"] == "delivered"]
    [queued] = [line for line in lines if line["event"] == "queued" and line["queue_id"] == delivered["queue_id"]]
    assert delivered["rcpt"] == "bob@far.example" and queued["usecase"] == setup["usecase"]
    assert delivered["reply"].startswith("250") and delivered["delay"] >= 0 and delivered["remote"]
    for secret in (RELAY_SECRET, WRONG_PASSWORD, password, stalled_login["password"]):
        for form in variants(secret) + variants(secret, added["username"]) + variants(secret, stalled_login["username"]):
            assert form not in log, f"secret {secret!r} (as {form!r}) in the daemon's log"
            for out in outputs[1:] if secret == password else outputs:
                assert form not in out, f"secret {secret!r} in CLI output: {out}"
    # The AUTH PLAIN blob (\0user\0password) never appears either.
    plain = base64.b64encode(f"\0{added['username']}\0{password}".encode()).decode()
    assert plain not in log
