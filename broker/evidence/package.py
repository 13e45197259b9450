"""The evidence package: one signed zip an auditor can check offline.

Contents (each file mapped to the Trust Services Criteria it evidences, see ``TSC``):

- ``events.jsonl``     every ledger row of the period, in the package event record shape,
                       extended to the first signed checkpoint at or after the period's
                       last row, so the segment ends at a signed head;
- ``checkpoints.txt``  the signed notes whose size lies in the segment;
- ``proofs.json``      the Merkle tree nodes left of the segment (with its rows they
                       rebuild the signed root at the segment's end, so the package proves
                       itself without the rest of the ledger) and RFC 6962 consistency
                       proofs from earlier checkpoints: the one that covered the row before
                       the period (the previous period's package ends there) and any the
                       exporter asked for (``consistent_with``);
- ``verification.json`` ``verify_ledger`` at export time, incremental from the last
                       verified head (the first export of a ledger verifies it in full);
- ``grants.csv/json``, ``privileged.csv``, ``offboarding.csv``, ``reviews.csv``,
  ``gaps.csv``, ``findings.json``, ``policies/<version>/<file>``, ``summary.html``;
- ``manifest.json``    SHA-256 of every file, the period, origin, TSC mapping;
- ``manifest.sig``     the manifest's SHA-256 as a C2SP signed note by the checkpoint key,
                       origin ``<ledger origin>/evidence``.

Invariant: memory is bounded whatever the period. Rows are read once through a server-side
cursor; events and derived tables go to temp files during that pass; only open grants,
open elevations and per-secret/per-month counters are held (plus at most
``timeline_max_grants`` intervals for the chart). Findings are computed by a second pass
over the written ``events.jsonl`` — the very bytes the auditor receives.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import dataclasses
import hashlib
import json
import shutil
import tempfile
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from broker import __version__
from broker.errors import BrokerError
from broker.ledger.checkpoint import Checkpoint, CheckpointSigner, CheckpointVerifier
from broker.ledger.evidence_queries import (
    checkpoint_notes,
    covering_checkpoint,
    elevation_request_floor,
    period_bounds,
    policy_versions_in_force,
    stream_rows,
)
from broker.ledger.policy_queries import policy_documents
from broker.ledger.records import event_record
from broker.ledger.review_queries import completed_review_periods
from broker.ledger.tree import TreeError, consistency_proof, span_hashes
from broker.ledger.verify import record_verified_head, verify_ledger

from .findings import Finding, analyze

__all__ = [
    "EVIDENCE_FORMAT",
    "TSC",
    "EvidenceError",
    "ExportOptions",
    "ExportResult",
    "NotYetSigned",
    "event_record",
    "export_package",
    "iter_event_records",
    "manifest_checkpoint",
]

EVIDENCE_FORMAT = "jit-broker/evidence/v1"
_SECOND = timedelta(seconds=1)

_CC61 = "CC6.1"
_CC62 = "CC6.2"
_CC63 = "CC6.3"

# Trust Services Criteria: what each criterion is, and which files evidence it.
TSC: dict[str, dict[str, Any]] = {
    _CC61: {
        "title": "Logical access security: who could access what, and on what authority",
        "files": [
            "grants.csv",
            "grants.json",
            "privileged.csv",
            "policies/",
            "verification.json",
            "events.jsonl",
            "checkpoints.txt",
            "proofs.json",
            "summary.html",
        ],
    },
    _CC62: {
        "title": "Provisioning and deprovisioning of access",
        "files": ["grants.csv", "grants.json", "offboarding.csv", "events.jsonl", "summary.html"],
    },
    _CC63: {
        "title": "Role-based authorization, least privilege and removal of access",
        "files": [
            "policies/",
            "privileged.csv",
            "reviews.csv",
            "findings.json",
            "gaps.csv",
            "events.jsonl",
            "summary.html",
        ],
    },
}


def _criteria(name: str) -> list[str]:
    return [
        cc
        for cc, spec in TSC.items()
        if any(name == f or (f.endswith("/") and name.startswith(f)) for f in spec["files"])
    ]


class EvidenceError(BrokerError):
    """The package cannot be built (or read) as asked."""

    status = 500
    code = "evidence_error"


class NotYetSigned(EvidenceError):
    """No signed checkpoint covers the period's last row yet (retry after the next one)."""

    status = 503
    code = "not_yet_signed"


@dataclass(frozen=True)
class ExportOptions:
    """Limits and analysis parameters of one export (recorded in the manifest)."""

    heartbeat_seconds: float = 60.0
    offboarding_sla_seconds: int = 4 * 3600
    prefetch_rows: int = 5000
    timeline_max_grants: int = 2000
    zip_compresslevel: int = 6
    progress_every_rows: int = 10_000
    verify_max_unsigned_seconds: float | None = 600.0
    # Earlier checkpoint sizes (an auditor's kept notes) to prove the package consistent with.
    consistent_with: tuple[int, ...] = ()


@dataclass(frozen=True)
class ExportResult:
    path: Path
    rows: int
    period_rows: int
    first_seq: int | None
    end_seq: int | None
    bytes: int
    findings: Mapping[str, int]
    verification_ok: bool | None
    manifest_sha256: str
    seconds: float = 0.0
    files: Mapping[str, int] = field(default_factory=dict)


# --- the package event record ------------------------------------------------------------


def iter_event_records(stream: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Parse an ``events.jsonl`` stream line by line (raises ValueError on a bad line)."""
    for n, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise ValueError(f"events.jsonl line {n} is not JSON: {e}") from None
        if not isinstance(rec, dict):
            raise ValueError(f"events.jsonl line {n} is not a JSON object")
        yield rec


def manifest_checkpoint(origin: str, size: int, manifest_bytes: bytes) -> Checkpoint:
    """The note body that signs a manifest: ``<origin>/evidence``, size, SHA-256."""
    return Checkpoint(f"{origin}/evidence", max(1, size), hashlib.sha256(manifest_bytes).digest())


# --- derived tables, written during the single pass --------------------------------------

_GRANT_COLUMNS = [
    "grant_id",
    "subject",
    "subject_kind",
    "secret",
    "role",
    "policy_version",
    "issued_at",
    "expires_at",
    "ended_how",
    "ended_at",
    "ended_by",
    "end_reason",
    "reason",
    "ticket",
    "elevation_id",
    "engine",
    "lease_id",
    "issued_seq",
]
_PRIVILEGED_COLUMNS = [
    "elevation_id",
    "requester",
    "secret",
    "role",
    "policy_version",
    "reason",
    "ticket",
    "requested_at",
    "approvals_required",
    "approvers",
    "activated_at",
    "window_ends_at",
    "break_glass",
    "closed_how",
    "closed_at",
    "closed_by",
    "close_comment",
    "reviewed_by",
    "reviewed_at",
    "review_comment",
    "grants",
]
_OFFBOARDING_COLUMNS = [
    "subject",
    "started_at",
    "started_by",
    "terminated_at",
    "reason",
    "completed_at",
    "sla_seconds",
    "elapsed_seconds",
    "sla",
    "started_seq",
    "completed_seq",
]
_REVIEW_COLUMNS = [
    "seq",
    "recorded_at",
    "event",
    "review_id",
    "period",
    "actor",
    "entitlement",
    "decision",
    "comment",
    "outcome",
]
_GAP_COLUMNS = [
    "severity",
    "kind",
    "start",
    "end",
    "duration_seconds",
    "annotated_by",
    "remediation",
    "annotation_seq",
    "message",
]

_GRANT_ENDS = {"grant.revoked": "revoked", "grant.expired": "expired"}
_ELEVATION_CLOSES = {
    "elevation.denied": "denied",
    "elevation.cancelled": "cancelled",
    "elevation.ended": "ended",
    "elevation.expired": "expired",
}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _text(body: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = body.get(name)
        if value is not None:
            return value
    return None


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class _Table:
    """A CSV file in the work dir, written row by row."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self._file = path.open("w", newline="", encoding="utf-8")
        self._columns = columns
        self._writer = csv.writer(self._file)
        self._writer.writerow(columns)
        self.rows = 0

    def write(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow([_cell(row.get(c)) for c in self._columns])
        self.rows += 1

    def close(self) -> None:
        self._file.close()


class _Derived:
    """Folds the period's rows into grants, privileged use, offboarding and reviews.

    Holds only what is still open (grants, elevations, offboardings) and small counters.
    """

    def __init__(self, work: Path, options: ExportOptions) -> None:
        self._options = options
        self.grants = _Table(work / "grants.csv", _GRANT_COLUMNS)
        self._grants_json = (work / "grants.json").open("w", encoding="utf-8")
        self._grants_json.write("[")
        self.privileged = _Table(work / "privileged.csv", _PRIVILEGED_COLUMNS)
        self.offboarding = _Table(work / "offboarding.csv", _OFFBOARDING_COLUMNS)
        self.reviews = _Table(work / "reviews.csv", _REVIEW_COLUMNS)
        self._open_grants: dict[str, dict[str, Any]] = {}
        self._open_elevations: dict[str, dict[str, Any]] = {}
        self._open_offboardings: dict[str, dict[str, Any]] = {}
        self.event_counts: Counter[str] = Counter()
        self.by_secret: Counter[str] = Counter()
        self.by_month: Counter[str] = Counter()
        self.subjects: set[str] = set()  # bounded by people, not by events
        self.timeline: list[tuple[str, str, str | None, str]] = []
        self.timeline_total = 0
        self.policy_versions: set[str] = set()

    def feed_context(self, rec: dict[str, Any]) -> None:
        """A row before the period, there only so elevations in the period are whole."""
        if rec["policy_version"]:
            self.policy_versions.add(rec["policy_version"])
        if rec["event"].startswith("elevation."):
            self._elevation(rec, in_period=False)

    def feed(self, rec: dict[str, Any]) -> None:
        event = rec["event"]
        self.event_counts[event] += 1
        if rec["policy_version"]:
            self.policy_versions.add(rec["policy_version"])
        if event == "grant.issued":
            self._issued(rec)
        elif event in _GRANT_ENDS:
            self._grant_ended(rec)
        if event.startswith("elevation.") or (
            event == "grant.issued" and rec["body"].get("elevation_id")
        ):
            self._elevation(rec)
        elif event.startswith("subject."):
            self._offboarding(rec)
        elif event.startswith("review."):
            self._review(rec)

    # grants ------------------------------------------------------------------------------

    def _issued(self, rec: dict[str, Any]) -> None:
        body = rec["body"]
        grant = {
            "grant_id": rec["grant_id"],
            "subject": rec["subject"],
            "subject_kind": rec["subject_kind"],
            "secret": rec["secret"],
            "role": rec["role"],
            "policy_version": rec["policy_version"],
            "issued_at": rec["recorded_at"],
            "expires_at": rec["expires_at"],
            "reason": body.get("reason"),
            "ticket": body.get("ticket"),
            "elevation_id": body.get("elevation_id"),
            "engine": body.get("engine"),
            "lease_id": rec["lease_id"],
            "issued_seq": rec["seq"],
        }
        secret = rec["secret"] or "-"
        self.by_secret[secret] += 1
        self.by_month[str(rec["recorded_at"])[:7]] += 1
        if rec["subject"]:
            self.subjects.add(rec["subject"])
        if rec["grant_id"]:
            self._open_grants[rec["grant_id"]] = grant
        else:
            self._write_grant({**grant, "ended_how": "open"})

    def _grant_ended(self, rec: dict[str, Any]) -> None:
        body = rec["body"]
        grant = self._open_grants.pop(rec["grant_id"] or "", None)
        if grant is None:  # issued before the period: what the end row says of it
            grant = {
                "grant_id": rec["grant_id"],
                "subject": body.get("grant_subject") or rec["subject"],
                "secret": rec["secret"],
                "role": rec["role"],
                "lease_id": rec["lease_id"],
                "issued_at": "before period",
            }
        how = _GRANT_ENDS[rec["event"]]
        self._write_grant(
            {
                **grant,
                "ended_how": how,
                "ended_at": rec["recorded_at"],
                "ended_by": rec["subject"] if how == "revoked" else "broker (expiry)",
                "end_reason": body.get("reason"),
            }
        )

    def _write_grant(self, grant: dict[str, Any]) -> None:
        self.grants.write(grant)
        doc = {c: grant.get(c) for c in _GRANT_COLUMNS}
        self._grants_json.write(("\n" if self.grants.rows == 1 else ",\n") + json.dumps(doc))
        self.timeline_total += 1
        if len(self.timeline) < self._options.timeline_max_grants and grant.get("issued_seq"):
            end = grant.get("ended_at") or grant.get("expires_at")
            self.timeline.append(
                (str(grant["issued_at"]), str(grant.get("secret") or "-"), end, grant["ended_how"])
            )

    # elevations --------------------------------------------------------------------------

    def _elevation(self, rec: dict[str, Any], *, in_period: bool = True) -> None:
        body = rec["body"]
        eid = str(body.get("elevation_id") or "")
        if not eid:
            return
        event = rec["event"]
        el = self._open_elevations.get(eid)
        if el is None:
            el = {"elevation_id": eid, "approvers": [], "grants": 0, "break_glass": False}
            if event != "elevation.requested":
                el["requested_at"] = "before period"
                el["requester"] = body.get("requester")
                el["secret"] = rec["secret"]
                el["role"] = rec["role"]
            self._open_elevations[eid] = el
        el["in_period"] = el.get("in_period", False) or in_period
        if event == "elevation.requested":
            el.update(
                requester=rec["subject"],
                secret=rec["secret"],
                role=rec["role"],
                policy_version=rec["policy_version"],
                reason=body.get("reason"),
                ticket=body.get("ticket"),
                requested_at=rec["recorded_at"],
                approvals_required=body.get("factors"),
                break_glass=bool(body.get("break_glass")),
            )
        elif event == "elevation.approved":
            el["approvers"].append(f"{rec['subject']} at {rec['recorded_at']}")
        elif event == "elevation.activated":
            el["activated_at"] = rec["recorded_at"]
            el["window_ends_at"] = body.get("window_ends_at")
            el["break_glass"] = el["break_glass"] or bool(body.get("break_glass"))
        elif event in _ELEVATION_CLOSES:
            el["closed_how"] = _ELEVATION_CLOSES[event]
            el["closed_at"] = rec["recorded_at"]
            el["closed_by"] = rec["subject"] if event != "elevation.expired" else "broker"
            el["close_comment"] = _text(body, "comment", "why")
        elif event == "elevation.reviewed":
            el["reviewed_by"] = rec["subject"]
            el["reviewed_at"] = rec["recorded_at"]
            el["review_comment"] = body.get("comment")
        elif event == "grant.issued":
            el["grants"] += 1
        # Written once nothing more is expected: closed, and reviewed if break-glass.
        if el.get("closed_how") and (not el["break_glass"] or el.get("reviewed_by")):
            self._write_elevation(self._open_elevations.pop(eid))

    def _write_elevation(self, el: dict[str, Any]) -> None:
        if el["in_period"]:
            self.privileged.write({**el, "approvers": "; ".join(el["approvers"])})

    # offboarding and reviews ---------------------------------------------------------------

    def _offboarding(self, rec: dict[str, Any]) -> None:
        body = rec["body"]
        event = rec["event"]
        key = str(body.get("offboarding_id") or body.get("subject") or "")
        if event == "subject.offboarding_started":
            self._open_offboardings[key] = {
                "subject": body.get("subject"),
                "started_at": rec["recorded_at"],
                "started_by": rec["subject"],
                "terminated_at": body.get("terminated_at"),
                "reason": body.get("reason"),
                "sla_seconds": body.get("sla_seconds"),
                "started_seq": rec["seq"],
            }
        elif event == "subject.offboarded":
            row = self._open_offboardings.pop(key, None) or {
                "subject": body.get("subject"),
                "started_at": "before period",
                "terminated_at": body.get("terminated_at"),
            }
            sla_seconds = int(body.get("sla_seconds") or self._options.offboarding_sla_seconds)
            elapsed = body.get("seconds_from_termination")
            if not isinstance(elapsed, int):
                start = _parse_time(body.get("terminated_at") or row.get("terminated_at"))
                done = _parse_time(body.get("completed_at") or rec["recorded_at"])
                elapsed = int((done - start).total_seconds()) if start and done else None
            met = body.get("sla_met")
            if not isinstance(met, bool):
                met = elapsed is not None and elapsed <= sla_seconds
            self.offboarding.write(
                {
                    **row,
                    "completed_at": body.get("completed_at") or rec["recorded_at"],
                    "sla_seconds": sla_seconds,
                    "elapsed_seconds": elapsed,
                    "sla": "met" if met else "missed",
                    "completed_seq": rec["seq"],
                }
            )

    def _review(self, rec: dict[str, Any]) -> None:
        body = rec["body"]
        entitlement = body.get("entitlement_id")
        if body.get("member"):
            entitlement = f"{entitlement} ({body.get('kind')} {body.get('member')})"
        if rec["event"] == "review.opened":
            entitlement = f"{body.get('entitlements_total', '')} entitlements in snapshot"
        self.reviews.write(
            {
                "seq": rec["seq"],
                "recorded_at": rec["recorded_at"],
                "event": rec["event"],
                "review_id": body.get("review_id"),
                "period": body.get("period"),
                "actor": rec["subject"],
                "entitlement": entitlement,
                "decision": rec["outcome"] if rec["event"] == "review.decision" else None,
                "comment": body.get("comment"),
                "outcome": rec["outcome"],
            }
        )

    def close(self) -> None:
        for grant in self._open_grants.values():
            self._write_grant({**grant, "ended_how": "open at period end"})
        self._open_grants.clear()
        for el in self._open_elevations.values():
            self._write_elevation(el)
        self._open_elevations.clear()
        for row in self._open_offboardings.values():
            self.offboarding.write({**row, "sla": "in progress"})
        self._open_offboardings.clear()
        self._grants_json.write("\n]\n")
        self._grants_json.close()
        for table in (self.grants, self.privileged, self.offboarding, self.reviews):
            table.close()


# --- the export -----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _tree_proofs(
    conn: asyncpg.Connection, first_seq: int, end_seq: int, options: ExportOptions
) -> dict[str, Any]:
    """``proofs.json``: what ties the segment's rows to the signed root at ``end_seq``,
    and consistency proofs from earlier checkpoints to it."""
    root = await conn.fetchval("SELECT root_hash FROM ledger.checkpoints WHERE size = $1", end_seq)
    if root is None:
        return {"tree_size": None, "note": "the covering checkpoint predates the Merkle tree"}
    try:
        left = await span_hashes(conn, 0, first_seq - 1, end_seq)
        earlier = set(options.consistent_with)
        if first_seq > 1:
            previous = await covering_checkpoint(conn, first_seq - 1)
            if previous is not None and previous < end_seq:
                earlier.add(previous)
        consistency = []
        for size in sorted(s for s in earlier if 0 < s <= end_seq):
            note = await conn.fetchval(
                "SELECT note FROM ledger.checkpoints WHERE size = $1 AND root_hash IS NOT NULL",
                size,
            )
            proof = await consistency_proof(conn, size, end_seq)
            consistency.append(
                {"size": size, "checkpoint": note, "proof": [_b64(h) for h in proof]}
            )
    except TreeError as e:  # rows left of the period archived away
        return {"tree_size": None, "note": f"no tree proof: {e}"}
    return {
        "tree_size": end_seq,
        "root": _b64(bytes(root)),
        "left": [_b64(h) for h in left],
        "consistency": consistency,
    }


def _dump(rec: dict[str, Any]) -> bytes:
    return (json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


async def export_package(
    conn: asyncpg.Connection,
    out: Path,
    *,
    period_from: datetime,
    period_to: datetime,
    signer: CheckpointSigner,
    origin: str,
    verifier: CheckpointVerifier | None = None,
    options: ExportOptions = ExportOptions(),
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Build the package for rows recorded in [period_from, period_to) into ``out``.

    ``conn`` must be outside any transaction; the rows, checkpoints and policies come from
    one read-only snapshot. ``verifier`` (default: the signer's own key) checks the whole
    ledger for ``verification.json``. ``progress(done, total)`` is called every
    ``progress_every_rows`` rows. Raises ``NotYetSigned`` when no signed checkpoint covers
    the period's last row yet, ``EvidenceError`` for a bad period. ``out`` is written
    atomically (a temp file renamed into place).
    """
    if period_to <= period_from:
        raise EvidenceError("the period must end after it starts", code="bad_period")
    started = asyncio.get_running_loop().time()
    verifier = verifier or CheckpointVerifier([signer.verifier_key()])
    work = Path(tempfile.mkdtemp(prefix="evidence-", dir=out.parent))
    try:
        report = await verify_ledger(
            conn,
            verifier=verifier,
            origin=origin,
            max_unsigned_seconds=options.verify_max_unsigned_seconds,
            mode="incremental",
        )
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):  # a read-only role
            await record_verified_head(conn, report, signer, origin)
        (work / "verification.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
        derived = _Derived(work, options)
        rows = period_rows = 0
        first_seq: int | None = None
        end_seq: int | None = None
        period_first: int | None = None
        period_last: int | None = None
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                bounds = await period_bounds(conn, period_from, period_to)
                notes: list[str] = []
                versions: set[str] = set()
                proofs: dict[str, Any] = {"tree_size": None, "note": "the period has no rows"}
                with (work / "events.jsonl").open("wb") as events:
                    if bounds is not None:
                        end_seq = await covering_checkpoint(conn, bounds.last_seq)
                        if end_seq is None:
                            raise NotYetSigned(
                                f"no signed checkpoint covers ledger row {bounds.last_seq} yet;"
                                " the broker signs one every checkpoint interval: retry shortly"
                            )
                        floor = await elevation_request_floor(
                            conn, bounds.first_seq, bounds.last_seq
                        )
                        first_seq = min(bounds.first_seq, floor or bounds.first_seq)
                        period_rows = bounds.rows
                        notes = await checkpoint_notes(conn, first_seq, end_seq)
                        total = end_seq - first_seq + 1
                        every = options.progress_every_rows
                        async for r in stream_rows(
                            conn, first_seq, end_seq, prefetch=options.prefetch_rows
                        ):
                            rec = event_record(r)
                            events.write(_dump(rec))
                            if bounds.first_seq <= rec["seq"] <= bounds.last_seq:
                                derived.feed(rec)
                            elif rec["seq"] < bounds.first_seq:
                                derived.feed_context(rec)
                            rows += 1
                            if progress is not None and rows % every == 0:
                                progress(rows, total)
                        if progress is not None:
                            progress(rows, total)
                        versions = set(
                            await policy_versions_in_force(conn, bounds.first_seq, bounds.last_seq)
                        )
                        proofs = await _tree_proofs(conn, first_seq, end_seq, options)
                        period_first, period_last = bounds.first_seq, bounds.last_seq
                versions |= derived.policy_versions
                policies = await policy_documents(conn, versions)
                reviewed = await completed_review_periods(conn)
        finally:
            derived.close()
        (work / "checkpoints.txt").write_text("\n".join(notes))
        (work / "proofs.json").write_text(json.dumps(proofs, indent=2) + "\n")
        result = await asyncio.to_thread(
            _finish,
            work,
            out,
            derived=derived,
            policies=policies,
            reviewed=reviewed,
            notes=notes,
            period_from=period_from,
            period_to=period_to,
            signer=signer,
            origin=origin,
            options=options,
            rows=rows,
            period_rows=period_rows,
            segment={
                "first_seq": first_seq,
                "period_first_seq": period_first,
                "period_last_seq": period_last,
                "end_seq": end_seq,
                "rows": rows,
                "checkpoints": len(notes),
            },
            verification_ok=report.ok,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = asyncio.get_running_loop().time() - started
    return dataclasses.replace(result, seconds=round(seconds, 3))


def _finish(
    work: Path,
    out: Path,
    *,
    derived: _Derived,
    policies: Mapping[str, Mapping[str, str]],
    reviewed: list[str],
    notes: list[str],
    period_from: datetime,
    period_to: datetime,
    signer: CheckpointSigner,
    origin: str,
    options: ExportOptions,
    rows: int,
    period_rows: int,
    segment: dict[str, int | None],
    verification_ok: bool,
) -> ExportResult:
    """Blocking part: findings over events.jsonl, gaps, summary, manifest, zip."""
    # A period reaching into the future is analysed up to now: the future is no gap.
    analysis_to = max(period_from + _SECOND, min(period_to, datetime.now(UTC)))

    for version, documents in policies.items():
        for name, text in documents.items():
            path = work / "policies" / _safe(version) / _safe(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    with (work / "events.jsonl").open("rb") as events:
        findings = analyze(
            iter_event_records(events),
            period_from=period_from,
            period_to=analysis_to,
            policies=policies,
            heartbeat_seconds=options.heartbeat_seconds,
            offboarding_sla_seconds=options.offboarding_sla_seconds,
            completed_reviews=reviewed,
        )
    found = [_finding_json(f) for f in findings]
    counts = Counter(f["severity"] for f in found)
    (work / "findings.json").write_text(
        json.dumps({"counts": dict(counts), "findings": found}, indent=2, ensure_ascii=False) + "\n"
    )
    gaps = _Table(work / "gaps.csv", _GAP_COLUMNS)
    for f in found:
        if f["kind"].startswith("gap_"):
            d = f["details"]
            note = d.get("annotation") or {}
            gaps.write(
                {
                    **f,
                    "start": d.get("start"),
                    "end": d.get("end"),
                    "duration_seconds": d.get("duration_seconds"),
                    "annotated_by": note.get("by"),
                    "remediation": note.get("remediation"),
                    "annotation_seq": note.get("seq"),
                }
            )
    gaps.close()

    from .summary import render_summary

    (work / "summary.html").write_text(
        render_summary(
            origin=origin,
            period_from=period_from,
            period_to=period_to,
            rows=rows,
            period_rows=period_rows,
            event_counts=derived.event_counts,
            by_secret=derived.by_secret,
            by_month=derived.by_month,
            subjects=len(derived.subjects),
            timeline=derived.timeline,
            timeline_total=derived.timeline_total,
            findings=found,
            verification_ok=verification_ok,
            policy_versions=sorted(policies),
            tsc=TSC,
        ),
        encoding="utf-8",
    )

    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in work.rglob("*") if p.is_file()):
        name = path.relative_to(work).as_posix()
        digest = hashlib.sha256()
        with path.open("rb") as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
        files[name] = {
            "sha256": digest.hexdigest(),
            "bytes": path.stat().st_size,
            "tsc": _criteria(name),
        }
    manifest = {
        "format": EVIDENCE_FORMAT,
        "origin": origin,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "generator": f"jit-broker {__version__}",
        "period": {"from": period_from.isoformat(), "to": period_to.isoformat()},
        "segment": segment,
        "analysis": {
            "from": period_from.isoformat(),
            "to": analysis_to.isoformat(),
            "heartbeat_seconds": options.heartbeat_seconds,
            "offboarding_sla_seconds": options.offboarding_sla_seconds,
            "completed_reviews": reviewed,
        },
        "policy_versions": sorted(policies),
        "key_id": signer.key_id,
        "verifier_key": signer.verifier_key(),
        "findings": dict(counts),
        "tsc": TSC,
        "files": files,
    }
    manifest_bytes = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
    end_seq = segment["end_seq"]
    note = signer.sign(manifest_checkpoint(origin, end_seq or 1, manifest_bytes))
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        with zipfile.ZipFile(
            tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=options.zip_compresslevel
        ) as zf:
            for name in files:
                with (work / name).open("rb") as src, zf.open(name, "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            zf.writestr("manifest.json", manifest_bytes)
            zf.writestr("manifest.sig", note)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(
        path=out,
        rows=rows,
        period_rows=period_rows,
        first_seq=segment["first_seq"],
        end_seq=end_seq,
        bytes=out.stat().st_size,
        findings=dict(counts),
        verification_ok=verification_ok,
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        files={k: int(v["bytes"]) for k, v in files.items()},
    )


def _safe(name: str) -> str:
    """A path segment that cannot escape its directory (versions like ``sha256:…`` kept)."""
    cleaned = "".join(c if c.isalnum() or c in "._-:" else "_" for c in name)
    return cleaned.lstrip(".") or "_"


def _finding_json(f: Finding) -> dict[str, Any]:
    return f.to_json()
