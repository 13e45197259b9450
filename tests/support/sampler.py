"""RSS and open file descriptors of one process over time, and the "flat" rule of the soak."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from dataclasses import dataclass, field

import psutil

__all__ = ["Sampler"]


@dataclass
class Sampler:
    """RSS (bytes) and open fd count of one process, sampled every ``interval`` seconds."""

    pid: int
    interval: float = 1.0
    rss: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        proc = psutil.Process(self.pid)
        self.rss.append(proc.memory_info().rss)
        self.fds.append(proc.num_fds())

    def start(self) -> None:
        async def loop() -> None:
            while True:
                with contextlib.suppress(psutil.Error):
                    self.sample()
                await asyncio.sleep(self.interval)

        self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def flatness(self, *, warmup: float = 0.25) -> tuple[float, float, int, int]:
        """(first-third median RSS, last-third median RSS, fds first, fds last) after warmup.

        The first ``warmup`` fraction of samples is dropped (imports, pools filling).
        """
        skip = int(len(self.rss) * warmup)
        rss, fds = self.rss[skip:], self.fds[skip:]
        third = max(1, len(rss) // 3)
        return (
            statistics.median(rss[:third]),
            statistics.median(rss[-third:]),
            int(statistics.median(fds[:third])),
            int(statistics.median(fds[-third:])),
        )
