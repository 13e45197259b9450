"""Hot reload: a valid change becomes active and is ledgered; a broken file never replaces it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp

from broker.settings import Settings
from broker.web.keys import LEDGER, POLICY
from tests.support.brokers import start_broker
from tests.support.paths import REPO
from tests.support.polling import until


async def test_reload_applies_valid_and_refuses_invalid(
    broker_settings: Settings, tokens: dict[str, str], tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    running = await start_broker(
        broker_settings.with_overrides(
            policies_dir=policies, policy_reload_interval_seconds=0.2, replica_id="reload-test"
        )
    )
    try:
        active = running.app[POLICY]
        first = active.current.version
        roles = policies / "roles.yaml"
        good = roles.read_text()

        # A broken file: the old version stays active.
        roles.write_text(good + "\n  - name: broken\n    bogus_key: 1\n")
        await asyncio.sleep(1.0)
        assert active.current.version == first

        # A valid change: carol (auditors) may now read stripe/test.
        roles.write_text(
            good
            + "\n  - name: auditors-test-key\n    members: {groups: [auditors]}\n"
            + "    secrets: [stripe/test]\n    max_ttl: 5m\n"
        )
        await until(lambda: active.current.version != first, "the valid policy", timeout=10)
        second = active.current.version
        row = await running.app[LEDGER].pool.fetchrow(
            "SELECT e.seq, v.documents FROM ledger.events e"
            " JOIN ledger.policy_versions v ON v.version = e.policy_version"
            " WHERE e.event = 'policy.loaded' AND e.policy_version = $1",
            second,
        )
        assert row is not None
        assert "auditors-test-key" in row["documents"]["roles.yaml"]

        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{running.url}/v1/credentials",
                json={"secret": "stripe/test"},
                headers={"Authorization": f"Bearer {tokens['carol']}"},
            ) as r,
        ):
            assert r.status == 201, await r.text()
            assert (await r.json())["policy_version"] == second
    finally:
        await running.runner.cleanup()
