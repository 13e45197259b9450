"""Network faults on a real socket: a TCP proxy that cuts and slows a server's connections.

``TcpProxy`` is a byte pump on a loopback port in front of a real server (Postgres or
OpenBao). ``cut()`` aborts every open connection and refuses new ones — to the broker that
is the server gone; ``restore()`` brings it back; ``delay`` makes it slow; ``stall()``
holds every byte back (a congested link) until ``resume()``, or until ``cut()`` drops them;
``silence()`` makes the server vanish without a word (a machine that lost power).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["TcpProxy", "running_proxy"]


class TcpProxy:
    """Forwards loopback TCP connections to ``upstream_host:upstream_port``.

    ``cut()`` aborts every live connection (RST) and aborts each new one on accept, so
    clients see resets and refusals as from a dead server, on a real socket. ``delay``
    (seconds) is added before each chunk is forwarded, in both directions. ``stall()``
    forwards nothing more, either way, until ``resume()``; what it held back is then sent,
    or dropped by a ``cut()`` (which also ends the stall). ``silence()``: as a server
    that vanished from the network, nothing more is forwarded and nothing is closed or
    refused: open connections hang, new ones are accepted and never answered, until
    ``cut()`` or ``close()``.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.down = False
        self.silent = False
        self.delay = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._cut = asyncio.Event()
        self.accepted = 0
        self.refused = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def cut(self) -> None:
        self.down = True
        self.silent = False
        for writer in list(self._live):
            writer.transport.abort()
        self._live.clear()
        self._flowing.set()  # stalled pumps wake, see the cut and drop what they hold
        self._cut.set()  # silently held connections end

    def silence(self) -> None:
        self.silent = True
        self._flowing.clear()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def restore(self) -> None:
        self.down = False
        self._cut.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.silent:  # held open, never answered: the client waits, as on a dead host
            self._live.add(writer)
            await self._cut.wait()
            writer.transport.abort()
            return
        if self.down:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._live.update((writer, up_writer))
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._tasks.difference_update(pumps)
            for w in (writer, up_writer):
                self._live.discard(w)
                w.transport.abort()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while chunk := await src.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                await self._flowing.wait()
                if self.down:
                    return
                dst.write(chunk)
                await dst.drain()
        except (ConnectionError, OSError):
            return
        finally:
            if not self.silent:  # a silent server closes nothing
                dst.transport.abort()


@contextlib.asynccontextmanager
async def running_proxy(host: str, port: int) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(host, port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
