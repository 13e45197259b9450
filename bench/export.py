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
import zipfile
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ledger_seed import ExportMix, seed

REPO = Path(__file__).resolve().parent.parent
BROKER_BIN = Path(sys.executable).parent / "broker"

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
    from broker.stack.devstack import DevStack

    mix = ExportMix(args.events)
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    stack = DevStack(tmp / "stack")
    try:
        stack.start()
        settings = asyncio.run(prepare_broker(stack, policies_dir=mix.policies_dir))
        signer = CheckpointSigner(
            settings.checkpoint_key_name,
            load_or_create_signing_key(settings.checkpoint_key_path, create=False),
        )
        seeded = asyncio.run(
            seed(
                stack.superuser_dsn("broker"),
                mix,
                signer=signer,
                origin=settings.ledger_origin,
                fast=args.fast_seed,
                checkpoint_every=args.checkpoint_every,
            )
        )
        seed_s, last_at, start = seeded.seconds, seeded.last_at, mix.start
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        env.update(
            BROKER_DATABASE_URL=settings.database_url,
            BROKER_CHECKPOINT_KEY=str(settings.checkpoint_key_path),
            BROKER_HEARTBEAT_SECONDS=str(mix.heartbeat_seconds),
        )
        # The whole seeded history (ledger time runs ~2 s per event), ending at its last row.
        end = last_at + timedelta(seconds=1)
        tenth = start + (end - start) / 10
        steps = []
        small, big = tmp / "small.zip", tmp / "evidence.zip"
        for name, to, out in (("export 10%", tenth, small), ("export 100%", end, big)):
            argv = [str(BROKER_BIN), "evidence", "export", "--quiet", "--from", start.isoformat()]
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
            "chain_trigger": seeded.chain_trigger,
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
