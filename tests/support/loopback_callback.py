"""A loopback redirect listener, as a CLI's: ``http://127.0.0.1:<free port>/callback``.

It answers the first redirect it receives (``?code&state`` or ``?error``) with a small
page and hands its query to ``wait``; later requests get 404. Stopped on leaving the
context manager.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from aiohttp import web

__all__ = ["LoopbackCallback"]

_DEFAULT_WAIT = 30.0


class LoopbackCallback:
    """``redirect_uri`` is valid once entered; ``wait`` returns the redirect's query."""

    def __init__(self, path: str = "/callback", host: str = "127.0.0.1") -> None:
        self.path = path
        self.host = host
        self.redirect_uri = ""
        self._received: asyncio.Future[dict[str, str]] | None = None
        self._runner: web.AppRunner | None = None

    async def _callback(self, request: web.Request) -> web.Response:
        assert self._received is not None
        if self._received.done():
            raise web.HTTPNotFound(text="this listener took its one redirect already")
        self._received.set_result(dict(request.query))
        return web.Response(text="Signed in: you can close this tab.")

    async def __aenter__(self) -> LoopbackCallback:
        self._received = asyncio.get_running_loop().create_future()
        app = web.Application()
        app.router.add_get(self.path, self._callback)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.redirect_uri = f"http://{self.host}:{port}{self.path}"
        return self

    async def wait(self, timeout: float = _DEFAULT_WAIT) -> dict[str, str]:
        """The query of the redirect; TimeoutError if none came within ``timeout``."""
        assert self._received is not None
        return await asyncio.wait_for(asyncio.shield(self._received), timeout)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
