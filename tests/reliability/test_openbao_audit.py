"""OpenBao's own audit log against the ledger: every lease minted is accounted for, both ways.

OpenBao refuses to enable audit devices over the API (declarative only), so this test runs
an OpenBao of its own with a file audit device in its config (``DevOpenBao(audit_device=)``),
provisioned with the demo engines against the session Postgres, and a broker on it writing
the session ledger. After a burst of issuances:
- every database lease the audit log shows OpenBao minting has a ``grant.issued`` row, and
- every ``grant.issued`` row with a lease has its lease in the audit log.
OpenBao logs lease ids as they are, and the credential itself HMAC'd: the test asserts
that no password is in the log in the clear, and matches each ledger row's recorded
username to the logged (HMAC'd) one through ``sys/audit-hash/<device>``. (Provisioning
rotates the Vault admin's Postgres password, so the session OpenBao is re-provisioned
afterwards.)
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.settings import Settings
from broker.stack.demo import provision_demo
from broker.stack.devstack import DevStack
from broker.stack.openbao import DevOpenBao
from tests.support.brokers import start_broker
from tests.support.ledger import ledger_rows
from tests.support.reliability_report import Row, record

pytestmark = pytest.mark.stack

_BURST = 60
_CONCURRENCY = 8
_MIX = (("alice", "db/orders-ro"), ("svc-orders", "db/orders-ro"), ("bob", "db/orders-ro"),
        ("alice", "stripe/test"))  # fmt: skip


def _minted_leases(audit_log: Path) -> dict[str, dict[str, str]]:
    """Lease id -> logged credential (``username``/``password`` as logged) for every
    database credential OpenBao handed out."""
    leases = {}
    for line in audit_log.read_text().splitlines():
        entry: dict[str, Any] = json.loads(line)
        if entry.get("type") != "response":
            continue
        path = entry.get("request", {}).get("path", "")
        response = entry.get("response", {})
        lease = (response.get("secret") or {}).get("lease_id")
        if path.startswith("database/creds/") and lease:
            leases[str(lease)] = dict(response.get("data") or {})
    return leases


async def _audit_hash(http: aiohttp.ClientSession, bao: DevOpenBao, value: str) -> str:
    async with http.post(
        f"{bao.addr}/v1/sys/audit-hash/{bao.audit_device}",
        json={"input": value},
        headers={"X-Vault-Token": bao.root_token},
    ) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["data"]["hash"])


async def test_audit_device_and_ledger_agree(
    stack: DevStack, broker_settings: Settings, tokens: dict[str, str]
) -> None:
    state = Path(tempfile.mkdtemp(prefix="jitbroker-audit-"))
    bao = DevOpenBao(state, audit_device="ledgercheck")
    replica = f"audit-{uuid.uuid4().hex[:8]}"
    statuses: Counter[int] = Counter()
    try:
        await asyncio.to_thread(bao.start)
        await asyncio.to_thread(provision_demo, bao.addr, bao.root_token, stack.pg)
        broker = await start_broker(
            broker_settings.with_overrides(
                vault_addr=bao.addr, vault_token=bao.root_token, replica_id=replica
            )
        )
        try:
            gate = asyncio.Semaphore(_CONCURRENCY)
            async with aiohttp.ClientSession() as http:

                async def issue(i: int) -> None:
                    who, secret = _MIX[i % len(_MIX)]
                    async with (
                        gate,
                        http.post(
                            f"{broker.url}/v1/credentials",
                            json={"secret": secret, "ttl": "10m", "reason": "audit check"},
                            headers={"Authorization": f"Bearer {tokens[who]}"},
                        ) as r,
                    ):
                        statuses[r.status] += 1

                await asyncio.gather(*(issue(i) for i in range(_BURST)))
        finally:
            await broker.runner.cleanup()

        rows = await ledger_rows(
            stack, "replica = $1 AND event = 'grant.issued' AND lease_id IS NOT NULL", replica
        )
        ledger_leases = {r["lease_id"]: r["body"]["username"] for r in rows}
        minted = _minted_leases(bao.audit_log)
        unrecorded = set(minted) - set(ledger_leases)  # minted, no ledger row
        unaudited = set(ledger_leases) - set(minted)  # ledgered, never minted (per OpenBao)
        clear = [c for c in minted.values() if not c["password"].startswith("hmac-sha256:")]
        async with aiohttp.ClientSession() as http:
            other_user = [
                lease
                for lease, username in ledger_leases.items()
                if lease in minted
                and await _audit_hash(http, bao, username) != minted[lease]["username"]
            ]
    finally:
        await asyncio.to_thread(bao.stop)
        shutil.rmtree(state, ignore_errors=True)  # the audit log goes with it
        # Provisioning rotated the Vault admin's password: give the session OpenBao the new one.
        await asyncio.to_thread(stack.reprovision)

    db_requests = sum(1 for i in range(_BURST) if _MIX[i % len(_MIX)][1].startswith("db/"))
    record(
        Row(
            area="audit-device",
            kind="OpenBao file audit log vs ledger (database leases)",
            requests=_BURST,
            leaked=len(unrecorded),
            orphaned=len(unrecorded),
            notes=(
                f"{len(minted)} leases in OpenBao's audit log, {len(ledger_leases)} grant.issued"
                f" rows with a lease; {len(unrecorded)} minted without a row,"
                f" {len(unaudited)} rows without a mint; {len(other_user)} username"
                f" mismatches (via sys/audit-hash); {len(clear)} passwords logged in clear;"
                f" answers {dict(statuses)}"
            ),
        )
    )
    assert statuses == Counter({201: _BURST}), statuses
    assert len(minted) == len(ledger_leases) == db_requests, (len(minted), len(ledger_leases))
    assert not clear, "OpenBao logged a database password in the clear"
    assert not other_user, f"ledger usernames disagree with OpenBao's: {other_user[:3]}"
    assert not unrecorded, f"{len(unrecorded)} leases minted without a ledger row"
    assert not unaudited, f"{len(unaudited)} ledger leases OpenBao never minted"
