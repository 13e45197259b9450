"""HTTP handlers for the auditor's questions: access windows and raw events.

Both need the ``audit`` capability. Query parameters are strict: unknown ones are refused
(a typo such as ``form=`` must not silently widen the answer), every value is bounded.
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from broker.audit import AccessQuery, EventQuery
from broker.audit.access import parse_instant
from broker.errors import BadRequest, Forbidden
from broker.ledger import EVENT_TYPES
from broker.policy.decide import capabilities
from broker.policy.model import validate_secret_name
from broker.text import is_safe_text

from .handlers import authenticated, page_size
from .keys import AUDIT_ACCESS, POLICY

__all__ = ["get_audit_access", "get_audit_events"]

_ACCESS_PARAMS = frozenset({"subject", "secret", "from", "to", "cursor", "limit"})
_EVENT_PARAMS = _ACCESS_PARAMS | {"type"}
_MAX_SUBJECT = 256
_MAX_CURSOR = 2**63 - 1


async def _auditor(request: web.Request, allowed: frozenset[str]) -> None:
    principal = await authenticated(request)
    if "audit" not in capabilities(request.app[POLICY].current, principal):
        raise Forbidden("this endpoint needs the 'audit' capability", code="forbidden")
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown query parameter(s): {', '.join(repr(k)[:40] for k in unknown[:5])}",
            code="unknown_parameter",
        )


def _instant(request: web.Request, name: str, *, required: bool) -> datetime | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        if required:
            raise BadRequest(
                f"'{name}' is required (YYYY-MM-DD or ISO 8601)", code=f"missing_{name}"
            )
        return None
    try:
        return parse_instant(raw)
    except ValueError:
        raise BadRequest(
            f"'{name}' must be a date (YYYY-MM-DD) or an ISO 8601 date-time",
            code=f"invalid_{name}",
        ) from None


def _subject(request: web.Request) -> str | None:
    value = request.query.get("subject")
    if value is None:
        return None
    if not value or len(value) > _MAX_SUBJECT or not is_safe_text(value):
        raise BadRequest(
            f"'subject' must be 1..{_MAX_SUBJECT} characters without control characters",
            code="invalid_subject",
        )
    return value


def _secret(request: web.Request) -> str | None:
    value = request.query.get("secret")
    if value is None:
        return None
    if not validate_secret_name(value):
        raise BadRequest(
            "'secret' must be a catalog name like 'stripe/prod'", code="invalid_secret"
        )
    return value


def _cursor(request: web.Request) -> int | None:
    raw = request.query.get("cursor")
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_CURSOR:
        raise BadRequest(
            "'cursor' must be a next_cursor from a previous page", code="invalid_cursor"
        )
    return int(raw)


def _types(request: web.Request) -> tuple[str, ...]:
    raw = request.query.get("type")
    if raw is None:
        return ()
    types = tuple(dict.fromkeys(t.strip() for t in raw.split(",")))
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown or not types:
        raise BadRequest(
            "'type' must be ledger event names, comma-separated (e.g. grant.issued,grant.revoked)",
            code="invalid_type",
        )
    return types


async def get_audit_access(request: web.Request) -> web.Response:
    await _auditor(request, _ACCESS_PARAMS)
    start = _instant(request, "from", required=True)
    end = _instant(request, "to", required=True)
    assert start is not None and end is not None
    query = AccessQuery(
        start=start,
        end=end,
        subject=_subject(request),
        secret=_secret(request),
        after=_cursor(request),
        limit=page_size(request),
    )
    return web.json_response(await request.app[AUDIT_ACCESS].access(query))


async def get_audit_events(request: web.Request) -> web.Response:
    await _auditor(request, _EVENT_PARAMS)
    query = EventQuery(
        subject=_subject(request),
        secret=_secret(request),
        types=_types(request),
        start=_instant(request, "from", required=False),
        end=_instant(request, "to", required=False),
        after=_cursor(request),
        limit=page_size(request),
    )
    return web.json_response(await request.app[AUDIT_ACCESS].events(query))
