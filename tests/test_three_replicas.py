"""Three ``broker serve`` processes on one ledger and one OpenBao, under load.

Each replica is a real subprocess configured as in a deployment: a shared config file
(policies dir, intervals; relative paths from the file) plus secrets in the environment.
A load generator issues credentials round-robin and, like a client behind a Service,
retries on another replica after a connection error or a 503. During the load:

1. a policy change written to the shared policies directory reaches every replica (their
   ``/v1/me`` shows it, and each appends its own ``policy.loaded`` row for it);
2. one replica is stopped with SIGTERM (exit 0), and later another is SIGKILLed;
3. no client request fails: every one ends in a 201, possibly after retries.

Afterwards: one gapless chain that verifies; every 201 has exactly one ``grant.issued``
row (matched by grant id); the replicas that stopped gracefully issued nothing the client
was not told of. The SIGKILLed one may have committed a grant whose answer died with it
(then the client retried elsewhere): at most one per request in flight at the kill.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
from collections import Counter
from pathlib import Path

import aiohttp

from broker.settings import Settings
from tests.support.commands import broker_verify
from tests.support.http import auth, post_credentials
from tests.support.ledger import assert_gapless, head_seq, select_events
from tests.support.paths import REPO
from tests.support.polling import poll, until
from tests.support.processes import BrokerProcess, serve_env, serving, start_serve

_WORKERS = 12
_REPLICAS = ("tri-1", "tri-2", "tri-3")
_CONFIG = """\
# The replicas' shared configuration; secrets come from the environment.
policies_dir = "policies"
policy_reload_interval_seconds = 1
checkpoint_interval_seconds = 1
shutdown_grace_seconds = "10s"
log_format = "json"
"""


class Load:
    """Round-robin issuance with retry to the next replica, until ``stop`` is set."""

    def __init__(self, replicas: list[BrokerProcess], tokens: dict[str, str]) -> None:
        self.replicas = replicas
        self.tokens = tokens
        self.stop = asyncio.Event()
        self.received: dict[str, str] = {}  # grant id -> replica that answered 201
        self.failed: list[str] = []  # requests that never got a 201
        self.retries: Counter[str] = Counter()
        self._turn = itertools.count()

    def issued(self) -> int:
        return len(self.received)

    async def run(self, http: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self._worker(http, n) for n in range(_WORKERS)))

    async def _worker(self, http: aiohttp.ClientSession, n: int) -> None:
        secret = "db/orders-ro" if n % 3 == 0 else "stripe/test"
        who = ("alice", "bob", "dana")[n % 3]
        while not self.stop.is_set():
            await self._issue(http, secret, who)

    async def _issue(self, http: aiohttp.ClientSession, secret: str, who: str) -> None:
        first = next(self._turn)
        for attempt in range(3 * len(self.replicas)):
            replica = self.replicas[(first + attempt) % len(self.replicas)]
            try:
                async with post_credentials(
                    http, replica.url, self.tokens[who], secret, reason="three replicas"
                ) as r:
                    if r.status == 503:
                        self.retries["503"] += 1
                        continue
                    if r.status != 201:
                        self.failed.append(f"{replica.name}: {r.status} {await r.text()}")
                        return
                    grant_id = (await r.json())["id"]
                    assert grant_id not in self.received, "one grant id answered twice"
                    self.received[grant_id] = replica.name
                    return
            except aiohttp.ClientError as e:
                self.retries[type(e).__name__] += 1
                await asyncio.sleep(0.02)
        self.failed.append(f"{secret} for {who}: every replica refused")


async def _me(http: aiohttp.ClientSession, replica: BrokerProcess, token: str) -> dict[str, object]:
    async with http.get(f"{replica.url}/v1/me", headers=auth(token)) as r:
        assert r.status == 200, await r.text()
        body: dict[str, object] = await r.json()
        return body


def _max_ttl(me: dict[str, object], secret: str) -> int:
    requestable = me["requestable"]
    assert isinstance(requestable, list)
    return int(next(e["max_ttl"] for e in requestable if e["secret"] == secret))


async def test_three_replicas_under_load_with_policy_change_and_stops(
    broker_settings: Settings,
    tokens: dict[str, str],
    tmp_path: Path,
) -> None:
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    config = tmp_path / "broker.toml"
    config.write_text(_CONFIG)
    start_seq = await head_seq(broker_settings.database_url)

    def env(replica_id: str) -> dict[str, str]:
        e = serve_env(broker_settings, replica_id)
        del e["BROKER_POLICIES_DIR"]  # from the config file
        return e

    async with (
        serving([]) as procs,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
    ):
        started = await asyncio.gather(
            *(start_serve(env(r), r, tmp_path, "--config", str(config)) for r in _REPLICAS),
            return_exceptions=True,
        )
        procs.extend(p for p in started if isinstance(p, BrokerProcess))
        for p in started:
            if isinstance(p, BaseException):
                raise p
        r1, r2, r3 = procs
        old_version = (await _me(http, r1, tokens["alice"]))["policy_version"]
        assert _max_ttl(await _me(http, r1, tokens["alice"]), "stripe/test") == 3600

        load = Load(procs, tokens)
        load_task = asyncio.create_task(load.run(http))
        try:
            await until(lambda: load.issued() >= 40, "the first 40 grants")

            # 1. A policy change on the shared directory reaches every replica.
            roles = tmp_path / "policies" / "roles.yaml"
            text = roles.read_text()
            anchor = "      - stripe/test\n    max_ttl: 1h\n"
            assert text.count(anchor) == 1
            roles.write_text(text.replace(anchor, "      - stripe/test\n    max_ttl: 45m\n"))
            for replica in procs:
                me = await poll(
                    lambda replica=replica: _me(http, replica, tokens["alice"]),
                    lambda me: me["policy_version"] != old_version,
                    timeout=20,
                )
                assert me["policy_version"] != old_version, f"{replica.name} kept the old policy"
                assert _max_ttl(me, "stripe/test") == 45 * 60
            new_version = me["policy_version"]

            # 2. SIGTERM one replica mid-load: it drains and exits 0.
            before = load.issued()
            assert await r2.stop(signal.SIGTERM) == 0, r2.tail()
            await until(lambda: load.issued() >= before + 40, "40 more grants")

            # 3. SIGKILL another: its in-flight requests die with it; clients retry.
            before = load.issued()
            assert await r3.stop(signal.SIGKILL) == -signal.SIGKILL
            await until(lambda: load.issued() >= before + 40, "40 more grants")
        finally:
            load.stop.set()
            await load_task
        assert await r1.stop(signal.SIGTERM) == 0, r1.tail()

    assert not load.failed, f"{len(load.failed)} client requests failed: {load.failed[:5]}"
    answered = Counter(load.received.values())
    assert all(answered[r] > 0 for r in _REPLICAS), answered

    rows = await select_events(
        broker_settings.database_url,
        "seq, event, replica, policy_version, grant_id::text AS grant_id",
        "seq > $1",
        start_seq,
    )
    await assert_gapless(broker_settings.database_url)
    loaded = {
        r["replica"]
        for r in rows
        if r["event"] == "policy.loaded" and r["policy_version"] == new_version
    }
    assert loaded == set(_REPLICAS), f"policy.loaded for the new version from {loaded}"
    issued: dict[str, list[str]] = {}
    for r in rows:
        if r["event"] == "grant.issued":
            issued.setdefault(r["grant_id"], []).append(r["replica"])
    for grant_id, replica in load.received.items():
        assert issued.get(grant_id) == [replica], (grant_id, replica, issued.get(grant_id))
    unanswered = Counter(issued[g][0] for g in set(issued) - set(load.received))
    # Graceful replicas: ledger == what clients were told. The killed one: at most one
    # lost answer per request that can have been in flight.
    assert unanswered["tri-1"] == unanswered["tri-2"] == 0, unanswered
    assert unanswered["tri-3"] <= _WORKERS, unanswered
    stopped = {r["replica"] for r in rows if r["event"] == "broker.stopped"}
    assert stopped == {"tri-1", "tri-2"}  # the SIGKILLed replica could not say goodbye

    run = await broker_verify(broker_settings.database_url, broker_settings)
    assert run.returncode == 0 and run.report["ok"] is True, (run.report, run.stderr[-2000:])
    print(
        f"three replicas: {len(load.received)} grants answered {dict(answered)},"
        f" retries {dict(load.retries)}, unanswered-but-ledgered {dict(unanswered)}"
    )
