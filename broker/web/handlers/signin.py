"""Signing in through an identity provider: thin, the flows live in ``broker.oidc.signin``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from broker.errors import BadRequest
from broker.sessions import Session
from broker.text import safe_text

from ..authn import session_of
from ..keys import SIGNIN
from ..middleware import REQUEST_ID
from ..models import CallbackRequest, DeviceRequest, DeviceTokenRequest, LoginRequest
from ..route import body_of
from . import json_reply

__all__ = [
    "get_providers",
    "post_callback",
    "post_device",
    "post_device_token",
    "post_login",
    "post_logout",
    "post_renew",
    "session_info",
]

_MAX_USER_AGENT = 200


def _client(request: web.Request) -> dict[str, str]:
    return {"user_agent": safe_text(request.headers.get("User-Agent", ""), _MAX_USER_AGENT)}


def session_info(session: Session) -> dict[str, Any]:
    return {
        "subject": session.principal.subject,
        "groups": sorted(session.principal.groups),
        "provider": session.provider,
        "expires_at": session.expires_at.isoformat(),
        "max_expires_at": session.max_expires_at.isoformat(),
    }


async def get_providers(request: web.Request) -> web.Response:
    return json_reply({"providers": await request.app[SIGNIN].describe()})


async def post_login(request: web.Request) -> web.Response:
    body = body_of(request, LoginRequest)
    started = await request.app[SIGNIN].start(
        body.provider, redirect_uri=body.redirect_uri, client_nonce=body.client_nonce, api="cli"
    )
    return json_reply(
        {"auth_url": started.auth_url, "state": started.state, "expires_in": started.expires_in}
    )


async def post_callback(request: web.Request) -> web.Response:
    body = body_of(request, CallbackRequest)
    signed_in = await request.app[SIGNIN].finish(
        state=body.state,
        code=body.code,
        client_nonce=body.client_nonce,
        request_id=request[REQUEST_ID],
        client=_client(request),
    )
    return json_reply({"token": signed_in.token, **session_info(signed_in.session)})


async def post_device(request: web.Request) -> web.Response:
    body = body_of(request, DeviceRequest)
    started = await request.app[SIGNIN].start_device(body.provider, api="cli")
    return json_reply(
        {
            "handle": started.handle,
            "user_code": started.user_code,
            "verification_uri": started.verification_uri,
            "verification_uri_complete": started.verification_uri_complete,
            "interval": started.interval,
            "expires_in": started.expires_in,
        }
    )


async def post_device_token(request: web.Request) -> web.Response:
    body = body_of(request, DeviceTokenRequest)
    signed_in = await request.app[SIGNIN].poll_device(
        body.handle, request_id=request[REQUEST_ID], client=_client(request)
    )
    return json_reply({"token": signed_in.token, **session_info(signed_in.session)})


def _signed_in_session(request: web.Request) -> tuple[Session, str]:
    session = session_of(request)
    if session is None:
        raise BadRequest(
            "this call needs a session token from `broker login`, not a JWT",
            code="not_a_session",
        )
    token = request.headers.get("Authorization", "").partition(" ")[2].strip()
    return session, token


async def post_renew(request: web.Request) -> web.Response:
    session, token = _signed_in_session(request)
    renewed = await request.app[SIGNIN].renew(session, token, request_id=request[REQUEST_ID])
    return json_reply(session_info(renewed))


async def post_logout(request: web.Request) -> web.Response:
    session, token = _signed_in_session(request)
    url = await request.app[SIGNIN].logout(session, token, request_id=request[REQUEST_ID])
    return json_reply({"revoked": True, "end_session_url": url})
