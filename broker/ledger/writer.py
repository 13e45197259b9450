"""The batching ledger writer: the only code that appends to ``ledger.events``.

One writer task per replica drains a bounded queue into one transaction per batch. Each
batch takes ``pg_advisory_xact_lock(LEDGER_LOCK)``, reads the chain head from the table
(other replicas append too), skips events whose ``dedupe_key`` already exists, hashes and
inserts, and commits with ``synchronous_commit`` on. Each caller's future resolves only
after COMMIT: a caller that got an ``Appended`` back knows its row is durable.

Invariant: seq is gapless and every row's prev_hash is its predecessor's hash — checked
again by the ``check_chain`` trigger, so a bug here cannot fork the log silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from broker.errors import LedgerUnavailable

from .chain import GENESIS, canonical_row, chain_hash
from .events import NewEvent

__all__ = ["LEDGER_LOCK", "Appended", "LedgerWriter"]

_log = logging.getLogger(__name__)

# Advisory lock key that serialises chain extension across replicas ("ledger" in ASCII).
LEDGER_LOCK = 0x6C6564676572

_INSERT = """
INSERT INTO ledger.events (seq, recorded_at, event, replica, subject, subject_kind, secret,
    role, policy_version, grant_id, lease_id, expires_at, outcome, request_id, body,
    dedupe_key, prev_hash, hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
"""


@dataclass(frozen=True)
class Appended:
    """Result of an append. ``duplicate`` means the dedupe_key existed; nothing was written."""

    seq: int | None
    recorded_at: datetime | None
    hash: bytes | None
    duplicate: bool = False


_Item = tuple[NewEvent, "asyncio.Future[Appended]"]


class LedgerWriter:
    """Queue + single writer task. ``append`` is safe to call from any task."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        replica: str,
        max_batch: int = 512,
        max_queue: int = 10_000,
        commit_timeout: float = 5.0,
        on_commit: Callable[[int, float, int], None] | None = None,
    ) -> None:
        self._pool = pool
        self._replica = replica
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self._commit_timeout = commit_timeout
        self._on_commit = on_commit  # (batch size, seconds, head seq) for metrics
        self._task: asyncio.Task[None] | None = None
        self.head_seq = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def stop(self) -> None:
        """Drain what is queued (bounded by the commit timeout), then stop the task."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), self._commit_timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(LedgerUnavailable("broker is shutting down"))

    async def append(self, event: NewEvent) -> Appended:
        """Append one event; return after it committed.

        Raises LedgerUnavailable when the queue is full, the database is unreachable, or
        the commit did not finish within the timeout (the caller must then fail closed).
        """
        if self._task is None:
            raise LedgerUnavailable("ledger writer is not running")
        fut: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((event, fut))
        except asyncio.QueueFull:
            raise LedgerUnavailable("ledger backlog is full") from None
        return await fut

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write_batch(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write_batch(self, batch: list[_Item]) -> None:
        live = [(ev, fut) for ev, fut in batch if not fut.cancelled()]
        if not live:
            return
        started = time.perf_counter()
        try:
            results = await asyncio.wait_for(
                self._commit([ev for ev, _ in live]), self._commit_timeout
            )
        except asyncio.CancelledError:
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(LedgerUnavailable("ledger writer stopped"))
            raise
        except Exception as e:  # any failure: every caller in the batch fails closed
            _log.warning("ledger batch of %d failed: %s", len(live), type(e).__name__)
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(LedgerUnavailable("ledger write failed"))
            return
        for (_, fut), result in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(result)
        if self._on_commit is not None:
            self._on_commit(len(live), time.perf_counter() - started, self.head_seq)

    async def _commit(self, events: list[NewEvent]) -> list[Appended]:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LEDGER_LOCK)
            # One clock for every replica: the database's, read under the lock, so time
            # order and sequence order agree whatever the replicas' clocks say.
            head = await conn.fetchrow(
                "SELECT clock_timestamp() AS now, h.seq, h.hash FROM (SELECT 1) one"
                " LEFT JOIN (SELECT seq, hash FROM ledger.events ORDER BY seq DESC LIMIT 1) h"
                " ON true"
            )
            now = head["now"]
            seq, prev = (head["seq"], bytes(head["hash"])) if head["seq"] else (0, GENESIS)
            keys = [ev.dedupe_key for ev in events if ev.dedupe_key]
            taken: set[str] = set()
            if keys:
                rows = await conn.fetch(
                    "SELECT dedupe_key FROM ledger.events WHERE dedupe_key = ANY($1::text[])",
                    keys,
                )
                taken = {r["dedupe_key"] for r in rows}
            args: list[tuple[Any, ...]] = []
            results: list[Appended] = []
            for ev in events:
                if ev.dedupe_key and ev.dedupe_key in taken:
                    results.append(Appended(None, None, None, duplicate=True))
                    continue
                if ev.dedupe_key:
                    taken.add(ev.dedupe_key)
                seq += 1
                row = canonical_row(
                    seq=seq,
                    recorded_at=now,
                    event=ev.event,
                    replica=self._replica,
                    subject=ev.subject,
                    subject_kind=ev.subject_kind,
                    secret=ev.secret,
                    role=ev.role,
                    policy_version=ev.policy_version,
                    grant_id=ev.grant_id,
                    lease_id=ev.lease_id,
                    expires_at=ev.expires_at,
                    outcome=ev.outcome,
                    request_id=ev.request_id,
                    body=ev.body,
                    dedupe_key=ev.dedupe_key,
                )
                digest = chain_hash(prev, row)
                args.append(
                    (
                        seq,
                        now,
                        ev.event,
                        self._replica,
                        ev.subject,
                        ev.subject_kind,
                        ev.secret,
                        ev.role,
                        ev.policy_version,
                        ev.grant_id,
                        ev.lease_id,
                        ev.expires_at,
                        ev.outcome,
                        ev.request_id,
                        dict(ev.body),
                        ev.dedupe_key,
                        prev,
                        digest,
                    )
                )
                results.append(Appended(seq, now, digest))
                prev = digest
            if args:
                await conn.executemany(_INSERT, args)
        self.head_seq = seq
        return results
