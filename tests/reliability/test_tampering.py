"""Tampering with the ledger, as the broker's own role (refused) and as a superuser (caught).

tests/test_ledger_db.py and tests/test_checkpoint_anchor.py hold the detailed contracts;
this file runs the whole attack matrix through the same helpers (tests/support/ledger_db.py
and forgery.py) and records one table row per attack. Each superuser attack gets a private
ledger of 25 rows with signed checkpoints at 10 and 20, then ``broker verify`` (a real
subprocess) must fail and name the first bad seq.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from broker.ledger.chain import chain_hash
from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.commands import broker_verify
from tests.support.forgery import as_superuser, payload, rechain, replace_all_rows
from tests.support.ledger import fetch_rows
from tests.support.ledger_db import LedgerDb, fresh_ledger_db, populate
from tests.support.reliability_report import Row, record

pytestmark = pytest.mark.stack

_ROWS = 25
_CHECKPOINTS = (10, 20)

# --- by the broker's own role: the database refuses -------------------------------------

_WRITER_ATTACKS = {
    "update": ["UPDATE ledger.events SET outcome = 'denied' WHERE seq = 2"],
    "delete": ["DELETE FROM ledger.events WHERE seq = 3", "DELETE FROM ledger.checkpoints"],
    "truncate": ["TRUNCATE ledger.events", "TRUNCATE ledger.events CASCADE"],
}


async def test_writer_role_cannot_tamper(stack: DevStack, broker_settings: Settings) -> None:
    async with fresh_ledger_db(stack, broker_settings, "rel_writer") as db:
        await populate(db, broker_settings, rows=5, checkpoint_at=(5,))
        conn = await asyncpg.connect(db.writer_dsn, timeout=10)
        refused: dict[str, int] = {}
        try:
            for action, statements in _WRITER_ATTACKS.items():
                refused[action] = 0
                for sql in statements:
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute(sql)
                    refused[action] += 1
            # Out of order: a well-hashed row that skips a seq, forks, or re-roots the chain.
            rows = await fetch_rows(conn)
            head = rows[-1]
            refused["insert out of order"] = 0
            for seq, prev in ((7, head["hash"]), (5, rows[3]["hash"]), (6, rows[2]["hash"])):
                forged = {**rows[0], "seq": seq, "prev_hash": prev}
                forged["hash"] = chain_hash(prev, payload(forged))
                with pytest.raises(asyncpg.PostgresError):
                    await _insert(conn, forged)
                refused["insert out of order"] += 1
        finally:
            await conn.close()
        run = await broker_verify(db.writer_dsn, broker_settings)
    for action, n in refused.items():
        record(
            Row(
                area="tamper",
                kind=f"writer role: {action}",
                faults=n,
                chain="refused" if run.report["ok"] else "tamper detected",
                notes=f"{n} statements refused by Postgres; ledger still verifies",
            )
        )
    assert run.returncode == 0 and run.report["ok"], run.report


_COLUMNS = (
    "seq", "recorded_at", "event", "replica", "subject", "subject_kind", "secret", "role",
    "policy_version", "grant_id", "lease_id", "expires_at", "outcome", "request_id", "body",
    "dedupe_key", "prev_hash", "hash",
)  # fmt: skip


async def _insert(conn: asyncpg.Connection, row: dict[str, Any]) -> None:
    values = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
    await conn.execute(
        f"INSERT INTO ledger.events ({', '.join(_COLUMNS)}) VALUES ({values})",  # noqa: S608
        *(json.dumps(row[c]) if c == "body" else row[c] for c in _COLUMNS),
    )


# --- by a superuser: verify catches it -----------------------------------------------------


Tamper = Callable[[LedgerDb, list[dict[str, Any]], Path], Awaitable[list[str]]]


async def _replace(db: LedgerDb, rows: list[dict[str, Any]]) -> None:
    conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
    try:
        await replace_all_rows(conn, rows)
    finally:
        await conn.close()


async def _update(db: LedgerDb, rows: list[dict[str, Any]], _: Path) -> list[str]:
    await as_superuser(db, "UPDATE ledger.events SET subject = 'mallory' WHERE seq = 15")
    return []


async def _delete(db: LedgerDb, rows: list[dict[str, Any]], _: Path) -> list[str]:
    await as_superuser(db, "DELETE FROM ledger.events WHERE seq = 23")
    return []


async def _insert_forged(db: LedgerDb, rows: list[dict[str, Any]], _: Path) -> list[str]:
    forged = {**rows[13], "seq": 15, "prev_hash": rows[13]["hash"], "subject": "mallory"}
    forged["hash"] = chain_hash(forged["prev_hash"], payload(forged))
    shifted = [{**r, "seq": r["seq"] + 1} for r in rows[14:]]
    await _replace(db, [*rows[:14], forged, *shifted])
    return []


async def _reorder(db: LedgerDb, rows: list[dict[str, Any]], _: Path) -> list[str]:
    # Rows 12 and 13 swap places, each keeping its own (valid) hash.
    swapped = list(rows)
    swapped[11], swapped[12] = {**rows[12], "seq": 12}, {**rows[11], "seq": 13}
    await _replace(db, swapped)
    return []


async def _truncate_replay(db: LedgerDb, rows: list[dict[str, Any]], _: Path) -> list[str]:
    await _replace(db, rows[:12])  # TRUNCATE, then the first 12 rows verbatim
    return []


async def _rewrite(db: LedgerDb, rows: list[dict[str, Any]], _: Path) -> list[str]:
    edited = list(rows)
    edited[14] = {**rows[14], "subject": "mallory"}
    await _replace(db, rechain(edited))  # internally perfect: only checkpoints tell
    return []


async def _rewrite_hide_checkpoints(
    db: LedgerDb, rows: list[dict[str, Any]], tmp: Path
) -> list[str]:
    conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
    try:
        witness = tmp / "witness.note"  # what the broker's witness file holds
        witness.write_text(
            await conn.fetchval("SELECT note FROM ledger.checkpoints ORDER BY size DESC LIMIT 1")
        )
    finally:
        await conn.close()
    await _rewrite(db, rows, tmp)
    conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE ledger.checkpoints DISABLE TRIGGER ALL")
            await conn.execute("DELETE FROM ledger.checkpoints")
            for t in ("checkpoints_no_update_delete", "checkpoints_no_truncate"):
                await conn.execute(f"ALTER TABLE ledger.checkpoints ENABLE ALWAYS TRIGGER {t}")
    finally:
        await conn.close()
    return ["--trusted-checkpoint", str(witness)]


async def _trigger_left_disabled(db: LedgerDb, rows: list[dict[str, Any]], _: Path) -> list[str]:
    conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
    try:
        await conn.execute("ALTER TABLE ledger.events DISABLE TRIGGER events_no_update_delete")
    finally:
        await conn.close()
    return []


async def _trigger_reenabled_weakly(db: LedgerDb, rows: list[dict[str, Any]], _: Path) -> list[str]:
    # Plain ENABLE fires on origin only: session_replication_role = replica silences it.
    conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
    try:
        await conn.execute("ALTER TABLE ledger.events DISABLE TRIGGER events_chain")
        await conn.execute("ALTER TABLE ledger.events ENABLE TRIGGER events_chain")
    finally:
        await conn.close()
    return []


async def _trigger_off_edit_on(db: LedgerDb, rows: list[dict[str, Any]], _: Path) -> list[str]:
    # Triggers off, edit, triggers back ENABLE ALWAYS: the protection looks intact.
    await as_superuser(
        db,
        'UPDATE ledger.events SET body = body || \'{"reason": "approved"}\' WHERE seq = 7',
    )
    return []


@dataclass(frozen=True)
class Attack:
    kind: str
    tamper: Tamper
    first_bad: int | None  # None: no row is bad, a protection is off
    problem: str  # a word the report's problems must contain


_SUPERUSER_ATTACKS = [
    Attack("superuser: update a signed row", _update, 15, "edited"),
    Attack("superuser: delete a row", _delete, 23, "gap"),
    # The forged row 15 links perfectly onto 14; the first row with evidence is the next.
    Attack("superuser: insert a forged row, renumber the rest", _insert_forged, 16, "prev_hash"),
    Attack("superuser: reorder two rows", _reorder, 12, "prev_hash"),
    Attack("superuser: truncate and replay the first 12 rows", _truncate_replay, 13, "truncated"),
    Attack("superuser: rewrite the chain, hashes recomputed", _rewrite, 11, "checkpoint"),
    Attack(
        "superuser: rewrite + delete checkpoints (witness)",
        _rewrite_hide_checkpoints,
        1,
        "trusted",
    ),
    Attack("superuser: append-only trigger left disabled", _trigger_left_disabled, None, "trigger"),
    Attack(
        "superuser: chain trigger re-enabled without ALWAYS",
        _trigger_reenabled_weakly,
        None,
        "ENABLE ALWAYS",
    ),
    Attack("superuser: triggers off, edit, triggers on", _trigger_off_edit_on, 7, "edited"),
]


@pytest.mark.parametrize("attack", _SUPERUSER_ATTACKS, ids=lambda a: a.kind.split(": ")[1])
async def test_superuser_tampering_is_detected(
    stack: DevStack, broker_settings: Settings, tmp_path: Path, attack: Attack
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "rel_tamper") as db:
        await populate(db, broker_settings, rows=_ROWS, checkpoint_at=_CHECKPOINTS)
        conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
        try:
            rows = await fetch_rows(conn)
        finally:
            await conn.close()
        clean = await broker_verify(db.writer_dsn, broker_settings)
        assert clean.report["ok"], clean.report
        extra = await attack.tamper(db, rows, tmp_path)
        run = await broker_verify(db.writer_dsn, broker_settings, *extra)
    report = run.report
    detected = run.returncode == 1 and report["ok"] is False
    problems = [p["problem"] for p in report["problems"]]
    record(
        Row(
            area="tamper",
            kind=attack.kind,
            faults=1,
            chain="tamper detected" if detected else "verified",
            notes=(
                f"first bad seq {report['first_bad_seq']} (expected {attack.first_bad});"
                f" {problems[0] if problems else 'no problem reported'}"
            ),
        )
    )
    assert detected, report
    assert report["first_bad_seq"] == attack.first_bad, report
    assert any(attack.problem in p for p in problems), problems
