"""Operations endpoints: readiness, liveness, ledger verification, metrics, the API document."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from broker.audit import Verification
from broker.background import probe_dependencies

from ..authn import principal_of
from ..keys import (
    CHECKPOINT_VERIFIER,
    EXPOSITION,
    LEDGER,
    METRICS,
    OPENAPI,
    POLICY,
    SETTINGS,
    VAULT,
    VERIFICATIONS,
)
from . import json_reply

__all__ = ["get_health", "get_liveness", "get_metrics", "get_openapi", "get_verify"]


async def get_liveness(request: web.Request) -> web.Response:
    """Alive: the process answers. No dependency is probed, so an outage of Vault or the
    ledger takes replicas out of rotation (readiness) without restarting them all."""
    return json_reply({"status": "alive", "replica": request.app[SETTINGS].replica_id})


async def get_health(request: web.Request) -> web.Response:
    up = await probe_dependencies(
        {"vault": request.app[VAULT].health, "ledger": request.app[LEDGER].ping},
        request.app[METRICS],
        timeout=2.0,
    )
    ok = all(up.values())
    return json_reply(
        {
            "status": "ok" if ok else "unavailable",
            "checks": {name: "ok" if v else "unavailable" for name, v in up.items()},
            "replica": request.app[SETTINGS].replica_id,
            "policy_version": request.app[POLICY].current.version,
        },
        status=200 if ok else 503,
    )


async def get_verify(request: web.Request) -> web.Response:
    verifications = request.app[VERIFICATIONS]
    return await _verification(request, verifications.run)


async def post_verify_full(request: web.Request) -> web.Response:
    verifications = request.app[VERIFICATIONS]
    return await _verification(request, verifications.run_full)


async def _verification(
    request: web.Request, run: Callable[..., Awaitable[Verification]]
) -> web.Response:
    done = await run(
        request.app[LEDGER],
        request.app[CHECKPOINT_VERIFIER],
        requested_by=principal_of(request).subject,
    )
    return json_reply(done.report.to_json())


async def get_metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[EXPOSITION](),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def get_openapi(request: web.Request) -> web.Response:
    # Generated once per app from the route table, the models and the settings.
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
