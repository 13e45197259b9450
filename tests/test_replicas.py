"""Two broker processes on one ledger: the chain stays single, gapless and verifiable.

Each replica is a real ``broker serve`` subprocess configured only through its environment,
as in a deployment; both write the session's ``broker`` database concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp
import asyncpg

from broker.settings import Settings
from tests.support.commands import broker_verify, subprocess_env
from tests.support.paths import BROKER_BIN

_REQUESTS = 200
_CONCURRENCY = 16
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 20.0


@dataclass
class Replica:
    replica_id: str
    url: str
    proc: asyncio.subprocess.Process
    log: Path


def _env(settings: Settings, replica_id: str) -> dict[str, str]:
    assert settings.vault_token and settings.dev_issuer_key_path
    return subprocess_env(
        BROKER_DATABASE_URL=settings.database_url,
        VAULT_ADDR=settings.vault_addr,
        VAULT_TOKEN=settings.vault_token,
        BROKER_POLICIES_DIR=str(settings.policies_dir),
        BROKER_CHECKPOINT_KEY=str(settings.checkpoint_key_path),
        BROKER_DEV_ISSUER_KEY=str(settings.dev_issuer_key_path),
        BROKER_LEDGER_ORIGIN=settings.ledger_origin,
        BROKER_REPLICA_ID=replica_id,
        BROKER_PORT="0",
        BROKER_CHECKPOINT_INTERVAL="1",
    )


async def _start(settings: Settings, replica_id: str, log_dir: Path) -> Replica:
    log = log_dir / f"{replica_id}.log"
    stderr: IO[bytes]
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            str(BROKER_BIN),
            "serve",
            env=_env(settings, replica_id),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    replica = Replica(replica_id, "", proc, log)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(_START_TIMEOUT):
            while True:
                line = await proc.stdout.readline()
                if not line:
                    raise AssertionError(
                        f"{replica_id} exited before listening:\n{log.read_text()[-3000:]}"
                    )
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    if isinstance(doc, dict) and "listening" in doc:
                        replica.url = str(doc["listening"])
                        return replica
    except BaseException:
        await _kill(replica)
        raise


async def _kill(replica: Replica) -> None:
    if replica.proc.returncode is None:
        replica.proc.kill()
    await replica.proc.wait()


@contextlib.asynccontextmanager
async def _replicas(settings: Settings, log_dir: Path) -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for replica_id in ("r1", "r2"):
            started.append(await _start(settings, replica_id, log_dir))
        yield started
    finally:
        for replica in started:
            await _kill(replica)


async def test_two_replicas_share_one_chain(
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    conn = await asyncpg.connect(broker_settings.database_url, timeout=10)
    try:
        start_seq = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM ledger.events")
    finally:
        await conn.close()

    async with _replicas(broker_settings, tmp_path) as replicas:
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

        async def issue(replica: Replica, secret: str, who: str) -> None:
            async with (
                gate,
                http.post(
                    f"{replica.url}/v1/credentials",
                    json={"secret": secret, "reason": "replica test"},
                    headers={"Authorization": f"Bearer {tokens[who]}"},
                ) as r,
            ):
                statuses[r.status] += 1
                if r.status == 201:
                    body = await r.json()
                    assert body["id"] not in grants
                    grants[body["id"]] = (replica.replica_id, secret)

        await asyncio.gather(*(issue(*p) for p in plan))
        assert statuses == Counter({201: _REQUESTS}), statuses

        # Graceful stop: SIGTERM, a clean exit, and a broker.stopped row from each.
        for replica in replicas:
            replica.proc.send_signal(signal.SIGTERM)
        for replica in replicas:
            try:
                code = await asyncio.wait_for(replica.proc.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                raise AssertionError(
                    f"{replica.replica_id} ignored SIGTERM:\n{replica.log.read_text()[-3000:]}"
                ) from None
            assert code == 0, f"{replica.replica_id}: {replica.log.read_text()[-3000:]}"

    conn = await asyncpg.connect(broker_settings.database_url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT seq, event, replica, grant_id::text AS grant_id, secret"
            " FROM ledger.events WHERE seq > $1 ORDER BY seq",
            start_seq,
        )
        all_seqs = [r["seq"] for r in await conn.fetch("SELECT seq FROM ledger.events ORDER BY 1")]
    finally:
        await conn.close()

    assert all_seqs == list(range(1, len(all_seqs) + 1)), "ledger seqs are not gapless"
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
    assert replicas_seen >= {"r1", "r2"}
    stopped = {r["replica"] for r in rows if r["event"] == "broker.stopped"}
    started = {r["replica"] for r in rows if r["event"] == "broker.started"}
    assert {"r1", "r2"} <= stopped and {"r1", "r2"} <= started
    # Both replicas' rows interleave in one chain (not two runs of one replica each).
    switches = sum(1 for a, b in itertools.pairwise(rows) if a["replica"] != b["replica"])
    assert switches > 2

    run = await broker_verify(broker_settings.database_url, broker_settings)
    assert run.returncode == 0, (run.report, run.stderr[-2000:])
    assert run.report["ok"] is True and run.report["checkpoints"] >= 1
