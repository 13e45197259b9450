"""The route table: the whole HTTP surface in one place (kept true by tests/test_openapi.py)."""

from __future__ import annotations

from aiohttp import web

from . import elevation_handlers as e
from . import handlers as h

__all__ = ["ROUTES"]

ROUTES: list[web.RouteDef] = [
    web.post("/v1/credentials", h.post_credentials),
    web.get("/v1/me", h.get_me),
    web.get("/v1/grants", h.get_grants),
    web.delete("/v1/grants/{grant_id}", h.revoke_grant),
    web.post("/v1/elevations", e.post_elevation),
    web.get("/v1/elevations", e.list_elevations),
    web.get("/v1/elevations/{elevation_id}", e.get_elevation),
    web.post("/v1/elevations/{elevation_id}/approve", e.approve_elevation),
    web.post("/v1/elevations/{elevation_id}/deny", e.deny_elevation),
    web.post("/v1/elevations/{elevation_id}/cancel", e.cancel_elevation),
    web.post("/v1/elevations/{elevation_id}/review", e.review_elevation),
    web.post("/v1/elevations/{elevation_id}/credentials", e.redeem_elevation),
    web.get("/v1/health", h.get_health),
    web.get("/v1/audit/verify", h.get_verify),
    web.get("/v1/openapi.json", h.get_openapi),
    web.get("/metrics", h.get_metrics),
]
