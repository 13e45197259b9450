"""One ledger writer per host: ``broker serve --workers N`` relays rows to worker 0.

Every row extends one hash chain, so two writers on one ledger take turns: each batch of
a writer that is not alone goes the locked path (lock, read the head, insert, commit,
all while the others wait), and N workers on one host wrote fewer rows per second than
one (bench/ledger_writers.py, bench/issuance.py --workers 2). Instead, worker 0 runs the
host's only ``LedgerWriter``; every other worker hands it its rows over a socket pair the
supervisor made, and gets back the same ``Appended`` as a local call would, after the
same COMMIT. Replicas on *other* hosts still take turns with this one, as before.

Frames: a 4-byte big-endian length, then JSON (msgspec; msgpack has no integers past 64
bits, which bodies may hold) of ``(id, NewEvent)`` one way and ``(id, Appended | None,
error | None)`` back. A decoded ``NewEvent`` runs its own checks again
(``__post_init__``), so worker 0 writes nothing it would not write itself.

Failing closed: a relayed append that gets no answer — worker 0 gone, the socket closed,
no reply within the commit timeout — raises ``LedgerUnavailable`` like a local writer
that cannot commit. The supervisor stops every worker when one exits, so a relay never
outlives its writer for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace

import msgspec

from broker.errors import LedgerUnavailable

from .events import NewEvent
from .tree import RecentBlocks
from .writer import Appended, LedgerWriter

__all__ = ["LedgerLink", "RelayServer", "RelayWriter"]

_log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
_MAX_FRAME = 4 << 20  # a row is bounded far below this (max_body_bytes); guards the reader
_encode = msgspec.json.Encoder().encode
_decode_request = msgspec.json.Decoder(tuple[int, NewEvent]).decode
_decode_reply = msgspec.json.Decoder(tuple[int, Appended | None, str | None]).decode


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if size > _MAX_FRAME:
        raise ValueError(f"ledger relay frame of {size} bytes")
    return await reader.readexactly(size)


def _frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


@dataclass(frozen=True)
class LedgerLink:
    """A worker's part in its host's one ledger writer (both empty: a lone process).

    ``serves``: worker 0's ends of the socket pairs, one per other worker. ``relay``: a
    worker 1..N-1's end of its pair to worker 0.
    """

    serves: tuple[socket.socket, ...] = ()
    relay: socket.socket | None = None


class RelayWriter:
    """``append`` through worker 0's writer: what workers 1..N-1 use as their writer."""

    locked_batches = 0  # batches and conflicts happen in worker 0's writer
    conflicts = 0

    def __init__(
        self, sock: socket.socket, *, replica: str, max_queue: int, commit_timeout: float
    ) -> None:
        self._sock = sock
        self._replica = replica  # each row still names the worker that asked for it
        self.queue_capacity = max_queue
        # Worker 0's commit timeout, plus the hop and its queue: past that, no answer is
        # coming and the caller must fail closed.
        self._timeout = commit_timeout * 2 + 1.0
        self._pending: dict[int, asyncio.Future[Appended]] = {}
        self._ids = itertools.count()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.recent_blocks = RecentBlocks(capacity=0)  # the tree reads these rows back

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock)
        self._reader_task = asyncio.create_task(self._read(reader), name="ledger-relay")

    async def stop(self) -> None:
        """Wait for the answers still owed (bounded), then close the connection."""
        if self._pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await asyncio.gather(*self._pending.values(), return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None
        self._fail_all("ledger relay closed")

    async def append(self, event: NewEvent) -> Appended:
        """As ``LedgerWriter.append``: returns after worker 0 committed the row."""
        writer = self._writer
        if writer is None or writer.is_closing():
            raise LedgerUnavailable("ledger relay is not connected")
        if len(self._pending) >= self.queue_capacity:
            raise LedgerUnavailable("ledger backlog is full")
        ident = next(self._ids)
        fut: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._pending[ident] = fut
        try:
            writer.write(_frame(_encode((ident, replace(event, replica=self._replica)))))
            async with asyncio.timeout(self._timeout):
                return await asyncio.shield(fut)
        except TimeoutError:
            raise LedgerUnavailable("ledger relay did not answer") from None
        finally:
            self._pending.pop(ident, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                ident, appended, error = _decode_reply(await _read_frame(reader))
                fut = self._pending.get(ident)
                if fut is None or fut.done():
                    continue
                if appended is not None:
                    fut.set_result(appended)
                else:
                    fut.set_exception(LedgerUnavailable(error or "ledger write failed"))
        except (asyncio.IncompleteReadError, OSError, ValueError, msgspec.DecodeError) as e:
            _log.warning("ledger relay to worker 0 ended: %s", type(e).__name__)
        finally:
            self._fail_all("ledger relay to worker 0 ended")

    def _fail_all(self, why: str) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(LedgerUnavailable(why))


class RelayServer:
    """Worker 0's side: rows from the other workers into this worker's ``LedgerWriter``."""

    def __init__(self, writer: LedgerWriter, sockets: Sequence[socket.socket]) -> None:
        self._ledger_writer = writer
        self._sockets = list(sockets)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for sock in self._sockets:
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            self._tasks.append(asyncio.create_task(self._serve(reader, writer)))

    async def stop(self, timeout: float) -> None:
        """Wait (bounded) for every worker to close its end: their last rows (the
        ``broker.stopped`` of each) come through here after their requests drained."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answering: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    frame = await _read_frame(reader)
                except asyncio.IncompleteReadError:
                    break  # the worker closed its end
                try:
                    ident, event = _decode_request(frame)
                except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as e:
                    # Not a row this broker would write; there is no id to answer.
                    _log.error("ledger relay: refused a frame: %s", e)
                    break
                task = asyncio.create_task(self._answer(writer, ident, event))
                answering.add(task)
                task.add_done_callback(answering.discard)
            if answering:
                await asyncio.wait(answering)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, writer: asyncio.StreamWriter, ident: int, event: NewEvent) -> None:
        reply: tuple[int, Appended | None, str | None]
        try:
            reply = (ident, await self._ledger_writer.append(event), None)
        except LedgerUnavailable as e:
            reply = (ident, None, str(e))
        if not writer.is_closing():
            writer.write(_frame(_encode(reply)))
