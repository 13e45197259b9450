"""``broker serve`` as a real subprocess on the session stack, for process-level tests.

Configured as a deployment is: secrets through the environment, everything else through
the environment or a config file. A ``BrokerProcess`` is stopped by its test (``stop``:
a signal, then the exit code) or killed by ``serving`` on the way out; ``kill`` is SIGKILL,
so no shutdown code runs (what the crash tests want).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.settings import Settings
from tests.support.brokers import SUITE_QUOTA_ENV
from tests.support.commands import subprocess_env
from tests.support.paths import BROKER_BIN

__all__ = [
    "BrokerProcess",
    "interrupt",
    "serve_env",
    "serving",
    "start_replica",
    "start_serve",
]

_START_TIMEOUT = 60.0  # two cores shared with other sessions: a cold start can be slow
_STOP_TIMEOUT = 30.0


@dataclass
class BrokerProcess:
    """A started ``broker serve``: ``url`` is where it listens (``vault_api_url`` the front
    door, when it runs), ``ready`` its whole listening line, ``log`` its stderr."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    url: str = ""
    vault_api_url: str = ""
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, chars: int = 3000) -> str:
        """The end of its stderr, for assertion messages."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = _STOP_TIMEOUT) -> int:
        """Send ``sig`` and return the exit code; killed after ``timeout`` (AssertionError)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            raise AssertionError(f"{self.name} ignored signal {sig}:\n{self.tail()}") from None

    async def kill(self) -> None:
        """SIGKILL: the process gets no chance to finish anything."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()


def serve_env(settings: Settings, replica_id: str, **extra: str) -> dict[str, str]:
    """The environment of a replica on ``settings``' stack (port 0, checkpoints every 1 s)."""
    assert settings.vault_token and settings.dev_issuer_key_path
    # The session's one embedded PostgreSQL has no standby (``extra`` may say otherwise).
    # The suite's demo identities issue far beyond the default quotas (SUITE_QUOTA_ENV).
    extra = {"BROKER_LEDGER_SYNCHRONOUS_STANDBY": "not-required", **SUITE_QUOTA_ENV, **extra}
    return subprocess_env(
        BROKER_DATABASE_URL=settings.database_url,
        VAULT_ADDR=settings.vault_addr,
        VAULT_TOKEN=settings.vault_token,
        BROKER_POLICIES_DIR=str(settings.policies_dir),
        BROKER_CHECKPOINT_KEY=str(settings.checkpoint_key_path),
        BROKER_DEV_ISSUER_KEY=str(settings.dev_issuer_key_path),
        BROKER_LEDGER_ORIGIN=settings.ledger_origin,
        BROKER_REPLICA_ID=replica_id,
        BROKER_PORT="0",
        BROKER_CHECKPOINT_INTERVAL="1",
        **extra,
    )


async def start_serve(env: dict[str, str], name: str, log_dir: Path, *args: str) -> BrokerProcess:
    """Start ``broker serve *args`` and return once it printed its listening line.

    Killed (and the error raised) if it exits or stays silent for ``_START_TIMEOUT``.
    """
    log = log_dir / f"{name}.log"
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            str(BROKER_BIN),
            "serve",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    broker = BrokerProcess(name, proc, log)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(_START_TIMEOUT):
            while True:
                line = await proc.stdout.readline()
                if not line:
                    raise AssertionError(f"{name} exited before listening:\n{broker.tail()}")
                with contextlib.suppress(ValueError):
                    doc = json.loads(line)
                    if isinstance(doc, dict) and "listening" in doc:
                        broker.url = str(doc["listening"])
                        broker.vault_api_url = str(doc.get("vault_api", ""))
                        broker.ready = doc
                        return broker
    except BaseException:
        await broker.kill()
        raise


async def start_replica(
    settings: Settings, replica_id: str, log_dir: Path, **extra_env: str
) -> BrokerProcess:
    """``start_serve`` with ``serve_env``: a replica configured only through its environment."""
    return await start_serve(serve_env(settings, replica_id, **extra_env), replica_id, log_dir)


async def interrupt(proc: asyncio.subprocess.Process, timeout: float = _STOP_TIMEOUT) -> None:
    """Stop ``proc`` as Ctrl-C does (SIGINT), SIGKILL after ``timeout``; return once it ended."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def serving(processes: list[BrokerProcess]) -> AsyncIterator[list[BrokerProcess]]:
    """Yield ``processes`` (which the body may extend); kill any still running at exit."""
    try:
        yield processes
    finally:
        for p in processes:
            await p.kill()
