"""The subjects this replica refuses: offboarded people, even holding a still-valid JWT.

Filled from the ledger at start-up and refreshed incrementally (events with a seq above the
last one seen) every ``blocklist_refresh_seconds``, so every replica refuses a subject
within one interval of ``subject.offboarding_started`` committing; the replica that wrote
it refuses at once. Each subject's state carries the seq of the event that set it and
older events never override newer ones, so a refresh that raced a local change cannot
undo it.

The refresh interval leaves a window in which another replica has not yet heard of an
offboarding. ``issue_guard`` closes it in the ledger itself: every ``grant.issued`` row
is written only if the subject's current offboarding key (``offboarding:<subject>:<n>:
started``, n = reinstatements so far) is absent — checked under the ledger lock, so a
credential minted by a stale replica is refused and revoked, never handed out.

Sessions (the Vault front door's today; any ledgered session) end with an offboarding and
stay ended: ``session_ended`` is true for every session created before the subject's
latest offboarding event — ``subject.offboarding_started``, or the ``subject.reinstated``
that followed it (a session a stale replica created while the subject was offboarded does
not survive reinstatement either). Reinstatement therefore restores no session: the person
logs in again. The rule is checked wherever a session is authenticated, from the same
state as the blocklist, so it holds on every replica within one refresh interval and on
replicas started later.
"""

from __future__ import annotations

import asyncio
import logging

from broker.auth.principal import Principal
from broker.elevation.model import subject_key
from broker.errors import Forbidden
from broker.ledger import Ledger
from broker.ledger.offboarding_queries import offboarding_events
from broker.metrics import Metrics

__all__ = ["SubjectBlocklist", "offboarding_started_key"]


def offboarding_started_key(subject: str, epoch: int) -> str:
    """The dedupe key of a subject's ``epoch``-th offboarding (0 = never reinstated).

    Concurrent admins converge on one offboarding; issuance is guarded on the same key.
    """
    return f"offboarding:{subject_key(subject)}:{epoch}:started"


_log = logging.getLogger(__name__)


class SubjectBlocklist:
    def __init__(self, ledger: Ledger, metrics: Metrics) -> None:
        self._ledger = ledger
        self._metrics = metrics
        self._state: dict[str, tuple[bool, int]] = {}  # subject_key -> (blocked, set at seq)
        self._reinstated: dict[str, set[int]] = {}  # subject_key -> seqs of reinstatements
        # subject_key -> seq of the latest offboarding event: older sessions are over.
        self._sessions_from: dict[str, int] = {}
        self._seen = 0
        self._lock = asyncio.Lock()

    def _apply(self, subject: str, blocked: bool, seq: int) -> None:
        key = subject_key(subject)
        if seq > self._state.get(key, (False, -1))[1]:
            self._state[key] = (blocked, seq)
        self._sessions_from[key] = max(seq, self._sessions_from.get(key, 0))

    def block(self, subject: str, *, seq: int) -> None:
        """Refuse ``subject`` here now (its ``subject.offboarding_started`` is row ``seq``)."""
        self._apply(subject, True, seq)

    def unblock(self, subject: str, *, seq: int) -> None:
        """Accept ``subject`` here again (its ``subject.reinstated`` is row ``seq``)."""
        self._apply(subject, False, seq)
        self._reinstated.setdefault(subject_key(subject), set()).add(seq)

    def issue_guard(self, principal: Principal) -> tuple[str, ...]:
        """Guard key for the subject's issuance: absent unless they are being offboarded."""
        key = subject_key(principal.subject)
        epoch = len(self._reinstated.get(key, ()))
        return (offboarding_started_key(principal.subject, epoch),)

    def session_ended(self, subject: str, created_seq: int) -> bool:
        """Whether an offboarding ended ``subject``'s session whose creation is row
        ``created_seq``: created before the subject's latest offboarding event."""
        return created_seq < self._sessions_from.get(subject_key(subject), 0)

    def is_blocked(self, subject: str) -> bool:
        return self._state.get(subject_key(subject), (False, 0))[0]

    def refuse_if_blocked(self, principal: Principal) -> None:
        """Raise Forbidden(``subject_offboarded``) for an offboarded subject (and count it)."""
        if self.is_blocked(principal.subject):
            self._metrics.offboarded_refusals.inc()
            raise Forbidden("this subject has been offboarded", code="subject_offboarded")

    async def refresh(self) -> int:
        """Apply offboarding events committed since the last refresh; return how many.

        Raises LedgerUnavailable-style errors to the caller: at start-up that stops the
        broker (it must not serve without the list); the periodic job logs and retries.
        """
        async with self._lock:
            events = await offboarding_events(self._ledger, after_seq=self._seen)
            for ev in events:
                subject = str(ev.body.get("subject") or "")
                if ev.event == "subject.offboarding_started":
                    self._apply(subject, True, ev.seq)
                elif ev.event == "subject.reinstated":
                    self.unblock(subject, seq=ev.seq)
                self._seen = max(self._seen, ev.seq)
            blocked = sum(1 for b, _ in self._state.values() if b)
            self._metrics.offboarded_subjects.set(blocked)
            if events:
                _log.info(
                    "blocklist: %d offboarding events applied, %d blocked", len(events), blocked
                )
            return len(events)
