"""Offboarding: thin, all rules live in OffboardingService."""

from __future__ import annotations

from aiohttp import web

from broker.errors import BadRequest
from broker.text import is_safe_text

from ..authn import principal_of
from ..keys import OFFBOARDING
from ..middleware import REQUEST_ID
from ..models import MAX_SUBJECT_CHARS, OffboardingListQuery, OffboardRequest, ReinstateRequest
from ..route import body_of, query_of
from . import json_reply

__all__ = ["list_offboardings", "post_offboarding", "reinstate_subject"]


async def post_offboarding(request: web.Request) -> web.Response:
    body = body_of(request, OffboardRequest)
    report = await request.app[OFFBOARDING].offboard(
        principal_of(request),
        subject=body.subject,
        reason=body.reason,
        terminated_at=body.terminated_at,
        request_id=request[REQUEST_ID],
    )
    return json_reply(report, status=201)


def _path_subject(request: web.Request) -> str:
    subject = request.match_info["subject"].strip()
    if not subject or len(subject) > MAX_SUBJECT_CHARS or not is_safe_text(subject):
        raise BadRequest(
            f"'subject' must be at most {MAX_SUBJECT_CHARS} printable characters",
            code="invalid_subject",
        )
    return subject


async def reinstate_subject(request: web.Request) -> web.Response:
    result = await request.app[OFFBOARDING].reinstate(
        principal_of(request),
        subject=_path_subject(request),
        reason=body_of(request, ReinstateRequest).reason,
        request_id=request[REQUEST_ID],
    )
    return json_reply(result)


async def list_offboardings(request: web.Request) -> web.Response:
    query = query_of(request, OffboardingListQuery)
    items = await request.app[OFFBOARDING].list_offboardings(
        principal_of(request), since=query.from_, until=query.to, limit=query.limit
    )
    return json_reply({"offboardings": items})
