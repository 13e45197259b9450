"""Findings: what an auditor would write up, derived from package event records (pure).

``analyze`` reads the ledger rows of an evidence package once, in seq order, and returns
the findings, most severe first. No I/O, no clock: the same records, period and policies
always give the same findings. Memory is bounded by what is *open* — elevations not yet
closed (or break-glass ones not yet reviewed), gaps and annotations, review periods, one
``PolicySet`` per policy version — never by the number of rows.

Checks (``kind``, severity):

==============================  =================  ======================================
kind                            severity           raised when
==============================  =================  ======================================
``chain_break``                 material_weakness  a row's hash is not SHA-256 of its
                                                   predecessor's hash and its canonical
                                                   form, or seq/prev_hash do not link
``gap_unannotated``             material_weakness  a continuity gap (see
                                                   ``broker.evidence.continuity``) that no
                                                   ``gap.annotated`` row covers
``gap_annotated``               finding            the same, covered by an annotation
``review_missing``              finding            a calendar quarter (UTC) inside the
                                                   period has no ``review.completed``
``offboarding_late``            finding            ``subject.offboarded`` missed its SLA
``privileged_without_approval`` material_weakness  a grant of a role privileged in its
                                                   recorded policy without an elevation of
                                                   that subject, secret and role activated
                                                   (quorum of recorded votes met, or
                                                   break-glass) and open at issuance
``break_glass_unreviewed``      finding            a break-glass request with no
                                                   ``elevation.reviewed`` in the stream
``policy_log_divergence``       material_weakness  replaying ``decide`` with the recorded
                                                   policy version, identity and ttl does
                                                   not give the recorded role, the ttl
                                                   exceeds the role's ``max_ttl``, or the
                                                   version is unknown
==============================  =================  ======================================

The stream should begin at an elevation's request for its grants to be judged (the
exporter includes rows from before the period for that); a grant under an elevation the
stream never saw is reported, since its approval cannot be shown. At most
``MAX_FINDINGS_PER_KIND`` findings of one kind are listed, then one that counts the rest.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from broker.auth.principal import Principal, PrincipalKind
from broker.elevation.model import subject_key
from broker.elevation.quorum import Factor, quorum_met
from broker.errors import BrokerError
from broker.ledger.chain import GENESIS, canonical_row, chain_hash
from broker.policy.decide import decide
from broker.policy.loader import load_policy_documents
from broker.policy.model import PolicySet

from .continuity import LIVENESS_EVENTS, GapAnnotation, GapDetector, annotation_from_row
from .continuity import gap_threshold as _gap_threshold

__all__ = ["FINDING_KINDS", "MAX_FINDINGS_PER_KIND", "Finding", "Severity", "analyze"]

Severity = Literal["material_weakness", "finding", "observation"]

FINDING_KINDS = (
    "chain_break",
    "gap_unannotated",
    "gap_annotated",
    "review_missing",
    "offboarding_late",
    "privileged_without_approval",
    "break_glass_unreviewed",
    "policy_log_divergence",
)
MAX_FINDINGS_PER_KIND = 100
# Vault's clock and ours may differ a little; a lease this much past max_ttl is not noise.
_EXPIRY_SLACK = timedelta(seconds=60)
_SEVERITY_ORDER = {"material_weakness": 0, "finding": 1, "observation": 2}
_CLOSING = frozenset(
    {"elevation.denied", "elevation.cancelled", "elevation.ended", "elevation.expired"}
)
_LIVENESS = frozenset(LIVENESS_EVENTS)


@dataclass(frozen=True)
class Finding:
    """One finding. ``seq`` is the ledger row it is about, if one; ``details`` are JSON."""

    severity: Severity
    kind: str
    message: str
    seq: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "kind": self.kind,
            "message": self.message,
            "seq": self.seq,
            "details": dict(self.details),
        }


def analyze(
    events: Iterable[Mapping[str, Any]],
    *,
    period_from: datetime,
    period_to: datetime,
    policies: Mapping[str, Mapping[str, str]],
    heartbeat_seconds: float,
    offboarding_sla_seconds: int,
    completed_reviews: Iterable[str] = (),
) -> list[Finding]:
    """Every finding in ``events`` (package event records, seq order) for the period.

    ``completed_reviews`` names quarters ("YYYY-Qn") whose review completed outside the
    stream (typically just after the quarter ended); ``review.completed`` rows in the
    stream count too.

    ``policies`` maps each policy version to its files (``{name: text}``). ``period_to``
    should not be in the future: the stretch after the last heartbeat up to it is judged
    as a gap. Returns findings sorted by severity, then seq (period-level ones last).
    Raises ``ValueError`` if the period is empty or times are naive, or if
    ``heartbeat_seconds`` is not positive; a malformed record is a ``chain_break``.
    """
    if period_from.tzinfo is None or period_to.tzinfo is None:
        raise ValueError("period_from and period_to must carry a UTC offset")
    if period_to <= period_from:
        raise ValueError("period_to must be after period_from")
    a = _Analyzer(
        period_from=period_from,
        period_to=period_to,
        policies=policies,
        threshold=_gap_threshold(heartbeat_seconds),
        offboarding_sla_seconds=offboarding_sla_seconds,
    )
    a.reviewed_periods.update(completed_reviews)
    for record in events:
        a.feed(record)
    return a.finish()


@dataclass
class _Elevation:
    """An elevation still open (or a break-glass one awaiting review)."""

    seq: int
    requester: str
    secret: str | None
    role: str | None
    break_glass: bool
    factors: list[Factor]
    votes: dict[str, frozenset[str]] = field(default_factory=dict)
    activated: bool = False
    activated_validly: bool = False
    window_ends_at: datetime | None = None
    closed: bool = False
    reviewed: bool = False


@dataclass(frozen=True)
class _Row:
    """The fields of a record the analyzers use, parsed once."""

    seq: int
    recorded_at: datetime
    event: str
    outcome: str
    subject: str | None
    subject_kind: str | None
    secret: str | None
    role: str | None
    policy_version: str | None
    grant_id: uuid.UUID | None
    expires_at: datetime | None
    body: Mapping[str, Any]


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        raise ValueError("time without a UTC offset")
    return parsed


class _Analyzer:
    def __init__(
        self,
        *,
        period_from: datetime,
        period_to: datetime,
        policies: Mapping[str, Mapping[str, str]],
        threshold: timedelta,
        offboarding_sla_seconds: int,
    ) -> None:
        self.period_from = period_from
        self.period_to = period_to
        self.policies = policies
        self.offboarding_sla = offboarding_sla_seconds
        self.gaps = GapDetector(period_from=period_from, period_to=period_to, threshold=threshold)
        self.findings: list[Finding] = []
        self.counts: dict[str, int] = {}
        self.prev_seq: int | None = None
        self.prev_hash: bytes | None = None
        self.elevations: dict[str, _Elevation] = {}
        self.annotations: list[GapAnnotation] = []
        self.reviewed_periods: set[str] = set()
        self.policy_cache: dict[str, PolicySet | str] = {}  # version -> set, or why not

    # -- plumbing ---------------------------------------------------------------------

    def add(
        self,
        severity: Severity,
        kind: str,
        message: str,
        seq: int | None = None,
        **details: Any,
    ) -> None:
        n = self.counts.get(kind, 0) + 1
        self.counts[kind] = n
        if n <= MAX_FINDINGS_PER_KIND:
            self.findings.append(Finding(severity, kind, message, seq, details))

    def feed(self, record: Mapping[str, Any]) -> None:
        row = self.check_chain(record)
        if row is None:
            return
        event = row.event
        if event in _LIVENESS:
            self.gaps.observe(row.recorded_at)
        elif event == "grant.issued":
            # Rows before the period (the elevations its grants cite) and after it (up to
            # the covering checkpoint) are context: only the period's grants are judged.
            if self.period_from <= row.recorded_at < self.period_to:
                self.grant(row)
        elif event.startswith("elevation."):
            self.elevation(row)
        elif event == "gap.annotated":
            note = annotation_from_row(row.seq, row.recorded_at, row.subject, row.body)
            if note is not None:
                self.annotations.append(note)
        elif event == "review.completed":
            period = row.body.get("period")
            if isinstance(period, str):
                self.reviewed_periods.add(period)
        elif event == "subject.offboarded":
            self.offboarded(row)

    def finish(self) -> list[Finding]:
        self.finish_gaps()
        self.finish_reviews()
        for eid, el in self.elevations.items():
            if el.break_glass and not el.reviewed:
                self.add(
                    "finding",
                    "break_glass_unreviewed",
                    f"break-glass elevation {eid} by {el.requester!r} was never reviewed",
                    el.seq,
                    elevation_id=eid,
                    subject=el.requester,
                    secret=el.secret,
                )
        for kind, n in self.counts.items():
            if n > MAX_FINDINGS_PER_KIND:
                severity = next(f.severity for f in self.findings if f.kind == kind)
                self.findings.append(
                    Finding(
                        severity,
                        kind,
                        f"{n - MAX_FINDINGS_PER_KIND} more {kind} findings not listed",
                        None,
                        {"total": n},
                    )
                )
        big = 1 << 62
        return sorted(
            self.findings,
            key=lambda f: (_SEVERITY_ORDER[f.severity], f.seq if f.seq is not None else big),
        )

    # -- chain ------------------------------------------------------------------------

    def check_chain(self, record: Mapping[str, Any]) -> _Row | None:
        """The parsed row, after checking its hash and linkage; None if unreadable."""
        seq_value = record.get("seq")
        seq = seq_value if type(seq_value) is int else None
        try:
            row = _Row(
                seq=cast(int, seq),
                recorded_at=cast(datetime, _time(record["recorded_at"])),
                event=str(record["event"]),
                outcome=str(record["outcome"]),
                subject=record["subject"],
                subject_kind=record["subject_kind"],
                secret=record["secret"],
                role=record["role"],
                policy_version=record["policy_version"],
                grant_id=uuid.UUID(str(record["grant_id"])) if record["grant_id"] else None,
                expires_at=_time(record["expires_at"]),
                body=record["body"],
            )
            if seq is None or not isinstance(row.body, Mapping):
                raise ValueError("seq or body missing")
            prev_hash = bytes.fromhex(record["prev_hash"])
            stored = bytes.fromhex(record["hash"])
            computed = chain_hash(
                prev_hash,
                canonical_row(
                    seq=seq,
                    recorded_at=row.recorded_at,
                    event=row.event,
                    replica=record["replica"],
                    subject=row.subject,
                    subject_kind=row.subject_kind,
                    secret=row.secret,
                    role=row.role,
                    policy_version=row.policy_version,
                    grant_id=row.grant_id,
                    lease_id=record["lease_id"],
                    expires_at=row.expires_at,
                    outcome=row.outcome,
                    request_id=record["request_id"],
                    body=row.body,
                    dedupe_key=record["dedupe_key"],
                ),
            )
        except (KeyError, TypeError, ValueError) as e:
            self.add(
                "material_weakness",
                "chain_break",
                f"ledger row {seq if seq is not None else '?'} cannot be read: {e}",
                seq,
            )
            self.prev_seq, self.prev_hash = seq, None
            return None
        if self.prev_seq is None and self.prev_hash is None:
            if seq == 1 and prev_hash != GENESIS:
                self.add(
                    "material_weakness",
                    "chain_break",
                    "ledger row 1 does not start from the genesis hash",
                    seq,
                )
            if seq == 1 and row.recorded_at > self.period_from:
                # The ledger begins inside the period: nothing was there to log before it.
                self.gaps.lead = row.recorded_at
        else:
            if self.prev_seq is not None and seq != self.prev_seq + 1:
                self.add(
                    "material_weakness",
                    "chain_break",
                    f"ledger row {seq} follows row {self.prev_seq}: rows missing or reordered",
                    seq,
                    expected_seq=self.prev_seq + 1,
                )
            elif self.prev_hash is not None and prev_hash != self.prev_hash:
                self.add(
                    "material_weakness",
                    "chain_break",
                    f"ledger row {seq} does not link to row {self.prev_seq}'s hash",
                    seq,
                )
        if computed != stored:
            self.add(
                "material_weakness",
                "chain_break",
                f"ledger row {seq}'s hash does not match its contents (altered)",
                seq,
                stored_hash=stored.hex(),
                computed_hash=computed.hex(),
            )
        self.prev_seq, self.prev_hash = seq, stored
        return row

    # -- continuity and reviews -------------------------------------------------------

    def finish_gaps(self) -> None:
        for gap in self.gaps.finish():
            covering = [a for a in self.annotations if a.covers(gap)]
            details: dict[str, Any] = {**gap.to_json()}
            if covering:
                note = covering[-1]
                details["annotation"] = note.to_json()
                self.add(
                    "finding",
                    "gap_annotated",
                    f"no heartbeat from {gap.start.isoformat()} to {gap.end.isoformat()}"
                    f" ({gap.duration_seconds:.0f}s); annotated: {note.remediation}",
                    note.seq,
                    **details,
                )
            else:
                self.add(
                    "material_weakness",
                    "gap_unannotated",
                    f"no heartbeat from {gap.start.isoformat()} to {gap.end.isoformat()}"
                    f" ({gap.duration_seconds:.0f}s) and no annotation explains it",
                    None,
                    **details,
                )

    def finish_reviews(self) -> None:
        for label, start, end in _quarters_within(self.period_from, self.period_to):
            if label not in self.reviewed_periods:
                self.add(
                    "finding",
                    "review_missing",
                    f"no completed access review for {label}",
                    None,
                    period=label,
                    start=start.isoformat(),
                    end=end.isoformat(),
                )

    def offboarded(self, row: _Row) -> None:
        body = row.body
        took = body.get("seconds_from_termination")
        late = body.get("sla_met") is False or (
            "sla_met" not in body and type(took) is int and took > self.offboarding_sla
        )
        if late:
            subject = body.get("subject") or row.subject
            self.add(
                "finding",
                "offboarding_late",
                f"offboarding of {subject!r} took {took}s, over the {self.offboarding_sla}s SLA",
                row.seq,
                subject=subject,
                seconds_from_termination=took,
                sla_seconds=self.offboarding_sla,
            )

    # -- elevations -------------------------------------------------------------------

    def elevation(self, row: _Row) -> None:
        eid = row.body.get("elevation_id")
        if not isinstance(eid, str):
            return
        if row.event == "elevation.requested":
            self.elevations[eid] = _Elevation(
                seq=row.seq,
                requester=row.subject or "",
                secret=row.secret,
                role=row.role,
                break_glass=row.outcome == "break_glass" or row.body.get("break_glass") is True,
                factors=_factors(row.body.get("factors")),
            )
            return
        el = self.elevations.get(eid)
        if el is None:
            return
        if row.event == "elevation.approved" and row.subject:
            if subject_key(row.subject) != subject_key(el.requester):  # never self-approval
                groups = row.body.get("approver_groups") or ()
                el.votes[subject_key(row.subject)] = frozenset(str(g) for g in groups)
        elif row.event == "elevation.activated" and not el.closed:
            el.activated = True
            el.activated_validly = el.break_glass or quorum_met(el.factors, el.votes)
            try:
                el.window_ends_at = _time(row.body.get("window_ends_at"))
            except ValueError:
                el.window_ends_at = None
        elif row.event in _CLOSING:
            el.closed = True
        elif row.event == "elevation.reviewed":
            el.reviewed = True
        if el.closed and (el.reviewed or not el.break_glass):
            del self.elevations[eid]  # nothing more can happen under it legitimately

    # -- grants -----------------------------------------------------------------------

    def policy(self, version: str | None) -> PolicySet | str:
        if version is None:
            return "the grant records no policy version"
        cached = self.policy_cache.get(version)
        if cached is None:
            documents = self.policies.get(version)
            if documents is None:
                cached = f"policy version {version} is not in the evidence"
            else:
                try:
                    cached = load_policy_documents(documents)
                except BrokerError as e:
                    cached = f"policy version {version} does not load: {e.message}"
                else:
                    if cached.version != version:
                        cached = f"policy files recorded as {version} hash to {cached.version}"
            self.policy_cache[version] = cached
        return cached

    def grant(self, row: _Row) -> None:
        policy = self.policy(row.policy_version)
        if isinstance(policy, str):
            self.divergence(row, policy)
            return
        role = policy.role(row.role) if row.role else None
        if role is None:
            self.divergence(row, f"role {row.role!r} is not in policy {policy.version}")
            return
        if role.privileged:
            self.check_approval(row)
        body = row.body
        groups = body.get("groups")
        issuer = body.get("issuer")
        ttl = body.get("ttl")
        if (
            not isinstance(groups, list)
            or not isinstance(issuer, str)
            or row.subject_kind not in ("human", "service")
            or not row.subject
            or not row.secret
        ):
            self.divergence(row, "the grant does not record the identity needed to replay it")
            return
        principal = Principal(
            subject=row.subject,
            kind=cast(PrincipalKind, row.subject_kind),
            issuer=issuer,
            groups=frozenset(str(g) for g in groups),
        )
        try:
            decision = decide(policy, principal, row.secret, ttl if ttl is not None else None)
        except BrokerError as e:
            self.divergence(row, f"the recorded ttl cannot be replayed: {e.message}")
            return
        if decision.outcome not in ("allow", "elevation_required") or (
            decision.role is None or decision.role.name != role.name
        ):
            chosen = decision.role.name if decision.role else None
            self.divergence(
                row,
                f"policy {policy.version} says {decision.outcome}"
                + (f" via role {chosen!r}" if chosen else "")
                + f", the ledger says issued via role {role.name!r}",
                replayed_outcome=decision.outcome,
                replayed_role=chosen,
            )
            return
        lifetime = row.expires_at - row.recorded_at if row.expires_at else None
        if (type(ttl) is int and ttl > role.max_ttl) or (
            lifetime is not None and lifetime > timedelta(seconds=role.max_ttl) + _EXPIRY_SLACK
        ):
            self.divergence(
                row,
                f"grant lasts longer than role {role.name!r}'s max_ttl of {role.max_ttl}s",
                ttl=ttl,
                lifetime_seconds=lifetime.total_seconds() if lifetime is not None else None,
                max_ttl=role.max_ttl,
            )

    def divergence(self, row: _Row, why: str, **details: Any) -> None:
        self.add(
            "material_weakness",
            "policy_log_divergence",
            f"grant {row.grant_id} to {row.subject!r} for {row.secret!r}: {why}",
            row.seq,
            grant_id=str(row.grant_id) if row.grant_id else None,
            subject=row.subject,
            secret=row.secret,
            role=row.role,
            policy_version=row.policy_version,
            **details,
        )

    def check_approval(self, row: _Row) -> None:
        eid = row.body.get("elevation_id")
        why: str | None = None
        if not isinstance(eid, str):
            why = "no elevation recorded"
        else:
            el = self.elevations.get(eid)
            if el is None:
                why = f"elevation {eid} is not open in the evidence"
            elif not el.activated:
                why = f"elevation {eid} was never activated"
            elif not el.activated_validly:
                why = f"elevation {eid} was activated without a quorum of recorded approvals"
            elif el.closed:
                why = f"elevation {eid} was closed before the grant"
            elif el.window_ends_at is not None and row.recorded_at > el.window_ends_at:
                why = f"elevation {eid}'s window had ended"
            elif (
                subject_key(el.requester) != subject_key(row.subject or "")
                or el.secret != row.secret
                or el.role != row.role
            ):
                why = f"elevation {eid} was for another subject, secret or role"
        if why is not None:
            self.add(
                "material_weakness",
                "privileged_without_approval",
                f"privileged grant {row.grant_id} of {row.secret!r} to {row.subject!r}: {why}",
                row.seq,
                grant_id=str(row.grant_id) if row.grant_id else None,
                subject=row.subject,
                secret=row.secret,
                role=row.role,
                elevation_id=eid if isinstance(eid, str) else None,
            )


def _factors(value: Any) -> list[Factor]:
    out: list[Factor] = []
    if isinstance(value, list):
        for f in value:
            if isinstance(f, Mapping) and type(f.get("approvals")) is int:
                groups = f.get("approver_groups") or ()
                out.append((frozenset(str(g) for g in groups), f["approvals"]))
    return out


def _quarters_within(start: datetime, end: datetime) -> list[tuple[str, datetime, datetime]]:
    """Calendar quarters (UTC) lying wholly in ``[start, end)``, as ("YYYY-Qn", from, to)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    q = (start.month - 1) // 3
    cursor = datetime(start.year, 3 * q + 1, 1, tzinfo=UTC)
    if cursor < start:
        cursor = _next_quarter(cursor)
    out: list[tuple[str, datetime, datetime]] = []
    while True:
        nxt = _next_quarter(cursor)
        if nxt > end:
            return out
        out.append((f"{cursor.year}-Q{(cursor.month - 1) // 3 + 1}", cursor, nxt))
        cursor = nxt


def _next_quarter(d: datetime) -> datetime:
    return d.replace(year=d.year + 1, month=1) if d.month > 9 else d.replace(month=d.month + 3)
