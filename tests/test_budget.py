"""The in-flight byte budget shared by submission and delivery."""

import asyncio

import pytest

from gateway.budget import ByteBudget


def test_try_acquire_refuses_past_the_limit_and_counts_refusals():
    b = ByteBudget(100)
    assert b.try_acquire(60)
    assert not b.try_acquire(50)
    assert b.refused == 1
    b.release(60)
    assert b.try_acquire(50)
    assert b.in_use == 50 and b.peak == 60


def test_one_message_larger_than_the_budget_passes_when_nothing_is_in_flight():
    b = ByteBudget(100)
    assert b.try_acquire(500)
    assert not b.try_acquire(1)
    b.release(500)
    assert b.in_use == 0


async def test_acquire_waits_in_order_until_bytes_are_released():
    b = ByteBudget(100)
    await b.acquire(80)
    got: list[str] = []

    async def take(name: str, n: int) -> None:
        await b.acquire(n)
        got.append(name)

    first = asyncio.ensure_future(take("first", 50))
    second = asyncio.ensure_future(take("second", 10))
    await asyncio.sleep(0)
    assert got == [] and b.waiting == 2
    # A small non-waiting taker may not jump the queue either.
    assert not b.try_acquire(10)
    b.release(80)
    await asyncio.gather(first, second)
    assert got == ["first", "second"] and b.in_use == 60


async def test_a_cancelled_waiter_gives_way_to_the_next():
    b = ByteBudget(100)
    await b.acquire(100)
    big = asyncio.ensure_future(b.acquire(100))
    small = asyncio.ensure_future(b.acquire(10))
    await asyncio.sleep(0)
    big.cancel()
    with pytest.raises(asyncio.CancelledError):
        await big
    b.release(100)
    await small
    assert b.in_use == 10 and b.waiting == 0
