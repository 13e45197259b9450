"""Evidence export benchmark: a ledger of ≥ 1,000,000 events, exported with bounded memory.

Starts its own PostgreSQL (``DevStack`` in a temp dir, migrated exactly as ``broker dev``
does), seeds a realistic ledger with a correct hash chain (grants issued and expired by
policy, heartbeats, a policy load), signs a checkpoint of the head, then runs
``broker evidence export`` as a separate process twice — a 10% period and the whole period —
and ``broker evidence check`` on the big package. For each it reports rows/s, wall time,
peak RSS of that process (``wait4`` rusage, VmHWM) and the package size. If peak RSS is about
the same for 10x the rows, memory does not grow with the period.

Seeding COPYs the rows as the superuser with the ledger's triggers ON (the chain trigger
checks each row); ``--fast-seed`` disables ``events_chain`` for the COPY only and always
re-enables it as ENABLE ALWAYS, and the output says so.

    .venv/bin/python bench/export.py                 # 1,000,000 events (~10 min, 2 cores)
    .venv/bin/python bench/export.py --events 200000 --json

See bench/README.md for how to read the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BROKER_BIN = Path(sys.executable).parent / "broker"
START = datetime(2026, 1, 1, tzinfo=UTC)
HEARTBEAT_SECONDS = 60

_COLUMNS = (
    "seq", "recorded_at", "event", "replica", "subject", "subject_kind", "secret", "role",
    "policy_version", "grant_id", "lease_id", "expires_at", "outcome", "request_id", "body",
    "dedupe_key", "prev_hash", "hash",
)  # fmt: skip


_last_stdout: dict[str, str] = {}


@dataclass
class Step:
    name: str
    rows: int
    seconds: float
    rows_per_second: float
    peak_rss_mib: float
    package_mib: float | None
    exit_code: int


def _rows(n: int, policy: Any) -> Iterator[tuple[Any, ...]]:
    """``n`` chained rows: one event every ~2 s of ledger time, a heartbeat every minute."""
    from broker.auth.principal import Principal
    from broker.ledger.chain import GENESIS, canonical_row, chain_hash
    from broker.policy.decide import decide

    people = [
        Principal(f"user-{i:03d}", "human", "https://idp.example", frozenset({"engineering"}))
        for i in range(200)
    ]
    secrets = ["stripe/test", "db/orders-ro"]
    decisions = {s: decide(policy, people[0], s) for s in secrets}
    for s, d in decisions.items():
        assert d.outcome == "allow" and d.role is not None, (s, d.outcome)
    open_grants: list[tuple[datetime, uuid.UUID, Principal, str]] = []
    prev = GENESIS
    t = START
    next_beat = START
    seq = 0
    while seq < n:
        seq += 1
        body: dict[str, Any]
        row: dict[str, Any] = dict.fromkeys(_COLUMNS[:-2])
        row.update(seq=seq, recorded_at=t, replica="bench-1", policy_version=None)
        if seq == 1:
            row.update(event="policy.loaded", outcome="active", policy_version=policy.version)
            body = {"files": sorted(policy.documents)}
        elif t >= next_beat:
            row.update(event="broker.heartbeat", outcome="ok")
            body = {"interval_seconds": HEARTBEAT_SECONDS}
            next_beat = t + timedelta(seconds=HEARTBEAT_SECONDS)
        elif open_grants and open_grants[0][0] <= t:
            expires, gid, who, secret = open_grants.pop(0)
            d = decisions[secret]
            assert d.role is not None
            row.update(
                event="grant.expired",
                outcome="expired",
                subject=who.subject,
                subject_kind=who.kind,
                secret=secret,
                role=d.role.name,
                policy_version=policy.version,
                grant_id=gid,
                expires_at=expires,
                dedupe_key=f"grant:{gid}:end",
            )
            body = {"expired_at": expires.isoformat()}
        else:
            who = people[seq % len(people)]
            secret = secrets[seq % len(secrets)]
            d = decisions[secret]
            assert d.role is not None
            gid = uuid.uuid4()
            ttl = min(d.ttl, 300)
            expires = t + timedelta(seconds=ttl)
            row.update(
                event="grant.issued",
                outcome="issued",
                subject=who.subject,
                subject_kind=who.kind,
                secret=secret,
                role=d.role.name,
                policy_version=policy.version,
                grant_id=gid,
                expires_at=expires,
                request_id=f"bench-{seq}",
            )
            assert d.entry is not None
            body = {
                "engine": d.entry.engine,
                "mount": d.entry.mount,
                "path": d.entry.path,
                "ttl": ttl,
                "reason": None,
                "ticket": None,
                "role_source": d.role.source,
                "issuer": who.issuer,
                "groups": sorted(who.groups),
            }
            open_grants.append((expires, gid, who, secret))
        row["body"] = body
        h = chain_hash(prev, canonical_row(**row))
        yield (*(json.dumps(body) if c == "body" else row[c] for c in _COLUMNS[:-2]), prev, h)
        prev = h
        t += timedelta(milliseconds=1800 + (seq * 7919) % 400)


async def _seed(
    dsn: str, n: int, policy: Any, signer: Any, origin: str, *, fast: bool, checkpoint_every: int
) -> tuple[float, datetime]:
    import asyncpg

    from broker.ledger import Checkpoint

    started = time.perf_counter()
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(
            "INSERT INTO ledger.policy_versions (version, first_seen, documents)"
            " VALUES ($1, $2, $3::jsonb) ON CONFLICT DO NOTHING",
            policy.version,
            START,
            json.dumps(dict(policy.documents)),
        )
        batch: list[tuple[Any, ...]] = []
        done = 0
        heads: list[tuple[int, bytes]] = []

        async def flush() -> None:
            await conn.copy_records_to_table(
                "events", schema_name="ledger", records=batch, columns=list(_COLUMNS)
            )

        async with conn.transaction():
            if fast:
                await conn.execute("ALTER TABLE ledger.events DISABLE TRIGGER events_chain")
            try:
                for rec in _rows(n, policy):
                    batch.append(rec)
                    if rec[0] % checkpoint_every == 0 or rec[0] == n:
                        heads.append((rec[0], rec[-1]))
                    if len(batch) >= 20_000:
                        await flush()
                        done += len(batch)
                        batch.clear()
                        print(f"\r# seeded {done:,}/{n:,}", end="", file=sys.stderr, flush=True)
                if batch:
                    await flush()
            finally:
                if fast:  # ALWAYS: a plain ENABLE would let replica-mode sessions skip it
                    await conn.execute(
                        "ALTER TABLE ledger.events ENABLE ALWAYS TRIGGER events_chain"
                    )
        print(file=sys.stderr)
        # As the broker's checkpointer would have: a signed head every so many rows.
        await conn.executemany(
            "INSERT INTO ledger.checkpoints (size, head_hash, signed_at, key_id, note)"
            " VALUES ($1, $2, $3, $4, $5)",
            [
                (
                    size,
                    h,
                    datetime.now(UTC),
                    signer.key_id,
                    signer.sign(Checkpoint(origin, size, h)),
                )
                for size, h in heads
            ],
        )
        await conn.execute("ANALYZE ledger.events")
        last_at: datetime = await conn.fetchval("SELECT max(recorded_at) FROM ledger.events")
        state = await conn.fetchval(
            "SELECT tgenabled::text FROM pg_trigger WHERE tgname = 'events_chain'"
        )
        assert state == "A", f"events_chain is {state!r} after seeding"
    finally:
        await conn.close()
    return time.perf_counter() - started, last_at


def _vm_hwm_kib(pid: int) -> int:
    """Peak resident set of a live process (VmHWM: reset at exec, unlike ru_maxrss)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _measure(name: str, argv: list[str], env: dict[str, str], rows: int, out: Path | None) -> Step:
    """Run one broker command; wall time and its own peak RSS, polled from /proc.

    (``wait4``'s ru_maxrss would not do: Linux carries the parent's high-water mark over
    fork+exec, so a small child would report this bench's own size.)
    """
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _vm_hwm_kib(proc.pid))
            done.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, _ = proc.communicate()
    done.set()
    watcher.join()
    seconds = time.perf_counter() - started
    _last_stdout[name] = stdout.decode()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{name} failed ({proc.returncode}): {stdout.decode()[-2000:]}")
    return Step(
        name=name,
        rows=rows,
        seconds=round(seconds, 2),
        rows_per_second=round(rows / seconds),
        peak_rss_mib=round(peak / 1024, 1),
        package_mib=round(out.stat().st_size / 2**20, 1) if out else None,
        exit_code=proc.returncode,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from broker.devenv import prepare_broker
    from broker.ledger import CheckpointSigner, load_or_create_signing_key
    from broker.policy import load_policy_dir
    from broker.stack.devstack import DevStack

    policy = load_policy_dir(REPO / "policies")
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    stack = DevStack(tmp / "stack")
    try:
        stack.start()
        settings = asyncio.run(prepare_broker(stack, policies_dir=REPO / "policies"))
        signer = CheckpointSigner(
            settings.checkpoint_key_name,
            load_or_create_signing_key(settings.checkpoint_key_path, create=False),
        )
        seed_s, last_at = asyncio.run(
            _seed(
                stack.superuser_dsn("broker"),
                args.events,
                policy,
                signer,
                settings.ledger_origin,
                fast=args.fast_seed,
                checkpoint_every=args.checkpoint_every,
            )
        )
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        env.update(
            BROKER_DATABASE_URL=settings.database_url,
            BROKER_CHECKPOINT_KEY=str(settings.checkpoint_key_path),
            BROKER_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
        )
        # The whole seeded history (ledger time runs ~2 s per event), ending at its last row.
        end = last_at + timedelta(seconds=1)
        tenth = START + (end - START) / 10
        steps = []
        small, big = tmp / "small.zip", tmp / "evidence.zip"
        for name, to, out in (("export 10%", tenth, small), ("export 100%", end, big)):
            argv = [str(BROKER_BIN), "evidence", "export", "--quiet", "--from", START.isoformat()]
            argv += ["--to", to.isoformat(), "--out", str(out)]
            step = _measure(name, argv, env, 0, out)
            with zipfile.ZipFile(out) as zf:
                manifest = json.loads(zf.read("manifest.json"))
            step.rows = int(manifest["segment"]["rows"])
            step.rows_per_second = round(step.rows / step.seconds)
            steps.append(step)
            findings = manifest["findings"]
        check = _measure(
            "check 100%",
            [str(BROKER_BIN), "evidence", "check", "--json", str(big)],
            env,
            steps[-1].rows,
            None,
        )
        steps.append(check)
        audit = json.loads(_last_stdout["check 100%"])
        kinds = sorted({(f["severity"], f["kind"]) for f in audit["findings"]})
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "events": args.events,
        "seed": {
            "seconds": round(seed_s, 1),
            "chain_trigger": "disabled for the COPY, re-enabled ALWAYS (checked)"
            if args.fast_seed
            else "on (every row checked)",
        },
        "findings_in_package": findings,
        "check": {"ok": audit["ok"], "integrity": audit["integrity"], "kinds": kinds},
        "steps": [asdict(s) for s in steps],
    }


def print_table(out: dict[str, Any]) -> None:
    m = out["machine"]
    print(f"machine: {m['cores']} cores, python {m['python']}; {out['events']:,} events seeded")
    print(f"seed: {out['seed']['seconds']} s, chain trigger {out['seed']['chain_trigger']}")
    head = (
        f"{'step':<12} {'rows':>10} {'wall s':>8} {'rows/s':>8} {'peak RSS MiB':>12} {'zip MiB':>8}"
    )
    print(head)
    print("-" * len(head))
    for s in out["steps"]:
        size = f"{s['package_mib']:.1f}" if s["package_mib"] is not None else "-"
        print(
            f"{s['name']:<12} {s['rows']:>10,} {s['seconds']:>8.1f} {s['rows_per_second']:>8,}"
            f" {s['peak_rss_mib']:>12.1f} {size:>8}"
        )
    print(f"findings in the package: {out['findings_in_package'] or 'none'}")
    c = out["check"]
    print(f"check: ok={c['ok']}, integrity ok={c['integrity']['ok']}, kinds {c['kinds']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--fast-seed", action="store_true", help="chain trigger off during COPY only")
    p.add_argument("--checkpoint-every", type=int, default=10_000, help="rows per checkpoint")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print_table(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
