"""ParentOrder (gateway/inbound/order.py): a reply waits for its parent still in flight, and for
nothing else."""

from __future__ import annotations

import asyncio

from gateway.inbound.order import ParentOrder


async def test_a_reply_waits_for_its_parent_in_flight_and_only_for_it():
    order = ParentOrder()
    order.begin(1, "parent@x")      # named from the spool's Message-ID
    order.begin(2)                  # named once parsed
    order.begin(3, "other@x")
    waiting = asyncio.create_task(order.parents(4, ["child@x", "parent@x"]))
    await asyncio.sleep(0)
    assert not waiting.done()       # row 2's name is not known yet: it might be the parent
    order.named(2, "sibling@x")
    await asyncio.sleep(0)
    assert not waiting.done()       # row 1 is the parent and still in flight
    order.end(3)                    # another thread finishing changes nothing
    await asyncio.sleep(0)
    assert not waiting.done()
    order.end(1)
    assert await asyncio.wait_for(waiting, 1) is True
    # Nothing in flight it names, or only later rows: no wait, nothing out of date.
    assert await asyncio.wait_for(order.parents(5, ["parent@x"]), 1) is False
    order.begin(9, "late@x")
    assert await asyncio.wait_for(order.parents(6, ["late@x"]), 1) is False


async def test_a_row_given_up_before_it_was_parsed_releases_whoever_waits():
    order = ParentOrder()
    order.begin(1)
    waiting = asyncio.create_task(order.parents(2, ["a@x"]))
    await asyncio.sleep(0)
    assert not waiting.done()
    order.end(1)                    # held (or failed) before its name was known
    assert await asyncio.wait_for(waiting, 1) is False
    assert len(order) == 0
