"""Fixtures for the reliability suite: brokers on a private ledger, ledger counts, heavy mode.

An attack suite offboards subjects, opens reviews and annotates gaps at random; doing that
on the session's ``broker`` database would change what other tests see. ``isolated_broker``
gives a test its own migrated ledger database (dropped afterwards) behind a real broker on
the session's OpenBao, with the same policies and dev keys.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.conftest import RunningBroker, start_broker
from tests.ledger_helpers import LedgerDb, fresh_ledger_db

__all__ = [
    "HEAVY",
    "IsolatedBroker",
    "LogCapture",
    "captured_logs",
    "count_events",
    "isolated_broker",
    "scaled",
]

HEAVY = os.environ.get("RELIABILITY_HEAVY", "") not in ("", "0")
"""``RELIABILITY_HEAVY=1`` runs the heavier variants (more fuzz examples, more attempts)."""


def scaled(default: int, heavy: int) -> int:
    """``heavy`` under RELIABILITY_HEAVY=1, else ``default``."""
    return heavy if HEAVY else default


@dataclass(frozen=True)
class IsolatedBroker:
    """A running broker and the private ledger database it writes to."""

    running: RunningBroker
    db: LedgerDb

    @property
    def url(self) -> str:
        return self.running.url


@asynccontextmanager
async def isolated_broker(
    stack: DevStack,
    settings: Settings,
    *,
    prefix: str,
    clock: Callable[[], datetime] | None = None,
    **overrides: Any,
) -> AsyncIterator[IsolatedBroker]:
    """A broker on a fresh ledger database of its own; stopped and dropped on exit."""
    async with fresh_ledger_db(stack, settings, prefix) as db:
        running = await start_broker(
            settings.with_overrides(
                database_url=db.writer_dsn,
                admin_database_url=db.superuser_dsn,
                replica_id=f"{prefix}-{uuid.uuid4().hex[:6]}",
                # The session ledger's witness file describes another chain: sharing it
                # would make one of the two brokers see "tampering".
                checkpoint_witness_path=None,
                **overrides,
            ),
            clock=clock,
        )
        try:
            yield IsolatedBroker(running, db)
        finally:
            await running.runner.cleanup()


async def count_events(dsn: str, where: str = "TRUE", *args: Any) -> int:
    """How many ``ledger.events`` rows match ``where`` (SQL with $n args) in ``dsn``."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        n: int = await conn.fetchval(
            f"SELECT count(*) FROM ledger.events e WHERE {where}",  # noqa: S608
            *args,
        )
    finally:
        await conn.close()
    return n


class LogCapture(logging.Handler):
    """Keeps every log record, rendered with its arguments, extras and traceback."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.texts: list[str] = []
        self._formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self._formatter.format(record)
        except Exception:  # a record that cannot format is still searched raw
            text = repr(record.msg)
        self.texts.append(f"{text}\n{record.args!r}\n{vars(record)!r}")

    def contains(self, needle: str) -> bool:
        return any(needle in text for text in self.texts)


@pytest.fixture
def captured_logs() -> Iterator[LogCapture]:
    """Every record logged (at any level, by any logger) while the test runs."""
    handler = LogCapture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
