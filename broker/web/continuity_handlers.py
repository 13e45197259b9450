"""HTTP handlers for continuity evidence: the gaps between heartbeats, and their notes.

``GET /v1/audit/gaps`` needs the ``audit`` capability; ``POST /v1/audit/gaps/annotate``
needs ``admin``. The gap definition lives in ``broker.evidence.continuity``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from broker.auth import Principal
from broker.errors import BadRequest, Forbidden
from broker.evidence.continuity import GapAnnotation, gaps_in
from broker.ledger import NewEvent
from broker.policy.decide import capabilities

from .handlers import authenticated, page_size
from .inputs import optional_text, read_object
from .keys import CLOCK, LEDGER, POLICY, SETTINGS
from .middleware import REQUEST_ID

__all__ = ["annotate_gap", "get_gaps"]

# One query covers at most this much time: the liveness rows read grow with the range.
MAX_GAP_RANGE = timedelta(days=400)
_ANNOTATE_FIELDS = frozenset({"from", "to", "remediation"})


def _require(request: web.Request, principal: Principal, capability: str) -> None:
    if capability not in capabilities(request.app[POLICY].current, principal):
        raise Forbidden(f"this endpoint needs the {capability!r} capability", code="forbidden")


def _instant(value: object, name: str) -> datetime:
    """An ISO 8601 time; without an offset it is taken as UTC (dates mean midnight UTC)."""
    if not isinstance(value, str) or not value or len(value) > 64:
        raise BadRequest(f"'{name}' must be an ISO 8601 time", code=f"invalid_{name}")
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(
            f"'{name}' must be an ISO 8601 time like 2025-01-01T00:00:00+00:00",
            code=f"invalid_{name}",
        ) from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _range(start: datetime, end: datetime) -> None:
    if end <= start:
        raise BadRequest("'to' must be after 'from'", code="invalid_range")
    if end - start > MAX_GAP_RANGE:
        raise BadRequest(
            f"the range may span at most {MAX_GAP_RANGE.days} days", code="invalid_range"
        )


async def get_gaps(request: web.Request) -> web.Response:
    """Gaps overlapping ``[from, to)`` (``to`` defaults to now and is never past it)."""
    principal = await authenticated(request)
    _require(request, principal, "audit")
    now = request.app[CLOCK]()
    if "from" not in request.query:
        raise BadRequest("'from' is required", code="missing_field")
    start = _instant(request.query["from"], "from")
    end = _instant(request.query["to"], "to") if "to" in request.query else now
    _range(start, end)
    end = min(end, now)
    settings = request.app[SETTINGS]
    found: list[dict[str, Any]] = []
    if start < end:
        for gap, notes in await gaps_in(
            request.app[LEDGER],
            period_from=start,
            period_to=end,
            heartbeat_seconds=settings.heartbeat_seconds,
            limit=page_size(request),
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
    return web.json_response(
        {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "heartbeat_seconds": settings.heartbeat_seconds,
            "threshold_seconds": 2 * settings.heartbeat_seconds,
            "gaps": found,
        }
    )


async def annotate_gap(request: web.Request) -> web.Response:
    """Record a ``gap.annotated`` row: a remediation note for a stretch without heartbeats."""
    principal = await authenticated(request)
    _require(request, principal, "admin")
    settings = request.app[SETTINGS]
    body = await read_object(request, _ANNOTATE_FIELDS)
    for name in ("from", "to", "remediation"):
        if body.get(name) is None:
            raise BadRequest(f"'{name}' is required", code="missing_field")
    start = _instant(body["from"], "from")
    end = _instant(body["to"], "to")
    _range(start, end)
    remediation = optional_text(body, "remediation", settings.max_reason_chars)
    if remediation is None:
        raise BadRequest("'remediation' must not be empty", code="invalid_remediation")
    appended = await request.app[LEDGER].append(
        NewEvent(
            event="gap.annotated",
            outcome="annotated",
            subject=principal.subject,
            subject_kind=principal.kind,
            request_id=request[REQUEST_ID],
            body={"from": start.isoformat(), "to": end.isoformat(), "remediation": remediation},
        )
    )
    # No dedupe key, so the row is always written and carries its seq and time.
    assert appended.seq is not None and appended.recorded_at is not None
    note = GapAnnotation(
        appended.seq, appended.recorded_at, principal.subject, start, end, remediation
    )
    return web.json_response({"annotation": note.to_json()}, status=201)
