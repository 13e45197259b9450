"""``broker serve`` as a real subprocess on the session stack, for process-level tests.

Configured as a deployment is: secrets through the environment, everything else through
the environment or a config file. The caller stops it (``stop``) or it is killed by
``serving`` on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from broker.settings import Settings
from tests.ledger_helpers import BROKER_BIN, subprocess_env

__all__ = ["BrokerProcess", "serve_env", "serving", "start_serve"]

_START_TIMEOUT = 45.0


@dataclass
class BrokerProcess:
    name: str
    url: str
    proc: asyncio.subprocess.Process
    log: Path  # the process's stderr

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit code (killed after ``timeout``: AssertionError)."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"{self.name} ignored signal {sig}:\n{self.tail()}") from None

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


def serve_env(settings: Settings, replica_id: str, **extra: str) -> dict[str, str]:
    """The environment of a replica on ``settings``' stack (port 0)."""
    assert settings.vault_token and settings.dev_issuer_key_path
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


async def start_serve(
    env: dict[str, str], name: str, log_dir: Path, *args: str
) -> BrokerProcess:
    """Start ``broker serve *args`` and return once it printed its listening line."""
    log = log_dir / f"{name}.stderr"
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            str(BROKER_BIN),
            "serve",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    broker = BrokerProcess(name, "", proc, log)
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
                        return broker
    except BaseException:
        await broker.kill()
        raise


@contextlib.asynccontextmanager
async def serving(processes: list[BrokerProcess]) -> AsyncIterator[list[BrokerProcess]]:
    """Yield ``processes`` (which the body may extend); kill any still running at exit."""
    try:
        yield processes
    finally:
        for p in processes:
            await p.kill()
