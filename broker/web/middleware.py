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

from aiohttp import web

from broker.errors import BrokerError, Forbidden, PayloadTooLarge
from broker.ledger import Ledger, NewEvent
from broker.logs import REQUEST_ID_VAR, log_access
from broker.text import safe_text

from .access import authorize
from .authn import PRINCIPAL
from .fields import decode_body, decode_query
from .keys import AUTHN, LEDGER, METRICS, POLICY, SETTINGS
from .route import declaration_of, set_decoded

__all__ = ["REQUEST_ID", "error_response", "middlewares", "record_rejection"]

_log = logging.getLogger(__name__)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
REQUEST_ID = web.RequestKey("request_id", str)
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


@web.middleware
async def _request_context(request: web.Request, handler: _Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID_OK.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    # Every log line written while handling this request carries its id.
    request_id_context = REQUEST_ID_VAR.set(request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    except BrokerError as e:
        # A refused request from a known subject is evidence too (probing, broken clients,
        # self-approval attempts): recorded unless the service already did (a denial).
        # Recording is part of answering: if the ledger is down, say so.
        answer: BrokerError = e
        if 400 <= e.status < 500 and e.status != 401 and not e.recorded:
            try:
                await record_rejection(request.app[LEDGER], request, e)
            except BrokerError as ledger_error:
                answer = ledger_error
        status = answer.status
        return error_response(answer.status, answer.code, answer.message, request_id)
    except web.HTTPException as e:
        status = e.status
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, "http_error")
        return error_response(e.status, code, e.reason, request_id)
    except Exception:
        _log.exception("unhandled error (request %s)", request_id)
        return error_response(500, "internal", "internal error", request_id)
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        # Clients choose the method string: bound the label to the ones HTTP defines.
        method = request.method if request.method in _METHODS else "OTHER"
        elapsed = time.perf_counter() - started
        request.app[METRICS].observe_http(route, method, status, elapsed)
        principal = request.get(PRINCIPAL)
        log_access(method, route, status, elapsed, principal.subject if principal else None)
        REQUEST_ID_VAR.reset(request_id_context)


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
    if route.access.needs_token:
        principal = await request.app[AUTHN].authenticate(request)
    authorize(route.access, request.app[POLICY].current, principal)
    settings = request.app[SETTINGS]
    query = decode_query(route.query, request.query, settings) if route.query else None
    body = None
    if route.body is not None:
        try:
            raw = await request.read()  # bounded by the app's client_max_size
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(
                f"request body is larger than {settings.max_body_bytes} bytes"
            ) from None
        body = decode_body(route.body, raw, settings, optional=not route.body_required)
    set_decoded(request, body, query)
    return await handler(request)


def middlewares() -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    return [_request_context, _declared]
