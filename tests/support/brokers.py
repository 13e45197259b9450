"""In-process brokers: ``create_app(settings)`` served on a free loopback port.

``running_broker`` is the usual form (stopped on the way out); ``start_broker`` is for a
test that stops it itself (a session fixture, a broker restarted mid-test).
``isolated_broker`` also gives the broker a ledger database of its own, for tests that
offboard, annotate or tamper and must not change what other tests see in the shared one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from broker.app import create_app
from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.ledger_db import LedgerDb, fresh_ledger_db

# The quotas lifted out of the way for tests that share the demo identities (hundreds of
# grants and elevation requests an hour each); quota tests set their own.
SUITE_QUOTAS: dict[str, Any] = {
    "quota_rate": 100_000.0,
    "quota_burst": 100_000,
    "quota_live_grants": 100_000,
    "quota_elevation_requests": 100_000,
}
# The same for brokers started as processes (``broker serve``, ``broker dev``).
SUITE_QUOTA_ENV = {
    "BROKER_QUOTA_RATE": "100000",
    "BROKER_QUOTA_BURST": "100000",
    "BROKER_QUOTA_LIVE_GRANTS": "100000",
    "BROKER_QUOTA_ELEVATION_REQUESTS": "100000",
}

__all__ = [
    "SUITE_QUOTAS",
    "SUITE_QUOTA_ENV",
    "IsolatedBroker",
    "RunningBroker",
    "isolated_broker",
    "running_broker",
    "start_broker",
]


@dataclass
class RunningBroker:
    """A broker app serving on ``url``; ``app`` gives tests the typed keys (ledger, vault)."""

    url: str
    app: web.Application
    settings: Settings
    runner: web.AppRunner


async def start_broker(
    settings: Settings, *, clock: Callable[[], datetime] | None = None
) -> RunningBroker:
    """Start ``create_app(settings)`` on 127.0.0.1:0 and return it (caller stops it)."""
    app = create_app(settings.with_overrides(port=0), clock=clock)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return RunningBroker(f"http://127.0.0.1:{port}", app, settings, runner)


@asynccontextmanager
async def running_broker(
    settings: Settings, *, clock: Callable[[], datetime] | None = None, **overrides: Any
) -> AsyncIterator[RunningBroker]:
    """A broker on ``settings`` (with ``overrides``), stopped when the block ends."""
    running = await start_broker(settings.with_overrides(**overrides), clock=clock)
    try:
        yield running
    finally:
        await running.runner.cleanup()


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
    async with (
        fresh_ledger_db(stack, settings, prefix) as db,
        running_broker(
            settings,
            clock=clock,
            database_url=db.writer_dsn,
            admin_database_url=db.superuser_dsn,
            replica_id=f"{prefix}-{uuid.uuid4().hex[:6]}",
            # The session ledger's witness file describes another chain: sharing it
            # would make one of the two brokers see "tampering".
            checkpoint_witness_path=None,
            **overrides,
        ) as running,
    ):
        yield IsolatedBroker(running, db)
