"""Coalesced wakes (gateway/inbound/wake.py): the spools one group commit resolves in one loop turn
send the daemon's processor one wake, not one each."""

from __future__ import annotations

import asyncio

from gateway.inbound.wake import Coalesced


async def test_wakes_in_one_loop_turn_call_back_once_and_a_later_turn_again():
    calls: list[int] = []
    wake = Coalesced(lambda: calls.append(1))
    for _ in range(20):
        wake()
    assert calls == []              # not before the turn ends
    await asyncio.sleep(0)
    assert calls == [1]
    wake()
    await asyncio.sleep(0)
    assert calls == [1, 1]          # a spool after the line was sent gets its own
