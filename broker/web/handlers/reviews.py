"""Quarterly access reviews: thin, all rules live in ReviewService."""

from __future__ import annotations

import uuid

from aiohttp import web

from ..authn import principal_of
from ..keys import REVIEWS
from ..middleware import REQUEST_ID
from ..models import ReviewDecision, ReviewListQuery, ReviewOpen
from ..route import body_of, query_of
from . import json_reply, path_uuid

__all__ = ["complete_review", "decide_review", "get_review", "list_reviews", "post_review"]


def _review_id(request: web.Request) -> uuid.UUID:
    return path_uuid(request, "review_id", code="review_not_found", thing="review")


async def post_review(request: web.Request) -> web.Response:
    body = body_of(request, ReviewOpen)
    result = await request.app[REVIEWS].open(
        principal_of(request),
        period=body.period,
        reviewer_group=body.reviewer_group,
        request_id=request[REQUEST_ID],
    )
    return json_reply(result, status=201)


async def list_reviews(request: web.Request) -> web.Response:
    query = query_of(request, ReviewListQuery)
    items = await request.app[REVIEWS].list_reviews(
        principal_of(request), period=query.period, limit=query.limit
    )
    return json_reply({"reviews": items})


async def get_review(request: web.Request) -> web.Response:
    return json_reply(await request.app[REVIEWS].get(principal_of(request), _review_id(request)))


async def decide_review(request: web.Request) -> web.Response:
    review_id = _review_id(request)
    body = body_of(request, ReviewDecision)
    return json_reply(
        await request.app[REVIEWS].decide(
            principal_of(request),
            review_id,
            entitlement_id=body.entitlement_id,
            decision=body.decision,
            comment=body.comment,
            request_id=request[REQUEST_ID],
        )
    )


async def complete_review(request: web.Request) -> web.Response:
    review_id = _review_id(request)
    return json_reply(
        await request.app[REVIEWS].complete(principal_of(request), review_id, request[REQUEST_ID])
    )
