"""Token buckets, one per (principal, scope), in memory: the issuance rate limit.

Pure apart from the clock (injected for tests). A bucket holds up to ``burst`` tokens and
refills at ``rate`` per second; each request takes one or is told how long until one is
there. A bucket also remembers whether its last request was refused (``refused_last``):
refused twice in a row is a client that did not wait as told. Buckets are per replica:
the deployment's effective rate is the sum over replicas (docs/operations.md says so);
sharing them through PostgreSQL would put a write on the hot path of every issuance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable

__all__ = ["TokenBuckets"]


class TokenBuckets:
    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000
    ) -> None:
        self._clock = clock
        self._max = max_buckets
        # key -> (tokens, stamp, whether the last take was refused)
        self._buckets: dict[Hashable, tuple[float, float, bool]] = {}

    def _level(self, key: Hashable, rate: float, burst: int, now: float) -> float:
        tokens, stamp, _ = self._buckets.get(key, (float(burst), now, False))
        return min(float(burst), tokens + (now - stamp) * rate)

    def take(self, key: Hashable, rate: float, burst: int) -> int:
        """Take a token: 0 if there was one, else whole seconds until there will be."""
        now = self._clock()
        tokens = self._level(key, rate, burst, now)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now, False)
            if len(self._buckets) > self._max:
                self._prune()
            return 0
        self._buckets[key] = (tokens, now, True)
        return max(1, math.ceil((1.0 - tokens) / rate))

    def refused_last(self, key: Hashable) -> bool:
        """Whether the last ``take`` of ``key`` was refused."""
        entry = self._buckets.get(key)
        return entry is not None and entry[2]

    def available(self, key: Hashable, rate: float, burst: int) -> float:
        """Tokens in the bucket now (``burst`` for a principal never seen)."""
        return self._level(key, rate, burst, self._clock())

    def _prune(self) -> None:
        # Idle buckets refill to full and a full bucket is the same as none: forget the
        # oldest half (a flood of distinct principals cannot grow memory without bound).
        ordered = sorted(self._buckets.items(), key=lambda kv: kv[1][1])
        for key, _ in ordered[: len(ordered) // 2]:
            del self._buckets[key]
