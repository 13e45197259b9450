"""The ledger under concurrent writers (issue 16): what chain contention between replicas
costs, without HTTP.

Starts its own PostgreSQL (and OpenBao, unused: ``DevStack`` in a temp dir, migrated as
``broker dev`` does), then, for each W in ``--writers`` (default 1,2,4,8), runs W writer
*processes* (spawned, so they can use separate cores). Each is a replica as far as the
ledger can tell: its own asyncpg pool as the writer role, its own ``LedgerWriter`` with
its own replica name, driven by ``--concurrency`` (32) closed-loop appenders, so batches
form as under HTTP load. Every append is a ``grant.issued`` row shaped as
``broker/grants/service.py`` writes it (principal fields, a grant id, the context body,
the offboarding guard key in ``requires_absent``). After ``--warmup`` (2 s) each phase
measures for ``--seconds`` (10):

- rows/s: rows whose batch committed inside the window, all writers together;
- p50/p99 append latency (``append()`` called -> its row committed), appends that
  started and ended inside the window;
- batches/s and rows/batch, the share of batches committed on the locked path and the
  statements refused because another writer had moved the head (``conflicts``);
- CPU seconds of PostgreSQL (postmaster and every backend, from /proc) and of the writer
  processes, over the window; the load average before the phase.

A first phase, ``1x1``, is one writer with one appender: the commit latency floor.

After the phases: ``verify_ledger`` (the library behind ``broker verify``) over the
whole ledger, and the rows in ``ledger.events`` compared with the appends that returned
a seq. Then ``trigger cost``: one batch of ``--trigger-rows`` (512) rows built by the
writer itself, ``EXPLAIN (ANALYZE)`` of its INSERT with ``events_chain`` on and off
(in a transaction rolled back, as the superuser), and the head lookup and the dedupe
probe that the trigger runs per row, each timed on its own.

    .venv/bin/python bench/ledger_writers.py                    # ~1.5 min
    .venv/bin/python bench/ledger_writers.py --writers 1,2 --seconds 5
    .venv/bin/python bench/ledger_writers.py --json > result.json

See bench/README.md for how to read the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")


# --- one writer process ------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    dsn: str
    replica: str
    concurrency: int
    start_at: float  # time.time() when appending starts (warm-up first)
    warmup: float
    seconds: float
    seed: int


def _event(rng: random.Random, subject: str) -> Any:
    """A ``grant.issued`` row as the grants service writes it (a KV read)."""
    from broker.ledger import NewEvent

    team = rng.randrange(40)
    secret = rng.choice((f"team-{team:02d}/api-key", "stripe/test", f"db/team-{team:02d}-ro"))
    return NewEvent(
        event="grant.issued",
        outcome="issued",
        subject=subject,
        subject_kind="human",
        secret=secret,
        role=f"team-{team:02d}-dev",
        policy_version="sha256:" + "7" * 64,
        grant_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        request_id=f"req-{rng.getrandbits(64):016x}",
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
        body={
            "engine": "kv2",
            "mount": "secret",
            "path": secret,
            "ttl": 900,
            "reason": None,
            "ticket": None,
            "role_source": "policies/teams.yaml:12",
            "issuer": "https://idp.example.com",
            "groups": ["engineering", f"team-{team:02d}"],
        },
        # The offboarding guard every issuance carries (blocklist.issue_guard): absent.
        requires_absent=(f"offboarding:{subject}:0:started",),
    )


async def _drive(spec: _Spec) -> dict[str, Any]:
    from broker.errors import LedgerUnavailable
    from broker.ledger import LedgerWriter, connect_pool

    rng = random.Random(spec.seed)
    measure_from = spec.start_at + spec.warmup
    measure_to = measure_from + spec.seconds
    # perf_counter for durations, time.time() shared with the other processes for windows
    offset = time.time() - time.perf_counter()
    window_rows = window_batches = 0

    def on_commit(rows: int, seconds: float, head: int) -> None:
        nonlocal window_rows, window_batches
        if measure_from <= time.perf_counter() + offset <= measure_to:
            window_rows += rows
            window_batches += 1

    pool = await connect_pool(spec.dsn, min_size=1, max_size=2)
    writer = LedgerWriter(pool, replica=spec.replica, on_commit=on_commit)
    writer.start()
    latencies: list[float] = []
    appended = errors = 0

    async def appender(k: int) -> None:
        nonlocal appended, errors
        subject = f"{spec.replica}-user-{k}"
        while True:
            began = time.perf_counter()
            if began + offset >= measure_to:
                return
            try:
                result = await writer.append(_event(rng, subject))
            except LedgerUnavailable:
                errors += 1
                continue
            ended = time.perf_counter()
            if result.seq is not None:
                appended += 1
            if began + offset >= measure_from and ended + offset <= measure_to:
                latencies.append(ended - began)

    def cpu() -> float:
        u = resource.getrusage(resource.RUSAGE_SELF)
        return u.ru_utime + u.ru_stime

    async def window() -> tuple[int, int, float]:
        """Counters and CPU of this process over the measured window."""
        await asyncio.sleep(max(0.0, measure_from - time.time()))
        locked, conflicts, used = writer.locked_batches, writer.conflicts, cpu()
        await asyncio.sleep(max(0.0, measure_to - time.time()))
        return writer.locked_batches - locked, writer.conflicts - conflicts, cpu() - used

    try:
        await asyncio.sleep(max(0.0, spec.start_at - time.time()))
        sampler = asyncio.create_task(window())
        await asyncio.gather(*(appender(k) for k in range(spec.concurrency)))
        locked, conflicts, cpu_s = await sampler
    finally:
        await writer.stop()
        await pool.close()
    latencies.sort()
    return {
        "replica": spec.replica,
        "appended": appended,  # every append that returned a seq, warm-up included
        "errors": errors,
        "rows": window_rows,
        "batches": window_batches,
        "locked_batches": locked,
        "conflicts": conflicts,
        "cpu_s": cpu_s,
        "latencies": latencies,
    }


def _child(spec: _Spec, ready: Any, go: Any, start_at: Any, results: Any) -> None:
    """One writer process: import, say ready, wait for the common start, drive, report."""
    try:
        import broker.ledger  # noqa: F401  (the import is the slow part of a start)

        ready.put(spec.replica)
        go.wait()
        spec = _Spec(**{**asdict(spec), "start_at": start_at.value})
        results.put(asyncio.run(_drive(spec)))
    except BaseException as e:  # report, so the parent does not wait forever
        results.put({"replica": spec.replica, "error": f"{type(e).__name__}: {e}"})


# --- the parent: phases, CPU, checks -----------------------------------------------------


def _tree_cpu(pid: int) -> float:
    """utime+stime (s) of ``pid`` and every descendant (PostgreSQL: postmaster, backends)."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total / _TICK


def _machine_ticks() -> tuple[int, int]:
    """(busy, all) jiffies of the whole machine, steal left out of both."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    steal = values[7] if len(values) > 7 else 0
    total = sum(values[:8]) - steal
    return total - idle, total


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] if values else 0.0


def _phase(
    dsn: str, pg_pid: int, writers: int, concurrency: int, args: argparse.Namespace, tag: int
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = []
    for i in range(writers):
        spec = _Spec(
            dsn=dsn,
            replica=f"bench-{tag}-w{i + 1}",
            concurrency=concurrency,
            start_at=0.0,
            warmup=args.warmup,
            seconds=args.seconds,
            seed=tag * 100 + i,
        )
        proc = ctx.Process(target=_child, args=(spec, ready, go, start_at, results), daemon=True)
        proc.start()
        procs.append(proc)
    try:
        for _ in procs:
            ready.get(timeout=120)
        load = os.getloadavg()
        start_at.value = time.time() + 0.5
        go.set()
        measure_from = start_at.value + args.warmup
        time.sleep(max(0.0, measure_from - time.time()))
        pg0, m0 = _tree_cpu(pg_pid), _machine_ticks()
        time.sleep(max(0.0, measure_from + args.seconds - time.time()))
        pg1, m1 = _tree_cpu(pg_pid), _machine_ticks()
        reports = [results.get(timeout=60 + args.seconds) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    failed = [r for r in reports if "error" in r]
    if failed:
        raise SystemExit(f"writer process failed: {failed}")
    latencies = sorted(t for r in reports for t in r["latencies"])
    rows = sum(r["rows"] for r in reports)
    batches = sum(r["batches"] for r in reports)
    busy = (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
    return {
        "writers": writers,
        "concurrency": concurrency,
        "rows": rows,
        "rows_per_s": round(rows / args.seconds),
        "p50_ms": _ms(statistics.median(latencies)) if latencies else 0.0,
        "p99_ms": _ms(_pct(latencies, 0.99)),
        "max_ms": _ms(latencies[-1]) if latencies else 0.0,
        "batches": batches,
        "batches_per_s": round(batches / args.seconds),
        "rows_per_batch": round(rows / batches, 1) if batches else 0.0,
        "locked_share": round(sum(r["locked_batches"] for r in reports) / batches, 3)
        if batches
        else 0.0,
        "conflicts": sum(r["conflicts"] for r in reports),
        "errors": sum(r["errors"] for r in reports),
        "appended": sum(r["appended"] for r in reports),
        "pg_cpu_s": round(pg1 - pg0, 2),
        "writers_cpu_s": round(sum(r["cpu_s"] for r in reports), 2),
        "machine_busy": round(busy, 3),
        "pg_cpu_us_per_row": round((pg1 - pg0) / rows * 1e6) if rows else 0,
        "load_before": [round(v, 2) for v in load],
    }


async def _check(settings: Any, appended: int) -> dict[str, Any]:
    """The library behind ``broker verify`` over the whole ledger, and the row count."""
    from broker.cli._keys import checkpoint_keys
    from broker.ledger import CheckpointVerifier, connect_one, verify_ledger

    _, keys = checkpoint_keys(settings)
    conn = await connect_one(settings.database_url)
    try:
        report = await verify_ledger(
            conn,
            verifier=CheckpointVerifier(keys),
            origin=settings.ledger_origin,
            max_unsigned_seconds=None,  # no checkpointer runs here
        )
        in_db = await conn.fetchval("SELECT count(*) FROM ledger.events")
        replicas = await conn.fetchval("SELECT count(DISTINCT replica) FROM ledger.events")
    finally:
        await conn.close()
    return {
        "verify_ok": report.ok,
        "verify_rows": report.rows,
        "problems": report.problems[:5],
        "rows_in_ledger": in_db,
        "rows_appended": appended,
        "replicas": replicas,
        "counts_match": in_db == appended,
    }


# --- the trigger's own cost --------------------------------------------------------------


# check_chain's three parts, each in a loop of n (the lock re-entered, as row 2..n of a
# batch re-enter it); microseconds per iteration, the empty loop's time subtracted.
_PARTS_FUNCTION = """
CREATE FUNCTION pg_temp.parts(n integer) RETURNS TABLE (part text, us double precision)
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz; empty double precision;
    head_seq bigint; head_hash bytea; head_at timestamptz; found_key boolean;
BEGIN
    t0 := clock_timestamp();
    FOR i IN 1..n LOOP head_seq := i; END LOOP;
    empty := extract(epoch FROM clock_timestamp() - t0) * 1e6 / n;
    t0 := clock_timestamp();
    FOR i IN 1..n LOOP PERFORM pg_advisory_xact_lock(119182731994482); END LOOP;
    part := 'advisory_lock'; us := extract(epoch FROM clock_timestamp() - t0) * 1e6 / n - empty;
    RETURN NEXT;
    t0 := clock_timestamp();
    FOR i IN 1..n LOOP
        SELECT seq, hash, recorded_at INTO head_seq, head_hash, head_at
        FROM ledger.events ORDER BY recorded_at DESC, seq DESC LIMIT 1;
    END LOOP;
    part := 'head_lookup'; us := extract(epoch FROM clock_timestamp() - t0) * 1e6 / n - empty;
    RETURN NEXT;
    t0 := clock_timestamp();
    FOR i IN 1..n LOOP
        found_key := EXISTS (SELECT 1 FROM ledger.events WHERE dedupe_key = 'absent:' || i);
    END LOOP;
    part := 'dedupe_probe'; us := extract(epoch FROM clock_timestamp() - t0) * 1e6 / n - empty;
    RETURN NEXT;
END;
$$
"""


class _Capture:
    """Stands in for a connection: keeps the statement and rows the writer would send."""

    def __init__(self) -> None:
        self.sql = ""
        self.args: tuple[Any, ...] = ()

    async def execute(self, sql: str, *args: Any) -> str:
        self.sql, self.args = sql, args
        return ""


async def _trigger_cost(admin_dsn: str, rows: int, repeats: int) -> dict[str, Any]:
    """EXPLAIN ANALYZE of one ``rows``-row batch INSERT, events_chain on and off (rolled
    back), plus the trigger's head lookup and dedupe probe timed alone."""
    import asyncpg

    from broker.ledger import LedgerWriter
    from broker.ledger.writer import _HEAD

    conn = await asyncpg.connect(admin_dsn, timeout=10)
    rng = random.Random(16)
    try:
        head = await conn.fetchrow(_HEAD)
        capture = _Capture()
        # The writer's own row builder (hashes, canonical spelling), chained on the head.
        writer = LedgerWriter(conn, replica="bench-trigger")  # type: ignore[arg-type]
        writer._last_time = head["recorded_at"]
        events = [_event(rng, f"trigger-user-{i % 50}") for i in range(rows)]
        await writer._insert(capture, events, (head["seq"], bytes(head["hash"])), set())  # type: ignore[arg-type]

        async def explain(disable: bool) -> dict[str, Any]:
            tx = conn.transaction()
            await tx.start()
            try:
                if disable:
                    await conn.execute("ALTER TABLE ledger.events DISABLE TRIGGER events_chain")
                plan = json.loads(
                    await conn.fetchval(
                        "EXPLAIN (ANALYZE, FORMAT JSON) " + capture.sql, *capture.args
                    )
                )[0]
            finally:
                await tx.rollback()
            trig = {t["Trigger Name"]: t for t in plan.get("Triggers", [])}
            chain = trig.get("events_chain", {})
            return {
                "execution_ms": plan["Execution Time"],
                "trigger_ms": chain.get("Time", 0.0),
                "trigger_calls": chain.get("Calls", 0),
            }

        on = [await explain(False) for _ in range(repeats)]
        off = [await explain(True) for _ in range(repeats)]

        # What the trigger runs per row, each part alone in a PL/pgSQL loop as the trigger
        # runs it (cached plans, same statements), timed inside the server.
        async with conn.transaction():
            await conn.execute(_PARTS_FUNCTION)
            parts = {
                r["part"]: r["us"] for r in await conn.fetch("SELECT * FROM pg_temp.parts(5000)")
            }
        head_plan = await conn.fetch("EXPLAIN (ANALYZE, COSTS OFF, TIMING ON) " + _HEAD)
    finally:
        await conn.close()

    def med(runs: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    with_ms, without_ms = med(on, "execution_ms"), med(off, "execution_ms")
    trigger_ms = med(on, "trigger_ms")
    return {
        "rows": rows,
        "insert_with_trigger_ms": round(with_ms, 2),
        "insert_without_trigger_ms": round(without_ms, 2),
        "trigger_ms": round(trigger_ms, 2),
        "trigger_us_per_row": round(trigger_ms / rows * 1000, 1),
        "insert_us_per_row_without": round(without_ms / rows * 1000, 1),
        "trigger_share": round(trigger_ms / with_ms, 3) if with_ms else 0.0,
        "alone_us": {k: round(v, 2) for k, v in parts.items()},
        "head_plan": [r[0] for r in head_plan],
    }


# --- the run -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from broker.devenv import prepare_broker
    from broker.stack.devstack import DevStack

    tmp = Path(tempfile.mkdtemp(prefix="bench-ledger-writers-"))
    stack = DevStack(tmp / "stack")
    out: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "seconds": args.seconds,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
    }
    try:
        stack.start()
        settings = asyncio.run(prepare_broker(stack, policies_dir=REPO / "policies"))
        pg_pid = stack.pg.pid
        assert pg_pid is not None
        phases = [(1, 1)] if args.floor else []
        phases += [(w, args.concurrency) for w in args.writers]
        out["phases"] = []
        for tag, (w, c) in enumerate(phases, start=1):
            print(f"# {w} writer(s) x {c} appenders ...", file=sys.stderr)
            out["phases"].append(_phase(settings.database_url, pg_pid, w, c, args, tag))
        appended = sum(p["appended"] for p in out["phases"])
        out["check"] = asyncio.run(_check(settings, appended))
        out["check"]["append_errors"] = sum(p["errors"] for p in out["phases"])
        if args.trigger_rows:
            out["trigger"] = asyncio.run(
                _trigger_cost(stack.superuser_dsn("broker"), args.trigger_rows, 5)
            )
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --- output ------------------------------------------------------------------------------


def print_table(out: dict[str, Any]) -> None:
    m = out["machine"]
    print(
        f"machine: {m['cores']} cores, python {m['python']}; {out['seconds']} s per phase"
        f" after {out['warmup']} s warm-up"
    )
    head = (
        f"{'writers':>7} {'x appenders':>11} {'rows/s':>7} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'batch/s':>7} {'rows/b':>6} {'locked':>6} {'confl':>5} {'pg cpu':>6}"
        f" {'wr cpu':>6} {'busy':>5} {'pg us/row':>9}  load before"
    )
    print(head)
    print("-" * len(head))
    for p in out["phases"]:
        print(
            f"{p['writers']:>7} {'x ' + str(p['concurrency']):>11} {p['rows_per_s']:>7,}"
            f" {p['p50_ms']:>7.2f} {p['p99_ms']:>7.2f} {p['batches_per_s']:>7,}"
            f" {p['rows_per_batch']:>6.1f} {p['locked_share']:>6.0%} {p['conflicts']:>5,}"
            f" {p['pg_cpu_s']:>6.1f} {p['writers_cpu_s']:>6.1f} {p['machine_busy']:>5.0%}"
            f" {p['pg_cpu_us_per_row']:>9,}  {'/'.join(f'{v:.2f}' for v in p['load_before'])}"
            + (f"  errors {p['errors']}" if p["errors"] else "")
        )
    c = out["check"]
    print(
        f"check: verify ok={c['verify_ok']} over {c['verify_rows']:,} rows from"
        f" {c['replicas']} replicas; rows in ledger {c['rows_in_ledger']:,}, appends that"
        f" returned a seq {c['rows_appended']:,} -> {'OK' if c['counts_match'] else 'MISMATCH'};"
        f" failed appends {c['append_errors']}"
    )
    t = out.get("trigger")
    if t:
        a = t["alone_us"]
        print(
            f"trigger (one {t['rows']}-row INSERT, EXPLAIN ANALYZE, median of 5):"
            f" {t['insert_with_trigger_ms']} ms with events_chain, of which the trigger"
            f" {t['trigger_ms']} ms ({t['trigger_us_per_row']} us/row,"
            f" {t['trigger_share']:.0%}); {t['insert_without_trigger_ms']} ms without"
            f" ({t['insert_us_per_row_without']} us/row)"
        )
        print(
            f"         alone, in the server: advisory lock {a['advisory_lock']} us,"
            f" head lookup {a['head_lookup']} us, dedupe probe {a['dedupe_probe']} us"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--writers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2, 4, 8],
        metavar="N[,N...]",
        help="writer processes per phase (default 1,2,4,8)",
    )
    p.add_argument("--concurrency", type=int, default=32, help="appenders per writer")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument(
        "--no-floor", dest="floor", action="store_false", help="skip the 1 writer x 1 phase"
    )
    p.add_argument(
        "--trigger-rows", type=int, default=512, help="rows of the trigger-cost batch (0: skip)"
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print_table(out)
    c = out["check"]
    return 0 if c["verify_ok"] and c["counts_match"] and not c["append_errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
