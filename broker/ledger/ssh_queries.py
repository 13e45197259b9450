"""Read query for the SSH key revocation list: which certificates hosts must refuse.

A certificate is listed while it is still valid and either its grant was ended early
(``grant.revoked``: by its holder, an admin, an offboarding) or it may have been signed
without its ``grant.issued`` row committing (an intent with no issued row, older than
``settle``: a mint in flight right now is not listed, or a host refreshing its list
would refuse a certificate about to be handed out). Bounded by ``horizon``: no SSH
certificate outlives the longest ``max_ttl`` of a role granting one.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from broker.errors import LedgerUnavailable

from .store import Ledger

__all__ = ["ssh_revocations"]

_SQL = """
SELECT i.body->>'serial_number' AS serial, i.body->>'key_id' AS key_id
FROM ledger.events i
WHERE i.event = 'grant.issued' AND i.body->>'engine' = 'ssh' AND i.body->>'mount' = $1
  AND i.recorded_at > now() - $2::interval AND i.expires_at > now()
  AND EXISTS (SELECT 1 FROM ledger.events e
              WHERE e.grant_id = i.grant_id AND e.event = 'grant.revoked')
UNION ALL
SELECT NULL, p.body->>'key_id'
FROM ledger.events p
WHERE p.event = 'grant.intent' AND p.body->>'engine' = 'ssh' AND p.body->>'mount' = $1
  AND p.recorded_at > now() - $2::interval AND p.recorded_at < now() - $3::interval
  AND NOT EXISTS (SELECT 1 FROM ledger.events e
                  WHERE e.grant_id = p.grant_id AND e.event = 'grant.issued')
"""


async def ssh_revocations(
    ledger: Ledger, mount: str, *, horizon: timedelta, settle: timedelta
) -> tuple[set[int], set[str]]:
    """(serials, key ids) of ``mount``'s certificates hosts must refuse now."""
    try:
        rows = await ledger.pool.fetch(_SQL, mount, horizon, settle)
    except (OSError, asyncpg.PostgresError) as e:
        raise LedgerUnavailable("could not read SSH revocations") from e
    serials = {int(r["serial"]) for r in rows if r["serial"]}
    key_ids = {str(r["key_id"]) for r in rows if r["key_id"]}
    return serials, key_ids
