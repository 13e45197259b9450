"""Read queries for quotas: a principal's live grants of one secret, held under a lock,
and its recent elevation requests.

The live count is what every replica sees: grants issued and not ended (nor past their
end), plus grants whose ``grant.intent`` committed but whose mint has not finished
(issued or failed) yet — a mint in flight on another replica counts, so two replicas
cannot both hand out the last slot. Both parts are bounded by the subject's index and a
time horizon (a live grant cannot be older than the longest ``max_ttl``; an intent older
than ``pending_seconds`` is a crashed mint, which the orphan sweep ends).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from broker.errors import LedgerUnavailable

from .store import Ledger

__all__ = ["LiveGrants", "elevation_requests_since", "hold_live_grants", "live_grant_counts"]

_LIVE_SQL = """
SELECT count(*) AS live, min(expires_at) AS next_end FROM (
    SELECT i.expires_at FROM ledger.events i
    WHERE i.event = 'grant.issued' AND i.subject = $1 AND i.secret = $2
      AND i.recorded_at > now() - $3::interval AND i.expires_at > now()
      AND NOT EXISTS (
          SELECT 1 FROM ledger.events e WHERE e.grant_id = i.grant_id
            AND e.event IN ('grant.revoked', 'grant.expired'))
    UNION ALL
    SELECT NULL FROM ledger.events p
    WHERE p.event = 'grant.intent' AND p.subject = $1 AND p.secret = $2
      AND p.recorded_at > now() - $4::interval
      AND NOT EXISTS (
          SELECT 1 FROM ledger.events e WHERE e.grant_id = p.grant_id
            AND e.event IN ('grant.issued', 'grant.failed'))
) live
"""


@dataclass(frozen=True)
class LiveGrants:
    count: int
    next_end: datetime | None  # when the first live grant ends, if any is issued


def _lock_key(subject: str, secret: str) -> int:
    # A 63-bit key of its own namespace: advisory locks share one key space per database.
    digest = hashlib.blake2b(f"quota\0{subject}\0{secret}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@asynccontextmanager
async def hold_live_grants(
    ledger: Ledger,
    subject: str,
    secret: str,
    *,
    horizon: timedelta,
    pending: timedelta,
    timeout: float,
) -> AsyncIterator[LiveGrants]:
    """Count ``subject``'s live grants of ``secret`` and hold the count for the body.

    Every replica takes the same transaction-level advisory lock first, so issuances of
    one (subject, secret) take turns: whoever holds it sees every intent committed before,
    and its own intent (appended inside the body) commits before the next one counts.
    Raise LedgerUnavailable if the database does not answer, or takes longer than
    ``timeout`` seconds to give a connection, the lock and the count (the body's own
    time is bounded by whoever runs it: the ledger writer's commit timeout).
    """
    try:
        async with ledger.pool.acquire(timeout=timeout) as conn, conn.transaction():
            async with asyncio.timeout(timeout):
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(subject, secret))
                row = await conn.fetchrow(_LIVE_SQL, subject, secret, horizon, pending)
            yield LiveGrants(int(row["live"]), row["next_end"])
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        raise LedgerUnavailable("could not count live grants in time") from e


async def elevation_requests_since(
    ledger: Ledger, subject: str, since: datetime, limit: int
) -> list[datetime]:
    """When ``subject`` requested elevations since ``since``, oldest first (at most
    ``limit``)."""
    try:
        rows = await ledger.pool.fetch(
            "SELECT recorded_at FROM ledger.events WHERE event = 'elevation.requested'"
            " AND subject = $1 AND recorded_at >= $2 ORDER BY recorded_at DESC LIMIT $3",
            subject,
            since,
            limit,
        )
    except (OSError, asyncpg.PostgresError) as e:
        raise LedgerUnavailable("could not count elevation requests") from e
    return sorted(r["recorded_at"] for r in rows)


async def live_grant_counts(ledger: Ledger, subject: str, horizon: timedelta) -> dict[str, int]:
    """``subject``'s issued, unended, unexpired grants by secret (what ``GET /v1/me``
    shows against the live-grant quota; mints in flight are not shown)."""
    try:
        rows = await ledger.pool.fetch(
            "SELECT i.secret, count(*) AS live FROM ledger.events i"
            " WHERE i.event = 'grant.issued' AND i.subject = $1"
            " AND i.recorded_at > now() - $2::interval AND i.expires_at > now()"
            " AND NOT EXISTS (SELECT 1 FROM ledger.events e WHERE e.grant_id = i.grant_id"
            " AND e.event IN ('grant.revoked', 'grant.expired'))"
            " GROUP BY i.secret",
            subject,
            horizon,
        )
    except (OSError, asyncpg.PostgresError) as e:
        raise LedgerUnavailable("could not count live grants") from e
    return {r["secret"]: int(r["live"]) for r in rows}
