"""What SSH hosts fetch: the CA they trust and the list of certificates they refuse."""

from __future__ import annotations

from aiohttp import web

from ..keys import KRL
from ..models import SSHMountQuery
from ..route import query_of

__all__ = ["get_ssh_ca", "get_ssh_krl"]


async def get_ssh_krl(request: web.Request) -> web.Response:
    krl = await request.app[KRL].krl(query_of(request, SSHMountQuery).mount)
    return web.Response(
        body=krl,
        content_type="application/octet-stream",
        headers={"Cache-Control": "no-store"},  # a revocation must show at the next fetch
    )


async def get_ssh_ca(request: web.Request) -> web.Response:
    key = await request.app[KRL].ca_public_key(query_of(request, SSHMountQuery).mount)
    return web.Response(text=key + "\n", content_type="text/plain")
