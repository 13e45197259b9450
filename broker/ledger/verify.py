"""Whole-ledger verification: chain, sequence and signed checkpoints.

What each check catches:
- seq not gapless from 1            -> a deleted or inserted row (first bad seq named)
- prev_hash != predecessor's hash   -> a deleted, inserted or reordered row
- recomputed hash != stored hash    -> a row whose content was edited
- checkpoint signature invalid      -> a forged or altered checkpoint
- checkpoint head != chain at size  -> the chain was rewritten (even with recomputed
                                       hashes); the first bad seq is reported as the first
                                       row after the last checkpoint that still matches
- checkpoint size > rows            -> the chain was truncated
- unsigned rows older than the limit -> checkpoints deleted (a superuser covering a rewrite)
                                       or checkpointing broken
- a trusted checkpoint (kept by the auditor outside the database) the chain does not
  reproduce                          -> rewrite or truncation, even with checkpoints deleted
- an append-only trigger missing or not ENABLE ALWAYS -> protection switched off
Rows after the newest checkpoint are hash-chained but not yet signed (``unsigned_tail``).

``first_bad_seq`` is the first row with direct evidence of tampering; where only a
checkpoint betrays a rewrite, it is the first row after the last checkpoint that matched
(the first row no longer proven authentic).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .chain import GENESIS, canonical_event, chain_hash
from .checkpoint import CheckpointError, CheckpointVerifier
from .store import row_to_event

__all__ = ["VerifyReport", "verify_ledger"]

_MAX_PROBLEMS = 50


@dataclass
class VerifyReport:
    ok: bool = True
    rows: int = 0
    head_seq: int = 0
    head_hash: str | None = None
    checkpoints: int = 0
    latest_checkpoint: int | None = None
    unsigned_tail: int = 0
    first_bad_seq: int | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, seq: int | None, problem: str) -> None:
        self.ok = False
        if seq is not None and (self.first_bad_seq is None or seq < self.first_bad_seq):
            self.first_bad_seq = seq
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append({"seq": seq, "problem": problem})

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "checkpoints": self.checkpoints,
            "latest_checkpoint": self.latest_checkpoint,
            "unsigned_tail": self.unsigned_tail,
            "first_bad_seq": self.first_bad_seq,
            "problems": self.problems,
        }


_TRIGGERS = {
    ("events", "events_chain"),
    ("events", "events_no_update_delete"),
    ("events", "events_no_truncate"),
    ("checkpoints", "checkpoints_no_update_delete"),
    ("checkpoints", "checkpoints_no_truncate"),
    ("policy_versions", "policy_versions_no_update_delete"),
    ("policy_versions", "policy_versions_no_truncate"),
}


async def verify_ledger(
    conn: asyncpg.Connection,
    *,
    verifier: CheckpointVerifier,
    origin: str,
    batch_rows: int = 5000,
    max_unsigned_seconds: float | None = 600.0,
    trusted_checkpoints: Sequence[str] = (),
) -> VerifyReport:
    """Verify the whole ledger in one snapshot, streaming rows (memory bounded).

    ``max_unsigned_seconds``: rows older than this must be covered by a signed checkpoint
    (None disables the check, e.g. for a ledger whose broker never ran checkpoints).
    ``trusted_checkpoints``: signed notes the auditor kept outside the database; the
    chain must reproduce each. Never raises for a bad ledger: every finding is reported.
    """
    report = VerifyReport()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        db_now = await conn.fetchval("SELECT now()")
        enabled = {
            (r["relname"], r["tgname"]): r["tgenabled"]
            for r in await conn.fetch(
                "SELECT c.relname, t.tgname, t.tgenabled::text AS tgenabled FROM pg_trigger t"
                " JOIN pg_class c ON c.oid = t.tgrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'ledger' AND NOT t.tgisinternal"
            )
        }
        for table, trigger in sorted(_TRIGGERS):
            state = enabled.get((table, trigger))
            if state != "A":
                report.fail(
                    None,
                    f"trigger {trigger} on ledger.{table} is "
                    + ("missing" if state is None else f"not ENABLE ALWAYS ({state})"),
                )
        checkpoints = await conn.fetch(
            "SELECT size, head_hash, key_id, note FROM ledger.checkpoints ORDER BY size"
        )
        wanted: dict[int, list[tuple[bytes, str]]] = {}
        for cp in checkpoints:
            report.checkpoints += 1
            try:
                signed = verifier.verify(cp["note"], origin=origin)
            except CheckpointError as e:
                report.fail(None, f"checkpoint at size {cp['size']}: {e}")
                continue
            if signed.size != cp["size"] or signed.head_hash != bytes(cp["head_hash"]):
                report.fail(None, f"checkpoint at size {cp['size']}: row disagrees with its note")
                continue
            wanted.setdefault(signed.size, []).append((signed.head_hash, cp["key_id"]))
        for note in trusted_checkpoints:
            try:
                signed = verifier.verify(note, origin=origin)
            except CheckpointError as e:
                report.fail(None, f"trusted checkpoint: {e}")
                continue
            wanted.setdefault(signed.size, []).append((signed.head_hash, "trusted"))
        latest_signed = max(wanted, default=0)
        first_unsigned_at = None
        row_bad: list[int] = []
        # Hash of our recomputed chain at each checkpoint size.
        computed_at: dict[int, bytes] = {}
        expected_seq = 1
        prev_stored = GENESIS
        prev_computed = GENESIS
        async for r in conn.cursor("SELECT * FROM ledger.events ORDER BY seq", prefetch=batch_rows):
            ev = row_to_event(r)
            report.rows += 1
            if ev.seq == latest_signed + 1:
                first_unsigned_at = ev.recorded_at
            if ev.seq != expected_seq:
                report.fail(expected_seq, f"sequence gap: expected {expected_seq}, found {ev.seq}")
                row_bad.append(expected_seq)
                expected_seq = ev.seq
            if ev.prev_hash != prev_stored:
                report.fail(ev.seq, "prev_hash does not match the previous row's hash")
                row_bad.append(ev.seq)
            payload = canonical_event(ev)
            recomputed = chain_hash(ev.prev_hash, payload)
            if recomputed != ev.hash:
                report.fail(ev.seq, "row content does not match its hash (edited)")
                row_bad.append(ev.seq)
            # The independent chain: our own hashes from genesis, never trusting stored ones.
            prev_computed = chain_hash(prev_computed, payload)
            if ev.seq in wanted:
                computed_at[ev.seq] = prev_computed
            prev_stored = ev.hash
            expected_seq += 1
            report.head_seq = ev.seq
        report.head_hash = prev_stored.hex() if report.rows else None

    last_good = 0
    for size in sorted(wanted):
        # Judge every checkpoint of this size against the last good one *before* it: two
        # notes for the same size that disagree are a fork, whichever matches the chain.
        prior = last_good
        for head_hash, key_id in wanted[size]:
            if size > report.head_seq:
                report.fail(
                    report.head_seq + 1,
                    f"checkpoint at size {size} ({key_id}) but the ledger has only "
                    f"{report.head_seq} rows (truncated)",
                )
            elif computed_at.get(size) != head_hash:
                direct = [b for b in row_bad if prior < b <= size]
                report.fail(
                    min(direct, default=prior + 1),
                    f"checkpoint at size {size} ({key_id}) does not match the chain: rows "
                    f"{prior + 1}..{size} were rewritten",
                )
            else:
                last_good = max(last_good, size)
    if wanted:
        report.latest_checkpoint = max(wanted)
    report.unsigned_tail = max(0, report.head_seq - (report.latest_checkpoint or 0))
    if (
        max_unsigned_seconds is not None
        and first_unsigned_at is not None
        and (db_now - first_unsigned_at).total_seconds() > max_unsigned_seconds
    ):
        report.fail(
            (report.latest_checkpoint or 0) + 1,
            f"rows from {(report.latest_checkpoint or 0) + 1} are older than"
            f" {max_unsigned_seconds:.0f}s but no signed checkpoint covers them"
            " (checkpoints deleted, or checkpointing stopped)",
        )
    return report
