"""Whole-ledger verifications on demand, and the last one this replica ran.

``GET /v1/audit/verify`` and the console's "verify now" button both call ``run``: the
same ``verify_ledger`` over the whole chain and its signed checkpoints, counted in
``broker_ledger_verifications_total``. A verification reads every row, so it is never run
by merely looking at a page: the console's ledger page shows ``last`` (when, who asked,
the report) and offers the button. Calls that arrive while one runs wait for it and share
its report instead of starting another scan. ``last`` is this replica's memory (another
replica answers with its own, or none after a restart); verifications write no ledger row.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from broker.ledger import CheckpointVerifier, Ledger, VerifyReport, verify_ledger
from broker.metrics import Metrics

__all__ = ["LedgerVerifications", "Verification"]


@dataclass(frozen=True)
class Verification:
    started_at: datetime
    finished_at: datetime
    requested_by: str
    report: VerifyReport

    @property
    def seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


class LedgerVerifications:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._running: asyncio.Future[Verification] | None = None
        self.last: Verification | None = None

    async def run(
        self, ledger: Ledger, verifier: CheckpointVerifier, *, requested_by: str
    ) -> Verification:
        """Verify the whole ledger now (or join the verification already running)."""
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._verify(ledger, verifier, requested_by))
        # Shielded: a caller that goes away does not cancel the scan others wait for.
        return await asyncio.shield(self._running)

    async def _verify(
        self, ledger: Ledger, verifier: CheckpointVerifier, requested_by: str
    ) -> Verification:
        started = datetime.now(UTC)
        async with ledger.pool.acquire() as conn:
            report = await verify_ledger(conn, verifier=verifier, origin=ledger.origin)
        self._metrics.ledger_verifications.labels("ok" if report.ok else "failed").inc()
        done = Verification(started, datetime.now(UTC), requested_by, report)
        self.last = done
        return done
