"""Continuity evidence: the gaps between heartbeats, and their remediation notes.

The gap definition lives in ``broker.evidence.continuity``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from broker.auth import Principal
from broker.evidence.continuity import GapAnnotation, gaps_in
from broker.ledger import Ledger, NewEvent
from broker.periods import MAX_QUERY_PERIOD, check_period

from ..authn import principal_of
from ..keys import CLOCK, LEDGER, SETTINGS
from ..middleware import REQUEST_ID
from ..models import GapAnnotationRequest, GapQuery
from ..route import body_of, query_of
from . import json_reply

__all__ = ["annotate_gap", "gap_report", "get_gaps", "record_annotation"]


async def get_gaps(request: web.Request) -> web.Response:
    """Gaps overlapping ``[from, to)`` (``to`` defaults to now and is never past it)."""
    query = query_of(request, GapQuery)
    return json_reply(await gap_report(request.app, query.from_, query.to, limit=query.limit))


async def gap_report(
    app: web.Application, start: datetime, end: datetime | None, *, limit: int
) -> dict[str, Any]:
    """The answer of ``GET /v1/audit/gaps`` (the API's and the console's)."""
    now = app[CLOCK]()
    end = end or now
    check_period(start, end, maximum=MAX_QUERY_PERIOD)
    end = min(end, now)
    settings = app[SETTINGS]
    found: list[dict[str, Any]] = []
    if start < end:
        for gap, notes in await gaps_in(
            app[LEDGER],
            period_from=start,
            period_to=end,
            heartbeat_seconds=settings.heartbeat_seconds,
            limit=limit,
        ):
            covering = [n for n in notes if n.covers(gap)]
            found.append(
                {
                    **gap.to_json(),
                    "annotated": bool(covering),
                    "annotation": covering[-1].to_json() if covering else None,
                    "annotations": [n.to_json() for n in notes],
                }
            )
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "heartbeat_seconds": settings.heartbeat_seconds,
        "threshold_seconds": 2 * settings.heartbeat_seconds,
        "gaps": found,
    }


async def annotate_gap(request: web.Request) -> web.Response:
    """Record a ``gap.annotated`` row: a remediation note for a stretch without heartbeats."""
    body = body_of(request, GapAnnotationRequest)
    note = await record_annotation(
        request.app[LEDGER], principal_of(request), body, request_id=request[REQUEST_ID]
    )
    return json_reply({"annotation": note.to_json()}, status=201)


async def record_annotation(
    ledger: Ledger,
    principal: Principal,
    body: GapAnnotationRequest,
    *,
    request_id: str,
    client: Mapping[str, str] | None = None,
) -> GapAnnotation:
    """Ledger the ``gap.annotated`` row (the API's, and the console's with its ``client``)."""
    appended = await ledger.append(
        NewEvent(
            event="gap.annotated",
            outcome="annotated",
            subject=principal.subject,
            subject_kind=principal.kind,
            request_id=request_id,
            body={
                "from": body.from_.isoformat(),
                "to": body.to.isoformat(),
                "remediation": body.remediation,
                **({"client": dict(client)} if client else {}),
            },
        )
    )
    # No dedupe key, so the row is always written and carries its seq and time.
    assert appended.seq is not None and appended.recorded_at is not None
    return GapAnnotation(
        appended.seq,
        appended.recorded_at,
        principal.subject,
        body.from_,
        body.to,
        body.remediation,
    )
