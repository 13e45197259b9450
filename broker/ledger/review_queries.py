"""Read queries for access reviews (``broker.reviews``); the only SQL that domain needs.

Review events are few (a handful of reviews a quarter, one decision per entitlement), so
they are found through the ``(event, recorded_at)`` index and filtered on
``body->>'review_id'``; no migration is needed. Usage is one aggregate over the period's
``grant.issued`` rows, which the same index bounds by time.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from .events import Event
from .store import row_to_event

__all__ = [
    "completed_review_periods",
    "first_loaded",
    "open_revocations",
    "review_events",
    "review_ids",
    "usage_in_period",
]

_REVIEW_EVENTS = ["review.opened", "review.decision", "review.completed", "review.action_resolved"]


async def usage_in_period(
    pool: asyncpg.Pool, start: datetime, end: datetime, *, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Who used what in ``[start, end)``: one row per distinct (subject, secret, role) of
    ``grant.issued``, with the number of grants and the last one, sorted by subject, secret,
    role. At most ``limit`` rows; the flag says whether more existed."""
    rows = await pool.fetch(
        "SELECT subject, min(subject_kind) AS subject_kind, secret, role,"
        " count(*) AS grants, max(recorded_at) AS last_used"
        " FROM ledger.events"
        " WHERE event = 'grant.issued' AND recorded_at >= $1 AND recorded_at < $2"
        " GROUP BY subject, secret, role"
        " ORDER BY subject, secret, role LIMIT $3",
        start,
        end,
        limit + 1,
    )
    out = [
        {
            "subject": r["subject"],
            "subject_kind": r["subject_kind"],
            "secret": r["secret"],
            "role": r["role"],
            "grants": int(r["grants"]),
            "last_used": r["last_used"].isoformat(),
        }
        for r in rows[:limit]
    ]
    return out, len(rows) > limit


async def review_events(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Event]]:
    """Every event of each review, in seq order."""
    if not ids:
        return {}
    rows = await pool.fetch(
        "SELECT * FROM ledger.events WHERE event = ANY($1::text[])"
        " AND body->>'review_id' = ANY($2::text[]) ORDER BY seq",
        _REVIEW_EVENTS,
        [str(i) for i in ids],
    )
    out: dict[uuid.UUID, list[Event]] = {i: [] for i in ids}
    for r in rows:
        out[uuid.UUID(r["body"]["review_id"])].append(row_to_event(r))
    return out


async def review_ids(pool: asyncpg.Pool, *, period: str | None, limit: int) -> list[uuid.UUID]:
    """Ids of opened reviews, newest first, optionally of one period."""
    rows = await pool.fetch(
        "SELECT body->>'review_id' AS id FROM ledger.events"
        " WHERE event = 'review.opened' AND ($1::text IS NULL OR body->>'period' = $1)"
        " ORDER BY seq DESC LIMIT $2",
        period,
        limit,
    )
    return [uuid.UUID(r["id"]) for r in rows]


async def completed_review_periods(db: asyncpg.Pool | asyncpg.Connection) -> list[str]:
    """Every quarter with a completed access review, whenever it was completed, sorted.

    A quarter is usually reviewed just after it ends, so an export of that quarter alone
    would not contain the completion row; the evidence package records these periods.
    """
    rows = await db.fetch(
        "SELECT DISTINCT body->>'period' AS period FROM ledger.events"
        " WHERE event = 'review.completed' AND body ? 'period' ORDER BY 1"
    )
    return [r["period"] for r in rows]


async def open_revocations(pool: asyncpg.Pool, *, after: int, limit: int) -> list[Event]:
    """``revoke`` decisions after seq ``after`` without a ``review.action_resolved`` yet,
    oldest first (page with the last seq returned)."""
    rows = await pool.fetch(
        "SELECT d.* FROM ledger.events d"
        " WHERE d.event = 'review.decision' AND d.outcome = 'revoke' AND d.seq > $2"
        " AND NOT EXISTS (SELECT 1 FROM ledger.events r WHERE r.dedupe_key ="
        "  'review:' || (d.body->>'review_id') || ':action:'"
        "  || (d.body->>'entitlement_id') || ':resolved')"
        " ORDER BY d.seq LIMIT $1",
        limit,
        after,
    )
    return [row_to_event(r) for r in rows]


async def first_loaded(pool: asyncpg.Pool, versions: list[str]) -> dict[str, int]:
    """For each policy version, the seq of its first ``policy.loaded`` (absent if none):
    the ledger's order of versions, the same on every replica."""
    rows = await pool.fetch(
        "SELECT policy_version, min(seq) AS seq FROM ledger.events"
        " WHERE event = 'policy.loaded' AND policy_version = ANY($1::text[])"
        " GROUP BY policy_version",
        versions,
    )
    return {r["policy_version"]: int(r["seq"]) for r in rows}
