"""Quarterly access reviews, pure: periods, the entitlement snapshot, and the fold of events.

A review *is* its ledger events, all carrying ``body.review_id``:

  review.opened          the snapshot: every entitlement of the policy version in force,
                         and who used what in the period (one per review)
  review.decision        a reviewer's ``keep``/``revoke`` for one entitlement (one per
                         entitlement: ``decision_key``; none after ``completed_key``)
  review.completed       every entitlement was decided (one per review: ``completed_key``)
  review.action_resolved a later policy version no longer grants an entitlement marked
                         ``revoke`` (one per item: ``resolved_key``)

An *entitlement* is one (role, member source) pair of a policy: ``group:<g>``,
``subject:<s>`` or ``service_account:<ns:name>``. Its id, ``"<role>/<source>"``, is stable
across policy versions (role names never contain ``/``), so a later version can be asked
whether it still grants it.

A period is a calendar quarter in UTC, ``"YYYY-Qn"``, covering ``[start, end)``.

Invariants: every function here is free of I/O, clocks and randomness; a review's state
depends only on its events in ``seq`` order.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from broker.ledger import Event
from broker.policy.model import PolicySet, Role

__all__ = [
    "DECISIONS",
    "MAX_SNAPSHOT_ENTITLEMENTS",
    "MAX_SNAPSHOT_USAGE",
    "REVIEW_EVENTS",
    "Decision",
    "Entitlement",
    "Resolution",
    "Review",
    "completed_key",
    "decision_key",
    "entitlement_id",
    "entitlements",
    "fold",
    "grants_entitlement",
    "missing_reviews",
    "names_principal",
    "period_bounds",
    "period_of",
    "resolved_key",
    "snapshot_body",
    "subject_key",
    "valid_period",
]

# The snapshot lives in one ledger row; beyond these caps it is cut and flagged
# (``entitlements_truncated`` / ``usage_truncated``), never silently.
MAX_SNAPSHOT_ENTITLEMENTS = 10_000
MAX_SNAPSHOT_USAGE = 10_000

DECISIONS: frozenset[str] = frozenset({"keep", "revoke"})
REVIEW_EVENTS: tuple[str, ...] = (
    "review.opened",
    "review.decision",
    "review.completed",
    "review.action_resolved",
)

SourceKind = Literal["group", "subject", "service_account"]

_PERIOD = re.compile(r"([0-9]{4})-Q([1-4])")


# --- periods ------------------------------------------------------------------------------


def valid_period(period: object) -> bool:
    """True iff ``period`` is a ``"YYYY-Qn"`` string (year 1..9999). Never raises."""
    return (
        isinstance(period, str)
        and (m := _PERIOD.fullmatch(period)) is not None
        and int(m.group(1)) >= 1
    )


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """``[start, end)`` of quarter ``period`` in UTC. Raises ValueError if malformed.

    ``end`` of ``9999-Q4`` does not exist as a ``datetime``; it is refused as well.
    """
    m = _PERIOD.fullmatch(period)
    if m is None or int(m.group(1)) < 1:
        raise ValueError(f"period must look like 2026-Q1, not {period!r}")
    year, quarter = int(m.group(1)), int(m.group(2))
    start = datetime(year, 3 * quarter - 2, 1, tzinfo=UTC)
    if quarter == 4:
        if year == 9999:
            raise ValueError("period out of range")
        return start, datetime(year + 1, 1, 1, tzinfo=UTC)
    return start, datetime(year, 3 * quarter + 1, 1, tzinfo=UTC)


def period_of(when: datetime) -> str:
    """The quarter containing ``when`` (timezone-aware; taken in UTC)."""
    if when.tzinfo is None:
        raise ValueError("period_of needs a timezone-aware datetime")
    t = when.astimezone(UTC)
    return f"{t.year:04d}-Q{(t.month - 1) // 3 + 1}"


def _next_period(period: str) -> str:
    year, quarter = int(period[:4]), int(period[-1])
    return f"{year + 1:04d}-Q1" if quarter == 4 else f"{year:04d}-Q{quarter + 1}"


def _bound(value: str | datetime, *, upper: bool) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("missing_reviews needs timezone-aware datetimes")
        return value.astimezone(UTC)
    start, end = period_bounds(value)
    return end if upper else start


def missing_reviews(
    completed_periods: set[str] | frozenset[str],
    period_from: str | datetime,
    period_to: str | datetime,
) -> list[str]:
    """The quarters that were due in the window and have no completed review, oldest first.

    A quarter is *due* when it overlaps the window and has ended by its close, i.e. its end
    lies in ``(from, to]``: a quarter still running at ``period_to`` is not yet a finding.
    Each bound is a quarter or a timezone-aware datetime; a quarter as ``period_from`` means
    its start and as ``period_to`` its end, so ``("2026-Q1", "2026-Q4")`` asks for the four
    quarters of 2026. An empty or inverted window yields ``[]``. Raises ValueError for a
    malformed quarter or a naive datetime. Pure: ``completed_periods`` comes from the
    ledger's ``review.completed`` events (``broker.ledger.review_queries``).
    """
    lo = _bound(period_from, upper=False)
    hi = _bound(period_to, upper=True)
    if hi <= lo:
        return []
    out: list[str] = []
    period = period_of(lo)
    while True:
        _, end = period_bounds(period)
        if end > hi:
            break
        if end > lo and period not in completed_periods:
            out.append(period)
        period = _next_period(period)
    return out


# --- entitlements -------------------------------------------------------------------------


def subject_key(subject: str) -> str:
    """One person however their identity is spelled (as elevation's self-approval check)."""
    return subject.strip().casefold()


def entitlement_id(role: str, source: str) -> str:
    return f"{role}/{source}"


@dataclass(frozen=True)
class Entitlement:
    """One (role, member source) pair of a policy version."""

    role: str
    kind: SourceKind
    member: str
    privileged: bool
    secrets: tuple[str, ...]
    capabilities: tuple[str, ...]
    role_source: str  # "<file>:<line>" of the role definition

    @property
    def source(self) -> str:
        return f"{self.kind}:{self.member}"

    @property
    def id(self) -> str:
        return entitlement_id(self.role, self.source)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "source": self.source,
            "kind": self.kind,
            "member": self.member,
            "privileged": self.privileged,
            "secrets": list(self.secrets),
            "capabilities": list(self.capabilities),
            "role_source": self.role_source,
        }


def _members(role: Role) -> Iterable[tuple[SourceKind, str]]:
    for g in sorted(role.members.groups):
        yield "group", g
    for s in sorted(role.members.subjects):
        yield "subject", s
    for sa in sorted(role.members.service_accounts):
        yield "service_account", sa


def entitlements(policy: PolicySet) -> list[Entitlement]:
    """Every entitlement of ``policy``: roles in policy order, then groups, subjects and
    service accounts, each sorted. Capability-only roles are entitlements too."""
    return [
        Entitlement(
            role=r.name,
            kind=kind,
            member=member,
            privileged=r.privileged,
            secrets=r.secrets,
            capabilities=tuple(sorted(r.capabilities)),
            role_source=r.source,
        )
        for r in policy.roles
        for kind, member in _members(r)
    ]


def grants_entitlement(policy: PolicySet, role: str, kind: str, member: str) -> bool:
    """True iff ``policy`` has role ``role`` and it lists ``member`` under ``kind``."""
    r = policy.role(role)
    if r is None:
        return False
    pool = {
        "group": r.members.groups,
        "subject": r.members.subjects,
        "service_account": r.members.service_accounts,
    }.get(kind, frozenset())
    return member in pool


def names_principal(kind: str, member: str, subject: str, service_account: str | None) -> bool:
    """True iff the entitlement's source names this person or workload directly.

    Group sources never do: group membership is the IdP's, and reviewing one's own team is
    what reviewers are for; only an entitlement granted *to the reviewer by name* is a
    self-review.
    """
    if kind == "subject":
        return subject_key(member) == subject_key(subject)
    if kind == "service_account":
        return service_account is not None and member == service_account
    return False


# --- dedupe keys --------------------------------------------------------------------------


def decision_key(review_id: uuid.UUID, ent_id: str) -> str:
    return f"review:{review_id}:decision:{ent_id}"


def completed_key(review_id: uuid.UUID) -> str:
    return f"review:{review_id}:completed"


def resolved_key(review_id: uuid.UUID, ent_id: str) -> str:
    return f"review:{review_id}:action:{ent_id}:resolved"


# --- the fold -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    reviewer: str
    at: datetime
    decision: str
    comment: str | None


@dataclass(frozen=True)
class Resolution:
    policy_version: str
    at: datetime


@dataclass
class Review:
    id: uuid.UUID
    period: str
    period_start: datetime
    period_end: datetime
    reviewer_group: str
    opened_by: str
    opened_at: datetime
    policy_version: str
    entitlements: list[dict[str, Any]]
    usage: list[dict[str, Any]]
    entitlements_total: int
    entitlements_truncated: bool
    usage_truncated: bool
    decisions: dict[str, Decision] = field(default_factory=dict)
    completed_by: str | None = None
    completed_at: datetime | None = None
    resolutions: dict[str, Resolution] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "completed" if self.completed_at is not None else "open"

    def entitlement(self, ent_id: str) -> dict[str, Any] | None:
        for e in self.entitlements:
            if e["id"] == ent_id:
                return e
        return None

    def undecided(self) -> list[str]:
        return [e["id"] for e in self.entitlements if e["id"] not in self.decisions]

    def open_actions(self) -> list[dict[str, Any]]:
        """Entitlements decided ``revoke`` that no later policy version has removed yet."""
        return [
            e
            for e in self.entitlements
            if (d := self.decisions.get(e["id"])) is not None
            and d.decision == "revoke"
            and e["id"] not in self.resolutions
        ]

    def action_items(self) -> list[dict[str, Any]]:
        out = []
        for e in self.entitlements:
            d = self.decisions.get(e["id"])
            if d is None or d.decision != "revoke":
                continue
            res = self.resolutions.get(e["id"])
            out.append(
                {
                    "entitlement_id": e["id"],
                    "role": e["role"],
                    "source": e["source"],
                    "decided_by": d.reviewer,
                    "decided_at": d.at.isoformat(),
                    "comment": d.comment,
                    "status": "resolved" if res else "open",
                    "resolved_by_version": res.policy_version if res else None,
                    "resolved_at": res.at.isoformat() if res else None,
                }
            )
        return out

    def summary(self) -> dict[str, Any]:
        """Everything but the snapshot arrays (for listings)."""
        items = self.action_items()
        kept = sum(1 for d in self.decisions.values() if d.decision == "keep")
        return {
            "id": str(self.id),
            "period": self.period,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "status": self.status,
            "reviewer_group": self.reviewer_group,
            "opened_by": self.opened_by,
            "opened_at": self.opened_at.isoformat(),
            "policy_version": self.policy_version,
            "progress": {
                "entitlements": len(self.entitlements),
                "decided": len(self.decisions),
                "keep": kept,
                "revoke": len(self.decisions) - kept,
            },
            "entitlements_total": self.entitlements_total,
            "entitlements_truncated": self.entitlements_truncated,
            "usage_truncated": self.usage_truncated,
            "completed_by": self.completed_by,
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
            "action_items": items,
            "open_action_items": sum(1 for i in items if i["status"] == "open"),
        }

    def to_json(self) -> dict[str, Any]:
        out = self.summary()
        out["entitlements"] = [
            {**e, "decision": _decision_json(self.decisions.get(e["id"]))}
            for e in self.entitlements
        ]
        out["usage"] = self.usage
        return out


def _decision_json(d: Decision | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {"decision": d.decision, "by": d.reviewer, "at": d.at.isoformat(), "comment": d.comment}


def snapshot_body(
    review_id: uuid.UUID,
    period: str,
    reviewer_group: str,
    policy: PolicySet,
    usage: Sequence[Mapping[str, Any]],
    *,
    usage_truncated: bool,
    max_entitlements: int = MAX_SNAPSHOT_ENTITLEMENTS,
) -> dict[str, Any]:
    """The ``review.opened`` body: the policy's entitlements (capped) and the usage rows."""
    start, end = period_bounds(period)
    ents = entitlements(policy)
    return {
        "review_id": str(review_id),
        "period": period,
        "period_start": start.isoformat(),
        "period_end": end.isoformat(),
        "reviewer_group": reviewer_group,
        "entitlements": [e.to_json() for e in ents[:max_entitlements]],
        "entitlements_total": len(ents),
        "entitlements_truncated": len(ents) > max_entitlements,
        "usage": [dict(u) for u in usage],
        "usage_truncated": usage_truncated,
    }


def fold(events: Iterable[Event]) -> Review | None:
    """Build the review from its events in seq order; None without a ``review.opened``.

    A second decision for the same entitlement, or anything after completion, cannot be in
    the ledger (dedupe and guard keys); the fold keeps the first regardless.
    """
    review: Review | None = None
    for ev in sorted(events, key=lambda e: e.seq):
        body = ev.body
        if ev.event == "review.opened":
            if review is not None:
                continue
            review = Review(
                id=uuid.UUID(str(body["review_id"])),
                period=str(body["period"]),
                period_start=datetime.fromisoformat(str(body["period_start"])),
                period_end=datetime.fromisoformat(str(body["period_end"])),
                reviewer_group=str(body["reviewer_group"]),
                opened_by=ev.subject or "",
                opened_at=ev.recorded_at,
                policy_version=ev.policy_version or "",
                entitlements=list(body.get("entitlements") or []),
                usage=list(body.get("usage") or []),
                entitlements_total=int(body.get("entitlements_total") or 0),
                entitlements_truncated=bool(body.get("entitlements_truncated")),
                usage_truncated=bool(body.get("usage_truncated")),
            )
            continue
        if review is None:
            continue
        ent = str(body.get("entitlement_id") or "")
        if ev.event == "review.decision" and ent and ent not in review.decisions:
            review.decisions[ent] = Decision(
                ev.subject or "", ev.recorded_at, ev.outcome, body.get("comment")
            )
        elif ev.event == "review.completed" and review.completed_at is None:
            review.completed_by = ev.subject
            review.completed_at = ev.recorded_at
        elif ev.event == "review.action_resolved" and ent and ent not in review.resolutions:
            review.resolutions[ent] = Resolution(ev.policy_version or "", ev.recorded_at)
    return review
