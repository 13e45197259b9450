"""Ledger verification: every row's content, the chain, the Merkle tree, the signed
checkpoints and the append-only triggers — in full, or from a verified head.

What each check catches:
- seq not gapless                    -> a deleted or inserted row (first bad seq named)
- prev_hash != predecessor's hash    -> a deleted, inserted or reordered row
- recomputed hash != stored hash     -> a row whose content was edited
- checkpoint signature invalid       -> a forged or altered checkpoint
- checkpoint head or root != the rows at its size -> the chain was rewritten (even with
                                        recomputed hashes); the first bad seq is the first
                                        row after the last checkpoint that still matches
- checkpoint size > rows             -> the chain was truncated
- unsigned rows older than the limit -> checkpoints deleted, or checkpointing broken
- a trusted checkpoint (kept by the auditor outside the database) the ledger does not
  reproduce                          -> rewrite or truncation, even with checkpoints deleted
- rows missing at the start with no ``ledger.archived`` event covering them -> a partition
                                        dropped without its archive (first missing seq)
- an append-only trigger missing or not ENABLE ALWAYS, on the table or any partition

Modes (``VerifyStart``): ``full`` scans every row still in the database (rows archived by
``broker ledger archive`` are proven by their segment's head, carried in the archive
event); ``incremental`` starts at the newest *verified head* — a note the broker signed
after an earlier verification, naming (size, Merkle root, chain head) — and scans only
the rows after it; ``from_checkpoint`` starts at a checkpoint the auditor kept, after
proving the database's newest checkpoint consistent with it (RFC 6962). A start is
trusted only after the stored tree nodes at its size fold to its signed root.

Rows are scanned in runs (``broker.ledger.scan``), in worker processes when ``workers`` is
set — each with its own connection to the coordinator's exported snapshot — and joined
here: the seams of the chain, and the Merkle nodes of the runs into one tree.
"""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import asyncpg

from .chain import GENESIS
from .checkpoint import Checkpoint, CheckpointError, CheckpointSigner, CheckpointVerifier
from .findings import Problems
from .merkle import CompactRange, ProofError, root_from_nodes, verify_consistency
from .scan import RunResult, SignedHead, scan_run, scan_run_in_process
from .tree import TreeError, compact_hashes, consistency_proof

__all__ = [
    "PROTECTED_TRIGGERS",
    "VerifyReport",
    "record_verified_head",
    "verified_origin",
    "verify_ledger",
]

_RUNS_PER_WORKER = 4

# (table, trigger) pairs that must exist and be ENABLE ALWAYS; events_* also on every
# monthly partition of ledger.events.
PROTECTED_TRIGGERS = {
    ("events", "events_chain"),
    ("events", "events_no_update_delete"),
    ("events", "events_no_truncate"),
    ("checkpoints", "checkpoints_no_update_delete"),
    ("checkpoints", "checkpoints_no_truncate"),
    ("policy_versions", "policy_versions_no_update_delete"),
    ("policy_versions", "policy_versions_no_truncate"),
    ("tree_nodes", "tree_nodes_no_update_delete"),
    ("tree_nodes", "tree_nodes_no_truncate"),
    ("verified_heads", "verified_heads_no_update_delete"),
    ("verified_heads", "verified_heads_no_truncate"),
}
_EVENT_TRIGGERS = sorted(t for table, t in PROTECTED_TRIGGERS if table == "events")

Mode = Literal["full", "incremental", "from_checkpoint"]


def verified_origin(origin: str) -> str:
    """Origin of verified-head notes: never valid as a checkpoint of the ledger itself."""
    return f"{origin}/verified"


@dataclass
class VerifyReport(Problems):
    mode: str = "full"
    verified_from: int = 0
    rows: int = 0
    head_seq: int = 0
    head_hash: str | None = None
    root: str | None = None
    checkpoints: int = 0
    latest_checkpoint: int | None = None
    unsigned_tail: int = 0
    archived_rows: int = 0
    partitions: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "mode": self.mode,
            "verified_from": self.verified_from,
            "rows": self.rows,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "root": self.root,
            "checkpoints": self.checkpoints,
            "latest_checkpoint": self.latest_checkpoint,
            "unsigned_tail": self.unsigned_tail,
            "archived_rows": self.archived_rows,
            "partitions": self.partitions,
            "first_bad_seq": self.first_bad_seq,
            "problems": self.problems,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class _Start:
    """Where a scan begins: everything up to ``size`` is proven by ``chain_head``/``nodes``."""

    size: int
    chain_head: bytes
    nodes: list[bytes]
    what: str


async def _check_triggers(conn: asyncpg.Connection, report: VerifyReport) -> None:
    rows = await conn.fetch(
        "SELECT c.relname, t.tgname, t.tgenabled::text AS tgenabled FROM pg_trigger t"
        " JOIN pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'ledger' AND NOT t.tgisinternal"
    )
    enabled = {(r["relname"], r["tgname"]): r["tgenabled"] for r in rows}
    partitions = [
        r["relname"]
        for r in await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'ledger.events'::regclass ORDER BY c.relname"
        )
    ]
    report.partitions = len(partitions)
    wanted = sorted(PROTECTED_TRIGGERS | {(p, t) for p in partitions for t in _EVENT_TRIGGERS})
    for table, trigger in wanted:
        state = enabled.get((table, trigger))
        if state != "A":
            report.fail(
                None,
                f"trigger {trigger} on ledger.{table} is "
                + ("missing" if state is None else f"not ENABLE ALWAYS ({state})"),
            )


def _trusted_heads(
    verifier: CheckpointVerifier, origin: str, notes: Sequence[str], report: VerifyReport
) -> list[SignedHead]:
    heads = []
    for note in notes:
        try:
            cp = verifier.verify(note, origin=origin)
        except CheckpointError as e:
            report.fail(None, f"trusted checkpoint: {e}")
            continue
        heads.append(SignedHead(cp.size, cp.head_hash, cp.root, "trusted"))
    return heads


async def _archived_start(
    conn: asyncpg.Connection, first_seq: int, report: VerifyReport
) -> _Start | None:
    """The start after archived rows ``1..first_seq - 1``, from their archive events.

    None (and a failure naming the first missing seq) when the events do not cover them.
    """
    covered = 0
    last: dict[str, Any] | None = None
    for r in await conn.fetch(
        "SELECT body FROM ledger.events WHERE event = 'ledger.archived' ORDER BY seq"
    ):
        body = r["body"]
        try:
            lo, hi = int(body["first_seq"]), int(body["last_seq"])
        except (KeyError, TypeError, ValueError):
            report.fail(None, "a ledger.archived event is malformed")
            continue
        if lo == covered + 1 and hi < first_seq:
            covered, last = hi, body
    if covered != first_seq - 1 or last is None:
        report.fail(
            covered + 1,
            f"rows {covered + 1}..{first_seq - 1} are gone and no ledger.archived event"
            " covers them (a partition dropped without its archive)",
        )
        return None
    try:
        nodes = [base64.b64decode(h, validate=True) for h in last["compact"]]
        head = base64.b64decode(last["chain_head"], validate=True)
    except (KeyError, TypeError, ValueError):
        report.fail(covered, "the last ledger.archived event is malformed")
        return None
    report.archived_rows = covered
    report.notes.append(
        f"rows 1..{covered} are archived (segments named by their ledger.archived events);"
        " check the segment files with `broker ledger check-segment`"
    )
    return _Start(covered, head, nodes, "archive")


async def _verified_start(
    conn: asyncpg.Connection,
    verifier: CheckpointVerifier,
    origin: str,
    note: str,
    what: str,
    floor: int,
) -> _Start:
    """A start from a signed (size, root, chain head): the stored tree must fold to it.

    Raises CheckpointError/TreeError/ProofError when the note or the tree disagrees."""
    signed = verifier.verify(note, origin=origin)
    if signed.root is None:
        raise CheckpointError("the note predates the Merkle tree (no root): verify in full")
    if signed.size < floor:
        raise CheckpointError(f"size {signed.size} is archived; verify from a later one")
    nodes = await compact_hashes(conn, signed.size)
    if root_from_nodes(nodes) != signed.root:
        raise ProofError(f"the ledger's tree at size {signed.size} does not match the signed root")
    stored = await conn.fetchval("SELECT hash FROM ledger.events WHERE seq = $1", signed.size)
    if stored is not None and bytes(stored) != signed.head_hash:
        raise ProofError(f"ledger row {signed.size} no longer matches the signed chain head")
    return _Start(signed.size, signed.head_hash, nodes, what)


async def _scan(
    conn: asyncpg.Connection,
    start: _Start,
    head: int,
    *,
    verifier: CheckpointVerifier,
    origin: str,
    trusted: list[SignedHead],
    workers: int,
    dsn: str | None,
    sslrootcert: Path | None,
    batch_rows: int,
) -> list[RunResult]:
    known = start.nodes if start.what != "missing" else None
    if head <= start.size:
        return []
    if workers <= 1 or dsn is None or head - start.size < 4 * batch_rows:
        run = await scan_run(
            conn,
            start.size,
            head,
            verifier=verifier,
            origin=origin,
            prefix=known,
            trusted=trusted,
            batch_rows=batch_rows,
        )
        return [run]
    snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
    parts = workers * _RUNS_PER_WORKER
    step = -(-(head - start.size) // parts)
    args = [
        (dsn, str(sslrootcert) if sslrootcert else None, snapshot, lo, min(head, lo + step),
         known if lo == start.size else None, verifier.verifier_keys, origin,
         [t for t in trusted if lo < t.size <= lo + step], batch_rows)
        for lo in range(start.size, head, step)
    ]  # fmt: skip
    loop = asyncio.get_running_loop()
    # spawn: a forked child would inherit this process's event loop and connections.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = await asyncio.gather(
            *(loop.run_in_executor(pool, scan_run_in_process, a) for a in args)
        )
    return list(runs)


async def verify_ledger(
    conn: asyncpg.Connection,
    *,
    verifier: CheckpointVerifier,
    origin: str,
    batch_rows: int = 20_000,
    max_unsigned_seconds: float | None = 600.0,
    trusted_checkpoints: Sequence[str] = (),
    mode: Mode = "full",
    from_checkpoint: str | None = None,
    workers: int = 0,
    dsn: str | None = None,
    sslrootcert: Path | None = None,
) -> VerifyReport:
    """Verify the ledger in one snapshot (memory bounded); never raises for a bad ledger.

    ``max_unsigned_seconds``: rows older than this must be covered by a signed checkpoint
    (None disables the check). ``trusted_checkpoints``: signed notes the auditor kept; the
    ledger must reproduce each. ``mode``/``from_checkpoint``: see the module docstring
    (an incremental start that does not check out falls back to a full scan, noted).
    ``workers`` > 1 with ``dsn``: scan in that many processes.
    """
    started = datetime.now(UTC)
    report = VerifyReport(mode=mode)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SET LOCAL TIME ZONE 'UTC'")  # the scan reads times as text
        db_now = await conn.fetchval("SELECT now()")
        await _check_triggers(conn, report)
        head_row = await conn.fetchrow(
            "SELECT seq, hash FROM ledger.events ORDER BY recorded_at DESC, seq DESC LIMIT 1"
        )
        first_seq = await conn.fetchval(
            "SELECT seq FROM ledger.events ORDER BY recorded_at, seq LIMIT 1"
        )
        head = head_row["seq"] if head_row else 0
        start = _Start(0, GENESIS, [], "genesis")
        if first_seq is not None and first_seq > 1:
            archived = await _archived_start(conn, first_seq, report)
            # Without its archive the start is unproven: rows are still checked one by one.
            start = archived or _Start(first_seq - 1, GENESIS, [], "missing")
        if mode != "full":
            note = from_checkpoint
            if mode == "incremental":
                note = await conn.fetchval(
                    "SELECT note FROM ledger.verified_heads WHERE size <= $1"
                    " ORDER BY size DESC LIMIT 1",
                    head,
                )
            try:
                if note is None:
                    raise CheckpointError("no verified head yet: the first run is a full one")
                resume_origin = verified_origin(origin) if mode == "incremental" else origin
                start = await _verified_start(conn, verifier, resume_origin, note, mode, start.size)
            except (CheckpointError, TreeError, ProofError) as e:
                if mode == "from_checkpoint":
                    report.fail(None, f"kept checkpoint: {e}")
                    report.seconds = (datetime.now(UTC) - started).total_seconds()
                    return report
                report.mode = "full"
                report.notes.append(f"verified in full: {e}")
        report.verified_from = start.size
        trusted = _trusted_heads(verifier, origin, trusted_checkpoints, report)
        latest = await conn.fetchrow(
            "SELECT size, root_hash, note FROM ledger.checkpoints ORDER BY size DESC LIMIT 1"
        )
        if mode == "from_checkpoint" and report.ok:
            await _prove_consistent(conn, start, verifier, origin, report)
        for size in await conn.fetch(
            "SELECT size FROM ledger.checkpoints WHERE size > $1 ORDER BY size", head
        ):
            report.fail(
                head + 1,
                f"checkpoint at size {size['size']} but the ledger has only {head} rows"
                " (truncated)",
            )
        for cp in trusted:
            if cp.size > head:
                report.fail(head + 1, f"trusted checkpoint at size {cp.size} but the ledger"
                            f" has only {head} rows (truncated)")  # fmt: skip
        latest_signed = max(latest["size"] if latest else 0, start.size)
        first_unsigned_at = await conn.fetchval(
            "SELECT recorded_at FROM ledger.events WHERE seq = $1", latest_signed + 1
        )
        runs = await _scan(
            conn,
            start,
            head,
            verifier=verifier,
            origin=origin,
            trusted=[t for t in trusted if start.size < t.size <= head],
            workers=workers,
            dsn=dsn,
            sslrootcert=sslrootcert,
            batch_rows=batch_rows,
        )
    _judge(report, start, runs, head)
    report.head_seq = head
    report.head_hash = head_row["hash"].hex() if head_row else None
    report.latest_checkpoint = latest["size"] if latest else None
    report.unsigned_tail = max(0, head - max(report.latest_checkpoint or 0, start.size))
    if (
        max_unsigned_seconds is not None
        and first_unsigned_at is not None
        and (db_now - first_unsigned_at).total_seconds() > max_unsigned_seconds
    ):
        first = latest_signed + 1
        report.fail(
            first,
            f"rows from {first} are older than {max_unsigned_seconds:.0f}s but no signed"
            " checkpoint covers them (checkpoints deleted, or checkpointing stopped)",
        )
    report.seconds = (datetime.now(UTC) - started).total_seconds()
    return report


async def _prove_consistent(
    conn: asyncpg.Connection,
    start: _Start,
    verifier: CheckpointVerifier,
    origin: str,
    report: VerifyReport,
) -> None:
    """The database's newest signed root must extend the kept checkpoint (RFC 6962)."""
    row = await conn.fetchrow(
        "SELECT size, note FROM ledger.checkpoints WHERE root_hash IS NOT NULL"
        " ORDER BY size DESC LIMIT 1"
    )
    if row is None or row["size"] <= start.size:
        report.notes.append("no newer signed checkpoint to prove consistent with yet")
        return
    try:
        newest = verifier.verify(row["note"], origin=origin)
        assert newest.root is not None
        proof = await consistency_proof(conn, start.size, newest.size)
        verify_consistency(
            start.size, newest.size, root_from_nodes(start.nodes), newest.root, proof
        )
    except (CheckpointError, ProofError, TreeError) as e:
        report.fail(start.size + 1, f"checkpoint at size {row['size']} is not consistent: {e}")
        return
    report.notes.append(
        f"checkpoint at size {newest.size} is consistent with the kept checkpoint at"
        f" size {start.size} ({len(proof)}-hash proof)"
    )


def _judge(report: VerifyReport, start: _Start, runs: list[RunResult], head: int) -> None:
    """Join the runs into the report: rows, seams, checkpoints, and the tree's root."""
    bad = sorted(b for run in runs for b in run.bad)
    if bad:  # rows beyond the listed problems still count for first_bad_seq
        report.ok = False
        report.first_bad_seq = min(bad[0], report.first_bad_seq or bad[0])
    proven = start.what != "missing"
    tree = CompactRange.from_hashes(0, start.size, start.nodes) if proven else None
    prev = start.chain_head if proven else None
    last_good = start.size
    for run in runs:
        report.rows += run.rows
        report.checkpoints += run.checkpoints
        for seq, problem in run.problems:
            report.fail(seq, problem)
        if run.rows and prev is not None and run.first_prev != prev:
            where = f"the {start.what} at {start.size}" if run.lo == start.size else "row"
            report.fail(run.lo + 1, f"prev_hash does not continue {where} {run.lo}")
        if run.rows:
            prev = run.last_hash
        if tree is not None and run.prefix is not None and run.prefix != tree.hashes():
            report.fail(
                None,
                f"the stored Merkle nodes left of row {run.lo + 1} do not match the rows"
                " (proofs from them would not verify)",
            )
        for size, prior, key_id, what in run.mismatches:
            base = last_good if prior is None else prior
            report.fail(
                next((b for b in bad if base < b <= size), base + 1),
                f"checkpoint at size {size} ({key_id}): its {what} does not match the"
                f" ledger: rows {base + 1}..{size} were rewritten",
            )
        if run.last_good is not None:
            last_good = run.last_good
        if tree is not None:
            for node in run.end_nodes:
                tree.push_node(*node)
    if tree is not None and tree.end == head and head > 0:
        report.root = tree.root().hex()


async def record_verified_head(
    conn: asyncpg.Connection,
    report: VerifyReport,
    signer: CheckpointSigner,
    origin: str,
) -> int | None:
    """After a clean verification, sign and store its newest verified checkpoint as the
    next verification's start; return its size (None when there is nothing to record)."""
    if not report.ok or report.latest_checkpoint is None:
        return None
    row = await conn.fetchrow(
        "SELECT size, head_hash, root_hash FROM ledger.checkpoints"
        " WHERE root_hash IS NOT NULL AND size <= $1 ORDER BY size DESC LIMIT 1",
        report.latest_checkpoint,
    )
    if row is None or row["size"] <= report.verified_from:
        return None
    head = Checkpoint(
        verified_origin(origin), row["size"], bytes(row["head_hash"]), bytes(row["root_hash"])
    )
    await conn.execute(
        "INSERT INTO ledger.verified_heads (size, verified_at, full_scan, note)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (size) DO NOTHING",
        head.size,
        datetime.now(UTC),
        report.mode == "full",
        signer.sign(head),
    )
    return head.size
