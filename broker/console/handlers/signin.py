"""Signing in to the console: through the identity provider (the broker's relying party,
``broker.oidc``), or in development as a demo identity; and signing out."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from aiohttp import web

from broker.devenv import DEMO_IDENTITIES
from broker.errors import BadRequest, NotFound, SignInRefused
from broker.text import safe_text
from broker.web.authn import session_of
from broker.web.keys import SESSIONS, SIGNIN, VERIFIER
from broker.web.middleware import REQUEST_ID
from broker.web.route import body_of, query_of

from ..cookies import SignInCookie
from ..forms import CallbackQuery, DevSignIn, NextQuery
from ..keys import CONSOLE
from ..render import page, redirect

__all__ = ["callback", "dev_sign_in", "login_page", "sign_out", "start_sign_in"]

_HOME = "/console/"


def _client(request: web.Request) -> dict[str, str]:
    return {"api": "console", "user_agent": safe_text(request.headers.get("User-Agent", ""), 200)}


def _signed_in(request: web.Request, token: str, max_expires_at: datetime, to: str) -> web.Response:
    response = redirect(request, to)
    cookies = request.app[CONSOLE].cookies
    max_age = max(1, int((max_expires_at - datetime.now(UTC)).total_seconds()))
    cookies.set_session(response, token, max_age)
    return response


async def login_page(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    providers = await request.app[SIGNIN].describe()
    identities = (
        sorted(
            (name, groups)
            for name, (subject, groups) in DEMO_IDENTITIES.items()
            if not subject.startswith("system:")
        )
        if console.dev_issuer is not None
        else []
    )
    return page(
        request,
        "login.html",
        providers=providers,
        identities=identities,
        next=query_of(request, NextQuery).next or _HOME,
        can_redirect=console.callback_for(request) is not None,
    )


async def start_sign_in(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    callback_url = console.callback_for(request)
    if callback_url is None:
        raise BadRequest(
            "the console cannot sign in through a provider until public_url is set",
            code="public_url_missing",
        )
    client_nonce = secrets.token_urlsafe(32)
    started = await request.app[SIGNIN].start(
        request.match_info["provider"],
        redirect_uri=callback_url,
        client_nonce=client_nonce,
        api="console",
    )
    response = redirect(request, started.auth_url, status=302)
    console.cookies.set_signin(
        response,
        SignInCookie(
            state=started.state,
            client_nonce=client_nonce,
            next=query_of(request, NextQuery).next or _HOME,
        ),
    )
    return response


async def callback(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    query = query_of(request, CallbackQuery)
    pending = console.cookies.signin(request)
    if query.error is not None:
        raise SignInRefused(
            f"the identity provider said {query.error}: {query.error_description or ''}".strip(),
            code="provider_refused",
        )
    if pending is None or query.state is None or query.code is None or query.state != pending.state:
        raise SignInRefused(
            "this sign-in was not started in this browser, or it expired: sign in again",
            code="invalid_state",
        )
    signed_in = await request.app[SIGNIN].finish(
        state=query.state,
        code=query.code,
        client_nonce=pending.client_nonce,
        request_id=request[REQUEST_ID],
        client=_client(request),
    )
    response = _signed_in(request, signed_in.token, signed_in.session.max_expires_at, pending.next)
    response.del_cookie(console.cookies.signin_name, path="/")
    return response


async def dev_sign_in(request: web.Request) -> web.Response:
    """Development only (``console_dev_sign_in`` with the dev issuer): a demo identity."""
    console = request.app[CONSOLE]
    body = body_of(request, DevSignIn)
    identity = DEMO_IDENTITIES.get(body.identity)
    if console.dev_issuer is None or identity is None:
        raise NotFound("no such dev identity", code="not_found")
    subject, groups = identity
    token = console.dev_issuer.mint(subject, groups, ttl_seconds=300)
    principal = await request.app[VERIFIER].verify(f"Bearer {token}")
    session_token, session = await request.app[SESSIONS].create(
        principal,
        mount="dev",
        login_role=None,
        request_id=request[REQUEST_ID],
        client=_client(request),
    )
    return _signed_in(request, session_token, session.max_expires_at, body.next or _HOME)


async def sign_out(request: web.Request) -> web.Response:
    session = session_of(request)
    cookie = request.app[CONSOLE].cookies.session(request)
    after: str | None = None
    if session is not None and cookie is not None:
        if session.provider is not None:
            after = await request.app[SIGNIN].logout(
                session, cookie.token, request_id=request[REQUEST_ID]
            )
        else:
            await request.app[SESSIONS].revoke(
                session, request_id=request[REQUEST_ID], reason="logout"
            )
    response = redirect(request, after or "/console/login")
    request.app[CONSOLE].cookies.clear(response)
    return response
