"""An elevation's state, folded from its ledger events (pure).

The ledger is the only store: an elevation *is* its events — requested, each vote,
activated, and at most one closing event (denied, cancelled, ended, expired) — so what the
API says and what the auditor reads cannot differ. Closing is unique per elevation because
all closing events share one dedupe key (``closed_key``).

Status (at time ``now``):
  pending    requested, not decided, request not past ``request_expires_at``
  approved   activated (quorum met, or break-glass) and the window is open
  denied     an approver said no
  cancelled  the requester withdrew it (before or during the window)
  ended      the window closed: elapsed, or ended early by an admin
  expired    nobody decided before ``request_expires_at``
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from broker.ledger import ElevationStep, Event

__all__ = [
    "Elevation",
    "Vote",
    "activated_key",
    "closed_key",
    "fold",
    "reviewed_key",
    "subject_key",
    "vote_key",
]


def subject_key(subject: str) -> str:
    """One person, however their identity is spelled: self-approval is checked on this."""
    return subject.strip().casefold()


def closed_key(elevation_id: uuid.UUID) -> str:
    return f"elevation:{elevation_id}:closed"


def activated_key(elevation_id: uuid.UUID) -> str:
    return f"elevation:{elevation_id}:activated"


def vote_key(elevation_id: uuid.UUID, approver: str) -> str:
    return f"elevation:{elevation_id}:vote:{subject_key(approver)}"


def reviewed_key(elevation_id: uuid.UUID) -> str:
    return f"elevation:{elevation_id}:reviewed"


@dataclass(frozen=True)
class Vote:
    approver: str
    at: datetime
    comment: str | None
    groups: frozenset[str]


@dataclass
class Elevation:
    id: uuid.UUID
    requester: str
    requester_kind: str | None
    secret: str
    role: str
    policy_version: str | None
    reason: str
    ticket: str | None
    duration: int
    requested_at: datetime
    request_expires_at: datetime
    factors: list[dict[str, Any]]
    break_glass: bool
    reviewers: list[str] = field(default_factory=list)  # groups that may review break-glass
    approvals: list[Vote] = field(default_factory=list)
    activated_at: datetime | None = None
    window_ends_at: datetime | None = None
    closed_event: str | None = None
    closed_at: datetime | None = None
    closed_by: str | None = None
    closed_comment: str | None = None
    closed_why: str | None = None
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    review_comment: str | None = None
    grants: list[str] = field(default_factory=list)
    # SSH secrets: the principals asked for (what approvers approve); None otherwise.
    principals: tuple[str, ...] | None = None

    def status(self, now: datetime) -> str:
        if self.closed_event == "elevation.denied":
            return "denied"
        if self.closed_event == "elevation.cancelled":
            return "cancelled"
        if self.closed_event == "elevation.ended":
            return "ended"
        if self.closed_event == "elevation.expired":
            return "expired" if self.activated_at is None else "ended"
        if self.activated_at is not None:
            assert self.window_ends_at is not None
            return "approved" if now < self.window_ends_at else "ended"
        return "pending" if now < self.request_expires_at else "expired"

    @property
    def final(self) -> bool:
        """No later event can change it: closed, and for break-glass also reviewed. The
        writer's dedupe keys refuse a second closing or review, and every other event
        requires the elevation not closed."""
        return self.closed_at is not None and (not self.break_glass or self.reviewed_at is not None)

    def settled(self, now: datetime, grace: timedelta) -> bool:
        """Final, its last event more than ``grace`` before ``now`` (a write racing it has
        landed or failed by then)."""
        if not self.final or self.closed_at is None:
            return False
        return max(self.closed_at, self.reviewed_at or self.closed_at) <= now - grace

    def to_json(self, now: datetime) -> dict[str, Any]:
        def ts(v: datetime | None) -> str | None:
            return v.isoformat() if v else None

        return {
            "id": str(self.id),
            "status": self.status(now),
            "secret": self.secret,
            "role": self.role,
            "requester": self.requester,
            "reason": self.reason,
            "ticket": self.ticket,
            **({"principals": list(self.principals)} if self.principals is not None else {}),
            "duration": self.duration,
            "break_glass": self.break_glass,
            "policy_version": self.policy_version,
            "requested_at": ts(self.requested_at),
            "expires_at": ts(self.request_expires_at),
            "approvals_required": self.factors,
            "approvals": [
                {
                    "approver": v.approver,
                    "at": ts(v.at),
                    "comment": v.comment,
                    "groups": sorted(v.groups),
                }
                for v in self.approvals
            ],
            "approved_at": ts(self.activated_at),
            "window_ends_at": ts(self.window_ends_at),
            "closed": (
                {
                    "event": self.closed_event,
                    "at": ts(self.closed_at),
                    "by": self.closed_by,
                    "comment": self.closed_comment,
                    "why": self.closed_why,
                }
                if self.closed_event
                else None
            ),
            "review": (
                {"by": self.reviewed_by, "at": ts(self.reviewed_at), "comment": self.review_comment}
                if self.reviewed_by
                else None
            ),
            "grants": self.grants,
        }


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("elevation event without a timestamp")
    return datetime.fromisoformat(value)


def fold(events: Iterable[Event | ElevationStep]) -> Elevation | None:
    """Build the elevation from its events in seq order; None if there is no request.
    Without the grant rows under it (``ElevationStep``s only), ``grants`` stays empty."""
    elevation: Elevation | None = None
    for ev in sorted(events, key=lambda e: e.seq):
        body = ev.body
        if ev.event == "elevation.requested":
            elevation = Elevation(
                id=uuid.UUID(str(body["elevation_id"])),
                requester=ev.subject or "",
                requester_kind=ev.subject_kind,
                secret=ev.secret or "",
                role=ev.role or "",
                policy_version=ev.policy_version,
                reason=str(body.get("reason") or ""),
                ticket=body.get("ticket"),
                duration=int(body["duration"]),
                requested_at=ev.recorded_at,
                request_expires_at=_parse_time(body["request_expires_at"]),
                factors=list(body.get("factors") or []),
                break_glass=bool(body.get("break_glass")),
                reviewers=list(body.get("break_glass_reviewers") or []),
                principals=(
                    tuple(str(p) for p in body["principals"])
                    if isinstance(body.get("principals"), list)
                    else None
                ),
            )
            continue
        if elevation is None:
            continue
        if ev.event == "elevation.approved":
            elevation.approvals.append(
                Vote(
                    ev.subject or "",
                    ev.recorded_at,
                    body.get("comment"),
                    frozenset(body.get("approver_groups") or ()),
                )
            )
        elif ev.event == "elevation.activated":
            elevation.activated_at = ev.recorded_at
            elevation.window_ends_at = _parse_time(body["window_ends_at"])
        elif ev.event in (
            "elevation.denied",
            "elevation.cancelled",
            "elevation.ended",
            "elevation.expired",
        ):
            elevation.closed_event = ev.event
            elevation.closed_at = ev.recorded_at
            # Expiry is the broker's act, not the requester's (whose name the row carries).
            elevation.closed_by = None if ev.event == "elevation.expired" else ev.subject
            elevation.closed_comment = body.get("comment")
            elevation.closed_why = body.get("why")
        elif ev.event == "elevation.reviewed":
            elevation.reviewed_by = ev.subject
            elevation.reviewed_at = ev.recorded_at
            elevation.review_comment = body.get("comment")
        elif ev.event == "grant.issued" and ev.grant_id is not None:
            elevation.grants.append(str(ev.grant_id))
    return elevation
