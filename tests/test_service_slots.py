"""Slots (service/slots.py): bounded, fair, and never stuck after a time-out."""

from __future__ import annotations

import asyncio

from service.slots import Slots


async def test_slots_bound_the_holders_and_serve_waiters_in_turn() -> None:
    slots = Slots(2)
    assert await slots.acquire(1)
    assert await slots.acquire(1)
    third = asyncio.ensure_future(slots.acquire(5))
    fourth = asyncio.ensure_future(slots.acquire(5))
    await asyncio.sleep(0.01)
    assert not third.done()
    slots.release()
    assert await third
    assert not fourth.done()
    slots.release()
    assert await fourth


async def test_a_waiter_gives_up_after_its_time_out() -> None:
    slots = Slots(1)
    assert await slots.acquire(1)
    assert not await slots.acquire(0.05)
    slots.release()
    assert await slots.acquire(0.05), "the slot freed after a time-out is not free"


async def test_a_slot_handed_as_the_time_runs_out_is_kept_or_passed_on() -> None:
    # The case that leaves asyncio.Semaphore stuck on Python 3.9: release and time-out
    # in the same turn of the loop.
    slots = Slots(1)
    assert await slots.acquire(1)
    waiter = asyncio.ensure_future(slots.acquire(0.05))
    await asyncio.sleep(0.04)
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, slots.release)
    got = await waiter
    if got:
        slots.release()
    # Whatever happened, exactly one slot is free again: one acquire at once, not two.
    assert await slots.acquire(0.01)
    assert not await slots.acquire(0.01)


async def test_a_cancelled_waiter_does_not_take_a_slot_with_it() -> None:
    slots = Slots(1)
    assert await slots.acquire(1)
    waiter = asyncio.ensure_future(slots.acquire(5))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.sleep(0.01)
    slots.release()
    assert await slots.acquire(0.01)
