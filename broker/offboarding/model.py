"""An offboarding's state, folded from its ledger events (pure).

An offboarding *is* its events: ``subject.offboarding_started`` (the subject is refused
from then on), at most one ``subject.offboarded`` (every grant and elevation ended; the SLA
measured) and at most one ``subject.reinstated`` (an explicit re-onboarding). All three
carry ``offboarding_id`` in the body; the offboarded subject is ``body.subject`` (the row's
``subject`` column is the admin who acted, as for ``grant.revoked``).

Status:
  in_progress  started, not completed (a Vault outage interrupted it): subject refused
  offboarded   completed: subject refused
  reinstated   re-onboarded: requests work again

SLA: ``sla_met`` = completed_at <= terminated_at + sla_seconds; an offboarding still in
progress past its deadline has missed it already.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.elevation.model import subject_key
from broker.ledger import Event

__all__ = ["Offboarding", "current_for", "fold_offboardings", "reinstatements_of"]


@dataclass
class Offboarding:
    id: uuid.UUID
    subject: str
    reason: str
    started_seq: int
    started_at: datetime
    started_by: str | None
    terminated_at: datetime
    sla_seconds: int
    sla_deadline: datetime
    completed: Mapping[str, Any] | None = None
    reinstated_at: datetime | None = None
    reinstated_by: str | None = None
    reinstate_reason: str | None = None

    @property
    def key(self) -> str:
        return subject_key(self.subject)

    @property
    def status(self) -> str:
        if self.reinstated_at is not None:
            return "reinstated"
        return "in_progress" if self.completed is None else "offboarded"

    @property
    def completed_at(self) -> datetime | None:
        if self.completed is None:
            return None
        return datetime.fromisoformat(str(self.completed["completed_at"]))

    def sla(self, now: datetime) -> str:
        """``met``, ``missed``, or ``open`` (in progress, deadline not yet reached)."""
        done = self.completed_at
        if done is not None:
            return "met" if done <= self.sla_deadline else "missed"
        return "open" if now <= self.sla_deadline else "missed"

    def to_json(self, now: datetime) -> dict[str, Any]:
        done = self.completed or {}
        sla = self.sla(now)
        return {
            "id": str(self.id),
            "subject": self.subject,
            "reason": self.reason,
            "status": self.status,
            "started_at": self.started_at.isoformat(),
            "started_by": self.started_by,
            "terminated_at": self.terminated_at.isoformat(),
            "sla_seconds": self.sla_seconds,
            "sla_deadline": self.sla_deadline.isoformat(),
            "completed_at": done.get("completed_at"),
            "sla": sla,
            "sla_met": None if sla == "open" else sla == "met",
            "seconds_from_termination": done.get("seconds_from_termination"),
            "grants_revoked": len(done.get("grants_revoked") or ()),
            "elevations_closed": len(done.get("elevations_closed") or ()),
            "reinstated_at": self.reinstated_at.isoformat() if self.reinstated_at else None,
            "reinstated_by": self.reinstated_by,
        }


def fold_offboardings(events: Iterable[Event]) -> list[Offboarding]:
    """Offboardings from their events (any order), oldest start first."""
    by_id: dict[str, Offboarding] = {}
    for ev in sorted(events, key=lambda e: e.seq):
        body = ev.body
        oid = str(body.get("offboarding_id") or "")
        if ev.event == "subject.offboarding_started":
            by_id[oid] = Offboarding(
                id=uuid.UUID(oid),
                subject=str(body["subject"]),
                reason=str(body.get("reason") or ""),
                started_seq=ev.seq,
                started_at=ev.recorded_at,
                started_by=ev.subject,
                terminated_at=datetime.fromisoformat(str(body["terminated_at"])),
                sla_seconds=int(body["sla_seconds"]),
                sla_deadline=datetime.fromisoformat(str(body["sla_deadline"])),
            )
            continue
        ob = by_id.get(oid)
        if ob is None:
            continue
        if ev.event == "subject.offboarded" and ob.completed is None:
            ob.completed = dict(body)
        elif ev.event == "subject.reinstated" and ob.reinstated_at is None:
            ob.reinstated_at = ev.recorded_at
            ob.reinstated_by = ev.subject
            ob.reinstate_reason = body.get("reason")
    return sorted(by_id.values(), key=lambda o: o.started_seq)


def current_for(offboardings: Iterable[Offboarding], subject: str) -> Offboarding | None:
    """The subject's newest offboarding that was not reinstated, if any."""
    key = subject_key(subject)
    live = [o for o in offboardings if o.key == key and o.status != "reinstated"]
    return live[-1] if live else None


def reinstatements_of(offboardings: Iterable[Offboarding], subject: str) -> int:
    """How often the subject was re-onboarded: numbers each offboarding of one person."""
    key = subject_key(subject)
    return sum(1 for o in offboardings if o.key == key and o.status == "reinstated")
