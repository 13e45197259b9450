"""Continuity evidence: heartbeats, and the gaps between them.

Every replica appends ``broker.heartbeat`` every ``heartbeat_seconds``, so "was the broker
logging then?" has an answer for every moment. This module holds the one definition of a
gap; the SQL in ``broker.ledger.continuity_queries`` (the API) and ``GapDetector`` (the
offline analyzer, ``broker.evidence.findings``) both follow it:

- *liveness points* are the ``recorded_at`` of every ``broker.heartbeat``,
  ``broker.started`` and ``broker.stopped`` row, of any replica (a row written while
  starting or stopping proves the broker was there as much as a heartbeat does);
- a *gap* is the stretch between two consecutive liveness points, in time order, that are
  more than ``2 * heartbeat_seconds`` apart (one missed beat is jitter, two is an outage);
- at the edges of a period ``[from, to)`` the leading point is the newest liveness point
  before ``from`` (else ``from`` itself, unless the ledger only begins later: then its first
  row), and the trailing point is the first liveness point at or after ``to`` (else ``to``,
  which callers never set later than now);
- a gap is reported with its true ``start``/``end`` (they may reach outside the period)
  when it overlaps the period;
- a ``gap.annotated`` row (body ``{"from", "to", "remediation"}``) *covers* a gap when its
  stretch contains the gap's, give or take ``ANNOTATION_SLACK`` (times are copied by hand).

Bodies hold no floats (see ``broker.ledger.events``), so the heartbeat records its interval
in whole milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.ledger import Ledger, NewEvent
from broker.ledger import continuity_queries as queries
from broker.metrics import Metrics

__all__ = [
    "ANNOTATION_SLACK",
    "LIVENESS_EVENTS",
    "Gap",
    "GapAnnotation",
    "GapDetector",
    "annotation_from_row",
    "append_heartbeat",
    "gap_threshold",
    "gaps_in",
]

LIVENESS_EVENTS = queries.LIVENESS_EVENTS
ANNOTATION_SLACK = timedelta(seconds=1)


def gap_threshold(heartbeat_seconds: float) -> timedelta:
    """The longest silence that is not a gap: two heartbeat intervals."""
    if heartbeat_seconds <= 0:
        raise ValueError("heartbeat_seconds must be positive")
    return timedelta(seconds=2 * heartbeat_seconds)


@dataclass(frozen=True)
class Gap:
    """A stretch with no liveness point, from the last one before to the first one after."""

    start: datetime
    end: datetime

    @property
    def duration_seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    def overlaps(self, period_from: datetime, period_to: datetime) -> bool:
        return self.start < period_to and self.end > period_from

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "duration_seconds": self.duration_seconds,
        }


@dataclass(frozen=True)
class GapAnnotation:
    """A ``gap.annotated`` row: who explained which stretch, and how it was remediated."""

    seq: int
    recorded_at: datetime
    by: str | None
    start: datetime
    end: datetime
    remediation: str

    def covers(self, gap: Gap) -> bool:
        return self.start <= gap.start + ANNOTATION_SLACK and self.end >= gap.end - ANNOTATION_SLACK

    def overlaps(self, gap: Gap) -> bool:
        return self.start < gap.end and self.end > gap.start

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "recorded_at": self.recorded_at.isoformat(),
            "by": self.by,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "remediation": self.remediation,
        }


def annotation_from_row(
    seq: int, recorded_at: datetime, by: str | None, body: Mapping[str, Any]
) -> GapAnnotation | None:
    """The annotation a ``gap.annotated`` row records, or None if its body is malformed."""
    try:
        start = datetime.fromisoformat(str(body["from"]))
        end = datetime.fromisoformat(str(body["to"]))
    except (KeyError, ValueError):
        return None
    if start.tzinfo is None or end.tzinfo is None:
        return None
    return GapAnnotation(seq, recorded_at, by, start, end, str(body.get("remediation") or ""))


class GapDetector:
    """Gaps from liveness points fed one at a time (roughly in time order), O(gaps) memory.

    ``lead`` is the leading point used when no liveness point precedes the period in the
    stream (``period_from``, or the ledger's first row when the ledger begins later);
    ``observe(t)`` takes each liveness point, ``finish()`` closes the period at
    ``period_to`` and returns the gaps that overlap it, oldest first.
    """

    def __init__(
        self,
        *,
        period_from: datetime,
        period_to: datetime,
        threshold: timedelta,
        lead: datetime | None = None,
    ) -> None:
        self._from = period_from
        self._to = period_to
        self._threshold = threshold
        self.lead = period_from if lead is None else lead
        self._last: datetime | None = None
        self._closed = False
        self._gaps: list[Gap] = []

    def observe(self, t: datetime) -> None:
        if self._closed:
            return
        prev = self._last if self._last is not None else self.lead
        if t - prev > self._threshold:
            self._add(Gap(prev, t))
        if self._last is None or t > self._last:  # replicas' clocks differ: keep the newest
            self._last = t
        if t >= self._to:
            self._closed = True

    def finish(self) -> list[Gap]:
        if not self._closed:
            last = self._last if self._last is not None else self.lead
            if self._to - last > self._threshold:
                self._add(Gap(last, self._to))
            self._closed = True
        return list(self._gaps)

    def _add(self, gap: Gap) -> None:
        if gap.overlaps(self._from, self._to):
            self._gaps.append(gap)


async def append_heartbeat(
    ledger: Ledger, *, replica: str, interval_seconds: float, metrics: Metrics | None = None
) -> None:
    """Append one ``broker.heartbeat`` (interval, replica, the head seq seen before it)."""
    try:
        head_seq, _ = await ledger.head()
        await ledger.append(
            NewEvent(
                event="broker.heartbeat",
                outcome="ok",
                body={
                    "interval_ms": round(interval_seconds * 1000),
                    "replica": replica,
                    "head_seq": head_seq,
                },
            )
        )
    except Exception:
        if metrics is not None:
            metrics.heartbeats.labels("error").inc()
        raise
    if metrics is not None:
        metrics.heartbeats.labels("ok").inc()


async def gaps_in(
    ledger: Ledger,
    *,
    period_from: datetime,
    period_to: datetime,
    heartbeat_seconds: float,
    limit: int,
) -> list[tuple[Gap, list[GapAnnotation]]]:
    """Gaps overlapping ``[period_from, period_to)`` (oldest first, at most ``limit``), each
    with the annotations whose stretch overlaps it.

    Reads only liveness rows inside the period (by the ``(event, recorded_at)`` index), one
    row either side of it, and the ``gap.annotated`` rows. ``period_to`` must not be in the
    future (a stretch that has not happened yet is no gap).
    """
    threshold = gap_threshold(heartbeat_seconds)
    async with ledger.pool.acquire() as conn:
        lead = await queries.liveness_before(conn, period_from)
        if lead is None:
            first = await queries.first_recorded_at(conn)
            lead = first if first is not None and first > period_from else period_from
        trail = await queries.liveness_at_or_after(conn, period_to) or period_to
        pairs = await queries.liveness_gaps(
            conn, lead=lead, trail=trail, threshold=threshold, limit=limit
        )
        rows = await queries.gap_annotations(conn, period_from=lead, period_to=trail)
    gaps = [Gap(s, e) for s, e in pairs if Gap(s, e).overlaps(period_from, period_to)]
    annotations = [
        a
        for a in (annotation_from_row(r.seq, r.recorded_at, r.subject, r.body) for r in rows)
        if a is not None
    ]
    return [(g, [a for a in annotations if a.overlaps(g)]) for g in gaps]
