"""The auditor's read queries: access windows and filtered pages of raw events.

Both are keyset-paged in ``(recorded_at, seq)`` order and served by the indexes of
migration ``003_access_indexes.sql`` (on every monthly partition since ``006``; the time
range prunes the partitions), a subject's windows by ``010_why_subject_windows.sql``'s;
no query reads more than its time range of one index (``tests/test_audit_access.py``
runs ``EXPLAIN`` on the access queries to prove it).
SQL text is assembled only from fixed fragments; every value is a bind parameter, and only
the predicates actually asked for are included, so each shape gets its own plan instead of
a generic one full of ``$n IS NULL OR ...`` that no index can serve.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from .events import Event, decoded_body
from .store import COVERED_ROW_FITS, row_to_event

__all__ = [
    "END_LAG",
    "AccessRow",
    "GrantEnd",
    "IssuedGrant",
    "Key",
    "access_query",
    "access_windows",
    "ends_by_grant_query",
    "events_page",
    "events_query",
    "grant_ends_query",
    "window_bound_query",
]


@dataclass(frozen=True)
class GrantEnd:
    """The row that ended a grant: its type and time; who and why only for a revocation
    (an expiry is the broker's, and its row is not read)."""

    event: str  # grant.revoked or grant.expired
    recorded_at: datetime
    subject: str | None
    body: dict[str, Any]


class IssuedGrant(msgspec.Struct, frozen=True, gc=False):
    """The columns of a ``grant.issued`` row a window shows: what 010's index holds (a
    ``msgspec.Struct`` for the reasons ``Event`` is one)."""

    seq: int
    recorded_at: datetime
    subject: str | None
    subject_kind: str | None
    secret: str | None
    role: str | None
    policy_version: str | None
    grant_id: uuid.UUID | None
    expires_at: datetime | None
    body: Mapping[str, Any]

    @classmethod
    def of_row(cls, r: Mapping[str, Any]) -> IssuedGrant:
        """From a row with (at least) those columns."""
        fields = {name: r[name] for name in cls.__struct_fields__}
        return cls(**(fields | {"body": decoded_body(r["body"])}))


_ISSUED_COLUMNS = ", ".join(f"i.{name}" for name in IssuedGrant.__struct_fields__)


@dataclass(frozen=True)
class AccessRow:
    """A ``grant.issued`` row and how it ended (``grant.revoked``/``expired``), if it has."""

    issued: IssuedGrant
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
# {bounds}: the range of the whole statement's end rows again, which PostgreSQL can prune
# partitions by while planning (t's values prune only as the query runs, after every
# partition has been planned for).
_REVOKED_ROW = """
LEFT JOIN LATERAL (
    SELECT v.subject, v.body FROM ledger.events v
    WHERE t.event = 'grant.revoked' AND v.recorded_at = t.recorded_at AND v.seq = t.seq
        {bounds}
    OFFSET 0
) r ON true
"""
_END_COLUMNS = (
    "t.grant_id, t.recorded_at AS end_recorded_at, t.event AS end_event,"
    " r.subject AS end_subject, r.body AS end_body"
)
# How long after its expiry a grant's end row is looked for among its holder's or secret's
# ends: the sweeper's lag (a revocation comes before expiry). Later ones are still found,
# by grant id.
END_LAG = timedelta(minutes=10)

Key = tuple[datetime, int]  # (recorded_at, seq): the order of windows and of pages


def _issued(
    args: list[Any],
    *,
    subject: str | None,
    secret: str | None,
    after: Key | None,
    through: Key | None = None,
) -> list[str]:
    """The conditions on issued rows ``i`` every window query shares, binding into
    ``args``; the time bounds are bound separately, each a range condition on its own
    (what an index range scan starts and stops at) as well as the exact key comparison."""

    def bind(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where = ["i.event = 'grant.issued'"]
    if subject is not None:
        where.append(f"i.subject = {bind(subject)}")
    if secret is not None:
        where.append(f"i.secret = {bind(secret)}")
    if after is not None:
        at, seq = bind(after[0]), bind(after[1])
        where += [f"i.recorded_at >= {at}", f"(i.recorded_at, i.seq) > ({at}, {seq})"]
    if through is not None:
        at, seq = bind(through[0]), bind(through[1])
        where += [f"i.recorded_at <= {at}", f"(i.recorded_at, i.seq) <= ({at}, {seq})"]
    return where


def window_bound_query(
    *,
    overlaps_from: datetime,
    issued_to: datetime,
    subject: str | None,
    secret: str | None,
    after: Key | None,
    nth: int,
) -> tuple[str, list[Any]]:
    """SQL and arguments for the key of the ``nth`` grant issued in ``[overlaps_from,
    issued_to)`` after ``after``, from 003's index alone: every grant issued in the period
    overlaps it, so a page of ``nth`` windows ends there at the latest."""
    args: list[Any] = [overlaps_from, issued_to]
    where = ["i.recorded_at >= $1", "i.recorded_at < $2"]
    where += _issued(args, subject=subject, secret=secret, after=after)
    args.append(nth - 1)
    sql = (
        "SELECT i.recorded_at, i.seq FROM ledger.events i WHERE "  # noqa: S608 - fixed fragments
        + " AND ".join(where)
        + f" ORDER BY i.recorded_at, i.seq OFFSET ${len(args)} LIMIT 1"
    )
    return sql, args


def access_query(
    *,
    issued_from: datetime,
    issued_to: datetime,
    overlaps_from: datetime,
    subject: str | None,
    secret: str | None,
    after: Key | None,
    through: Key | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """SQL and arguments for the grants issued in ``[issued_from, issued_to)``, after
    ``after`` and up to ``through`` (keys), not expired by ``overlaps_from``, oldest first:
    the windows of a page before the revoked are taken out (``access_windows``).

    ``issued_from`` is the caller's lower bound (period start minus the longest grant):
    it is what keeps this an index range scan. A subject's windows are read from 010's
    indexes alone: the covering one, and the one of rows too wide for it (normally none).
    """
    args: list[Any] = [issued_from, issued_to, overlaps_from]
    scan = ["i.recorded_at >= $1", "i.recorded_at < $2"]
    checks = ["i.expires_at > $3"]
    if subject is None:
        scan += _issued(args, subject=None, secret=secret, after=after, through=through)
    else:  # the secret is checked in 010's index, not a key of it
        scan += _issued(args, subject=subject, secret=None, after=after, through=through)
        if secret is not None:
            args.append(secret)
            checks.append(f"i.secret = ${len(args)}")
    args.append(limit)
    order = f"\nORDER BY i.recorded_at, i.seq LIMIT ${len(args)}"

    def select(where: list[str], source: str = "ledger.events i") -> str:
        columns = f"SELECT {_ISSUED_COLUMNS} FROM {source} WHERE "  # noqa: S608 - fixed fragments
        return columns + "\n  AND ".join(where)

    if subject is None:
        return select(scan + checks) + order, args
    covered = select([*scan, *checks, COVERED_ROW_FITS]) + order
    # Rows too wide for it are found by subject and time alone: the fence (OFFSET 0) keeps
    # the checks out of that scan, or the planner, taking a third of rows for wide (it has
    # no statistics of their width), may prefer an index of secret or expiry. Normally none.
    fenced = select([*scan, f"NOT ({COVERED_ROW_FITS})"]) + "\nOFFSET 0"
    wide = select(checks, f"({fenced}) i") + order
    return f"({covered})\nUNION ALL\n({wide})\nORDER BY recorded_at, seq LIMIT ${len(args)}", args


def grant_ends_query(
    *, holder: str | None, secret: str | None, grants: Sequence[IssuedGrant]
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
        f"SELECT {_END_COLUMNS}\nFROM ledger.events t"
        + _REVOKED_ROW.format(bounds="AND v.recorded_at >= $2 AND v.recorded_at <= $3")
        + f"WHERE t.{key} = $1 AND t.event IN ('grant.revoked', 'grant.expired')"
        + " AND t.recorded_at >= $2 AND t.recorded_at <= $3"
        + "\nORDER BY t.recorded_at, t.seq"
    )
    return sql, [value, since, until]


def ends_by_grant_query(grants: Sequence[IssuedGrant]) -> tuple[str, list[Any]]:
    """SQL and arguments for the end rows of ``grants``, looked up one by one by grant id
    (007's index, from each grant's own time on: the first match ends its scan)."""
    sql = (
        f"SELECT {_END_COLUMNS}\n"  # noqa: S608 - fixed fragments
        "FROM unnest($1::uuid[], $2::timestamptz[]) AS g(id, issued_at)\n"
        "CROSS JOIN LATERAL (\n"
        "    SELECT e.grant_id, e.recorded_at, e.seq, e.event FROM ledger.events e\n"
        "    WHERE e.grant_id = g.id AND e.event IN ('grant.revoked', 'grant.expired')\n"
        "        AND e.recorded_at >= g.issued_at AND e.recorded_at >= $3\n"
        "    ORDER BY e.recorded_at, e.seq LIMIT 1\n"
        ") t" + _REVOKED_ROW.format(bounds="AND v.recorded_at >= $3")
    )
    issued = [g.recorded_at for g in grants]
    return sql, [[g.grant_id for g in grants], issued, min(issued)]


def _end(r: asyncpg.Record) -> GrantEnd:
    body = r["end_body"]  # None for an expiry: its row is not read
    return GrantEnd(
        event=r["end_event"],
        recorded_at=r["end_recorded_at"],
        subject=r["end_subject"],
        body=decoded_body(body) if body is not None else {},
    )


async def _ends(
    conn: asyncpg.Connection,
    grants: Sequence[IssuedGrant],
    *,
    subject: str | None,
    secret: str | None,
) -> dict[Any, GrantEnd]:
    """How each of ``grants`` ended, by grant id (none while open): on a subject's or a
    secret's page from one range of 009's indexes, those not found there by grant id."""
    ends: dict[Any, GrantEnd] = {}
    if grants and (subject is not None or secret is not None):
        wanted = {g.grant_id for g in grants}
        sql, args = grant_ends_query(holder=subject, secret=secret, grants=grants)
        for r in await conn.fetch(sql, *args):
            if r["grant_id"] in wanted:
                ends.setdefault(r["grant_id"], _end(r))  # the first, as by grant id
    if unfound := [g for g in grants if g.grant_id not in ends]:
        sql, args = ends_by_grant_query(unfound)
        ends.update((r["grant_id"], _end(r)) for r in await conn.fetch(sql, *args))
    return ends


async def access_windows(
    conn: asyncpg.Connection,
    *,
    issued_from: datetime,
    issued_to: datetime,
    overlaps_from: datetime,
    subject: str | None,
    secret: str | None,
    after_seq: int | None,
    limit: int,
) -> list[AccessRow]:
    """The grants whose access overlaps the period (issued before its end, not expired or
    revoked by its start), oldest first, after the window ``after_seq``; how each ended.

    A first question about a month finds the page's rows scattered over it, mostly not
    in memory. A subject's page reads them side by side from 010's covering index (with
    a secret too, checking it there). Any other page first finds the key of its last
    window from 003's index alone (``window_bound_query``), then reads the rows up to it
    in one bitmap heap scan, which PostgreSQL reads ahead (an index scan reads one row at
    a time). Then how they ended (``_ends``). A window revoked before the period is
    dropped after that, so a page may take a second round. Run it in one snapshot
    (``read_snapshot``) to be exact.
    """
    shape = {"subject": subject, "secret": secret}
    after: Key | None = None
    if after_seq is not None:
        row = await conn.fetchrow(
            "SELECT recorded_at, seq FROM ledger.events WHERE seq = $1", after_seq
        )
        if row is None:
            return []  # no such window: nothing comes after it
        after = (row["recorded_at"], row["seq"])
    bounded = subject is None  # else read from 010's index alone, without a bound
    out: list[AccessRow] = []
    while len(out) < limit:
        need = limit - len(out)
        through: Key | None = None
        if bounded:
            sql, args = window_bound_query(
                overlaps_from=overlaps_from, issued_to=issued_to, after=after, nth=need, **shape
            )
            if bound := await conn.fetchrow(sql, *args):
                through = (bound["recorded_at"], bound["seq"])
        sql, args = access_query(
            issued_from=issued_from,
            issued_to=issued_to,
            overlaps_from=overlaps_from,
            after=after,
            through=through,
            limit=need,
            **shape,
        )
        if bounded:  # the bitmap heap scan (LOCAL: an error ends it with the transaction)
            await conn.execute("SET LOCAL enable_indexscan = off")
        grants = [IssuedGrant.of_row(r) for r in await conn.fetch(sql, *args)]
        if bounded:
            await conn.execute("RESET enable_indexscan")
        ends = await _ends(conn, grants, **shape)
        for g in grants:
            end = ends.get(g.grant_id)
            # Revoked before the period began: no overlap. (Expiry is decided in the
            # query, by expires_at: the sweeper records it later.)
            if end is None or end.event != "grant.revoked" or end.recorded_at > overlaps_from:
                out.append(AccessRow(g, end))
        if len(grants) == need:
            after = (grants[-1].recorded_at, grants[-1].seq)
        elif through is not None:
            after = through  # every grant up to the bound is read
        else:
            break  # no more grants in the period
    return out[:limit]


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
