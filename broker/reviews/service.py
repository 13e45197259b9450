"""Quarterly access reviews: an admin opens, a reviewer group decides, a later policy acts.

Who may do what (deny by default):

  =========================  ==================================================
  action                     allowed for
  =========================  ==================================================
  open                       ``admin`` capability, declared on its route and
                             enforced before the service runs (``web.access``);
                             it starts the evidence trail and names the reviewers
  read (list, get)           ``admin`` or ``audit`` capability, or a member of
                             the review's ``reviewer_group`` now
  decide, complete           a member of the review's ``reviewer_group`` now
  =========================  ==================================================

Races are settled by the ledger writer under its lock: one decision per entitlement
(``decision_key``), none after completion (guard ``completed_key``), one completion
(``completed_key``), one resolution per action item (``resolved_key``). Error codes:

  invalid_period / period_not_started / invalid_reviewer_group    open input
  review_not_found    unknown id, or not visible to the caller
  not_a_reviewer      decide/complete by someone outside ``reviewer_group``
  self_review         the entitlement names the reviewer (subject or service account)
  unknown_entitlement not in this review's snapshot
  invalid_decision / comment_required   decision input (revoke needs a comment)
  already_decided     a second decision for the same entitlement
  review_completed    decide or complete after completion
  review_incomplete   complete while some entitlement is undecided

Action items: every ``revoke`` stays open until a policy version *later* than the review's
snapshot version (first ``policy.loaded`` later in the ledger) no longer grants the
entitlement; then ``review.action_resolved`` names that version. A replica still on an older
version can therefore never resolve an item. Checked when the policy version changes
(``resolve_actions``, run periodically), after each decision, and when a review is read.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from broker.auth.principal import Principal
from broker.errors import BadRequest, Conflict, Forbidden, NotFound
from broker.ledger import Ledger, NewEvent
from broker.ledger import review_queries as q
from broker.policy.active import ActivePolicy
from broker.policy.decide import capabilities
from broker.policy.model import PolicySet

from .model import (
    DECISIONS,
    MAX_SNAPSHOT_ENTITLEMENTS,
    MAX_SNAPSHOT_USAGE,
    Review,
    completed_key,
    decision_key,
    fold,
    grants_entitlement,
    names_principal,
    period_bounds,
    resolved_key,
    snapshot_body,
    valid_period,
)

__all__ = ["ReviewService"]

_log = logging.getLogger(__name__)

_MAX_GROUP_CHARS = 256
_RESOLVE_BATCH = 1000


class _Item(NamedTuple):
    """An open action item: a ``revoke`` decision not yet resolved."""

    review_id: uuid.UUID
    entitlement_id: str
    role: str
    kind: str
    member: str
    baseline: str  # the review's snapshot policy version


def _client_body(client: Mapping[str, str] | None) -> dict[str, Any]:
    """``client`` (the console's ``{"api": "console"}``) for a row's body, if given."""
    return {"client": dict(client)} if client else {}


class ReviewService:
    def __init__(
        self,
        *,
        ledger: Ledger,
        policy: ActivePolicy,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_entitlements: int = MAX_SNAPSHOT_ENTITLEMENTS,
        max_usage: int = MAX_SNAPSHOT_USAGE,
    ) -> None:
        self._ledger = ledger
        self._policy = policy
        self._clock = clock
        self._max_entitlements = max_entitlements
        self._max_usage = max_usage
        self._resolved_for: str | None = None  # policy version resolve_actions last covered

    # --- reading ------------------------------------------------------------------------

    async def _load_many(self, ids: list[uuid.UUID]) -> list[Review]:
        events = await q.review_events(self._ledger.pool, ids)
        folded = (fold(events.get(i, [])) for i in ids)
        return [r for r in folded if r is not None]

    async def _load(self, review_id: uuid.UUID) -> Review | None:
        found = await self._load_many([review_id])
        return found[0] if found else None

    def _is_reviewer(self, principal: Principal, review: Review) -> bool:
        return review.reviewer_group in principal.groups

    def _visible(self, principal: Principal, review: Review) -> bool:
        caps = capabilities(self._policy.current, principal)
        return bool(caps & {"admin", "audit"}) or self._is_reviewer(principal, review)

    async def _visible_one(self, principal: Principal, review_id: uuid.UUID) -> Review:
        review = await self._load(review_id)
        if review is None or not self._visible(principal, review):
            raise NotFound("no such review", code="review_not_found")
        return review

    def _view(self, principal: Principal, review: Review, *, full: bool) -> dict[str, Any]:
        out = review.to_json() if full else review.summary()
        out["can_decide"] = review.status == "open" and self._is_reviewer(principal, review)
        return out

    async def get(self, principal: Principal, review_id: uuid.UUID) -> dict[str, Any]:
        review = await self._visible_one(principal, review_id)
        if await self._resolve_review(review):
            review = await self._visible_one(principal, review_id)
        return self._view(principal, review, full=True)

    async def list_reviews(
        self, principal: Principal, *, period: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """Summaries (no snapshot arrays), newest first, of the reviews the caller may see."""
        if period is not None and not valid_period(period):
            raise BadRequest("'period' must look like 2026-Q1", code="invalid_period")
        ids = await q.review_ids(self._ledger.pool, period=period, limit=limit)
        out = []
        for review in await self._load_many(ids):
            if not self._visible(principal, review):
                continue
            if await self._resolve_review(review):
                review = await self._load(review.id) or review
            out.append(self._view(principal, review, full=False))
        return out

    # --- opening ------------------------------------------------------------------------

    async def open(
        self,
        principal: Principal,
        *,
        period: str,
        reviewer_group: str,
        request_id: str,
        client: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        policy = self._policy.current
        if not valid_period(period):
            raise BadRequest("'period' must look like 2026-Q1", code="invalid_period")
        try:
            start, end = period_bounds(period)
        except ValueError as e:
            raise BadRequest(str(e), code="invalid_period") from None
        if start > self._clock():
            raise BadRequest(f"{period} has not started yet", code="period_not_started")
        group = reviewer_group.strip()
        if not group or len(group) > _MAX_GROUP_CHARS:
            raise BadRequest(
                f"'reviewer_group' must be a group name of 1..{_MAX_GROUP_CHARS} characters",
                code="invalid_reviewer_group",
            )
        usage, truncated = await q.usage_in_period(
            self._ledger.pool, start, end, limit=self._max_usage
        )
        review_id = uuid.uuid4()
        await self._ledger.append(
            NewEvent(
                event="review.opened",
                outcome="open",
                subject=principal.subject,
                subject_kind=principal.kind,
                policy_version=policy.version,
                request_id=request_id,
                body={
                    **snapshot_body(
                        review_id,
                        period,
                        group,
                        policy,
                        usage,
                        usage_truncated=truncated,
                        max_entitlements=self._max_entitlements,
                    ),
                    **_client_body(client),
                },
            )
        )
        review = await self._reload(review_id)
        return self._view(principal, review, full=True)

    async def _reload(self, review_id: uuid.UUID) -> Review:
        review = await self._load(review_id)
        if review is None:  # we just wrote its events: only a broken ledger gets here
            raise NotFound("no such review", code="review_not_found")
        return review

    # --- deciding -----------------------------------------------------------------------

    def _check_reviewer(self, principal: Principal, review: Review) -> None:
        if not self._is_reviewer(principal, review):
            raise Forbidden(
                f"only members of {review.reviewer_group!r} review this", code="not_a_reviewer"
            )
        if review.status == "completed":
            raise Conflict("the review is completed", code="review_completed")

    async def decide(
        self,
        principal: Principal,
        review_id: uuid.UUID,
        *,
        entitlement_id: str,
        decision: str,
        comment: str | None,
        request_id: str,
        client: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        review = await self._visible_one(principal, review_id)
        self._check_reviewer(principal, review)
        if decision not in DECISIONS:
            raise BadRequest("'decision' must be 'keep' or 'revoke'", code="invalid_decision")
        ent = review.entitlement(entitlement_id)
        if ent is None:
            raise BadRequest(
                f"{entitlement_id!r} is not an entitlement of this review",
                code="unknown_entitlement",
            )
        if decision == "revoke" and not comment:
            raise BadRequest("a revoke decision needs a comment", code="comment_required")
        if names_principal(
            ent["kind"], ent["member"], principal.subject, principal.service_account
        ):
            raise Forbidden("you cannot review your own entitlement", code="self_review")
        if entitlement_id in review.decisions:
            raise Conflict("this entitlement is already decided", code="already_decided")
        appended = await self._ledger.append(
            NewEvent(
                event="review.decision",
                outcome=decision,
                subject=principal.subject,
                subject_kind=principal.kind,
                role=ent["role"],
                policy_version=self._policy.current.version,
                request_id=request_id,
                body={
                    "review_id": str(review_id),
                    "entitlement_id": entitlement_id,
                    "source": ent["source"],
                    "kind": ent["kind"],
                    "member": ent["member"],
                    "comment": comment,
                    "reviewer_group": review.reviewer_group,
                    "snapshot_policy_version": review.policy_version,
                    # The token's groups: membership of reviewer_group at the time.
                    "groups": sorted(principal.groups),
                    **_client_body(client),
                },
                dedupe_key=decision_key(review_id, entitlement_id),
                requires_absent=(completed_key(review_id),),
            )
        )
        if appended.duplicate:
            raise Conflict("this entitlement is already decided", code="already_decided")
        if appended.refused:
            raise Conflict("the review was completed meanwhile", code="review_completed")
        review = await self._reload(review_id)
        if decision == "revoke":
            await self._resolve_review(review)
            review = await self._reload(review_id)
        return self._view(principal, review, full=True)

    async def complete(
        self,
        principal: Principal,
        review_id: uuid.UUID,
        request_id: str,
        client: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        review = await self._visible_one(principal, review_id)
        self._check_reviewer(principal, review)
        undecided = review.undecided()
        if undecided:
            raise Conflict(
                f"{len(undecided)} entitlement(s) undecided, e.g. {undecided[0]!r}",
                code="review_incomplete",
            )
        revoked = sum(1 for d in review.decisions.values() if d.decision == "revoke")
        appended = await self._ledger.append(
            NewEvent(
                event="review.completed",
                outcome="completed",
                subject=principal.subject,
                subject_kind=principal.kind,
                policy_version=self._policy.current.version,
                request_id=request_id,
                body={
                    "review_id": str(review_id),
                    "period": review.period,
                    "reviewer_group": review.reviewer_group,
                    "entitlements": len(review.entitlements),
                    "entitlements_truncated": review.entitlements_truncated,
                    "keep": len(review.decisions) - revoked,
                    "revoke": revoked,
                    "groups": sorted(principal.groups),
                    **_client_body(client),
                },
                dedupe_key=completed_key(review_id),
            )
        )
        if appended.duplicate:
            raise Conflict("the review is completed", code="review_completed")
        review = await self._reload(review_id)
        return self._view(principal, review, full=True)

    # --- action items -------------------------------------------------------------------

    async def _later_than(self, policy: PolicySet, baselines: set[str]) -> set[str]:
        """Which of ``baselines`` ``policy`` was first loaded after, in ledger order."""
        seqs = await q.first_loaded(self._ledger.pool, [policy.version, *baselines])
        mine = seqs.get(policy.version)
        if mine is None:  # not recorded yet: never act on a version the ledger lacks
            return set()
        return {b for b in baselines if b != policy.version and seqs.get(b, mine) < mine}

    async def _resolve(self, policy: PolicySet, items: list[_Item]) -> int:
        """Record the items ``policy`` no longer grants, if it is later than their snapshot."""
        dropped = [i for i in items if not grants_entitlement(policy, i.role, i.kind, i.member)]
        if not dropped:
            return 0
        later = await self._later_than(policy, {i.baseline for i in dropped})
        done = 0
        for item in dropped:
            if item.baseline not in later:
                continue
            appended = await self._ledger.append(
                NewEvent(
                    event="review.action_resolved",
                    outcome="resolved",
                    role=item.role,
                    policy_version=policy.version,
                    body={
                        "review_id": str(item.review_id),
                        "entitlement_id": item.entitlement_id,
                        "resolved_by_version": policy.version,
                        "snapshot_policy_version": item.baseline,
                    },
                    dedupe_key=resolved_key(item.review_id, item.entitlement_id),
                )
            )
            if not appended.duplicate:
                done += 1
        return done

    async def _resolve_review(self, review: Review) -> int:
        """Resolve this review's open items against the policy in force; count written."""
        items = [
            _Item(review.id, e["id"], e["role"], e["kind"], e["member"], review.policy_version)
            for e in review.open_actions()
        ]
        return await self._resolve(self._policy.current, items) if items else 0

    async def resolve_actions(self) -> int:
        """Periodic job: once per policy version, resolve every open item it dropped.

        Remembers the version only after a full pass succeeded, so a ledger outage is
        retried on the next run. Open items are read in pages of ``_RESOLVE_BATCH``.
        """
        policy = self._policy.current
        if policy.version == self._resolved_for:
            return 0
        done = 0
        after = 0
        while True:
            events = await q.open_revocations(self._ledger.pool, after=after, limit=_RESOLVE_BATCH)
            items = [
                _Item(
                    uuid.UUID(str(ev.body["review_id"])),
                    str(ev.body["entitlement_id"]),
                    ev.role or "",
                    str(ev.body.get("kind") or ""),
                    str(ev.body.get("member") or ""),
                    str(ev.body.get("snapshot_policy_version") or ""),
                )
                for ev in events
            ]
            done += await self._resolve(policy, items)
            if len(events) < _RESOLVE_BATCH:
                break
            after = events[-1].seq
        if done:
            _log.info("policy %s resolved %d access-review action item(s)", policy.version, done)
        self._resolved_for = policy.version
        return done
