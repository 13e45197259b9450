"""Orphan leases: a lease Vault minted without a committed ledger row gets revoked.

Simulates a replica that died between minting and committing its ``grant.issued`` row by
minting directly in OpenBao, then runs the broker's reconciliation.
"""

from __future__ import annotations

import aiohttp
import asyncpg
import hvac
import pytest

from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.web.keys import GRANTS, LEDGER
from tests.support.brokers import RunningBroker, running_broker
from tests.support.http import issue

pytestmark = pytest.mark.stack


async def test_orphan_lease_is_revoked_after_two_sweeps(
    broker_settings: Settings, stack: DevStack
) -> None:
    # A broker of its own whose background sweep never runs here: the session broker's,
    # due at any moment, could make the lease a suspect between the mint and the first
    # sweep below, which would then revoke it.
    async with running_broker(broker_settings, orphan_lease_sweep_seconds=3600) as broker:
        await _orphan_revoked_after_two_sweeps(broker, stack)


async def _orphan_revoked_after_two_sweeps(broker: RunningBroker, stack: DevStack) -> None:
    client = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token)
    minted = client.secrets.database.generate_credentials("orders-ro", mount_point="database")
    lease_id = minted["lease_id"]
    username = minted["data"]["username"]
    password = minted["data"]["password"]
    conn = await asyncpg.connect(
        host="127.0.0.1", port=stack.pg.port, user=username, password=password, database="orders"
    )
    await conn.close()

    grants = broker.app[GRANTS]
    await grants.reconcile_orphan_leases()  # first sighting: only a suspect
    lookup = client.sys.read_lease(lease_id)
    assert lookup["data"]["id"] == lease_id, "must not revoke on first sighting"
    revoked = await grants.reconcile_orphan_leases()
    assert revoked >= 1

    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host="127.0.0.1",
            port=stack.pg.port,
            user=username,
            password=password,
            database="orders",
        )
    row = await broker.app[LEDGER].pool.fetchrow(
        "SELECT event, outcome FROM ledger.events WHERE lease_id = $1", lease_id
    )
    assert row is not None and row["event"] == "lease.orphan_revoked"


async def test_ledgered_lease_is_not_an_orphan(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    grant = await issue(http, broker.url, tokens["alice"], "db/orders-ro")
    grants = broker.app[GRANTS]
    await grants.reconcile_orphan_leases()
    await grants.reconcile_orphan_leases()
    row = await broker.app[LEDGER].pool.fetchval(
        "SELECT count(*) FROM ledger.events WHERE lease_id = $1 AND event = 'lease.orphan_revoked'",
        grant["lease_id"],
    )
    assert row == 0


async def test_an_orphan_whose_role_is_gone_is_dropped_and_the_sweep_goes_on(
    broker: RunningBroker, stack: DevStack
) -> None:
    """Two revocations at once (or a role dropped by hand) leave Vault a lease it cannot
    revoke: "role ... does not exist". Vault would keep it forever and every sweep would
    stop at it; the broker drops it (revoke-force: nothing is left to revoke) and goes on
    with the other orphans."""
    client = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token)
    broken = client.secrets.database.generate_credentials("orders-ro", mount_point="database")
    healthy = client.secrets.database.generate_credentials("orders-ro", mount_point="database")
    admin = await asyncpg.connect(stack.superuser_dsn("orders"))
    try:
        await admin.execute(f'DROP ROLE "{broken["data"]["username"]}"')
    finally:
        await admin.close()
    grants = broker.app[GRANTS]
    await grants.reconcile_orphan_leases()  # first sighting
    await grants.reconcile_orphan_leases()
    for minted in (broken, healthy):
        with pytest.raises(hvac.exceptions.InvalidRequest):
            client.sys.read_lease(minted["lease_id"])
    rows = {
        r["lease_id"]: r["body"]
        for r in await broker.app[LEDGER].pool.fetch(
            "SELECT lease_id, body FROM ledger.events WHERE event = 'lease.orphan_revoked'"
            " AND lease_id = ANY($1::text[])",
            [broken["lease_id"], healthy["lease_id"]],
        )
    }
    assert "forced" in rows[broken["lease_id"]]
    assert "forced" not in rows[healthy["lease_id"]]
