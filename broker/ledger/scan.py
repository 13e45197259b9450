"""Scanning a run of ledger rows: each row's content against its hashes, and the run's
Merkle nodes. The unit of work of ``verify_ledger``, in-process or in worker processes.

Each row's check depends only on the row itself and its stored predecessor hash, so a
ledger splits into runs verified independently; the caller joins them (a run's first
``prev_hash`` must be the previous run's last hash, and its Merkle nodes continue the
previous run's ``CompactRange``). Rows stream through a server-side cursor in one
repeatable-read snapshot (the caller's, exported to the workers), so memory stays flat.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from .chain import canonical_row, chain_hash
from .merkle import CompactRange, leaf_hash
from .store import connect_one

__all__ = [
    "ROW_COLUMNS",
    "RunResult",
    "join_runs",
    "scan_rows",
    "scan_run",
    "scan_run_in_process",
]

ROW_COLUMNS = (
    "seq, recorded_at, event, replica, subject, subject_kind, secret, role, policy_version,"
    " grant_id, lease_id, expires_at, outcome, request_id, body, dedupe_key, prev_hash, hash"
)
_MAX_PROBLEMS = 50


@dataclass
class RunResult:
    """What one run ``(lo, hi]`` of seq showed. Nodes are ``(level, index, hash)``."""

    lo: int
    hi: int
    rows: int = 0
    first_prev: bytes | None = None
    last_seq: int = 0
    last_hash: bytes | None = None
    first_unsigned_at: datetime | None = None
    bad: list[int] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)
    hash_at: dict[int, bytes] = field(default_factory=dict)  # stored hash at wanted sizes
    partial_at: dict[int, list[tuple[int, int, bytes]]] = field(default_factory=dict)
    end_nodes: list[tuple[int, int, bytes]] = field(default_factory=list)

    def fail(self, seq: int, problem: str) -> None:
        self.bad.append(seq)
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append((seq, problem))


def scan_rows(
    rows: Iterable[Any], lo: int, hi: int, wanted: frozenset[int], unsigned_from: int
) -> RunResult:
    """Check rows ``seq in (lo, hi]`` (asyncpg records in ROW_COLUMNS order, or tuples).

    ``wanted``: sizes whose stored hash and partial Merkle range the caller needs (the
    checkpoint sizes); ``unsigned_from``: the first seq no signed checkpoint covers.
    """
    out = RunResult(lo, hi)
    tree = CompactRange(lo, lo)
    expected = lo + 1
    prev_stored: bytes | None = None
    for r in rows:
        seq = r[0]
        if seq != expected:
            out.fail(expected, f"sequence gap: expected {expected}, found {seq}")
            expected = seq
        prev_hash, stored = bytes(r[16]), bytes(r[17])
        if out.rows == 0:
            out.first_prev = prev_hash
        elif prev_hash != prev_stored:
            out.fail(seq, "prev_hash does not match the previous row's hash")
        payload = canonical_row(
            seq=seq,
            recorded_at=r[1],
            event=r[2],
            replica=r[3],
            subject=r[4],
            subject_kind=r[5],
            secret=r[6],
            role=r[7],
            policy_version=r[8],
            grant_id=r[9],
            lease_id=r[10],
            expires_at=r[11],
            outcome=r[12],
            request_id=r[13],
            body=r[14],
            dedupe_key=r[15],
        )
        if chain_hash(prev_hash, payload) != stored:
            out.fail(seq, "row content does not match its hash (edited)")
        tree.push_leaf(leaf_hash(payload))
        if seq == unsigned_from:
            out.first_unsigned_at = r[1]
        if seq in wanted:
            out.hash_at[seq] = stored
            out.partial_at[seq] = list(tree.nodes)
        prev_stored = stored
        out.rows += 1
        out.last_seq = seq
        expected += 1
    out.last_hash = prev_stored
    out.end_nodes = list(tree.nodes)
    if out.rows and out.last_seq != hi:
        out.fail(out.last_seq + 1, f"sequence gap: rows after {out.last_seq} are missing")
    elif not out.rows and hi > lo:
        out.fail(lo + 1, f"rows {lo + 1}..{hi} are missing")
    return out


async def fetch_run(conn: asyncpg.Connection, lo: int, hi: int) -> list[asyncpg.Record]:
    """Rows ``(lo, hi]`` in seq order (callers keep ``hi - lo`` to one batch)."""
    query = f"SELECT {ROW_COLUMNS} FROM ledger.events WHERE seq > $1 AND seq <= $2 ORDER BY seq"  # noqa: S608
    rows: list[asyncpg.Record] = await conn.fetch(query, lo, hi)
    return rows


async def scan_run(
    conn: asyncpg.Connection,
    lo: int,
    hi: int,
    wanted: frozenset[int],
    unsigned_from: int,
    batch: int = 20_000,
) -> RunResult:
    """Scan rows ``(lo, hi]`` a batch at a time (memory holds one batch), joined here."""
    runs = []
    pos = lo
    while pos < hi:
        stop = min(hi, pos + batch)
        runs.append(scan_rows(await fetch_run(conn, pos, stop), pos, stop, wanted, unsigned_from))
        pos = stop
    return join_runs(lo, hi, runs)


async def _scan_remote(
    dsn: str,
    sslrootcert: str | None,
    snapshot: str | None,
    lo: int,
    hi: int,
    wanted: frozenset[int],
    unsigned_from: int,
    batch: int,
) -> RunResult:
    conn = await connect_one(dsn, sslrootcert=Path(sslrootcert) if sslrootcert else None)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            if snapshot is not None:  # the coordinator's snapshot: every run sees one ledger
                await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            return await scan_run(conn, lo, hi, wanted, unsigned_from, batch)
    finally:
        await conn.close()


def join_runs(lo: int, hi: int, runs: list[RunResult]) -> RunResult:
    """One result for consecutive runs (the runs' own seams checked here)."""
    out = RunResult(lo, hi)
    tree = CompactRange(lo, lo)
    for run in runs:
        if out.rows and run.rows and run.first_prev != out.last_hash:
            out.fail(run.lo + 1, "prev_hash does not match the previous row's hash")
        for size, nodes in run.partial_at.items():
            joined = tree.copy()
            for node in nodes:
                joined.push_node(*node)
            out.partial_at[size] = list(joined.nodes)
        for node in run.end_nodes:
            tree.push_node(*node)
        if out.rows == 0 and run.rows:
            out.first_prev = run.first_prev
        if run.rows:
            out.last_seq, out.last_hash = run.last_seq, run.last_hash
        out.rows += run.rows
        out.first_unsigned_at = out.first_unsigned_at or run.first_unsigned_at
        out.hash_at.update(run.hash_at)
        out.bad.extend(run.bad)
        out.problems.extend(run.problems[: max(0, _MAX_PROBLEMS - len(out.problems))])
    out.end_nodes = list(tree.nodes)
    return out


def scan_run_in_process(args: tuple[Any, ...]) -> RunResult:
    """Worker-process entry point (picklable arguments, see ``_scan_remote``)."""
    return asyncio.run(_scan_remote(*args))
