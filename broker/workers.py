"""``broker serve --workers N``: one supervisor process, N workers sharing its sockets.

The supervisor binds every listening socket once (so port 0 is chosen once), then starts
N workers with ``subprocess`` (fork and exec, before it has any event loop or pool): each
is ``broker serve --worker SPEC``, a full replica with its own app, pools, ledger writer
and background jobs, whose replica id is ``<replica_id>-w<index>``. The workers inherit
the sockets and accept on them; the kernel spreads connections among them. The
supervisor then closes its own copies, so a port stops accepting once every worker has
closed its copy on the way out (broker/serve.py, step 1).

The rules between them:

- a worker reports ready by printing its listening line on stdout, a pipe to the
  supervisor; the supervisor calls ``on_ready`` once every worker has;
- a worker's stdin is a pipe the supervisor never writes: end of file means the
  supervisor is gone (even SIGKILLed), and the worker stops as on SIGTERM, killed if it
  is still running ``stop_timeout`` later (``watch_supervisor``);
- SIGTERM and SIGINT are forwarded to every worker, which stop gracefully; after
  ``stop_timeout`` the rest are SIGKILLed. The supervisor exits 0 only if every worker did;
- a worker that exits on its own (crash, start-up refusal, a signal from someone else)
  makes the supervisor stop the others and exit 1. No respawn: the orchestrator restarts
  the whole process (the pod), which is simpler to reason about than a half-replaced set;
- workers run in their own process group, so a terminal's Ctrl-C reaches them once,
  through the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.ledger.relay import LedgerLink

__all__ = ["WorkerSpec", "bind", "ledger_pairs", "supervise", "watch_supervisor"]

_log = logging.getLogger(__name__)

_BACKLOG = 1024  # as a single process listens (broker/serve.py)


@dataclass(frozen=True)
class WorkerSpec:
    """What the supervisor tells worker ``index``: the hidden ``--worker`` argument (JSON).

    ``fds`` are the inherited listening sockets: the broker API's, then the front door's
    when it runs. ``console_key`` names a key file the supervisor made for the workers to
    share when no ``console_key_path`` is configured (console cookies sealed by one worker
    must open on every other); it is deleted once every worker is ready.
    """

    index: int
    replica_id: str
    fds: tuple[int, ...]
    console_key: Path | None = None
    # The host's one ledger writer (broker/ledger/relay.py): worker 0 gets one end of a
    # socket pair per other worker; each other worker, the other end of its pair.
    ledger_fds: tuple[int, ...] = ()
    # Where the workers publish their metrics for each other's scrapes
    # (broker/worker_metrics.py); the supervisor removes it when it exits.
    metrics_dir: Path | None = None

    @property
    def worker_replica_id(self) -> str:
        return f"{self.replica_id}-w{self.index}"

    def encode(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "replica_id": self.replica_id,
                "fds": list(self.fds),
                "console_key": str(self.console_key) if self.console_key else None,
                "ledger_fds": list(self.ledger_fds),
                "metrics_dir": str(self.metrics_dir) if self.metrics_dir else None,
            }
        )

    @classmethod
    def decode(cls, text: str) -> WorkerSpec:
        """Raises ValueError when ``text`` is not what ``encode`` writes."""
        try:
            doc = json.loads(text)
            key, metrics = doc["console_key"], doc.get("metrics_dir")
            spec = cls(
                index=int(doc["index"]),
                replica_id=str(doc["replica_id"]),
                fds=tuple(int(fd) for fd in doc["fds"]),
                console_key=Path(key) if key else None,
                ledger_fds=tuple(int(fd) for fd in doc.get("ledger_fds", ())),
                metrics_dir=Path(metrics) if metrics else None,
            )
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"invalid --worker argument: {e}") from e
        if not spec.fds:
            raise ValueError("invalid --worker argument: no listening socket")
        return spec

    def sockets(self) -> list[socket.socket]:
        """The inherited listening sockets (family and type read from each descriptor)."""
        return [socket.socket(fileno=fd) for fd in self.fds]

    def worker_metrics(self) -> tuple[Path, int] | None:
        """Where this worker publishes its metrics, and its index there."""
        return (self.metrics_dir, self.index) if self.metrics_dir is not None else None

    def ledger_link(self) -> LedgerLink:
        """This worker's part in the host's one ledger writer."""
        from broker.ledger.relay import LedgerLink

        ends = tuple(socket.socket(fileno=fd) for fd in self.ledger_fds)
        if self.index == 0:
            return LedgerLink(serves=ends)
        if len(ends) != 1:
            raise ValueError(f"worker {self.index} needs one ledger relay socket")
        return LedgerLink(relay=ends[0])


def ledger_pairs(workers: int) -> list[list[socket.socket]]:
    """Each worker's ends of the socket pairs that carry its rows to worker 0's writer."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(workers - 1)]
    return [[a for a, _ in pairs], *([b] for _, b in pairs)]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on the first address ``host`` resolves to (port 0: a free one).

    Raises OSError (address in use, host unknown).
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


async def supervise(
    commands: Sequence[Sequence[str]],
    sockets: Sequence[socket.socket],
    *,
    stop_timeout: float,
    on_ready: Callable[[list[int]], None],
    private: Sequence[Sequence[socket.socket]] = (),
) -> int:
    """Run one worker per command, passing ``sockets``; return the exit code (0 or 1).

    ``private[i]``, when given, are passed to worker ``i`` alone. ``on_ready(pids)`` is
    called once every worker printed its listening line (pids in command order), unless
    a signal or a worker's exit came first. Every socket is closed here once the workers
    have their copies. Every worker started has exited on return.
    """
    loop = asyncio.get_running_loop()
    signalled: asyncio.Future[int] = loop.create_future()

    def on_signal(sig: int) -> None:
        if not signalled.done():
            signalled.set_result(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    workers: list[asyncio.subprocess.Process] = []
    try:
        fds = tuple(s.fileno() for s in sockets)
        for index, command in enumerate(commands):
            own = tuple(s.fileno() for s in private[index]) if private else ()
            workers.append(
                await asyncio.create_subprocess_exec(
                    *command,
                    stdin=asyncio.subprocess.PIPE,  # the lifeline: never written
                    stdout=asyncio.subprocess.PIPE,  # the listening line
                    pass_fds=fds + own,
                    process_group=0,
                )
            )
        for sock in [*sockets, *(s for socks in private for s in socks)]:
            sock.close()
        pids = [w.pid for w in workers]
        _log.info("started %d workers", len(workers), extra={"workers": pids})

        pending_ready = set(pids)

        async def watch(worker: asyncio.subprocess.Process) -> int:
            if await _reported_ready(worker):
                pending_ready.discard(worker.pid)
                if not pending_ready and not signalled.done():
                    on_ready(pids)
            return await worker.wait()

        exits = [asyncio.create_task(watch(w)) for w in workers]
        await asyncio.wait([*exits, signalled], return_when=asyncio.FIRST_COMPLETED)
        if signalled.done():
            forward, failed = signalled.result(), False
            _log.info("%s: stopping the workers", signal.Signals(forward).name)
        else:
            forward, failed = signal.SIGTERM, True
            for index, (worker, task) in enumerate(zip(workers, exits, strict=True)):
                if task.done():
                    _log.error(
                        "worker %d (pid %d) exited with %s: stopping the others",
                        index,
                        worker.pid,
                        worker.returncode,
                    )
        await _stop(workers, forward, stop_timeout)
        codes = [w.returncode for w in workers]
        _log.info("workers exited: %s", codes, extra={"exit_codes": codes})
        return 1 if failed or any(codes) else 0
    finally:
        for sock in [*sockets, *(s for socks in private for s in socks)]:
            sock.close()
        for worker in workers:  # only when start-up or stopping failed halfway
            if worker.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.kill()
                await worker.wait()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _reported_ready(worker: asyncio.subprocess.Process) -> bool:
    """Whether ``worker`` printed its listening line before closing its stdout."""
    assert worker.stdout is not None
    while line := await worker.stdout.readline():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict) and "listening" in doc:
                return True
    return False


async def _stop(workers: Sequence[asyncio.subprocess.Process], sig: int, timeout: float) -> None:
    """Send ``sig`` to every running worker; SIGKILL those still running after ``timeout``."""
    for worker in workers:
        if worker.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(sig)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(w.wait() for w in workers))
    except TimeoutError:
        _log.error("workers still running %.0f s after %s: killing them", timeout, sig)
        for worker in workers:
            if worker.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.kill()
        await asyncio.gather(*(w.wait() for w in workers))


def watch_supervisor(stop_timeout: float) -> None:
    """In a worker: stop when the supervisor is gone (end of file on stdin).

    The stop is this process's own SIGTERM, so it is the graceful one; if the process is
    still running ``stop_timeout`` later it exits at once (status 1).
    """

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 512):
                pass
        _log.warning("the supervisor is gone: stopping")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(stop_timeout)
        os._exit(1)

    threading.Thread(target=watch, name="watch-supervisor", daemon=True).start()
