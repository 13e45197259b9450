"""Console page benchmark: server time per page with a ledger of 1,000,000 events.

Starts its own PostgreSQL and OpenBao (``DevStack`` in a temp dir, migrated as ``broker
dev`` does), seeds the ledger with ``bench/ledger_seed.py``'s ``ExportMix``, as
``bench/export.py`` does (200 people, grants issued and expired, heartbeats: a realistic
chain), starts the broker in this process, signs in through the console's dev sign-in as
the people each page is for, and requests every page ``--requests`` times, one at a time,
on loopback. It prints p50/p95/max per page. The time is the client's (request sent to
last byte read): it includes the loopback round trip, so it overstates the server's time
by a fraction of a millisecond.

    .venv/bin/python bench/console.py                    # 1,000,000 events (~4 min)
    .venv/bin/python bench/console.py --events 100000 --json

Target (issue 14): every page ≤ 50 ms p95 at 1 M rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ledger_seed import ExportMix, seed

REPO = Path(__file__).resolve().parent.parent

# (who signs in, the page). Subjects user-000..user-199 are the seeded people.
PAGES: list[tuple[str, str]] = [
    ("alice", "/console/"),
    ("alice", "/console/login"),
    ("bob", "/console/approvals"),
    ("carol", "/console/audit/why"),
    ("carol", "/console/audit/access?subject=user-007&secret=stripe%2Ftest&from={start}&to={end}"),
    ("carol", "/console/audit/access?secret=stripe%2Ftest&from={start}&to={end}"),
    ("carol", "/console/audit/events?subject=user-007"),
    ("carol", "/console/audit/events?type=grant.revoked&from={start}"),
    ("carol", "/console/audit/ledger"),
    ("carol", "/console/audit/findings"),
    ("carol", "/console/audit/evidence"),
    ("carol", "/console/audit/gaps"),
    ("carol", "/console/reviews"),
    ("erin", "/console/offboardings"),
    ("erin", "/console/admin/gaps/annotate"),
]


async def _sign_in(http: aiohttp.ClientSession, url: str, identity: str) -> dict[str, str]:
    async with http.post(
        f"{url}/console/login/dev",
        data={"identity": identity},
        headers={"Origin": url},
        allow_redirects=False,
    ) as r:
        assert r.status == 303, await r.text()
        return {k: v.value for k, v in r.cookies.items()}


async def _measure(url: str, requests: int, start: str, end: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        cookies = {who: await _sign_in(http, url, who) for who in {w for w, _ in PAGES}}
        for who, path in PAGES:
            target = url + path.format(start=quote(start), end=quote(end))
            jar = "; ".join(f"{k}={v}" for k, v in cookies[who].items())
            times: list[float] = []
            status = 0
            for i in range(requests + 3):
                began = time.perf_counter()
                async with http.get(target, headers={"Cookie": jar}, allow_redirects=False) as r:
                    await r.read()
                    status = r.status
                if i >= 3:  # the first three warm the caches, as a person's second look does
                    times.append((time.perf_counter() - began) * 1000)
            times.sort()
            results.append(
                {
                    "page": path.split("&from")[0][:40],
                    "as": who,
                    "status": status,
                    "p50_ms": round(statistics.median(times), 1),
                    "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
                    "max_ms": round(times[-1], 1),
                }
            )
    return results


async def _run_broker(settings: Any, requests: int, start: str, end: str) -> list[dict[str, Any]]:
    from broker.app import create_app
    from broker.serve import settle_heap

    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    settle_heap()  # as broker serve does once it listens
    port = runner.addresses[0][1]
    try:
        return await _measure(f"http://127.0.0.1:{port}", requests, start, end)
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from broker.devenv import prepare_broker
    from broker.ledger import CheckpointSigner, load_or_create_signing_key
    from broker.stack.devstack import DevStack

    mix = ExportMix(args.events)
    tmp = Path(tempfile.mkdtemp(prefix="bench-console-"))
    stack = DevStack(tmp / "stack")
    try:
        stack.start()
        settings = asyncio.run(prepare_broker(stack, policies_dir=REPO / "policies"))
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
                fast=True,
                checkpoint_every=100_000,
            )
        )
        seed_s, last_at = seeded.seconds, seeded.last_at
        settings = settings.with_overrides(
            console_dev_sign_in=True,
            console_key_path=tmp / "console.key",
            log_level="warning",
        )
        end = (last_at + timedelta(seconds=1)).isoformat()
        pages = asyncio.run(_run_broker(settings, args.requests, mix.start.isoformat(), end))
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "events": args.events,
        "seed_seconds": round(seed_s, 1),
        "requests_per_page": args.requests,
        "pages": pages,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    m = out["machine"]
    print(f"machine: {m['cores']} cores, python {m['python']}; {out['events']:,} events")
    print(f"{'page':40} {'as':6} {'status':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for p in out["pages"]:
        print(
            f"{p['page']:40} {p['as']:6} {p['status']:>6} {p['p50_ms']:>8} {p['p95_ms']:>8}"
            f" {p['max_ms']:>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
