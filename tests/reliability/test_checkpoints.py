"""Signed checkpoints under attack: wrong key, altered bytes, stale replay, split view, rotation.

Each case plants its checkpoint note where an attacker would (the ``ledger.checkpoints``
table, as a superuser) or where an auditor keeps one (``--trusted-checkpoint``), then runs
``broker verify`` as a real subprocess. The unit-level note checks live in
tests/test_ledger_chain.py; this file proves the same rules hold end to end on a real ledger
and records a table row per case. Ledgers: 25 rows, signed checkpoints at 10 and 20.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from broker.background import Checkpointer
from broker.errors import LedgerTampered
from broker.ledger import Checkpoint, CheckpointSigner, load_or_create_signing_key
from broker.metrics import Metrics
from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.commands import broker_verify
from tests.support.forgery import rechain, replace_all_rows
from tests.support.ledger_db import LedgerDb, fresh_ledger_db, populate, running_ledger, signer_for
from tests.support.reliability_report import Row, record

pytestmark = pytest.mark.stack

_ROWS = 25
_CHECKPOINTS = (10, 20)


async def _verify(
    dsn: str, settings: Settings, *args: str, key: Path | None = None, old_keys: str = ""
) -> dict[str, Any]:
    """``broker verify`` with the given signing key file and extra verifier keys."""
    extra = {"BROKER_CHECKPOINT_VERIFIER_KEYS": old_keys} if old_keys else {}
    run = await broker_verify(dsn, settings, *args, checkpoint_key=key, timeout=60, **extra)
    assert run.returncode == (0 if run.report["ok"] else 1), (run.returncode, run.stderr[-2000:])
    return run.report


async def _superuser(db: LedgerDb, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Run statements on ledger.checkpoints with its triggers off (ALWAYS again after)."""
    conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE ledger.checkpoints DISABLE TRIGGER ALL")
            for sql, args in statements:
                await conn.execute(sql, *args)
            for t in ("checkpoints_no_update_delete", "checkpoints_no_truncate"):
                await conn.execute(f"ALTER TABLE ledger.checkpoints ENABLE ALWAYS TRIGGER {t}")
    finally:
        await conn.close()


def _plant(signer: CheckpointSigner, cp: Checkpoint) -> tuple[str, tuple[Any, ...]]:
    return (
        "INSERT INTO ledger.checkpoints (size, head_hash, signed_at, key_id, note)"
        " VALUES ($1, $2, $3, $4, $5)",
        (cp.size, cp.head_hash, datetime.now(UTC), signer.key_id, signer.sign(cp)),
    )


async def _seeded(db: LedgerDb, settings: Settings) -> list[dict[str, Any]]:
    return await populate(db, settings, rows=_ROWS, checkpoint_at=_CHECKPOINTS)


async def _note_at(db: LedgerDb, size: int) -> str:
    conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
    try:
        note: str = await conn.fetchval("SELECT note FROM ledger.checkpoints WHERE size = $1", size)
    finally:
        await conn.close()
    return note


def _record(kind: str, report: dict[str, Any], notes: str) -> None:
    problems = [p["problem"] for p in report["problems"]]
    record(
        Row(
            area="checkpoint",
            kind=kind,
            faults=1,
            chain="verified" if report["ok"] else "tamper detected",
            notes=f"{notes}; verify: {problems[0] if problems else 'ok'}",
        )
    )


async def test_wrong_key_is_rejected(
    stack: DevStack, broker_settings: Settings, tmp_path: Path
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "cp_wrongkey") as db:
        rows = await _seeded(db, broker_settings)
        # Same key name, another key: a checkpoint of the true head, signed by an impostor.
        impostor = CheckpointSigner(
            broker_settings.checkpoint_key_name,
            load_or_create_signing_key(tmp_path / "impostor.key", create=True),
        )
        head = Checkpoint(broker_settings.ledger_origin, _ROWS, rows[-1]["hash"])
        await _superuser(db, _plant(impostor, head))
        report = await _verify(db.writer_dsn, broker_settings)
    _record("wrong signing key (same name)", report, "impostor note for the true head")
    assert not report["ok"]
    assert any("no trusted signature" in p["problem"] for p in report["problems"]), report


@pytest.mark.parametrize("part", ["size", "root hash", "signature"])
async def test_altered_bytes_are_rejected(
    stack: DevStack, broker_settings: Settings, part: str
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "cp_altered") as db:
        await _seeded(db, broker_settings)
        note = await _note_at(db, 20)
        lines = note.split("\n")
        size, root = lines[1], lines[2]  # the root hash: the Merkle root since the tree
        sig = next(line for line in lines if line.startswith("\u2014 "))
        if part == "size":
            altered = note.replace(f"\n{size}\n", "\n21\n", 1)
        elif part == "root hash":
            raw = bytearray(base64.b64decode(root))
            raw[0] ^= 1
            altered = note.replace(root, base64.b64encode(bytes(raw)).decode(), 1)
        else:
            _, blob = sig.rsplit(" ", 1)
            raw = bytearray(base64.b64decode(blob))
            raw[-1] ^= 1
            altered = note.replace(blob, base64.b64encode(bytes(raw)).decode(), 1)
        assert altered != note
        await _superuser(
            db, ("UPDATE ledger.checkpoints SET note = $1 WHERE size = 20", (altered,))
        )
        report = await _verify(db.writer_dsn, broker_settings)
    _record(f"altered checkpoint bytes ({part})", report, "one byte of the note at size 20")
    assert not report["ok"]
    assert any("checkpoint at size 20" in p["problem"] for p in report["problems"]), report


async def test_stale_checkpoint_replayed_is_rejected(
    stack: DevStack, broker_settings: Settings, tmp_path: Path
) -> None:
    """The ledger is cut back to 10 rows and only the (authentic, older) checkpoint at 10 is
    left: alone it is self-consistent; the witness of size 20 and the broker's checkpointer
    both refuse it."""
    witness = tmp_path / "witness.note"
    async with fresh_ledger_db(stack, broker_settings, "cp_stale") as db:
        rows = await _seeded(db, broker_settings)
        witness.write_text(signer_for(broker_settings).sign(
            Checkpoint(broker_settings.ledger_origin, 20, rows[19]["hash"])
        ))  # fmt: skip
        conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            await replace_all_rows(conn, rows[:10])
        finally:
            await conn.close()
        await _superuser(db, ("DELETE FROM ledger.checkpoints WHERE size > 10", ()))
        alone = await _verify(db.writer_dsn, broker_settings)
        report = await _verify(db.writer_dsn, broker_settings, "--trusted-checkpoint", str(witness))
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            checkpointer = Checkpointer(
                ledger, signer_for(broker_settings), Metrics(), witness_path=witness
            )
            with pytest.raises(LedgerTampered):
                await checkpointer.run_once()
    _record(
        "stale checkpoint replayed (ledger cut back to it)",
        report,
        f"database alone: {'ok' if alone['ok'] else 'caught'}; witness at 20 catches it;"
        " checkpointer refuses to sign",
    )
    assert not report["ok"] and report["first_bad_seq"] == 11, report
    assert any("truncated" in p["problem"] for p in report["problems"]), report


async def test_split_view_is_rejected(
    stack: DevStack, broker_settings: Settings, tmp_path: Path
) -> None:
    """Two heads for size 20, both signed by the real key (a fooled or stolen signer): the
    database holds the forged one; the auditor holds the honest one. verify names the fork."""
    async with fresh_ledger_db(stack, broker_settings, "cp_split") as db:
        rows = await _seeded(db, broker_settings)
        honest = await _note_at(db, 20)
        forged_rows = list(rows)
        forged_rows[14] = {**rows[14], "subject": "mallory"}
        forged_rows = rechain(forged_rows)
        conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            await replace_all_rows(conn, forged_rows)
        finally:
            await conn.close()
        signer = signer_for(broker_settings)
        fork = Checkpoint(broker_settings.ledger_origin, 20, forged_rows[19]["hash"])
        assert fork.head_hash != rows[19]["hash"]
        await _superuser(
            db, ("DELETE FROM ledger.checkpoints WHERE size = 20", ()), _plant(signer, fork)
        )
        trusted = tmp_path / "trusted.note"
        trusted.write_text(honest)
        report = await _verify(db.writer_dsn, broker_settings, "--trusted-checkpoint", str(trusted))
    _record(
        "split view: two signed heads for size 20",
        report,
        "database holds a validly signed forged head; auditor's note disagrees",
    )
    assert not report["ok"] and report["first_bad_seq"] == 11, report
    assert any("size 20" in p["problem"] for p in report["problems"]), report


async def test_key_rotation_still_verifies(
    stack: DevStack, broker_settings: Settings, tmp_path: Path
) -> None:
    """Checkpoints at 10 and 20 by the old key, 25 by the new one: verify passes with the old
    key listed in BROKER_CHECKPOINT_VERIFIER_KEYS, and fails without it (the control)."""
    new_key = tmp_path / "rotated.key"
    new = CheckpointSigner(
        broker_settings.checkpoint_key_name, load_or_create_signing_key(new_key, create=True)
    )
    old = signer_for(broker_settings)
    async with fresh_ledger_db(stack, broker_settings, "cp_rotate") as db:
        await _seeded(db, broker_settings)
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            cp = await ledger.checkpoint(new)
            assert cp is not None and cp.size == _ROWS
        rotated = await _verify(
            db.writer_dsn, broker_settings, key=new_key, old_keys=old.verifier_key()
        )
        without_old = await _verify(db.writer_dsn, broker_settings, key=new_key)
    _record(
        "key rotation: old key kept as verifier",
        rotated,
        f"3 checkpoints by 2 keys; without the old key verify says"
        f" {'ok' if without_old['ok'] else 'tampered'}",
    )
    assert rotated["ok"] and rotated["checkpoints"] == 3, rotated
    assert not without_old["ok"], without_old
