"""Read queries for the evidence package: a period's rows, its checkpoints, its policies.

Every function takes a connection the caller has put in a read-only REPEATABLE READ
transaction, so bounds, rows, checkpoints and policies all come from one snapshot.
Rows are streamed with a server-side cursor: memory is bounded by ``prefetch`` rows,
whatever the period.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg

__all__ = [
    "PeriodBounds",
    "checkpoint_notes",
    "covering_checkpoint",
    "elevation_request_floor",
    "period_bounds",
    "policy_versions_in_force",
    "stream_rows",
]

# Columns in table order; the caller turns each record into the package event record.
_COLUMNS = (
    "seq, recorded_at, event, replica, subject, subject_kind, secret, role, policy_version,"
    " grant_id, lease_id, expires_at, outcome, request_id, body, dedupe_key, prev_hash, hash"
)


@dataclass(frozen=True)
class PeriodBounds:
    """The contiguous seq range of a period: every row recorded in [from, to)."""

    first_seq: int
    last_seq: int

    @property
    def rows(self) -> int:
        return self.last_seq - self.first_seq + 1


async def period_bounds(
    conn: asyncpg.Connection, period_from: datetime, period_to: datetime
) -> PeriodBounds | None:
    """First and last seq recorded in [from, to); None if the period has no rows.

    Replica clocks are close, not equal, so a row inside the range may carry a time just
    outside the period: the range is taken whole (a package never has holes in seq).
    """
    r = await conn.fetchrow(
        "SELECT min(seq) AS first, max(seq) AS last FROM ledger.events"
        " WHERE recorded_at >= $1 AND recorded_at < $2",
        period_from,
        period_to,
    )
    if r is None or r["first"] is None:
        return None
    return PeriodBounds(int(r["first"]), int(r["last"]))


async def covering_checkpoint(conn: asyncpg.Connection, last_seq: int) -> int | None:
    """Size of the first checkpoint at or after ``last_seq`` (None: not signed yet)."""
    size = await conn.fetchval(
        "SELECT size FROM ledger.checkpoints WHERE size >= $1 ORDER BY size LIMIT 1", last_seq
    )
    return int(size) if size is not None else None


async def elevation_request_floor(
    conn: asyncpg.Connection, first_seq: int, last_seq: int
) -> int | None:
    """Seq of the earliest ``elevation.requested`` of any elevation with a row in the range.

    A grant issued under an elevation can only be judged with the request and its votes,
    which may predate the period: the package starts early enough to include them.
    """
    floor = await conn.fetchval(
        "SELECT min(r.seq) FROM ledger.events r"
        " WHERE r.event = 'elevation.requested' AND r.body ? 'elevation_id'"
        " AND r.seq < $1 AND r.body->>'elevation_id' IN ("
        "  SELECT e.body->>'elevation_id' FROM ledger.events e"
        "  WHERE e.seq BETWEEN $1 AND $2 AND e.body ? 'elevation_id')",
        first_seq,
        last_seq,
    )
    return int(floor) if floor is not None else None


async def checkpoint_notes(conn: asyncpg.Connection, first_seq: int, last_seq: int) -> list[str]:
    """Signed notes of every checkpoint whose size lies in [first_seq, last_seq]."""
    rows = await conn.fetch(
        "SELECT note FROM ledger.checkpoints WHERE size BETWEEN $1 AND $2 ORDER BY size",
        first_seq,
        last_seq,
    )
    return [str(r["note"]) for r in rows]


async def stream_rows(
    conn: asyncpg.Connection, first_seq: int, last_seq: int, *, prefetch: int = 5000
) -> AsyncIterator[asyncpg.Record]:
    """Rows ``first_seq..last_seq`` in seq order through a server-side cursor."""
    sql = (
        f"SELECT {_COLUMNS} FROM ledger.events"  # noqa: S608 - constant column list
        " WHERE seq BETWEEN $1 AND $2 ORDER BY seq"
    )
    async for r in conn.cursor(sql, first_seq, last_seq, prefetch=prefetch):
        yield r


async def policy_versions_in_force(
    conn: asyncpg.Connection, first_seq: int, last_seq: int
) -> list[str]:
    """The version active when the period began plus every version loaded during it.

    "Active at the start" is the newest ``policy.loaded`` before the period's first row.
    """
    before = await conn.fetchval(
        "SELECT policy_version FROM ledger.events WHERE event = 'policy.loaded' AND seq < $1"
        " ORDER BY seq DESC LIMIT 1",
        first_seq,
    )
    during = await conn.fetch(
        "SELECT DISTINCT policy_version FROM ledger.events WHERE event = 'policy.loaded'"
        " AND seq BETWEEN $1 AND $2 AND policy_version IS NOT NULL",
        first_seq,
        last_seq,
    )
    versions = {str(r["policy_version"]) for r in during}
    if before is not None:
        versions.add(str(before))
    return sorted(versions)
