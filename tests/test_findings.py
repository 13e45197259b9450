"""The findings analyzers over synthetic, correctly hash-chained package event records.

Each history is a quarter of hourly heartbeats with ordinary activity (a standard grant,
an approved elevation and its grant, a reviewed break-glass use, an on-time offboarding,
the quarter's review). The clean one has no findings; each variant adds exactly one defect
and must yield exactly the finding for it. The rows are hashed with the ledger's own
``canonical_row``/``chain_hash``, so only a real tamper breaks the chain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.evidence import Finding, analyze
from broker.ledger.chain import GENESIS, canonical_row, chain_hash
from broker.policy.loader import load_policy_dir

REPO = Path(__file__).resolve().parent.parent
POLICY = load_policy_dir(REPO / "policies")
VERSION = POLICY.version
POLICIES = {VERSION: dict(POLICY.documents)}
ISSUER = "https://issuer.test"
HOUR = timedelta(hours=1)
Q1_FROM = datetime(2026, 1, 1, tzinfo=UTC)
Q1_TO = datetime(2026, 4, 1, tzinfo=UTC)
GROUPS = {"alice": ["engineering"], "bob": ["engineering", "sre-leads"], "carol": ["auditors"]}


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


class Chain:
    """Turns event specs into package event records, hash-chained like the ledger writer."""

    def __init__(self) -> None:
        self.seq = 0
        self.prev = GENESIS

    def record(self, at: datetime, event: str, **f: Any) -> dict[str, Any]:
        self.seq += 1
        grant_id = f.get("grant_id")
        fields: dict[str, Any] = {
            "seq": self.seq,
            "recorded_at": at,
            "event": event,
            "replica": f.get("replica", "r1"),
            "subject": f.get("subject"),
            "subject_kind": f.get("subject_kind"),
            "secret": f.get("secret"),
            "role": f.get("role"),
            "policy_version": f.get("policy_version"),
            "grant_id": grant_id,
            "lease_id": f.get("lease_id"),
            "expires_at": f.get("expires_at"),
            "outcome": f.get("outcome", "ok"),
            "request_id": f.get("request_id"),
            "body": f.get("body", {}),
            "dedupe_key": f.get("dedupe_key"),
        }
        digest = chain_hash(self.prev, canonical_row(**fields))
        record = {
            **fields,
            "recorded_at": at.isoformat(),
            "grant_id": str(grant_id) if grant_id else None,
            "expires_at": _iso(fields["expires_at"]),
            "prev_hash": self.prev.hex(),
            "hash": digest.hex(),
        }
        self.prev = digest
        return record


def _grant(
    subject: str,
    secret: str,
    role: str,
    ttl: int,
    at: datetime,
    *,
    elevation_id: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"engine": "kv2", "ttl": ttl, "issuer": ISSUER}
    body["groups"] = GROUPS[subject]
    if elevation_id is not None:
        body["elevation_id"] = elevation_id
    return {
        "subject": subject,
        "subject_kind": "human",
        "secret": secret,
        "role": role,
        "policy_version": VERSION,
        "grant_id": uuid.uuid4(),
        "expires_at": at + timedelta(seconds=ttl),
        "outcome": "issued",
        "body": body,
    }


def _elevation(
    at: datetime, *, break_glass: bool, reviewed: bool, approved: bool = True
) -> list[tuple[datetime, str, dict[str, Any]]]:
    """An orders-dba elevation of alice: requested, approved by bob (or break-glass),
    activated, used for one grant, then ended (and reviewed, for break-glass)."""
    eid = str(uuid.uuid4())
    common = {
        "subject_kind": "human",
        "secret": "db/orders-admin",
        "role": "orders-dba",
        "policy_version": VERSION,
    }
    specs: list[tuple[datetime, str, dict[str, Any]]] = [
        (
            at,
            "elevation.requested",
            {
                **common,
                "subject": "alice",
                "outcome": "break_glass" if break_glass else "pending",
                "body": {
                    "elevation_id": eid,
                    "reason": "fix the orders table",
                    "duration": 3600,
                    "request_expires_at": (at + 4 * HOUR).isoformat(),
                    "factors": [{"approver_groups": ["sre-leads"], "approvals": 1}],
                    "break_glass": break_glass,
                    "issuer": ISSUER,
                    "groups": ["engineering"],
                },
            },
        )
    ]
    t = at + timedelta(minutes=1)
    if not break_glass and approved:
        specs.append(
            (
                t,
                "elevation.approved",
                {
                    **common,
                    "subject": "bob",
                    "outcome": "approved",
                    "body": {"elevation_id": eid, "approver_groups": ["sre-leads"]},
                },
            )
        )
    specs.append(
        (
            t + timedelta(seconds=1),
            "elevation.activated",
            {
                **common,
                "subject": "alice" if break_glass else "bob",
                "outcome": "break_glass" if break_glass else "approved",
                "body": {"elevation_id": eid, "window_ends_at": (t + HOUR).isoformat()},
            },
        )
    )
    g = t + timedelta(minutes=1)
    specs.append(
        (
            g,
            "grant.issued",
            _grant("alice", "db/orders-admin", "orders-dba", 1800, g, elevation_id=eid),
        )
    )
    specs.append(
        (
            t + HOUR,
            "elevation.expired",
            {**common, "subject": None, "outcome": "ended", "body": {"elevation_id": eid}},
        )
    )
    if reviewed:
        specs.append(
            (
                t + 2 * HOUR,
                "elevation.reviewed",
                {**common, "subject": "erin", "outcome": "reviewed", "body": {"elevation_id": eid}},
            )
        )
    return specs


@dataclass
class History:
    """A quarter of evidence; each flag adds one defect."""

    gap: tuple[datetime, datetime] | None = None  # heartbeats left out in [start, end)
    annotate: bool = False
    review: bool = True
    offboarding_late: bool = False
    privileged_unapproved: bool = False
    break_glass_reviewed: bool = True
    not_allowed: bool = False
    tamper_seq: int | None = None
    extra: list[tuple[datetime, str, dict[str, Any]]] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        start = Q1_FROM - HOUR
        specs: list[tuple[datetime, str, dict[str, Any]]] = [
            (start, "policy.loaded", {"policy_version": VERSION, "outcome": "active"}),
            (start + timedelta(seconds=1), "broker.started", {}),
        ]
        t = start
        while t <= Q1_TO + HOUR:
            t += HOUR
            if self.gap is None or not (self.gap[0] <= t < self.gap[1]):
                specs.append((t, "broker.heartbeat", {"body": {"interval_ms": 3_600_000}}))
        day = Q1_FROM + timedelta(days=10, minutes=7)
        specs.append((day, "grant.issued", _grant("alice", "stripe/test", "engineering", 900, day)))
        specs += _elevation(
            Q1_FROM + timedelta(days=20, minutes=3), break_glass=False, reviewed=False
        )
        specs += _elevation(
            Q1_FROM + timedelta(days=30, minutes=3),
            break_glass=True,
            reviewed=self.break_glass_reviewed,
        )
        off = Q1_FROM + timedelta(days=40, minutes=5)
        specs.append(
            (
                off,
                "subject.offboarded",
                {
                    "subject": "mallory",
                    "outcome": "completed",
                    "body": {
                        "subject": "mallory",
                        "sla_met": not self.offboarding_late,
                        "seconds_from_termination": 7200 if self.offboarding_late else 60,
                    },
                },
            )
        )
        if self.review:
            done = Q1_TO - timedelta(days=2, minutes=9)
            specs.append(
                (
                    done,
                    "review.completed",
                    {"outcome": "completed", "body": {"review_id": "r-1", "period": "2026-Q1"}},
                )
            )
        if self.gap is not None and self.annotate:
            note = self.gap[1] + timedelta(days=1, minutes=11)
            specs.append(
                (
                    note,
                    "gap.annotated",
                    {
                        "subject": "erin",
                        "outcome": "annotated",
                        "body": {
                            "from": (self.gap[0] - HOUR).isoformat(),
                            "to": self.gap[1].isoformat(),
                            "remediation": "database failover; see INC-42",
                        },
                    },
                )
            )
        if self.privileged_unapproved:
            g = Q1_FROM + timedelta(days=50, minutes=13)
            specs.append(
                (g, "grant.issued", _grant("alice", "stripe/prod", "payments-prod", 900, g))
            )
        if self.not_allowed:
            g = Q1_FROM + timedelta(days=55, minutes=17)
            specs.append((g, "grant.issued", _grant("carol", "stripe/test", "engineering", 900, g)))
        specs += self.extra
        specs.sort(key=lambda s: s[0])
        chain = Chain()
        out = [chain.record(at, event, **f) for at, event, f in specs]
        if self.tamper_seq is not None:
            row = out[self.tamper_seq - 1]
            row["body"] = {**row["body"], "reason": "edited afterwards"}
        return out


def _analyze(records: list[dict[str, Any]], **kw: Any) -> list[Finding]:
    return analyze(
        records,
        period_from=kw.get("period_from", Q1_FROM),
        period_to=kw.get("period_to", Q1_TO),
        policies=kw.get("policies", POLICIES),
        heartbeat_seconds=3600,
        offboarding_sla_seconds=3600,
    )


def _kinds(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.kind, f.severity) for f in findings]


def test_clean_history_has_no_findings() -> None:
    records = History().records()
    assert len(records) > 2000
    assert _analyze(records) == []


GAP = (datetime(2026, 2, 10, tzinfo=UTC), datetime(2026, 2, 10, 5, tzinfo=UTC))


def test_unannotated_gap_is_a_material_weakness() -> None:
    findings = _analyze(History(gap=GAP).records())
    assert _kinds(findings) == [("gap_unannotated", "material_weakness")]
    d = findings[0].details
    # From the last heartbeat before the silence to the first after it.
    assert d["start"] == (GAP[0] - HOUR).isoformat()
    assert d["end"] == GAP[1].isoformat()
    assert d["duration_seconds"] == 6 * 3600


def test_annotated_gap_is_a_finding_citing_the_annotation() -> None:
    findings = _analyze(History(gap=GAP, annotate=True).records())
    assert _kinds(findings) == [("gap_annotated", "finding")]
    assert findings[0].details["annotation"]["remediation"] == "database failover; see INC-42"
    assert "INC-42" in findings[0].message


def test_silence_of_exactly_two_intervals_is_not_a_gap() -> None:
    one_missing = (datetime(2026, 2, 10, tzinfo=UTC), datetime(2026, 2, 10, 0, 30, tzinfo=UTC))
    assert _analyze(History(gap=one_missing).records()) == []


def test_gap_at_the_end_of_the_period() -> None:
    findings = _analyze(History(gap=(Q1_TO - 5 * HOUR, Q1_TO + 3 * HOUR)).records())
    assert _kinds(findings) == [("gap_unannotated", "material_weakness")]
    assert findings[0].details["end"] == Q1_TO.isoformat()


def test_missed_quarter_review() -> None:
    findings = _analyze(History(review=False).records())
    assert _kinds(findings) == [("review_missing", "finding")]
    assert findings[0].details["period"] == "2026-Q1"


def test_only_whole_quarters_need_a_review() -> None:
    records = History(review=False).records()
    assert _analyze(records, period_to=Q1_TO - timedelta(days=1)) == []


def test_late_offboarding() -> None:
    findings = _analyze(History(offboarding_late=True).records())
    assert _kinds(findings) == [("offboarding_late", "finding")]
    assert findings[0].details["subject"] == "mallory"
    assert findings[0].details["seconds_from_termination"] == 7200


def test_tampered_row_is_a_chain_break() -> None:
    records = History().records()
    seq = next(r["seq"] for r in records if r["event"] == "grant.issued")
    findings = _analyze(History(tamper_seq=seq).records())
    assert _kinds(findings) == [("chain_break", "material_weakness")]
    assert findings[0].seq == seq


def test_deleted_row_is_a_chain_break() -> None:
    records = History().records()
    del records[100]
    findings = _analyze(records)
    assert _kinds(findings) == [("chain_break", "material_weakness")]
    assert findings[0].seq == 102


def test_privileged_grant_without_approval() -> None:
    findings = _analyze(History(privileged_unapproved=True).records())
    assert _kinds(findings) == [("privileged_without_approval", "material_weakness")]
    assert findings[0].details["secret"] == "stripe/prod"


def test_grant_under_an_elevation_without_quorum() -> None:
    # Activated although nobody approved: the recorded votes do not meet the factor.
    extra = _elevation(
        Q1_FROM + timedelta(days=60), break_glass=False, reviewed=False, approved=False
    )
    findings = _analyze(History(extra=extra).records())
    assert _kinds(findings) == [("privileged_without_approval", "material_weakness")]
    assert "quorum" in findings[0].message


def test_unreviewed_break_glass() -> None:
    findings = _analyze(History(break_glass_reviewed=False).records())
    assert _kinds(findings) == [("break_glass_unreviewed", "finding")]


def test_grant_not_allowed_by_its_recorded_policy() -> None:
    findings = _analyze(History(not_allowed=True).records())
    assert _kinds(findings) == [("policy_log_divergence", "material_weakness")]
    assert findings[0].details["replayed_outcome"] == "deny"
    assert findings[0].details["subject"] == "carol"


def test_grant_longer_than_max_ttl_diverges() -> None:
    g = Q1_FROM + timedelta(days=70)
    long = _grant("alice", "stripe/test", "engineering", 7200, g)
    findings = _analyze(History(extra=[(g, "grant.issued", long)]).records())
    assert _kinds(findings) == [("policy_log_divergence", "material_weakness")]
    assert findings[0].details["max_ttl"] == 3600


def test_grants_outside_the_period_are_context_not_judged() -> None:
    """The package carries rows before the period (elevations its grants cite) and after
    it (up to the covering checkpoint): a grant there is not the period's to judge."""
    before, after = Q1_FROM - timedelta(minutes=30), Q1_TO + timedelta(minutes=20)
    outside = [
        (at, "grant.issued", _grant("carol", "stripe/test", "engineering", 900, at))
        for at in (before, after)
    ]
    assert _kinds(_analyze(History(extra=outside).records())) == []


def test_unknown_policy_version_diverges_for_every_grant() -> None:
    findings = _analyze(History().records(), policies={})
    assert {k for k, _ in _kinds(findings)} == {"policy_log_divergence"}
    assert len(findings) == 3  # the standard grant and the two elevated ones


def test_findings_are_capped_per_kind() -> None:
    records = History().records()
    for r in records:
        r["hash"] = "00" * 32  # every row altered
    findings = _analyze(records)
    breaks = [f for f in findings if f.kind == "chain_break"]
    assert len(breaks) == 101
    assert breaks[-1].details["total"] > 2000


# --- a long stream: memory bounded by what is open, not by the number of rows -------------

_MINUTE = timedelta(minutes=1)


def _long_stream(events: int) -> Iterator[Mapping[str, Any]]:
    """``events`` rows, generated lazily: a heartbeat a minute, grants, and elevations that
    open and close, so the analyzer's open-item maps fill and drain all the time."""
    chain = Chain()
    t = Q1_FROM
    n = 0
    i = 0
    while n < events:
        i += 1
        t += _MINUTE
        specs = [(t, "broker.heartbeat", {"body": {"interval_ms": 60_000}})]
        g = t + timedelta(seconds=20)
        specs.append((g, "grant.issued", _grant("alice", "stripe/test", "engineering", 900, g)))
        if i % 50 == 0:
            specs += [
                (at, ev, f)
                for at, ev, f in _elevation(
                    t + timedelta(seconds=30), break_glass=False, reviewed=False
                )
                if ev != "elevation.expired"
            ]
            specs.append(
                (
                    t + timedelta(seconds=59),
                    "elevation.cancelled",
                    {
                        "outcome": "cancelled",
                        "body": {"elevation_id": specs[-4][2]["body"]["elevation_id"]},
                    },
                )
            )
        for at, ev, f in specs:
            if n >= events:
                return
            n += 1
            yield chain.record(at, ev, **f)


_LONG_RUN = """
import json, resource, sys, time
from datetime import timedelta
from tests.test_findings import POLICIES, Q1_FROM, _long_stream
from broker.evidence import analyze

events = int(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
began = time.perf_counter()
findings = analyze(
    _long_stream(events),
    period_from=Q1_FROM,
    period_to=Q1_FROM + timedelta(days=60),  # no whole quarter, so no review is due
    policies=POLICIES,
    heartbeat_seconds=60,
    offboarding_sla_seconds=3600,
)
elapsed = time.perf_counter() - began
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"findings": len(findings), "grew_kib": after - before, "seconds": elapsed}))
"""


def test_long_stream_memory_is_bounded() -> None:
    """200k rows through analyze in a fresh interpreter: its peak RSS (a high-water mark
    this process cannot disturb) grows by far less than the rows would take if kept
    (~1 KiB each as records, ~200 MB), and it finishes in reasonable time.

    Not tracemalloc: tracing every allocation makes this run several times slower.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _LONG_RUN, "200000"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["findings"] == 0
    assert result["grew_kib"] < 50 * 1024, f"peak RSS grew {result['grew_kib'] / 1024:.1f} MiB"
    assert result["seconds"] < 120, f"{result['seconds']:.1f}s"


def test_analyzer_memory_does_not_grow_with_rows() -> None:
    """tracemalloc peak of analyze over 2k and 8k rows (serialized beforehand, as the
    exporter streams events.jsonl) stays flat and far below what keeping the rows takes."""
    peaks = []
    for n in (2_000, 8_000):
        rows = [json.dumps(r) for r in _long_stream(n)]
        tracemalloc.start()
        try:
            analyze(
                (json.loads(line) for line in rows),
                period_from=Q1_FROM,
                period_to=Q1_FROM + timedelta(days=60),
                policies=POLICIES,
                heartbeat_seconds=60,
                offboarding_sla_seconds=3600,
            )
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            kept = [json.loads(line) for line in rows]  # control: what keeping rows costs
            _, kept_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(kept) == n
        assert peak < 1024 * 1024 and kept_peak > 10 * peak, (n, peak, kept_peak)
        peaks.append(peak)
    # Cyclic garbage awaiting collection makes the peak wobble a little, not scale.
    assert peaks[1] < 2 * peaks[0] + 256 * 1024, peaks


def test_period_must_be_aware_and_non_empty() -> None:
    with pytest.raises(ValueError):
        analyze(
            [],
            period_from=Q1_TO,
            period_to=Q1_FROM,
            policies={},
            heartbeat_seconds=60,
            offboarding_sla_seconds=1,
        )
    with pytest.raises(ValueError):
        analyze(
            [],
            period_from=Q1_FROM.replace(tzinfo=None),
            period_to=Q1_TO,
            policies={},
            heartbeat_seconds=60,
            offboarding_sla_seconds=1,
        )


def test_seeded_history_with_four_defects_yields_exactly_those() -> None:
    """The issue's "Must show": a gap, a missed review, a late offboarding and a tampered
    row in one history give exactly those four findings, each once."""
    clean = History().records()
    seq = next(r["seq"] for r in clean if r["event"] == "grant.issued")
    findings = _analyze(
        History(gap=GAP, review=False, offboarding_late=True, tamper_seq=seq).records()
    )
    assert sorted(_kinds(findings)) == [
        ("chain_break", "material_weakness"),
        ("gap_unannotated", "material_weakness"),
        ("offboarding_late", "finding"),
        ("review_missing", "finding"),
    ]
    assert next(f for f in findings if f.kind == "chain_break").seq == seq


def test_a_quarter_reviewed_after_it_ended_is_not_missing() -> None:
    """Q1 is typically reviewed in April: the package names it, the stream need not."""
    records = History(review=False).records()
    assert _kinds(_analyze(records)) == [("review_missing", "finding")]
    findings = analyze(
        records,
        period_from=Q1_FROM,
        period_to=Q1_TO,
        policies=POLICIES,
        heartbeat_seconds=3600,
        offboarding_sla_seconds=3600,
        completed_reviews=["2026-Q1"],
    )
    assert findings == []
