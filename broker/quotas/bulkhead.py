"""Bulkheads: a cap on concurrent calls to one Vault engine, with a bounded queue.

Minting a database login is a ``CREATE ROLE`` in the database behind OpenBao: slow, and
under a flood it would hold every connection to Vault while KV reads wait behind it. Each
engine gets its own cap; a call beyond the cap waits in a queue of bounded length for a
bounded time, and beyond either it is shed at once with 503 ``backend_busy`` and a
``Retry-After``. Never an unbounded queue: a wait nobody bounded is an outage later.
"""

from __future__ import annotations

import asyncio
import math

from broker.errors import BackendBusy
from broker.metrics import Metrics

__all__ = ["Bulkhead"]


class Bulkhead:
    def __init__(
        self, engine: str, *, limit: int, queue: int, wait_seconds: float, metrics: Metrics
    ) -> None:
        self.engine = engine
        self.limit = limit
        self._queue = queue
        self._wait = wait_seconds
        self._slots = asyncio.Semaphore(limit)
        self._waiting = 0
        self._busy = 0
        self._shed_total = metrics.bulkhead_shed.labels(engine)
        # Read at scrape time: nothing to update on the hot path.
        metrics.bulkhead_in_use.labels(engine).set_function(lambda: self.in_use)
        metrics.bulkhead_waiting.labels(engine).set_function(lambda: self._waiting)

    @property
    def in_use(self) -> int:
        return self._busy

    @property
    def waiting(self) -> int:
        return self._waiting

    def _shed(self, why: str) -> BackendBusy:
        self._shed_total.inc()
        return BackendBusy(
            f"Vault's {self.engine} engine is busy ({why}); retry shortly",
            retry_after=max(1, math.ceil(self._wait)),
        )

    async def acquire(self) -> None:
        """Take one of the engine's slots (``release`` it after the call); raise
        BackendBusy when none comes within the wait, or the queue is full."""
        if self._slots.locked():
            if self._waiting >= self._queue:
                raise self._shed(f"{self.limit} calls in flight, {self._waiting} waiting")
            self._waiting += 1
            try:
                async with asyncio.timeout(self._wait):
                    await self._slots.acquire()
            except TimeoutError:
                raise self._shed(f"no slot within {self._wait:g}s") from None
            finally:
                self._waiting -= 1
        else:
            await self._slots.acquire()
        self._busy += 1

    def release(self) -> None:
        self._busy -= 1
        self._slots.release()
