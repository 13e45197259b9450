"""Pages: Jinja2 templates, autoescaped always (every reason, comment, ticket and subject
that reaches a page is text, never markup), with the security headers on every answer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from broker.errors import BrokerError
from broker.web.authn import PRINCIPAL, session_of
from broker.web.route import declaration_of

from .keys import CONSOLE
from .nav import nav_for
from .security import CSRF_FIELD, secure_headers

__all__ = ["RefusalPage", "error_page", "page", "redirect", "refusals_shown_by"]

_log = logging.getLogger(__name__)

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("broker.console", "templates"),
    autoescape=True,  # not select_autoescape: every template is HTML
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _utc(value: datetime | str | None) -> str:
    if value is None:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


_ENV.filters["utc"] = _utc


def page(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    console = request.app[CONSOLE]
    cookie = console.cookies.session(request)
    body = _ENV.get_template(template).render(
        principal=request.get(PRINCIPAL),
        session=session_of(request),
        csrf_field=CSRF_FIELD,
        csrf=cookie.csrf if cookie is not None else "",
        path=request.path,
        nav=nav_for(request),
        **context,
    )
    response = web.Response(text=body, status=status, content_type="text/html")
    secure_headers(response, https=console.cookies.secure)
    return response


def redirect(request: web.Request, location: str, *, status: int = 303) -> web.Response:
    response = web.Response(status=status, headers={"Location": location})
    secure_headers(response, https=request.app[CONSOLE].cookies.secure)
    return response


# A form's own page for its refusals: (request, status, code, message) -> the page.
RefusalPage = Callable[[web.Request, int, str, str], Awaitable[web.Response]]
_H = TypeVar("_H", bound=Callable[[web.Request], Awaitable[web.StreamResponse]])
_REFUSAL_PAGES: dict[Callable[..., Any], RefusalPage] = {}


def refusals_shown_by(shown_by: RefusalPage) -> Callable[[_H], _H]:
    """Mark a console form's handler: its refusals are shown by ``shown_by`` (the form
    again, with the server's message and the values sent) instead of the error page.

    Every refusal counts, those of the body's rules in the route middleware as well as the
    service's; each is still answered with its status and ledgered as any other, since
    only the page that says it differs.
    """

    def mark(handler: _H) -> _H:
        _REFUSAL_PAGES[handler] = shown_by
        return handler

    return mark


async def error_page(
    request: web.Request, status: int, code: str, message: str
) -> web.StreamResponse:
    """A refusal as a page (401: back to the sign-in page, then here again)."""
    if status == 401 and request.method in ("GET", "HEAD"):
        return redirect(request, "/console/login?next=" + _local(request.path_qs))
    route = declaration_of(request)
    shown_by = _REFUSAL_PAGES.get(route.handler) if route is not None else None
    # Not a forged form (csrf_failed): its sender gets no page holding a fresh token.
    if (
        shown_by is not None
        and 400 <= status < 500
        and code != "csrf_failed"
        and request.get(PRINCIPAL) is not None
    ):
        try:
            return await shown_by(request, status, code, message)
        except BrokerError:
            pass  # the form's page cannot be shown (gone meanwhile): the plain one
        except Exception:
            _log.exception("the refusal page of %s failed", request.path[:200])
    return page(
        request,
        "error.html",
        status=status,
        code=code,
        message=message,
        back=_back(request),
        sign_in_again=status == 401,
    )


def _back(request: web.Request) -> str | None:
    """The console page the refused form was on (its ``Referer``; same-origin only, by
    the Referrer-Policy), to go back and change it."""
    referer = urlsplit(request.headers.get("Referer", ""))
    if referer.netloc != request.url.raw_authority or not referer.path.startswith("/console/"):
        return None
    back = referer.path + (f"?{referer.query}" if referer.query else "")
    return back if back != request.path_qs and "//" not in back else None


def _local(path: str) -> str:
    from urllib.parse import quote

    return quote(path if path.startswith("/console/") else "/console/", safe="")
