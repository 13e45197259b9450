"""One-shot ``broker`` commands as real subprocesses: ``verify``, evidence, the client CLI.

Each runs through ``asyncio.create_subprocess_exec``, so the event loop serving an
in-process broker keeps running while the command waits for it. Environments are built,
not inherited: only ``_INHERITED_ENV`` comes from ours, so a developer's ``BROKER_*`` or
``VAULT_*`` cannot change what a test checks.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.settings import Settings
from tests.support.paths import BROKER_BIN

__all__ = ["CommandRun", "VerifyRun", "broker_verify", "cli", "run_broker", "subprocess_env"]

_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def subprocess_env(**extra: str) -> dict[str, str]:
    """The few variables a subprocess needs from ours, plus ``extra``."""
    env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
    env.update(extra)
    return env


@dataclass(frozen=True)
class CommandRun:
    """How a finished command ended: exit code and its decoded output."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def run_broker(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60.0
) -> CommandRun:
    """Run ``broker ARGS`` to the end; killed (and ``TimeoutError`` raised) after ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        str(BROKER_BIN),
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return CommandRun(proc.returncode, out.decode(), err.decode())


async def cli(
    *args: str,
    cwd: Path,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 60.0,
) -> CommandRun:
    """The client CLI, with only the given BROKER_URL/BROKER_TOKEN (and no proxy) set."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BROKER_") and k.lower() not in _PROXY_VARS
    }
    if url is not None:
        env["BROKER_URL"] = url
    if token is not None:
        env["BROKER_TOKEN"] = token
    return await run_broker(*args, env=env, cwd=cwd, timeout=timeout)


@dataclass(frozen=True)
class VerifyRun:
    returncode: int
    report: dict[str, Any]
    stderr: str


async def broker_verify(
    dsn: str,
    settings: Settings,
    *extra_args: str,
    checkpoint_key: Path | None = None,
    timeout: float = 30.0,
    **extra_env: str,
) -> VerifyRun:
    """``broker verify`` against ``dsn``; AssertionError if it printed no JSON report.

    ``checkpoint_key`` replaces the session's signing key file; ``extra_env`` adds
    variables (``BROKER_CHECKPOINT_VERIFIER_KEYS``...).
    """
    env = subprocess_env(
        BROKER_DATABASE_URL=dsn,
        BROKER_CHECKPOINT_KEY=str(checkpoint_key or settings.checkpoint_key_path),
        BROKER_LEDGER_ORIGIN=settings.ledger_origin,
        **extra_env,
    )
    run = await run_broker("verify", *extra_args, env=env, timeout=timeout)
    try:
        report = json.loads(run.stdout)
    except ValueError:
        raise AssertionError(
            f"broker verify printed no JSON (exit {run.returncode}): {run.stdout!r} {run.stderr!r}"
        ) from None
    return VerifyRun(run.returncode, report, run.stderr)
