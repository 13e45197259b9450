"""`broker dev` as users run it: a real subprocess, read dev.json, issue, Ctrl-C, nothing left.

The embedded run is what `make dev` does; the external run points it at an existing
PostgreSQL and OpenBao (here: the session stack's) via BROKER_DATABASE_URL / VAULT_ADDR.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import asyncpg
import psutil

from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.conftest import REPO

BROKER = Path(sys.executable).parent / "broker"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "VAULT_"))}
    env.update(extra)
    return env


async def _run_dev(state: Path, env: dict[str, str]) -> tuple[dict[str, object], int]:
    """Start `broker dev`, use it, stop it with SIGINT; return (dev.json, exit code)."""
    proc = await asyncio.create_subprocess_exec(
        str(BROKER), "dev", "--state-dir", str(state), "--port", "0",
        cwd=REPO, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    children: set[int] = set()
    try:
        dev_json = state / "dev.json"
        for _ in range(600):
            if dev_json.exists() or proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert dev_json.exists(), f"broker dev did not come up (exit {proc.returncode})"
        info = json.loads(dev_json.read_text())
        children = {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        tokens = info["tokens"]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{info['url']}/v1/health") as r:
                assert r.status == 200, await r.text()
            async with http.post(
                f"{info['url']}/v1/credentials",
                json={"secret": "stripe/test", "reason": "dev command test"},
                headers={"Authorization": f"Bearer {tokens['alice']}"},
            ) as r:
                assert r.status == 201, await r.text()
            # The Vault-compatible front door serves too (dev.json's vault_api_url).
            vault_api = info["vault_api_url"]
            async with http.post(
                f"{vault_api}/v1/auth/jwt/login", json={"jwt": tokens["alice"]}
            ) as r:
                assert r.status == 200, await r.text()
                session = (await r.json())["auth"]["client_token"]
            async with http.get(
                f"{vault_api}/v1/secret/data/stripe/test", headers={"X-Vault-Token": session}
            ) as r:
                assert r.status == 200, await r.text()
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    await asyncio.sleep(0.5)
    leftovers = [pid for pid in children if psutil.pid_exists(pid)]
    assert not leftovers, f"broker dev left processes behind: {leftovers}"
    return info, code


async def test_broker_dev_embedded(tmp_path: Path) -> None:
    info, code = await _run_dev(tmp_path / "state", _env())
    assert code == 0
    assert set(info) >= {"url", "tokens", "database_url", "vault_addr", "vault_token"}
    assert set(info["tokens"]) == {"alice", "bob", "dana", "carol", "erin", "svc-orders"}  # type: ignore[arg-type]


async def test_broker_dev_against_external_services(
    stack: DevStack, broker_settings: Settings, tmp_path: Path
) -> None:
    admin = await asyncpg.connect(stack.superuser_dsn("postgres"))
    try:
        await admin.execute("DROP DATABASE IF EXISTS devext")
        await admin.execute("CREATE DATABASE devext")
    finally:
        await admin.close()
    writer_dsn = broker_settings.database_url.rsplit("/", 1)[0] + "/devext"
    env = _env(
        BROKER_DATABASE_URL=writer_dsn,
        BROKER_ADMIN_DATABASE_URL=stack.superuser_dsn("devext"),
        VAULT_ADDR=stack.bao.addr,
        VAULT_TOKEN=stack.bao.root_token,
    )
    info, code = await _run_dev(tmp_path / "state", env)
    assert code == 0
    assert info["vault_addr"] == stack.bao.addr
    conn = await asyncpg.connect(stack.superuser_dsn("devext"))
    try:
        issued = await conn.fetchval(
            "SELECT count(*) FROM ledger.events WHERE event = 'grant.issued'"
        )
    finally:
        await conn.close()
    assert issued == 2  # one through the broker API, one through the Vault API
