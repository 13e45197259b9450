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

from .events import Event
from .store import row_to_event

__all__ = [
    "AccessRow",
    "access_query",
    "access_windows",
    "events_page",
    "events_query",
]


@dataclass(frozen=True)
class AccessRow:
    """A ``grant.issued`` row and the row that ended it (``grant.revoked``/``expired``), if any."""

    issued: Event
    end: Event | None


# The end of each grant: at most one end row per grant (dedupe key), found by grant id in
# time order from the issued row on (an end is never recorded before its grant): the
# partitions are read in order through (grant_id, recorded_at, seq) and the first match
# stops the scan, so a grant costs one or two partitions however many months there are.
_ACCESS_SELECT = """
SELECT i.*,
    t.seq AS end_seq, t.recorded_at AS end_recorded_at, t.event AS end_event,
    t.replica AS end_replica, t.subject AS end_subject, t.subject_kind AS end_subject_kind,
    t.secret AS end_secret, t.role AS end_role, t.policy_version AS end_policy_version,
    t.grant_id AS end_grant_id, t.lease_id AS end_lease_id, t.expires_at AS end_expires_at,
    t.outcome AS end_outcome, t.request_id AS end_request_id, t.body AS end_body,
    t.dedupe_key AS end_dedupe_key, t.prev_hash AS end_prev_hash, t.hash AS end_hash
FROM ledger.events i
LEFT JOIN LATERAL (
    SELECT e.* FROM ledger.events e
    WHERE e.grant_id = i.grant_id AND e.event IN ('grant.revoked', 'grant.expired')
        AND e.recorded_at >= i.recorded_at
    ORDER BY e.recorded_at, e.seq LIMIT 1
) t ON true
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


def _end_event(r: asyncpg.Record) -> Event | None:
    if r["end_seq"] is None:
        return None
    return row_to_event({k: r[f"end_{k}"] for k in _EVENT_COLUMNS})


_EVENT_COLUMNS = (
    "seq", "recorded_at", "event", "replica", "subject", "subject_kind", "secret", "role",
    "policy_version", "grant_id", "lease_id", "expires_at", "outcome", "request_id", "body",
    "dedupe_key", "prev_hash", "hash",
)  # fmt: skip


async def access_windows(db: asyncpg.Pool | asyncpg.Connection, **query: Any) -> list[AccessRow]:
    """Run ``access_query(**query)``: the grants whose access overlaps the period."""
    sql, args = access_query(**query)
    rows = await db.fetch(sql, *args)
    return [AccessRow(row_to_event(r), _end_event(r)) for r in rows]


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
