"""Pages: Jinja2 templates, autoescaped always (every reason, comment, ticket and subject
that reaches a page is text, never markup), with the security headers on every answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import jinja2
from aiohttp import web

from broker.web.authn import PRINCIPAL, session_of

from .keys import CONSOLE
from .security import CSRF_FIELD, secure_headers

__all__ = ["error_page", "page", "redirect"]

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
        **context,
    )
    response = web.Response(text=body, status=status, content_type="text/html")
    secure_headers(response, https=console.cookies.secure)
    return response


def redirect(request: web.Request, location: str, *, status: int = 303) -> web.Response:
    response = web.Response(status=status, headers={"Location": location})
    secure_headers(response, https=request.app[CONSOLE].cookies.secure)
    return response


def error_page(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """A refusal as a page (401: back to the sign-in page, then here again)."""
    if status == 401 and request.method in ("GET", "HEAD"):
        return redirect(request, "/console/login?next=" + _local(request.path_qs))
    return page(request, "error.html", status=status, code=code, message=message)


def _local(path: str) -> str:
    from urllib.parse import quote

    return quote(path if path.startswith("/console/") else "/console/", safe="")
