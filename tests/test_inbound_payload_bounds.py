"""The received-mail webhook payload (gateway/inbound/delivery.py) stays within one POST whatever
the message holds: not only its bodies, also its subject and its attachment list."""

from __future__ import annotations

import json

import pytest

from gateway.config import parse_config
from gateway.inbound.attachments import AttachmentFiles
from gateway.inbound.delivery import EVENT_ROOM, AppDelivery
from gateway.metrics import Metrics
from gateway.store import Store
from gateway.unsubscribe.links import Keyring
from tests.support.inbound import receiving_domain
from tests.support.processed import Part, processed_message


async def test_a_message_with_hundreds_of_long_named_attachments_and_a_long_subject_fits_one_post(tmp_path):
    store = await Store.open(tmp_path / "gateway.db")
    try:
        config = parse_config({"web": {"public_url": "https://gw.test"}})
        acme = (await store.tenants.add("acme"))["id"]
        dom = await receiving_domain(store, acme, "acme.test", usecase="support")
        # 500 parts is processor.max_parts; names of 200 UTF-8 bytes are what filenames.sanitise keeps,
        # Content-IDs 250 characters: as JSON (\\uXXXX escapes) about 2.4 KB an attachment.
        parts = [Part("\U0001f600" * 49 + f"{i:03}", "image/png", b"\x89PNG same bytes", content_id="\u00e9" * 250)
                 for i in range(500)]
        row = await processed_message(store, tmp_path, tenant_id=acme, usecase_id=dom.usecase_id, attachments=parts,
                                      subject="\u00e9" * 60000)
        delivery = AppDelivery(store, Keyring(store), lambda: config, AttachmentFiles(tmp_path / "attachments"), Metrics())
        built = await delivery.payload(acme, row["inbound_id"])
        assert built is not None and built["inbound_id"] == row["inbound_id"]
        assert len(json.dumps(built, separators=(",", ":"), default=str)) <= config.inbox.max_post_bytes - EVENT_ROOM
        assert built["attachments"] and built["attachments"][0]["url"].startswith("https://gw.test/inbound/attachments/")
        assert built["subject"]   # cut, not dropped
        assert {"subject", "attachments"} <= set(built["truncated"])
    finally:
        await store.close()
