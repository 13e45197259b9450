"""Fairness: one runaway service cannot take the broker, OpenBao or the database from others.

A ``broker serve`` subprocess with real limits and a policy of its own. A service account
(its own subject; a role grants it ``db/orders-ro`` with ``limits: {rate: 2/s, burst: 5,
live_grants: 3}`` and one-second logins) floods from 16 concurrent tasks in a process of
its own (tests/support/flood.py), ignoring ``Retry-After``, for 14 s. Another principal
(its own subject, a role with room to spare) asks for database logins, the slow path on
the same engine, at a steady 10/s, open loop: first alone (its unloaded latency), then
during the flood.

Held, and measured where it takes effect:
- the flooder's rate: issued <= burst + rate * flood duration (+1 for the clock);
- its live-lease quota in OpenBao, not only in the broker: OpenBao's leases under
  ``database/creds/orders-ro``, listed every 0.2 s during the flood and attributed to the
  flooder by the lease ids of its ``grant.issued`` rows, are never more than 3;
- the steady principal: every request answered 201 (no 5xx, no refusal), and its p99
  during the flood <= 2x its p99 alone (measured once more if a run misses: one stall of
  the shared box decides a p99; see the test). This holds because the broker holds the rate
  refusals of a client that does not wait as told (``quota_refusal_hold_seconds``):
  answered at once, a 16-task flood got ~3,000 refusals a second, saturating the
  broker's event loop, and the steady p99 went from 42 to 116 ms on a 2-core box;
- the refusals: the broker runs less than one flush window (the default 60 s), so its
  shutdown flush writes exactly one ``quota.refused`` row for the flooder, whose ``total``
  and ``by_limit`` are the refusals the flooder was answered; none for the steady one.
Every lease minted is revoked at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.backends import vault_leases
from tests.support.commands import subprocess_env
from tests.support.http import auth, parse_ts, post_credentials
from tests.support.ledger import ledger_rows
from tests.support.paths import REPO
from tests.support.policies import write_policies
from tests.support.processes import start_replica
from tests.support.reliability_report import Row, record
from tests.support.tokens import mint

pytestmark = pytest.mark.stack

_SECRET = "db/orders-ro"
_LEASES = "database/creds/orders-ro"
_FLOOD_TASKS = 16
_FLOOD_SECONDS = 14.0
_RATE, _BURST, _LIVE = 2.0, 5, 3  # the flooder's limits, declared on its role
# requests per second, open loop: 100 answers alone and 120 during the flood, so that a p99
# is not simply the slowest answer
_STEADY_RATE = 10.0
_UNLOADED_SECONDS = 10.0
_SAMPLE_EVERY = 0.2  # OpenBao's lease list during the flood
_P99_FACTOR = 2.0


def _policies(dest: Path, flooder_sa: str, steady: str) -> Path:
    roles = [
        {
            "name": "fair-flooder",
            "members": {"service_accounts": [flooder_sa]},
            "secrets": [_SECRET],
            "max_ttl": "1s",  # a login per request, short-lived: the rate binds, not the count
            "limits": {"rate": f"{_RATE:g}/s", "burst": _BURST, "live_grants": _LIVE},
        },
        {
            "name": "fair-steady",
            "members": {"subjects": [steady]},
            "secrets": [_SECRET],
            "max_ttl": "1m",
            "limits": {"rate": "50/s", "burst": 50, "live_grants": 500},
        },
    ]
    return write_policies(dest, {}, roles)


@dataclass(frozen=True)
class _Answer:
    status: int
    code: str
    seconds: float


@dataclass
class _Steady:
    """The well-behaved principal: ``rate`` requests a second, each on its own schedule."""

    http: aiohttp.ClientSession
    url: str
    token: str

    async def run(self, seconds: float) -> list[_Answer]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(round(seconds * _STEADY_RATE)):
            await asyncio.sleep(max(0.0, start + i / _STEADY_RATE - loop.time()))
            tasks.append(asyncio.create_task(self._one()))
        return await asyncio.gather(*tasks)

    async def _one(self) -> _Answer:
        started = time.perf_counter()
        async with post_credentials(
            self.http, self.url, self.token, _SECRET, reason="steady client"
        ) as r:
            body = await r.json(content_type=None)
        code = "" if r.status == 201 else str((body.get("error") or {}).get("code"))
        return _Answer(r.status, code, time.perf_counter() - started)


def _ms(answers: list[_Answer]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    q = statistics.quantiles([a.seconds for a in answers], n=100, method="inclusive")
    return q[49] * 1000, q[98] * 1000


@dataclass
class _LeaseSampler:
    """OpenBao's lease ids under ``_LEASES``, listed every ``_SAMPLE_EVERY`` s until stopped."""

    stack: DevStack
    samples: list[set[str]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stop.is_set():
            leases = await vault_leases(self.stack.bao.addr, self.stack.bao.root_token, _LEASES)
            self.samples.append(set(leases))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), _SAMPLE_EVERY)


@asynccontextmanager
async def _flooder(spec: dict[str, Any]) -> AsyncIterator[asyncio.Future[dict[str, Any]]]:
    """Start ``tests.support.flood``; yield once it floods, with a future of its report."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.flood",
        cwd=REPO,
        env=subprocess_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    try:
        proc.stdin.write(json.dumps(spec).encode())
        proc.stdin.close()
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"flooding" in first, (first, await proc.stderr.read())

        async def report() -> dict[str, Any]:
            line = await proc.stdout.readline()  # type: ignore[union-attr]
            code = await proc.wait()
            assert code == 0 and line, (code, await proc.stderr.read())  # type: ignore[union-attr]
            return dict(json.loads(line))

        yield asyncio.ensure_future(report())
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _revoke_in_openbao(stack: DevStack, lease_ids: set[str]) -> None:
    headers = {"X-Vault-Token": stack.bao.root_token}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for lease_id in sorted(lease_ids):
            async with http.put(
                f"{stack.bao.addr}/v1/sys/leases/revoke",
                json={"lease_id": lease_id},
                headers=headers,
            ) as r:
                assert r.status in (200, 204), (r.status, await r.text())


@dataclass
class _Measured:
    """What one run saw: the steady principal's answers alone and during the flood, the
    flooder's report, OpenBao's lease lists during the flood, and how the broker ended."""

    unloaded: list[_Answer]
    loaded: list[_Answer]
    flood: dict[str, Any]
    samples: list[set[str]]
    uptime: float  # broker start to stop, seconds
    exit_code: int
    tail: str


async def _measure(
    stack: DevStack, settings: Settings, flooder: str, steady: str, log_dir: Path
) -> _Measured:
    broker = await start_replica(settings, f"fair-{uuid.uuid4().hex[:6]}", log_dir)
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), connector=aiohttp.TCPConnector(limit=0)
        ) as http:
            client = _Steady(http, broker.url, mint(settings, steady, []))
            await client.run(1.0)  # warm-up: pools, connections, caches
            unloaded = await client.run(_UNLOADED_SECONDS)

            sampler = _LeaseSampler(stack)
            spec = {
                "url": broker.url,
                "token": mint(settings, flooder, []),
                "secret": _SECRET,
                "seconds": _FLOOD_SECONDS,
                "concurrency": _FLOOD_TASKS,
            }
            async with _flooder(spec) as flood_report:
                sampling = asyncio.ensure_future(sampler.run())
                await asyncio.sleep(1.0)  # the flood at full pace before measuring
                loaded = await client.run(_FLOOD_SECONDS - 2.0)
                flood = await flood_report
                sampler.stop.set()
                await sampling

            # The steady principal's logins end through the broker (each ledgered).
            grants = await ledger_rows(stack, "event = 'grant.issued' AND subject = $1", steady)
            gate = asyncio.Semaphore(8)

            async def revoke(grant_id: str) -> None:
                url = f"{broker.url}/v1/grants/{grant_id}"
                async with gate, http.delete(url, headers=auth(client.token)) as r:
                    assert r.status == 200, await r.text()

            await asyncio.gather(*(revoke(str(g["grant_id"])) for g in grants))
        # SIGTERM: the shutdown flush writes the window's quota.refused rows.
        code = await broker.stop()
        return _Measured(
            unloaded,
            loaded,
            flood,
            sampler.samples,
            time.monotonic() - started,
            code,
            broker.tail(),
        )
    finally:
        await broker.kill()


@dataclass(frozen=True)
class _Run:
    """One measurement with its own subjects, policies and broker, and the rows it minted."""

    m: _Measured
    flooder: str
    steady: str
    minted: list[dict[str, Any]]
    settings: Settings


async def _run(stack: DevStack, broker_settings: Settings, log_dir: Path) -> _Run:
    run = uuid.uuid4().hex[:8]
    flooder_sa = f"fair-{run}:flood"
    flooder = f"system:serviceaccount:{flooder_sa}"
    steady = f"fair-steady-{run}"
    # Not tmp_path: a concurrent pytest session may prune it (see ``stack_state_dir``).
    policies = Path(tempfile.mkdtemp(prefix="fair-policies-"))
    settings = broker_settings.with_overrides(policies_dir=_policies(policies, flooder_sa, steady))
    try:
        m = await _measure(stack, settings, flooder, steady, log_dir)
    finally:
        shutil.rmtree(policies, ignore_errors=True)
        minted = await ledger_rows(
            stack, "event = 'grant.issued' AND subject = ANY($1::text[])", [flooder, steady]
        )
        await _revoke_in_openbao(stack, {str(r["lease_id"]) for r in minted})
    return _Run(m, flooder, steady, minted, settings)


@pytest.mark.timeout(300)
async def test_a_flood_is_held_to_its_limits_and_others_do_not_notice(
    stack: DevStack, broker_settings: Settings, tmp_path: Path
) -> None:
    # A p99 ratio on a shared 2-core machine: one stall of the box (not of the broker) in
    # either phase decides it. So a run whose ratio misses is measured once more, with new
    # subjects and a new broker; every other check holds on every run, and both runs are
    # recorded. A broker that lets the flood through misses on both (42 -> 116 ms, above).
    missed = ""
    for _run_no in (1, 2):
        run = await _run(stack, broker_settings, tmp_path)  # each broker its own log
        p99_alone, p99_flood = await _check(stack, run, missed)
        if p99_flood <= _P99_FACTOR * p99_alone:
            break
        missed = f"run 1's p99 {p99_alone:.0f} ms alone, {p99_flood:.0f} ms during the flood; "
    assert p99_flood <= _P99_FACTOR * p99_alone, (p99_alone, p99_flood)


async def _check(stack: DevStack, run: _Run, missed: str) -> tuple[float, float]:
    """Every check but the latency ratio; record the run (after ``missed``, what an earlier
    run's ratio was); return the steady principal's (p99 alone, p99 during the flood)."""
    m, flooder, steady, minted, settings = run.m, run.flooder, run.steady, run.minted, run.settings
    assert m.exit_code == 0, m.tail

    answers: Counter[str] = Counter(m.flood["answers"])
    requests = sum(answers.values())
    seconds = m.flood["ended"] - m.flood["started"]
    issued = m.flood["grants"]
    refused = requests - answers["201"]
    # Every 201 the flooder got has its issued row, and it has no other.
    flood_leases = {str(r["lease_id"]) for r in minted if r["subject"] == flooder}
    assert flood_leases == {g["lease_id"] for g in issued}, (len(flood_leases), len(issued))
    live_seen = [len(sample & flood_leases) for sample in m.samples]
    steady_all = m.unloaded + m.loaded
    steady_5xx = sum(1 for a in steady_all if a.status >= 500)
    p50_alone, p99_alone = _ms(m.unloaded)
    p50_flood, p99_flood = _ms(m.loaded)
    refusal_rows = await ledger_rows(
        stack, "event = 'quota.refused' AND subject = ANY($1::text[])", [flooder, steady]
    )
    record(
        Row(
            area="load",
            kind=f"fairness: a {_FLOOD_TASKS}-task flood of database logins ignoring"
            f" Retry-After vs a steady {_STEADY_RATE:g}/s principal",
            requests=requests + len(steady_all),
            notes=(
                missed + f"flooder (limits {_RATE:g}/s, burst {_BURST}, live {_LIVE}; 1 s logins):"
                f" {requests} requests in {seconds:.1f} s, {len(issued)} issued"
                f" (bound {_BURST + _RATE * seconds:.0f}), {refused} refused"
                f" {dict(sorted((k, n) for k, n in answers.items() if k != '201'))},"
                f" client errors {m.flood['errors'] or 0};"
                f" its leases in OpenBao at most {max(live_seen, default=0)}"
                f" ({len(live_seen)} samples);"
                f" steady logins p50/p99 {p50_alone:.0f}/{p99_alone:.0f} ms alone,"
                f" {p50_flood:.0f}/{p99_flood:.0f} ms during the flood"
                f" ({len(m.unloaded)}/{len(m.loaded)} requests), {steady_5xx} 5xx;"
                f" {len(refusal_rows)} quota.refused row(s)"
                + (f", total {refusal_rows[0]['body']['total']}" if refusal_rows else "")
            ),
        )
    )

    # The flooder is held to its rate and, in OpenBao, to its live-lease quota.
    assert len(issued) <= _BURST + _RATE * seconds + 1, (len(issued), seconds)
    assert len(live_seen) >= 0.5 * _FLOOD_SECONDS / _SAMPLE_EVERY, len(live_seen)
    assert max(live_seen) <= _LIVE, live_seen
    assert answers["429 rate_limited"] > 0 and answers["429 quota_exceeded"] > 0, answers

    # The steady principal: every request granted (its p99 is the caller's to judge).
    assert [a for a in steady_all if a.status != 201] == [], Counter(
        (a.status, a.code) for a in steady_all
    )

    # The flood's refusals: the broker ran less than one flush window (the default 60 s),
    # so one row, written at shutdown, with the counts the flooder was answered; the
    # steady principal was never refused.
    assert m.uptime < settings.quota_refusal_flush_seconds, m.uptime
    (row,) = refusal_rows
    assert (row["subject"], row["subject_kind"]) == (flooder, "service"), row
    body = row["body"]
    assert body["total"] == refused, (body, answers)
    assert body["by_limit"] == {
        limit: n
        for limit, n in (
            ("rate_limited", answers["429 rate_limited"]),
            ("live_grants", answers["429 quota_exceeded"]),
            ("backend_busy", answers["503 backend_busy"]),
        )
        if n
    }, (body, answers)
    assert body["by_secret"] == {_SECRET: refused}, body
    window = parse_ts(body["window_end"]) - parse_ts(body["window_start"])
    assert window.total_seconds() <= settings.quota_refusal_flush_seconds, body

    # Nothing minted is left in OpenBao.
    left = set(await vault_leases(stack.bao.addr, stack.bao.root_token, _LEASES))
    assert not left & {str(r["lease_id"]) for r in minted}
    return p99_alone, p99_flood
