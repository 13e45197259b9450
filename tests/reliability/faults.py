"""Fault injection for the reliability suite: broker processes to kill, sockets to cut.

- ``BrokerProcess``: a real ``broker serve`` subprocess on the session stack, configured
  only through its environment; ``kill()`` is SIGKILL (no shutdown code runs).
- ``TcpProxy``: a byte pump on a loopback port in front of a real server (Postgres or
  OpenBao). ``cut()`` aborts every open connection and refuses new ones — to the broker
  that is the server gone; ``restore()`` brings it back; ``delay`` makes it slow.
- ``vault_leases`` / ``ledger_lease_ids``: what OpenBao holds versus what the ledger
  accounts for.
- ``Sampler``: RSS and open fds of a process over time, and the "flat" rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp
import asyncpg
import psutil

from broker.settings import Settings
from tests.broker_process import serve_env
from tests.ledger_helpers import BROKER_BIN
from tests.reliability.conftest import HEAVY

__all__ = [
    "AuditedOpenBao",
    "BrokerProcess",
    "Sampler",
    "TcpProxy",
    "heavy",
    "ledger_lease_ids",
    "running_proxy",
    "vault_leases",
]

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0


def heavy() -> bool:
    """RELIABILITY_HEAVY=1 asks for the longer soak and more kills."""
    return HEAVY


@dataclass
class BrokerProcess:
    """A started ``broker serve``; ``url`` is where it listens."""

    replica_id: str
    proc: asyncio.subprocess.Process
    log: Path
    url: str = ""

    @classmethod
    async def start(
        cls, settings: Settings, replica_id: str, log_dir: Path, **extra_env: str
    ) -> BrokerProcess:
        """Start it and wait for its ``{"listening": url}`` line; kill it if that fails."""
        log = log_dir / f"{replica_id}.log"
        stderr: IO[bytes]
        with log.open("ab") as stderr:
            proc = await asyncio.create_subprocess_exec(
                str(BROKER_BIN),
                "serve",
                env=serve_env(settings, replica_id, **extra_env),
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        broker = cls(replica_id, proc, log)
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(_START_TIMEOUT):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        raise AssertionError(
                            f"{replica_id} exited before listening:\n{broker.log_tail()}"
                        )
                    with contextlib.suppress(ValueError):
                        doc = json.loads(line)
                        if isinstance(doc, dict) and "listening" in doc:
                            broker.url = str(doc["listening"])
                            return broker
        except BaseException:
            await broker.kill()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    async def kill(self) -> None:
        """SIGKILL: the process gets no chance to finish anything."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> int:
        """SIGTERM and wait (SIGKILL after the timeout); return the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                await self.kill()
        assert self.proc.returncode is not None
        return self.proc.returncode


class TcpProxy:
    """Forwards loopback TCP connections to ``upstream_host:upstream_port``.

    ``cut()`` aborts every live connection (RST) and aborts each new one on accept, so
    clients see resets and refusals as from a dead server, on a real socket. ``delay``
    (seconds) is added before each chunk is forwarded, in both directions.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.down = False
        self.delay = 0.0
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
        for writer in list(self._live):
            writer.transport.abort()
        self._live.clear()

    def restore(self) -> None:
        self.down = False

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
                if self.down:
                    return
                dst.write(chunk)
                await dst.drain()
        except (ConnectionError, OSError):
            return
        finally:
            dst.transport.abort()


@contextlib.asynccontextmanager
async def running_proxy(host: str, port: int) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(host, port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def vault_leases(vault_addr: str, token: str, prefix: str) -> list[str]:
    """Full lease ids OpenBao holds under ``prefix`` (LIST sys/leases/lookup/<prefix>/)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.request(
            "LIST",
            f"{vault_addr}/v1/sys/leases/lookup/{prefix.strip('/')}/",
            headers={"X-Vault-Token": token},
        ) as r,
    ):
        if r.status == 404:
            return []
        assert r.status == 200, (r.status, await r.text())
        keys = (await r.json())["data"]["keys"]
    return [f"{prefix.strip('/')}/{k}" for k in keys if not k.endswith("/")]


async def ledger_lease_ids(dsn: str, event: str = "grant.issued") -> set[str]:
    """Lease ids that have an ``event`` row in the ledger at ``dsn``."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT lease_id FROM ledger.events WHERE event = $1 AND lease_id IS NOT NULL",
            event,
        )
    finally:
        await conn.close()
    return {r["lease_id"] for r in rows}


@dataclass
class Sampler:
    """RSS (bytes) and open fd count of one process, sampled every ``interval`` seconds."""

    pid: int
    interval: float = 1.0
    rss: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        proc = psutil.Process(self.pid)
        self.rss.append(proc.memory_info().rss)
        self.fds.append(proc.num_fds())

    def start(self) -> None:
        async def loop() -> None:
            while True:
                with contextlib.suppress(psutil.Error):
                    self.sample()
                await asyncio.sleep(self.interval)

        self._task = asyncio.create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def flatness(self, *, warmup: float = 0.25) -> tuple[float, float, int, int]:
        """(first-third median RSS, last-third median RSS, fds first, fds last) after warmup.

        The first ``warmup`` fraction of samples is dropped (imports, pools filling).
        """
        skip = int(len(self.rss) * warmup)
        rss, fds = self.rss[skip:], self.fds[skip:]
        third = max(1, len(rss) // 3)
        return (
            statistics.median(rss[:third]),
            statistics.median(rss[-third:]),
            int(statistics.median(fds[:third])),
            int(statistics.median(fds[-third:])),
        )


class AuditedOpenBao:
    """A dev OpenBao of our own with a file audit device declared in its config.

    OpenBao refuses ``sys/audit`` over the API (declarative devices only), so the shared
    server cannot get one; this one is started with ``-config`` holding the ``audit``
    stanza. The audit log stays HMAC'd (the default); ``stop()`` ends the server and the
    caller removes ``state_dir``.
    """

    device = "ledgercheck"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.root_token = f"root-{os.urandom(8).hex()}"
        self.audit_log = state_dir / "audit.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.addr = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "audit.hcl"
        config.write_text(
            f'audit "file" "{self.device}" {{\n'
            f'  options {{\n    file_path = "{self.audit_log}"\n  }}\n}}\n'
        )
        log = (self.state_dir / "bao.log").open("wb")
        self._proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "bao"),
                "server",
                "-dev",
                "-dev-no-store-token",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                f"-config={config}",
            ],
            env={"PATH": os.defpath, "HOME": str(self.state_dir),
                 "BAO_DEV_ROOT_TOKEN_ID": self.root_token},
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AssertionError((self.state_dir / "bao.log").read_text()[-2000:])
            # 200 only once initialised, unsealed and active.
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.addr}/v1/sys/health", timeout=1) as r,  # noqa: S310
            ):
                if r.status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise AssertionError("audited OpenBao did not start")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
