"""Coalesced wakes (gateway/wakes.py): the spools one group commit resolves in one loop turn
send the daemon's processor one wake, not one each."""

from __future__ import annotations

import asyncio

from gateway.wakes import Coalesced


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


async def test_with_a_delay_the_wakes_of_the_window_call_back_once_after_it():
    calls: list[float] = []
    loop = asyncio.get_running_loop()
    fired = asyncio.Event()
    wake = Coalesced(lambda: (calls.append(loop.time()), fired.set()), delay=0.01)
    began = loop.time()
    for _ in range(20):
        wake("ignored argument")   # an on_queued callback may pass one
    await asyncio.wait_for(fired.wait(), 5)
    assert len(calls) == 1 and calls[0] - began >= 0.009
