"""Quota refusals, counted in memory and ledgered as one row per principal per window.

A flood is exactly when refusals are many, so ledgering each would let one runaway
client flood the ledger too. Like ``auth.failed``, the counts are drained periodically
into one ``quota.refused`` row per refused principal (counts by limit and by secret);
if the ledger cannot take them, they go back into the next window.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from broker.auth.principal import Principal
from broker.ledger import Ledger, NewEvent
from broker.metrics import Metrics

__all__ = ["RefusalTally", "flush_refusals"]

# Distinct principals tracked per window; beyond it, refusals are folded into one row
# without a subject (memory stays bounded whatever the flood looks like).
_MAX_PRINCIPALS = 10_000
_OVERFLOW = ("", "")


@dataclass
class _Counts:
    by_limit: Counter[str] = field(default_factory=Counter)
    by_secret: Counter[str] = field(default_factory=Counter)

    def add(self, other: _Counts) -> None:
        self.by_limit.update(other.by_limit)
        self.by_secret.update(other.by_secret)


class RefusalTally:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._counts: dict[tuple[str, str], _Counts] = {}
        self._since = datetime.now(UTC)

    def count(self, principal: Principal, limit: str, secret: str | None) -> None:
        """One refusal of ``principal`` by ``limit`` (for ``secret``, if one was asked)."""
        self._metrics.quota_refusals.labels(limit, principal.kind).inc()
        key: tuple[str, str] = (principal.subject, principal.kind)
        if key not in self._counts and len(self._counts) >= _MAX_PRINCIPALS:
            key = _OVERFLOW
        counts = self._counts.setdefault(key, _Counts())
        counts.by_limit[limit] += 1
        if secret is not None:
            counts.by_secret[secret[:128]] += 1

    def drain(self) -> tuple[dict[tuple[str, str], _Counts], datetime, datetime]:
        counts, start, now = self._counts, self._since, datetime.now(UTC)
        self._counts, self._since = {}, now
        return counts, start, now

    def give_back(self, counts: dict[tuple[str, str], _Counts], start: datetime) -> None:
        for key, c in counts.items():
            self._counts.setdefault(key, _Counts()).add(c)
        self._since = min(self._since, start)


async def flush_refusals(ledger: Ledger, tally: RefusalTally, metrics: Metrics) -> None:
    """One ``quota.refused`` row per principal refused since the last flush; the gauge of
    principals at each limit set from the window. Counts not written go back."""
    counts, start, end = tally.drain()
    for limit in ("rate_limited", "live_grants", "elevation_requests", "backend_busy"):
        at_limit = sum(1 for c in counts.values() if c.by_limit[limit])
        metrics.quota_principals_at_limit.labels(limit).set(at_limit)
    if not counts:
        return
    window = {"window_start": start.isoformat(), "window_end": end.isoformat()}

    async def one(key: tuple[str, str], c: _Counts) -> None:
        subject, kind = key
        await ledger.append(
            NewEvent(
                event="quota.refused",
                outcome="refused",
                subject=subject or None,
                subject_kind=kind or None,
                body={
                    **window,
                    "total": sum(c.by_limit.values()),
                    "by_limit": dict(c.by_limit),
                    "by_secret": dict(c.by_secret),
                    **({"overflow": "principals beyond the per-window cap"} if not subject else {}),
                },
            )
        )

    results = await asyncio.gather(*(one(k, c) for k, c in counts.items()), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        failed = {k: c for (k, c), r in zip(counts.items(), results, strict=True) if r is not None}
        tally.give_back(failed, start)
        raise errors[0]
