"""SQL for continuity evidence: liveness points (heartbeats, starts, stops) and gap notes.

Every query goes through ``events_event_idx (event, recorded_at)``: a period's gaps cost
the liveness rows inside it plus one index probe per event type either side, never a scan
of the ledger. The gap definition itself is documented in ``broker.evidence.continuity``.
``conn`` is an asyncpg connection or pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "LIVENESS_EVENTS",
    "AnnotationRow",
    "first_recorded_at",
    "gap_annotations",
    "liveness_at_or_after",
    "liveness_before",
    "liveness_gaps",
]

LIVENESS_EVENTS: tuple[str, ...] = ("broker.heartbeat", "broker.started", "broker.stopped")

# Cap on annotations read for one query: they are hand-written and rare.
_MAX_ANNOTATIONS = 10_000


@dataclass(frozen=True)
class AnnotationRow:
    seq: int
    recorded_at: datetime
    subject: str | None
    body: Mapping[str, Any]


# One subquery per event type, each naming its event as a literal: the planner then knows
# how rare ``broker.started``/``broker.stopped`` are and probes (event, recorded_at) for
# them. With the event as a parameter it assumes an average frequency and walks the
# (recorded_at, seq) index instead, filtering, through every row before (or after) the
# instant when the event is absent: 0.6 s at 1 M rows.
def _nearest(*, before: bool, window: str) -> str:
    """The newest liveness point before $1 (``before``) or the oldest at or after it,
    with ``window`` added to each subquery's condition."""
    op, order, pick = ("<", " DESC", "max") if before else (">=", "", "min")
    probes = " UNION ALL ".join(
        f"(SELECT recorded_at AS at FROM ledger.events WHERE event = '{name}'"  # noqa: S608
        f" AND recorded_at {op} $1{window} ORDER BY recorded_at{order} LIMIT 1)"
        for name in LIVENESS_EVENTS
    )
    return f"SELECT {pick}(at) FROM ({probes}) p"  # noqa: S608


# A liveness point is normally a heartbeat interval away. Looking within a day first lets
# a plan drop every other month's partition: planning over all of them took 7 ms for 13,
# grows with the ledger's age, and is paid by each pooled connection's first five runs.
# Only when that day holds none does the lookup span the whole ledger.
_NEAR = timedelta(days=1)
_BEFORE = _nearest(before=True, window="")
_BEFORE_NEAR = _nearest(before=True, window=" AND recorded_at >= $2")
_AT_OR_AFTER = _nearest(before=False, window="")
_AT_OR_AFTER_NEAR = _nearest(before=False, window=" AND recorded_at < $2")


async def _point(
    conn: Any, near: str, anywhere: str, at: datetime, bound: datetime
) -> datetime | None:
    value: datetime | None = await conn.fetchval(near, at, bound)
    if value is None:
        value = await conn.fetchval(anywhere, at)
    return value


async def liveness_before(conn: Any, at: datetime) -> datetime | None:
    """The newest liveness point strictly before ``at`` (one index probe per event type)."""
    return await _point(conn, _BEFORE_NEAR, _BEFORE, at, at - _NEAR)


async def liveness_at_or_after(conn: Any, at: datetime) -> datetime | None:
    """The oldest liveness point at or after ``at``."""
    return await _point(conn, _AT_OR_AFTER_NEAR, _AT_OR_AFTER, at, at + _NEAR)


async def first_recorded_at(conn: Any) -> datetime | None:
    """When the ledger began (row 1), or None if it is empty."""
    value: datetime | None = await conn.fetchval(
        "SELECT recorded_at FROM ledger.events WHERE seq = 1"
    )
    return value


async def liveness_gaps(
    conn: Any, *, lead: datetime, trail: datetime, threshold: timedelta, limit: int
) -> list[tuple[datetime, datetime]]:
    """Consecutive liveness points (with ``lead`` and ``trail`` as points too) more than
    ``threshold`` apart, as (start, end), oldest first, at most ``limit``."""
    rows = await conn.fetch(
        "SELECT prev, at FROM ("
        "  SELECT at, lag(at) OVER (ORDER BY at) AS prev FROM ("
        "    SELECT recorded_at AS at FROM ledger.events"
        "    WHERE event = ANY($1::text[]) AND recorded_at > $2 AND recorded_at < $3"
        "    UNION ALL SELECT $2::timestamptz UNION ALL SELECT $3::timestamptz"
        "  ) points"
        ") pairs WHERE at - prev > $4::interval ORDER BY at LIMIT $5",
        list(LIVENESS_EVENTS),
        lead,
        trail,
        threshold,
        limit,
    )
    return [(r["prev"], r["at"]) for r in rows]


async def gap_annotations(
    conn: Any, *, period_from: datetime, period_to: datetime
) -> list[AnnotationRow]:
    """``gap.annotated`` rows whose stretch overlaps ``[period_from, period_to]``, in seq
    order. Malformed bodies are skipped here rather than failing the cast."""
    rows = await conn.fetch(
        "SELECT seq, recorded_at, subject, body FROM ledger.events"
        " WHERE event = 'gap.annotated'"
        " AND jsonb_typeof(body->'from') = 'string' AND jsonb_typeof(body->'to') = 'string'"
        " ORDER BY seq LIMIT $1",
        _MAX_ANNOTATIONS,
    )
    out = []
    for r in rows:
        body = r["body"]
        try:
            start = datetime.fromisoformat(body["from"])
            end = datetime.fromisoformat(body["to"])
        except ValueError:
            continue
        if start.tzinfo is None or end.tzinfo is None:
            continue
        if start <= period_to and end >= period_from:
            out.append(AnnotationRow(r["seq"], r["recorded_at"], r["subject"], body))
    return out
