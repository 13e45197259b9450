"""HTTP handlers for offboarding: thin, all rules live in OffboardingService."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from aiohttp import web

from broker.errors import BadRequest
from broker.text import is_safe_text

from .handlers import authenticated, page_size
from .inputs import optional_text, read_object
from .keys import OFFBOARDING, SETTINGS
from .middleware import REQUEST_ID

__all__ = ["list_offboardings", "post_offboarding", "reinstate_subject"]

_OFFBOARD_FIELDS = frozenset({"subject", "reason", "terminated_at"})
_REINSTATE_FIELDS = frozenset({"reason"})
_MAX_SUBJECT_CHARS = 256


def _subject(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("'subject' is required", code="invalid_subject")
    text = value.strip()
    if len(text) > _MAX_SUBJECT_CHARS or not is_safe_text(text):
        raise BadRequest(
            f"'subject' must be at most {_MAX_SUBJECT_CHARS} printable characters",
            code="invalid_subject",
        )
    return text


def _reason(request: web.Request, body: dict[str, Any]) -> str:
    reason = optional_text(body, "reason", request.app[SETTINGS].max_reason_chars)
    if not reason:
        raise BadRequest("a reason is required", code="reason_required")
    return reason


def _timestamp(value: Any, name: str, *, dates: bool = False) -> datetime | None:
    """ISO 8601 with an offset (``Z`` allowed); with ``dates``, a bare date is UTC midnight."""
    if value is None:
        return None
    problem = f"'{name}' must be an ISO 8601 time with offset, e.g. 2026-02-01T09:00:00Z"
    if not isinstance(value, str) or len(value) > 64:
        raise BadRequest(problem, code=f"invalid_{name}")
    try:
        if dates and len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(problem, code=f"invalid_{name}") from None
    if parsed.tzinfo is None:
        raise BadRequest(problem, code=f"invalid_{name}")
    return parsed


async def post_offboarding(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    service = request.app[OFFBOARDING]
    service.require(principal, "admin")
    body = await read_object(request, _OFFBOARD_FIELDS)
    report = await service.offboard(
        principal,
        subject=_subject(body.get("subject")),
        reason=_reason(request, body),
        terminated_at=_timestamp(body.get("terminated_at"), "terminated_at"),
        request_id=request[REQUEST_ID],
    )
    return web.json_response(report, status=201)


async def reinstate_subject(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    service = request.app[OFFBOARDING]
    service.require(principal, "admin")
    body = await read_object(request, _REINSTATE_FIELDS)
    result = await service.reinstate(
        principal,
        subject=_subject(request.match_info["subject"]),
        reason=_reason(request, body),
        request_id=request[REQUEST_ID],
    )
    return web.json_response(result)


async def list_offboardings(request: web.Request) -> web.Response:
    principal = await authenticated(request)
    service = request.app[OFFBOARDING]
    service.require(principal, "admin", "audit")
    since = _timestamp(request.query.get("from"), "from", dates=True)
    until = _timestamp(request.query.get("to"), "to", dates=True)
    if since is not None and until is not None and until <= since:
        raise BadRequest("'to' must be after 'from'", code="invalid_to")
    items = await service.list_offboardings(
        principal, since=since, until=until, limit=page_size(request)
    )
    return web.json_response({"offboardings": items})
