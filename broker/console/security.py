"""What every console response carries, and what every console form must prove.

Headers (every page, error pages included): a Content-Security-Policy with no
``unsafe-inline`` anywhere (scripts and styles are files under /console/static/),
``frame-ancestors 'none'``, ``nosniff``, ``Referrer-Policy: same-origin`` (console URLs
carry ids and never leave the site; ``no-referrer`` would also blank the ``Origin`` of the
console's own forms), and ``Cache-Control: no-store`` (a page may show a credential once; none is
ever kept by the browser or a proxy).

A state-changing request (any method but GET/HEAD) must come from the console itself:
``Sec-Fetch-Site`` same-origin (or absent, for old browsers), an ``Origin`` that is the
console's own when present, and, once signed in, the form's ``csrf`` field equal to the
secret sealed in the session cookie. Anything else is 403 ``csrf_failed``, ledgered as a
rejected request when the caller is known.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from aiohttp import web

from broker.errors import Forbidden

__all__ = ["CSRF_FIELD", "check_csrf", "check_same_origin", "secure_headers"]

CSRF_FIELD = "csrf"

_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def secure_headers(response: web.StreamResponse, *, https: bool) -> None:
    response.headers.update(_HEADERS)
    if https:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_same_origin(request: web.Request, own_origin: str) -> None:
    """403 ``csrf_failed`` unless the browser says the request comes from this origin."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden("the form was not sent from the console", code="csrf_failed")
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() != own_origin:
        raise Forbidden("the form was not sent from the console", code="csrf_failed")


def check_csrf(sent: str | None, expected: str) -> None:
    if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Forbidden(
            "the form's CSRF token is missing or wrong: reload the page", code="csrf_failed"
        )


def own_origin(request: web.Request, public_url: str | None) -> str:
    """The console's origin: ``public_url``'s when set, else the one the request came in on."""
    return _origin_of(public_url) if public_url else _origin_of(str(request.url))
