"""Two broker processes on one ledger: the chain stays single, gapless and verifiable.

Each replica is a real ``broker serve`` subprocess configured only through its environment,
as in a deployment; both write the session's ``broker`` database concurrently.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from pathlib import Path

import aiohttp

from broker.settings import Settings
from tests.support.commands import broker_verify
from tests.support.http import post_credentials
from tests.support.ledger import assert_gapless, head_seq, select_events
from tests.support.processes import BrokerProcess, serving, start_replica

_REQUESTS = 200
_CONCURRENCY = 16
_REPLICAS = ("r1", "r2")


async def _contention(http: aiohttp.ClientSession, replica: BrokerProcess) -> tuple[int, int]:
    """(locked batches, conflicts) from the replica's /metrics."""
    async with http.get(f"{replica.url}/metrics") as r:
        text = await r.text()
    values = {
        name: float(value)
        for name, value in (
            line.rsplit(" ", 1) for line in text.splitlines() if line[:1] not in ("#", "")
        )
    }
    return (
        int(values["broker_ledger_locked_batches_total"]),
        int(values["broker_ledger_conflicts_total"]),
    )


async def test_two_replicas_share_one_chain(
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    start_seq = await head_seq(broker_settings.database_url)

    async with serving([]) as replicas:
        for replica_id in _REPLICAS:
            replicas.append(await start_replica(broker_settings, replica_id, tmp_path))
        plan = list(
            itertools.islice(
                zip(
                    itertools.cycle(replicas),
                    itertools.cycle(["stripe/test", "db/orders-ro", "db/orders-ro", "stripe/test"]),
                    itertools.cycle(["alice", "bob", "dana"]),
                    strict=False,
                ),
                _REQUESTS,
            )
        )
        gate = asyncio.Semaphore(_CONCURRENCY)
        statuses: Counter[int] = Counter()
        grants: dict[str, tuple[str, str]] = {}

        async def issue(replica: BrokerProcess, secret: str, who: str) -> None:
            async with (
                gate,
                post_credentials(
                    http, replica.url, tokens[who], secret, reason="replica test"
                ) as r,
            ):
                statuses[r.status] += 1
                if r.status == 201:
                    body = await r.json()
                    assert body["id"] not in grants
                    grants[body["id"]] = (replica.name, secret)

        await asyncio.gather(*(issue(*p) for p in plan))
        assert statuses == Counter({201: _REQUESTS}), statuses

        # Contention is visible: each writer started on the locked path (head unknown),
        # and the first batch a writer chained on its own stale head after the other
        # replica's rows was refused by the database and redone under the lock.
        contention = [await _contention(http, replica) for replica in replicas]
        assert all(locked >= 1 for locked, _ in contention), contention
        assert sum(conflicts for _, conflicts in contention) >= 1, contention

        # Graceful stop: SIGTERM to both, a clean exit, and a broker.stopped row from each.
        codes = await asyncio.gather(*(replica.stop() for replica in replicas))
        for replica, code in zip(replicas, codes, strict=True):
            assert code == 0, f"{replica.name}: {replica.tail()}"

    rows = await select_events(
        broker_settings.database_url,
        "seq, event, replica, grant_id::text AS grant_id, secret",
        "seq > $1",
        start_seq,
    )
    await assert_gapless(broker_settings.database_url)
    issued = Counter(r["grant_id"] for r in rows if r["event"] == "grant.issued")
    for grant_id, (replica_id, secret) in grants.items():
        assert issued[grant_id] == 1, (grant_id, issued[grant_id])
        row = next(r for r in rows if r["grant_id"] == grant_id and r["event"] == "grant.issued")
        assert (row["replica"], row["secret"]) == (replica_id, secret)
    assert not [g for g, n in issued.items() if n > 1], "duplicate grant.issued rows"
    # Leased engines wrote their intent first, on the same replica.
    intents = Counter(r["grant_id"] for r in rows if r["event"] == "grant.intent")
    for grant_id, (_, secret) in grants.items():
        assert intents[grant_id] == (1 if secret.startswith("db/") else 0), grant_id
    replicas_seen = {r["replica"] for r in rows if r["event"] == "grant.issued"}
    assert replicas_seen >= set(_REPLICAS)
    stopped = {r["replica"] for r in rows if r["event"] == "broker.stopped"}
    started = {r["replica"] for r in rows if r["event"] == "broker.started"}
    assert set(_REPLICAS) <= stopped and set(_REPLICAS) <= started
    # Both replicas' rows interleave in one chain (not two runs of one replica each).
    switches = sum(1 for a, b in itertools.pairwise(rows) if a["replica"] != b["replica"])
    assert switches > 2

    run = await broker_verify(broker_settings.database_url, broker_settings)
    assert run.returncode == 0, (run.report, run.stderr[-2000:])
    assert run.report["ok"] is True and run.report["checkpoints"] >= 1
