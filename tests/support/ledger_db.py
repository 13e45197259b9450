"""Private, migrated ledger databases and real writers on them.

Tests that tamper (or try to) never touch the session's ``broker`` database, which other
tests verify and expect to be intact: each gets its own database, migrated exactly as
``broker migrate`` does, written through a real ``LedgerWriter`` connected as the writer
role, and dropped afterwards.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.ledger import fetch_rows

__all__ = [
    "LedgerDb",
    "fresh_ledger_db",
    "populate",
    "running_ledger",
    "sample_event",
    "signer_for",
    "with_database",
    "writer_password",
    "writer_role",
]


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
) -> list[dict[str, Any]]:
    """Append ``rows`` events one batch at a time, signing a checkpoint at each given size.

    Returns every row as read back (``fetch_rows``), for tests that tamper with them.
    """
    signer = signer_for(settings)
    async with running_ledger(db.writer_dsn, settings) as ledger:
        for i in range(1, rows + 1):
            appended = await ledger.append(sample_event(i))
            assert appended.seq == i
            if i in checkpoint_at:
                cp = await ledger.checkpoint(signer)
                assert cp is not None and cp.size == i
    conn = await asyncpg.connect(db.superuser_dsn, timeout=10)
    try:
        return await fetch_rows(conn)
    finally:
        await conn.close()
