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
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from .events import Event, decoded_body
from .store import row_to_event

__all__ = [
    "AccessRow",
    "GrantEnd",
    "access_query",
    "access_windows",
    "ends_by_grant_query",
    "events_page",
    "events_query",
    "grant_ends_query",
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


# How a grant ended: its one end row (dedupe key), never recorded before the grant. Two
# ways to find it, both from an index of end rows alone (their type included), reading
# the row itself (by whom, why) only for a revocation; OFFSET 0 keeps that read a
# subquery run only when the end is a revocation, not a join probed for every window.
#
# - By grant id (007's index), the partitions in time order from the grant on, the first
#   match ending the scan: one random leaf per grant, which is what a first question
#   about a month costs most (a hundred scattered pages for a page of windows).
# - By subject or secret (009's indexes, plain columns, so read from the index alone): the
#   end rows of one secret's grants, and the expiries of one subject's (an expiry's
#   subject is the holder; a revocation's is who revoked), lie side by side in time
#   order, so a page's ends are one short range. Exact only for ends found there: a grant
#   with none (revoked by someone else, still open, swept late) is looked up by id.
_END_BY_GRANT = """
    SELECT e.recorded_at, e.seq, e.event FROM ledger.events e
    WHERE e.grant_id = {grant_id} AND e.event IN ('grant.revoked', 'grant.expired')
        AND e.recorded_at >= {issued_at}{only_if}
    ORDER BY e.recorded_at, e.seq LIMIT 1
"""
_REVOKED_ROW = """
LEFT JOIN LATERAL (
    SELECT v.subject, v.body FROM ledger.events v
    WHERE t.event = 'grant.revoked' AND v.recorded_at = t.recorded_at AND v.seq = t.seq
    OFFSET 0
) r ON true
"""
_END_COLUMNS = (
    "t.recorded_at AS end_recorded_at, t.event AS end_event,"
    " r.subject AS end_subject, r.body AS end_body"
)
# How long after its expiry a grant's end row is looked for among its holder's or secret's
# ends: the sweeper's lag (a revocation comes before expiry). Later ones are still found,
# by grant id.
END_LAG = timedelta(minutes=10)


def access_query(
    *,
    issued_from: datetime,
    issued_to: datetime,
    overlaps_from: datetime,
    subject: str | None,
    secret: str | None,
    after_seq: int | None,
    limit: int,
    early_ends_only: bool = False,
) -> tuple[str, list[Any]]:
    """SQL and arguments for grants issued in ``[issued_from, issued_to)`` still open after
    ``overlaps_from`` (not expired, not revoked by then), oldest first, with how each ended.

    ``issued_from`` is the caller's lower bound (period start minus the longest grant):
    it is what keeps this an index range scan. ``after_seq`` continues after that row.
    ``early_ends_only``: look up the end only of grants issued before ``overlaps_from``,
    which the overlap needs (a grant issued later cannot have ended before the period);
    the caller finds the others' (``access_windows``).
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
    end = _END_BY_GRANT.format(
        grant_id="i.grant_id",
        issued_at="i.recorded_at",
        only_if=" AND i.recorded_at < $3" if early_ends_only else "",
    )
    sql = (
        f"SELECT i.*, {_END_COLUMNS}\nFROM ledger.events i\nLEFT JOIN LATERAL ({end}) t ON true"
        + _REVOKED_ROW
        + "WHERE "
        + "\n  AND ".join(where)
        + f"\nORDER BY i.recorded_at, i.seq LIMIT ${len(args)}"
    )
    return sql, args


def grant_ends_query(
    *, holder: str | None, secret: str | None, grants: Sequence[Event]
) -> tuple[str, list[Any]]:
    """SQL and arguments for the end rows with subject ``holder`` (if given) or of
    ``secret``, recorded from the first of ``grants`` to their last expiry plus
    ``END_LAG``: one range of 009's index, and no other index to choose (the caller picks
    its grants out: a filter on grant id could tempt the planner into 007's index, a leaf
    a grant)."""
    assert grants and all(g.expires_at is not None for g in grants), "windows expire"
    key, value = ("subject", holder) if holder is not None else ("secret", secret)
    assert value is not None, "a holder or a secret"
    since = min(g.recorded_at for g in grants)
    until = max(g.expires_at for g in grants if g.expires_at is not None) + END_LAG
    sql = (
        f"SELECT t.grant_id, {_END_COLUMNS}\nFROM ledger.events t"
        + _REVOKED_ROW
        + f"WHERE t.{key} = $1 AND t.event IN ('grant.revoked', 'grant.expired')"
        + " AND t.recorded_at >= $2 AND t.recorded_at <= $3"
        + "\nORDER BY t.recorded_at, t.seq"
    )
    return sql, [value, since, until]


def ends_by_grant_query(grants: Sequence[Event]) -> tuple[str, list[Any]]:
    """SQL and arguments for the end rows of ``grants``, looked up one by one by grant id."""
    end = _END_BY_GRANT.format(grant_id="g.id", issued_at="g.issued_at", only_if="")
    sql = (
        f"SELECT g.id AS grant_id, {_END_COLUMNS}\n"
        "FROM unnest($1::uuid[], $2::timestamptz[]) AS g(id, issued_at)\n"
        f"CROSS JOIN LATERAL ({end}) t" + _REVOKED_ROW
    )
    return sql, [[g.grant_id for g in grants], [g.recorded_at for g in grants]]


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


async def access_windows(conn: asyncpg.Connection, **query: Any) -> list[AccessRow]:
    """The grants whose access overlaps the period (``access_query``) and how each ended.

    With a subject or a secret to go by, the ends of grants issued in the period are read
    as one range of 009's indexes (``grant_ends_query``), those not found there by grant
    id (``ends_by_grant_query``); run in one snapshot (``read_snapshot``) to be exact.
    """
    subject, secret = query["subject"], query["secret"]
    co_located = subject is not None or secret is not None
    sql, args = access_query(**query, early_ends_only=co_located)
    rows = [(row_to_event(r), _end(r)) for r in await conn.fetch(sql, *args)]
    late = [i for i, _ in rows if co_located and i.recorded_at >= query["overlaps_from"]]
    ends: dict[Any, GrantEnd | None] = {}
    if late:
        sql, args = grant_ends_query(holder=subject, secret=secret, grants=late)
        wanted = {i.grant_id for i in late}
        for r in await conn.fetch(sql, *args):
            if r["grant_id"] in wanted:
                ends.setdefault(r["grant_id"], _end(r))  # the first, as by grant id
        if unfound := [i for i in late if i.grant_id not in ends]:
            sql, args = ends_by_grant_query(unfound)
            ends.update((r["grant_id"], _end(r)) for r in await conn.fetch(sql, *args))
    return [AccessRow(i, ends.get(i.grant_id, end)) for i, end in rows]


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
