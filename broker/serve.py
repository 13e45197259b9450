"""Serve the broker until SIGTERM/SIGINT, then stop gracefully.

The shutdown order, each step bounded:

1. stop accepting: every listening socket closes, so a load balancer's retries go to
   another replica at once;
2. in-flight requests finish, for up to ``shutdown_grace_seconds``; past that aiohttp
   cancels them (a cancelled issuance never answered 201, so nothing was handed out
   without its ledger row);
3. the main app's ``cleanup_ctx`` runs: ``broker.stopped`` is appended, a last checkpoint
   signed, and the ledger writer drains its queue before the pool closes.

Extra apps (e.g. a second listener that shares the main app's clients) are built by
``extra_sites(main_app)`` *after* the main app's ``cleanup_ctx`` has started everything,
and are stopped before it is torn down.

A site listens on an address it binds (``(host, port)``) or on a socket already bound and
listening (``broker serve --workers``: the supervisor binds once, every worker serves the
same socket). Step 1 closes this process's copy of such a socket; the port stops accepting
once every worker has closed its copy (the supervisor closed its own after starting them).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Sequence

from aiohttp import web

__all__ = ["ExtraSites", "Listen", "serve", "settle_heap"]

_log = logging.getLogger(__name__)

# Where a site listens: (host, port) to bind (port 0 picks a free one), or a socket
# already bound and listening (it is served as is; its backlog is set again).
Listen = tuple[str, int] | socket.socket

# main app -> [(app, where)] served next to it.
ExtraSites = Callable[[web.Application], Sequence[tuple[web.Application, Listen]]]


async def serve(
    app: web.Application,
    listen: Listen,
    *,
    shutdown_grace_seconds: float,
    on_ready: Callable[[list[int]], None] | None = None,
    extra_sites: ExtraSites | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve ``app`` (and any ``extra_sites``) until SIGTERM or SIGINT.

    With ``ssl_context`` every site serves TLS from that one context (so reloading its
    certificate reaches every listener); without it, plaintext HTTP.

    ``on_ready(ports)`` is called once every site listens: the bound ports, the main
    app's first, then the extra sites' in order. Start-up errors propagate after whatever
    had started is stopped.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runners: list[web.AppRunner] = []  # main first; stopped in reverse
    settled = False
    try:
        grace = shutdown_grace_seconds
        ports = [await _start(runners, app, listen, grace, ssl_context, backlog=1024)]
        for extra_app, extra_listen in extra_sites(app) if extra_sites else ():
            ports.append(await _start(runners, extra_app, extra_listen, grace, ssl_context))
        settle_heap()
        settled = True
        host = _host(listen)
        _log.info("listening on %s port(s) %s", host, ports, extra={"ports": ports})
        if on_ready is not None:
            on_ready(ports)
        await stop.wait()
        _log.info(
            "shutting down: no new connections; in-flight requests get up to %.0f s",
            shutdown_grace_seconds,
            extra={"grace_seconds": shutdown_grace_seconds},
        )
    finally:
        # Stop accepting everywhere first; in-flight requests of all apps then drain
        # together while the runners are cleaned up, extras before the main app.
        for runner in runners:
            for site in list(runner.sites):
                await site.stop()
        for runner in reversed(runners):
            await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if settled:
            gc.unfreeze()  # collectable again, for a caller that goes on (a test)
    _log.info("stopped")


def settle_heap() -> None:
    """Take what start-up made (modules, settings, policy, pools: alive as long as the
    process) out of the cyclic garbage collector's sight, its garbage collected first.

    A full collection otherwise walks all of it every so often, stalling whichever
    requests are in flight: 10 to 22 ms each on the "why" bench, its slowest requests;
    about 4 once frozen (``gc.freeze``).
    """
    gc.collect()
    gc.freeze()


async def _start(
    runners: list[web.AppRunner],
    app: web.Application,
    listen: Listen,
    grace: float,
    ssl_context: ssl.SSLContext | None,
    *,
    backlog: int = 128,
) -> int:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=grace)
    runners.append(runner)  # cleaned up even if setup fails halfway
    await runner.setup()
    site: web.BaseSite
    if isinstance(listen, socket.socket):
        site = web.SockSite(runner, listen, backlog=backlog, ssl_context=ssl_context)
    else:
        host, port = listen
        site = web.TCPSite(runner, host, port, backlog=backlog, ssl_context=ssl_context)
    await site.start()
    return int(runner.addresses[0][1])


def _host(listen: Listen) -> str:
    return str(listen.getsockname()[0]) if isinstance(listen, socket.socket) else listen[0]
