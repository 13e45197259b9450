"""The auditor's questions: access windows and raw events (``audit`` capability)."""

from __future__ import annotations

from aiohttp import web

from broker.audit import AccessQuery, EventQuery
from broker.ledger.proofs import consistency_document, inclusion_document

from ..keys import AUDIT_ACCESS, LEDGER
from ..models import AccessParams, ConsistencyQuery, EventParams, InclusionQuery
from ..route import query_of
from . import json_reply

__all__ = ["get_audit_access", "get_audit_events", "get_consistency_proof", "get_inclusion_proof"]


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


async def get_inclusion_proof(request: web.Request) -> web.Response:
    q = query_of(request, InclusionQuery)
    async with request.app[LEDGER].pool.acquire() as conn:
        return json_reply(await inclusion_document(conn, q.seq, q.size))


async def get_consistency_proof(request: web.Request) -> web.Response:
    q = query_of(request, ConsistencyQuery)
    async with request.app[LEDGER].pool.acquire() as conn:
        return json_reply(await consistency_document(conn, q.old, q.new))
