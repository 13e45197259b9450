"""One declaration per route: path, handler, who may call it, its models and answers.

``install`` registers a table of ``Route`` on an app and adds a start-up check that every
route the app's router holds was declared: a route added any other way (forgetting its
access rule) makes the app refuse to start, before any I/O. ``_declared`` in
``web.middleware`` enforces the declaration of the matched route before the handler runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import msgspec
from aiohttp import web

from .access import Access

__all__ = [
    "DECLARATIONS",
    "Route",
    "UndeclaredRoute",
    "body_of",
    "declaration_of",
    "install",
    "query_of",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=msgspec.Struct)


@dataclass(frozen=True)
class Route:
    """A route's whole contract.

    ``body``/``query`` are decoded before the handler runs (``body_required=False``: an
    empty body is an empty object). ``responses`` maps a success status to its model (or
    None for a non-JSON answer described by ``media``); ``errors`` documents the refusals
    the handler's services can give, by status, beyond those the declaration implies
    (401/403/503 for authenticated routes, 400/413 for bodies).
    """

    method: str
    path: str
    handler: Handler
    access: Access
    operation_id: str
    summary: str
    description: str = ""
    body: type[msgspec.Struct] | None = None
    body_required: bool = True
    query: type[msgspec.Struct] | None = None
    responses: Mapping[int, type[msgspec.Struct] | None] = field(default_factory=dict)
    response_descriptions: Mapping[int, str] = field(default_factory=dict)
    media: str = "application/json"
    errors: Mapping[int, str] = field(default_factory=dict)
    # "console": a page of the web console (cookie session, CSRF-checked forms, HTML
    # answers; not in the OpenAPI document). Same access rules, same enforcement.
    front: Literal["api", "console"] = "api"


class UndeclaredRoute(RuntimeError):
    """The router holds a route without a declaration (who may call it is unknown)."""


# aiohttp route object -> its declaration, filled by ``install``.
DECLARATIONS = web.AppKey("route_declarations", dict[web.AbstractRoute, Route])
_BODY = web.RequestKey("body", msgspec.Struct)
_QUERY = web.RequestKey("query", msgspec.Struct)


def install(app: web.Application, routes: list[Route]) -> None:
    """Register ``routes`` and refuse to start while any registered route is undeclared."""
    declared: dict[web.AbstractRoute, Route] = {}
    for route in routes:
        registered = app.router.add_route(route.method, route.path, route.handler)
        declared[registered] = route
        if route.method == "GET":  # HEAD answers as GET does, under the same declaration
            declared[app.router.add_route("HEAD", route.path, route.handler)] = route
    app[DECLARATIONS] = declared

    async def every_route_declared(app: web.Application) -> None:
        missing = [
            f"{r.method} {r.resource.canonical if r.resource else '?'}"
            for r in app.router.routes()
            if r not in declared
        ]
        if missing:
            raise UndeclaredRoute(
                "routes without an access declaration (add them to the route table): "
                + ", ".join(missing)
            )

    # First of all start-up steps, so nothing is opened for an app that must not run.
    app.on_startup.insert(0, every_route_declared)


def declaration_of(request: web.Request) -> Route | None:
    """The matched route's declaration, or None (no route matched, or undeclared)."""
    table = request.app.get(DECLARATIONS)
    if table is None:
        return None
    return table.get(request.match_info.route)


def set_decoded(request: web.Request, body: msgspec.Struct | None, query: Any) -> None:
    if body is not None:
        request[_BODY] = body
    if query is not None:
        request[_QUERY] = query


def body_of(request: web.Request, model: type[M]) -> M:
    """The decoded body; ``model`` must be the route's declared body model."""
    body = request[_BODY]
    if not isinstance(body, model):
        raise TypeError(f"route declares {type(body).__name__}, handler asked for {model}")
    return body


def query_of(request: web.Request, model: type[M]) -> M:
    """The decoded query string; ``model`` must be the route's declared query model."""
    query = request[_QUERY]
    if not isinstance(query, model):
        raise TypeError(f"route declares {type(query).__name__}, handler asked for {model}")
    return query
