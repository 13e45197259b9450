"""Periodic work each replica does: checkpoints, expiry, policy reload, auth-failure rows.

Each job is safe to run on every replica at once (the ledger lock and dedupe keys make
them idempotent), so there is no leader election to get wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from broker.errors import BrokerError, LedgerTampered
from broker.ledger import (
    CheckpointError,
    CheckpointSigner,
    CheckpointVerifier,
    Ledger,
    NewEvent,
)
from broker.metrics import Metrics
from broker.web.authn import Authenticator

__all__ = ["Checkpointer", "Periodic", "flush_auth_failures", "probe_dependencies"]

_log = logging.getLogger(__name__)


class Periodic:
    """Runs named coroutines every N seconds until ``stop()``; one failure never ends a job."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def every(self, seconds: float, name: str, job: Callable[[], Awaitable[object]]) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(seconds)
                try:
                    await job()
                except BrokerError as e:
                    _log.warning("%s: %s", name, e.message)
                except Exception:
                    _log.exception("%s failed", name)

        self._tasks.append(asyncio.create_task(loop(), name=name))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


class Checkpointer:
    """Signs the chain head periodically, anchored on what it signed before.

    The anchor — the newest checkpoint this broker signed — is kept in memory and, when
    ``witness_path`` is set, in a file outside the database, so a restart keeps it too.
    """

    def __init__(
        self,
        ledger: Ledger,
        signer: CheckpointSigner,
        metrics: Metrics,
        *,
        witness_path: Path | None,
    ) -> None:
        self._ledger = ledger
        self._signer = signer
        self._metrics = metrics
        self._witness = witness_path
        self._anchor: tuple[int, bytes] | None = None
        self._tamper_reported = False
        if witness_path is not None and witness_path.exists():
            verifier = CheckpointVerifier([signer.verifier_key()])
            try:
                cp = verifier.verify(witness_path.read_text(), origin=ledger.origin)
            except (CheckpointError, OSError) as e:
                raise ValueError(f"checkpoint witness {witness_path} is unusable: {e}") from e
            self._anchor = (cp.size, cp.head_hash)

    async def run_once(self) -> None:
        try:
            cp = await self._ledger.checkpoint(
                self._signer, anchors=[self._anchor] if self._anchor else []
            )
        except LedgerTampered:
            if not self._tamper_reported:  # one incident, however often we retry
                self._tamper_reported = True
                self._metrics.ledger_tamper_detected.inc()
            _log.error("LEDGER TAMPERING SUSPECTED: checkpoint refused; run `broker verify`")
            raise
        if cp is None:
            return
        self._anchor = (cp.size, cp.head_hash)
        self._metrics.ledger_checkpoint_seq.set(cp.size)
        if self._witness is not None:
            tmp = self._witness.with_suffix(".tmp")
            tmp.write_text(self._signer.sign(cp))
            tmp.replace(self._witness)  # atomic: a crash never leaves half a note


async def flush_auth_failures(ledger: Ledger, tally: Authenticator) -> None:
    """One ``auth.failed`` row per interval with counts per reason (nothing if none).

    If the ledger write fails the counts go back to the tally for the next window.
    """
    counts, start, end = tally.drain()
    if not counts:
        return
    try:
        await ledger.append(
            NewEvent(
                event="auth.failed",
                outcome="rejected",
                body={
                    "window_start": start.isoformat(),
                    "window_end": end.isoformat(),
                    "total": sum(counts.values()),
                    "by_reason": counts,
                },
            )
        )
    except BrokerError:
        tally.give_back(counts, start)
        raise


async def probe_dependencies(
    probes: dict[str, Callable[[], Awaitable[None]]], metrics: Metrics, timeout: float
) -> dict[str, bool]:
    """Ping each dependency; set ``broker_dependency_up``; return name -> up."""

    async def one(name: str, probe: Callable[[], Awaitable[None]]) -> tuple[str, bool]:
        try:
            await asyncio.wait_for(probe(), timeout)
            return name, True
        except (BrokerError, TimeoutError):
            return name, False

    results = dict(await asyncio.gather(*(one(n, p) for n, p in probes.items())))
    for name, up in results.items():
        metrics.dependency_up.labels(name).set(1 if up else 0)
    return results
