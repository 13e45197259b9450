"""Middleware: request ids, error mapping, latency metrics, and the route declarations.

``_declared`` is the one place a route's declaration (``web.route.Route``) is enforced:
it authenticates unless the route is public, applies the access rule
(``web.access.authorize``), and decodes the declared query and body models, all before
the handler runs. A matched route without a declaration is refused (and the app refuses
to start with one, see ``web.route.install``).

The error contract: every error response is ``{"error": {"code", "message"}}``. A
``BrokerError`` maps to its status; aiohttp's own HTTP errors (404 route, 405, 413) keep
their status with a generic code; anything else is a bug, logged with its traceback
server-side and answered with a bare 500 that reveals nothing.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from broker.console import guard as console_guard
from broker.console.render import error_page
from broker.errors import BrokerError, Forbidden, PayloadTooLarge
from broker.ledger import Ledger, NewEvent
from broker.logs import REQUEST_ID_VAR, log_access
from broker.text import safe_text

from .access import authorize
from .authn import PRINCIPAL
from .fields import decode_body, decode_query
from .keys import AUTHN, LEDGER, METRICS, POLICY, REQUEST_ID, SETTINGS
from .route import declaration_of, set_decoded

__all__ = [
    "REQUEST_ID",
    "FrontEnd",
    "error_response",
    "middlewares",
    "record_rejection",
    "request_context",
]

_log = logging.getLogger(__name__)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str, request_id: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}},
        status=status,
        headers={"X-Request-Id": request_id},
    )


@dataclass(frozen=True)
class FrontEnd:
    """What differs between the listeners sharing ``request_context``: how they name a
    request, answer an error, label a route in metrics, and describe their client."""

    name: str
    request_id: Callable[[web.Request], str]
    answer: Callable[[int, str, str, str], web.Response]  # status, code, message, id
    status_of: Callable[[BrokerError], int]
    http_code: Callable[[int], str]
    route_label: Callable[[web.Request], str]
    broker_app: Callable[[web.Application], web.Application]  # where the ledger lives
    client: Callable[[web.Request], Mapping[str, str] | None] = lambda _: None
    # Errors of console routes as pages (the API's own listener only).
    page: Callable[[web.Request, int, str, str], Awaitable[web.StreamResponse]] | None = None

    async def reply(
        self, request: web.Request, status: int, code: str, message: str, request_id: str
    ) -> web.StreamResponse:
        route = declaration_of(request)
        console = route.front == "console" if route else request.path.startswith("/console/")
        if self.page is not None and console:
            return await self.page(request, status, code, message)
        return self.answer(status, code, message, request_id)


def request_context(front: FrontEnd) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The outermost middleware of a listener: request id, error mapping, metrics, log."""

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        request_id = front.request_id(request)
        request[REQUEST_ID] = request_id
        # Every log line written while handling this request carries its id.
        request_id_context = REQUEST_ID_VAR.set(request_id)
        started = time.perf_counter()
        status = 500
        broker = front.broker_app(request.app)
        try:
            response = await handler(request)
            status = response.status
            response.headers["X-Request-Id"] = request_id
            return response
        except BrokerError as e:
            # A refused request from a known subject is evidence too (probing, broken
            # clients, self-approval attempts): recorded unless the service already did
            # (a denial). Recording is part of answering: if the ledger is down, say so.
            answer: BrokerError = e
            if 400 <= e.status < 500 and e.status != 401 and not e.recorded:
                try:
                    await record_rejection(broker[LEDGER], request, e, client=front.client(request))
                except BrokerError as ledger_error:
                    answer = ledger_error
            status = front.status_of(answer)
            reply = await front.reply(request, status, answer.code, answer.message, request_id)
            if answer.retry_after is not None:  # quotas and bulkheads say when to come back
                reply.headers["Retry-After"] = str(answer.retry_after)
            return reply
        except web.HTTPException as e:
            status = e.status
            if e.status < 400:
                raise
            return await front.reply(
                request, e.status, front.http_code(e.status), e.reason, request_id
            )
        except Exception:
            _log.exception("unhandled error in the %s (request %s)", front.name, request_id)
            return await front.reply(request, 500, "internal", "internal error", request_id)
        finally:
            # Clients choose the method string: bound the label to the ones HTTP defines.
            method = request.method if request.method in _METHODS else "OTHER"
            route = front.route_label(request)
            elapsed = time.perf_counter() - started
            broker[METRICS].observe_http(route, method, status, elapsed)
            principal = request.get(PRINCIPAL)
            log_access(method, route, status, elapsed, principal.subject if principal else None)
            REQUEST_ID_VAR.reset(request_id_context)

    return middleware


def _incoming_request_id(request: web.Request) -> str:
    incoming = request.headers.get("X-Request-Id", "")
    return incoming if _REQUEST_ID_OK.match(incoming) else uuid.uuid4().hex


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _native_client(request: web.Request) -> Mapping[str, str] | None:
    """The console says so in its rows (``client: {"api": "console"}``); the API, nothing."""
    route = declaration_of(request)
    return {"api": "console"} if route is not None and route.front == "console" else None


_NATIVE = FrontEnd(
    name="API",
    request_id=_incoming_request_id,
    answer=error_response,
    status_of=lambda e: e.status,
    http_code=lambda status: _HTTP_CODES.get(status, "http_error"),
    route_label=_route_template,
    broker_app=lambda app: app,
    client=_native_client,
    page=error_page,
)


async def record_rejection(
    ledger: Ledger,
    request: web.Request,
    error: BrokerError,
    *,
    client: Mapping[str, str] | None = None,
) -> None:
    """Ledger ``error`` answered to an authenticated caller as ``request.rejected``.

    Shared by both APIs; ``client`` (the Vault API and its user-agent) goes in the body.
    """
    principal = request.get(PRINCIPAL)
    if principal is None:
        return
    await ledger.append(
        NewEvent(
            event="request.rejected",
            outcome=error.code,
            subject=principal.subject,
            subject_kind=principal.kind,
            request_id=request[REQUEST_ID],
            body={
                "route": safe_text(request.path),
                "method": safe_text(request.method, 16),
                "message": safe_text(error.message, 500),
                **({"client": dict(client)} if client else {}),
            },
        )
    )


@web.middleware
async def _declared(request: web.Request, handler: _Handler) -> web.StreamResponse:
    if request.match_info.http_exception is not None:  # no route: aiohttp's 404/405
        return await handler(request)
    route = declaration_of(request)
    if route is None:  # deny by default; install() makes this unreachable at run time
        _log.error("refused a request to an undeclared route %s", request.path[:200])
        raise Forbidden("this endpoint is not declared", code="forbidden")
    principal = None
    if route.front == "console":
        principal = await console_guard.authenticate(request, route)
    elif route.access.needs_token:
        principal = await request.app[AUTHN].authenticate(request)
    authorize(route.access, request.app[POLICY].current, principal)
    settings = request.app[SETTINGS]
    query = None
    if route.query is not None:
        raw_query = console_guard.form_query(request) if route.front == "console" else request.query
        query = decode_query(route.query, raw_query, settings)
    body = None
    if route.body is not None:
        try:
            # bounded by the app's client_max_size
            raw = await (
                console_guard.form_body(request, route.body)
                if route.front == "console"
                else request.read()
            )
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(
                f"request body is larger than {settings.max_body_bytes} bytes"
            ) from None
        body = decode_body(route.body, raw, settings, optional=not route.body_required)
    set_decoded(request, body, query)
    return await handler(request)


def middlewares() -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    return [request_context(_NATIVE), _declared]
