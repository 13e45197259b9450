"""The batching ledger writer: the only code that appends to ``ledger.events``.

One writer task per replica drains a bounded queue into one INSERT statement per batch
(its own transaction, ``synchronous_commit`` on). Each caller's future resolves only
after COMMIT: a caller that got an ``Appended`` back knows its row is durable.

Two paths (see ``_commit``): the fast path chains the batch on the head this writer last
committed, in one round trip; the locked path takes ``pg_advisory_xact_lock(LEDGER_LOCK)``,
reads the head from the table, and checks dedupe/guard keys — used when another replica
appended in between, at start, for events that must not be written twice (dedupe keys),
and when the fast path's own guard check found a guard key present.

Invariant: seq is gapless and every row's prev_hash is its predecessor's hash — enforced
again by the seq primary key and the ``check_chain`` trigger, so neither a bug here nor two
replicas racing can fork the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from broker.errors import LedgerUnavailable

from .chain import GENESIS, canonical_row, canonical_time, chain_hash
from .events import NewEvent
from .tree import RecentBlocks

__all__ = ["LEDGER_LOCK", "Appended", "LedgerWriter"]

_log = logging.getLogger(__name__)

# Advisory lock key that serialises chain extension across replicas ("ledger" in ASCII).
LEDGER_LOCK = 0x6C6564676572

# One statement for the whole batch (one round trip), its rows as one JSON array of
# arrays (one text parameter: asyncpg checks each element of an array parameter against
# three collections.abc classes, a tenth of the broker's CPU per issuance with eighteen
# column arrays). jsonb_array_elements walks the parsed array once; subscripting a text[]
# parameter (r[i][k]) instead finds each element by walking every element before it, so
# a batch cost O(rows²): 18 µs per row at 32 rows, 185 at 512 (bench/ledger_writers.py).
# PostgreSQL parses each value as it parses any literal (timestamps in the canonical
# spelling, hashes in hex, the body as the JSON text jsonb would receive anyway). Rows go
# in array order, which check_chain needs, hence ORDER BY i. ($1 is text: the pool's jsonb
# codec would encode the JSON text as one JSON string.)
_INSERT = """
INSERT INTO ledger.events (seq, recorded_at, event, replica, subject, subject_kind, secret,
    role, policy_version, grant_id, lease_id, expires_at, outcome, request_id, body,
    dedupe_key, prev_hash, hash)
SELECT (r->>0)::bigint, (r->>1)::timestamptz, r->>2, r->>3, r->>4, r->>5, r->>6, r->>7,
    r->>8, (r->>9)::uuid, r->>10, (r->>11)::timestamptz, r->>12, r->>13, (r->>14)::jsonb,
    r->>15, decode(r->>16, 'hex'), decode(r->>17, 'hex')
FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS batch(r, i)
ORDER BY i
"""
_fast_json = msgspec.json.Encoder().encode


def _body_text(body: Mapping[str, Any]) -> str:
    """The body as JSON text for jsonb (big integers included: msgspec spells them)."""
    return _fast_json(body if type(body) is dict else dict(body)).decode()


def _batch_json(rows: list[list[str | None]]) -> str:
    return _fast_json(rows).decode()


# The newest row: recorded_at never runs backwards (check_chain), so the primary key
# (recorded_at, seq) finds it in the newest partition.
_HEAD = (
    "SELECT seq, hash, recorded_at FROM ledger.events ORDER BY recorded_at DESC, seq DESC LIMIT 1"
)
# The locked path's one read, under the lock: the head (NULLs on an empty ledger) and
# which of the batch's dedupe/guard keys are taken. One round trip less while every other
# writer waits on the lock. (Not in the lock's own statement: a statement sees only what
# committed before it started, and the lock may be granted long after.)
_HEAD_AND_TAKEN = """
SELECT head.seq, head.hash, head.recorded_at, ARRAY(
    SELECT dedupe_key FROM ledger.events WHERE dedupe_key = ANY($1::text[])) AS taken
FROM (VALUES (1)) AS one(x) LEFT JOIN (
    SELECT seq, hash, recorded_at FROM ledger.events ORDER BY recorded_at DESC, seq DESC
    LIMIT 1) AS head ON true
"""

# After a conflict with another replica, take the lock path for at least this long.
_MIN_CONTENDED_SECONDS = 1.0
# Dedupe keys this writer committed, remembered for fast-path guard checks.
_OWN_KEYS_MAX = 100_000
_LOCKED_ATTEMPTS = 5


@dataclass(frozen=True)
class Appended:
    """Result of an append. ``duplicate``: the dedupe_key existed; ``refused``: a
    ``requires_absent`` key existed. In both cases nothing was written."""

    seq: int | None
    recorded_at: datetime | None
    hash: bytes | None
    duplicate: bool = False
    refused: bool = False


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
        contended_seconds: float = _MIN_CONTENDED_SECONDS,
    ) -> None:
        self._pool = pool
        self._replica = replica
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self.queue_capacity = max_queue
        self._commit_timeout = commit_timeout
        self._on_commit = on_commit  # (batch size, seconds, head seq) for metrics
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._head: tuple[int, bytes] | None = None  # (seq, hash) this writer last committed
        self._contended_until = 0.0
        # Guard keys are checked on the locked path only. The fast path is safe without:
        # a guard row another replica commits moves the head, so this writer's next batch
        # conflicts and the writer stays on the locked path for contended_seconds (set
        # longer than the blocklist refresh, after which authentication refuses the
        # subject anyway); a guard row this writer committed itself is in _own_keys.
        self._contended_seconds = max(_MIN_CONTENDED_SECONDS, contended_seconds)
        self._own_keys: OrderedDict[str, None] = OrderedDict()
        self._last_time = datetime.min.replace(tzinfo=UTC)
        self.head_seq = 0
        # The tree nodes of blocks this writer committed whole (the checkpointer's input).
        self.recent_blocks = RecentBlocks()
        self._rows: list[tuple[int, bytes]] = []  # (seq, canonical bytes) of the batch
        # Contention between replicas, as running totals (metrics, bench/ledger_writers.py):
        # batches committed on the locked path, and statements the database refused
        # because another replica had moved the head (each one redone under the lock).
        self.locked_batches = 0
        self.conflicts = 0

    @property
    def queue_depth(self) -> int:
        """Events accepted and not yet committed or failed."""
        return self._queue.qsize()

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
        await self._drop_connection()
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
            async with asyncio.timeout(self._commit_timeout):  # no extra task, unlike wait_for
                results = await self._commit([ev for ev, _ in live])
        except asyncio.CancelledError:
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(LedgerUnavailable("ledger writer stopped"))
            raise
        except Exception as e:  # any failure: every caller in the batch fails closed
            _log.warning("ledger batch of %d failed: %s: %s", len(live), type(e).__name__, e)
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(LedgerUnavailable("ledger write failed"))
            return
        for (_, fut), result in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(result)
        if self._on_commit is not None:
            written = sum(1 for r in results if r.seq is not None)
            self._on_commit(written, time.perf_counter() - started, self.head_seq)

    async def _commit(self, events: list[NewEvent]) -> list[Appended]:
        """Commit one batch. Fast path: one INSERT statement (its own transaction) chained
        on the head this writer last committed; guard keys are checked by that same statement.
        Locked path: when the batch carries dedupe keys, a guard key is present, the head
        is unknown, or another replica appended recently.

        The fast path needs no lock because the database refuses a fork by itself: seq is
        the primary key and ``check_chain`` demands the visible head as prev_hash, so a
        batch built on a stale head fails whole and is redone on the locked path.
        """
        conn = await self._connection()
        try:
            results = await self._commit_on(conn, events)
        except BaseException:
            await self._drop_connection(broken=True)
            raise
        for seq, row in self._rows:  # committed now: only then do they count for the tree
            self.recent_blocks.add(seq, row)
        return results

    async def _commit_on(self, conn: asyncpg.Connection, events: list[NewEvent]) -> list[Appended]:
        if (
            self._head is not None
            and time.monotonic() >= self._contended_until
            and not any(ev.dedupe_key for ev in events)
            and not any(k in self._own_keys for ev in events for k in ev.requires_absent)
        ):
            try:
                return await self._insert(conn, events, self._head, set())
            except (asyncpg.UniqueViolationError, asyncpg.RaiseError):
                # Another replica moved the head: use the lock for a while.
                self.conflicts += 1
                self._head = None
                self._contended_until = time.monotonic() + self._contended_seconds
        # The lock orders lock-path writers; a fast-path writer on another replica can
        # still slip in between, so a conflict here is retried with a fresh head.
        for attempt in range(_LOCKED_ATTEMPTS):
            try:
                results = await self._commit_locked(conn, events)
            except (asyncpg.UniqueViolationError, asyncpg.RaiseError):
                self.conflicts += 1
                self._contended_until = time.monotonic() + self._contended_seconds
                if attempt == _LOCKED_ATTEMPTS - 1:
                    raise
            else:
                self.locked_batches += 1
                return results
        raise AssertionError("unreachable")

    async def _commit_locked(
        self, conn: asyncpg.Connection, events: list[NewEvent]
    ) -> list[Appended]:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LEDGER_LOCK)
            keys = {k for ev in events for k in (ev.dedupe_key, *ev.requires_absent) if k}
            head = await conn.fetchrow(_HEAD_AND_TAKEN, list(keys))
            start = (head["seq"], bytes(head["hash"])) if head["seq"] else (0, GENESIS)
            if head["seq"]:  # never record a row before its predecessor (check_chain)
                self._last_time = max(self._last_time, head["recorded_at"])
            return await self._insert(conn, events, start, set(head["taken"]))

    async def _insert(
        self,
        conn: asyncpg.Connection,
        events: list[NewEvent],
        start: tuple[int, bytes],
        taken: set[str],
    ) -> list[Appended]:
        """Hash ``events`` onto ``start`` and insert them in one statement.

        ``taken`` holds the dedupe keys already in the ledger (updated as the batch adds
        its own): an event whose dedupe key is taken is a duplicate, one whose
        ``requires_absent`` key is taken is refused; neither is written.
        """
        seq, prev = start
        # Replicas' clocks are NTP-close, not equal; never let this writer's run backwards.
        now = max(datetime.now(UTC), self._last_time)
        now_text = canonical_time(now)  # one spelling for the whole batch
        rows: list[list[str | None]] = []
        results: list[Appended] = []
        self._rows = []
        written_keys: list[str] = []
        for ev in events:
            if ev.dedupe_key and ev.dedupe_key in taken:
                results.append(Appended(None, None, None, duplicate=True))
                continue
            if any(k in taken for k in ev.requires_absent):
                results.append(Appended(None, None, None, refused=True))
                continue
            if ev.dedupe_key:
                taken.add(ev.dedupe_key)
                written_keys.append(ev.dedupe_key)
            seq += 1
            grant_id = str(ev.grant_id) if ev.grant_id else None
            expires_at = canonical_time(ev.expires_at)
            replica = ev.replica or self._replica
            row = canonical_row(
                seq=seq,
                recorded_at=now_text,
                event=ev.event,
                replica=replica,
                subject=ev.subject,
                subject_kind=ev.subject_kind,
                secret=ev.secret,
                role=ev.role,
                policy_version=ev.policy_version,
                grant_id=grant_id,
                lease_id=ev.lease_id,
                expires_at=expires_at,
                outcome=ev.outcome,
                request_id=ev.request_id,
                body=ev.body,
                dedupe_key=ev.dedupe_key,
            )
            digest = chain_hash(prev, row)
            self._rows.append((seq, row))
            rows.append([
                str(seq), now_text, ev.event, replica, ev.subject, ev.subject_kind,
                ev.secret, ev.role, ev.policy_version, grant_id, ev.lease_id, expires_at,
                ev.outcome, ev.request_id, _body_text(ev.body), ev.dedupe_key,
                prev.hex(), digest.hex(),
            ])  # fmt: skip
            results.append(Appended(seq, now, digest))
            prev = digest
        if rows:
            await conn.execute(_INSERT, _batch_json(rows))
        for key in written_keys:
            self._own_keys[key] = None
        while len(self._own_keys) > _OWN_KEYS_MAX:
            self._own_keys.popitem(last=False)

        self._head = (seq, prev)
        self._last_time = now
        self.head_seq = seq
        return results

    async def _connection(self) -> asyncpg.Connection:
        # The writer keeps one connection: no pool acquire/reset round trips per batch.
        if self._conn is not None and _is_dead(self._conn):
            # The server ended it while idle (restart, terminated backend): nothing of the
            # next batch was sent on it yet, so a fresh connection is safe.
            await self._drop_connection()
        if self._conn is None:
            conn = await self._pool.acquire()
            self._conn = conn
        return self._conn

    async def _drop_connection(self, *, broken: bool = False) -> None:
        """Give the connection back. ``broken`` (a batch failed or was cancelled on it):
        close it first, for its state is unknown, and a graceful release would wait for
        the server to confirm the cancelled statement: with a server that vanished (a
        failover), until a timeout, while every request waits on this writer."""
        conn, self._conn, self._head = self._conn, None, None
        if conn is not None:
            if broken:
                conn.terminate()
            with contextlib.suppress(Exception):
                await self._pool.release(conn)


def _is_dead(conn: asyncpg.Connection) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # a pool proxy detached from its connection
        return True
