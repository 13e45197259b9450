"""The ledger at audit scale (issue 15): a year of events verified, proven, queried,
exported and archived.

Starts its own PostgreSQL and OpenBao (``DevStack`` in a temp dir, migrated as ``broker
dev`` does), seeds ``--rows`` events over the ``--months`` calendar months ending now
(``bench/ledger_seed.py``'s ``AuditMix``: 1,000 engineers in 40 teams, 200 workloads,
grants issued/expired/revoked, elevations requested/approved/activated with break-glass
reviews, auth.failed aggregates, grant.denied, a policy revision loaded each month,
heartbeats from two replicas), with the chain, the Merkle tree (``ledger.tree_nodes``)
and a signed checkpoint with its root every ``--checkpoint-every`` rows plus one at the
head. Seeding COPYs with ``events_chain`` disabled and re-enabled ENABLE ALWAYS on the
parent and every partition (checked), the secondary indexes recreated afterwards from
their own definitions, then ``VACUUM (ANALYZE)``; the output says so.

Then each figure, in this order (later steps change the ledger):

1. ``verify full``: ``broker verify`` (with ``--workers`` when the CLI has it) as its own
   process. rows/s = rows verified / wall time of the command (Python start-up included).
   RSS: the command's own peak (VmHWM) and the largest worker's, and the peak of the sum
   of the whole process tree's RSS, sampled every 20 ms from /proc (``wait4``'s
   ru_maxrss would carry this bench's own size over fork+exec).
2. ``append`` + ``verify incremental``: 10,000 new events through a real ``LedgerWriter``
   (the broker's batching writer, as the writer role), then ``broker verify
   --incremental``: wall time of the command (target < 1 s) and what it scanned.
3. ``proofs``: ``broker.ledger.tree.inclusion_proof`` for random leaves against the head
   checkpoint, and ``consistency_proof`` from random earlier checkpoints to it; each proof
   is checked with ``broker.ledger.merkle.verify_*`` against the signed roots. p50/p95 ms
   per proof (one connection, as the API would), hashes per proof and bytes.
4. ``why`` and ``event browser``: the broker (``create_app``) in this process, on
   loopback. ``GET /v1/audit/access`` (carol's dev token) for random subjects, secrets and
   months — subject+secret, secret only, subject only — and the console's
   ``/console/audit/events`` page (carol signed in) unfiltered, by subject, by secret from
   a month, by type from a month, and the second page of a subject's events. Client-side
   p50/p95 per shape over ``--requests`` requests (each with new random values; three
   warm-up requests first). Targets: why p95 <= 20 ms, event browser p95 <= 50 ms. A
   shape over its target gets its query's ``EXPLAIN (ANALYZE, BUFFERS)`` in the JSON.
5. ``export month`` and ``check month``: ``broker evidence export`` of the last full
   month and ``broker evidence check`` of that package, as processes (rows/s = rows in the
   package's segment / wall; RSS as in 1).
6. ``archive month``: ``broker ledger archive --before <second month>`` (archives the
   oldest month) when the CLI has it, then ``verify full`` again over what is left.

    .venv/bin/python bench/ledger_scale.py                  # 10,000,000 rows (long: see README)
    .venv/bin/python bench/ledger_scale.py --rows 200000    # a quick run
    .venv/bin/python bench/ledger_scale.py --rows 200000 --json > result.json

Everything it starts (PostgreSQL, OpenBao, the seeding process, the broker commands) is
stopped at the end, Ctrl-C included. See bench/README.md for how to read the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ledger_seed import AuditMix, SeedReport, month_start, seed

REPO = Path(__file__).resolve().parent.parent
BROKER_BIN = Path(sys.executable).parent / "broker"
WHY_TARGET_MS = 20.0
BROWSER_TARGET_MS = 50.0
INCREMENTAL_TARGET_S = 1.0


# --- running broker commands, measured ---------------------------------------------------


@dataclass
class Step:
    name: str
    argv: list[str]
    rows: int
    seconds: float
    rows_per_second: int
    peak_rss_mib: float  # the command's own process
    worker_peak_rss_mib: float  # its largest descendant (0 without workers)
    tree_peak_rss_mib: float  # the largest sampled sum over the whole process tree
    workers_seen: int
    exit_code: int
    output: Any = field(default=None, repr=False)
    note: str = ""


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out


def _measure(name: str, argv: list[str], env: dict[str, str], rows: int = 0) -> Step:
    """Run one broker command: wall time, its RSS and its workers', stdout parsed as JSON
    when it is JSON. Raises SystemExit when the command fails with a status other than
    0 or 1 (1: the check found something, which the figure then reports)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    own = worker = tree = 0
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        nonlocal own, worker, tree
        while not done.is_set():
            own = max(own, _status_kib(proc.pid, "VmHWM:"))
            total = _status_kib(proc.pid, "VmRSS:")
            for kid in _descendants(proc.pid):
                seen.add(kid)
                worker = max(worker, _status_kib(kid, "VmHWM:"))
                total += _status_kib(kid, "VmRSS:")
            tree = max(tree, total)
            done.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate()
    done.set()
    watcher.join()
    seconds = time.perf_counter() - started
    text = stdout.decode(errors="replace")
    if proc.returncode not in (0, 1):
        tail = (text + stderr.decode(errors="replace"))[-3000:]
        raise SystemExit(f"{name} failed ({proc.returncode}): {' '.join(argv)}\n{tail}")
    try:
        output: Any = json.loads(text)
    except ValueError:
        output = text[-3000:]
    if isinstance(output, dict) and "mode" in output and "rows" in output:
        rows = int(output["rows"])  # a verification: the rows it actually checked
    return Step(
        name=name,
        argv=[Path(a).name if a == str(BROKER_BIN) else a for a in argv],
        rows=rows,
        seconds=round(seconds, 3),
        rows_per_second=round(rows / seconds) if rows else 0,
        peak_rss_mib=round(own / 1024, 1),
        worker_peak_rss_mib=round(worker / 1024, 1),
        tree_peak_rss_mib=round(max(tree, own) / 1024, 1),
        workers_seen=len(seen),
        exit_code=proc.returncode,
        output=output,
    )


def _hide_secrets(argv: list[str]) -> list[str]:
    return [re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@", a) for a in argv]


# --- step 2: new events through the broker's writer ---------------------------------------


async def _append(dsn: str, n: int, end: datetime) -> float:
    """Append ``n`` events of the same mix through a real LedgerWriter (writer role)."""
    from broker.ledger import LedgerWriter, NewEvent, connect_pool

    mix = AuditMix(events=n + n // 5, end=end, months=1, seed=151)
    skip = {"broker.started", "policy.loaded"}
    events = [
        NewEvent(
            event=r["event"],
            outcome=r["outcome"],
            subject=r["subject"],
            subject_kind=r["subject_kind"],
            secret=r["secret"],
            role=r["role"],
            policy_version=r["policy_version"],
            grant_id=r["grant_id"],
            lease_id=r["lease_id"],
            expires_at=r["expires_at"],
            request_id=r["request_id"],
            body=r["body"],
            dedupe_key=r["dedupe_key"],
        )
        for r in mix.rows()
        if r["event"] not in skip
    ][:n]
    pool = await connect_pool(dsn, min_size=1, max_size=4)
    writer = LedgerWriter(pool, replica="bench-append")
    writer.start()
    try:
        started = time.perf_counter()
        for lo in range(0, len(events), 500):  # 500 callers at a time, as a busy broker
            results = await asyncio.gather(*(writer.append(e) for e in events[lo : lo + 500]))
            assert all(r.seq is not None for r in results), "an append was refused"
        return time.perf_counter() - started
    finally:
        await writer.stop()
        await pool.close()


# --- step 3: proofs ----------------------------------------------------------------------


def _ms_stats(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 2),
        "max_ms": round(times[-1], 2),
    }


async def _proofs(dsn: str, samples: int) -> dict[str, Any]:
    from broker.ledger import connect_one
    from broker.ledger.chain import canonical_event
    from broker.ledger.events import row_to_event
    from broker.ledger.merkle import leaf_hash, verify_consistency, verify_inclusion

    try:
        from broker.ledger import tree
    except ImportError:
        return {"wired": False, "note": "broker.ledger.tree is not on this branch yet"}
    rng = random.Random(6962)
    conn = await connect_one(dsn)  # the broker's codecs: jsonb bodies as dicts
    try:
        cps = await conn.fetch(
            "SELECT size, root_hash FROM ledger.checkpoints WHERE root_hash IS NOT NULL"
            " ORDER BY size"
        )
        size, root = cps[-1]["size"], bytes(cps[-1]["root_hash"])
        first = await conn.fetchval("SELECT min(seq) FROM ledger.events")
        inclusion: list[float] = []
        inc_hashes = 0
        for _ in range(samples):
            index = rng.randrange(first - 1, size)
            began = time.perf_counter()
            proof = await tree.inclusion_proof(conn, index, size)
            inclusion.append((time.perf_counter() - began) * 1000)
            row = await conn.fetchrow("SELECT * FROM ledger.events WHERE seq = $1", index + 1)
            verify_inclusion(
                leaf_hash(canonical_event(row_to_event(row))), index, size, proof, root
            )
            inc_hashes = max(inc_hashes, len(proof))
        consistency: list[float] = []
        con_hashes = 0
        older = [c for c in cps[:-1]]
        for _ in range(samples if older else 0):
            old = rng.choice(older)
            began = time.perf_counter()
            proof = await tree.consistency_proof(conn, old["size"], size)
            consistency.append((time.perf_counter() - began) * 1000)
            verify_consistency(old["size"], size, bytes(old["root_hash"]), root, proof)
            con_hashes = max(con_hashes, len(proof))
    finally:
        await conn.close()
    return {
        "wired": True,
        "tree_size": size,
        "inclusion": {**_ms_stats(inclusion), "hashes": inc_hashes, "bytes": 32 * inc_hashes},
        "consistency": (
            {**_ms_stats(consistency), "hashes": con_hashes, "bytes": 32 * con_hashes}
            if consistency
            else None
        ),
        "samples": samples,
        "checked": "every proof verified against the signed roots (merkle.verify_*)",
    }


# --- step 4: why and the event browser ---------------------------------------------------


@dataclass
class _Shape:
    name: str
    kind: str  # "why" | "browser" | "proof"
    target_ms: float | None
    path: Any  # (rng) -> path and query string


def _shapes(mix: AuditMix, cursor_of: dict[str, str], sizes: list[int]) -> list[_Shape]:
    """The query shapes; ``cursor_of`` maps subjects to the cursor of their page 2,
    ``sizes`` are the signed checkpoints' sizes (the last one the newest)."""
    engineers, services, _, _ = mix.people()
    months = mix.month_starts()

    def month(rng: random.Random) -> tuple[str, str]:
        m = rng.randrange(len(months))
        lo = months[m]
        hi = months[m + 1] if m + 1 < len(months) else mix.end
        return lo.isoformat(), hi.isoformat()

    def team_secret(rng: random.Random, team: int) -> str:
        return rng.choice(
            (
                f"db/team-{team:02d}-ro",
                f"db/team-{team:02d}-admin",
                f"team-{team:02d}/api-key",
                f"pki/team-{team:02d}",
            )
        )

    def q(path: str, **params: str) -> str:
        return f"{path}?{urlencode(params)}" if params else path

    def why_both(rng: random.Random) -> str:
        who = rng.choice(engineers)
        lo, hi = month(rng)
        secret = team_secret(rng, who.team)
        return q("/v1/audit/access", subject=who.subject, secret=secret, **{"from": lo, "to": hi})

    def why_secret(rng: random.Random) -> str:
        lo, hi = month(rng)
        secret = rng.choice(("stripe/prod", team_secret(rng, rng.randrange(mix.teams))))
        return q("/v1/audit/access", secret=secret, **{"from": lo, "to": hi})

    def why_subject(rng: random.Random) -> str:
        who = rng.choice(engineers + services[:20])
        lo, hi = month(rng)
        return q("/v1/audit/access", subject=who.subject, **{"from": lo, "to": hi})

    def events_all(rng: random.Random) -> str:
        return "/console/audit/events"

    def events_subject(rng: random.Random) -> str:
        return q("/console/audit/events", subject=rng.choice(engineers).subject)

    def events_secret(rng: random.Random) -> str:
        lo, _ = month(rng)
        return q(
            "/console/audit/events",
            secret=team_secret(rng, rng.randrange(mix.teams)),
            **{"from": lo},
        )

    def events_type(rng: random.Random) -> str:
        lo, _ = month(rng)
        kind = rng.choice(("grant.revoked", "elevation.approved", "grant.denied"))
        return q("/console/audit/events", type=kind, **{"from": lo})

    def events_next(rng: random.Random) -> str:
        subject = rng.choice(sorted(cursor_of))
        return q("/console/audit/events", subject=subject, cursor=cursor_of[subject])

    def inclusion(rng: random.Random) -> str:
        return q("/v1/audit/proofs/inclusion", seq=str(rng.randrange(1, sizes[-1] + 1)))

    def consistency(rng: random.Random) -> str:
        return q("/v1/audit/proofs/consistency", old=str(rng.choice(sizes[:-1] or sizes)))

    return [
        _Shape("why subject+secret, 1 month", "why", WHY_TARGET_MS, why_both),
        _Shape("why secret, 1 month", "why", WHY_TARGET_MS, why_secret),
        _Shape("why subject, 1 month", "why", WHY_TARGET_MS, why_subject),
        _Shape("events, no filter", "browser", BROWSER_TARGET_MS, events_all),
        _Shape("events by subject", "browser", BROWSER_TARGET_MS, events_subject),
        _Shape("events by secret from a month", "browser", BROWSER_TARGET_MS, events_secret),
        _Shape("events by type from a month", "browser", BROWSER_TARGET_MS, events_type),
        _Shape("events by subject, page 2", "browser", BROWSER_TARGET_MS, events_next),
        _Shape("inclusion proof (API)", "proof", None, inclusion),
        _Shape("consistency proof (API)", "proof", None, consistency),
    ]


async def _sign_in(http: Any, url: str, identity: str) -> str:
    async with http.post(
        f"{url}/console/login/dev",
        data={"identity": identity},
        headers={"Origin": url},
        allow_redirects=False,
    ) as r:
        assert r.status == 303, await r.text()
        return "; ".join(f"{k}={v.value}" for k, v in r.cookies.items())


async def _explain(dsn: str, shape: str, path: str) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the SQL the route runs for ``path`` (for "why", its
    query of the page's rows, as the broker runs it: a subject's from 010's covering
    index, any other with index scans off, for a bitmap scan)."""
    from urllib.parse import parse_qs, urlsplit

    import asyncpg

    from broker.audit.access import LONGEST_GRANT
    from broker.ledger.audit_queries import access_query, events_query

    parts = urlsplit(path)
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}

    def when(key: str) -> datetime | None:
        return datetime.fromisoformat(params[key]) if key in params else None

    if parts.path == "/v1/audit/access":
        start, end = when("from"), when("to")
        assert start is not None and end is not None
        sql, args = access_query(
            issued_from=start - LONGEST_GRANT,
            issued_to=end,
            overlaps_from=start,
            subject=params.get("subject"),
            secret=params.get("secret"),
            after=None,
            through=None,
            limit=100,
        )
        bitmap = params.get("subject") is None  # as access_windows
        setting = "SET enable_indexscan = off" if bitmap else "RESET enable_indexscan"
    else:
        sql, args = events_query(
            subject=params.get("subject"),
            secret=params.get("secret"),
            types=tuple(params["type"].split(",")) if "type" in params else (),
            start=when("from"),
            end=when("to"),
            after_seq=int(params["cursor"]) if params.get("cursor") else None,
            limit=50,
        )
        setting = "RESET enable_indexscan"
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(setting)
        # Twice: a new session first fills its catalog caches (17 partitions' indexes),
        # which a pooled connection of the broker has done long before.
        cold = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
        rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
    finally:
        await conn.close()
    first = next((r[0] for r in cold if r[0].startswith("Planning Time")), "?")
    return [
        f"-- {shape}: {path}",
        f"-- (second run in its session; the first one's {first.lower()})",
        *(r[0] for r in rows),
    ]


async def _queries(settings: Any, mix: AuditMix, requests: int) -> dict[str, Any]:
    import aiohttp
    from aiohttp import web

    from broker.app import create_app
    from broker.devenv import demo_tokens
    from broker.ledger import connect_one
    from broker.serve import settle_heap

    token = demo_tokens(settings.dev_issuer_key_path)["carol"]
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    settle_heap()  # as broker serve does once it listens
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    rng = random.Random(2026)
    results: list[dict[str, Any]] = []
    slow: list[tuple[str, str]] = []
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            cookie = await _sign_in(http, url, "carol")
            bearer = {"Authorization": f"Bearer {token}"}
            # Page 2 of a subject's events: the cursor the API gives for page 1.
            cursors: dict[str, str] = {}
            for who in mix.people()[0][:: max(1, len(mix.people()[0]) // 50)]:
                async with http.get(
                    f"{url}/v1/audit/events?subject={quote(who.subject)}&limit=50",
                    headers=bearer,
                ) as r:
                    page = await r.json()
                    if page.get("next_cursor"):
                        cursors[who.subject] = page["next_cursor"]
            conn = await connect_one(settings.database_url)
            try:
                sizes = [
                    r["size"]
                    for r in await conn.fetch(
                        "SELECT size FROM ledger.checkpoints WHERE root_hash IS NOT NULL"
                        " ORDER BY size"
                    )
                ]
            finally:
                await conn.close()

            async def ask(path: str, headers: dict[str, str]) -> tuple[float, int, bytes]:
                """One GET, timed on the client: (ms, status, body)."""
                began = time.perf_counter()
                async with http.get(url + path, headers=headers, allow_redirects=False) as r:
                    body = await r.read()
                    status = r.status
                return (time.perf_counter() - began) * 1000, status, body

            for shape in _shapes(mix, cursors, sizes):
                headers = {"Cookie": cookie} if shape.kind == "browser" else bearer
                times: list[tuple[float, str]] = []
                statuses: dict[int, int] = {}
                rows_seen: list[int] = []
                sizes_seen: list[int] = []
                for i in range(requests + 3):
                    path = shape.path(rng)
                    took, status, body = await ask(path, headers)
                    if i < 3:
                        continue
                    times.append((took, path))
                    statuses[status] = statuses.get(status, 0) + 1
                    if shape.kind == "why" and status == 200:
                        rows_seen.append(len(json.loads(body)["access"]))
                    if shape.kind == "proof" and status == 200:
                        sizes_seen.append(len(body))
                asked = [path for _, path in times]  # in the order asked
                times.sort()
                ms = [t for t, _ in times]
                stats = _ms_stats(ms)
                result = {
                    "shape": shape.name,
                    "kind": shape.kind,
                    "requests": len(ms),
                    "statuses": statuses,
                    **stats,
                    "target_p95_ms": shape.target_ms,
                    "met": None if shape.target_ms is None else stats["p95_ms"] <= shape.target_ms,
                }
                if rows_seen:
                    result["windows_per_answer"] = round(statistics.mean(rows_seen), 1)
                if sizes_seen:
                    result["response_bytes"] = round(statistics.mean(sizes_seen))
                results.append(result)
                if result["met"] is False:
                    slow.append((shape.name, times[max(0, int(len(times) * 0.95) - 1)][1]))
                if shape.kind == "why":
                    # The same questions again, in the same order: what a page costs once
                    # its pages are in memory, apart from what first reads cost.
                    again: list[float] = []
                    answered: dict[int, int] = {}
                    for path in asked:
                        took, status, _ = await ask(path, headers)
                        again.append(took)
                        answered[status] = answered.get(status, 0) + 1
                    results.append(
                        {
                            "shape": f"{shape.name} (again)",
                            "kind": "why-again",
                            "requests": len(again),
                            "statuses": answered,
                            **_ms_stats(again),
                            "target_p95_ms": None,
                            "met": None,
                        }
                    )
    finally:
        await runner.cleanup()
    plans = []
    for name, path in slow:
        plans += await _explain(settings.database_url, name, path)
    return {"url_shapes": results, "explain": plans}


def _run_queries(settings: Any, mix: AuditMix, requests: int, tmp: Path) -> dict[str, Any]:
    settings = settings.with_overrides(
        console_dev_sign_in=True,
        console_key_path=tmp / "console.key",
        log_level="warning",
    )
    return asyncio.run(_queries(settings, mix, requests))


# --- the run -----------------------------------------------------------------------------


def _month_label(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}"


def _mix(args: argparse.Namespace, end: datetime) -> AuditMix:
    """``--rows`` over the ``--months`` newest months, plus ``--archive-months`` older ones
    at the same rate (rows in proportion to time)."""
    total = args.months + args.archive_months
    measured = (end - month_start(end, args.months - 1)).total_seconds()
    spanned = (end - month_start(end, total - 1)).total_seconds()
    return AuditMix(events=round(args.rows * spanned / measured), end=end, months=total)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from broker.devenv import prepare_broker
    from broker.ledger import CheckpointSigner, load_or_create_signing_key
    from broker.stack.devstack import DevStack

    end = datetime.now(UTC) - timedelta(seconds=30)
    mix = _mix(args, end)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ledger-scale-"))
    policies = tmp / "policies"
    policies.mkdir()
    for name, text in mix.policy_documents(len(mix.revision_times()) - 1).items():
        (policies / name).write_text(text)
    stack = DevStack(tmp / "stack")
    out: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "rows": mix.events,
        "months": mix.months,
        "measured_months": args.months,
        "archive_months": args.archive_months,
        "heartbeat_seconds": mix.heartbeat_seconds,
        "workers": args.workers,
    }
    steps: list[Step] = []
    try:
        stack.start()
        settings = asyncio.run(prepare_broker(stack, policies_dir=policies))
        signer = CheckpointSigner(
            settings.checkpoint_key_name,
            load_or_create_signing_key(settings.checkpoint_key_path, create=False),
        )
        report: SeedReport = asyncio.run(
            seed(
                stack.superuser_dsn("broker"),
                mix,
                signer=signer,
                origin=settings.ledger_origin,
                fast=True,
                checkpoint_every=args.checkpoint_every,
            )
        )
        out["seed"] = report.to_json()
        print(f"# seeded {report.rows:,} rows in {report.seconds:.0f} s", file=sys.stderr)
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        env.update(
            BROKER_DATABASE_URL=settings.database_url,
            BROKER_CHECKPOINT_KEY=str(settings.checkpoint_key_path),
            BROKER_HEARTBEAT_SECONDS=str(mix.heartbeat_seconds),
        )
        base = [str(BROKER_BIN), "verify", "--database-url", settings.database_url]
        full = [*base, "--workers", str(max(args.workers))]

        # 1. full verification, with each number of workers asked for (how it scales with
        # cores); each records a verified head for the next step
        for n in args.workers:
            step = _measure(
                f"verify full ({n} worker{'s' if n > 1 else ''})",
                [*base, "--workers", str(n)],
                env,
                report.rows,
            )
            steps.append(step)

        # 2. 10k new rows through the writer, then incremental verification
        appended_s = asyncio.run(_append(settings.database_url, args.append, datetime.now(UTC)))
        out["append"] = {
            "rows": args.append,
            "seconds": round(appended_s, 2),
            "rows_per_second": round(args.append / appended_s),
        }
        step = _measure("verify incremental", [*base, "--incremental"], env, args.append)
        step.note = f"target < {INCREMENTAL_TARGET_S:.0f} s"
        steps.append(step)

        # 3. proofs, from the library (each one checked against the signed roots)
        out["proofs"] = asyncio.run(_proofs(stack.superuser_dsn("broker"), args.proofs))

        # 4. why, the event browser and the proofs API, with the broker in this process
        out["queries"] = _run_queries(settings, mix, args.requests, tmp)

        # 5. evidence export and offline check of the last full month
        months = mix.month_starts()
        lo, hi = months[-2], months[-1]
        package = tmp / "month.zip"
        argv = [str(BROKER_BIN), "evidence", "export", "--quiet", "--from", lo.isoformat()]
        argv += ["--to", hi.isoformat(), "--out", str(package)]
        step = _measure(f"export {_month_label(lo)}", argv, env)
        with zipfile.ZipFile(package) as zf:
            manifest = json.loads(zf.read("manifest.json"))
        step.rows = int(manifest["segment"]["rows"])
        step.rows_per_second = round(step.rows / step.seconds)
        step.note = f"package {package.stat().st_size / 2**20:.1f} MiB"
        out["findings_in_package"] = manifest.get("findings")
        steps.append(step)
        argv = [str(BROKER_BIN), "evidence", "check", "--json", str(package)]
        step = _measure(f"check {_month_label(lo)}", argv, env, step.rows)
        audit = step.output if isinstance(step.output, dict) else {}
        step.note = f"ok={audit.get('ok')} {audit.get('counts')}"
        steps.append(step)

        # 6. archive of the oldest month (retention at its minimum), then what is left
        out["archive"] = _archive(args, months, env, stack.superuser_dsn("broker"), tmp, steps)
        if out["archive"]["wired"]:
            left = report.rows + args.append - out["archive"].get("rows", 0)
            steps.append(_measure("verify full after archive", full, env, left))
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
    out["steps"] = []
    for s in steps:
        d = asdict(s)
        d["argv"] = _hide_secrets(d["argv"])
        out["steps"].append(d)
    return out


def _archive(
    args: argparse.Namespace,
    months: list[datetime],
    env: dict[str, str],
    admin_dsn: str,
    tmp: Path,
    steps: list[Step],
) -> dict[str, Any]:
    """``broker ledger archive`` of the oldest month, then ``check-segment`` of its file."""
    if args.archive_months < 2:
        return {
            "wired": False,
            "note": "needs --archive-months 2 or more: with the minimum retention (12"
            " months) only a month 13 or more months before the current one may go",
        }
    before = _month_label(months[1])
    archive_env = {
        **env,
        "BROKER_ADMIN_DATABASE_URL": admin_dsn,
        "BROKER_LEDGER_RETENTION_MONTHS": "12",
    }
    argv = [str(BROKER_BIN), "ledger", "archive", "--before", before, "--out", str(tmp / "arch")]
    step = _measure(f"archive before {before}", argv, archive_env)
    done = step.output.get("archived", []) if isinstance(step.output, dict) else []
    step.rows = sum(int(a["rows"]) for a in done)
    step.rows_per_second = round(step.rows / step.seconds) if step.rows else 0
    files = [a["segment"] for a in done if a.get("segment")]
    size = sum(Path(f).stat().st_size for f in files)
    step.note = f"{len(done)} month(s), segment {size / 2**20:.1f} MiB"
    if step.exit_code != 0 or not done:
        step.note = f"exit {step.exit_code}: {str(step.output)[-300:]}"
    steps.append(step)
    if files:
        check = _measure("check-segment", [str(BROKER_BIN), "ledger", "check-segment", *files],
                         env, step.rows)  # fmt: skip
        reports = check.output if isinstance(check.output, list) else []
        check.note = f"ok={all(r.get('ok') for r in reports) if reports else None}"
        steps.append(check)
    return {"wired": True, "before": before, "rows": step.rows, "months": len(done)}


# --- output ------------------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else "met" if ok else "MISSED"


def print_table(out: dict[str, Any]) -> None:
    m, s = out["machine"], out["seed"]
    print(f"machine: {m['cores']} cores, python {m['python']}; verify workers {out['workers']}")
    print(
        f"seed: {s['rows']:,} rows over {out['months']} months ({s['first_at'][:10]} .."
        f" {s['last_at'][:10]}: the {out['measured_months']} newest, ending now, plus"
        f" {out['archive_months']} older), {len(s['partitions'])} partitions, heartbeat every"
        f" {out['heartbeat_seconds']} s"
    )
    print(
        f"      {s['seconds']:.0f} s wall: generate+COPY {s['copy_seconds']:.0f} s"
        f" ({s['rows_per_second']:,} rows/s), indexes {s['index_seconds']:.0f} s,"
        f" VACUUM ANALYZE {s['vacuum_seconds']:.0f} s; {s['checkpoints']} signed checkpoints,"
        f" {s['tree_nodes']:,} tree nodes"
    )
    print(f"      chain trigger {s['chain_trigger']}")
    head = (
        f"{'step':<26} {'rows':>11} {'wall s':>8} {'rows/s':>9} {'RSS MiB':>8}"
        f" {'worker':>7} {'tree':>7}  note"
    )
    print(head)
    print("-" * len(head))
    for st in out["steps"]:
        result = st["output"] if isinstance(st["output"], dict) else {}
        note = st["note"]
        if "ok" in result and "mode" in result:
            note = (
                f"ok={result['ok']} {result['mode']} from {result.get('verified_from')}:"
                f" {result.get('rows'):,} rows in {result.get('seconds')} s inside; {note}"
            )
        print(
            f"{st['name']:<26} {st['rows']:>11,} {st['seconds']:>8.2f} {st['rows_per_second']:>9,}"
            f" {st['peak_rss_mib']:>8.1f} {st['worker_peak_rss_mib']:>7.1f}"
            f" {st['tree_peak_rss_mib']:>7.1f}  {note}"
        )
    a = out["append"]
    print(f"append: {a['rows']:,} rows through LedgerWriter in {a['seconds']} s")
    p = out["proofs"]
    if p.get("wired"):
        i, c = p["inclusion"], p["consistency"]
        print(
            f"proofs (library, tree size {p['tree_size']:,}): inclusion p50 {i['p50_ms']} ms,"
            f" p95 {i['p95_ms']} ms, {i['hashes']} hashes ({i['bytes']} B)"
        )
        if c:
            print(
                f"                 consistency p50 {c['p50_ms']} ms, p95 {c['p95_ms']} ms,"
                f" {c['hashes']} hashes ({c['bytes']} B)"
            )
    else:
        print(f"proofs: not wired ({p['note']})")
    print(
        f"{'query (HTTP, client side)':<34} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'target':>7}"
    )
    for q in out["queries"]["url_shapes"]:
        target = "-" if q["target_p95_ms"] is None else q["target_p95_ms"]
        extra = f" {q['response_bytes']} B" if "response_bytes" in q else ""
        print(
            f"{q['shape']:<34} {q['p50_ms']:>7} {q['p95_ms']:>7} {q['max_ms']:>7}"
            f" {target:>7}  {_verdict(q['met'])} {q['statuses']}{extra}"
        )
    if out["queries"]["explain"]:
        print("\n".join(out["queries"]["explain"]))
    if not out["archive"]["wired"]:
        print(f"archive: not wired ({out['archive']['note']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--months", type=int, default=12, help="months the --rows span, ending now")
    p.add_argument(
        "--archive-months",
        type=int,
        default=2,
        help="older months before those, same rate (default 2: the minimum retention of 12"
        " months lets only a month 13+ months old be archived)",
    )
    p.add_argument("--checkpoint-every", type=int, default=100_000, help="rows per checkpoint")
    p.add_argument(
        "--workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, os.cpu_count() or 2],
        metavar="N[,N...]",
        help="verify full with each number of workers (default: 1 and one per core)",
    )
    p.add_argument("--append", type=int, default=10_000, help="rows for incremental verify")
    p.add_argument("--requests", type=int, default=100, help="requests per query shape")
    p.add_argument("--proofs", type=int, default=50, help="proofs of each kind")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.months < 2:
        p.error("--months must be at least 2 (the last full month is exported)")
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print_table(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
