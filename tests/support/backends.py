"""OpenBao and the demo database seen directly, not through the broker.

What the broker claims (a lease revoked, a login dead) is checked where it takes effect:
OpenBao's lease table and a real login to the ``orders`` database.
"""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
import hvac

from broker.stack.devstack import DevStack

__all__ = [
    "ADMIN_LEASE_PREFIX",
    "LOGIN_REFUSED",
    "admin_leases",
    "db_login",
    "lease_ttl",
    "login_refused",
    "vault_leases",
    "vault_root",
]

# asyncpg errors when a login is refused or a session is terminated under us.
LOGIN_REFUSED = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)

# Where OpenBao keeps the privileged orders logins' leases.
ADMIN_LEASE_PREFIX = "database/creds/orders-admin"


def vault_root(stack: DevStack, timeout: int = 10) -> hvac.Client:
    """An hvac client with the stack's root token."""
    return hvac.Client(url=stack.bao.addr, token=stack.bao.root_token, timeout=timeout)


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


async def admin_leases(stack: DevStack) -> set[str]:
    """Full ids of the leases OpenBao holds for privileged orders logins."""
    return set(await vault_leases(stack.bao.addr, stack.bao.root_token, ADMIN_LEASE_PREFIX))


async def lease_ttl(stack: DevStack, lease_id: str) -> int:
    """The seconds OpenBao says ``lease_id`` has left."""
    lease = await asyncio.to_thread(vault_root(stack).sys.read_lease, lease_id)
    return int(lease["data"]["ttl"])


async def db_login(stack: DevStack, username: str, password: str) -> asyncpg.Connection:
    """Log into the demo ``orders`` database as a dynamic user (raises if refused)."""
    return await asyncpg.connect(
        host="127.0.0.1",
        port=stack.pg.port,
        database=stack.demo.orders_database,
        user=username,
        password=password,
        timeout=5,
        ssl=False,
    )


async def login_refused(stack: DevStack, username: str, password: str) -> bool:
    """Whether the orders database refuses this login now (a working one is closed again)."""
    try:
        conn = await db_login(stack, username, password)
    except LOGIN_REFUSED:
        return True
    await conn.close()
    return False
