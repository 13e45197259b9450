"""Scanning a run of ledger rows: each row's content against its hashes, the signed
checkpoints that fall in the run, and the run's Merkle nodes. The unit of work of
``verify_ledger``, in-process or in worker processes.

Each row's check depends only on the row itself and its stored predecessor hash, so a
ledger splits into runs verified independently; the coordinator joins them (a run's first
``prev_hash`` must be the previous run's last hash, and its Merkle nodes continue the
previous run's ``CompactRange``). A run also checks every checkpoint whose size it covers
— signature, chain head and Merkle root — so their number (one every checkpoint interval:
millions a year) costs neither the coordinator's memory nor its one core. A root needs the
tree left of the run: a worker takes it from ``ledger.tree_nodes`` as a *hint* and reports
what it assumed; the coordinator accepts the run's root checks only if the hint equals
the tree it computed from the rows before. Rows are read a batch at a time in one
repeatable-read snapshot (the coordinator's, exported to the workers): memory stays flat.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from .chain import canonical_row, chain_hash
from .checkpoint import CheckpointError, CheckpointVerifier
from .merkle import CompactRange, leaf_hash
from .store import connect_one
from .tree import TreeError, compact_hashes

__all__ = [
    "ROW_COLUMNS",
    "RunResult",
    "SignedHead",
    "scan_run",
    "scan_run_in_process",
]

# Times, uuid and body as PostgreSQL's text (TimeZone UTC): decoding those in C and
# respelling them with string slices is half the cost of datetime/uuid/jsonb codecs.
ROW_COLUMNS = (
    "seq, recorded_at::text, event, replica, subject, subject_kind, secret, role,"
    " policy_version, grant_id::text, lease_id, expires_at::text, outcome, request_id,"
    " body::text, dedupe_key, prev_hash, hash"
)
_MAX_PROBLEMS = 50
_MAX_BAD = 1000

Node = tuple[int, int, bytes]


def _ts(text: str | None) -> str | None:
    """``2026-01-03 07:32:28.475+00`` -> ``2026-01-03T07:32:28.475000Z`` (chain.canonical_time)."""
    if text is None:
        return None
    if len(text) < 22 or not text.endswith("+00") or text[19:20] not in (".", "+"):
        raise ValueError(f"unexpected timestamp spelling {text!r}")
    frac = text[20:-3] if text[19] == "." else ""
    return f"{text[:10]}T{text[11:19]}.{frac.ljust(6, '0')}Z"


_floats = [0]


def _count_float(text: str) -> float:
    _floats[0] += 1
    return float(text)


_DECODE = msgspec.json.Decoder(float_hook=_count_float).decode


def _body(text: str) -> tuple[Any, bool]:
    """The body's value, and whether it is free of floats (msgspec spells those its way)."""
    before = _floats[0]
    try:
        value = _DECODE(text)
    except msgspec.DecodeError:
        return json.loads(text), False
    return value, _floats[0] == before


@dataclass(frozen=True)
class SignedHead:
    """A checkpoint whose signature verified: what the rows at ``size`` must reproduce."""

    size: int
    head: bytes
    root: bytes | None
    key_id: str


@dataclass
class RunResult:
    """What one run ``(lo, hi]`` of seq showed. ``end_nodes`` cover ``[lo, hi)`` only."""

    lo: int
    hi: int
    prefix: list[bytes] | None = None  # the tree left of lo the root checks assumed
    rows: int = 0
    first_prev: bytes | None = None
    last_seq: int = 0
    last_hash: bytes | None = None
    bad: list[int] = field(default_factory=list)  # the first bad rows (bounded)
    problems: list[tuple[int | None, str]] = field(default_factory=list)
    checkpoints: int = 0
    last_good: int | None = None  # largest checkpoint size in the run that matched
    # (size, largest good size before it in this run or None, key id, what differs)
    mismatches: list[tuple[int, int | None, str, str]] = field(default_factory=list)
    end_nodes: list[Node] = field(default_factory=list)

    def fail(self, seq: int | None, problem: str) -> None:
        # Rows come in order: the first bad ones are the ones that matter, and a ledger
        # rewritten wholesale must not fill the memory with the list.
        if seq is not None and len(self.bad) < _MAX_BAD:
            self.bad.append(seq)
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append((seq, problem))


class _Scanner:
    """Feeds batches of one run through the checks, keeping the run's state."""

    def __init__(self, lo: int, hi: int, prefix: list[bytes] | None) -> None:
        self.out = RunResult(lo, hi, prefix)
        self.tree = CompactRange(lo, lo)
        self.left = CompactRange.from_hashes(0, lo, prefix) if prefix is not None else None
        self.expected = lo + 1
        self.prev: bytes | None = None

    def root(self) -> bytes | None:
        if self.left is None:
            return None
        joined = self.left.copy()
        for level, index, h in self.tree.nodes:
            joined.push_node(level, index, h)
        return joined.root()

    def feed(self, rows: Iterable[Any], heads: Sequence[SignedHead]) -> None:
        out, tree = self.out, self.tree
        by_size: dict[int, list[SignedHead]] = {}
        for h in heads:
            by_size.setdefault(h.size, []).append(h)
        for r in rows:
            seq = r[0]
            if seq != self.expected:
                out.fail(self.expected, f"sequence gap: expected {self.expected}, found {seq}")
                self.expected = seq
            prev_hash, stored = r[16], r[17]
            if out.rows == 0:
                out.first_prev = prev_hash
            elif prev_hash != self.prev:
                out.fail(seq, "prev_hash does not match the previous row's hash")
            body, plain = _body(r[14])
            payload = canonical_row(
                seq=seq,
                recorded_at=_ts(r[1]),  # type: ignore[arg-type]
                event=r[2],
                replica=r[3],
                subject=r[4],
                subject_kind=r[5],
                secret=r[6],
                role=r[7],
                policy_version=r[8],
                grant_id=r[9],
                lease_id=r[10],
                expires_at=_ts(r[11]),
                outcome=r[12],
                request_id=r[13],
                body=body,
                dedupe_key=r[15],
                body_plain=plain,
            )
            if chain_hash(prev_hash, payload) != stored:
                out.fail(seq, "row content does not match its hash (edited)")
            tree.push_leaf(leaf_hash(payload))
            if seq in by_size:
                self._check(by_size.pop(seq), stored)
            self.prev = stored
            out.rows += 1
            out.last_seq = seq
            self.expected += 1
        for _, missed in sorted(by_size.items()):  # sizes whose row never came
            for h in missed:
                out.mismatches.append((h.size, out.last_good, h.key_id, "no row at its size"))

    def _check(self, heads: list[SignedHead], stored: bytes) -> None:
        out = self.out
        prior, good = out.last_good, True
        root = self.root() if any(h.root is not None for h in heads) else None
        for h in heads:
            out.checkpoints += h.key_id != "trusted"
            if h.head != stored:
                out.mismatches.append((h.size, prior, h.key_id, "chain head"))
                good = False
            elif h.root is not None and root is not None and h.root != root:
                out.mismatches.append((h.size, prior, h.key_id, "Merkle root"))
                good = False
        if good:
            out.last_good = heads[0].size

    def finish(self) -> RunResult:
        out = self.out
        out.last_hash = self.prev
        out.end_nodes = list(self.tree.nodes)
        if out.rows and out.last_seq != out.hi:
            out.fail(out.last_seq + 1, f"sequence gap: rows after {out.last_seq} are missing")
        elif not out.rows and out.hi > out.lo:
            out.fail(out.lo + 1, f"rows {out.lo + 1}..{out.hi} are missing")
        return out


async def _signed_heads(
    conn: asyncpg.Connection,
    lo: int,
    hi: int,
    verifier: CheckpointVerifier,
    origin: str,
    out: RunResult,
) -> list[SignedHead]:
    """The checkpoints with sizes in ``(lo, hi]`` whose notes verify and match their rows."""
    heads = []
    for cp in await conn.fetch(
        "SELECT size, head_hash, root_hash, key_id, note FROM ledger.checkpoints"
        " WHERE size > $1 AND size <= $2 ORDER BY size",
        lo,
        hi,
    ):
        try:
            signed = verifier.verify(cp["note"], origin=origin)
        except CheckpointError as e:
            out.fail(None, f"checkpoint at size {cp['size']}: {e}")
            continue
        stored_root = bytes(cp["root_hash"]) if cp["root_hash"] is not None else None
        if (
            signed.size != cp["size"]
            or signed.head_hash != bytes(cp["head_hash"])
            or signed.root != stored_root
        ):
            out.fail(None, f"checkpoint at size {cp['size']}: row disagrees with its note")
            continue
        heads.append(SignedHead(signed.size, signed.head_hash, signed.root, cp["key_id"]))
    return heads


async def fetch_run(conn: asyncpg.Connection, lo: int, hi: int) -> list[asyncpg.Record]:
    """Rows ``(lo, hi]`` in seq order (callers keep ``hi - lo`` to one batch)."""
    query = f"SELECT {ROW_COLUMNS} FROM ledger.events WHERE seq > $1 AND seq <= $2 ORDER BY seq"  # noqa: S608
    rows: list[asyncpg.Record] = await conn.fetch(query, lo, hi)
    return rows


async def scan_run(
    conn: asyncpg.Connection,
    lo: int,
    hi: int,
    *,
    verifier: CheckpointVerifier,
    origin: str,
    prefix: list[bytes] | None = None,
    trusted: Sequence[SignedHead] = (),
    batch_rows: int = 20_000,
) -> RunResult:
    """Scan rows ``(lo, hi]`` and their checkpoints a batch at a time (memory holds one
    batch). ``prefix``: the tree left of ``lo`` when the caller knows it; otherwise the
    stored nodes are the hint. ``trusted``: auditor-kept heads in the run."""
    if prefix is None:
        try:
            prefix = await compact_hashes(conn, lo)
        except TreeError:
            prefix = None  # no tree stored that far: the run checks chain heads only
    scanner = _Scanner(lo, hi, prefix)

    async def batch(start: int) -> tuple[list[asyncpg.Record], list[SignedHead]]:
        stop = min(hi, start + batch_rows)
        signed = await _signed_heads(conn, start, stop, verifier, origin, scanner.out)
        kept = [h for h in trusted if start < h.size <= stop]
        return await fetch_run(conn, start, stop), signed + kept

    # Pipelined: the next batch is read while this one is hashed in a thread (the broker's
    # event loop keeps serving, and PostgreSQL works while Python hashes).
    pos = lo
    ahead = asyncio.ensure_future(batch(pos)) if pos < hi else None
    while ahead is not None:
        rows, heads = await ahead
        pos = min(hi, pos + batch_rows)
        ahead = asyncio.ensure_future(batch(pos)) if pos < hi else None
        try:
            await asyncio.to_thread(scanner.feed, rows, heads)
        except BaseException:
            if ahead is not None:
                ahead.cancel()
            raise
    return scanner.finish()


async def _scan_remote(
    dsn: str,
    sslrootcert: str | None,
    snapshot: str | None,
    lo: int,
    hi: int,
    prefix: list[bytes] | None,
    verifier_keys: list[str],
    origin: str,
    trusted: list[SignedHead],
    batch: int,
) -> RunResult:
    conn = await connect_one(dsn, sslrootcert=Path(sslrootcert) if sslrootcert else None)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            if snapshot is not None:  # the coordinator's snapshot: every run sees one ledger
                await conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            await conn.execute("SET LOCAL TIME ZONE 'UTC'")
            return await scan_run(
                conn,
                lo,
                hi,
                verifier=CheckpointVerifier(verifier_keys),
                origin=origin,
                prefix=prefix,
                trusted=trusted,
                batch_rows=batch,
            )
    finally:
        await conn.close()


def scan_run_in_process(args: tuple[Any, ...]) -> RunResult:
    """Worker-process entry point (picklable arguments, see ``_scan_remote``)."""
    return asyncio.run(_scan_remote(*args))
