"""The broker never signs a chain that no longer contains what it signed before.

A superuser rewrites the chain (hashes recomputed) and deletes every checkpoint row, so the
database alone looks consistent; the broker's checkpointer still holds its anchor (memory
and the witness file outside the database) and refuses to sign the forgery.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from broker.background import Checkpointer
from broker.errors import LedgerTampered
from broker.metrics import Metrics
from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.forgery import rechain, replace_all_rows
from tests.support.ledger import fetch_rows
from tests.support.ledger_db import fresh_ledger_db, running_ledger, sample_event, signer_for


async def _rewrite_and_hide(superuser_dsn: str) -> None:
    conn = await asyncpg.connect(superuser_dsn, timeout=10)
    try:
        rows = await fetch_rows(conn)
        rows[2] = {**rows[2], "subject": "mallory"}
        await replace_all_rows(conn, rechain(rows))
        async with conn.transaction():
            await conn.execute("ALTER TABLE ledger.checkpoints DISABLE TRIGGER ALL")
            await conn.execute("DELETE FROM ledger.checkpoints")
            await conn.execute(
                "ALTER TABLE ledger.checkpoints ENABLE ALWAYS TRIGGER checkpoints_no_update_delete"
            )
            await conn.execute(
                "ALTER TABLE ledger.checkpoints ENABLE ALWAYS TRIGGER checkpoints_no_truncate"
            )
    finally:
        await conn.close()


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "after-restart"])
async def test_checkpointer_refuses_a_rewritten_chain(
    stack: DevStack, broker_settings: Settings, tmp_path: Path, restart: bool
) -> None:
    witness = tmp_path / "checkpoint.witness"
    signer = signer_for(broker_settings)
    async with fresh_ledger_db(stack, broker_settings, "anchor") as db:
        async with running_ledger(db.writer_dsn, broker_settings) as ledger:
            metrics = Metrics()
            checkpointer = Checkpointer(ledger, signer, metrics, witness_path=witness)
            for i in range(5):
                await ledger.append(sample_event(i))
            await checkpointer.run_once()
            assert witness.exists()
            await _rewrite_and_hide(db.superuser_dsn)
            await ledger.append(sample_event(99))  # the forger keeps the broker busy
            if restart:
                # A new process knows only the witness file outside the database.
                checkpointer = Checkpointer(ledger, signer, metrics, witness_path=witness)
            with pytest.raises(LedgerTampered):
                await checkpointer.run_once()
            assert metrics.ledger_tamper_detected._value.get() == 1
        conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            assert await conn.fetchval("SELECT count(*) FROM ledger.checkpoints") == 0
        finally:
            await conn.close()


async def test_checkpointer_signs_an_honest_chain_repeatedly(
    stack: DevStack, broker_settings: Settings, tmp_path: Path
) -> None:
    witness = tmp_path / "checkpoint.witness"
    async with (
        fresh_ledger_db(stack, broker_settings, "anchor_ok") as db,
        running_ledger(db.writer_dsn, broker_settings) as ledger,
    ):
        checkpointer = Checkpointer(
            ledger, signer_for(broker_settings), Metrics(), witness_path=witness
        )
        for round_ in range(3):
            for i in range(3):
                await ledger.append(sample_event(round_ * 10 + i))
            await checkpointer.run_once()
        note = witness.read_text()
        assert note.splitlines()[1] == "9"  # size of the newest checkpoint
