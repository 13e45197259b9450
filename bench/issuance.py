"""Issuance benchmark: direct OpenBao KV v2 reads vs broker KV issuances, same concurrency.

Three phases: ``direct`` (OpenBao itself), ``broker`` (the native ``POST /v1/credentials``)
and ``frontdoor`` (the same KV read as a Vault client makes it, through the broker's
Vault-compatible API with a broker session token).

Client, broker, OpenBao and PostgreSQL run as separate processes (as in production), all on
this machine, so they share its cores; the client's own CPU cost is the same for both
measurements. Each broker issuance is a durable, hash-chained ledger row committed before
the 201 is sent; the run checks afterwards that ``grant.issued`` rows grew by exactly the
number of 201s.

    .venv/bin/python bench/issuance.py                    # starts its own stack
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


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def _tree_cpu(pid: int) -> tuple[float, float]:
    """CPU of a process and its direct children (Postgres: postmaster + backends)."""
    user, system = _proc_cpu(pid)
    for kid in _children(pid):
        u, s = _proc_cpu(kid)
        user, system = user + u, system + s
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
        for name, pid in pids.items():
            comp[name] = _tree_cpu(pid)
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
) -> tuple[PhaseResult, int]:
    """Warm up, then measure. Returns the result and the number of ``ok_status`` answers
    during warm-up (they also wrote ledger rows)."""
    warm_lat, warm_statuses, _ = await _drive(session, request, concurrency, warmup)
    del warm_lat
    if on_measure is not None:
        on_measure()
    load_before = os.getloadavg()
    before = CpuSnapshot.take(pids)
    latencies, statuses, elapsed = await _drive(session, request, concurrency, seconds)
    after = CpuSnapshot.take(pids)
    cpu, cpu_sys, busy = before.delta(after)
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


def _direct_request(target: Target, secret: str) -> Request:
    url = f"{target.vault_addr.rstrip('/')}/v1/secret/data/{secret}"
    headers = {"X-Vault-Token": target.vault_token, "X-Vault-Request": "true"}

    async def call(session: aiohttp.ClientSession) -> int:
        async with session.get(url, headers=headers) as resp:
            await resp.read()
            return resp.status

    return call


def _broker_request(target: Target, secret: str) -> Request:
    url = f"{target.broker_url.rstrip('/')}/v1/credentials"
    body = json.dumps({"secret": secret}).encode()
    headers = {"Authorization": f"Bearer {target.bearer}", "Content-Type": "application/json"}

    async def call(session: aiohttp.ClientSession) -> int:
        async with session.post(url, data=body, headers=headers) as resp:
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


def _front_door_request(target: Target, secret: str, token: str) -> Request:
    # Exactly the request a Vault client makes for a KV v2 read, sent to the broker.
    assert target.vault_api_url is not None
    url = f"{target.vault_api_url.rstrip('/')}/v1/secret/data/{secret}"
    headers = {"X-Vault-Token": token, "X-Vault-Request": "true"}

    async def call(session: aiohttp.ClientSession) -> int:
        async with session.get(url, headers=headers) as resp:
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


def _broker_internals(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after[k] - before[k] for k in before}
    batches, kv, http = d["ledger_batches"], d["vault_kv_calls"], d["http_201s"]
    return {
        "ledger_batches": batches,
        "ledger_rows_per_batch": round(d["ledger_rows"] / batches, 1) if batches else 0.0,
        "ledger_commit_ms_mean": round(1000 * d["ledger_commit_s"] / batches, 2) if batches else 0,
        "vault_kv_ms_mean": round(1000 * d["vault_kv_s"] / kv, 2) if kv else 0.0,
        "broker_201_ms_mean": round(1000 * d["http_201_s"] / http, 2) if http else 0.0,
    }


def _reset_profile(target: Target) -> Callable[[], None]:
    def reset() -> None:
        # The sampling profiler in bench/profile_serve.py starts afresh on SIGUSR1.
        with contextlib.suppress(KeyError, ProcessLookupError):
            os.kill(target.pids["broker"], signal.SIGUSR1)

    return reset


async def _count_issued(dsn: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        n = await conn.fetchval("SELECT count(*) FROM ledger.events WHERE event = 'grant.issued'")
        return int(n)
    finally:
        await conn.close()


async def run_bench(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    c = args.concurrency
    connector = aiohttp.TCPConnector(limit=c * 2, limit_per_host=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    results: dict[str, PhaseResult] = {}
    ledger: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if "frontdoor" in phases and target.vault_api_url is None:
            raise SystemExit("frontdoor: this broker serves no Vault API (vault_api_url)")
        fd_token = await _front_door_login(session, target) if "frontdoor" in phases else ""
        # Fail fast with a clear message if either side is not answering as expected.
        probes: list[tuple[str, Request, int]] = [
            ("direct", _direct_request(target, args.secret), 200),
            ("broker", _broker_request(target, args.secret), 201),
        ]
        if fd_token:
            probes.append(("frontdoor", _front_door_request(target, args.secret, fd_token), 200))
        for name, req, want in probes:
            if name in phases:
                got = await req(session)
                if got != want:
                    raise SystemExit(f"{name}: probe request answered HTTP {got}, wanted {want}")
        issued_before = await _count_issued(target.ledger_dsn) if target.ledger_dsn else None
        warm_ok = 0
        if "direct" in phases:
            results["direct"], _ = await _phase(
                "direct",
                session,
                _direct_request(target, args.secret),
                200,
                concurrency=c,
                seconds=args.seconds,
                warmup=args.warmup,
                pids=target.pids,
            )
        if "broker" in phases:
            scraped = await _scrape(session, target.broker_url)
            scraped_at = time.perf_counter()
            results["broker"], warm_ok = await _phase(
                "broker",
                session,
                _broker_request(target, args.secret),
                201,
                concurrency=c,
                seconds=args.seconds,
                warmup=args.warmup,
                pids=target.pids,
                on_measure=(
                    _reset_profile(target)
                    if args.profile and args.profile_mode == "sample"
                    else None
                ),
            )
        fd_warm_ok = 0
        if fd_token:
            results["frontdoor"], fd_warm_ok = await _phase(
                "frontdoor",
                session,
                _front_door_request(target, args.secret, fd_token),
                200,
                concurrency=c,
                seconds=args.seconds,
                warmup=args.warmup,
                pids=target.pids,
            )
        internals: dict[str, float] = {}
        if "broker" in results:
            # Includes the warm-up: means only, so that does not skew them much.
            internals = _broker_internals(scraped, await _scrape(session, target.broker_url))
            # Share of wall time the single ledger writer task spent inside a batch commit:
            # near 100% means it is the serial bottleneck (rate = rows/batch / commit time).
            window = time.perf_counter() - scraped_at
            internals["ledger_writer_busy_pct"] = round(
                100
                * internals["ledger_batches"]
                * internals["ledger_commit_ms_mean"]
                / 1000
                / window,
                1,
            )
        issuing = [p for p in ("broker", "frontdoor") if p in results]
        if target.ledger_dsn and issued_before is not None and issuing:
            issued_after = await _count_issued(target.ledger_dsn)
            # Every 200/201 of either API is one grant.issued row, warm-up included.
            expected = sum(results[p].ok for p in issuing) + warm_ok + fd_warm_ok
            added = issued_after - issued_before
            ledger = {
                "grant_issued_rows_added": added,
                "broker_201s": expected,
                "match": added == expected,
                "note": None
                if target.self_started
                else "shared dev broker: other clients' issuances would also be counted",
            }
        elif "broker" in results:
            ledger = {"note": "skipped: no database DSN (dev.json without database_url)"}
    out: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "loadavg_end": os.getloadavg(),
            "python": platform.python_version(),
            "client_loop": "uvloop" if args.uvloop else "asyncio",
        },
        "config": {
            "concurrency": c,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "secret": args.secret,
            "stack": "self-started" if target.self_started else "dev.json",
            "broker_patches": args.broker_patches or None,
        },
        "phases": {k: asdict(v) for k, v in results.items()},
        "ledger_check": ledger,
        "broker_internals": internals,
    }
    if "direct" in results and "broker" in results and results["direct"].per_second:
        out["ratio_broker_over_direct"] = round(
            results["broker"].per_second / results["direct"].per_second, 3
        )
    if "direct" in results and "frontdoor" in results and results["direct"].per_second:
        out["ratio_frontdoor_over_direct"] = round(
            results["frontdoor"].per_second / results["direct"].per_second, 3
        )
    return out


# --- the stack ----------------------------------------------------------------------------


class Stack:
    """DevStack + broker as a separate process; ``close()`` stops all of them, idempotent."""

    def __init__(
        self,
        *,
        profile_out: Path | None = None,
        profile_mode: str = "sample",
        patches: str = "",
        broker_log: Path | None = None,
    ) -> None:
        self._profile_out = profile_out
        self._profile_mode = profile_mode
        self._patches = patches
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
        }
        if self._profile_out is not None or self._patches:
            # Same `broker serve`, inside bench/profile_serve.py (profiler and/or experiments).
            env["BENCH_PROFILE_OUT"] = str(self._profile_out or "")
            env["BENCH_PROFILE_MODE"] = self._profile_mode if self._profile_out else "none"
            env["BENCH_PATCHES"] = self._patches
            cmd = [sys.executable, str(REPO / "bench" / "profile_serve.py")]
        else:
            cmd = [str(VENV_BIN / "broker"), "serve"]
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
        raise RuntimeError(f"broker did not start (exit {self._broker.poll()}):\n{tail}")

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
    print(
        f"machine: {m['cores']} cores, python {m['python']}, client loop {m['client_loop']}; "
        f"stack {cfg['stack']}; concurrency {cfg['concurrency']}, "
        f"{cfg['seconds']}s each after {cfg['warmup']}s warm-up; secret {cfg['secret']}"
    )
    if cfg.get("broker_patches"):
        print(f"!! broker EXPERIMENT patches active: {cfg['broker_patches']} (not real figures)")
    head = (
        f"{'phase':<8} {'ok/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'ok':>7} {'errors':>6}  {'busy%':>5}  {'load 1/5/15 before':<18}  cpu s by process"
    )
    print(head)
    print("-" * len(head))
    for name, p in out["phases"].items():
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in p["cpu_seconds"].items())
        print(
            f"{name:<8} {p['per_second']:>8.1f} {p['p50_ms']:>8.2f} {p['p90_ms']:>8.2f} "
            f"{p['p99_ms']:>8.2f} {p['max_ms']:>8.1f} {p['ok']:>7} {p['errors']:>6}  "
            f"{p['machine_busy_pct']:>5.1f}  {_fmt_load(p['load_before']):<18}  {cpu}"
        )
        if p["errors"]:
            print(f"         statuses: {p['statuses']}")
        if p["ok"]:
            per_req = ", ".join(f"{k} {1e6 * v / p['ok']:.0f}" for k, v in p["cpu_seconds"].items())
            print(f"         cpu µs per ok request: {per_req}")
            sys_part = ", ".join(f"{k} {v:.1f}" for k, v in p["cpu_system_seconds"].items())
            print(f"         of which kernel (s): {sys_part}")
    bi = out.get("broker_internals") or {}
    if bi.get("ledger_batches"):
        print(
            f"broker metrics (warm-up incl.): mean server time per 201 {bi['broker_201_ms_mean']}"
            f" ms, of which KV read {bi['vault_kv_ms_mean']} ms; ledger "
            f"{bi['ledger_batches']:.0f} batches, {bi['ledger_rows_per_batch']} rows/batch, "
            f"{bi['ledger_commit_ms_mean']} ms/commit, writer busy "
            f"{bi['ledger_writer_busy_pct']}% of the time"
        )
    if "ratio_broker_over_direct" in out:
        ratio = out["ratio_broker_over_direct"]
        verdict = "meets" if ratio >= 0.5 else "BELOW"
        print(f"ratio broker/direct: {ratio:.3f}  ({verdict} the 0.5 target)")
    if "ratio_frontdoor_over_direct" in out:
        print(f"ratio frontdoor/direct: {out['ratio_frontdoor_over_direct']:.3f}  (Vault API)")
    lc = out.get("ledger_check") or {}
    if "match" in lc:
        ok = "OK" if lc["match"] else "MISMATCH"
        print(
            f"ledger: {lc['grant_issued_rows_added']} grant.issued rows added for "
            f"{lc['broker_201s']} 200/201s (incl. warm-up) -> {ok}"
            + (f"  [{lc['note']}]" if lc.get("note") else "")
        )
    elif lc.get("note"):
        print(f"ledger: {lc['note']}")
    print(f"load average at end: {_fmt_load(m['loadavg_end'])}")


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
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=15.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per phase")
    p.add_argument("--secret", default="stripe/test", help="KV v2 catalog entry alice may read")
    p.add_argument("--dev-json", type=Path, help="use a running `broker dev` (its dev.json)")
    p.add_argument(
        "--phases",
        default="direct,broker,frontdoor",
        help="comma list: direct (OpenBao), broker (native API), frontdoor (Vault API)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.add_argument(
        "--no-uvloop", dest="uvloop", action="store_false", help="plain asyncio in the client"
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="run the broker under cProfile (bench/profile_serve.py), write stats here",
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (args.profile or args.broker_patches) and args.dev_json:
        print(
            "--profile/--broker-patches need the self-started stack (not --dev-json)",
            file=sys.stderr,
        )
        return 2
    if args.uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            args.uvloop = False
    stack: Stack | None = None
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
                )
                target = stack.start()
            print(f"# broker {target.broker_url}, openbao {target.vault_addr}", file=sys.stderr)
            out = asyncio.run(run_bench(target, args))
        except KeyboardInterrupt:
            print("# interrupted; stopping the stack", file=sys.stderr)
            return 130
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
