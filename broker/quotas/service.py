"""Quotas: the one place that decides whether a principal may mint (or ask) now.

Three limits per principal, declared in policy over settings' defaults (``limits.py``):
the issuance rate (token bucket, per replica), live grants per leased secret (counted in
the ledger, so across replicas), and elevation requests per hour (also the ledger). And
one bulkhead per Vault engine, so a flood of slow database mints cannot take the slots
KV reads need. A refusal raises ``TooManyRequests`` (429) or ``BackendBusy`` (503), both
with ``Retry-After``; it is counted for the aggregated ``quota.refused`` row, never
ledgered one by one, and nothing is minted.

Rules this module relies on:
- the rate is checked before anything else happens for the request (denied requests
  spend tokens too: a flood of refusals is still a flood);
- the live-grant check and the intent row it admits happen under one lock per
  (subject, secret) (``hold_live_grants``); callers append the intent inside it.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.auth.principal import Principal
from broker.errors import BackendBusy, LedgerUnavailable, TooManyRequests
from broker.ledger import Ledger
from broker.ledger.quota_queries import (
    elevation_requests_since,
    hold_live_grants,
    live_grant_counts,
)
from broker.metrics import Metrics
from broker.policy.active import ActivePolicy
from broker.policy.decide import requestable, roles_for
from broker.policy.model import CatalogEntry, Limits, Role
from broker.settings import Settings

from .buckets import TokenBuckets
from .bulkhead import Bulkhead
from .limits import (
    LEASED_ENGINES,
    Effective,
    effective,
    elevation_requests,
    rate_text,
    said_by,
)
from .refusals import RefusalTally

__all__ = ["Quotas"]

_HOUR = timedelta(hours=1)
# Longest wait the answer names for a live-grant quota: by then one may have been revoked.
_MAX_RETRY_AFTER = 3600


@dataclass
class _Turn:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Quotas:
    def __init__(
        self, settings: Settings, *, ledger: Ledger, policy: ActivePolicy, metrics: Metrics
    ) -> None:
        self.defaults = Limits(
            rate=settings.quota_rate,
            burst=settings.quota_burst,
            live_grants=settings.quota_live_grants,
            elevation_requests=settings.quota_elevation_requests,
        )
        self._ledger = ledger
        self._policy = policy
        self._buckets = TokenBuckets()
        self._refusal_hold = settings.quota_refusal_hold_seconds
        self.refusals = RefusalTally(metrics)
        # A mint whose intent is older than this has crashed (the orphan sweep ends it).
        self._pending = timedelta(seconds=4 * settings.vault_timeout_seconds + 30)
        self._db_timeout = settings.db_timeout_seconds
        self._bulkheads = {
            engine: Bulkhead(
                engine,
                limit=limit,
                queue=settings.bulkhead_queue,
                wait_seconds=settings.bulkhead_wait_seconds,
                metrics=metrics,
            )
            for engine, limit in (
                ("kv2", settings.bulkhead_kv2),
                ("database", settings.bulkhead_database),
                ("pki", settings.bulkhead_pki),
                ("ssh", settings.bulkhead_ssh),
            )
        }
        # Issuances of one (subject, secret) on this replica queue here, holding no
        # database connection, before they take the cross-replica lock.
        self._turns: dict[tuple[str, str], _Turn] = {}

    def limits(self, role: Role | None, entry: CatalogEntry | None) -> Effective:
        return effective(self.defaults, role, entry)

    async def take_rate(
        self, principal: Principal, role: Role | None, entry: CatalogEntry | None, secret: str
    ) -> Effective:
        """Spend one issuance token; raise TooManyRequests (``rate_limited``) if none.

        A principal refused and asking again before a token is due (it did not wait as
        told: a retry storm, a tight loop) gets its refusal only after that wait, at most
        ``quota_refusal_hold_seconds``. Answered at once, such refusals come back as fast
        as the broker can answer them, and cheap as each is, they would keep its event
        loop from everyone else's requests; held, the client's own connections pace it.
        Each hold is jittered (half to all of it): held for the same wait, a storm's
        connections would come back at the same instant, with the next token, as one herd.
        """
        limits = self.limits(role, entry)
        key = (principal.subject, limits.rate_scope)
        again = self._buckets.refused_last(key)
        wait = self._buckets.take(key, limits.rate, limits.burst)
        if wait:
            self.refusals.count(principal, "rate_limited", secret)
            if again and self._refusal_hold:
                jitter = random.uniform(0.5, 1.0)  # noqa: S311 jitter, not crypto
                await asyncio.sleep(min(wait, self._refusal_hold) * jitter)
            raise TooManyRequests(
                f"issuance rate limit reached for {principal.subject!r}:"
                f" {limits.describe_rate()}; retry in {wait}s",
                code="rate_limited",
                retry_after=wait,
            )
        return limits

    @asynccontextmanager
    async def live_grant(
        self, principal: Principal, entry: CatalogEntry, limits: Effective
    ) -> AsyncIterator[None]:
        """Admit one more live grant of ``entry`` for ``principal`` or raise
        TooManyRequests (``quota_exceeded``); the caller appends its intent inside."""
        if limits.live_grants is None or entry.engine not in LEASED_ENGINES:
            yield
            return
        key = (principal.subject, entry.name)
        turn = self._turns.get(key) or self._turns.setdefault(key, _Turn())
        turn.users += 1
        try:
            await self._take_turn(turn)
        except BaseException:
            turn.users -= 1
            if not turn.users:
                del self._turns[key]
            raise
        try:
            async with hold_live_grants(
                self._ledger,
                principal.subject,
                entry.name,
                horizon=self._horizon(),
                pending=self._pending,
                timeout=self._db_timeout,
            ) as live:
                if live.count >= limits.live_grants:
                    self.refusals.count(principal, "live_grants", entry.name)
                    raise self._live_refusal(entry, limits, live.count, live.next_end)
                yield
        finally:
            turn.lock.release()
            turn.users -= 1
            if not turn.users:
                del self._turns[key]

    async def _take_turn(self, turn: _Turn) -> None:
        # Bounded like every ledger wait: a slow database must not queue requests forever.
        try:
            async with asyncio.timeout(self._db_timeout):
                await turn.lock.acquire()
        except TimeoutError:
            raise LedgerUnavailable("the ledger is too slow to count live grants") from None

    def _horizon(self) -> timedelta:
        # A live grant is younger than the longest max_ttl of the active policy.
        longest = max((r.max_ttl for r in self._policy.current.roles), default=0)
        return timedelta(seconds=longest + 60)

    @staticmethod
    def _live_refusal(
        entry: CatalogEntry, limits: Effective, live: int, next_end: datetime | None
    ) -> TooManyRequests:
        wait = 1
        if next_end is not None:
            left = math.ceil((next_end - datetime.now(UTC)).total_seconds())
            wait = min(max(1, left), _MAX_RETRY_AFTER)
        return TooManyRequests(
            f"you hold {live} live grants of {entry.name!r} (limit {limits.live_grants} per"
            f" principal, {said_by(limits.live_scope)}); see them with"
            " `broker grants list --active`, end one with"
            f" `broker grants revoke GRANT_ID`, or retry in {wait}s when the next one ends",
            code="quota_exceeded",
            retry_after=wait,
        )

    @asynccontextmanager
    async def backend(self, principal: Principal, entry: CatalogEntry) -> AsyncIterator[None]:
        """Hold a slot of ``entry``'s engine for the Vault call in the body."""
        bulkhead = self._bulkheads[entry.engine]
        try:
            await bulkhead.acquire()
        except BackendBusy:
            self.refusals.count(principal, "backend_busy", entry.name)
            raise
        try:
            yield
        finally:
            bulkhead.release()

    async def check_elevation_request(self, principal: Principal, role: Role) -> None:
        """Raise TooManyRequests (``quota_exceeded``) when ``principal`` has made its
        hour's elevation requests under ``role``'s limit (counted in the ledger)."""
        limit, scope = elevation_requests(self.defaults, role)
        now = datetime.now(UTC)
        recent = await elevation_requests_since(self._ledger, principal.subject, now - _HOUR, limit)
        if len(recent) < limit:
            return
        self.refusals.count(principal, "elevation_requests", None)
        wait = max(1, math.ceil((recent[0] + _HOUR - now).total_seconds()))
        raise TooManyRequests(
            f"{len(recent)} elevation requests in the last hour (limit {limit}, {said_by(scope)});"
            f" retry in {wait}s",
            code="quota_exceeded",
            retry_after=wait,
        )

    async def usage(self, principal: Principal) -> dict[str, Any]:
        """The caller's limits and current use, for ``GET /v1/me``."""
        policy = self._policy.current
        default = self.limits(None, None)
        rates = {default.rate_scope: default}
        live: list[dict[str, Any]] = []
        roles = {r.name: r for r in roles_for(policy, principal)}
        for item in requestable(policy, principal):  # the role decide() would cite
            entry, role = policy.catalog[item["secret"]], roles[item["role"]]
            lim = self.limits(role, entry)
            rates.setdefault(lim.rate_scope, lim)
            if lim.live_grants is not None:
                live.append({"secret": entry.name, "limit": lim.live_grants})
        counts = await live_grant_counts(self._ledger, principal.subject, self._horizon())
        for held in live:
            held["live"] = counts.get(held["secret"], 0)
        elevation_limit = min(
            (elevation_requests(self.defaults, r)[0] for r in roles.values() if r.privileged),
            default=self.defaults.elevation_requests,
        )
        since = datetime.now(UTC) - _HOUR
        made = await elevation_requests_since(
            self._ledger, principal.subject, since, elevation_limit or 1
        )
        return {
            "issuance_rate": [
                {
                    "scope": scope,
                    "rate": rate_text(lim.rate),
                    "burst": lim.burst,
                    "available": math.floor(
                        self._buckets.available((principal.subject, scope), lim.rate, lim.burst)
                    ),
                    "per": "replica",
                }
                for scope, lim in sorted(rates.items())
            ],
            "live_grants": live,
            "elevation_requests": {"per_hour": elevation_limit, "used": len(made)},
        }
