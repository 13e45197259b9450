"""HTTP handlers for step-up elevation: thin, all rules live in ElevationService."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from broker.auth import Principal
from broker.elevation import ElevationService
from broker.errors import BadRequest, NotFound

from .handlers import authenticated, page_size
from .inputs import optional_bool, optional_text, parse_ttl, read_object, require_secret, ticket
from .keys import ELEVATIONS, SETTINGS
from .middleware import REQUEST_ID

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

_REQUEST_FIELDS = frozenset({"secret", "reason", "ticket", "duration", "break_glass"})
_COMMENT_FIELDS = frozenset({"comment"})


def _elevation_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["elevation_id"])
    except ValueError:
        raise NotFound("no such elevation", code="elevation_not_found") from None


async def post_elevation(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    settings = request.app[SETTINGS]
    body = await read_object(request, _REQUEST_FIELDS)
    result = await request.app[ELEVATIONS].request(
        principal,
        secret=require_secret(body),
        reason=optional_text(body, "reason", settings.max_reason_chars),
        ticket=ticket(body),
        duration=parse_ttl(body, "duration"),
        break_glass=optional_bool(body, "break_glass"),
        request_id=request[REQUEST_ID],
    )
    return web.json_response(result, status=201)


async def list_elevations(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    bg = request.query.get("break_glass")
    if bg not in (None, "unreviewed"):
        raise BadRequest("'break_glass' may only be 'unreviewed'", code="invalid_break_glass")
    items = await request.app[ELEVATIONS].list_elevations(
        principal,
        status=request.query.get("status"),
        break_glass_unreviewed=bg == "unreviewed",
        limit=page_size(request),
    )
    return web.json_response({"elevations": items})


async def get_elevation(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    return web.json_response(await request.app[ELEVATIONS].get(principal, _elevation_id(request)))


async def _comment(request: web.Request) -> str | None:
    body = await read_object(request, _COMMENT_FIELDS, optional=True)
    return optional_text(body, "comment", request.app[SETTINGS].max_reason_chars)


_Decide = Callable[
    [ElevationService, Principal, uuid.UUID, str | None, str], Awaitable[dict[str, Any]]
]


def _decision(decide: _Decide) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler for one comment-carrying decision (approve, deny, cancel, review)."""

    async def handler(request: web.Request) -> web.Response:
        principal = await authenticated(request)
        comment = await _comment(request)
        return web.json_response(
            await decide(
                request.app[ELEVATIONS],
                principal,
                _elevation_id(request),
                comment,
                request[REQUEST_ID],
            )
        )

    return handler


approve_elevation = _decision(ElevationService.approve)
deny_elevation = _decision(ElevationService.deny)
cancel_elevation = _decision(ElevationService.cancel)
review_elevation = _decision(ElevationService.review)


async def redeem_elevation(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    body = await read_object(request, frozenset({"ttl"}), optional=True)
    ttl = parse_ttl(body)
    grant = await request.app[ELEVATIONS].redeem(
        principal, _elevation_id(request), ttl, request[REQUEST_ID]
    )
    return web.json_response(grant, status=201, headers={"Cache-Control": "no-store"})
