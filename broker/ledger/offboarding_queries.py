"""Read queries for offboarding: the subject's live access, and offboarding history.

Subjects are matched by ``subject_key`` (stripped, casefolded) in Python, never in SQL:
Postgres ``lower()`` is not Unicode casefolding, and a spelling missed here would leave a
credential alive. Each query is bounded by an index instead — live grants by
``events_open_grants_idx`` (unexpired issued rows), elevation requests and sessions by
``events_event_idx`` and a time horizon, offboarding events by ``events_event_idx``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from broker.errors import LedgerUnavailable

from .events import Event
from .store import _GRANT_SELECT, GrantRecord, Ledger, _grant, row_to_event

__all__ = [
    "OFFBOARDING_EVENTS",
    "OffboardingAction",
    "OffboardingActions",
    "live_elevation_ids",
    "live_grants",
    "live_sessions",
    "offboarding_actions",
    "offboarding_events",
    "offboarding_events_between",
    "offboarding_events_of",
    "offboarding_steps",
]

OFFBOARDING_EVENTS = ("subject.offboarding_started", "subject.offboarded", "subject.reinstated")

_Key = Callable[[str], str]


async def _fetch(ledger: Ledger, sql: str, *args: Any) -> list[Any]:
    try:
        return list(await ledger.pool.fetch(sql, *args))
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        raise LedgerUnavailable("ledger database is unreachable") from e


async def live_grants(ledger: Ledger, subject: str, *, key: _Key) -> list[GrantRecord]:
    """Issued grants of ``subject`` (by ``key``) with no end event and not yet expired."""
    rows = await _fetch(
        ledger, _GRANT_SELECT + " AND t.event IS NULL AND i.expires_at > now() ORDER BY i.seq"
    )
    want = key(subject)
    return [g for g in map(_grant, rows) if key(g.issued.subject or "") == want]


async def live_elevation_ids(
    ledger: Ledger, subject: str, *, since: datetime, key: _Key
) -> list[uuid.UUID]:
    """Elevations ``subject`` requested since ``since`` that have no closing event yet."""
    rows = await _fetch(
        ledger,
        "SELECT r.subject, r.body->>'elevation_id' AS id FROM ledger.events r"
        " WHERE r.event = 'elevation.requested' AND r.recorded_at >= $1"
        " AND NOT EXISTS (SELECT 1 FROM ledger.events c"
        "   WHERE c.dedupe_key = 'elevation:' || (r.body->>'elevation_id') || ':closed')"
        " ORDER BY r.seq",
        since,
    )
    want = key(subject)
    return [uuid.UUID(r["id"]) for r in rows if key(r["subject"] or "") == want]


async def live_sessions(ledger: Ledger, subject: str, *, since: datetime, key: _Key) -> list[str]:
    """Accessors of ``subject``'s sessions created since ``since``, before their max
    lifetime and not revoked — every session that could still be used or renewed."""
    rows = await _fetch(
        ledger,
        "SELECT c.subject, c.body->>'accessor' AS accessor FROM ledger.events c"
        " WHERE c.event = 'session.created' AND c.recorded_at >= $1"
        " AND (c.body->>'max_expires_at')::timestamptz > now()"
        # events.session_revoked_key, spelled in SQL.
        " AND NOT EXISTS (SELECT 1 FROM ledger.events r"
        "   WHERE r.dedupe_key = 'session:' || (c.body->>'accessor') || ':revoked')"
        " ORDER BY c.seq",
        since,
    )
    want = key(subject)
    return [str(r["accessor"]) for r in rows if key(r["subject"] or "") == want]


async def offboarding_events(ledger: Ledger, *, after_seq: int = 0) -> list[Event]:
    """Every ``subject.*`` offboarding event with seq > ``after_seq``, in seq order."""
    rows = await _fetch(
        ledger,
        "SELECT * FROM ledger.events WHERE event = ANY($1::text[]) AND seq > $2 ORDER BY seq",
        list(OFFBOARDING_EVENTS),
        after_seq,
    )
    return [row_to_event(r) for r in rows]


async def offboarding_events_between(
    ledger: Ledger, *, since: datetime | None, until: datetime | None, limit: int
) -> list[Event]:
    """Offboardings started in [since, until) (newest ``limit``), with their later events."""
    started = await _fetch(
        ledger,
        "SELECT * FROM ledger.events WHERE event = 'subject.offboarding_started'"
        " AND ($1::timestamptz IS NULL OR recorded_at >= $1)"
        " AND ($2::timestamptz IS NULL OR recorded_at < $2)"
        " ORDER BY seq DESC LIMIT $3",
        since,
        until,
        limit,
    )
    if not started:
        return []
    ids = [str(r["body"]["offboarding_id"]) for r in started]
    later = await _fetch(
        ledger,
        "SELECT * FROM ledger.events WHERE event IN ('subject.offboarded', 'subject.reinstated')"
        " AND seq > $1 AND body->>'offboarding_id' = ANY($2::text[]) ORDER BY seq",
        min(r["seq"] for r in started),
        ids,
    )
    return sorted((row_to_event(r) for r in [*started, *later]), key=lambda e: e.seq)


async def offboarding_events_of(ledger: Ledger, offboarding_id: uuid.UUID) -> list[Event]:
    """The ``subject.*`` events of one offboarding, in seq order."""
    rows = await _fetch(
        ledger,
        "SELECT * FROM ledger.events WHERE event = ANY($1::text[])"
        " AND body->>'offboarding_id' = $2 ORDER BY seq",
        list(OFFBOARDING_EVENTS),
        str(offboarding_id),
    )
    return [row_to_event(r) for r in rows]


@dataclass(frozen=True)
class OffboardingActions:
    """What one offboarding ended, each list in ledger order."""

    grants: list[str]  # grant ids revoked
    elevations: list[str]  # elevation ids closed
    sessions: list[str]  # session accessors revoked


async def offboarding_actions(
    ledger: Ledger, offboarding_id: uuid.UUID, *, after_seq: int
) -> OffboardingActions:
    """The grants, elevations and sessions this offboarding ended."""
    steps = await offboarding_steps(ledger, offboarding_id, after_seq=after_seq)
    return OffboardingActions(
        grants=[a.what for a in steps if a.event == "grant.revoked"],
        elevations=[a.what for a in steps if a.event.startswith("elevation.")],
        sessions=[a.what for a in steps if a.event == "session.revoked"],
    )


@dataclass(frozen=True)
class OffboardingAction:
    """One thing an offboarding ended, as its ledger row says: ``what`` is the grant id,
    elevation id or session accessor."""

    seq: int
    event: str
    recorded_at: datetime
    secret: str | None
    what: str


async def offboarding_steps(
    ledger: Ledger, offboarding_id: uuid.UUID, *, after_seq: int
) -> list[OffboardingAction]:
    """What ``offboarding_actions`` counts, row by row (for watching one as it runs)."""
    rows = await _fetch(
        ledger,
        "SELECT seq, event, recorded_at, secret, grant_id, body->>'elevation_id' AS elevation_id,"
        " body->>'accessor' AS accessor FROM ledger.events"
        " WHERE seq > $1 AND ("
        "   (event = 'grant.revoked' AND body->>'reason' = $2)"
        "   OR (event IN ('elevation.ended', 'elevation.cancelled', 'session.revoked')"
        "       AND body->>'offboarding_id' = $3))"
        " ORDER BY seq",
        after_seq,
        f"offboarding {offboarding_id}",
        str(offboarding_id),
    )
    return [
        OffboardingAction(
            seq=r["seq"],
            event=r["event"],
            recorded_at=r["recorded_at"],
            secret=r["secret"],
            what=str(r["grant_id"] or r["elevation_id"] or r["accessor"] or ""),
        )
        for r in rows
    ]
