"""Reading ``ledger.events`` directly, as an auditor with a SQL prompt would.

Rows come back as dicts of columns with ``body`` decoded; ``ledger_rows`` adds ``_text``
(the whole row as Postgres renders it) for searching secrets anywhere in a row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import asyncpg

from broker.stack.devstack import DevStack

__all__ = [
    "assert_gapless",
    "count_events",
    "fetch_rows",
    "head_seq",
    "ledger_lease_ids",
    "ledger_rows",
    "ledger_seqs",
    "ledger_text_count",
    "select_events",
    "session_ledger_dsn",
]


def session_ledger_dsn(stack: DevStack) -> str:
    """The session broker's ledger database, as the superuser."""
    return stack.superuser_dsn("broker")


def _decoded(records: Iterable[asyncpg.Record]) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        row = dict(record)
        row["body"] = json.loads(row["body"]) if isinstance(row["body"], str) else row["body"]
        rows.append(row)
    return rows


async def fetch_rows(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every ledger row as a dict (``body`` decoded), in seq order."""
    return _decoded(await conn.fetch("SELECT * FROM ledger.events ORDER BY seq"))


async def ledger_rows(stack: DevStack, where: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of the session ledger matching ``where`` (SQL with $n args), oldest first."""
    conn = await asyncpg.connect(session_ledger_dsn(stack), timeout=5)
    try:
        records = await conn.fetch(
            f"SELECT e.*, e::text AS _text FROM ledger.events e WHERE {where} ORDER BY e.seq",  # noqa: S608
            *args,
        )
    finally:
        await conn.close()
    return _decoded(records)


async def ledger_text_count(stack: DevStack, needle: str) -> int:
    """How many session ledger rows contain ``needle`` anywhere in their text."""
    return await count_events(session_ledger_dsn(stack), "strpos(e::text, $1) > 0", needle)


async def count_events(dsn: str, where: str = "TRUE", *args: Any) -> int:
    """How many ``ledger.events`` rows (alias ``e``) match ``where`` in ``dsn``."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        n: int = await conn.fetchval(
            f"SELECT count(*) FROM ledger.events e WHERE {where}",  # noqa: S608
            *args,
        )
    finally:
        await conn.close()
    return n


async def head_seq(dsn: str) -> int:
    """The highest seq in the ledger at ``dsn`` (0 when empty): "rows after this test began"."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        seq: int = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM ledger.events")
    finally:
        await conn.close()
    return seq


async def select_events(
    dsn: str, columns: str, where: str = "TRUE", *args: Any
) -> list[asyncpg.Record]:
    """``SELECT columns FROM ledger.events e WHERE where ORDER BY seq`` on ``dsn``."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(
            await conn.fetch(
                f"SELECT {columns} FROM ledger.events e WHERE {where} ORDER BY e.seq",  # noqa: S608
                *args,
            )
        )
    finally:
        await conn.close()


async def ledger_seqs(dsn: str) -> list[int]:
    """Every seq in the ledger at ``dsn``, in order (a gapless chain is 1..n)."""
    return [r["seq"] for r in await select_events(dsn, "e.seq")]


async def assert_gapless(dsn: str) -> None:
    """The ledger at ``dsn`` numbers its rows 1..n, with no seq missing or repeated."""
    seqs = await ledger_seqs(dsn)
    assert seqs == list(range(1, len(seqs) + 1)), "ledger seqs are not gapless"


async def ledger_lease_ids(dsn: str, event: str = "grant.issued") -> set[str]:
    """Lease ids that have an ``event`` row in the ledger at ``dsn``."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT lease_id FROM ledger.events WHERE event = $1 AND lease_id IS NOT NULL",
            event,
        )
    finally:
        await conn.close()
    return {r["lease_id"] for r in rows}
