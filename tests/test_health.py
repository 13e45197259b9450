"""Readiness follows the dependencies; liveness does not (no restart storm in an outage)."""

from __future__ import annotations

import aiohttp
import pytest

from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.vault_proxy import broker_behind_proxy

pytestmark = pytest.mark.stack


async def test_vault_outage_fails_readiness_not_liveness(
    stack: DevStack, broker_settings: Settings, http: aiohttp.ClientSession
) -> None:
    async with broker_behind_proxy(stack, broker_settings, "health") as (running, proxy):
        async with http.get(f"{running.url}/v1/health") as r:
            assert r.status == 200
        proxy.upstream = "http://127.0.0.1:9"  # Vault unreachable from the broker
        async with http.get(f"{running.url}/v1/health") as r:
            body = await r.json()
            assert r.status == 503 and body["checks"]["vault"] == "unavailable"
        async with http.get(f"{running.url}/v1/health/live") as r:
            body = await r.json()
            assert r.status == 200 and body["status"] == "alive"
