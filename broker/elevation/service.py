"""Step-up elevation: privileged secrets are eligible, never standing.

Flow: the requester asks (reason, ticket where required) -> approvers from the role's
factor groups vote -> when every factor is met the elevation is *activated* for a bounded
window -> only the requester may mint, TTL clipped to the window's end. Every step is a
ledger event carrying the policy version that applied; state is folded from those events
(``model.fold``), so several replicas agree without any shared memory.

Races are settled by the ledger writer under its lock: one vote per approver (dedupe key),
no vote or activation after a close, one close per elevation, no issuance after a close
(guard keys). Rules and their error codes:

  self_approval         an approver is the requester (same subject, case-insensitively)
  not_an_approver       the approver is in none of the factor groups now
  already_voted         a second vote by the same approver
  elevation_not_pending approve/deny on a decided, expired, cancelled or denied request
  elevation_not_active  redeem outside the approved window
  not_requester         someone else tries to redeem or cancel
  reason_required / reason_too_short / ticket_required / invalid_ticket   request rules
  break_glass_not_allowed, not_break_glass, self_review, not_a_reviewer, already_reviewed
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.auth.principal import Principal
from broker.errors import BadRequest, Conflict, Forbidden, NotFound
from broker.grants import GrantService
from broker.grants.service import note_clipped_ttl
from broker.ledger import Ledger, NewEvent
from broker.metrics import Metrics
from broker.notify import Notification, WebhookNotifier
from broker.policy.active import ActivePolicy
from broker.policy.decide import capabilities, decide
from broker.policy.model import ElevationRule, Role
from broker.quotas import Quotas

from .model import (
    Elevation,
    activated_key,
    closed_key,
    fold,
    reviewed_key,
    subject_key,
    vote_key,
)
from .quorum import factors_met, quorum_met

__all__ = ["ElevationService"]

_PENDING_HORIZON = timedelta(days=8)  # > the longest allowed request_expiry (7 d)
_STATUSES = frozenset({"pending", "approved", "denied", "cancelled", "expired", "ended"})
_QUEUE_SCAN = 500  # requests read to find the pending ones (as the sweep reads)
# A notification's text keeps room for the deep link at its end (webhook cuts at 4000).
_TEXT_ROOM = 3500


def _client_body(client: Mapping[str, str] | None) -> dict[str, Any]:
    """Which front end asked (the console's ``{"api": "console"}``), as grants record it."""
    return {"client": dict(client)} if client else {}


def _progress(el: Elevation) -> list[dict[str, Any]]:
    """Each factor with the approvals that count toward it (one approver, one factor)."""
    factors = [(frozenset(f["approver_groups"]), int(f["approvals"])) for f in el.factors]
    met = factors_met(factors, {v.approver: v.groups for v in el.approvals})
    return [
        {"approver_groups": sorted(groups), "approvals": need, "met": got}
        for (groups, need), got in zip(factors, met, strict=True)
    ]


def _factor_groups(el: Elevation) -> frozenset[str]:
    return frozenset(g for f in el.factors for g in f["approver_groups"])


class ElevationService:
    def __init__(
        self,
        *,
        ledger: Ledger,
        policy: ActivePolicy,
        grants: GrantService,
        quotas: Quotas,
        metrics: Metrics,
        notifier: WebhookNotifier,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        public_url: str | None = None,
    ) -> None:
        self._clock = clock  # injectable so request expiry can be shown without waiting
        # Where people's browsers reach the broker: notifications link to the console.
        self._public_url = public_url.rstrip("/") if public_url else None
        self._ledger = ledger
        self._policy = policy
        self._grants = grants
        self._quotas = quotas
        self._metrics = metrics
        self._notifier = notifier

    # --- reading ------------------------------------------------------------------------

    async def _load(self, elevation_id: uuid.UUID) -> Elevation | None:
        events = await self._ledger.elevation_events([elevation_id])
        return fold(events.get(elevation_id, []))

    async def _reload(self, elevation_id: uuid.UUID) -> Elevation:
        el = await self._load(elevation_id)
        if el is None:  # we just wrote its events: only a broken ledger gets here
            raise NotFound("no such elevation", code="elevation_not_found")
        return el

    async def _load_many(self, ids: list[uuid.UUID]) -> list[Elevation]:
        events = await self._ledger.elevation_events(ids)
        folded = (fold(events.get(i, [])) for i in ids)
        return [el for el in folded if el is not None]

    def _may_decide(self, principal: Principal, el: Elevation) -> bool:
        return subject_key(principal.subject) != subject_key(el.requester) and bool(
            principal.groups & _factor_groups(el)
        )

    def _may_review(self, principal: Principal, el: Elevation, caps: frozenset[str]) -> bool:
        if not el.break_glass or subject_key(principal.subject) == subject_key(el.requester):
            return False
        reviewers = frozenset(el.reviewers)
        return bool(principal.groups & reviewers) or "admin" in caps

    def _visible(self, principal: Principal, el: Elevation) -> bool:
        caps = capabilities(self._policy.current, principal)
        return (
            subject_key(principal.subject) == subject_key(el.requester)
            or self._may_decide(principal, el)
            or self._may_review(principal, el, caps)
            or bool(caps & {"admin", "audit"})
        )

    async def _visible_one(self, principal: Principal, elevation_id: uuid.UUID) -> Elevation:
        el = await self._load(elevation_id)
        if el is None or not self._visible(principal, el):
            raise NotFound("no such elevation", code="elevation_not_found")
        return el

    def _view(self, principal: Principal, el: Elevation, now: datetime) -> dict[str, Any]:
        out = el.to_json(now)
        out["can_decide"] = out["status"] == "pending" and self._may_decide(principal, el)
        return out

    async def get(self, principal: Principal, elevation_id: uuid.UUID) -> dict[str, Any]:
        el = await self._visible_one(principal, elevation_id)
        return self._view(principal, el, self._clock())

    async def list_elevations(
        self,
        principal: Principal,
        *,
        status: str | None,
        break_glass_unreviewed: bool,
        limit: int,
        mine: bool = False,
    ) -> list[dict[str, Any]]:
        """Requesters see their own; approvers what they may decide; admins/auditors all.

        ``mine``: only the caller's own requests (the console's "my requests").
        """
        if status is not None and status not in _STATUSES:
            raise BadRequest(
                f"'status' must be one of {', '.join(sorted(_STATUSES))}", code="invalid_status"
            )
        now = self._clock()
        since = now - _PENDING_HORIZON if status in ("pending", "approved") else None
        ids = await self._ledger.elevation_ids(
            since=since, requester=principal.subject, limit=limit
        )
        if not mine and (principal.groups or capabilities(self._policy.current, principal)):
            ids += await self._ledger.elevation_ids(since=since, requester=None, limit=limit)
        if break_glass_unreviewed and not mine:
            ids += await self._ledger.break_glass_ids(limit=limit)
        unique = list(dict.fromkeys(ids))
        out = []
        for el in await self._load_many(unique):
            if not self._visible(principal, el):
                continue
            if mine and subject_key(el.requester) != subject_key(principal.subject):
                continue
            view = self._view(principal, el, now)
            if status is not None and view["status"] != status:
                continue
            if break_glass_unreviewed and (not el.break_glass or el.reviewed_by):
                continue
            out.append(view)
        out.sort(key=lambda v: v["requested_at"], reverse=True)
        return out[:limit]

    async def _history(
        self, principal: Principal, el: Elevation, now: datetime, limit: int
    ) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        ids = await self._ledger.elevation_ids(
            since=None, requester=el.requester, secret=el.secret, limit=limit + 1
        )
        earlier = await self._load_many([i for i in ids if i != el.id][:limit])
        return [self._view(principal, h, now) for h in earlier if self._visible(principal, h)]

    async def _detailed(
        self, principal: Principal, el: Elevation, now: datetime, history: int
    ) -> dict[str, Any]:
        view = self._view(principal, el, now)
        caps = capabilities(self._policy.current, principal)
        view["factors"] = _progress(el)
        view["can_review"] = (
            el.break_glass and el.reviewed_by is None and self._may_review(principal, el, caps)
        )
        view["history"] = await self._history(principal, el, now, history)
        return view

    async def detail(
        self, principal: Principal, elevation_id: uuid.UUID, *, history: int = 5
    ) -> dict[str, Any]:
        """``get``, plus what a decision needs: each factor with the approvals counted
        toward it (``factors``: ``approver_groups``, ``approvals``, ``met``), whether the
        caller may review it (``can_review``), and the requester's ``history`` (up to
        ``history`` of their other elevations for the same secret, newest first, those
        the caller may see). Same visibility as ``get``."""
        el = await self._visible_one(principal, elevation_id)
        return await self._detailed(principal, el, self._clock(), history)

    async def approval_queue(
        self, principal: Principal, *, limit: int, history: int = 3
    ) -> list[dict[str, Any]]:
        """The pending requests the caller may decide now (``detail`` of each), the one
        expiring soonest first."""
        now = self._clock()
        ids = await self._ledger.elevation_ids(
            since=now - _PENDING_HORIZON, requester=None, limit=_QUEUE_SCAN
        )
        queue = [
            el
            for el in await self._load_many(ids)
            if el.status(now) == "pending" and self._may_decide(principal, el)
        ]
        queue.sort(key=lambda el: el.request_expires_at)
        return [await self._detailed(principal, el, now, history) for el in queue[:limit]]

    async def review_queue(self, principal: Principal, *, limit: int) -> list[dict[str, Any]]:
        """Break-glass uses still without a review that the caller may review, newest first."""
        now = self._clock()
        caps = capabilities(self._policy.current, principal)
        return [
            await self._detailed(principal, el, now, 0)
            for el in await self._load_many(await self._ledger.break_glass_ids(limit=limit))
            if el.reviewed_by is None and self._may_review(principal, el, caps)
        ]

    def may_approve(self, principal: Principal) -> bool:
        """Whether the policy in force makes the caller someone who decides or reviews
        elevations: in an approver or break-glass reviewer group of a privileged role, or
        an admin. Says which pages to offer; each decision is still the service's."""
        policy = self._policy.current
        if "admin" in capabilities(policy, principal):
            return True
        for role in policy.roles:
            rule = role.elevation
            if rule is None:
                continue
            groups = {g for f in rule.factors for g in f.approver_groups}
            if principal.groups & (groups | rule.break_glass_reviewers):
                return True
        return False

    # --- asking -------------------------------------------------------------------------

    def _rule(self, role: Role) -> ElevationRule:
        if role.elevation is None:  # the loader guarantees privileged roles have one
            raise Forbidden(f"role {role.name!r} has no elevation rule", code="denied")
        return role.elevation

    async def request(
        self,
        principal: Principal,
        *,
        secret: str,
        reason: str | None,
        ticket: str | None,
        duration: int | None,
        break_glass: bool,
        request_id: str,
        client: Mapping[str, str] | None = None,
        principals: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        """Ask for elevation to ``secret``; ``principals`` (SSH secrets) name what the
        certificate will be for, which picks the privileged role (e.g. ``root``)."""
        policy = self._policy.current
        asked = frozenset(principals) if principals is not None else None
        decision = decide(policy, principal, secret, ssh_principals=asked)
        if decision.outcome == "allow":
            raise Conflict(
                f"{secret!r} is granted to you without elevation: fetch it directly",
                code="elevation_not_needed",
            )
        if decision.outcome != "elevation_required":
            await self._grants.record_denial(
                principal, secret, decision, request_id=request_id, reason=reason, ticket=ticket
            )
            if decision.outcome == "unknown_secret":
                raise NotFound(decision.message, code="unknown_secret", recorded=True)
            raise Forbidden(decision.message, code="denied", recorded=True)
        assert decision.role is not None and decision.entry is not None
        if asked is not None and decision.entry.engine != "ssh":
            raise BadRequest(
                f"'principals' only apply to SSH secrets; {secret!r} is a"
                f" {decision.entry.engine} secret",
                code="not_an_ssh_secret",
            )
        rule = self._rule(decision.role)
        _check_reason(reason, rule)
        if rule.ticket_required:
            if not ticket:
                raise BadRequest("this role requires a ticket reference", code="ticket_required")
            if not rule.ticket_matches(ticket):
                raise BadRequest(f"ticket must match {rule.ticket_pattern}", code="invalid_ticket")
        if break_glass and not rule.break_glass:
            raise Forbidden(
                f"role {decision.role.name!r} does not allow break-glass access",
                code="break_glass_not_allowed",
            )
        await self._quotas.check_elevation_request(principal, decision.role)
        granted = min(duration or rule.max_duration, rule.max_duration)
        elevation_id = uuid.uuid4()
        now = self._clock()
        factors = [
            {"approver_groups": sorted(f.approver_groups), "approvals": f.approvals}
            for f in rule.factors
        ]
        common: dict[str, Any] = {
            "subject": principal.subject,
            "subject_kind": principal.kind,
            "secret": secret,
            "role": decision.role.name,
            "policy_version": policy.version,
            "request_id": request_id,
        }
        await self._ledger.append(
            NewEvent(
                event="elevation.requested",
                outcome="break_glass" if break_glass else "pending",
                body={
                    "elevation_id": str(elevation_id),
                    "reason": reason,
                    "ticket": ticket,
                    "duration": granted,
                    "requested_duration": duration,
                    "request_expires_at": (
                        now + timedelta(seconds=rule.request_expiry)
                    ).isoformat(),
                    "factors": factors,
                    "break_glass": break_glass,
                    "break_glass_reviewers": sorted(rule.break_glass_reviewers),
                    "issuer": principal.issuer,
                    # Groups as the token stated them: policy-vs-log checks replay decide() later.
                    "groups": sorted(principal.groups),
                    **({"principals": sorted(asked)} if asked is not None else {}),
                    **_client_body(client),
                },
                **common,
            )
        )
        if break_glass:
            # Issued at once, flagged, and left open for a second person's review.
            await self._activate(
                elevation_id, granted, common, approvers=[], break_glass=True, client=client
            )
            self._metrics.break_glass.inc()
        el = await self._reload(elevation_id)
        kind = "elevation.break_glass" if break_glass else "elevation.requested"
        self._notify(kind, el, f"{principal.subject} requests {secret}: {reason}")
        return self._view(principal, el, self._clock())

    async def _activate(
        self,
        elevation_id: uuid.UUID,
        duration: int,
        common: dict[str, Any],
        *,
        approvers: list[str],
        break_glass: bool,
        client: Mapping[str, str] | None = None,
    ) -> bool:
        window_end = self._clock() + timedelta(seconds=duration)
        appended = await self._ledger.append(
            NewEvent(
                event="elevation.activated",
                outcome="break_glass" if break_glass else "approved",
                body={
                    "elevation_id": str(elevation_id),
                    "window_ends_at": window_end.isoformat(),
                    "approvers": approvers,
                    "break_glass": break_glass,
                    **_client_body(client),
                },
                dedupe_key=activated_key(elevation_id),
                requires_absent=(closed_key(elevation_id),),
                **common,
            )
        )
        return not (appended.duplicate or appended.refused)

    # --- deciding -----------------------------------------------------------------------

    def _common(self, principal: Principal, el: Elevation, request_id: str) -> dict[str, Any]:
        return {
            "subject": principal.subject,
            "subject_kind": principal.kind,
            "secret": el.secret,
            "role": el.role,
            "policy_version": self._policy.current.version,
            "request_id": request_id,
        }

    def _check_decider(self, principal: Principal, el: Elevation, now: datetime) -> None:
        status = el.status(now)
        if status != "pending":
            raise Conflict(f"elevation is {status}", code="elevation_not_pending")
        if subject_key(principal.subject) == subject_key(el.requester):
            raise Forbidden(
                "you cannot decide your own request (cancel it instead)", code="self_approval"
            )
        if not principal.groups & _factor_groups(el):
            raise Forbidden(
                "you are not in an approver group of this elevation", code="not_an_approver"
            )

    async def approve(
        self,
        principal: Principal,
        elevation_id: uuid.UUID,
        comment: str | None,
        request_id: str,
        client: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        el = await self._visible_one(principal, elevation_id)
        now = self._clock()
        self._check_decider(principal, el, now)
        if any(subject_key(v.approver) == subject_key(principal.subject) for v in el.approvals):
            raise Conflict("you have already approved this elevation", code="already_voted")
        groups = sorted(principal.groups & _factor_groups(el))
        appended = await self._ledger.append(
            NewEvent(
                event="elevation.approved",
                outcome="approved",
                body={
                    "elevation_id": str(elevation_id),
                    "comment": comment,
                    "approver_groups": groups,
                    "requester": el.requester,
                    **_client_body(client),
                },
                dedupe_key=vote_key(elevation_id, principal.subject),
                requires_absent=(closed_key(elevation_id), activated_key(elevation_id)),
                **self._common(principal, el, request_id),
            )
        )
        if appended.duplicate:
            raise Conflict("you have already approved this elevation", code="already_voted")
        if appended.refused:
            raise Conflict("elevation was decided meanwhile", code="elevation_not_pending")
        el = await self._reload(elevation_id)
        votes = {v.approver: v.groups for v in el.approvals}
        factors = [(frozenset(f["approver_groups"]), int(f["approvals"])) for f in el.factors]
        if el.activated_at is None and quorum_met(factors, votes):
            common = self._common(principal, el, request_id)
            if await self._activate(
                elevation_id,
                el.duration,
                common,
                approvers=sorted(votes),
                break_glass=False,
                client=client,
            ):
                self._metrics.elevation_decision_seconds.observe(
                    (self._clock() - el.requested_at).total_seconds()
                )
            el = await self._reload(elevation_id)
            self._notify("elevation.approved", el, f"{el.requester}'s {el.secret} approved")
        else:
            self._notify("elevation.vote", el, f"{principal.subject} approved {el.secret}")
        return self._view(principal, el, self._clock())

    async def deny(
        self,
        principal: Principal,
        elevation_id: uuid.UUID,
        comment: str | None,
        request_id: str,
        client: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        if not comment:
            raise BadRequest("a denial needs a comment", code="comment_required")
        el = await self._visible_one(principal, elevation_id)
        self._check_decider(principal, el, self._clock())
        appended = await self._ledger.append(
            NewEvent(
                event="elevation.denied",
                outcome="denied",
                body={
                    "elevation_id": str(elevation_id),
                    "comment": comment,
                    **_client_body(client),
                },
                dedupe_key=closed_key(elevation_id),
                requires_absent=(activated_key(elevation_id),),
                **self._common(principal, el, request_id),
            )
        )
        if appended.duplicate or appended.refused:
            raise Conflict("elevation was decided meanwhile", code="elevation_not_pending")
        el = await self._reload(elevation_id)
        self._notify("elevation.denied", el, f"{el.requester}'s {el.secret} denied")
        return self._view(principal, el, self._clock())

    async def cancel(
        self,
        principal: Principal,
        elevation_id: uuid.UUID,
        comment: str | None,
        request_id: str,
        client: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """The requester withdraws (pending or approved); an admin may end one early.

        Grants minted under it are revoked in Vault and ledgered as revoked.
        """
        el = await self._visible_one(principal, elevation_id)
        now = self._clock()
        own = subject_key(principal.subject) == subject_key(el.requester)
        admin = "admin" in capabilities(self._policy.current, principal)
        if not own and not admin:
            raise Forbidden("only the requester or an admin can cancel", code="not_requester")
        status = el.status(now)
        if status not in ("pending", "approved"):
            raise Conflict(f"elevation is {status}", code="elevation_not_pending")
        event = "elevation.ended" if (not own and status == "approved") else "elevation.cancelled"
        appended = await self._ledger.append(
            NewEvent(
                event=event,
                outcome="ended_early" if event == "elevation.ended" else "cancelled",
                body={
                    "elevation_id": str(elevation_id),
                    "comment": comment,
                    **_client_body(client),
                },
                dedupe_key=closed_key(elevation_id),
                **self._common(principal, el, request_id),
            )
        )
        if appended.duplicate:
            raise Conflict("elevation was closed meanwhile", code="elevation_not_pending")
        el = await self._reload(elevation_id)
        await self._grants.revoke_grants(
            el.grants,
            principal,
            request_id=request_id,
            reason=f"{event} {elevation_id}",
            cause={"elevation_id": str(elevation_id)},
        )
        self._notify(event, el, f"{el.requester}'s {el.secret} elevation {event.split('.')[1]}")
        return self._view(principal, el, self._clock())

    async def review(
        self,
        principal: Principal,
        elevation_id: uuid.UUID,
        comment: str | None,
        request_id: str,
        client: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        if not comment:
            raise BadRequest("a review needs a comment", code="comment_required")
        el = await self._visible_one(principal, elevation_id)
        if not el.break_glass:
            raise Conflict("only break-glass uses are reviewed", code="not_break_glass")
        if subject_key(principal.subject) == subject_key(el.requester):
            raise Forbidden("a second person must review break-glass use", code="self_review")
        if not self._may_review(principal, el, capabilities(self._policy.current, principal)):
            raise Forbidden("you may not review this break-glass use", code="not_a_reviewer")
        appended = await self._ledger.append(
            NewEvent(
                event="elevation.reviewed",
                outcome="reviewed",
                body={
                    "elevation_id": str(elevation_id),
                    "comment": comment,
                    **_client_body(client),
                },
                dedupe_key=reviewed_key(elevation_id),
                **self._common(principal, el, request_id),
            )
        )
        if appended.duplicate:
            raise Conflict("already reviewed", code="already_reviewed")
        el = await self._reload(elevation_id)
        self._notify("elevation.reviewed", el, f"{principal.subject} reviewed break-glass")
        return self._view(principal, el, self._clock())

    # --- using --------------------------------------------------------------------------

    async def approved_for(self, principal: Principal, secret: str) -> uuid.UUID | None:
        """The caller's newest approved, still-open elevation for ``secret``, if any.

        How a Vault-API read of a privileged secret finds the elevation it redeems: the
        client only names the path, never an elevation id.
        """
        now = self._clock()
        ids = await self._ledger.elevation_ids(
            since=now - _PENDING_HORIZON, requester=principal.subject, limit=100
        )
        for el in await self._load_many(ids):
            if (
                el.secret == secret
                and subject_key(el.requester) == subject_key(principal.subject)
                and el.status(now) == "approved"
                and el.window_ends_at is not None
            ):
                return el.id
        return None

    async def redeem(
        self,
        principal: Principal,
        elevation_id: uuid.UUID,
        ttl: int | None,
        request_id: str,
        client: Mapping[str, str] | None = None,
        *,
        public_key: str | None = None,
        principals: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        """Mint under an approved elevation; SSH secrets need ``public_key`` and may ask
        for a subset of the elevated role's ``principals`` (default: all of them)."""
        el = await self._visible_one(principal, elevation_id)
        if subject_key(principal.subject) != subject_key(el.requester):
            raise Forbidden("only the requester can use an elevation", code="not_requester")
        now = self._clock()
        status = el.status(now)
        if status != "approved" or el.window_ends_at is None:
            raise Conflict(f"elevation is {status}", code="elevation_not_active")
        # Still eligible under the policy in force now (a role removed since is final).
        policy = self._policy.current
        elevated = policy.role(el.role)
        if principals is None and el.principals is not None:
            principals = el.principals  # what the approvers approved
        if (
            principals is not None
            and el.principals is not None
            and not set(principals) <= set(el.principals)
        ):
            raise Forbidden(
                f"this elevation was approved for principals {', '.join(el.principals)} only",
                code="principals_not_approved",
            )
        asked = frozenset(principals) if principals is not None else None
        if asked is None and elevated is not None and elevated.ssh is not None:
            asked = elevated.ssh.principals  # decide() must weigh the elevated role's
        decision = decide(policy, principal, el.secret, ttl, ssh_principals=asked)
        if (
            decision.outcome != "elevation_required"
            or decision.role is None
            or decision.entry is None
            or decision.role.name != el.role
        ):
            raise Forbidden("you are no longer eligible for this role", code="no_longer_eligible")
        ssh = self._grants.ssh_ask(decision.entry, decision.role, public_key, principals)
        grant = await self._grants.issue_elevated(
            principal,
            entry=decision.entry,
            role=decision.role,
            ttl=decision.ttl,
            policy_version=policy.version,
            elevation_id=elevation_id,
            guard=closed_key(elevation_id),
            not_after=el.window_ends_at,
            reason=el.reason,
            ticket=el.ticket,
            request_id=request_id,
            client=client,
            ssh=ssh,
        )
        return note_clipped_ttl(grant, ttl, decision)

    # --- housekeeping -------------------------------------------------------------------

    async def sweep(self, *, limit: int = 500) -> int:
        """Close requests nobody decided in time and windows that elapsed; update gauges."""
        now = self._clock()
        ids = await self._ledger.elevation_ids(
            since=now - _PENDING_HORIZON, requester=None, limit=limit
        )
        closed = 0
        pending = 0
        for el in await self._load_many(ids):
            status = el.status(now)
            if el.closed_event is not None:
                continue
            if status == "pending":
                pending += 1
                continue
            why = "window_elapsed" if el.activated_at else "request_expired"
            if status not in ("expired", "ended"):
                continue
            appended = await self._ledger.append(
                NewEvent(
                    event="elevation.expired",
                    outcome=why,
                    subject=el.requester,
                    subject_kind=el.requester_kind,
                    secret=el.secret,
                    role=el.role,
                    policy_version=self._policy.current.version,
                    body={"elevation_id": str(el.id), "why": why},
                    dedupe_key=closed_key(el.id),
                    requires_absent=(() if el.activated_at else (activated_key(el.id),)),
                )
            )
            if not (appended.duplicate or appended.refused):
                closed += 1
                self._notify("elevation.expired", el, f"{el.requester}'s {el.secret} {why}")
        self._metrics.elevations_pending.set(pending)
        unreviewed = [
            el
            for el in await self._load_many(await self._ledger.break_glass_ids(limit=limit))
            if not el.reviewed_by
        ]
        self._metrics.break_glass_unreviewed.set(len(unreviewed))
        return closed

    def _notify(self, kind: str, el: Elevation, text: str) -> None:
        # Identifiers and the stated reason only: never a credential.
        fields: dict[str, str | int | None] = {
            "elevation_id": str(el.id),
            "status": el.status(self._clock()),
            "secret": el.secret,
            "role": el.role,
            "requester": el.requester,
            "reason": el.reason,
            "ticket": el.ticket,
        }
        if self._public_url is not None:
            # The deep link to the decision page; also at the end of the text, which is
            # all Slack shows (kept whole: the text before it is cut first).
            link = f"{self._public_url}/console/elevations/{el.id}"
            fields["console_url"] = link
            text = f"{text[:_TEXT_ROOM]}\n{link}"
        self._notifier.notify(Notification(kind=kind, text=text, fields=fields))


def _check_reason(reason: str | None, rule: ElevationRule) -> None:
    text = (reason or "").strip()
    if not text:
        raise BadRequest("elevation needs a reason", code="reason_required")
    if len(text) < rule.reason_min_length or not any(c.isalnum() for c in text):
        raise BadRequest(
            f"reason must be at least {rule.reason_min_length} characters of real text",
            code="reason_too_short",
        )
