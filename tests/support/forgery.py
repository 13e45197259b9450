"""What a superuser can do to a private ledger: rewrite rows and forge a perfect chain.

The tamper tests use these to show that ``broker verify`` and the running broker still
tell: the signed checkpoints and the witness outside the database do not move with the rows.
Only ever used on a ``fresh_ledger_db``, never on the session's ledger.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from broker.ledger.chain import GENESIS, canonical_row, chain_hash
from tests.support.ledger_db import LedgerDb

__all__ = [
    "DISABLE_TRIGGERS",
    "ENABLE_TRIGGERS",
    "INSERT_EVENT",
    "as_superuser",
    "event_args",
    "payload",
    "rechain",
    "replace_all_rows",
    "unchained_row",
]


def payload(row: dict[str, Any]) -> bytes:
    """The canonical bytes of a row dict (as the writer and verify compute them)."""
    return canonical_row(
        seq=row["seq"],
        recorded_at=row["recorded_at"],
        event=row["event"],
        replica=row["replica"],
        subject=row["subject"],
        subject_kind=row["subject_kind"],
        secret=row["secret"],
        role=row["role"],
        policy_version=row["policy_version"],
        grant_id=row["grant_id"],
        lease_id=row["lease_id"],
        expires_at=row["expires_at"],
        outcome=row["outcome"],
        request_id=row["request_id"],
        body=row["body"],
        dedupe_key=row["dedupe_key"],
    )


def rechain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Renumber 1..n and recompute every prev_hash/hash: a forger's perfect chain."""
    prev = GENESIS
    out = []
    for seq, row in enumerate(rows, start=1):
        row = {**row, "seq": seq, "prev_hash": prev}
        row["hash"] = chain_hash(prev, payload(row))
        prev = row["hash"]
        out.append(row)
    return out


_COLUMNS = (
    "seq", "recorded_at", "event", "replica", "subject", "subject_kind", "secret", "role",
    "policy_version", "grant_id", "lease_id", "expires_at", "outcome", "request_id", "body",
    "dedupe_key", "prev_hash", "hash",
)  # fmt: skip


def unchained_row(
    at: datetime, event: str, outcome: str, *, replica: str = "broker-0", **fields: Any
) -> dict[str, Any]:
    """A row dict recorded ``at``, every other column empty unless given in ``fields``
    (the body ``{}``); ``rechain`` numbers and hashes a list of them."""
    row: dict[str, Any] = dict.fromkeys(_COLUMNS[1:-2])  # all but seq and the hashes
    row.update(recorded_at=at, event=event, replica=replica, outcome=outcome, body={})
    row.update(fields)
    return row


# The events table and each monthly partition carry the triggers (a partition's TRUNCATE
# trigger is its own), so a superuser covering a rewrite switches them off on every one.
# ENABLE ALWAYS takes one trigger name (there is no ENABLE ALWAYS TRIGGER ALL); a plain
# ENABLE TRIGGER ALL would quietly downgrade them to fire-on-origin only.
_EVERY_EVENTS_TABLE = (
    "SELECT 'ledger.events'::regclass AS t UNION ALL"
    " SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'ledger.events'::regclass"
)
DISABLE_TRIGGERS = f"""DO $$ DECLARE r record; BEGIN
    FOR r IN {_EVERY_EVENTS_TABLE} LOOP
        EXECUTE format('ALTER TABLE %s DISABLE TRIGGER ALL', r.t);
    END LOOP; END $$"""
ENABLE_TRIGGERS = f"""DO $$ DECLARE r record; BEGIN
    FOR r IN {_EVERY_EVENTS_TABLE} LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER events_chain', r.t);
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER events_no_update_delete', r.t);
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER events_no_truncate', r.t);
    END LOOP; END $$"""


INSERT_EVENT = (
    f"INSERT INTO ledger.events ({', '.join(_COLUMNS)})"  # noqa: S608
    f" VALUES ({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))})"
)


def event_args(row: dict[str, Any]) -> tuple[Any, ...]:
    """``row``'s columns in ``INSERT_EVENT`` order (the body as JSON text)."""
    return tuple(json.dumps(row[c]) if c == "body" else row[c] for c in _COLUMNS)


async def replace_all_rows(conn: asyncpg.Connection, rows: list[dict[str, Any]]) -> None:
    """As the superuser: triggers off, TRUNCATE, insert ``rows`` verbatim, triggers on."""
    async with conn.transaction():
        await conn.execute(DISABLE_TRIGGERS)
        await conn.execute("TRUNCATE ledger.events")
        if rows:  # the months the rows fall in need their partitions
            await conn.execute(
                "SELECT ledger.create_partitions($1, $2)",
                min(r["recorded_at"] for r in rows),
                max(r["recorded_at"] for r in rows),
            )
            await conn.execute(DISABLE_TRIGGERS)  # the new partitions' triggers too
        await conn.executemany(
            INSERT_EVENT,
            [event_args(r) for r in rows],
        )
        await conn.execute(ENABLE_TRIGGERS)


async def as_superuser(db: LedgerDb, script: str, *args: Any) -> None:
    """Run ``script`` with the ledger's triggers disabled, re-enabling them (ALWAYS) after."""
    conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
    try:
        async with conn.transaction():
            await conn.execute(DISABLE_TRIGGERS)
            await conn.execute(script, *args)
            await conn.execute(ENABLE_TRIGGERS)
    finally:
        await conn.close()
