"""Request authentication, with failures counted and aggregated for the ledger.

A bearer credential is either a JWT (services; verified by ``Verifier``) or a broker
session token (``hvb.``: people signed in through their identity provider, and Vault-API
logins), looked up in the ledger-backed ``SessionStore``.

Each failed attempt increments a metric and a per-reason counter; ``drain()`` hands the
counts to a periodic task that writes one ``auth.failed`` row per interval. An
unauthenticated flood therefore costs at most one ledger row per interval per replica.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime

from aiohttp import web

from broker.auth import Principal, Verifier
from broker.errors import AuthError
from broker.metrics import Metrics
from broker.offboarding.blocklist import SubjectBlocklist
from broker.sessions import Session, SessionStore, is_session_token

__all__ = ["PRINCIPAL", "SESSION", "Authenticator", "principal_of", "session_of"]

# The authenticated caller, for the middleware that ledgers rejected requests.
PRINCIPAL = web.RequestKey("principal", Principal)
# The broker session the caller presented, when it presented one instead of a JWT.
SESSION = web.RequestKey("session", Session)

_log = logging.getLogger(__name__)


class Authenticator:
    def __init__(
        self, verifier: Verifier, metrics: Metrics, *, blocklist: SubjectBlocklist | None = None
    ) -> None:
        self._verifier = verifier
        self._metrics = metrics
        self._blocklist = blocklist  # offboarded subjects: refused even with a valid token
        self._failures: Counter[str] = Counter()
        self._since = datetime.now(UTC)
        self._sessions: SessionStore | None = None

    def attach_sessions(self, sessions: SessionStore) -> None:
        """Accept session tokens too (the store needs services built after this)."""
        self._sessions = sessions

    async def authenticate(self, request: web.Request) -> Principal:
        """Return the caller's Principal or raise AuthError (401, code = reason).

        An offboarded subject is refused after verification: Forbidden (403,
        ``subject_offboarded``).
        """
        return await self._authenticate(request, request.headers.get("Authorization"))

    async def _authenticate(self, request: web.Request, header: str | None) -> Principal:
        try:
            session = await self._session(header)
            if session is not None:
                request[SESSION] = session
                principal = session.principal
            else:
                principal = await self._verifier.verify(header)
        except AuthError as e:
            self._metrics.auth_failures.labels(e.code).inc()
            self._failures[e.code] += 1
            _log.info(
                "authentication failed: %s (%s %s from %s)",
                e.code,
                request.method,
                request.path[:200],
                request.remote,
            )
            raise
        request[PRINCIPAL] = principal
        if self._blocklist is not None:
            self._blocklist.refuse_if_blocked(principal)  # 403 subject_offboarded
        return principal

    async def authenticate_token(self, request: web.Request, token: str) -> Principal:
        """The console's way in: the session token its cookie holds, checked and counted
        exactly as a ``Bearer`` one."""
        return await self._authenticate(request, f"Bearer {token}")

    async def _session(self, header: str | None) -> Session | None:
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not is_session_token(token):
            return None
        if self._sessions is None:
            raise AuthError("session tokens are not accepted here", code="invalid_session")
        return await self._sessions.authenticate(token)

    def count_failure(self, code: str) -> None:
        """Count a failure seen by another front end (a bad Vault-API login or session)."""
        self._metrics.auth_failures.labels(code).inc()
        self._failures[code] += 1

    def refuse_if_offboarded(self, principal: Principal) -> None:
        """Forbidden (403, ``subject_offboarded``) for a subject offboarded since login."""
        if self._blocklist is not None:
            self._blocklist.refuse_if_blocked(principal)

    def drain(self) -> tuple[dict[str, int], datetime, datetime]:
        """Take the counts since the last drain: (counts, window start, window end)."""
        counts, start, now = dict(self._failures), self._since, datetime.now(UTC)
        self._failures.clear()
        self._since = now
        return counts, start, now

    def give_back(self, counts: dict[str, int], start: datetime) -> None:
        """Return drained counts that could not be recorded, to go in the next window."""
        self._failures.update(counts)
        self._since = min(self._since, start)


def principal_of(request: web.Request) -> Principal:
    """The caller, authenticated by the route middleware (non-public routes only)."""
    return request[PRINCIPAL]


def session_of(request: web.Request) -> Session | None:
    """The session the caller signed in with, or None for a JWT."""
    return request.get(SESSION)
