"""Thin HTTP handlers, one module per domain: read the decoded request, call a service,
shape the answer. Who may call each one, and what it accepts, is declared in
``web.routes``; the middleware has enforced both before a handler runs."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from aiohttp import web

from broker.errors import NotFound

__all__ = ["json_reply", "path_uuid"]

_encode = msgspec.json.Encoder().encode


def json_reply(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """``data`` as a JSON response (msgspec's encoder: the hot path's cheapest)."""
    return web.Response(
        body=_encode(data), status=status, headers=headers, content_type="application/json"
    )


def path_uuid(request: web.Request, name: str, *, code: str, thing: str) -> uuid.UUID:
    """The path parameter ``name`` as a UUID; anything else names no such ``thing`` (404)."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise NotFound(f"no such {thing}", code=code) from None
