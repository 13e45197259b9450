"""Offboarding: end everything a departing person holds, refuse them, measure the SLA.

The order is the contract (each step a ledger row, so the evidence shows it):

  1. ``subject.offboarding_started`` commits; from then on the subject is refused — on
     this replica at once, on the others within ``blocklist_refresh_seconds``.
  2. Every pending or approved elevation the subject requested is closed
     (``elevation.cancelled`` / ``elevation.ended`` under the shared ``closed_key``), so
     nothing can be redeemed under it; approvals the subject owes others do not matter.
  3. Every session of the subject (the Vault front door's) is revoked: ``session.revoked``
     with reason ``offboarding <id>``, under the session's one revocation key. The rows are
     the evidence; the sessions were refused from step 1 on already, and stay refused after
     a reinstatement (``SubjectBlocklist.session_ended``).
  4. Every active grant of the subject is revoked in Vault, then ``grant.revoked`` with
     reason ``offboarding <id>``. Steps 2-4 run again after one refresh interval, for
     anything an in-flight request on another replica made before it learned of 1.
  5. ``subject.offboarded`` with what was ended and the SLA, measured: met exactly when
     completed_at <= terminated_at + sla_seconds.

A failure in 2-4 (Vault down: 503) leaves 1 standing — the subject stays refused — and
calling ``offboard`` again resumes the same offboarding instead of starting another.

Who may call it is declared on its routes (``admin``; listing ``admin`` or ``audit``) and
enforced before the service runs (``web.access``). Error codes:
  already_offboarded      offboarding a subject whose offboarding completed (409)
  not_offboarded          reinstating a subject who is not offboarded (404)
  offboarding_in_progress reinstating before the offboarding completed (409)
  invalid_terminated_at   terminated_at later than now plus the allowed clock skew (400)
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.auth.principal import Principal
from broker.elevation.model import closed_key, fold, subject_key
from broker.errors import BadRequest, Conflict, NotFound
from broker.grants import GrantService
from broker.ledger import Ledger, NewEvent, session_revoked_key
from broker.ledger.offboarding_queries import (
    live_elevation_ids,
    live_grants,
    live_sessions,
    offboarding_actions,
    offboarding_events,
    offboarding_events_between,
    offboarding_events_of,
    offboarding_steps,
)
from broker.policy.active import ActivePolicy

from .blocklist import SubjectBlocklist, offboarding_started_key
from .model import Offboarding, current_for, fold_offboardings, reinstatements_of

__all__ = ["OffboardingService"]

_log = logging.getLogger(__name__)

# Longer than any elevation can stay open (request_expiry <= 7 d, then a window).
_ELEVATION_HORIZON = timedelta(days=8)
# Slack between a session's clock and the ledger's recorded_at.
_SESSION_SLACK = timedelta(hours=1)


_started_key = offboarding_started_key


def _completed_key(offboarding_id: uuid.UUID) -> str:
    return f"offboarding:{offboarding_id}:completed"


def _reinstated_key(offboarding_id: uuid.UUID) -> str:
    return f"offboarding:{offboarding_id}:reinstated"


class OffboardingService:
    def __init__(
        self,
        *,
        ledger: Ledger,
        grants: GrantService,
        policy: ActivePolicy,
        blocklist: SubjectBlocklist,
        sla_seconds: int,
        settle_seconds: float,
        max_skew_seconds: int,
        session_max_ttl_seconds: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._ledger = ledger
        self._grants = grants
        self._policy = policy
        self._blocklist = blocklist
        self._sla_seconds = sla_seconds
        self._settle_seconds = settle_seconds
        self._max_skew = timedelta(seconds=max_skew_seconds)
        # No session lives longer than this after its creation (its max TTL).
        self._session_horizon = timedelta(seconds=session_max_ttl_seconds) + _SESSION_SLACK
        self._clock = clock

    def session_ended(self, subject: str, created_seq: int) -> bool:
        """Whether an offboarding ended ``subject``'s session created at row ``created_seq``
        (see ``SubjectBlocklist.session_ended``): what session stores ask on every use."""
        return self._blocklist.session_ended(subject, created_seq)

    async def _all(self) -> list[Offboarding]:
        # Offboardings are rare (people leaving): the whole history is small.
        return fold_offboardings(await offboarding_events(self._ledger))

    # --- offboarding --------------------------------------------------------------------

    async def offboard(
        self,
        actor: Principal,
        *,
        subject: str,
        reason: str,
        terminated_at: datetime | None,
        request_id: str,
        on_started: Callable[[uuid.UUID], None] | None = None,
        client: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Offboard ``subject`` (or resume its interrupted offboarding); return the report.

        ``on_started`` is told the offboarding's id once step 1 stands (the subject is
        refused from then on), before anything is ended: the console then shows the
        offboarding as it runs (``watch``) instead of waiting for the report. ``client``
        (the console's ``{"api": "console"}``) goes into the body of every row written."""
        extra = {"client": dict(client)} if client else {}
        now = self._clock()
        if terminated_at is not None and terminated_at > now + self._max_skew:
            raise BadRequest("'terminated_at' is in the future", code="invalid_terminated_at")
        ob = await self._start(
            actor, subject, reason, terminated_at or now, now, request_id=request_id, extra=extra
        )
        self._blocklist.block(ob.subject, seq=ob.started_seq)
        if on_started is not None:
            on_started(ob.id)
        await self._end_access(actor, ob, request_id=request_id, extra=extra)
        if self._settle_seconds > 0:
            # Other replicas learn of the block within one refresh; catch what they minted.
            await asyncio.sleep(self._settle_seconds)
            await self._end_access(actor, ob, request_id=request_id, extra=extra)
        return await self._complete(actor, ob, request_id=request_id, extra=extra)

    async def _start(
        self,
        actor: Principal,
        subject: str,
        reason: str,
        terminated_at: datetime,
        now: datetime,
        *,
        request_id: str,
        extra: Mapping[str, Any],
    ) -> Offboarding:
        """The offboarding to work on: a new one, or the subject's interrupted one."""
        history = await self._all()
        ob = current_for(history, subject)
        if ob is not None:
            if ob.status == "offboarded":
                raise Conflict(f"{ob.subject!r} is already offboarded", code="already_offboarded")
            return ob  # interrupted (Vault was down): resume it as started
        offboarding_id = uuid.uuid4()
        deadline = terminated_at + timedelta(seconds=self._sla_seconds)
        appended = await self._ledger.append(
            NewEvent(
                event="subject.offboarding_started",
                outcome="started",
                subject=actor.subject,
                subject_kind=actor.kind,
                policy_version=self._policy.current.version,
                request_id=request_id,
                body={
                    "offboarding_id": str(offboarding_id),
                    "subject": subject,
                    "reason": reason,
                    "terminated_at": terminated_at.isoformat(),
                    "sla_seconds": self._sla_seconds,
                    "sla_deadline": deadline.isoformat(),
                    **extra,
                },
                dedupe_key=_started_key(subject, reinstatements_of(history, subject)),
            )
        )
        ob = current_for(await self._all(), subject)
        if ob is None:  # we (or a racing admin) just wrote it: only a broken ledger gets here
            raise Conflict("the offboarding could not be started", code="offboarding_conflict")
        if appended.duplicate and ob.status == "offboarded":
            raise Conflict(f"{ob.subject!r} is already offboarded", code="already_offboarded")
        return ob

    async def _end_access(
        self, actor: Principal, ob: Offboarding, *, request_id: str, extra: Mapping[str, Any]
    ) -> None:
        """Close the subject's open elevations, revoke their sessions, then their grants."""
        since = self._clock() - _ELEVATION_HORIZON
        ids = await live_elevation_ids(self._ledger, ob.subject, since=since, key=subject_key)
        events = await self._ledger.elevation_events(ids)
        now = self._clock()
        for eid in ids:
            el = fold(events.get(eid, []))
            if el is None:
                continue
            status = el.status(now)
            if status not in ("pending", "approved"):
                continue  # decided, expired or elapsed: nothing can be redeemed under it
            ended = status == "approved"
            await self._ledger.append(
                NewEvent(
                    event="elevation.ended" if ended else "elevation.cancelled",
                    outcome="ended_early" if ended else "cancelled",
                    subject=actor.subject,
                    subject_kind=actor.kind,
                    secret=el.secret,
                    role=el.role,
                    policy_version=self._policy.current.version,
                    request_id=request_id,
                    body={
                        "elevation_id": str(eid),
                        "comment": f"offboarding {ob.id}",
                        "offboarding_id": str(ob.id),
                        **extra,
                    },
                    dedupe_key=closed_key(eid),
                )
            )
        await self._end_sessions(actor, ob, request_id=request_id, extra=extra)
        grants = await live_grants(self._ledger, ob.subject, key=subject_key)
        await self._grants.revoke_grants(
            [str(g.grant_id) for g in grants],
            actor,
            request_id=request_id,
            reason=f"offboarding {ob.id}",
            cause={"offboarding_id": str(ob.id), **extra},
        )

    async def _end_sessions(
        self, actor: Principal, ob: Offboarding, *, request_id: str, extra: Mapping[str, Any]
    ) -> None:
        since = self._clock() - self._session_horizon
        for accessor in await live_sessions(self._ledger, ob.subject, since=since, key=subject_key):
            await self._ledger.append(
                NewEvent(
                    event="session.revoked",
                    outcome="ok",
                    subject=actor.subject,
                    subject_kind=actor.kind,
                    policy_version=self._policy.current.version,
                    request_id=request_id,
                    body={
                        "accessor": accessor,
                        "session_subject": ob.subject,
                        "reason": f"offboarding {ob.id}",
                        "offboarding_id": str(ob.id),
                        **extra,
                    },
                    dedupe_key=session_revoked_key(accessor),
                )
            )

    async def _complete(
        self, actor: Principal, ob: Offboarding, *, request_id: str, extra: Mapping[str, Any]
    ) -> dict[str, Any]:
        ended = await offboarding_actions(self._ledger, ob.id, after_seq=ob.started_seq)
        completed_at = self._clock()
        report: dict[str, Any] = {
            "offboarding_id": str(ob.id),
            "subject": ob.subject,
            "completed_at": completed_at.isoformat(),
            "grants_revoked": ended.grants,
            "elevations_closed": ended.elevations,
            "sessions_revoked": ended.sessions,
            "terminated_at": ob.terminated_at.isoformat(),
            "sla_seconds": ob.sla_seconds,
            "sla_deadline": ob.sla_deadline.isoformat(),
            "sla_met": completed_at <= ob.sla_deadline,
            "seconds_from_termination": int((completed_at - ob.terminated_at).total_seconds()),
        }
        appended = await self._ledger.append(
            NewEvent(
                event="subject.offboarded",
                outcome="met" if report["sla_met"] else "missed",
                subject=actor.subject,
                subject_kind=actor.kind,
                policy_version=self._policy.current.version,
                request_id=request_id,
                body={**report, **extra},
                dedupe_key=_completed_key(ob.id),
            )
        )
        if appended.duplicate:  # a racing retry completed it first: report what it recorded
            done = next((o for o in await self._all() if o.id == ob.id), None)
            if done is not None and done.completed is not None:
                report = {k: v for k, v in done.completed.items() if k != "client"}
        _log.info(
            "offboarded %s: %d grants revoked, %d elevations closed, %d sessions revoked, SLA %s",
            ob.id,
            len(report["grants_revoked"]),
            len(report["elevations_closed"]),
            len(report.get("sessions_revoked") or ()),
            "met" if report["sla_met"] else "missed",
        )
        return {**report, "reason": ob.reason, "started_at": ob.started_at.isoformat()}

    # --- re-onboarding ------------------------------------------------------------------

    async def reinstate(
        self, actor: Principal, *, subject: str, reason: str, request_id: str
    ) -> dict[str, Any]:
        """Re-onboard ``subject``: ledger ``subject.reinstated``; requests work again."""
        ob = current_for(await self._all(), subject)
        if ob is None:
            raise NotFound(f"{subject!r} is not offboarded", code="not_offboarded")
        if ob.status == "in_progress":
            raise Conflict(
                "the offboarding has not completed: retry it first, then reinstate",
                code="offboarding_in_progress",
            )
        appended = await self._ledger.append(
            NewEvent(
                event="subject.reinstated",
                outcome="reinstated",
                subject=actor.subject,
                subject_kind=actor.kind,
                policy_version=self._policy.current.version,
                request_id=request_id,
                body={"offboarding_id": str(ob.id), "subject": ob.subject, "reason": reason},
                dedupe_key=_reinstated_key(ob.id),
            )
        )
        if appended.duplicate or appended.seq is None:
            raise NotFound(f"{subject!r} is not offboarded", code="not_offboarded")
        self._blocklist.unblock(ob.subject, seq=appended.seq)
        return {
            "offboarding_id": str(ob.id),
            "subject": ob.subject,
            "reason": reason,
            "reinstated_at": (appended.recorded_at or self._clock()).isoformat(),
            "reinstated_by": actor.subject,
        }

    # --- reporting ----------------------------------------------------------------------

    async def list_offboardings(
        self,
        actor: Principal,
        *,
        since: datetime | None,
        until: datetime | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Offboardings started in [since, until), newest first, with SLA met/missed."""
        events = await offboarding_events_between(
            self._ledger, since=since, until=until, limit=limit
        )
        now = self._clock()
        return [o.to_json(now) for o in reversed(fold_offboardings(events))]

    async def watch(self, actor: Principal, offboarding_id: uuid.UUID) -> dict[str, Any]:
        """One offboarding as listed, with every elevation, session and grant it ended so
        far (ledger order, with times): what an admin watches while it runs."""
        found = fold_offboardings(await offboarding_events_of(self._ledger, offboarding_id))
        if not found:
            raise NotFound("no such offboarding", code="offboarding_not_found")
        ob = found[0]
        steps = await offboarding_steps(self._ledger, ob.id, after_seq=ob.started_seq)
        return {
            **ob.to_json(self._clock()),
            "steps": [
                {
                    "seq": a.seq,
                    "event": a.event,
                    "at": a.recorded_at.isoformat(),
                    "secret": a.secret,
                    "what": a.what,
                }
                for a in steps
            ],
        }
