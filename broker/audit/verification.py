"""Ledger verifications on demand, and the last one this replica ran.

``GET /v1/audit/verify`` and the console's "verify now" button are *incremental*: they
start at the newest verified head (a note this broker signed after an earlier clean
verification) and check only the rows after it, so an auditor polling the endpoint costs
the rows appended since, not the ledger's length. The first call on a ledger, or one whose
head no longer checks out, verifies in full (the report says so in ``mode``/``notes``).
A clean run records its newest checkpoint as the next start.

``POST /v1/audit/verify/full`` (admin) re-verifies everything, one at a time across all
replicas (a PostgreSQL advisory lock): a second request while one runs gets 409.

Calls that arrive while an incremental run is going wait for it and share its report.
``last`` is this replica's memory; counted in ``broker_ledger_verifications_total``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from broker.errors import Conflict
from broker.ledger import (
    CheckpointSigner,
    CheckpointVerifier,
    Ledger,
    VerifyReport,
    record_verified_head,
    verify_ledger,
)
from broker.metrics import Metrics

__all__ = ["FULL_VERIFY_LOCK", "LedgerVerifications", "Verification", "VerificationRunning"]

# Advisory lock key held by the one full verification running in the deployment.
FULL_VERIFY_LOCK = 0x66756C6C766679  # "fullvfy"


class VerificationRunning(Conflict):
    code = "verification_running"


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
        self.signer: CheckpointSigner | None = None  # set once the key is loaded
        # Where worker processes connect for long scans (set with the ledger).
        self.dsn: str | None = None
        self.sslrootcert: Path | None = None
        self.last: Verification | None = None

    async def run(
        self, ledger: Ledger, verifier: CheckpointVerifier, *, requested_by: str
    ) -> Verification:
        """Verify what is new since the last verified head (or join the run going on)."""
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(
                self._verify(ledger, verifier, requested_by, full=False)
            )
        # Shielded: a caller that goes away does not cancel the scan others wait for.
        return await asyncio.shield(self._running)

    async def run_full(
        self, ledger: Ledger, verifier: CheckpointVerifier, *, requested_by: str
    ) -> Verification:
        """Re-verify every row; VerificationRunning if another full run holds the lock."""
        return await asyncio.shield(
            asyncio.ensure_future(self._verify(ledger, verifier, requested_by, full=True))
        )

    async def _verify(
        self, ledger: Ledger, verifier: CheckpointVerifier, requested_by: str, *, full: bool
    ) -> Verification:
        started = datetime.now(UTC)
        async with ledger.pool.acquire() as conn:
            if full and not await conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", FULL_VERIFY_LOCK
            ):
                raise VerificationRunning(
                    "a full verification is already running; retry when it finishes"
                )
            try:
                report = await verify_ledger(
                    conn,
                    verifier=verifier,
                    origin=ledger.origin,
                    mode="full" if full else "incremental",
                    workers=os.cpu_count() or 1,
                    dsn=self.dsn,
                    sslrootcert=self.sslrootcert,
                )
                if self.signer is not None:
                    await record_verified_head(conn, report, self.signer, ledger.origin)
            finally:
                if full:
                    await conn.execute("SELECT pg_advisory_unlock($1)", FULL_VERIFY_LOCK)
        self._metrics.ledger_verifications.labels("ok" if report.ok else "failed").inc()
        done = Verification(started, datetime.now(UTC), requested_by, report)
        self.last = done
        return done
