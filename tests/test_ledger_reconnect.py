"""The ledger writer survives its database connection being ended while idle.

Found by the full suite: after the server ended the writer's kept connection, the next
batch failed whole (its callers got 503) before the writer took a new one.
"""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import pytest

from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.brokers import start_broker
from tests.support.http import auth
from tests.support.ledger_db import fresh_ledger_db

pytestmark = pytest.mark.stack


async def test_issuance_after_the_writer_connection_was_terminated(
    stack: DevStack,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "reconnect") as db:
        running = await start_broker(
            broker_settings.with_overrides(database_url=db.writer_dsn, checkpoint_witness_path=None)
        )
        try:
            body = {"secret": "stripe/test"}
            async with http.post(
                f"{running.url}/v1/credentials", json=body, headers=auth(tokens["alice"])
            ) as r:
                assert r.status == 201
            admin = await asyncpg.connect(db.superuser_dsn, timeout=5)
            try:
                ended = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = $1 AND pid <> pg_backend_pid()",
                    db.name,
                )
            finally:
                await admin.close()
            assert ended >= 1
            await asyncio.sleep(0.5)
            for _ in range(3):
                async with http.post(
                    f"{running.url}/v1/credentials", json=body, headers=auth(tokens["alice"])
                ) as r:
                    assert r.status == 201, await r.text()
        finally:
            await running.runner.cleanup()
