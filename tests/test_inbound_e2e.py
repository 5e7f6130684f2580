"""End to end: `gateway run` with its MX listener; what it answers 250 is in the spool, even when
the daemon is killed the moment the 250 arrives."""

from __future__ import annotations

import json
import signal
import sqlite3

import aiosmtplib

from tests.support.dns import dns_overrides
from tests.support.inbound import db_link_key, inbound_message, signed_return_path
from tests.support.process import AdminHandle, GatewayProcess
from tests.support.tenancy import sending_setup


async def test_gateway_run_spools_what_its_mx_accepted_and_refuses_the_rest(tmp_path, dns_server):
    gw = GatewayProcess(tmp_path, dns_overrides(dns_server)).start()
    try:
        admin = AdminHandle(gw)
        setup = await sending_setup(admin, dns_server)      # acme.test verified: its return path receives
        port = await admin.listener_port("inbound")
        status = gw.cli_json("status")
        assert any(l["name"] == "inbound" for l in status["listeners"])
        unsigned = f"bounces+0h3k9x2a7mq4rt5b.0@{setup['return_path_domain']}"
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
        async with smtp:
            await smtp.ehlo()
            await smtp.mail("")
            # acme.test itself has inbound off: its users are not received here; a foreign domain never is.
            for refused, code in (("help@acme.test", 550), ("someone@example.org", 550)):
                try:
                    await smtp.rcpt(refused)
                    raise AssertionError(f"{refused} accepted")
                except aiosmtplib.SMTPRecipientRefused as exc:
                    assert exc.code == code and exc.message.startswith("5.7.1")
            # A return path without our MAC (a guessed queue id) is refused too: 550 5.1.1, nothing spooled.
            try:
                await smtp.rcpt(unsigned)
                raise AssertionError(f"{unsigned} accepted")
            except aiosmtplib.SMTPRecipientRefused as exc:
                assert exc.code == 550 and exc.message.startswith("5.1.1")
            # The daemon made its link key checking that one: sign with it, as delivery does.
            bounce_to = signed_return_path(setup["return_path_domain"], "0h3k9x2a7mq4rt5b", 0, db_link_key(gw.state_dir / "gateway.db"))
            await smtp.rcpt(bounce_to)
            reply = await smtp.data(inbound_message(bounce_to, sender="mailer-daemon@example.org", subject="Undelivered"))
            assert reply.code == 250
            # Killed right after the 250: no clean stop, no flush; the row must be on disk already.
            gw.proc.send_signal(signal.SIGKILL)
            gw.proc.wait(10)
    finally:
        gw.close()
    conn = sqlite3.connect(gw.state_dir / "gateway.db")
    try:
        rows = conn.execute("SELECT inbound_id, tenant_id, recipients, mail_from, state, raw FROM inbound_messages").fetchall()
    finally:
        conn.close()
    [(inbound_id, tenant_id, recipients, mail_from, state, raw)] = rows
    assert reply.message.endswith(inbound_id)
    # The processor may have taken the row before the kill (it is woken by the spool's commit): then
    # the row is processed and our Authentication-Results sits above the Received field.
    # (Spooled for the gateway's own address with tenant None; processed, the return path's tenant.)
    assert (json.loads(recipients), mail_from) == ([bounce_to], "") and (state, tenant_id) in (("spooled", None), ("processed", 1))
    stored = bytes(raw)
    if state == "processed":
        assert stored.startswith(b"Authentication-Results: ")
        stored = stored[stored.index(b"\r\nReceived: from ") + 2:]
    assert stored.startswith(b"Received: from ") and b"Subject: Undelivered\r\n" in stored
