"""End-to-end smoke test: the demo identities get what policy gives them, through HTTP."""

from __future__ import annotations

import aiohttp

from tests.support.brokers import RunningBroker
from tests.support.http import auth, issue


async def test_health_and_me(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{broker.url}/v1/health") as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["checks"] == {"vault": "ok", "ledger": "ok"}
    async with http.get(f"{broker.url}/v1/me", headers=auth(tokens["alice"])) as r:
        me = await r.json()
    assert me["subject"] == "alice"
    assert "engineering" in me["roles"]
    assert {s["secret"] for s in me["requestable"]} >= {"db/orders-ro", "stripe/test"}


async def test_kv_issue_and_list(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    grant = await issue(http, broker.url, tokens["alice"], "stripe/test", reason="smoke")
    assert grant["credential"]["data"]["api_key"].startswith("sk_test_")
    async with http.get(f"{broker.url}/v1/grants?active=true", headers=auth(tokens["alice"])) as r:
        ids = [g["id"] for g in (await r.json())["grants"]]
    assert grant["id"] in ids
