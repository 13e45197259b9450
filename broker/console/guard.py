"""The console half of ``_declared``: who is signed in (the session cookie, checked by
the same ``Authenticator`` as a bearer token), that a form comes from the console, and
the form decoded into the route's declared model by the same rules as a JSON body."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

import msgspec
from aiohttp import web

from broker.auth import Principal
from broker.errors import AuthError, ProviderUnavailable
from broker.web.authn import session_of
from broker.web.keys import AUTHN, REQUEST_ID, SESSIONS, SIGNIN
from broker.web.route import Route

from .keys import CONSOLE
from .security import CSRF_FIELD, check_csrf, check_same_origin, own_origin

__all__ = ["authenticate", "form_body", "form_query"]

_SAFE = ("GET", "HEAD")
_CHECKED = ("on", "true", "1")


async def authenticate(request: web.Request, route: Route) -> Principal | None:
    """The signed-in principal (None on a public route); the caller first, so a forged
    form from a known person is ledgered under them."""
    console = request.app[CONSOLE]
    unsafe = request.method not in _SAFE
    principal = None
    cookie = console.cookies.session(request)
    if route.access.needs_token:
        if cookie is None:
            raise AuthError("sign in to use the console", code="sign_in_required")
        principal = await request.app[AUTHN].authenticate_token(request, cookie.token)
        await _keep_alive(request, cookie.token)
    if unsafe:
        check_same_origin(request, own_origin(request, console.public_url))
    if unsafe and cookie is not None and principal is not None:
        form = await request.post()
        sent = form.get(CSRF_FIELD)
        check_csrf(sent if isinstance(sent, str) else None, cookie.csrf)
    return principal


async def _keep_alive(request: web.Request, token: str) -> None:
    """The idle timeout is the session's TTL, the absolute one its max: a person at work
    has the session renewed (at the provider, groups re-read) once a third of the TTL is
    left. A provider that is down does not sign anyone out; one that refuses does."""
    session = session_of(request)
    if session is None:
        return
    left = (session.expires_at - datetime.now(UTC)).total_seconds()
    if left > session.ttl_seconds / 3 or session.expires_at >= session.max_expires_at:
        return
    if session.provider is None:
        await request.app[SESSIONS].renew(session, None, request_id=request[REQUEST_ID])
        return
    try:
        await request.app[SIGNIN].renew(session, token, request_id=request[REQUEST_ID])
    except ProviderUnavailable:
        pass  # still signed in until the session expires; the next page tries again
    except AuthError as e:
        if e.code != "reauthentication_required":
            raise  # the provider refused: signed out now


async def form_body(request: web.Request, model: type[msgspec.Struct]) -> bytes:
    """The form's fields (but the CSRF token) as the JSON object a body would be; empty
    fields are absent, as a blank text field means "not given"; a checkbox (a ``bool``
    field of ``model``) is true when sent ("on", "true", "1")."""
    form = await request.post()
    fields: dict[str, object] = {
        k: v for k, v in form.items() if k != CSRF_FIELD and isinstance(v, str) and v.strip() != ""
    }
    for field in msgspec.structs.fields(model):
        if field.type is bool and field.encode_name in fields:
            fields[field.encode_name] = str(fields[field.encode_name]).lower() in _CHECKED
    return json.dumps(fields).encode()


def form_query(request: web.Request) -> Mapping[str, str]:
    """A GET form's fields as the query string the route's model decodes; empty fields
    are absent, as in ``form_body`` (a search form sends every field it has)."""
    return {k: v for k, v in request.query.items() if v.strip() != ""}
