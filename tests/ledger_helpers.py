"""Helpers for the ledger tests: private databases, real writers, `broker verify` runs.

Tests that tamper (or try to) never touch the session's ``broker`` database, which other
tests verify and expect to be intact: each gets its own database, migrated exactly as
``broker migrate`` does, written through a real ``LedgerWriter`` connected as the writer
role, and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from broker.ledger import (
    CheckpointSigner,
    Ledger,
    LedgerWriter,
    NewEvent,
    apply_migrations,
    connect_pool,
    load_or_create_signing_key,
)
from broker.ledger.chain import GENESIS, canonical_row, chain_hash
from broker.settings import Settings
from broker.stack.devstack import DevStack

REPO = Path(__file__).resolve().parent.parent
BROKER_BIN = REPO / ".venv" / "bin" / "broker"

# Only what a broker subprocess needs from our environment; BROKER_*/VAULT_* are set
# explicitly per run so a developer's shell cannot change what a test checks.
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


def with_database(dsn: str, database: str) -> str:
    """``dsn`` with its database name replaced (user, password, host and port kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


def writer_password(settings: Settings) -> str:
    password = urlsplit(settings.database_url).password
    assert password, "broker_settings.database_url carries the writer password"
    return password


def writer_role(settings: Settings) -> str:
    role = urlsplit(settings.database_url).username
    assert role
    return role


def signer_for(settings: Settings) -> CheckpointSigner:
    """The session's checkpoint signer (the key file outside the database)."""
    key = load_or_create_signing_key(settings.checkpoint_key_path, create=False)
    return CheckpointSigner(settings.checkpoint_key_name, key)


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
    env.update(extra)
    return env


@dataclass(frozen=True)
class LedgerDb:
    """A private, migrated ledger database."""

    name: str
    superuser_dsn: str
    writer_dsn: str


@asynccontextmanager
async def fresh_ledger_db(
    stack: DevStack, settings: Settings, prefix: str
) -> AsyncIterator[LedgerDb]:
    """Create and migrate a database of our own; drop it (and only it) afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(stack.superuser_dsn("postgres"), timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        await apply_migrations(
            stack.superuser_dsn(name),
            writer_role=writer_role(settings),
            writer_password=writer_password(settings),
        )
        yield LedgerDb(name, stack.superuser_dsn(name), with_database(settings.database_url, name))
    finally:
        admin = await asyncpg.connect(stack.superuser_dsn("postgres"), timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def running_ledger(
    dsn: str,
    settings: Settings,
    *,
    replica: str = "test",
    on_commit: Callable[[int, float, int], None] | None = None,
    max_size: int = 4,
) -> AsyncIterator[Ledger]:
    """A started ``Ledger`` (pool + writer) on ``dsn``; the writer is stopped on exit."""
    pool = await connect_pool(dsn, min_size=1, max_size=max_size)
    writer = LedgerWriter(pool, replica=replica, on_commit=on_commit)
    writer.start()
    try:
        yield Ledger(pool, writer, origin=settings.ledger_origin)
    finally:
        await writer.stop()
        await pool.close()


def sample_event(i: int) -> NewEvent:
    """A realistic grant.issued row (nothing secret in it)."""
    return NewEvent(
        event="grant.issued",
        outcome="issued",
        subject=f"user-{i % 7}",
        subject_kind="human",
        secret="db/orders-ro",
        role="engineering",
        policy_version="v" + "0" * 63,
        grant_id=uuid.uuid4(),
        lease_id=f"database/creds/orders-ro/lease{i}",
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
        request_id=f"req-{i}",
        body={"engine": "database", "ttl": 900, "reason": f"ticket {i} \u2014 caf\u00e9"},
    )


async def populate(
    db: LedgerDb, settings: Settings, *, rows: int, checkpoint_at: Sequence[int]
) -> None:
    """Append ``rows`` events one batch at a time, signing a checkpoint at each given size."""
    signer = signer_for(settings)
    async with running_ledger(db.writer_dsn, settings) as ledger:
        for i in range(1, rows + 1):
            appended = await ledger.append(sample_event(i))
            assert appended.seq == i
            if i in checkpoint_at:
                cp = await ledger.checkpoint(signer)
                assert cp is not None and cp.size == i


async def fetch_rows(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every ledger row as a dict (``body`` decoded), in seq order."""
    rows = await conn.fetch("SELECT * FROM ledger.events ORDER BY seq")
    out = []
    for r in rows:
        d = dict(r)
        d["body"] = json.loads(d["body"]) if isinstance(d["body"], str) else d["body"]
        out.append(d)
    return out


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


# ENABLE ALWAYS takes one trigger name (there is no ENABLE ALWAYS TRIGGER ALL); a plain
# ENABLE TRIGGER ALL would quietly downgrade them to fire-on-origin only.
ENABLE_TRIGGERS = ";".join(
    f"ALTER TABLE ledger.events ENABLE ALWAYS TRIGGER {t}"
    for t in ("events_chain", "events_no_update_delete", "events_no_truncate")
)


async def replace_all_rows(conn: asyncpg.Connection, rows: list[dict[str, Any]]) -> None:
    """As the superuser: triggers off, TRUNCATE, insert ``rows`` verbatim, triggers on."""
    placeholders = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
    columns = ", ".join(_COLUMNS)
    insert = f"INSERT INTO ledger.events ({columns}) VALUES ({placeholders})"  # noqa: S608
    async with conn.transaction():
        await conn.execute("ALTER TABLE ledger.events DISABLE TRIGGER ALL")
        await conn.execute("TRUNCATE ledger.events")
        await conn.executemany(
            insert,
            [tuple(json.dumps(r[c]) if c == "body" else r[c] for c in _COLUMNS) for r in rows],
        )
        await conn.execute(ENABLE_TRIGGERS)


async def as_superuser(db: LedgerDb, script: str, *args: Any) -> None:
    """Run ``script`` with the ledger's triggers disabled, re-enabling them (ALWAYS) after."""
    conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE ledger.events DISABLE TRIGGER ALL")
            await conn.execute(script, *args)
            await conn.execute(ENABLE_TRIGGERS)
    finally:
        await conn.close()


@dataclass(frozen=True)
class VerifyRun:
    returncode: int
    report: dict[str, Any]
    stderr: str


async def broker_verify(
    dsn: str, settings: Settings, *extra_args: str, timeout: float = 30.0
) -> VerifyRun:
    """Run ``.venv/bin/broker verify`` as a real subprocess against ``dsn``."""
    env = subprocess_env(
        BROKER_DATABASE_URL=dsn,
        BROKER_CHECKPOINT_KEY=str(settings.checkpoint_key_path),
        BROKER_LEDGER_ORIGIN=settings.ledger_origin,
    )
    proc = await asyncio.create_subprocess_exec(
        str(BROKER_BIN),
        "verify",
        *extra_args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    stdout, stderr = out.decode(), err.decode()
    try:
        report = json.loads(stdout)
    except ValueError:
        raise AssertionError(
            f"broker verify printed no JSON (exit {proc.returncode}): {stdout!r} {stderr!r}"
        ) from None
    return VerifyRun(proc.returncode, report, stderr)
