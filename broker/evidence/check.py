"""The dry-run audit: read an evidence package as an auditor would, offline.

In one pass over ``events.jsonl`` (streamed from the zip, memory bounded):

1. ``manifest.sig`` is a note signed by a trusted checkpoint key over the manifest's
   SHA-256 (origin ``<ledger origin>/evidence``);
2. every file's SHA-256 and size match the manifest, and nothing unlisted is in the zip;
3. the hash chain is recomputed independently from the segment's first ``prev_hash``
   (``broker.ledger.chain``) and must reproduce every signed checkpoint in
   ``checkpoints.txt``, the last one at the segment's end — so every row is authenticated
   by a signature, not by the hashes stored next to it;
4. the Merkle tree nodes in ``proofs.json`` left of the segment, with a leaf per row,
   must rebuild the root signed at the segment's end; each consistency proof there must
   show an earlier checkpoint is a prefix of it — including those the auditor kept from
   earlier packages (``kept``), which must each have one;
5. ``findings.analyze`` runs over the same records with the package's policies.

Time and memory are proportional to the period, never to the ledger.

Problems of kinds 1 and 2 are *integrity* failures (the package is not what the broker
signed); a chain that does not reproduce its checkpoints is a ``chain_break`` material
weakness. ``ok`` is false if there is any of either.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from broker.ledger.chain import canonical_record, chain_hash
from broker.ledger.checkpoint import Checkpoint, CheckpointError, CheckpointVerifier
from broker.ledger.merkle import CompactRange, ProofError, leaf_hash, verify_consistency

from .findings import Finding, analyze
from .package import EVIDENCE_FORMAT, iter_event_records, manifest_checkpoint

__all__ = ["SEVERITIES", "CheckReport", "check_package", "format_report"]

SEVERITIES = ("material_weakness", "finding", "observation")
_RECORD_KEYS = frozenset(
    {
        "seq",
        "recorded_at",
        "event",
        "replica",
        "subject",
        "subject_kind",
        "secret",
        "role",
        "policy_version",
        "grant_id",
        "lease_id",
        "expires_at",
        "outcome",
        "request_id",
        "body",
        "dedupe_key",
        "prev_hash",
        "hash",
    }
)
_CHUNK = 1 << 20


@dataclass
class CheckReport:
    """What the dry-run audit found. ``ok``: no integrity failure, no material weakness."""

    path: str
    integrity: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    rows: int = 0
    signed_size: int | None = None
    tree_checked: bool = False  # the rows rebuilt the Merkle root signed at the end
    consistent_with: list[int] = field(default_factory=list)

    @property
    def material_weaknesses(self) -> int:
        return sum(1 for f in self.findings if f.severity == "material_weakness")

    @property
    def ok(self) -> bool:
        return not self.integrity and self.material_weaknesses == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "package": self.path,
            "period": self.manifest.get("period"),
            "origin": self.manifest.get("origin"),
            "rows": self.rows,
            "signed_size": self.signed_size,
            "tree_checked": self.tree_checked,
            "consistent_with": self.consistent_with,
            "integrity": {"ok": not self.integrity, "problems": self.integrity},
            "counts": {s: sum(1 for f in self.findings if f.severity == s) for s in SEVERITIES},
            "findings": [f.to_json() for f in self.findings],
        }


class _HashingReader:
    """Wraps a zip member: hashes and counts every byte read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self._raw:
            self.digest.update(line)
            self.size += len(line)
            yield line

    def drain(self) -> None:
        while chunk := self._raw.read(_CHUNK):
            self.digest.update(chunk)
            self.size += len(chunk)


class _Chain:
    """Recomputes the segment's chain and compares it with the signed checkpoints."""

    def __init__(self, signed: Mapping[int, bytes], tree: CompactRange | None) -> None:
        self._signed = signed
        self.tree = tree  # the Merkle tree left of the segment, grown a leaf per row
        self.computed: bytes | None = None
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.first_divergence: int | None = None
        self.problems: list[tuple[int | None, str]] = []

    def feed(self, rec: Mapping[str, Any]) -> None:
        try:
            seq = int(rec["seq"])
            if self.computed is None:
                self.computed = bytes.fromhex(rec["prev_hash"])
                self.first_seq = seq
            elif self.last_seq is not None and seq != self.last_seq + 1:
                self.problems.append((seq, f"events.jsonl skips from {self.last_seq} to {seq}"))
            payload = canonical_record(rec)
        except (KeyError, TypeError, ValueError) as e:
            self.problems.append((rec.get("seq"), f"malformed record: {e}"))
            self.computed = b"\0" * 32  # nothing after this can match a signature
            self.tree = None
            return
        self.computed = chain_hash(self.computed, payload)
        if self.tree is not None:
            self.tree.push_leaf(leaf_hash(payload))
        if self.first_divergence is None and self.computed.hex() != rec.get("hash"):
            self.first_divergence = seq
        self.last_seq = seq
        expected = self._signed.get(seq)
        if expected is not None and expected != self.computed:
            self.problems.append(
                (
                    self.first_divergence or seq,
                    f"the chain does not reproduce the signed checkpoint at size {seq}:"
                    f" rows from {self.first_divergence or self.first_seq} on are not the"
                    " rows that were signed",
                )
            )


def _signed_heads(
    notes_text: str, verifier: CheckpointVerifier, origin: str, integrity: list[str]
) -> dict[int, Checkpoint]:
    """Size -> each note in ``checkpoints.txt`` that verifies (separated by a blank line)."""
    heads: dict[int, Checkpoint] = {}
    # Each note is "body\n\nsignatures\n"; notes are joined by one more newline.
    parts = [p for p in notes_text.strip("\n").split("\n\n") if p]
    if len(parts) % 2:
        integrity.append("checkpoints.txt: a note has no signature block")
    for body, sigs in zip(parts[::2], parts[1::2], strict=False):
        try:
            cp = verifier.verify(f"{body}\n\n{sigs}\n", origin=origin)
        except CheckpointError as e:
            integrity.append(f"checkpoints.txt: {e}")
            continue
        heads[cp.size] = cp
    return heads


def _left_tree(
    proofs: Mapping[str, Any], first_seq: Any, report: CheckReport
) -> CompactRange | None:
    """The tree left of the segment from ``proofs.json`` (None: no tree proof)."""
    if proofs.get("tree_size") is None:
        return None
    try:
        left = [base64.b64decode(h, validate=True) for h in proofs["left"]]
        return CompactRange.from_hashes(0, int(first_seq) - 1, left)
    except (KeyError, TypeError, ValueError) as e:
        report.integrity.append(f"proofs.json is malformed: {e}")
        return None


def _check_tree(
    chain: _Chain,
    proofs: Mapping[str, Any],
    signed: Mapping[int, Checkpoint],
    end_seq: int,
    verifier: CheckpointVerifier,
    kept: list[Checkpoint],
    report: CheckReport,
) -> None:
    """The rebuilt root against the signed one; consistency proofs; the kept notes."""
    cp = signed.get(end_seq)
    if chain.tree is None or cp is None or cp.root is None:
        if kept:
            report.integrity.append("the package has no Merkle proof to check kept checkpoints")
        return
    if chain.tree.end != end_seq or chain.tree.root() != cp.root:
        chain.problems.append(
            (
                chain.first_divergence or chain.first_seq,
                f"the rows do not rebuild the Merkle root signed at size {end_seq}",
            )
        )
        return
    report.tree_checked = True
    proven: dict[int, bytes] = {end_seq: cp.root}
    for entry in proofs.get("consistency", []):
        try:
            size = int(entry["size"])
            proof = [base64.b64decode(h, validate=True) for h in entry["proof"]]
            note = entry.get("checkpoint")
            old = verifier.verify(note, origin=cp.origin) if note else None
        except (KeyError, TypeError, ValueError, CheckpointError) as e:
            report.integrity.append(f"proofs.json: a consistency entry is malformed: {e}")
            continue
        roots = {k.root for k in kept if k.size == size and k.root}
        if old is not None and old.root is not None:
            roots.add(old.root)
        for root in roots:
            try:
                verify_consistency(size, end_seq, root, cp.root, proof)
            except ProofError as e:
                chain.problems.append((None, f"checkpoint at size {size}: {e}"))
                continue
            proven[size] = root
    for k in kept:
        if proven.get(k.size) == k.root:
            report.consistent_with.append(k.size)
        else:
            report.integrity.append(
                f"your checkpoint at size {k.size} is not proven consistent with size"
                f" {end_seq} (a wrong history, or export with --consistent-with it)"
            )


def check_package(
    path: Path, verifier: CheckpointVerifier, kept: Sequence[str] = ()
) -> CheckReport:
    """Audit the package at ``path`` with the trusted checkpoint keys in ``verifier``;
    ``kept``: checkpoint notes the auditor kept (e.g. from last quarter's package), each of
    which the package must prove itself consistent with.

    Never raises for a bad package: every problem is in the report. Raises OSError only if
    the file cannot be read at all.
    """
    report = CheckReport(path=str(path))
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        report.integrity.append(f"not a zip archive: {e}")
        return report
    with zf:
        _check(zf, verifier, kept, report)
    return report


def _read(zf: zipfile.ZipFile, name: str, report: CheckReport) -> bytes | None:
    try:
        return zf.read(name)
    except KeyError:
        report.integrity.append(f"{name} is missing")
    except (zipfile.BadZipFile, OSError) as e:  # a CRC error: bytes changed in the zip
        report.integrity.append(f"{name} cannot be read: {e}")
    return None


def _check(
    zf: zipfile.ZipFile,
    verifier: CheckpointVerifier,
    kept_notes: Sequence[str],
    report: CheckReport,
) -> None:
    manifest_bytes = _read(zf, "manifest.json", report)
    sig = _read(zf, "manifest.sig", report)
    if manifest_bytes is None:
        return
    try:
        manifest = json.loads(manifest_bytes)
        files: dict[str, Any] = dict(manifest["files"])
        origin = str(manifest["origin"])
        analysis = manifest["analysis"]
        analysis_from = datetime.fromisoformat(analysis["from"])
        analysis_to = datetime.fromisoformat(analysis["to"])
        segment = manifest["segment"]
    except (ValueError, KeyError, TypeError) as e:
        report.integrity.append(f"manifest.json is malformed: {e}")
        return
    report.manifest = manifest
    if manifest.get("format") != EVIDENCE_FORMAT:
        report.integrity.append(f"unknown package format {manifest.get('format')!r}")
    if sig is not None:
        try:
            cp = verifier.verify(sig.decode(), origin=f"{origin}/evidence")
            want = manifest_checkpoint(origin, cp.size, manifest_bytes)
            if cp.head_hash != want.head_hash:
                report.integrity.append("manifest.sig signs a different manifest")
        except (CheckpointError, UnicodeDecodeError) as e:
            report.integrity.append(f"manifest.sig does not verify: {e}")

    listed = set(files)
    present = {i.filename for i in zf.infolist() if not i.is_dir()}
    for extra in sorted(present - listed - {"manifest.json", "manifest.sig"}):
        report.integrity.append(f"{extra} is in the zip but not in the manifest")

    def verify_file(name: str, digest: str, size: int) -> None:
        meta = files[name]
        if digest != meta.get("sha256") or size != meta.get("bytes"):
            report.integrity.append(f"{name}: SHA-256 does not match the manifest")

    # Streamed: derived tables of a big period are hundreds of MB; only the notes and the
    # policy files (which the analysis needs) are kept.
    small: dict[str, bytes] = {}
    for name in sorted(listed - {"events.jsonl"}):
        if name not in present:
            report.integrity.append(f"{name} is listed in the manifest but missing")
            continue
        keep = name in ("checkpoints.txt", "proofs.json") or name.startswith("policies/")
        digest, size, kept = hashlib.sha256(), 0, bytearray()
        try:
            with zf.open(name) as member:
                while chunk := member.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    if keep:
                        kept += chunk
        except (zipfile.BadZipFile, OSError) as e:  # a CRC error: bytes changed in the zip
            report.integrity.append(f"{name} cannot be read: {e}")
            continue
        verify_file(name, digest.hexdigest(), size)
        if keep:
            small[name] = bytes(kept)

    policies: dict[str, dict[str, str]] = {}
    for name, data in small.items():
        if name.startswith("policies/"):
            _, version, file = name.split("/", 2)
            policies.setdefault(version, {})[file] = data.decode("utf-8", "replace")
    signed = _signed_heads(
        small.get("checkpoints.txt", b"").decode("utf-8", "replace"),
        verifier,
        origin,
        report.integrity,
    )
    kept_checkpoints: list[Checkpoint] = []
    for note in kept_notes:
        try:
            kept_checkpoints.append(verifier.verify(note, origin=origin))
        except CheckpointError as e:
            report.integrity.append(f"your kept checkpoint does not verify: {e}")
    try:
        proofs = json.loads(small.get("proofs.json", b"{}"))
    except ValueError as e:
        report.integrity.append(f"proofs.json is malformed: {e}")
        proofs = {}
    chain = _Chain(
        {size: cp.head_hash for size, cp in signed.items()},
        _left_tree(proofs, segment.get("first_seq") or 1, report),
    )
    findings: list[Finding] = []
    if "events.jsonl" not in present:
        report.integrity.append("events.jsonl is missing")
        return
    try:
        with zf.open("events.jsonl") as raw:
            reader = _HashingReader(raw)

            def records() -> Iterator[dict[str, Any]]:
                for rec in iter_event_records(reader):
                    report.rows += 1
                    if set(rec) != _RECORD_KEYS:
                        report.integrity.append(
                            f"events.jsonl row {rec.get('seq')}: keys are not the event record"
                        )
                    chain.feed(rec)
                    yield rec

            try:
                findings = analyze(
                    records(),
                    period_from=analysis_from,
                    period_to=analysis_to,
                    policies=policies,
                    heartbeat_seconds=float(analysis["heartbeat_seconds"]),
                    offboarding_sla_seconds=int(analysis["offboarding_sla_seconds"]),
                    completed_reviews=[str(p) for p in analysis.get("completed_reviews", [])],
                )
            except ValueError as e:
                report.integrity.append(f"events.jsonl cannot be analysed: {e}")
            reader.drain()
            verify_file("events.jsonl", reader.digest.hexdigest(), reader.size)
    except (zipfile.BadZipFile, OSError) as e:
        report.integrity.append(f"events.jsonl cannot be read: {e}")

    end_seq = segment.get("end_seq")
    if chain.last_seq != end_seq or chain.first_seq != segment.get("first_seq"):
        report.integrity.append(
            f"events.jsonl holds rows {chain.first_seq}..{chain.last_seq}, the manifest"
            f" says {segment.get('first_seq')}..{end_seq}"
        )
    if end_seq is not None:
        report.signed_size = end_seq if end_seq in signed else None
        if end_seq not in signed:
            chain.problems.append(
                (end_seq, f"no signed checkpoint in checkpoints.txt at the segment end {end_seq}")
            )
        _check_tree(chain, proofs, signed, end_seq, verifier, kept_checkpoints, report)
    # Row-level breaks are analyze's; these are the ones only signatures reveal.
    seen = {(f.kind, f.seq) for f in findings}
    for seq, problem in chain.problems:
        if ("chain_break", seq) not in seen:
            findings.append(Finding("material_weakness", "chain_break", problem, seq=seq))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    report.findings = sorted(
        findings, key=lambda f: (order.get(f.severity, 9), f.seq is None, f.seq or 0)
    )


def format_report(report: CheckReport) -> str:
    """The human-readable report: integrity, then findings grouped by severity."""
    m = report.manifest
    period = m.get("period") or {}
    lines = [
        f"package:   {report.path}",
        f"period:    {period.get('from', '?')} to {period.get('to', '?')}",
        f"ledger:    {m.get('origin', '?')}, {report.rows} rows"
        + (f", ending at signed checkpoint {report.signed_size}" if report.signed_size else ""),
    ]
    if report.integrity:
        lines.append(f"integrity: FAILED ({len(report.integrity)} problems)")
        lines += [f"  - {p}" for p in report.integrity]
    else:
        tree = " and Merkle root" if report.tree_checked else ""
        lines.append(f"integrity: ok (signature, file hashes, chain{tree} to a signed checkpoint)")
    if report.consistent_with:
        sizes = ", ".join(str(s) for s in report.consistent_with)
        lines.append(f"consistent with your kept checkpoint(s) at size {sizes}")
    for severity in SEVERITIES:
        group = [f for f in report.findings if f.severity == severity]
        lines.append(f"{severity} ({len(group)})")
        for f in group:
            where = f" [seq {f.seq}]" if f.seq is not None else ""
            lines.append(f"  - {f.kind}{where}: {f.message}")
    verdict = "PASS" if report.ok else "FAIL"
    lines.append(
        f"result: {verdict} ({report.material_weaknesses} material weaknesses,"
        f" {len(report.integrity)} integrity problems)"
    )
    return "\n".join(lines)
