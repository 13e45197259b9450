"""Request-body parsing and field validation: strict, bounded, with clear 400 codes."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from broker.durations import parse_duration
from broker.errors import BadRequest, PayloadTooLarge
from broker.policy.model import validate_secret_name
from broker.text import is_safe_text

from .keys import SETTINGS

__all__ = [
    "optional_bool",
    "optional_text",
    "parse_ttl",
    "query_text",
    "read_object",
    "require_secret",
    "ticket",
]

_TICKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/#-]{0,63}$")


async def read_object(
    request: web.Request, allowed: frozenset[str], *, optional: bool = False
) -> dict[str, Any]:
    """The JSON object body; unknown fields are refused so typos never pass silently.

    With ``optional``, an empty body is an empty object (e.g. an approval without comment).
    """
    try:
        raw = await request.read()  # bounded by the app's client_max_size
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"request body is larger than {request.app[SETTINGS].max_body_bytes} bytes"
        ) from None
    if not raw:
        if optional:
            return {}
        raise BadRequest("request body must be a JSON object", code="malformed_json")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise BadRequest("request body is not valid JSON", code="malformed_json") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", code="malformed_json")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown field(s): {', '.join(repr(k)[:40] for k in unknown[:5])}",
            code="unknown_field",
        )
    return body


def require_secret(body: dict[str, Any]) -> str:
    value = body.get("secret")
    if value is None:
        raise BadRequest("'secret' is required", code="missing_field")
    if not validate_secret_name(value):
        raise BadRequest(
            "'secret' must be a catalog name like 'db/orders-ro' (lowercase, '/'-separated,"
            " at most 128 characters)",
            code="invalid_secret_name",
        )
    return str(value)


def optional_text(body: dict[str, Any], name: str, max_chars: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_chars or not is_safe_text(value):
        raise BadRequest(
            f"'{name}' must be text of at most {max_chars} characters without control characters",
            code=f"invalid_{name}",
        )
    return value.strip() or None


def ticket(body: dict[str, Any]) -> str | None:
    value = body.get("ticket")
    if value is None:
        return None
    if not isinstance(value, str) or not _TICKET.match(value):
        raise BadRequest(
            "'ticket' must be a ticket reference like 'INC-1234' (letters, digits, ._:/#-)",
            code="invalid_ticket",
        )
    return value


def parse_ttl(body: dict[str, Any], name: str = "ttl") -> int | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise BadRequest(f"'{name}': {e}", code=f"invalid_{name}") from None


def query_text(request: web.Request, name: str, max_chars: int) -> str | None:
    """A free-text query parameter, held to the same rules as body text."""
    return optional_text(dict(request.query), name, max_chars)


def optional_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"'{name}' must be true or false", code=f"invalid_{name}")
    return value
