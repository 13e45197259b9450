"""The auditor's read queries: access windows and filtered pages of raw events.

Both are keyset-paged in ``(recorded_at, seq)`` order and served by the indexes of
migration ``003_access_indexes.sql`` (on every monthly partition since ``006``; the time
range prunes the partitions); no query reads more than its time range of one index
(``tests/test_audit_access.py`` runs ``EXPLAIN`` on the access query to prove it).
SQL text is assembled only from fixed fragments; every value is a bind parameter, and only
the predicates actually asked for are included, so each shape gets its own plan instead of
a generic one full of ``$n IS NULL OR ...`` that no index can serve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .events import Event, decoded_body
from .store import row_to_event

__all__ = [
    "AccessRow",
    "GrantEnd",
    "access_query",
    "access_windows",
    "events_page",
    "events_query",
]


@dataclass(frozen=True)
class GrantEnd:
    """The row that ended a grant: its type and time; who and why only for a revocation
    (an expiry is the broker's, and its row is not read)."""

    event: str  # grant.revoked or grant.expired
    recorded_at: datetime
    subject: str | None
    body: dict[str, Any]


@dataclass(frozen=True)
class AccessRow:
    """A ``grant.issued`` row and how it ended (``grant.revoked``/``expired``), if it has."""

    issued: Event
    end: GrantEnd | None


# The end of each grant: at most one end row per grant (dedupe key), found by grant id in
# time order from the issued row on (an end is never recorded before its grant): the
# partitions are read in order through 007's index of end rows and the first match stops
# the scan, so a grant costs one or two partitions however many months there are. That
# index carries the row's type, so an expiry is read from the index alone; the row itself
# (by whom, why) is fetched only for a revocation (OFFSET 0 keeps that lookup a subquery
# run only when its condition on t holds, not a join probed for every window).
_ACCESS_SELECT = """
SELECT i.*, t.recorded_at AS end_recorded_at, t.event AS end_event,
    r.subject AS end_subject, r.body AS end_body
FROM ledger.events i
LEFT JOIN LATERAL (
    SELECT e.recorded_at, e.seq, e.event FROM ledger.events e
    WHERE e.grant_id = i.grant_id AND e.event IN ('grant.revoked', 'grant.expired')
        AND e.recorded_at >= i.recorded_at
    ORDER BY e.recorded_at, e.seq LIMIT 1
) t ON true
LEFT JOIN LATERAL (
    SELECT v.subject, v.body FROM ledger.events v
    WHERE t.event = 'grant.revoked' AND v.recorded_at = t.recorded_at AND v.seq = t.seq
    OFFSET 0
) r ON true
"""


def access_query(
    *,
    issued_from: datetime,
    issued_to: datetime,
    overlaps_from: datetime,
    subject: str | None,
    secret: str | None,
    after_seq: int | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """SQL and arguments for grants issued in ``[issued_from, issued_to)`` still open after
    ``overlaps_from`` (not expired, not revoked by then), oldest first.

    ``issued_from`` is the caller's lower bound (period start minus the longest grant):
    it is what keeps this an index range scan. ``after_seq`` continues after that row.
    """
    args: list[Any] = [issued_from, issued_to, overlaps_from]
    where = [
        "i.event = 'grant.issued'",
        "i.recorded_at >= $1",
        "i.recorded_at < $2",
        "i.expires_at > $3",
        # Revoked before the period began: no overlap. (An expired row is written by the
        # sweeper after expires_at, so for expiry expires_at above is what counts.)
        "(t.event IS DISTINCT FROM 'grant.revoked' OR t.recorded_at > $3)",
    ]
    if subject is not None:
        args.append(subject)
        where.append(f"i.subject = ${len(args)}")
    if secret is not None:
        args.append(secret)
        where.append(f"i.secret = ${len(args)}")
    if after_seq is not None:
        args.append(after_seq)
        n = len(args)
        cursor_row = f"SELECT c.recorded_at, c.seq FROM ledger.events c WHERE c.seq = ${n}"  # noqa: S608
        where.append(f"(i.recorded_at, i.seq) > ({cursor_row})")
    args.append(limit)
    sql = (
        _ACCESS_SELECT
        + "WHERE "
        + "\n  AND ".join(where)
        + f"\nORDER BY i.recorded_at, i.seq LIMIT ${len(args)}"
    )
    return sql, args


def _end(r: asyncpg.Record) -> GrantEnd | None:
    if r["end_event"] is None:
        return None
    body = r["end_body"]  # None for an expiry: its row is not read
    return GrantEnd(
        event=r["end_event"],
        recorded_at=r["end_recorded_at"],
        subject=r["end_subject"],
        body=decoded_body(body) if body is not None else {},
    )


async def access_windows(db: asyncpg.Pool | asyncpg.Connection, **query: Any) -> list[AccessRow]:
    """Run ``access_query(**query)``: the grants whose access overlaps the period."""
    sql, args = access_query(**query)
    rows = await db.fetch(sql, *args)
    return [AccessRow(row_to_event(r), _end(r)) for r in rows]


def events_query(
    *,
    subject: str | None,
    secret: str | None,
    types: Sequence[str],
    start: datetime | None,
    end: datetime | None,
    after_seq: int | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """SQL and arguments for raw events matching every given filter, oldest first."""
    args: list[Any] = []
    where: list[str] = []

    def bind(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if subject is not None:
        where.append(f"e.subject = {bind(subject)}")
    if secret is not None:
        where.append(f"e.secret = {bind(secret)}")
    if types:
        where.append(f"e.event = ANY({bind(list(types))}::text[])")
    if start is not None:
        where.append(f"e.recorded_at >= {bind(start)}")
    if end is not None:
        where.append(f"e.recorded_at < {bind(end)}")
    source = "ledger.events e"
    if after_seq is not None:
        # The cursor row's time, looked up by primary key, then a keyset condition the
        # (x, recorded_at) indexes can range-scan (recorded_at >= ...) and finish exactly.
        cursor_row = f"SELECT recorded_at, seq FROM ledger.events WHERE seq = {bind(after_seq)}"  # noqa: S608
        source += f", ({cursor_row}) c"
        where.append("e.recorded_at >= c.recorded_at")
        where.append("(e.recorded_at, e.seq) > (c.recorded_at, c.seq)")
    sql = f"SELECT e.* FROM {source}"  # noqa: S608 - fixed fragments; values are bound
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY e.recorded_at, e.seq LIMIT {bind(limit)}"
    return sql, args


async def events_page(pool: asyncpg.Pool, **query: Any) -> list[Event]:
    """Run ``events_query(**query)``."""
    sql, args = events_query(**query)
    return [row_to_event(r) for r in await pool.fetch(sql, *args)]
