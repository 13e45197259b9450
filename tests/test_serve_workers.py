"""``broker serve --workers N``: one supervisor, N replicas on the sockets it bound.

Each test starts a real ``broker serve --workers 2`` on the session stack (configured
through its environment, as a deployment is) and ends every process it started, workers
included, whatever happens. Which worker answered a request is read from the ledger: the
``replica`` column of its ``grant.issued`` row (``<replica_id>-w<i>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.settings import Settings
from broker.tls.devca import DevCA
from tests.support.commands import broker_verify, run_broker, subprocess_env
from tests.support.http import post_credentials
from tests.support.ledger import assert_gapless, select_events
from tests.support.polling import until
from tests.support.processes import BrokerProcess, serve_env, start_serve
from tests.support.tokens import fresh_subject, mint

_WORKERS = 2
_BATCH = 8  # concurrent requests, each on a new connection, so both workers get some
_MAX_BATCHES = 25


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.asynccontextmanager
async def _supervisor(
    settings: Settings, replica_id: str, log_dir: Path, **env: str
) -> AsyncIterator[tuple[BrokerProcess, list[int]]]:
    """``broker serve --workers 2``, its worker pids; every one of them SIGKILLed at exit."""
    supervisor = await start_serve(
        serve_env(settings, replica_id, BROKER_SHUTDOWN_GRACE="5", **env),
        replica_id,
        log_dir,
        "--workers",
        str(_WORKERS),
    )
    pids = [int(pid) for pid in supervisor.ready.get("workers", [])]
    try:
        assert len(pids) == _WORKERS, supervisor.ready
        yield supervisor, pids
    finally:
        await supervisor.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _issued_by_worker(exposition: str) -> dict[str, float]:
    """``broker_issuances_total`` of issued stripe/test credentials, by ``worker`` label."""
    return {
        s.labels["worker"]: s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == "broker_issuances_total"
        and s.labels.get("outcome") == "issued"
        and s.labels.get("secret") == "stripe/test"
    }


async def _wait_gone(pids: list[int], timeout: float = 20.0) -> None:
    await until(lambda: not any(_alive(p) for p in pids), "the workers to exit", timeout=timeout)


async def test_workers_share_the_listeners_and_one_chain(
    broker_settings: Settings, tmp_path: Path
) -> None:
    replica = fresh_subject("workers")
    token = mint(broker_settings, fresh_subject("workers-engineer"), ["engineering"])
    dsn = broker_settings.database_url
    grants: set[str] = set()
    statuses: Counter[int] = Counter()

    async with _supervisor(broker_settings, replica, tmp_path, BROKER_VAULT_API_PORT="0") as (
        supervisor,
        pids,
    ):
        # One port chosen once (port 0) for each listener, shared by both workers.
        assert supervisor.vault_api_url and supervisor.vault_api_url != supervisor.url
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection per request
        async with aiohttp.ClientSession(connector=connector) as http:

            async def issue() -> None:
                async with post_credentials(
                    http, supervisor.url, token, "stripe/test", reason="workers test"
                ) as r:
                    statuses[r.status] += 1
                    if r.status == 201:
                        grants.add((await r.json())["id"])

            answered: set[str] = set()
            for _ in range(_MAX_BATCHES):
                await asyncio.gather(*(issue() for _ in range(_BATCH)))
                rows = await select_events(
                    dsn, "replica", "event = 'grant.issued' AND replica LIKE $1", f"{replica}-w%"
                )
                answered = {r["replica"] for r in rows}
                if len(answered) == _WORKERS:
                    break
            assert answered == {f"{replica}-w{i}" for i in range(_WORKERS)}, answered
            async with http.get(f"{supervisor.vault_api_url}/v1/sys/health") as r:
                assert r.status == 200, await r.text()
            # /metrics, whichever worker answers, has every worker's issuances (the other
            # worker's as of its last publication, at most a second old).
            scrapes: list[dict[str, float]] = []

            async def scraped_all() -> bool:
                async with http.get(f"{supervisor.url}/metrics") as r:
                    assert r.status == 200
                    scrapes.append(_issued_by_worker(await r.text()))
                return sum(scrapes[-1].values()) == len(grants)

            for _ in range(40):
                if await scraped_all():
                    break
                await asyncio.sleep(0.1)
            assert sorted(scrapes[-1]) == [str(i) for i in range(_WORKERS)], scrapes[-1]
            assert sum(scrapes[-1].values()) == len(grants), scrapes
            for _ in range(6):  # new connections: both workers answer, none sees fewer
                assert await scraped_all(), scrapes[-1]

        assert await supervisor.stop() == 0, supervisor.tail()
        assert not [p for p in pids if _alive(p)], "a worker outlived its supervisor"

    assert statuses == Counter({201: len(grants)}), statuses
    rows = await select_events(
        dsn, "event, replica, grant_id::text AS grant_id", "replica LIKE $1", f"{replica}-w%"
    )
    issued = Counter(r["grant_id"] for r in rows if r["event"] == "grant.issued")
    assert set(issued) == grants and set(issued.values()) == {1}, "a 201 without its one row"
    workers = {f"{replica}-w{i}" for i in range(_WORKERS)}
    for event in ("broker.started", "broker.stopped"):
        assert {r["replica"] for r in rows if r["event"] == event} == workers, event
    await assert_gapless(dsn)
    run = await broker_verify(dsn, broker_settings)
    assert run.returncode == 0 and run.report["ok"] is True, (run.report, run.stderr[-2000:])


async def test_a_worker_that_dies_stops_the_supervisor(
    broker_settings: Settings, tmp_path: Path
) -> None:
    async with _supervisor(broker_settings, fresh_subject("workers-crash"), tmp_path) as (
        supervisor,
        pids,
    ):
        os.kill(pids[0], signal.SIGKILL)
        code = await asyncio.wait_for(supervisor.proc.wait(), 30)
        assert code == 1, supervisor.tail()
        assert "worker 0" in supervisor.tail() and "stopping the others" in supervisor.tail()
        assert not _alive(pids[1])


async def test_workers_stop_when_the_supervisor_is_killed(
    broker_settings: Settings, tmp_path: Path
) -> None:
    replica = fresh_subject("workers-orphan")
    async with _supervisor(broker_settings, replica, tmp_path) as (supervisor, pids):
        await supervisor.kill()  # SIGKILL: it cannot tell the workers anything
        await _wait_gone(pids)
    # They stopped gracefully, as on SIGTERM: each appended its broker.stopped row.
    rows = await select_events(
        broker_settings.database_url,
        "replica",
        "event = 'broker.stopped' AND replica LIKE $1",
        f"{replica}-w%",
    )
    assert len(rows) == _WORKERS, rows


async def test_a_console_sign_in_holds_on_every_worker(
    broker_settings: Settings, tmp_path: Path
) -> None:
    """No ``console_key_path``: the workers still share one cookie key (the supervisor's)."""
    replica = fresh_subject("workers-console")
    env = {"BROKER_CONSOLE_DEV_SIGN_IN": "true"}
    async with (
        _supervisor(broker_settings, replica, tmp_path, **env) as (supervisor, _),
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # cookies for 127.0.0.1
        ) as http,
    ):
        async with http.post(
            f"{supervisor.url}/console/login/dev",
            data={"identity": "erin"},
            headers={"Origin": supervisor.url},
            allow_redirects=False,
        ) as r:
            assert r.status in (302, 303), await r.text()

        async def home() -> int:
            async with http.get(f"{supervisor.url}/console/", allow_redirects=False) as r:
                return r.status

        statuses = Counter(
            [s for _ in range(4) for s in await asyncio.gather(*(home() for _ in range(_BATCH)))]
        )
        assert await supervisor.stop() == 0, supervisor.tail()
    assert statuses == Counter({200: 4 * _BATCH}), statuses
    # Both workers served the signed-in page (their access lines say which one did).
    served = {
        line["replica"]
        for line in map(json.loads, supervisor.log.read_text().splitlines())
        if line.get("path") == "/console/" and line.get("status") == 200
    }
    assert served == {f"{replica}-w{i}" for i in range(_WORKERS)}, served


async def test_every_worker_serves_tls_on_both_listeners(
    broker_settings: Settings, tmp_path: Path
) -> None:
    ca = DevCA.load_or_create(tmp_path / "ca")
    issued = ca.issue("server", ["127.0.0.1"], directory=tmp_path / "serving")
    replica = fresh_subject("workers-tls")
    tls = {
        "BROKER_TLS_CERT_FILE": str(issued.cert_path),
        "BROKER_TLS_KEY_FILE": str(issued.key_path),
        "BROKER_VAULT_API_PORT": "0",
    }
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    async with (
        _supervisor(broker_settings, replica, tmp_path, **tls) as (supervisor, _),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, ssl=client)) as http,
    ):
        assert supervisor.url.startswith("https://") and supervisor.vault_api_url.startswith(
            "https://"
        )

        async def live() -> str:
            async with http.get(f"{supervisor.url}/v1/health/live") as r:
                assert r.status == 200, await r.text()
                return str((await r.json())["replica"])

        answered: set[str] = set()
        for _ in range(_MAX_BATCHES):
            answered |= set(await asyncio.gather(*(live() for _ in range(_BATCH))))
            if len(answered) == _WORKERS:
                break
        assert answered == {f"{replica}-w{i}" for i in range(_WORKERS)}, answered
        async with http.get(f"{supervisor.vault_api_url}/v1/sys/health") as r:
            assert r.status == 200, await r.text()
        assert await supervisor.stop() == 0, supervisor.tail()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--workers", "0"], {}, "argument --workers: must be 1-64, got 0"),
        (["--workers", "two"], {}, "argument --workers: must be an integer, got 'two'"),
        ([], {"BROKER_WORKERS": "0"}, "BROKER_WORKERS must be 1-64, got 0"),
    ],
)
async def test_worker_count_is_checked(args: list[str], env: dict[str, str], message: str) -> None:
    run = await run_broker("serve", *args, env=subprocess_env(**env))
    assert run.returncode == 2, run
    assert message in run.stderr, run.stderr
