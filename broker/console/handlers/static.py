"""The console's own static files (its CSS and JS: no inline script or style anywhere)."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from broker.errors import NotFound

from ..security import secure_headers

__all__ = ["static_file"]

_TYPES = {".css": "text/css", ".js": "text/javascript"}
_FILES = {
    name: resources.files("broker.console").joinpath("static", name).read_bytes()
    for name in ("console.css", "console.js")
}


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = _FILES.get(name)
    if body is None:
        raise NotFound("no such file", code="not_found")
    response = web.Response(body=body, content_type=_TYPES[name[name.rindex(".") :]])
    secure_headers(response, https=request.secure)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
