"""A pass-through HTTP proxy in front of the stack's OpenBao, and a broker behind it.

Tests use it to see exactly what reaches Vault (``seen``) and to make Vault refuse lease
revocations on demand (``refuse_revoke``) — the real OpenBao answers everything else.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.brokers import RunningBroker, running_broker

__all__ = ["VaultProxy", "broker_behind_proxy"]

_FORWARDED = ("x-vault-token", "x-vault-request", "content-type")


@dataclass
class VaultProxy:
    upstream: str
    seen: list[tuple[str, str]] = field(default_factory=list)
    refuse_revoke: bool = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path))
        if self.refuse_revoke and request.path.startswith("/v1/sys/leases/revoke"):
            return web.json_response({"errors": ["sealed (test)"]}, status=503)
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.upstream + request.path_qs,
                data=await request.read(),
                headers=headers,
            ) as resp,
        ):
            body = await resp.read()
            return web.Response(
                status=resp.status,
                body=body or None,
                content_type=resp.content_type if body else None,
            )


@asynccontextmanager
async def broker_behind_proxy(
    stack: DevStack, settings: Settings, replica_prefix: str
) -> AsyncIterator[tuple[RunningBroker, VaultProxy]]:
    """A broker whose Vault address is a ``VaultProxy`` on a free loopback port."""
    proxy = VaultProxy(stack.bao.addr)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with running_broker(
            settings,
            vault_addr=f"http://127.0.0.1:{port}",
            replica_id=f"{replica_prefix}-{uuid.uuid4().hex[:8]}",
        ) as running:
            yield running, proxy
    finally:
        await runner.cleanup()
