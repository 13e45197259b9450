"""Step-up elevation: thin, all rules live in ElevationService."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from broker.auth import Principal
from broker.elevation import ElevationService

from ..authn import principal_of
from ..keys import ELEVATIONS
from ..middleware import REQUEST_ID
from ..models import Comment, ElevationListQuery, ElevationRequest, TtlRequest
from ..route import body_of, query_of
from . import json_reply, path_uuid

__all__ = [
    "approve_elevation",
    "cancel_elevation",
    "deny_elevation",
    "get_elevation",
    "list_elevations",
    "post_elevation",
    "redeem_elevation",
    "review_elevation",
]


def _elevation_id(request: web.Request) -> uuid.UUID:
    return path_uuid(request, "elevation_id", code="elevation_not_found", thing="elevation")


async def post_elevation(request: web.Request) -> web.Response:
    body = body_of(request, ElevationRequest)
    result = await request.app[ELEVATIONS].request(
        principal_of(request),
        secret=body.secret,
        reason=body.reason,
        ticket=body.ticket,
        duration=body.duration,
        break_glass=body.break_glass,
        request_id=request[REQUEST_ID],
        principals=body.principals,
    )
    return json_reply(result, status=201)


async def list_elevations(request: web.Request) -> web.Response:
    query = query_of(request, ElevationListQuery)
    items = await request.app[ELEVATIONS].list_elevations(
        principal_of(request),
        status=query.status,
        break_glass_unreviewed=query.break_glass == "unreviewed",
        limit=query.limit,
    )
    return json_reply({"elevations": items})


async def get_elevation(request: web.Request) -> web.Response:
    elevation = await request.app[ELEVATIONS].get(principal_of(request), _elevation_id(request))
    return json_reply(elevation)


_Decide = Callable[
    [ElevationService, Principal, uuid.UUID, str | None, str], Awaitable[dict[str, Any]]
]


def _decision(decide: _Decide) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler for one comment-carrying decision (approve, deny, cancel, review)."""

    async def handler(request: web.Request) -> web.Response:
        return json_reply(
            await decide(
                request.app[ELEVATIONS],
                principal_of(request),
                _elevation_id(request),
                body_of(request, Comment).comment,
                request[REQUEST_ID],
            )
        )

    return handler


approve_elevation = _decision(ElevationService.approve)
deny_elevation = _decision(ElevationService.deny)
cancel_elevation = _decision(ElevationService.cancel)
review_elevation = _decision(ElevationService.review)


async def redeem_elevation(request: web.Request) -> web.Response:
    body = body_of(request, TtlRequest)
    grant = await request.app[ELEVATIONS].redeem(
        principal_of(request),
        _elevation_id(request),
        body.ttl,
        request[REQUEST_ID],
        public_key=body.public_key,
        principals=body.principals,
    )
    return json_reply(grant, status=201, headers={"Cache-Control": "no-store"})
