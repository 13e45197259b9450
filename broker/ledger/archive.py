"""Retention: a month of events moved out of PostgreSQL into a signed, self-verifying
segment file, and only then its partition dropped.

A segment is JSON Lines: a header, one event record per row (``records.event_record``),
and a last line holding a signed note over the SHA-256 of every byte before it. The
header carries the checkpoint that covers the month (its Merkle root signed by the ledger
key) and the tree nodes left and right of the month's rows, so ``check_segment`` proves —
offline, with the public key alone — that these rows, each hash-checked and chained, are
exactly leaves ``first_seq - 1 .. last_seq - 1`` of the signed tree.

``archive_before`` writes the segment, checks it, appends ``ledger.archived`` (the segment's
digest and the tree's compact range and chain head at its end: where verification of the
remaining rows starts), detaches and drops the partition, and appends
``ledger.partition_dropped``. Months go oldest first and must start where the ledger does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg

from .chain import GENESIS, canonical_record, chain_hash
from .checkpoint import Checkpoint, CheckpointError, CheckpointSigner, CheckpointVerifier
from .events import NewEvent
from .findings import Problems
from .merkle import CompactRange, ProofError, leaf_hash
from .records import event_record
from .tree import span_hashes

__all__ = [
    "SEGMENT_FORMAT",
    "ArchiveError",
    "Archived",
    "SegmentReport",
    "archive_before",
    "check_segment",
    "segment_origin",
]

SEGMENT_FORMAT = "jit-broker/ledger-segment/v1"


class ArchiveError(RuntimeError):
    """Archiving cannot proceed safely (nothing was dropped)."""


def segment_origin(origin: str) -> str:
    return f"{origin}/segment"


def _hex(data: bytes) -> str:
    return data.hex()


@dataclass
class SegmentReport(Problems):
    month: str | None = None
    first_seq: int | None = None
    last_seq: int | None = None
    rows: int = 0
    checkpoint_size: int | None = None
    # Where the ledger continues after this segment (what ledger.archived records).
    chain_head: bytes | None = None
    compact: list[bytes] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "month": self.month,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "rows": self.rows,
            "checkpoint_size": self.checkpoint_size,
            "first_bad_seq": self.first_bad_seq,
            "problems": self.problems,
        }


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        yield from f


def check_segment(path: Path, verifier: CheckpointVerifier, origin: str) -> SegmentReport:
    """Verify a segment file offline. Never raises for a bad file: findings are reported.

    Memory is bounded: rows stream through once (the signature is checked against a
    digest computed on the same pass, and its result decides ``ok`` at the end)."""
    report = SegmentReport()
    digest = hashlib.sha256()
    header: dict[str, Any] | None = None
    signature: str | None = None
    tree: CompactRange | None = None
    cp: Checkpoint | None = None
    expected = prev = None
    try:
        for n, line in enumerate(_lines(path)):
            doc = json.loads(line)
            if "signature" in doc:
                signature = doc["signature"]
                break
            digest.update(line)
            if n == 0:
                header = doc
                if doc.get("format") != SEGMENT_FORMAT or doc.get("origin") != origin:
                    report.fail(None, "not a segment of this ledger (format or origin)")
                    return report
                report.month = doc["month"]
                report.first_seq, report.last_seq = int(doc["first_seq"]), int(doc["last_seq"])
                try:
                    cp = verifier.verify(doc["checkpoint"], origin=origin)
                except CheckpointError as e:
                    report.fail(None, f"the segment's checkpoint does not verify: {e}")
                    return report
                report.checkpoint_size = cp.size
                left = [bytes.fromhex(h) for h in doc["left"]]
                tree = CompactRange.from_hashes(0, report.first_seq - 1, left)
                expected, prev = report.first_seq, bytes.fromhex(doc["prev_hash"])
                continue
            assert tree is not None and expected is not None and prev is not None
            seq = int(doc["seq"])
            if seq != expected:
                report.fail(expected, f"sequence gap: expected {expected}, found {seq}")
                expected = seq
            row_prev, stored = bytes.fromhex(doc["prev_hash"]), bytes.fromhex(doc["hash"])
            if row_prev != prev:
                report.fail(seq, "prev_hash does not match the previous row's hash")
            payload = canonical_record(doc)
            if chain_hash(row_prev, payload) != stored:
                report.fail(seq, "row content does not match its hash (edited)")
            tree.push_leaf(leaf_hash(payload))
            prev = stored
            expected += 1
            report.rows += 1
    except (OSError, ValueError, KeyError, TypeError, ProofError) as e:
        report.fail(expected, f"segment is unreadable or malformed: {type(e).__name__}: {e}")
        return report
    if header is None or tree is None or cp is None or expected is None:
        report.fail(None, "segment has no header")
        return report
    if signature is None:
        report.fail(None, "segment has no signature line (truncated?)")
        return report
    try:
        signed = verifier.verify(signature, origin=segment_origin(origin))
        if signed.head_hash != digest.digest() or signed.size != report.last_seq:
            raise CheckpointError("the signature is over other contents")
    except CheckpointError as e:
        report.fail(None, f"segment signature: {e}")
    if expected - 1 != report.last_seq:
        report.fail(expected, f"rows {expected}..{report.last_seq} are missing")
    report.chain_head = prev
    report.compact = tree.hashes()
    try:
        right_hashes = [bytes.fromhex(h) for h in header["right"]]
        right = CompactRange.from_hashes(tree.end, cp.size, right_hashes)
        full = tree.copy()
        for level, index, h in right.nodes:
            full.push_node(level, index, h)
        if full.root() != cp.root:
            # With a bad row named already, the root failing is its consequence.
            report.fail(
                None if report.problems else report.first_seq,
                f"the rows do not reproduce the signed root of checkpoint {cp.size}",
            )
    except ProofError as e:
        report.fail(report.first_seq, f"the segment's proof is malformed: {e}")
    if cp.size == report.last_seq and prev != cp.head_hash:
        report.fail(report.last_seq, "the last row is not the signed chain head")
    return report


@dataclass(frozen=True)
class Archived:
    month: str
    partition: str
    rows: int
    first_seq: int | None
    last_seq: int | None
    segment: Path | None


Append = Callable[[NewEvent], Awaitable[object]]


async def _partitions(conn: asyncpg.Connection) -> list[tuple[str, date]]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'ledger.events'::regclass ORDER BY c.relname"
    )
    out = []
    for r in rows:
        name = r["relname"]
        year, month = name.removeprefix("events_").split("_")
        out.append((name, date(int(year), int(month), 1)))
    return out


async def _previous_compact(conn: asyncpg.Connection, first_seq: int) -> list[bytes]:
    """Tree nodes left of ``first_seq``: from the archive event that ended just before."""
    if first_seq == 1:
        return []
    for r in await conn.fetch(
        "SELECT body FROM ledger.events WHERE event = 'ledger.archived' ORDER BY seq DESC"
    ):
        body = r["body"] if isinstance(r["body"], dict) else json.loads(r["body"])
        if int(body["last_seq"]) == first_seq - 1:
            return [base64.b64decode(h) for h in body["compact"]]
    raise ArchiveError(f"rows before {first_seq} are gone without a ledger.archived event")


async def _write_segment(
    conn: asyncpg.Connection,
    path: Path,
    *,
    header: dict[str, Any],
    partition: str,
    signer: CheckpointSigner,
    origin: str,
    last_seq: int,
) -> str:
    digest = hashlib.sha256()  # what the signature covers: every line before it
    whole = hashlib.sha256()  # the file's own digest, recorded in ledger.archived
    tmp = path.with_suffix(".partial")
    with tmp.open("wb") as f:

        def put(doc: dict[str, Any]) -> None:
            line = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            digest.update(line)
            whole.update(line)
            f.write(line)

        put(header)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            query = f"SELECT * FROM ledger.{partition} ORDER BY seq"  # noqa: S608
            async for r in conn.cursor(query, prefetch=5000):
                put(event_record(r))
        note = signer.sign(Checkpoint(segment_origin(origin), last_seq, digest.digest()))
        line = json.dumps({"signature": note}).encode() + b"\n"
        whole.update(line)
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return whole.hexdigest()


async def archive_before(
    conn: asyncpg.Connection,
    append: Append,
    *,
    before: date,
    out_dir: Path,
    signer: CheckpointSigner,
    verifier: CheckpointVerifier,
    origin: str,
) -> list[Archived]:
    """Archive and drop every partition of a month before ``before``, oldest first.

    ``conn`` is the owner's (it detaches and drops); ``out_dir`` exists; ``append``
    commits a ledger event (the broker's writer path) before returning. Raises
    ArchiveError when a month cannot be archived safely; months already done stay done.
    """
    done: list[Archived] = []
    for partition, month in await _partitions(conn):
        if month >= before:
            break
        label = month.strftime("%Y-%m")
        stats = await conn.fetchrow(
            f"SELECT min(seq) AS lo, max(seq) AS hi, count(*) AS n FROM ledger.{partition}"  # noqa: S608
        )
        if stats["n"] == 0:
            await _drop(conn, partition)
            await append(
                NewEvent(
                    event="ledger.partition_dropped",
                    outcome="ok",
                    body={"month": label, "partition": partition, "rows": 0},
                )
            )
            done.append(Archived(label, partition, 0, None, None, None))
            continue
        lo, hi, n = stats["lo"], stats["hi"], stats["n"]
        first = await conn.fetchval(
            "SELECT seq FROM ledger.events ORDER BY recorded_at, seq LIMIT 1"
        )
        if lo != first or n != hi - lo + 1:
            raise ArchiveError(
                f"{partition} holds rows {lo}..{hi} ({n} rows) but the ledger starts at {first}:"
                " months must be archived oldest first and be contiguous"
            )
        cp = await conn.fetchrow(
            "SELECT size, note FROM ledger.checkpoints WHERE root_hash IS NOT NULL"
            " AND size >= $1 ORDER BY size LIMIT 1",
            hi,
        )
        if cp is None:
            raise ArchiveError(f"no signed checkpoint covers row {hi} yet: retry after one")
        left = await _previous_compact(conn, lo)
        right = await span_hashes(conn, hi, cp["size"], cp["size"])
        prev = (
            GENESIS
            if lo == 1
            else bytes(
                await conn.fetchval("SELECT prev_hash FROM ledger.events WHERE seq = $1", lo)
            )
        )
        header = {
            "format": SEGMENT_FORMAT,
            "origin": origin,
            "month": label,
            "partition": partition,
            "first_seq": lo,
            "last_seq": hi,
            "rows": n,
            "prev_hash": _hex(prev),
            "checkpoint": cp["note"],
            "left": [_hex(h) for h in left],
            "right": [_hex(h) for h in right],
            "written_at": datetime.now(UTC).isoformat(),
        }
        path = out_dir / f"ledger-{label}.segment.jsonl"
        sha = await _write_segment(
            conn,
            path,
            header=header,
            partition=partition,
            signer=signer,
            origin=origin,
            last_seq=hi,
        )
        report = check_segment(path, verifier, origin)
        if not report.ok or report.chain_head is None:
            raise ArchiveError(
                f"the segment written for {label} does not verify: {report.problems}"
            )
        await append(
            NewEvent(
                event="ledger.archived",
                outcome="ok",
                body={
                    "month": label,
                    "partition": partition,
                    "first_seq": lo,
                    "last_seq": hi,
                    "rows": n,
                    "segment": path.name,
                    "segment_sha256": sha,
                    "checkpoint_size": cp["size"],
                    "chain_head": base64.b64encode(report.chain_head).decode(),
                    "compact": [base64.b64encode(h).decode() for h in report.compact],
                },
            )
        )
        await _drop(conn, partition)
        await append(
            NewEvent(
                event="ledger.partition_dropped",
                outcome="ok",
                body={"month": label, "partition": partition, "rows": n, "segment_sha256": sha},
            )
        )
        done.append(Archived(label, partition, n, lo, hi, path))
    return done


async def _drop(conn: asyncpg.Connection, partition: str) -> None:
    async with conn.transaction():
        await conn.execute(f"ALTER TABLE ledger.events DETACH PARTITION ledger.{partition}")
        await conn.execute(f"DROP TABLE ledger.{partition}")
