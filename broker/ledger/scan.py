"""Scanning a run of ledger rows: each row's content against its hashes, the signed
checkpoints that fall in the run, and the run's Merkle nodes. The unit of work of
``verify_ledger``, in-process or in worker processes.

Each row's check depends only on the row itself and its stored predecessor hash, so a
ledger splits into runs verified independently; the caller joins them (a run's first
``prev_hash`` must be the previous run's last hash, and its Merkle nodes continue the
previous run's ``CompactRange``). A run also checks the checkpoints whose size it covers
— signature, and the chain head against the row at that size — so their number (one
every checkpoint interval: millions a year) costs neither the coordinator's memory nor
its one core. Merkle roots are compared for a sample: the newest checkpoint of each batch
plus every checkpoint the auditor supplied (a root is a second commitment to rows whose
content and chain are already checked one by one). Rows are read a batch at a time in one
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

__all__ = [
    "ROW_COLUMNS",
    "RunResult",
    "SignedHead",
    "join_runs",
    "scan_rows",
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


def _ts(text: str | None) -> str | None:
    """``2026-01-03 07:32:28.475+00`` -> ``2026-01-03T07:32:28.475000Z`` (chain._ts)."""
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


_MAX_PROBLEMS = 50

Node = tuple[int, int, bytes]


@dataclass(frozen=True)
class SignedHead:
    """A checkpoint whose signature verified: what the rows at ``size`` must reproduce."""

    size: int
    head: bytes
    root: bytes | None
    key_id: str


@dataclass
class RunResult:
    """What one run ``(lo, hi]`` of seq showed."""

    lo: int
    hi: int
    rows: int = 0
    first_prev: bytes | None = None
    last_seq: int = 0
    last_hash: bytes | None = None
    bad: list[int] = field(default_factory=list)
    problems: list[tuple[int | None, str]] = field(default_factory=list)
    checkpoints: int = 0
    last_good: int | None = None  # largest checkpoint size in the run that matched
    # (size, largest good size before it in this run or None, key id) of each mismatch
    mismatches: list[tuple[int, int | None, str]] = field(default_factory=list)
    # sampled checkpoints: Merkle nodes of [lo, size) and the signed roots to compare
    partial_at: dict[int, list[Node]] = field(default_factory=dict)
    roots: dict[int, list[tuple[bytes, str]]] = field(default_factory=dict)
    end_nodes: list[Node] = field(default_factory=list)

    def fail(self, seq: int | None, problem: str) -> None:
        if seq is not None:
            self.bad.append(seq)
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append((seq, problem))


def scan_rows(
    rows: Iterable[Any], lo: int, hi: int, heads: Sequence[SignedHead], sampled: frozenset[int]
) -> RunResult:
    """Check rows ``seq in (lo, hi]`` (records in ROW_COLUMNS order) and ``heads``, the
    signed checkpoints with sizes in the run; compare roots at the newest one and at the
    ``sampled`` sizes."""
    out = RunResult(lo, hi)
    tree = CompactRange(lo, lo)
    by_size: dict[int, list[SignedHead]] = {}
    for h in heads:
        by_size.setdefault(h.size, []).append(h)
    newest_rooted = max((h.size for h in heads if h.root is not None), default=None)
    expected = lo + 1
    prev_stored: bytes | None = None
    for r in rows:
        seq = r[0]
        if seq != expected:
            out.fail(expected, f"sequence gap: expected {expected}, found {seq}")
            expected = seq
        prev_hash, stored = r[16], r[17]
        if out.rows == 0:
            out.first_prev = prev_hash
        elif prev_hash != prev_stored:
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
            _check_heads(
                out, tree, by_size.pop(seq), stored, seq == newest_rooted or seq in sampled
            )
        prev_stored = stored
        out.rows += 1
        out.last_seq = seq
        expected += 1
    out.last_hash = prev_stored
    out.end_nodes = list(tree.nodes)
    if out.rows and out.last_seq != hi:
        out.fail(out.last_seq + 1, f"sequence gap: rows after {out.last_seq} are missing")
    elif not out.rows and hi > lo:
        out.fail(lo + 1, f"rows {lo + 1}..{hi} are missing")
    for size, missed in sorted(by_size.items()):  # sizes whose row never came
        for h in missed:
            out.mismatches.append((size, out.last_good, h.key_id))
    return out


def _check_heads(
    out: RunResult, tree: CompactRange, heads: list[SignedHead], stored: bytes, sample: bool
) -> None:
    size = heads[0].size
    rooted = [h for h in heads if h.root is not None]
    if sample and rooted:
        out.partial_at[size] = list(tree.nodes)
        out.roots[size] = [(h.root, h.key_id) for h in rooted if h.root is not None]
    prior = out.last_good
    good = True
    for h in heads:
        out.checkpoints += h.key_id != "trusted"
        if h.head != stored:
            out.mismatches.append((size, prior, h.key_id))
            good = False
    if good:
        out.last_good = size


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
    trusted: Sequence[SignedHead] = (),
    batch: int = 20_000,
) -> RunResult:
    """Scan rows ``(lo, hi]`` and their checkpoints a batch at a time (memory holds one
    batch), joined here. ``trusted``: auditor-kept heads, always compared in full."""
    runs = []
    pos = lo
    while pos < hi:
        stop = min(hi, pos + batch)
        signed = await _signed_heads(
            conn, pos, stop, verifier, origin, notes := RunResult(pos, stop)
        )
        kept = [h for h in trusted if pos < h.size <= stop]
        run = scan_rows(
            await fetch_run(conn, pos, stop),
            pos,
            stop,
            signed + kept,
            frozenset(h.size for h in kept),
        )
        run.problems[:0] = notes.problems
        runs.append(run)
        pos = stop
    return join_runs(lo, hi, runs)


async def _scan_remote(
    dsn: str,
    sslrootcert: str | None,
    snapshot: str | None,
    lo: int,
    hi: int,
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
                trusted=trusted,
                batch=batch,
            )
    finally:
        await conn.close()


def join_runs(lo: int, hi: int, runs: list[RunResult]) -> RunResult:
    """One result for consecutive runs (the runs' own seams checked here)."""
    out = RunResult(lo, hi)
    tree = CompactRange(lo, lo)
    for run in runs:
        if out.rows and run.rows and run.first_prev != out.last_hash:
            out.fail(run.lo + 1, "prev_hash does not match the previous row's hash")
        for size, nodes in run.partial_at.items():
            joined = tree.copy()
            for node in nodes:
                joined.push_node(*node)
            out.partial_at[size] = list(joined.nodes)
        out.roots.update(run.roots)
        for node in run.end_nodes:
            tree.push_node(*node)
        if out.rows == 0 and run.rows:
            out.first_prev = run.first_prev
        if run.rows:
            out.last_seq, out.last_hash = run.last_seq, run.last_hash
        out.rows += run.rows
        out.checkpoints += run.checkpoints
        out.mismatches.extend(
            (size, out.last_good if prior is None else prior, key)
            for size, prior, key in run.mismatches
        )
        if run.last_good is not None:
            out.last_good = run.last_good
        out.bad.extend(run.bad)
        out.problems.extend(run.problems[: max(0, _MAX_PROBLEMS - len(out.problems))])
    out.end_nodes = list(tree.nodes)
    return out


def scan_run_in_process(args: tuple[Any, ...]) -> RunResult:
    """Worker-process entry point (picklable arguments, see ``_scan_remote``)."""
    return asyncio.run(_scan_remote(*args))
