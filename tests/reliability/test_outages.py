"""Postgres and OpenBao down or slow under load: 503, nothing issued, recovery without restart.

The broker under test talks to the session's real Postgres and OpenBao through ``TcpProxy``
sockets; cutting a proxy is the server vanishing (resets, refused connects), a delaying
proxy is a slow server. The shared servers themselves are never stopped (other tests use
them). The broker is in-process so each limit (commit timeout, queue bound) is a setting;
its RSS is therefore this process's.

Invariants checked:
- no 201 for a request sent while a dependency was cut and answered before it came back;
- every refusal is a 503 JSON error (``ledger_unavailable`` / ``vault_unavailable``), never
  a 500 or a hang;
- once the dependency is back, the same broker issues again (no restart);
- any lease OpenBao minted without a committed row is revoked by reconciliation;
- with Vault down, each attempt is in the ledger (its request id has a row).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import psutil
import pytest

from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.web.keys import GRANTS
from tests.support.backends import vault_leases
from tests.support.brokers import RunningBroker, running_broker
from tests.support.faults import running_proxy
from tests.support.ledger import ledger_lease_ids, ledger_rows
from tests.support.reliability_report import Row, record
from tests.support.tokens import fresh_subject

pytestmark = pytest.mark.stack

_DB_PREFIXES = ("database/creds/orders-ro", "database/creds/orders-admin")
_MIX = (("alice", "db/orders-ro"), ("alice", "stripe/test"), ("svc-orders", "db/orders-ro"))
_CONCURRENCY = 6
_RECOVERY_TIMEOUT = 30.0
_FAIL_CODES = {"ledger_unavailable", "vault_unavailable", "unavailable"}


@dataclass
class Attempt:
    request_id: str
    secret: str
    sent: float
    done: float
    status: int  # 0: no HTTP answer (connection error / client timeout)
    code: str | None
    message: str = ""


def _via(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def _issue(http: aiohttp.ClientSession, url: str, token: str, secret: str) -> Attempt:
    rid = f"outage-{uuid.uuid4().hex}"
    sent = time.monotonic()
    status, code, message = 0, None, ""
    try:
        async with http.post(
            f"{url}/v1/credentials",
            json={"secret": secret, "ttl": "10m", "reason": "outage test"},
            headers={"Authorization": f"Bearer {token}", "X-Request-Id": rid},
        ) as r:
            status = r.status
            if status != 201:
                assert r.content_type == "application/json", (status, await r.text())
                error = (await r.json())["error"]
                code, message = error["code"], error["message"]
    except (aiohttp.ClientError, TimeoutError):
        pass
    return Attempt(rid, secret, sent, time.monotonic(), status, code, message)


class Load:
    """``_CONCURRENCY`` clients issuing in a loop until ``stop()``."""

    def __init__(self, http: aiohttp.ClientSession, url: str, tokens: dict[str, str]) -> None:
        self.attempts: list[Attempt] = []
        self._stop = False

        async def worker(i: int) -> None:
            n = i
            while not self._stop:
                who, secret = _MIX[n % len(_MIX)]
                n += 1
                self.attempts.append(await _issue(http, url, tokens[who], secret))

        self._tasks = [asyncio.create_task(worker(i)) for i in range(_CONCURRENCY)]

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)


async def _unaccounted(stack: DevStack, dsn: str) -> set[str]:
    held: list[str] = []
    for prefix in _DB_PREFIXES:
        held += await vault_leases(stack.bao.addr, stack.bao.root_token, prefix)
    return set(held) - await ledger_lease_ids(dsn)


async def _reconcile_new(
    broker: RunningBroker, stack: DevStack, dsn: str, before: set[str]
) -> tuple[int, set[str]]:
    """Two orphan sweeps (the grace); return (revoked, new unaccounted leases left)."""
    grants = broker.app[GRANTS]
    revoked = await grants.reconcile_orphan_leases()
    revoked += await grants.reconcile_orphan_leases()
    return revoked, await _unaccounted(stack, dsn) - before


async def _recovered(http: aiohttp.ClientSession, url: str, token: str) -> float:
    """Seconds until a KV and a database issuance both succeed again (fails on timeout)."""
    start = time.monotonic()
    while time.monotonic() - start < _RECOVERY_TIMEOUT:
        kv = await _issue(http, url, token, "stripe/test")
        db = await _issue(http, url, token, "db/orders-ro")
        if kv.status == db.status == 201:
            return time.monotonic() - start
        await asyncio.sleep(0.5)
    raise AssertionError("the broker did not recover after the dependency came back")


def _check_down(attempts: list[Attempt], cut: float, back: float) -> tuple[list[Attempt], int]:
    """Attempts sent and answered while cut; assert none was issued and all are 503 JSON."""
    down = [a for a in attempts if a.sent >= cut and a.done <= back]
    issued = [a for a in down if a.status == 201]
    assert not issued, f"{len(issued)} credentials issued while a dependency was down"
    wrong = [(a.status, a.code) for a in down if a.status != 503 or a.code not in _FAIL_CODES]
    assert not wrong, Counter(wrong)
    return down, len(issued)


async def test_postgres_outage_under_load(
    stack: DevStack, broker_settings: Settings, tokens: dict[str, str]
) -> None:
    dsn = broker_settings.database_url
    before = await _unaccounted(stack, dsn)
    async with (
        running_proxy("127.0.0.1", stack.pg.port) as pg,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        settings = broker_settings.with_overrides(
            database_url=_via(dsn, pg.port),
            db_timeout_seconds=2.0,
            ledger_commit_timeout_seconds=2.0,
        )
        async with running_broker(settings, replica_id=fresh_subject("pg-outage")) as broker:
            load = Load(http, broker.url, tokens)
            await asyncio.sleep(2.0)
            cut = time.monotonic()
            pg.cut()
            await asyncio.sleep(5.0)
            back = time.monotonic()
            pg.restore()
            recovery = await _recovered(http, broker.url, tokens["alice"])
            await load.stop()
            down, issued = _check_down(load.attempts, cut, back)
            revoked, left = await _reconcile_new(broker, stack, dsn, before)
    record(
        Row(
            area="outage",
            kind="Postgres cut under load, then restored",
            requests=len(load.attempts),
            faults=1,
            leaked=issued,
            orphaned=len(left),
            notes=(
                f"{len(down)} requests while down, all 503 {sorted({a.code for a in down})};"
                f" recovered {recovery:.1f}s after restore without restart;"
                f" {revoked} orphan leases revoked by reconciliation"
            ),
        )
    )
    assert down, "no request was answered during the outage"
    assert not left, f"leases minted without a row survived reconciliation: {sorted(left)}"


async def test_openbao_outage_under_load(
    stack: DevStack, broker_settings: Settings, tokens: dict[str, str]
) -> None:
    dsn = broker_settings.database_url
    before = await _unaccounted(stack, dsn)
    async with (
        running_proxy("127.0.0.1", stack.bao.port) as bao,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        settings = broker_settings.with_overrides(
            vault_addr=f"http://127.0.0.1:{bao.port}", vault_timeout_seconds=2.0
        )
        async with running_broker(settings, replica_id=fresh_subject("bao-outage")) as broker:
            load = Load(http, broker.url, tokens)
            await asyncio.sleep(2.0)
            cut = time.monotonic()
            bao.cut()
            await asyncio.sleep(5.0)
            back = time.monotonic()
            bao.restore()
            recovery = await _recovered(http, broker.url, tokens["alice"])
            await load.stop()
            down, issued = _check_down(load.attempts, cut, back)
            revoked, left = await _reconcile_new(broker, stack, dsn, before)
    # Every refused attempt is evidence: its request id has a ledger row.
    rids = [a.request_id for a in down]
    rows = await ledger_rows(stack, "request_id = ANY($1::text[])", rids)
    unledgered = set(rids) - {r["request_id"] for r in rows}
    record(
        Row(
            area="outage",
            kind="OpenBao cut under load, then restored",
            requests=len(load.attempts),
            faults=1,
            leaked=issued,
            orphaned=len(left),
            notes=(
                f"{len(down)} requests while down, all 503 {sorted({a.code for a in down})};"
                f" {len(rids) - len(unledgered)}/{len(rids)} attempts ledgered;"
                f" recovered {recovery:.1f}s after restore without restart;"
                f" {revoked} orphan leases revoked"
            ),
        )
    )
    assert down, "no request was answered during the outage"
    assert not unledgered, (
        f"{len(unledgered)} refused attempts left no ledger row",
        Counter(a.secret for a in down if a.request_id in unledgered),
    )
    assert not left, f"leases minted without a row survived reconciliation: {sorted(left)}"


async def _burst(
    http: aiohttp.ClientSession, url: str, tokens: dict[str, str], n: int
) -> list[Attempt]:
    return list(
        await asyncio.gather(
            *(_issue(http, url, tokens[_MIX[i % 3][0]], _MIX[i % 3][1]) for i in range(n))
        )
    )


async def test_slow_postgres_bounded(
    stack: DevStack, broker_settings: Settings, tokens: dict[str, str]
) -> None:
    """A Postgres answering 3 s late: every request ends in 503 within the commit timeout
    (twice: behind one batch, then its own), excess beyond the queue bound is refused at
    once, and memory stays flat across waves."""
    dsn = broker_settings.database_url
    # A third of each wave are KV reads, whose rows go straight to the writer's queue;
    # database logins wait at the live-grant count first (bounded by db_timeout_seconds).
    commit_timeout, max_queue, wave = 1.5, 10, 150
    me = psutil.Process()
    before = await _unaccounted(stack, dsn)
    async with (
        running_proxy("127.0.0.1", stack.pg.port) as pg,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
    ):
        settings = broker_settings.with_overrides(
            database_url=_via(dsn, pg.port),
            db_timeout_seconds=commit_timeout,
            ledger_commit_timeout_seconds=commit_timeout,
            ledger_max_queue=max_queue,
        )
        async with running_broker(settings, replica_id=fresh_subject("pg-slow")) as broker:
            pg.delay = 3.0
            attempts: list[Attempt] = []
            rss: list[int] = []
            for _ in range(4):
                attempts += await _burst(http, broker.url, tokens, wave)
                rss.append(me.memory_info().rss)
            pg.delay = 0.0
            recovery = await _recovered(http, broker.url, tokens["alice"])
            revoked, left = await _reconcile_new(broker, stack, dsn, before)
    statuses = Counter((a.status, a.code) for a in attempts)
    slowest = max(a.done - a.sent for a in attempts)
    backlog_full = sum(1 for a in attempts if "backlog is full" in a.message)
    issued = sum(1 for a in attempts if a.status == 201)
    growth = rss[-1] / rss[0]
    record(
        Row(
            area="outage",
            kind="Slow Postgres (3 s per round trip), commit timeout 1.5 s",
            requests=len(attempts),
            faults=len(attempts) // wave,
            leaked=issued,
            orphaned=len(left),
            notes=(
                f"answers {dict(statuses)}; slowest {slowest:.1f}s; {backlog_full} refused at"
                f" once (queue bound {max_queue}); RSS wave1→wave4 x{growth:.2f};"
                f" recovered {recovery:.1f}s after the delay ended; {revoked} orphans revoked"
            ),
        )
    )
    assert issued == 0
    assert set(statuses) == {(503, "ledger_unavailable")}, statuses
    # Behind at most one batch, then its own: 2 x commit timeout, plus generous slack.
    assert slowest < 2 * commit_timeout + 5.0, slowest
    assert backlog_full > 0, "the queue bound never refused anything"
    assert growth < 1.25, rss
    assert not left, sorted(left)


async def test_slow_openbao_bounded(
    stack: DevStack, broker_settings: Settings, tokens: dict[str, str]
) -> None:
    """An OpenBao answering 3 s late: 503 within the Vault timeout; mints that finished in
    OpenBao after the broker gave up are revoked by reconciliation."""
    dsn = broker_settings.database_url
    vault_timeout = 1.0
    before = await _unaccounted(stack, dsn)
    async with (
        running_proxy("127.0.0.1", stack.bao.port) as bao,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
    ):
        settings = broker_settings.with_overrides(
            vault_addr=f"http://127.0.0.1:{bao.port}", vault_timeout_seconds=vault_timeout
        )
        async with running_broker(settings, replica_id=fresh_subject("bao-slow")) as broker:
            bao.delay = 3.0
            attempts = await _burst(http, broker.url, tokens, 60)
            bao.delay = 0.0
            await asyncio.sleep(3.0)  # let the late mints land in OpenBao
            recovery = await _recovered(http, broker.url, tokens["alice"])
            revoked, left = await _reconcile_new(broker, stack, dsn, before)
    statuses = Counter((a.status, a.code) for a in attempts)
    slowest = max(a.done - a.sent for a in attempts)
    issued = sum(1 for a in attempts if a.status == 201)
    record(
        Row(
            area="outage",
            kind="Slow OpenBao (3 s per round trip), Vault timeout 1 s",
            requests=len(attempts),
            faults=1,
            leaked=issued,
            orphaned=len(left),
            notes=(
                f"answers {dict(statuses)}; slowest {slowest:.1f}s;"
                f" recovered {recovery:.1f}s after the delay ended;"
                f" {revoked} late-minted leases revoked by reconciliation"
            ),
        )
    )
    assert issued == 0
    # Timed out in OpenBao, or shed by the database bulkhead while its slots were held by
    # the slow mints (bulkhead_database): both fail closed, at once or within the timeout.
    assert (503, "vault_unavailable") in statuses, statuses
    assert set(statuses) <= {(503, "vault_unavailable"), (503, "backend_busy")}, statuses
    assert slowest < vault_timeout + 5.0, slowest
    assert not left, sorted(left)
