"""Broker session tokens: opaque, short-lived, renewable to a max.

People who sign in through their identity provider (``broker.oidc``: the CLI, the ``bao``
CLI, the console) and Vault-API clients that log in with a JWT get
``hvb.<accessor>.<secret>``; the native API and the front door both accept it. The token
itself is never stored: the ledger's ``session.created`` row holds the accessor, the
SHA-256 of the token and the principal the login proved; ``session.renewed`` /
``session.revoked`` follow it. Sessions are therefore shared by every replica (one indexed
lookup by accessor on first sight) and are evidence themselves. Each replica caches what it
has read for ``recheck_seconds``, so a revocation on another replica takes effect here
within that bound (at once on the replica that did it).

Offboarding ends every session of its subject for good: ``authenticate`` refuses a session
the ``EndedSessions`` it was given says ended (created before the subject's latest
offboarding; see ``broker.offboarding.blocklist``), before and after a reinstatement, on
every replica. The offboarding also ledgers ``session.revoked`` for each.

It is never a Vault token: nothing here reaches Vault, and Vault never sees it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from broker.auth import Principal
from broker.errors import AuthError, BadRequest
from broker.ledger import Event, Ledger, NewEvent, session_revoked_key

__all__ = ["EndedSessions", "Session", "SessionStore", "is_session_token", "token_secret"]

_PREFIX = "hvb."
_MAX_TOKEN_CHARS = 128
_CACHE_SIZE = 10_000


def is_session_token(token: str) -> bool:
    """Whether ``token`` has a session token's shape (not whether it is valid)."""
    return token.startswith(_PREFIX)


def token_secret(token: str) -> bytes:
    """The secret part of a session token: what only its holder knows (a key derives
    from it for what the server keeps for that holder alone)."""
    return token.rpartition(".")[2].encode()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class EndedSessions(Protocol):
    """Which sessions were ended wholesale (``OffboardingService`` answers it)."""

    def session_ended(self, subject: str, created_seq: int) -> bool: ...


@dataclass(frozen=True)
class Session:
    accessor: str
    principal: Principal
    created_seq: int  # the ledger row of session.created
    created_at: datetime
    expires_at: datetime
    max_expires_at: datetime
    ttl_seconds: int
    login_mount: str
    login_role: str | None
    token_sha256: str
    revoked: bool = False
    provider: str | None = None  # the identity provider signed in with, if any

    def remaining(self, now: datetime) -> int:
        return max(0, int((self.expires_at - now).total_seconds()))


def _fold(events: list[Event]) -> Session | None:
    """The session as its ledger rows say (None if it was never created)."""
    session: Session | None = None
    for e in events:
        b = e.body
        if e.event == "session.created":
            session = Session(
                accessor=str(b["accessor"]),
                principal=Principal(
                    subject=e.subject or "",
                    kind="service" if e.subject_kind == "service" else "human",
                    issuer=str(b.get("issuer", "")),
                    groups=frozenset(str(g) for g in b.get("groups") or ()),
                    token_id=b.get("token_id"),
                ),
                created_seq=e.seq,
                created_at=e.recorded_at,
                expires_at=datetime.fromisoformat(str(b["expires_at"])),
                max_expires_at=datetime.fromisoformat(str(b["max_expires_at"])),
                ttl_seconds=int(b["ttl"]),
                login_mount=str(b.get("mount", "")),
                login_role=b.get("login_role"),
                token_sha256=str(b["token_sha256"]),
                provider=b.get("provider"),
            )
        elif session is not None and e.event == "session.renewed":
            renewed = datetime.fromisoformat(str(b["expires_at"]))
            session = replace(session, expires_at=max(session.expires_at, renewed))
            if "groups" in b:  # re-read from the identity provider at this renewal
                groups = frozenset(str(g) for g in b["groups"] or ())
                session = replace(session, principal=replace(session.principal, groups=groups))
        elif session is not None and e.event == "session.revoked":
            session = replace(session, revoked=True)
    return session


class SessionStore:
    def __init__(
        self,
        ledger: Ledger,
        *,
        ttl_seconds: int,
        max_ttl_seconds: int,
        recheck_seconds: float,
        clock: Callable[[], datetime],
        ended: EndedSessions,
    ) -> None:
        if not 0 < ttl_seconds <= max_ttl_seconds:
            raise ValueError("session ttl must be positive and at most the max ttl")
        self._ledger = ledger
        self._ended = ended
        self._ttl = ttl_seconds
        self._max_ttl = max_ttl_seconds
        self._recheck = recheck_seconds
        self._clock = clock
        # accessor -> (session, when it was read from the ledger, monotonic)
        self._cache: OrderedDict[str, tuple[Session, float]] = OrderedDict()

    def _remember(self, session: Session) -> None:
        self._cache[session.accessor] = (session, time.monotonic())
        self._cache.move_to_end(session.accessor)
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)

    async def create(
        self,
        principal: Principal,
        *,
        mount: str,
        login_role: str | None,
        request_id: str,
        client: Mapping[str, str],
        provider: str | None = None,
    ) -> tuple[str, Session]:
        """Record a new session for ``principal``; return (token, session).

        The token is returned once, here; the ledger keeps only its hash.
        """
        accessor = secrets.token_urlsafe(18)
        token = f"{_PREFIX}{accessor}.{secrets.token_urlsafe(32)}"
        now = self._clock()
        expires_at = now + timedelta(seconds=self._ttl)
        max_expires_at = now + timedelta(seconds=self._max_ttl)
        appended = await self._ledger.append(
            NewEvent(
                event="session.created",
                outcome="ok",
                subject=principal.subject,
                subject_kind=principal.kind,
                expires_at=expires_at,
                request_id=request_id,
                body={
                    "accessor": accessor,
                    "token_sha256": _digest(token),
                    "issuer": principal.issuer,
                    "groups": sorted(principal.groups),
                    "token_id": principal.token_id,
                    "mount": mount,
                    "login_role": login_role,
                    "ttl": self._ttl,
                    "expires_at": expires_at.isoformat(),
                    "max_expires_at": max_expires_at.isoformat(),
                    "client": dict(client),
                    **({"provider": provider} if provider else {}),
                },
            )
        )
        session = Session(
            accessor=accessor,
            principal=principal,
            # Always set for an unguarded row; 0 would only make the session end sooner.
            created_seq=appended.seq or 0,
            created_at=now,
            expires_at=expires_at,
            max_expires_at=max_expires_at,
            ttl_seconds=self._ttl,
            login_mount=mount,
            login_role=login_role,
            token_sha256=_digest(token),
            provider=provider,
        )
        self._remember(session)
        return token, session

    async def _load(self, accessor: str, *, fresh: bool) -> Session | None:
        cached = self._cache.get(accessor)
        if cached is not None and not fresh:
            known, read_at = cached
            if time.monotonic() - read_at < self._recheck:
                return known
        session = _fold(await self._ledger.session_events(accessor))
        if session is not None:
            self._remember(session)
        return session

    async def authenticate(self, token: str | None) -> Session:
        """The live session ``token`` belongs to, or AuthError (the code says why)."""
        if not token:
            raise AuthError("a Vault token (X-Vault-Token) is required", code="missing_token")
        if len(token) > _MAX_TOKEN_CHARS or not token.startswith(_PREFIX):
            raise AuthError("not a broker session token", code="invalid_session")
        accessor, _, rest = token[len(_PREFIX) :].partition(".")
        if not accessor or not rest:
            raise AuthError("not a broker session token", code="invalid_session")
        session = await self._load(accessor, fresh=False)
        if session is None or not hmac.compare_digest(session.token_sha256, _digest(token)):
            raise AuthError("unknown session token", code="invalid_session")
        now = self._clock()
        if not session.revoked and session.expires_at <= now:
            # Perhaps renewed on another replica since we last looked.
            session = (await self._load(accessor, fresh=True)) or session
        if session.revoked:
            raise AuthError("the session token was revoked", code="session_revoked")
        if self._ended.session_ended(session.principal.subject, session.created_seq):
            raise AuthError(
                "the session ended when its subject was offboarded", code="session_revoked"
            )
        if session.expires_at <= now:
            raise AuthError("the session token has expired", code="session_expired")
        return session

    async def renew(
        self,
        session: Session,
        increment: int | None,
        *,
        request_id: str,
        groups: frozenset[str] | None = None,
    ) -> Session:
        """Extend by ``increment`` seconds (default: the session TTL), never past the max.

        ``groups``: what the identity provider says now (a refresh), recorded and used from
        here on."""
        if increment is not None and increment < 0:
            raise BadRequest("increment must not be negative", code="invalid_increment")
        now = self._clock()
        wanted = now + timedelta(seconds=increment or session.ttl_seconds)
        expires = min(wanted, session.max_expires_at)
        await self._ledger.append(
            NewEvent(
                event="session.renewed",
                outcome="ok",
                subject=session.principal.subject,
                subject_kind=session.principal.kind,
                expires_at=expires,
                request_id=request_id,
                body={
                    "accessor": session.accessor,
                    "expires_at": expires.isoformat(),
                    **({"groups": sorted(groups)} if groups is not None else {}),
                },
            )
        )
        renewed = replace(session, expires_at=max(expires, session.expires_at))
        if groups is not None:
            renewed = replace(renewed, principal=replace(session.principal, groups=groups))
        self._remember(renewed)
        return renewed

    async def revoke(self, session: Session, *, request_id: str, reason: str | None = None) -> None:
        await self._ledger.append(
            NewEvent(
                event="session.revoked",
                outcome="ok",
                subject=session.principal.subject,
                subject_kind=session.principal.kind,
                request_id=request_id,
                body={"accessor": session.accessor, **({"reason": reason} if reason else {})},
                dedupe_key=session_revoked_key(session.accessor),
            )
        )
        self._remember(replace(session, revoked=True))
