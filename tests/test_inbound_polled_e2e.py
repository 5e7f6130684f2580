"""Polled mail through the processor, end to end: a customer's reply lands in a tenant's IMAP
mailbox (a real Dovecot), the daemon's poller spools it, and the daemon's processor, woken by that
commit, threads it under the message we sent, in the connector's use case."""

from __future__ import annotations

import asyncio
import os

from gateway.store.queue import NewMessage, QueueIds
from tests.support.tenancy import sending_setup
from tests.test_poller import add_mailbox, daemon

_ids = QueueIds()


async def test_a_polled_reply_is_processed_into_its_thread(tmp_path, dns_server, dovecot):
    async with daemon(tmp_path, dns_server, dovecot, interval=60.0) as d:   # IDLE wakes the poller, not the interval
        setup = await sending_setup(d, dns_server)
        tenant_id = (await d.store.tenants.get(setup["tenant"]))["id"]
        await d.store.queue.put(NewMessage(queue_id=_ids.new(), tenant_id=tenant_id, usecase_id=setup["usecase_id"],
                                           mail_from=setup["sender"], message_id="order-1@acme.test", body=b"Subject: x\r\n\r\nx\r\n",
                                           recipients=["carl@customer.example"]))
        await add_mailbox(d, dovecot)
        dovecot.append("alice", b"From: Carl <carl@customer.example>\r\nTo: help@acme.test\r\nSubject: Re: your order\r\n"
                                b"Message-ID: <carl-1@customer.example>\r\nIn-Reply-To: <order-1@acme.test>\r\n"
                                b"Return-Path: <carl@customer.example>\r\n\r\nThanks, it arrived.\r\n")
        async with asyncio.timeout(20):
            while not (rows := await d.store.events.list(tenant_id=tenant_id, kind="received")):
                await asyncio.sleep(0.05)
        row = await d.store.inbound.get(rows[0]["subject"])
        assert (row["source"], row["kind"], row["usecase_id"]) == ("imap", "reply", setup["usecase_id"])
        assert (row["thread_id"], row["parent_message_id"], row["from_address"]) == ("order-1@acme.test", "order-1@acme.test",
                                                                                   "carl@customer.example")
        assert row["summary"]["stripped_text"].strip() == "Thanks, it arrived."
        # The mailbox is polled under a lease of its own (one node at a time polls it): this process's.
        [lease] = [l for l in await d.store.leases.all() if l["name"].startswith("poller:")]
        assert lease["holder"].startswith(f"{d.daemon.node}:{os.getpid()}:")
