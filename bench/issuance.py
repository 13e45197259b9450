"""Issuance benchmark: direct OpenBao reads and mints vs the broker's, at several concurrencies.

KV phases, each run at every ``--concurrency`` (default 1, 16, 32), in this order at each
concurrency so that background drift hits them alike:

- ``direct``: a KV v2 read from OpenBao itself (the ceiling);
- ``direct-audit``: the same read from a second OpenBao with a *file audit device* (what an
  audited team runs). OpenBao refuses ``sys/audit`` over the API (declarative devices
  only), so the bench starts that server itself, with the device in its config;
- ``broker``: the native ``POST /v1/credentials``;
- ``frontdoor``: the direct read as a Vault client makes it, through the broker's
  Vault-compatible API with a broker session token.

Then ``database`` at every ``--db-concurrency`` (default 1, 8): a dynamic PostgreSQL login
minted by OpenBao directly, then through the broker; the leases of both are revoked after
each (outside the measured windows) so roles do not pile up.

Client, broker, OpenBao and PostgreSQL run as separate processes (as in production), all on
this machine, so they share its cores. Each broker issuance is a durable, hash-chained
ledger row committed before the answer; the run checks afterwards that ``grant.issued``
rows grew by exactly the number of broker 200/201s (warm-ups and probes included).

    .venv/bin/python bench/issuance.py                    # starts its own stack (~4 min)
    .venv/bin/python bench/issuance.py --seconds 3 --warmup 1 --db-seconds 3   # quick look
    .venv/bin/python bench/issuance.py --workers 2 --broker-cpus 0,1
    .venv/bin/python bench/issuance.py --dev-json .broker/dev.json   # a running `broker dev`
    .venv/bin/python bench/issuance.py --json             # machine-readable result
    .venv/bin/python bench/issuance.py --profile /tmp/broker.prof --phases broker

See bench/README.md for how to read the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")

# At each concurrency the KV phases run in this order (fair to background drift).
KV_PHASES = ("direct", "direct-audit", "broker", "frontdoor")
BROKER_PHASES = ("broker", "frontdoor")  # their 200/201s are grant.issued rows
ALL_PHASES = (*KV_PHASES, "database")


def _phase_list(text: str) -> list[str]:
    """The comma list of ``--phases``, in canonical order; SystemExit on an unknown name."""
    names = {p.strip() for p in text.split(",") if p.strip()}
    if unknown := names - set(ALL_PHASES):
        raise SystemExit(f"--phases: unknown {sorted(unknown)}; known: {', '.join(ALL_PHASES)}")
    return [p for p in ALL_PHASES if p in names]


def _int_list(text: str) -> list[int]:
    """``1,16,32`` -> [1, 16, 32] (argparse type: each a positive integer)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"want positive integers: {text!r}")
    return values


# --- configuration of one run ------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where to send load: broker url + alice's token, OpenBao address + token."""

    broker_url: str
    vault_addr: str
    vault_token: str
    bearer: str
    ledger_dsn: str | None  # superuser DSN for the verification count, if known
    pids: dict[str, int] = field(default_factory=dict)  # component -> pid (self-started only)
    self_started: bool = True
    vault_api_url: str | None = None  # the broker's Vault-compatible front door, if serving


@dataclass
class PhaseResult:
    name: str
    concurrency: int
    seconds: float
    requests: int
    ok: int
    errors: int
    statuses: dict[str, int]
    per_second: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    # CPU seconds used during the measured window, by component (when pids are known).
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    cpu_system_seconds: dict[str, float] = field(default_factory=dict)  # kernel part of it
    machine_busy_pct: float = 0.0


# --- CPU accounting from /proc -----------------------------------------------------------


def _proc_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process (all threads); zeros if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def _children_by_parent() -> dict[int, list[int]]:
    """ppid -> pids, from one scan of /proc."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _tree_cpu(pid: int, kids: dict[int, list[int]]) -> tuple[float, float]:
    """CPU of a process and all its live descendants: Postgres (postmaster + backends), and
    ``broker serve --workers N`` (a supervisor + its worker processes). A descendant that
    exits inside the window takes its CPU with it (accounting granularity)."""
    user = system = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        u, s = _proc_cpu(p)
        user, system = user + u, system + s
        todo += kids.get(p, [])
    return user, system


def _machine_jiffies() -> tuple[int, ...]:
    """Machine-wide jiffies from /proc/stat: (busy, total, softirq+irq, steal)."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    parts += [0] * (8 - len(parts))
    user, nice, system, idle, iowait, irq, softirq, steal = parts[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return total - idle - iowait - steal, total, irq + softirq, steal


@dataclass
class CpuSnapshot:
    per_component: dict[str, tuple[float, float]]  # name -> (user, system) seconds
    machine: tuple[int, ...]

    @classmethod
    def take(cls, pids: dict[str, int]) -> CpuSnapshot:
        t = os.times()
        comp = {"client": (t.user, t.system)}
        kids = _children_by_parent() if pids else {}
        for name, pid in pids.items():
            comp[name] = _tree_cpu(pid, kids)
        return cls(comp, _machine_jiffies())

    def delta(self, later: CpuSnapshot) -> tuple[dict[str, float], dict[str, float], float]:
        """(CPU seconds by component incl. ``other``, of which system, machine busy %)."""
        total: dict[str, float] = {}
        system: dict[str, float] = {}
        for k, (u0, s0) in self.per_component.items():
            u1, s1 = later.per_component[k]
            total[k] = round(u1 - u0 + s1 - s0, 2)
            system[k] = round(s1 - s0, 2)
        busy, jiffies, irq, steal = (
            b - a for a, b in zip(self.machine, later.machine, strict=True)
        )
        # Interrupt time (loopback TCP is mostly softirq) and time the hypervisor took.
        total["irq"] = round(irq / _CLK_TCK, 2)
        total["steal"] = round(steal / _CLK_TCK, 2)
        # Everything else that ran: other processes on the box (concurrent test suites...).
        known = sum(v for k, v in total.items() if k != "steal")
        total["other"] = round(busy / _CLK_TCK - known, 2)
        return total, system, (100.0 * busy / jiffies if jiffies else 0.0)


# --- the load generator -------------------------------------------------------------------

Request = Callable[[aiohttp.ClientSession], Awaitable[int]]


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


async def _drive(
    session: aiohttp.ClientSession, request: Request, concurrency: int, seconds: float
) -> tuple[list[float], Counter[str], float]:
    """Run ``concurrency`` closed-loop workers for ``seconds``; latencies (s), statuses."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        perf = time.perf_counter
        while perf() < deadline:
            t0 = perf()
            try:
                status = await request(session)
                key = str(status)
            except (aiohttp.ClientError, TimeoutError) as e:
                key = type(e).__name__
            latencies.append(perf() - t0)
            statuses[key] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, statuses, time.perf_counter() - started


async def _phase(
    name: str,
    session: aiohttp.ClientSession,
    request: Request,
    ok_status: int,
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    pids: dict[str, int],
    on_measure: Callable[[], None] | None = None,
    after_measure: Callable[[], None] | None = None,
) -> tuple[PhaseResult, int]:
    """Warm up, then measure. Returns the result and the number of ``ok_status`` answers
    during warm-up (for the broker they also wrote ledger rows)."""
    _, warm_statuses, _ = await _drive(session, request, concurrency, warmup)
    if on_measure is not None:
        on_measure()
    load_before = os.getloadavg()
    before = CpuSnapshot.take(pids)
    latencies, statuses, elapsed = await _drive(session, request, concurrency, seconds)
    after = CpuSnapshot.take(pids)
    if after_measure is not None:
        after_measure()
    cpu, cpu_sys, busy = before.delta(after)
    mean = sum(latencies) / len(latencies) if latencies else float("nan")
    latencies.sort()
    ok = statuses.get(str(ok_status), 0)
    result = PhaseResult(
        name=name,
        concurrency=concurrency,
        seconds=round(elapsed, 3),
        requests=len(latencies),
        ok=ok,
        errors=len(latencies) - ok,
        statuses=dict(statuses),
        per_second=round(ok / elapsed, 1),
        mean_ms=round(mean * 1000, 2),
        p50_ms=round(_percentile(latencies, 0.50) * 1000, 2),
        p90_ms=round(_percentile(latencies, 0.90) * 1000, 2),
        p99_ms=round(_percentile(latencies, 0.99) * 1000, 2),
        max_ms=round(latencies[-1] * 1000, 2) if latencies else float("nan"),
        load_before=load_before,
        load_after=os.getloadavg(),
        cpu_seconds=cpu,
        cpu_system_seconds=cpu_sys,
        machine_busy_pct=round(busy, 1),
    )
    return result, warm_statuses.get(str(ok_status), 0)


def _kv_read_request(base_url: str, token: str, secret: str) -> Request:
    """A KV v2 read exactly as a Vault client makes it: OpenBao, or the broker's front door."""
    url = f"{base_url.rstrip('/')}/v1/secret/data/{secret}"
    headers = {"X-Vault-Token": token, "X-Vault-Request": "true"}

    async def call(session: aiohttp.ClientSession) -> int:
        async with session.get(url, headers=headers) as resp:
            await resp.read()
            return resp.status

    return call


def _broker_request(target: Target, secret: str, grant_ids: list[str] | None = None) -> Request:
    """``POST /v1/credentials``; with ``grant_ids``, each 201's grant id is appended to it."""
    url = f"{target.broker_url.rstrip('/')}/v1/credentials"
    body = json.dumps({"secret": secret}).encode()
    headers = {"Authorization": f"Bearer {target.bearer}", "Content-Type": "application/json"}

    async def call(session: aiohttp.ClientSession) -> int:
        async with session.post(url, data=body, headers=headers) as resp:
            if grant_ids is not None and resp.status == 201:
                grant_ids.append(str((await resp.json())["id"]))
            else:
                await resp.read()
            return resp.status

    return call


def _db_direct_request(target: Target, creds_path: str, lease_ids: list[str]) -> Request:
    """A database login minted by OpenBao itself; each 200's lease id goes to ``lease_ids``."""
    url = f"{target.vault_addr.rstrip('/')}/v1/{creds_path}"
    headers = {"X-Vault-Token": target.vault_token, "X-Vault-Request": "true"}

    async def call(session: aiohttp.ClientSession) -> int:
        async with session.get(url, headers=headers) as resp:
            if resp.status == 200:
                lease_ids.append(str((await resp.json())["lease_id"]))
            else:
                await resp.read()
            return resp.status

    return call


async def _front_door_login(session: aiohttp.ClientSession, target: Target) -> str:
    """A broker session token for alice, the way a Vault client gets one."""
    assert target.vault_api_url is not None
    url = f"{target.vault_api_url.rstrip('/')}/v1/auth/jwt/login"
    async with session.post(url, json={"role": "bench", "jwt": target.bearer}) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise SystemExit(f"front door login answered HTTP {resp.status}: {body}")
        return str(body["auth"]["client_token"])


async def _revoke_all(
    session: aiohttp.ClientSession,
    calls: list[Callable[[aiohttp.ClientSession], Awaitable[int]]],
    ok_status: int,
    concurrency: int = 8,
) -> dict[str, Any]:
    """Run revocation calls, ``concurrency`` at a time: counts, failures, wall seconds."""
    todo = iter(calls)
    failed: Counter[str] = Counter()
    started = time.perf_counter()

    async def worker() -> None:
        for call in todo:
            try:
                status = await call(session)
            except (aiohttp.ClientError, TimeoutError) as e:
                failed[type(e).__name__] += 1
                continue
            if status != ok_status:
                failed[str(status)] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "revoked": len(calls) - sum(failed.values()),
        "failed": dict(failed),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _revoke_lease_call(target: Target, lease_id: str) -> Request:
    url = f"{target.vault_addr.rstrip('/')}/v1/sys/leases/revoke"
    headers = {"X-Vault-Token": target.vault_token, "X-Vault-Request": "true"}

    async def call(session: aiohttp.ClientSession) -> int:
        async with session.put(url, json={"lease_id": lease_id}, headers=headers) as resp:
            await resp.read()
            return resp.status

    return call


def _revoke_grant_call(target: Target, grant_id: str) -> Request:
    # Through the broker's own API, as alice: it revokes the lease and records it (a
    # grant.revoked row, so the grant.issued count of the ledger check is untouched).
    url = f"{target.broker_url.rstrip('/')}/v1/grants/{grant_id}"
    headers = {"Authorization": f"Bearer {target.bearer}"}

    async def call(session: aiohttp.ClientSession) -> int:
        async with session.delete(url, headers=headers) as resp:
            await resp.read()
            return resp.status

    return call


_METRIC_SERIES = {
    "ledger_batches": ("broker_ledger_batch_rows_count", ""),
    "ledger_rows": ("broker_ledger_batch_rows_sum", ""),
    "ledger_commit_s": ("broker_ledger_commit_duration_seconds_sum", ""),
    "vault_kv_calls": ("broker_vault_request_duration_seconds_count", 'endpoint="kv2.read"'),
    "vault_kv_s": ("broker_vault_request_duration_seconds_sum", 'endpoint="kv2.read"'),
    "http_201s": ("broker_http_request_duration_seconds_count", 'status="201"'),
    "http_201_s": ("broker_http_request_duration_seconds_sum", 'status="201"'),
}


async def _scrape(session: aiohttp.ClientSession, broker_url: str) -> dict[str, float]:
    """Sum the few broker metrics that explain where an issuance waits."""
    try:
        async with session.get(f"{broker_url.rstrip('/')}/metrics") as resp:
            text = await resp.text() if resp.status == 200 else ""
    except aiohttp.ClientError:
        text = ""
    out = dict.fromkeys(_METRIC_SERIES, 0.0)
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, _, value = line.rpartition(" ")
        name = series.split("{", 1)[0]
        for key, (metric, must) in _METRIC_SERIES.items():
            if name == metric and must in series:
                out[key] += float(value)
    return out


def _broker_internals(
    before: dict[str, float], after: dict[str, float], window: float
) -> dict[str, float]:
    d = {k: after[k] - before[k] for k in before}
    batches, kv, http = d["ledger_batches"], d["vault_kv_calls"], d["http_201s"]
    commit_ms = round(1000 * d["ledger_commit_s"] / batches, 2) if batches else 0.0
    return {
        "ledger_batches": batches,
        "ledger_rows_per_batch": round(d["ledger_rows"] / batches, 1) if batches else 0.0,
        "ledger_commit_ms_mean": commit_ms,
        "vault_kv_ms_mean": round(1000 * d["vault_kv_s"] / kv, 2) if kv else 0.0,
        "broker_201_ms_mean": round(1000 * d["http_201_s"] / http, 2) if http else 0.0,
        # Share of wall time the single ledger writer task spent inside a batch commit:
        # near 100% means it is the serial bottleneck (rate = rows/batch / commit time).
        "ledger_writer_busy_pct": round(100 * batches * commit_ms / 1000 / window, 1)
        if window
        else 0.0,
    }


def _profile_signal(target: Target, signum: int) -> Callable[[], None]:
    def send() -> None:
        # bench/profile_serve.py's sampler: SIGUSR1 counts (the first one drops what came
        # before), SIGUSR2 pauses; so the profile covers the measured broker windows only.
        with contextlib.suppress(KeyError, ProcessLookupError):
            os.kill(target.pids["broker"], signum)

    return send


async def _count_issued(dsn: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        n = await conn.fetchval("SELECT count(*) FROM ledger.events WHERE event = 'grant.issued'")
        return int(n)
    finally:
        await conn.close()


async def _copy_kv_secret(
    session: aiohttp.ClientSession, target: Target, audited: AuditedOpenBao, secret: str
) -> None:
    """Give the audited OpenBao the same KV v2 secret the other phases read."""
    src = f"{target.vault_addr.rstrip('/')}/v1/secret/data/{secret}"
    async with session.get(src, headers={"X-Vault-Token": target.vault_token}) as resp:
        if resp.status != 200:
            raise SystemExit(f"direct-audit: reading {secret} from OpenBao: HTTP {resp.status}")
        data = (await resp.json())["data"]["data"]
    dst = f"{audited.addr}/v1/secret/data/{secret}"
    headers = {"X-Vault-Token": audited.root_token}
    async with session.post(dst, json={"data": data}, headers=headers) as resp:
        if resp.status not in (200, 204):
            raise SystemExit(f"direct-audit: writing {secret} to the audited OpenBao: "
                             f"HTTP {resp.status} {await resp.text()}")  # fmt: skip


async def run_bench(
    target: Target, args: argparse.Namespace, audited: AuditedOpenBao | None
) -> dict[str, Any]:
    """All phases against one stack; the figures, the summary and the ledger check."""
    phases = _phase_list(args.phases)
    kv_phases = [p for p in KV_PHASES if p in phases]
    concurrencies: list[int] = args.concurrency
    db_concurrencies: list[int] = args.db_concurrency if "database" in phases else []
    widest = max([*concurrencies, *db_concurrencies, 8])
    connector = aiohttp.TCPConnector(limit=widest * 2, limit_per_host=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    kv: dict[int, dict[str, PhaseResult]] = {}
    internals: dict[int, dict[str, float]] = {}
    database: dict[int, dict[str, PhaseResult]] = {}
    cleanup: dict[str, Any] = {}
    audit_info: dict[str, Any] = {}
    ledger: dict[str, Any] = {}
    profiling = bool(args.profile) and args.profile_mode == "sample"
    # Every broker 200/201 outside the measured windows (warm-ups): one grant.issued row each.
    issued_unmeasured = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if "frontdoor" in phases and target.vault_api_url is None:
            raise SystemExit("frontdoor: this broker serves no Vault API (vault_api_url)")
        fd_token = await _front_door_login(session, target) if "frontdoor" in phases else ""
        requests: dict[str, tuple[Request, int]] = {
            "direct": (_kv_read_request(target.vault_addr, target.vault_token, args.secret), 200),
            "broker": (_broker_request(target, args.secret), 201),
        }
        if audited is not None:
            await _copy_kv_secret(session, target, audited, args.secret)
            requests["direct-audit"] = (
                _kv_read_request(audited.addr, audited.root_token, args.secret),
                200,
            )
        if fd_token:
            assert target.vault_api_url is not None
            requests["frontdoor"] = (
                _kv_read_request(target.vault_api_url, fd_token, args.secret),
                200,
            )
        db_leases: list[str] = []  # direct database leases, revoked after each phase
        db_grants: list[str] = []  # the broker's database grants, likewise
        db_requests: dict[str, tuple[Request, int]] = {
            "direct": (_db_direct_request(target, args.db_creds_path, db_leases), 200),
            "broker": (_broker_request(target, args.db_secret, db_grants), 201),
        }
        # Fail fast with a clear message if a side is not answering as expected.
        probes = [(n, *requests[n]) for n in kv_phases]
        if "database" in phases:
            probes += [(f"database {n}", *db_requests[n]) for n in ("direct", "broker")]
        for name, req, want in probes:
            got = await req(session)
            if got != want:
                raise SystemExit(f"{name}: probe request answered HTTP {got}, wanted {want}")
        issued_before = await _count_issued(target.ledger_dsn) if target.ledger_dsn else None

        for c in concurrencies:
            kv[c] = {}
            for name in kv_phases:
                request, ok_status = requests[name]
                on_measure = after_measure = None
                if name == "direct-audit":
                    assert audited is not None
                    # Only the measured window's requests stay in the log: bytes per request.
                    on_measure = audited.truncate_log
                elif name == "broker" and profiling:
                    on_measure = _profile_signal(target, signal.SIGUSR1)
                    after_measure = _profile_signal(target, signal.SIGUSR2)
                if name == "broker":
                    scraped, scraped_at = await _scrape(session, target.broker_url), time.time()
                kv[c][name], warm_ok = await _phase(
                    name,
                    session,
                    request,
                    ok_status,
                    concurrency=c,
                    seconds=args.seconds,
                    warmup=args.warmup,
                    pids=target.pids,
                    on_measure=on_measure,
                    after_measure=after_measure,
                )
                if name in ("broker", "frontdoor"):
                    issued_unmeasured += warm_ok
                if name == "broker" and args.workers <= 1:
                    # Warm-up included: means only, so that does not skew them much.
                    after = await _scrape(session, target.broker_url)
                    internals[c] = _broker_internals(scraped, after, time.time() - scraped_at)
                if name == "direct-audit":
                    assert audited is not None
                    size = audited.log_size()
                    n = kv[c][name].requests
                    audit_info[str(c)] = {
                        "log_bytes": size,
                        "bytes_per_request": round(size / n) if n else 0,
                    }
                    audited.truncate_log()  # keeps the disk use of a long run bounded

        for c in db_concurrencies:
            database[c] = {}
            for name in ("direct", "broker"):
                request, ok_status = db_requests[name]
                database[c][name], warm_ok = await _phase(
                    f"database {name}",
                    session,
                    request,
                    ok_status,
                    concurrency=c,
                    seconds=args.db_seconds,
                    warmup=args.warmup,
                    pids=target.pids,
                )
                if name == "broker":
                    issued_unmeasured += warm_ok
                # Outside the measured windows: every login minted so far (probes too) is
                # revoked, so each phase starts from the same set of roles in PostgreSQL.
                leases, db_leases[:] = list(db_leases), []
                grants, db_grants[:] = list(db_grants), []
                cleanup[f"{name} c={c}"] = {
                    "direct_leases": await _revoke_all(
                        session, [_revoke_lease_call(target, x) for x in leases], 204
                    ),
                    "broker_grants": await _revoke_all(
                        session, [_revoke_grant_call(target, x) for x in grants], 200
                    ),
                }

        issuing = [r for per_c in kv.values() for n, r in per_c.items() if n in BROKER_PHASES]
        issuing += [per_c["broker"] for per_c in database.values()]
        if target.ledger_dsn and issued_before is not None and issuing:
            issued_after = await _count_issued(target.ledger_dsn)
            # Every 200/201 of the broker's APIs is one grant.issued row, warm-ups included.
            expected = sum(r.ok for r in issuing) + issued_unmeasured
            added = issued_after - issued_before
            ledger = {
                "grant_issued_rows_added": added,
                "broker_201s": expected,
                "match": added == expected,
                "note": None
                if target.self_started
                else "shared dev broker: other clients' issuances would also be counted",
            }
        elif issuing:
            ledger = {"note": "skipped: no database DSN (dev.json without database_url)"}
    out: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "loadavg_end": os.getloadavg(),
            "python": platform.python_version(),
            "client_loop": "uvloop" if args.uvloop else "asyncio",
        },
        "config": {
            "phases": phases,
            "concurrency": concurrencies,
            "db_concurrency": db_concurrencies,
            "seconds": args.seconds,
            "db_seconds": args.db_seconds,
            "warmup": args.warmup,
            "secret": args.secret,
            "db_secret": args.db_secret,
            "db_creds_path": args.db_creds_path,
            "stack": "self-started" if target.self_started else "dev.json",
            "workers": args.workers,
            "broker_cpus": args.broker_cpus,
            "broker_patches": args.broker_patches or None,
        },
        "kv": {str(c): {k: asdict(v) for k, v in r.items()} for c, r in kv.items()},
        "broker_internals": {str(c): v for c, v in internals.items()},
        "audit": {"device": "file", "log": "hmac (default)", "per_concurrency": audit_info}
        if audited is not None
        else None,
        "database": {str(c): {k: asdict(v) for k, v in r.items()} for c, r in database.items()},
        "database_cleanup": cleanup,
        "ledger_check": ledger,
    }
    out["summary"] = _kv_summary(kv)
    out["database_summary"] = _db_summary(database)
    out["targets"] = _targets(out["summary"], out["database_summary"])
    return out


# --- summary and the issue-16 targets -----------------------------------------------------


def _ratio(a: PhaseResult | None, b: PhaseResult | None) -> float | None:
    if a is None or b is None or not b.per_second:
        return None
    return round(a.per_second / b.per_second, 3)


def _cpu_us(p: PhaseResult | None, component: str = "broker") -> float | None:
    if p is None or not p.ok or component not in p.cpu_seconds:
        return None
    return round(1e6 * p.cpu_seconds[component] / p.ok)


def _kv_summary(kv: dict[int, dict[str, PhaseResult]]) -> list[dict[str, Any]]:
    """One row per concurrency: rates, ratios, broker CPU per issuance, p50 added."""
    rows = []
    for c, r in kv.items():
        direct, audit = r.get("direct"), r.get("direct-audit")
        row: dict[str, Any] = {"concurrency": c}
        for name in KV_PHASES:
            row[f"{name}_per_s"] = r[name].per_second if name in r else None
            row[f"{name}_p50_ms"] = r[name].p50_ms if name in r else None
        for name in BROKER_PHASES:
            p = r.get(name)
            row[f"{name}_over_direct"] = _ratio(p, direct)
            row[f"{name}_over_direct_audit"] = _ratio(p, audit)
            row[f"{name}_cpu_us"] = _cpu_us(p)
            row[f"{name}_p50_added_ms"] = (
                round(p.p50_ms - direct.p50_ms, 2) if p is not None and direct else None
            )
        rows.append(row)
    return rows


def _db_summary(database: dict[int, dict[str, PhaseResult]]) -> list[dict[str, Any]]:
    """One row per concurrency: OpenBao's own mint time and what the broker adds to it."""
    rows = []
    for c, r in database.items():
        d, b = r["direct"], r["broker"]

        def added_pct(x: float, y: float) -> float | None:
            return round(100 * (y - x) / x, 1) if x and x == x and y == y else None

        rows.append(
            {
                "concurrency": c,
                "direct_per_s": d.per_second,
                "direct_mean_ms": d.mean_ms,
                "direct_p50_ms": d.p50_ms,
                "broker_per_s": b.per_second,
                "broker_mean_ms": b.mean_ms,
                "broker_p50_ms": b.p50_ms,
                "added_p50_pct": added_pct(d.p50_ms, b.p50_ms),
                "added_mean_pct": added_pct(d.mean_ms, b.mean_ms),
                "broker_cpu_us": _cpu_us(b),
                "errors": d.errors + b.errors,
            }
        )
    return rows


# (label, summary key, concurrency, "min" or "max", limit, unit), from issue 16.
_KV_TARGETS = [
    ("broker/direct", "broker_over_direct", 16, "min", 0.7, ""),
    ("broker/direct", "broker_over_direct", 32, "min", 0.7, ""),
    ("frontdoor/direct", "frontdoor_over_direct", 16, "min", 0.7, ""),
    ("frontdoor/direct", "frontdoor_over_direct", 32, "min", 0.7, ""),
    ("broker CPU per issuance", "broker_cpu_us", 32, "max", 300, " µs"),
    ("broker CPU per issuance", "broker_cpu_us", 1, "max", 600, " µs"),
    ("frontdoor CPU per issuance", "frontdoor_cpu_us", 32, "max", 300, " µs"),
    ("frontdoor CPU per issuance", "frontdoor_cpu_us", 1, "max", 600, " µs"),
    ("p50 added, broker", "broker_p50_added_ms", 1, "max", 1.0, " ms"),
    ("p50 added, frontdoor", "frontdoor_p50_added_ms", 1, "max", 1.0, " ms"),
]
_DB_TARGETS = [
    ("database: broker adds to the mint (p50)", "added_p50_pct", 1, "max", 10.0, " %"),
    ("database: broker adds to the mint (p50)", "added_p50_pct", 8, "max", 10.0, " %"),
]


def _targets(summary: list[dict[str, Any]], db: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 16's targets that this run measured, each with its value and met/missed."""
    out = []
    for targets, rows in ((_KV_TARGETS, summary), (_DB_TARGETS, db)):
        by_c = {row["concurrency"]: row for row in rows}
        for label, key, c, kind, limit, unit in targets:
            value = by_c.get(c, {}).get(key)
            if value is None:
                continue
            met = value >= limit if kind == "min" else value <= limit
            out.append(
                {
                    "target": label,
                    "concurrency": c,
                    "value": value,
                    "limit": f"{'≥' if kind == 'min' else '≤'} {limit}{unit}",
                    "met": met,
                }
            )
    return out


# --- the stack ----------------------------------------------------------------------------


class SetupError(RuntimeError):
    """A server of the bench's own stack did not start (the message has its log tail)."""


class AuditedOpenBao:
    """A second dev OpenBao with a file audit device declared in its config.

    OpenBao refuses ``sys/audit`` over the API (declarative devices only), and the stack's
    server has none, so the ``direct-audit`` phase reads from this one: ``DevOpenBao`` with
    ``audit_device``, the same KV v2 secret. It sits idle during the other phases. The log
    stays HMAC'd (the default). ``close()`` stops it and removes its directory.
    """

    def __init__(self) -> None:
        from broker.stack.openbao import DevOpenBao

        self.state_dir = Path(tempfile.mkdtemp(prefix="jitbroker-bench-audit-"))
        self.server = DevOpenBao(self.state_dir, audit_device="bench-file")
        self.addr = self.server.addr
        self.root_token = self.server.root_token
        self.audit_log = self.server.audit_log

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def start(self) -> None:
        """Start it and wait for ``sys/health``; raises SetupError with the log tail."""
        from broker.stack import StackError

        try:
            self.server.start()
        except StackError as e:
            raise SetupError(f"audited OpenBao did not start: {e}") from e

    def log_size(self) -> int:
        try:
            return self.audit_log.stat().st_size
        except OSError:
            return 0

    def truncate_log(self) -> None:
        # OpenBao appends (O_APPEND): after a truncation its next line lands at offset 0.
        with contextlib.suppress(OSError):
            os.truncate(self.audit_log, 0)

    def close(self) -> None:
        try:
            self.server.stop()
        finally:
            shutil.rmtree(self.state_dir, ignore_errors=True)


class Stack:
    """DevStack + broker as a separate process; ``close()`` stops all of them, idempotent."""

    def __init__(
        self,
        *,
        profile_out: Path | None = None,
        profile_mode: str = "sample",
        patches: str = "",
        broker_log: Path | None = None,
        workers: int = 1,
        broker_cpus: str | None = None,
    ) -> None:
        self._profile_out = profile_out
        self._profile_mode = profile_mode
        self._patches = patches
        self._workers = workers
        self._broker_cpus = broker_cpus
        self._broker_log_path = broker_log
        self._tmp: Path | None = None
        self._stack: Any = None
        self._broker: subprocess.Popen[bytes] | None = None

    def start(self) -> Target:
        from broker.devenv import demo_tokens, prepare_broker
        from broker.stack.devstack import DevStack

        # Not /tmp/pytest-*: the postgres system user must be able to traverse it.
        self._tmp = Path(tempfile.mkdtemp(prefix="jitbroker-bench-"))
        state = self._tmp / "stack"
        print(f"# starting OpenBao + PostgreSQL under {state} ...", file=sys.stderr)
        self._stack = DevStack(state)
        self._stack.start()
        settings = asyncio.run(
            prepare_broker(self._stack, policies_dir=(REPO / "policies").resolve(), port=0)
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "VAULT_"))},
            "BROKER_DATABASE_URL": settings.database_url,
            "VAULT_ADDR": settings.vault_addr,
            "VAULT_TOKEN": settings.vault_token or "",
            "BROKER_POLICIES_DIR": str(settings.policies_dir),
            "BROKER_CHECKPOINT_KEY": str(settings.checkpoint_key_path),
            "BROKER_DEV_ISSUER_KEY": str(settings.dev_issuer_key_path),
            "BROKER_PORT": "0",
            "BROKER_VAULT_API_PORT": "0",
            "BROKER_REPLICA_ID": "bench-1",
            "BROKER_LEDGER_SYNCHRONOUS_STANDBY": "not-required",  # one embedded PostgreSQL
            # One subject makes every request: its quotas are lifted (their checks still
            # run on every issuance, so their cost is in the figures).
            "BROKER_QUOTA_RATE": "1000000",
            "BROKER_QUOTA_BURST": "1000000",
            "BROKER_QUOTA_LIVE_GRANTS": "1000000",
        }
        if self._profile_out is not None or self._patches:
            # Same `broker serve`, inside bench/profile_serve.py (profiler and/or experiments).
            env["BENCH_PROFILE_OUT"] = str(self._profile_out or "")
            env["BENCH_PROFILE_MODE"] = self._profile_mode if self._profile_out else "none"
            env["BENCH_PATCHES"] = self._patches
            cmd = [sys.executable, str(REPO / "bench" / "profile_serve.py")]
        else:
            cmd = [str(VENV_BIN / "broker"), "serve"]
            if self._workers > 1:
                # The supervisor's pid is the one we hold; _tree_cpu adds its workers.
                cmd += ["--workers", str(self._workers)]
        if self._broker_cpus:
            # taskset execs the broker: the pid stays the broker's.
            cmd = [shutil.which("taskset") or "taskset", "-c", self._broker_cpus, *cmd]
        out_path = self._tmp / "broker.stdout"
        log_path = self._broker_log_path or self._tmp / "broker.log"
        with out_path.open("wb") as out, log_path.open("ab") as log:
            self._broker = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                env=env,
                cwd=self._tmp,
                start_new_session=True,  # Ctrl-C reaches only us; we stop it in close()
            )
        url, vault_api = self._wait_listening(out_path, log_path)
        assert settings.dev_issuer_key_path is not None
        return Target(
            broker_url=url,
            vault_addr=settings.vault_addr,
            vault_token=settings.vault_token or "",
            bearer=demo_tokens(settings.dev_issuer_key_path)["alice"],
            ledger_dsn=self._stack.superuser_dsn("broker"),
            vault_api_url=vault_api,
            pids={
                "broker": self._broker.pid,
                "openbao": self._stack.bao.pid,
                "postgres": self._stack.pg.pid,
            },
        )

    def _wait_listening(
        self, out_path: Path, log_path: Path, timeout: float = 30.0
    ) -> tuple[str, str | None]:
        """The broker API's url and the front door's (None if it serves none)."""
        assert self._broker is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in out_path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    info = json.loads(line)
                    if isinstance(info, dict) and "listening" in info:
                        front = info.get("vault_api")
                        return str(info["listening"]), str(front) if front else None
            if self._broker.poll() is not None:
                break
            time.sleep(0.05)
        tail = log_path.read_text()[-2000:]
        raise SetupError(f"broker did not start (exit {self._broker.poll()}):\n{tail}")

    def close(self) -> None:
        try:
            proc, self._broker = self._broker, None
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # graceful: profile wrapper dumps its stats
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        finally:
            try:
                if self._stack is not None:
                    self._stack.close()
                    self._stack = None
            finally:
                if self._tmp is not None:
                    shutil.rmtree(self._tmp, ignore_errors=True)
                    self._tmp = None


def _target_from_dev_json(path: Path) -> Target:
    info = json.loads(path.read_text())
    return Target(
        broker_url=info["url"],
        vault_addr=info["vault_addr"],
        vault_token=info["vault_token"],
        bearer=info["tokens"]["alice"],
        ledger_dsn=info.get("database_url"),
        self_started=False,
        vault_api_url=info.get("vault_api_url"),
    )


# --- output -------------------------------------------------------------------------------


def _fmt_load(load: tuple[float, float, float] | list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def print_table(out: dict[str, Any]) -> None:
    m, cfg = out["machine"], out["config"]
    pinned = f"cpus {cfg['broker_cpus']} (taskset)" if cfg["broker_cpus"] else "unpinned"
    print(
        f"machine: {m['cores']} cores, python {m['python']}, client loop {m['client_loop']}; "
        f"stack {cfg['stack']}; broker serve: {cfg['workers']} worker(s), {pinned}"
    )
    print(
        f"KV: concurrency {_fmt_list(cfg['concurrency'])}, {cfg['seconds']}s each after "
        f"{cfg['warmup']}s warm-up, secret {cfg['secret']}; phases {', '.join(cfg['phases'])}"
    )
    if cfg["db_concurrency"]:
        print(
            f"database: concurrency {_fmt_list(cfg['db_concurrency'])}, {cfg['db_seconds']}s "
            f"each after {cfg['warmup']}s warm-up, {cfg['db_creds_path']} vs broker "
            f"{cfg['db_secret']}"
        )
    if out.get("audit"):
        print(
            "direct-audit: a second OpenBao (same binary, dev mode, same KV secret) with a file "
            "audit device in its config (OpenBao refuses sys/audit over the API); idle otherwise"
        )
    if cfg.get("broker_patches"):
        print(f"!! broker EXPERIMENT patches active: {cfg['broker_patches']} (not real figures)")
    audit = (out.get("audit") or {}).get("per_concurrency", {})
    for c, phases in out["kv"].items():
        print(f"\n== KV, concurrency {c} ==")
        _print_phases(phases)
        bi = out["broker_internals"].get(c) or {}
        if bi.get("ledger_batches"):
            print(
                f"broker metrics (warm-up incl.): mean server time per 201 "
                f"{bi['broker_201_ms_mean']} ms, of which KV read {bi['vault_kv_ms_mean']} ms; "
                f"ledger {bi['ledger_batches']:.0f} batches, {bi['ledger_rows_per_batch']} "
                f"rows/batch, {bi['ledger_commit_ms_mean']} ms/commit, writer busy "
                f"{bi['ledger_writer_busy_pct']}% of the time"
            )
        if c in audit:
            print(f"audit log: {audit[c]['bytes_per_request']} bytes per request (HMAC'd)")
    for c, phases in out["database"].items():
        print(f"\n== database, concurrency {c} ==")
        _print_phases(phases)
        for name in ("direct", "broker"):
            done = out["database_cleanup"].get(f"{name} c={c}") or {}
            parts = [
                f"{k.replace('_', ' ')} {v['revoked']} in {v['seconds']}s"
                + (f" (failed: {v['failed']})" if v["failed"] else "")
                for k, v in done.items()
                if v["revoked"] or v["failed"]
            ]
            if parts:
                print(f"after {name}: revoked {'; '.join(parts)} (not measured)")
    _print_summary(out["summary"])
    _print_db_summary(out["database_summary"])
    if out["targets"]:
        print("\n== issue 16 targets ==")
        for t in out["targets"]:
            verdict = "met" if t["met"] else "MISSED"
            label = f"{t['target']} at c={t['concurrency']}"
            print(f"{label:<48} {t['value']:>8} (want {t['limit']})  {verdict}")
    lc = out.get("ledger_check") or {}
    print()
    if "match" in lc:
        ok = "OK" if lc["match"] else "MISMATCH"
        print(
            f"ledger: {lc['grant_issued_rows_added']} grant.issued rows added for "
            f"{lc['broker_201s']} broker 200/201s (KV, front door, database; warm-ups incl.)"
            f" -> {ok}" + (f"  [{lc['note']}]" if lc.get("note") else "")
        )
    elif lc.get("note"):
        print(f"ledger: {lc['note']}")
    print(f"load average at end: {_fmt_load(m['loadavg_end'])}")


def _fmt_list(values: list[int]) -> str:
    return ",".join(str(v) for v in values)


def _f(value: float | None, spec: str, width: int) -> str:
    """``value`` formatted with ``spec``, right-aligned in ``width``; ``-`` if None."""
    return f"{'-' if value is None else format(value, spec):>{width}}"


def _print_phases(phases: dict[str, dict[str, Any]]) -> None:
    head = (
        f"{'phase':<16} {'ok/s':>8} {'mean ms':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'ok':>7} {'errors':>6}  {'busy%':>5}  {'load 1/5/15 before':<18}  "
        "cpu s by process"
    )
    print(head)
    print("-" * len(head))
    for p in phases.values():
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in p["cpu_seconds"].items())
        print(
            f"{p['name']:<16} {p['per_second']:>8.1f} {p['mean_ms']:>8.2f} {p['p50_ms']:>8.2f} "
            f"{p['p90_ms']:>8.2f} {p['p99_ms']:>8.2f} {p['max_ms']:>8.1f} {p['ok']:>7} "
            f"{p['errors']:>6}  {p['machine_busy_pct']:>5.1f}  "
            f"{_fmt_load(p['load_before']):<18}  {cpu}"
        )
        if p["errors"]:
            print(f"{'':17}statuses: {p['statuses']}")
        if p["ok"]:
            per_req = ", ".join(f"{k} {1e6 * v / p['ok']:.0f}" for k, v in p["cpu_seconds"].items())
            print(f"{'':17}cpu µs per ok request: {per_req}")
            sys_part = ", ".join(f"{k} {v:.1f}" for k, v in p["cpu_system_seconds"].items())
            print(f"{'':17}of which kernel (s): {sys_part}")


def _print_summary(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    print("\n== summary: KV issuance (ratios: ÷direct / ÷direct-audit; cpu: broker µs per ok) ==")
    head = (
        f"{'conc':>4} {'direct/s':>9} {'audit/s':>9} {'broker/s':>9} {'÷dir':>6} {'÷aud':>6} "
        f"{'front/s':>9} {'÷dir':>6} {'÷aud':>6} {'cpu µs':>7} {'cpu µs':>7}  "
        "p50 ms (+added over direct)"
    )
    print(head)
    print(f"{'':>4} {'':>9} {'':>9} {'':>9} {'':>6} {'':>6} {'':>9} {'':>6} {'':>6} "
          f"{'broker':>7} {'front':>7}")  # fmt: skip
    print("-" * len(head))
    for r in rows:
        p50 = []
        for name, short in (("direct", "direct"), ("broker", "broker"), ("frontdoor", "front")):
            value, added = r[f"{name}_p50_ms"], r.get(f"{name}_p50_added_ms")
            if value is not None:
                p50.append(f"{short} {value:.2f}" + ("" if added is None else f" ({added:+.2f})"))
        print(
            f"{r['concurrency']:>4} {_f(r['direct_per_s'], '.1f', 9)} "
            f"{_f(r['direct-audit_per_s'], '.1f', 9)} {_f(r['broker_per_s'], '.1f', 9)} "
            f"{_f(r['broker_over_direct'], '.3f', 6)} "
            f"{_f(r['broker_over_direct_audit'], '.3f', 6)} "
            f"{_f(r['frontdoor_per_s'], '.1f', 9)} {_f(r['frontdoor_over_direct'], '.3f', 6)} "
            f"{_f(r['frontdoor_over_direct_audit'], '.3f', 6)} "
            f"{_f(r['broker_cpu_us'], '.0f', 7)} {_f(r['frontdoor_cpu_us'], '.0f', 7)}  "
            + ", ".join(p50)
        )


def _print_db_summary(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    print("\n== summary: database credentials (OpenBao's own mint vs through the broker) ==")
    head = (
        f"{'conc':>4} {'direct/s':>9} {'mean ms':>8} {'p50 ms':>8} {'broker/s':>9} "
        f"{'mean ms':>8} {'p50 ms':>8} {'added p50':>10} {'added mean':>11} {'cpu µs':>7} "
        f"{'errors':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['concurrency']:>4} {r['direct_per_s']:>9.1f} {r['direct_mean_ms']:>8.2f} "
            f"{r['direct_p50_ms']:>8.2f} {r['broker_per_s']:>9.1f} {r['broker_mean_ms']:>8.2f} "
            f"{r['broker_p50_ms']:>8.2f} {_f(r['added_p50_pct'], '+.1f', 9)}% "
            f"{_f(r['added_mean_pct'], '+.1f', 10)}% {_f(r['broker_cpu_us'], '.0f', 7)} "
            f"{r['errors']:>6}"
        )


def print_profile(path: Path, mode: str, limit: int) -> None:
    import pstats

    if mode == "sample":
        summary = Path(str(path) + ".txt")
        if summary.exists():
            print(f"\n# broker CPU profile (collapsed stacks in {path})", file=sys.stderr)
            print(summary.read_text(), file=sys.stderr)
        else:
            print(f"# no profile written to {summary}", file=sys.stderr)
        return
    if not path.exists():
        print(f"# no profile written to {path}", file=sys.stderr)
        return
    stats = pstats.Stats(str(path), stream=sys.stderr)
    stats.strip_dirs()
    print(f"\n# broker profile {path}: top {limit} by own time", file=sys.stderr)
    stats.sort_stats("tottime").print_stats(limit)
    print(f"# top {limit} by cumulative time", file=sys.stderr)
    stats.sort_stats("cumulative").print_stats(limit)


# --- main ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--concurrency",
        type=_int_list,
        default=[1, 16, 32],
        help="comma list of closed-loop clients for the KV phases (default 1,16,32)",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per KV phase")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per phase")
    p.add_argument("--secret", default="stripe/test", help="KV v2 catalog entry alice may read")
    p.add_argument(
        "--db-concurrency",
        type=_int_list,
        default=[1, 8],
        help="comma list of clients for the database phase (default 1,8)",
    )
    p.add_argument(
        "--db-seconds",
        type=float,
        default=8.0,
        help="measured seconds per database phase (each mint creates a PostgreSQL role)",
    )
    p.add_argument("--db-secret", default="db/orders-ro", help="database catalog entry for alice")
    p.add_argument(
        "--db-creds-path",
        default="database/creds/orders-ro",
        help="the same credential, read from OpenBao directly",
    )
    p.add_argument("--dev-json", type=Path, help="use a running `broker dev` (its dev.json)")
    p.add_argument(
        "--phases",
        default=",".join(ALL_PHASES),
        help="comma list: direct (OpenBao), direct-audit (OpenBao with a file audit device),\n"
        "broker (native API), frontdoor (Vault API), database (dynamic PostgreSQL logins)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="`broker serve --workers N` (passed only when N > 1; needs a broker with the flag)",
    )
    p.add_argument(
        "--broker-cpus",
        metavar="LIST",
        help="run the broker under `taskset -c LIST` (e.g. 0 or 0,1)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.add_argument(
        "--no-uvloop", dest="uvloop", action="store_false", help="plain asyncio in the client"
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="run the broker under a profiler (bench/profile_serve.py), write stats here",
    )
    p.add_argument("--profile-top", type=int, default=30)
    p.add_argument(
        "--profile-mode",
        choices=("sample", "cprofile"),
        default="sample",
        help="sample: 1 ms CPU sampling, collapsed stacks (default); cprofile: pstats",
    )
    p.add_argument(
        "--broker-patches",
        default="",
        help="EXPERIMENTS ONLY (see bench/profile_serve.py): jwtcache,kvcache,nometrics,ledgerconn",
    )
    p.add_argument("--broker-log", type=Path, help="keep the broker's stderr in this file")
    return p


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _refusal(args: argparse.Namespace) -> str | None:
    """Why these options cannot run together, or None."""
    self_started_only = {
        "--profile": args.profile,
        "--broker-patches": args.broker_patches,
        "--workers": args.workers > 1,
        "--broker-cpus": args.broker_cpus,
    }
    if args.dev_json and (used := [k for k, v in self_started_only.items() if v]):
        return f"{'/'.join(used)} need the self-started stack (not --dev-json)"
    try:
        _phase_list(args.phases)
    except SystemExit as e:
        return str(e)
    if args.workers < 1:
        return "--workers must be at least 1"
    if args.workers > 1 and (args.profile or args.broker_patches):
        # Both wrap one broker process (bench/profile_serve.py); workers would escape them.
        return "--profile/--broker-patches measure one broker process: use --workers 1"
    if args.broker_cpus is not None:
        if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", args.broker_cpus):
            return f"--broker-cpus: want a CPU list such as 0 or 0,1, not {args.broker_cpus!r}"
        if shutil.which("taskset") is None:
            return "--broker-cpus needs taskset (util-linux; Debian: apt-get install util-linux)"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (why := _refusal(args)) is not None:
        print(why, file=sys.stderr)
        return 2
    phases = _phase_list(args.phases)
    if args.uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            args.uvloop = False
    stack: Stack | None = None
    audited: AuditedOpenBao | None = None
    with _sigterm_as_interrupt():
        try:
            if args.dev_json:
                target = _target_from_dev_json(args.dev_json)
            else:
                stack = Stack(
                    profile_out=args.profile.resolve() if args.profile else None,
                    profile_mode=args.profile_mode,
                    patches=args.broker_patches,
                    broker_log=args.broker_log,
                    workers=args.workers,
                    broker_cpus=args.broker_cpus,
                )
                target = stack.start()
            if "direct-audit" in phases:
                audited = AuditedOpenBao()
                audited.start()
                if target.pids and audited.pid is not None:
                    target.pids["openbao-audit"] = audited.pid
            print(f"# broker {target.broker_url}, openbao {target.vault_addr}", file=sys.stderr)
            out = asyncio.run(run_bench(target, args, audited))
        except KeyboardInterrupt:
            print("# interrupted; stopping the stack", file=sys.stderr)
            return 130
        except SetupError as e:
            print(f"# {e}", file=sys.stderr)
            if args.workers > 1:
                print("# (--workers N needs a `broker serve` that has the flag)", file=sys.stderr)
            return 1
        finally:
            try:
                if audited is not None:
                    audited.close()
            finally:
                if stack is not None:
                    stack.close()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print_table(out)
    if args.profile:
        print_profile(args.profile, args.profile_mode, args.profile_top)
    mismatch = (out.get("ledger_check") or {}).get("match") is False
    return 1 if mismatch else 0


if __name__ == "__main__":
    raise SystemExit(main())
