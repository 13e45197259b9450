"""`broker dev` as users run it: a real subprocess, read dev.json, issue, Ctrl-C, nothing left.

The embedded run is what `make dev` does; the external run points it at an existing
PostgreSQL and OpenBao (here: the session stack's) via BROKER_DATABASE_URL / VAULT_ADDR.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import pytest

from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.commands import run_broker
from tests.support.paths import REPO
from tests.support.processes import interrupt

BROKER = Path(sys.executable).parent / "broker"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "VAULT_"))}
    env.update(extra)
    return env


async def _stop(proc: asyncio.subprocess.Process, seen: list[psutil.Process]) -> list[int]:
    """Stop `broker dev` as Ctrl-C does (SIGKILL after 30 s); kill whatever of its children
    (``seen`` earlier, or still attached) outlived it, and return their pids: a clean stop
    leaves none."""
    children = list(seen)
    if proc.returncode is None:
        with contextlib.suppress(psutil.NoSuchProcess):
            children += psutil.Process(proc.pid).children(recursive=True)
        await interrupt(proc, timeout=30)
    await asyncio.sleep(0.5)
    # is_running() also checks the start time: a recycled pid is not one of ours.
    leftovers = [c for c in children if c.is_running()]
    for child in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    return [c.pid for c in leftovers]


@asynccontextmanager
async def _dev_running(
    state: Path, env: dict[str, str], *args: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, Any]]]:
    """A `broker dev` up (dev.json written); on exit, stop it and check nothing is left.

    The exit code is the process's ``returncode`` once the block is left.
    """
    dev_json = state / "dev.json"
    dev_json.unlink(missing_ok=True)  # an earlier run's: wait for this run's
    log = state.with_name(state.name + ".log")  # its output, for the failure message
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            str(BROKER), "dev", "--state-dir", str(state), "--port", "0", *args,
            cwd=REPO, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    children: list[psutil.Process] = []
    try:
        for _ in range(600):
            if dev_json.exists() or proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert dev_json.exists(), (
            f"broker dev did not come up (exit {proc.returncode}):\n{log.read_text()[-3000:]}"
        )
        info = json.loads(dev_json.read_text())
        children = psutil.Process(proc.pid).children(recursive=True)
        yield proc, info
    finally:
        leftovers = await _stop(proc, children)
    assert not leftovers, f"broker dev left processes behind: {leftovers}"


async def _run_dev(state: Path, env: dict[str, str]) -> tuple[dict[str, Any], int]:
    """Start `broker dev`, use it, stop it with SIGINT; return (dev.json, exit code)."""
    async with _dev_running(state, env) as (proc, info):
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
    assert proc.returncode is not None
    return info, proc.returncode


async def test_broker_dev_embedded(tmp_path: Path) -> None:
    info, code = await _run_dev(tmp_path / "state", _env())
    assert code == 0
    assert set(info) >= {"url", "tokens", "database_url", "vault_addr", "vault_token"}
    assert set(info["tokens"]) == {"alice", "bob", "dana", "carol", "erin", "svc-orders"}


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


async def test_second_broker_dev_on_the_same_state_dir_refuses(tmp_path: Path) -> None:
    """A second `broker dev` (a second `make dev`) on the same state directory refuses at
    once and touches nothing; the first keeps serving, and once it stops the directory is
    free again."""
    state = tmp_path / "state"
    async with _dev_running(state, _env()) as (first, info):
        # What a second instance would rewrite first (the servers' logs and data change).
        kept = [
            state / name
            for name in (
                "dev.lock", "dev.json", "checkpoint.key", "dev-issuer.key",
                "ledger-writer.password", "postgres.superuser-password",
            )
        ]  # fmt: skip
        before = {p: p.stat().st_mtime_ns for p in kept}
        second = await asyncio.create_subprocess_exec(
            str(BROKER), "dev", "--state-dir", str(state), "--port", "0",
            cwd=REPO, env=_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(second.communicate(), 30)
        finally:
            await _stop(second, [])  # it refused, or did not: either way, gone
        assert second.returncode == 2, (out, err)
        assert err.decode().splitlines() == [
            f"another broker dev is running with state dir {state.resolve()}"
            f" (pid {first.pid}); stop it first"
        ]
        assert out == b""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{info['url']}/v1/health") as r,
        ):
            assert r.status == 200, await r.text()  # its PostgreSQL is still up
        assert {p: p.stat().st_mtime_ns for p in kept} == before
    assert first.returncode == 0

    _, code = await _run_dev(state, _env())  # the lock went with the first process
    assert code == 0


async def test_broker_dev_tls_serves_the_demo_over_https_with_its_ca(
    stack: DevStack, broker_settings: Settings, tmp_path: Path
) -> None:
    admin = await asyncpg.connect(stack.superuser_dsn("postgres"))
    try:
        await admin.execute("DROP DATABASE IF EXISTS devtls")
        await admin.execute("CREATE DATABASE devtls")
    finally:
        await admin.close()
    env = _env(
        BROKER_DATABASE_URL=broker_settings.database_url.rsplit("/", 1)[0] + "/devtls",
        BROKER_ADMIN_DATABASE_URL=stack.superuser_dsn("devtls"),
        VAULT_ADDR=stack.bao.addr,
        VAULT_TOKEN=stack.bao.root_token,
    )
    state = tmp_path / "state"
    async with _dev_running(state, env, "--tls") as (_, info):
        assert info["url"].startswith("https://127.0.0.1:")
        assert info["vault_api_url"].startswith("https://127.0.0.1:")
        ca = Path(info["ca_cert"])
        assert ca == (state / "tls" / "ca.pem").resolve()
        client = ssl.create_default_context(cafile=str(ca))
        async with aiohttp.ClientSession() as http:
            for url in (f"{info['url']}/v1/health", f"{info['vault_api_url']}/v1/sys/health"):
                async with http.get(url, ssl=client) as r:
                    assert r.status == 200, await r.text()
            async with http.post(
                f"{info['url']}/v1/credentials",
                json={"secret": "stripe/test", "reason": "dev --tls test"},
                headers={"Authorization": f"Bearer {info['tokens']['alice']}"},
                ssl=client,
            ) as r:
                assert r.status == 201, await r.text()
            # The CLI trusts the dev CA that dev.json names, with no flag.
            cli = await run_broker(
                "credentials",
                "get",
                "stripe/test",
                "--as",
                "alice",
                "--dev-json",
                str(state / "dev.json"),
                env=_env(),
            )
            assert cli.returncode == 0, cli.stderr
            # Plain http to the same port is not served.
            plain = info["url"].replace("https://", "http://")
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"{plain}/v1/health") as r:
                    await r.read()
    log = state.with_name(state.name + ".log").read_text()
    assert f"curl --cacert {ca}" in log and f"VAULT_CACERT={ca}" in log
