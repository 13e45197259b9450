"""The route table: the whole HTTP surface in one place (kept true by tests/test_openapi.py)."""

from __future__ import annotations

from aiohttp import web

from . import handlers as h

__all__ = ["ROUTES"]

ROUTES: list[web.RouteDef] = [
    web.post("/v1/credentials", h.post_credentials),
    web.get("/v1/me", h.get_me),
    web.get("/v1/grants", h.get_grants),
    web.delete("/v1/grants/{grant_id}", h.revoke_grant),
    web.get("/v1/health", h.get_health),
    web.get("/v1/audit/verify", h.get_verify),
    web.get("/v1/openapi.json", h.get_openapi),
    web.get("/metrics", h.get_metrics),
]
