"""Graceful shutdown of a real ``broker serve`` under load.

Workers keep issuing credentials while the process gets SIGTERM. Whatever the client was
told (201) must be in the ledger (``grant.issued``), requests in flight at the signal
finish with their answer, ``broker.stopped`` is the replica's last row, the chain
verifies, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from broker.serve import Listen, serve
from broker.settings import Settings
from tests.support.commands import broker_verify
from tests.support.http import post_credentials
from tests.support.ledger import select_events
from tests.support.processes import serve_env, serving, start_serve

_WORKERS = 8
_ISSUED_BEFORE_SIGNAL = 40


async def test_sigterm_under_load_loses_nothing(
    broker_settings: Settings, tokens: dict[str, str], tmp_path: Path
) -> None:
    replica = "shutdown-test"
    env = serve_env(broker_settings, replica, BROKER_SHUTDOWN_GRACE="15")
    received: dict[str, tuple[float, float]] = {}  # grant id -> (sent, answered) monotonic
    statuses: Counter[int | str] = Counter()
    signalled_at: float | None = None
    enough = asyncio.Event()

    async with serving([]) as procs, aiohttp.ClientSession() as http:
        broker = await start_serve(env, replica, tmp_path)
        procs.append(broker)

        async def worker(n: int) -> None:
            secret = "db/orders-ro" if n % 2 else "stripe/test"
            who = ("alice", "bob", "dana")[n % 3]
            while broker.proc.returncode is None:
                sent = time.monotonic()
                try:
                    async with post_credentials(
                        http, broker.url, tokens[who], secret, reason="shutdown test"
                    ) as r:
                        statuses[r.status] += 1
                        if r.status == 201:
                            received[(await r.json())["id"]] = (sent, time.monotonic())
                except aiohttp.ClientError as e:
                    # Refused or closed after the signal: the request was never answered,
                    # so nothing may have been handed out for it.
                    assert signalled_at is not None, f"failed before SIGTERM: {e!r}"
                    statuses[type(e).__name__] += 1
                    await asyncio.sleep(0.02)
                if len(received) >= _ISSUED_BEFORE_SIGNAL:
                    enough.set()

        workers = [asyncio.create_task(worker(n)) for n in range(_WORKERS)]
        await asyncio.wait_for(enough.wait(), 60)
        signalled_at = time.monotonic()
        broker.proc.send_signal(signal.SIGTERM)
        code = await broker.stop(timeout=40)
        await asyncio.gather(*workers)
        assert code == 0, broker.tail()

    assert set(statuses) <= {201} | {k for k in statuses if isinstance(k, str)}, statuses
    drained = [g for g, (sent, answered) in received.items() if sent < signalled_at < answered]
    assert drained, f"no request was in flight at SIGTERM: cannot show draining {statuses}"

    rows = await select_events(
        broker_settings.database_url,
        "seq, event, grant_id::text AS grant_id",
        "replica = $1",
        replica,
    )
    issued = Counter(r["grant_id"] for r in rows if r["event"] == "grant.issued")
    missing = [g for g in received if issued[g] != 1]
    assert not missing, f"{len(missing)} answered grants without exactly one grant.issued row"
    # Nothing was issued that no client was told of (no request was cut off mid-way).
    assert set(issued) == set(received)
    assert rows[-1]["event"] == "broker.stopped", [r["event"] for r in rows[-3:]]
    assert sum(1 for r in rows if r["event"] == "broker.stopped") == 1
    run = await broker_verify(broker_settings.database_url, broker_settings)
    assert run.returncode == 0 and run.report["ok"] is True, (run.report, run.stderr[-2000:])


async def test_serve_drains_extra_sites_before_the_main_app_stops() -> None:
    """The ``extra_sites`` hook: a second app built after the main app started, serving on
    its own port, stopped (and drained) before the main app's cleanup runs."""
    events: list[str] = []

    async def main_lifecycle(app: web.Application) -> AsyncIterator[None]:
        events.append("main started")
        yield
        events.append("main cleanup")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        events.append("slow answered")
        return web.json_response({"ok": True})

    main_app = web.Application()
    main_app.cleanup_ctx.append(main_lifecycle)

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"app": "main"})

    main_app.router.add_get("/", hello)

    def extra_sites(app: web.Application) -> list[tuple[web.Application, Listen]]:
        assert app is main_app and events == ["main started"]  # built after start-up
        extra = web.Application()
        extra.router.add_get("/slow", slow)
        return [(extra, ("127.0.0.1", 0))]

    ready: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve(
            main_app,
            ("127.0.0.1", 0),
            shutdown_grace_seconds=10,
            on_ready=ready.set_result,
            extra_sites=extra_sites,
        )
    )
    main_port, extra_port = await asyncio.wait_for(ready, 10)
    assert gc.get_freeze_count() > 0  # start-up's objects out of the collector's way
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{main_port}/") as r:
            assert (await r.json()) == {"app": "main"}
        in_flight = asyncio.create_task(http.get(f"http://127.0.0.1:{extra_port}/slow"))
        await asyncio.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)  # serve() owns SIGTERM while it runs
        response = await in_flight
        assert response.status == 200
        response.release()
        await asyncio.wait_for(server, 15)
        for port in (main_port, extra_port):
            with pytest.raises(aiohttp.ClientConnectorError):
                await http.get(f"http://127.0.0.1:{port}/")
    assert events == ["main started", "slow answered", "main cleanup"]
    assert gc.get_freeze_count() == 0  # and given back when serving ends
