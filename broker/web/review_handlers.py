"""HTTP handlers for quarterly access reviews: thin, all rules live in ReviewService."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from broker.errors import BadRequest, NotFound

from .handlers import authenticated, page_size
from .inputs import optional_text, read_object
from .keys import REVIEWS, SETTINGS
from .middleware import REQUEST_ID

__all__ = [
    "complete_review",
    "decide_review",
    "get_review",
    "list_reviews",
    "post_review",
]

_OPEN_FIELDS = frozenset({"period", "reviewer_group"})
_DECISION_FIELDS = frozenset({"entitlement_id", "decision", "comment"})
_MAX_FIELD_CHARS = 512


def _review_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["review_id"])
    except ValueError:
        raise NotFound("no such review", code="review_not_found") from None


def _required_text(body: dict[str, Any], name: str) -> str:
    value = optional_text(body, name, _MAX_FIELD_CHARS)
    if value is None:
        raise BadRequest(f"'{name}' is required", code="missing_field")
    return value


async def post_review(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    body = await read_object(request, _OPEN_FIELDS)
    result = await request.app[REVIEWS].open(
        principal,
        period=_required_text(body, "period"),
        reviewer_group=_required_text(body, "reviewer_group"),
        request_id=request[REQUEST_ID],
    )
    return web.json_response(result, status=201)


async def list_reviews(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    period = request.query.get("period")
    items = await request.app[REVIEWS].list_reviews(
        principal, period=period, limit=page_size(request)
    )
    return web.json_response({"reviews": items})


async def get_review(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    return web.json_response(await request.app[REVIEWS].get(principal, _review_id(request)))


async def decide_review(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    review_id = _review_id(request)
    body = await read_object(request, _DECISION_FIELDS)
    return web.json_response(
        await request.app[REVIEWS].decide(
            principal,
            review_id,
            entitlement_id=_required_text(body, "entitlement_id"),
            decision=_required_text(body, "decision"),
            comment=optional_text(body, "comment", request.app[SETTINGS].max_reason_chars),
            request_id=request[REQUEST_ID],
        )
    )


async def complete_review(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    review_id = _review_id(request)
    return web.json_response(
        await request.app[REVIEWS].complete(principal, review_id, request[REQUEST_ID])
    )
