"""SIGKILL under load: nothing a client received is missing from the ledger, no lease leaks.

A load generator keeps issuing database logins (alice, svc-orders: a lease each, intent row
before the mint) and KV reads (alice's stripe/test) against a real ``broker serve``
subprocess, which is killed with SIGKILL at random points and restarted on the same ledger.
Afterwards:
- every credential a client received (201) has its ``grant.issued`` row, same grant id and
  lease id ("leaked" counts those without);
- the chain verifies (``broker verify``);
- a broker with a short ``orphan_lease_sweep_seconds`` revokes every lease minted without a
  committed row, so OpenBao holds no database lease the ledger does not account for
  ("orphaned" counts those left).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.backends import vault_leases
from tests.support.brokers import start_broker
from tests.support.commands import broker_verify
from tests.support.heavy import HEAVY
from tests.support.http import post_credentials
from tests.support.ledger import count_events, head_seq, ledger_lease_ids, select_events
from tests.support.processes import start_replica
from tests.support.reliability_report import Row, record

pytestmark = pytest.mark.stack

_KILLS = 8 if HEAVY else 3
_CONCURRENCY = 8
# (who, secret): two leased database logins for every KV read.
_MIX = (("alice", "db/orders-ro"), ("svc-orders", "db/orders-ro"), ("alice", "stripe/test"))
_DB_PREFIXES = ("database/creds/orders-ro", "database/creds/orders-admin")
_RECONCILE_TIMEOUT = 60.0


@dataclass
class LoadState:
    url: str
    received: dict[str, dict[str, Any]] = field(default_factory=dict)  # grant id -> body
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: int = 0
    sent: int = 0
    stop: bool = False


async def _worker(state: LoadState, tokens: dict[str, str], http: aiohttp.ClientSession) -> None:
    rng = random.Random()
    while not state.stop:
        who, secret = rng.choice(_MIX)
        state.sent += 1
        try:
            async with post_credentials(
                http, state.url, tokens[who], secret, ttl="10m", reason="crash consistency"
            ) as r:
                state.statuses[r.status] += 1
                if r.status == 201:
                    body = await r.json()
                    state.received[body["id"]] = body
        except (aiohttp.ClientError, TimeoutError):
            # The broker died under us (or is restarting): what matters is what we got.
            state.connection_errors += 1
            await asyncio.sleep(0.05)


async def _unaccounted(stack: DevStack, dsn: str) -> list[str]:
    """Database leases OpenBao holds that no grant.issued row accounts for."""
    held: list[str] = []
    for prefix in _DB_PREFIXES:
        held += await vault_leases(stack.bao.addr, stack.bao.root_token, prefix)
    known = await ledger_lease_ids(dsn)
    return sorted(set(held) - known)


async def test_sigkill_under_load_leaks_nothing(
    stack: DevStack,
    broker_settings: Settings,
    tokens: dict[str, str],
    tmp_path: Path,
) -> None:
    dsn = broker_settings.database_url
    start_seq = await head_seq(dsn)

    rng = random.Random()
    timeout = aiohttp.ClientTimeout(total=20)
    kills = 0
    async with aiohttp.ClientSession(timeout=timeout) as http:
        proc = await start_replica(broker_settings, "crash-0", tmp_path)
        state = LoadState(proc.url)
        workers = [asyncio.create_task(_worker(state, tokens, http)) for _ in range(_CONCURRENCY)]
        try:
            for n in range(1, _KILLS + 1):
                # Random points: some kills land between a mint and its issued row.
                await asyncio.sleep(rng.uniform(1.5, 4.0))
                await proc.kill()
                kills += 1
                proc = await start_replica(broker_settings, f"crash-{n}", tmp_path)
                state.url = proc.url
            await asyncio.sleep(2.0)  # load on the last restart too
        finally:
            state.stop = True
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await proc.kill()
            kills += 1

    assert state.statuses[201] > 0, (state.statuses, proc.tail())
    unexpected = {s: n for s, n in state.statuses.items() if s not in (201, 503)}
    assert not unexpected, (unexpected, proc.tail())

    # Every credential received has its committed issued row: same grant, same lease.
    rows = await select_events(
        dsn,
        "event, grant_id::text AS grant_id, lease_id",
        "seq > $1 AND event IN ('grant.issued', 'grant.intent', 'lease.orphan_revoked')",
        start_seq,
    )
    issued = {r["grant_id"]: r["lease_id"] for r in rows if r["event"] == "grant.issued"}
    leaked = [
        gid for gid, body in state.received.items()
        if gid not in issued or issued[gid] != body["lease_id"]
    ]  # fmt: skip
    intents = {r["grant_id"] for r in rows if r["event"] == "grant.intent"}
    intents_without_issue = len(intents - set(issued))

    # Reconciliation: a broker sweeping every second revokes what was minted unrecorded.
    before = await _unaccounted(stack, dsn)
    reconciler = await start_broker(
        broker_settings.with_overrides(
            orphan_lease_sweep_seconds=1.0, replica_id="crash-reconciler"
        )
    )
    try:
        deadline = time.monotonic() + _RECONCILE_TIMEOUT
        left = await _unaccounted(stack, dsn)
        while left and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            left = await _unaccounted(stack, dsn)
    finally:
        await reconciler.runner.cleanup()

    orphan_rows = await count_events(dsn, "seq > $1 AND event = 'lease.orphan_revoked'", start_seq)

    run = await broker_verify(dsn, broker_settings)
    chain_ok = run.returncode == 0 and run.report.get("ok") is True

    record(
        Row(
            area="crash",
            kind="SIGKILL under issuance load, restart on the same ledger",
            requests=state.sent,
            faults=kills,
            leaked=len(leaked),
            chain="verified" if chain_ok else "tamper detected",
            orphaned=len(left),
            notes=(
                f"{state.statuses[201]} credentials received, {state.statuses[503]} 503,"
                f" {state.connection_errors} connection errors; {intents_without_issue}"
                f" intents with no issued row; {len(before)} unrecorded leases before"
                f" reconciliation, {orphan_rows} lease.orphan_revoked rows"
            ),
        )
    )
    assert not leaked, f"credentials without their ledger row: {leaked[:5]}"
    assert chain_ok, (run.report, run.stderr[-2000:])
    assert not left, f"leases with no ledger row after reconciliation: {left[:5]}"
