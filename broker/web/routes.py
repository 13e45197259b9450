"""The route table: the whole HTTP surface in one place (kept true by tests/test_openapi.py)."""

from __future__ import annotations

from aiohttp import web

from . import audit_handlers as au
from . import continuity_handlers
from . import elevation_handlers as e
from . import evidence_handlers as ev
from . import handlers as h
from . import offboarding_handlers as o
from . import review_handlers as rv

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
    web.post("/v1/offboarding", o.post_offboarding),
    web.get("/v1/offboarding", o.list_offboardings),
    web.post("/v1/offboarding/{subject}/reinstate", o.reinstate_subject),
    web.post("/v1/reviews", rv.post_review),
    web.get("/v1/reviews", rv.list_reviews),
    web.get("/v1/reviews/{review_id}", rv.get_review),
    web.post("/v1/reviews/{review_id}/decisions", rv.decide_review),
    web.post("/v1/reviews/{review_id}/complete", rv.complete_review),
    web.get("/v1/health", h.get_health),
    web.get("/v1/health/live", h.get_liveness),
    web.get("/v1/audit/verify", h.get_verify),
    web.get("/v1/audit/evidence", ev.get_evidence),
    web.get("/v1/audit/access", au.get_audit_access),
    web.get("/v1/audit/events", au.get_audit_events),
    web.get("/v1/audit/gaps", continuity_handlers.get_gaps),
    web.post("/v1/audit/gaps/annotate", continuity_handlers.annotate_gap),
    web.get("/v1/openapi.json", h.get_openapi),
    web.get("/metrics", h.get_metrics),
]
