"""The auditor's questions: access windows and raw events (``audit`` capability)."""

from __future__ import annotations

from aiohttp import web

from broker.audit import AccessQuery, EventQuery

from ..keys import AUDIT_ACCESS
from ..models import AccessParams, EventParams
from ..route import query_of
from . import json_reply

__all__ = ["get_audit_access", "get_audit_events"]


async def get_audit_access(request: web.Request) -> web.Response:
    q = query_of(request, AccessParams)
    query = AccessQuery(
        start=q.from_, end=q.to, subject=q.subject, secret=q.secret, after=q.cursor, limit=q.limit
    )
    return json_reply(await request.app[AUDIT_ACCESS].access(query))


async def get_audit_events(request: web.Request) -> web.Response:
    q = query_of(request, EventParams)
    query = EventQuery(
        subject=q.subject,
        secret=q.secret,
        types=q.type,
        start=q.from_,
        end=q.to,
        after=q.cursor,
        limit=q.limit,
    )
    return json_reply(await request.app[AUDIT_ACCESS].events(query))
