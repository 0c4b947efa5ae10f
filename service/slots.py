"""A fixed number of slots that tasks wait for in turn, each for a bounded time.

Not asyncio.Semaphore with wait_for: on Python 3.9, a waiter that is woken and times
out in the same turn of the loop can leave the semaphore believing a wake-up is still
due, and later acquirers then wait although slots are free (CPython gh-90155).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Deque


class Slots:
    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: Deque[asyncio.Future[None]] = deque()

    async def acquire(self, timeout: float) -> bool:
        """True once a slot is the caller's (it must `release` it), False after `timeout`."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await asyncio.wait_for(asyncio.shield(turn), timeout)
        except asyncio.TimeoutError:
            pass
        except BaseException:  # cancelled while waiting: pass on a slot handed meanwhile
            self._give_up(turn)
            raise
        if turn.done():  # handed a slot, possibly in the very turn the time ran out
            return True
        self._give_up(turn)
        return False

    def release(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot goes to the next waiter as it is
                return
        self._free += 1

    def _give_up(self, turn: asyncio.Future[None]) -> None:
        if turn.done() and not turn.cancelled():
            self.release()  # it was handed to us: hand it on
            return
        turn.cancel()
        if turn in self._waiters:
            self._waiters.remove(turn)
