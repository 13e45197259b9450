"""The auditor's pages (capability ``audit``, as their API counterparts): why someone had
access, the event browser, ledger status and verification, findings, the evidence package,
and continuity gaps. Each calls the service its ``/v1/audit/*`` route calls, with the
query decoded by the same model."""

from __future__ import annotations

import asyncio
import json
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from broker.audit import AccessQuery, EventQuery
from broker.ledger.events import EVENT_TYPES
from broker.web.authn import principal_of
from broker.web.handlers.continuity import gap_report
from broker.web.handlers.evidence import Package, build_package, stream_package
from broker.web.keys import (
    AUDIT_ACCESS,
    CHECKPOINT_VERIFIER,
    CLOCK,
    LEDGER,
    POLICY,
    VERIFICATIONS,
)
from broker.web.models import AccessParams, EventParams, EvidenceQuery, GapQuery
from broker.web.route import query_of

from ..keys import CONSOLE
from ..render import page, refusals_shown_by
from ..security import secure_headers

__all__ = [
    "events",
    "evidence_download",
    "evidence_form",
    "findings",
    "findings_form",
    "gaps",
    "gaps_recent",
    "ledger_status",
    "verify_ledger_now",
    "why",
    "why_form",
]

# The console's page size (the API's default is 100; a phone scrolls less).
PAGE = 50
_EVENT_TYPES = sorted(EVENT_TYPES)


def _today() -> tuple[str, str]:
    today = datetime.now(UTC).date()
    return today.isoformat(), (today + timedelta(days=1)).isoformat()


def _form(request: web.Request, *names: str) -> dict[str, str]:
    """The submitted values of a GET form, to show them again (escaped by the template)."""
    return {n: request.query.get(n, "") for n in names}


def _next_page(request: web.Request, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    kept = {k: v for k, v in request.query.items() if k != "cursor" and v.strip()}
    return f"{request.path}?{urlencode({**kept, 'cursor': cursor})}"


# --- why: the access query ----------------------------------------------------------------


async def why_form(request: web.Request) -> web.Response:
    start, end = _today()
    return page(
        request,
        "why.html",
        form={"subject": "", "secret": "", "from": start, "to": end},
        result=None,
        next_page=None,
        secrets=sorted(_catalog(request)),
    )


async def _why_refused(request: web.Request, status: int, code: str, message: str) -> web.Response:
    return page(
        request,
        "why.html",
        status=status,
        form=_form(request, "subject", "secret", "from", "to"),
        result=None,
        next_page=None,
        secrets=sorted(_catalog(request)),
        error=(code, message),
    )


@refusals_shown_by(_why_refused)
async def why(request: web.Request) -> web.Response:
    q = query_of(request, AccessParams)
    result = await request.app[AUDIT_ACCESS].access(
        AccessQuery(
            start=q.from_,
            end=q.to,
            subject=q.subject,
            secret=q.secret,
            after=q.cursor,
            limit=q.limit if "limit" in request.query else PAGE,
        )
    )
    return page(
        request,
        "why.html",
        form=_form(request, "subject", "secret", "from", "to"),
        result=result,
        next_page=_next_page(request, result["next_cursor"]),
        secrets=sorted(_catalog(request)),
    )


def _catalog(request: web.Request) -> list[str]:
    return list(request.app[POLICY].current.catalog)


# --- the event browser --------------------------------------------------------------------


async def _events_refused(
    request: web.Request, status: int, code: str, message: str
) -> web.Response:
    return page(
        request,
        "events.html",
        status=status,
        form=_form(request, "subject", "secret", "type", "from", "to"),
        events=[],
        filtered=True,
        next_page=None,
        event_types=_EVENT_TYPES,
        secrets=sorted(_catalog(request)),
        error=(code, message),
    )


@refusals_shown_by(_events_refused)
async def events(request: web.Request) -> web.Response:
    q = query_of(request, EventParams)
    result = await request.app[AUDIT_ACCESS].events(
        EventQuery(
            subject=q.subject,
            secret=q.secret,
            types=q.type,
            start=q.from_,
            end=q.to,
            after=q.cursor,
            limit=q.limit if "limit" in request.query else PAGE,
        )
    )
    rows = [
        {**e, "body_json": json.dumps(e.get("body") or {}, indent=2, ensure_ascii=False)}
        for e in result["events"]
    ]
    return page(
        request,
        "events.html",
        form=_form(request, "subject", "secret", "type", "from", "to"),
        events=rows,
        filtered=any(v.strip() for k, v in request.query.items() if k != "cursor"),
        next_page=_next_page(request, result["next_cursor"]),
        event_types=_EVENT_TYPES,
        secrets=sorted(_catalog(request)),
    )


# --- ledger status and verification ---------------------------------------------------------


async def _ledger_context(request: web.Request) -> dict[str, Any]:
    ledger = request.app[LEDGER]
    head_seq, head_hash = await ledger.head()
    checkpoint = await ledger.latest_checkpoint()
    return {
        "rows": head_seq,
        "head_hash": head_hash.hex() if head_hash else None,
        "checkpoint": (
            {"size": checkpoint[0], "signed_at": checkpoint[1].isoformat(), "key_id": checkpoint[2]}
            if checkpoint
            else None
        ),
        "unsigned": head_seq - checkpoint[0] if checkpoint else head_seq,
        "origin": ledger.origin,
    }


def _verification(request: web.Request) -> dict[str, Any] | None:
    last = request.app[VERIFICATIONS].last
    if last is None:
        return None
    return {
        "at": last.finished_at.isoformat(),
        "by": last.requested_by,
        "seconds": round(last.seconds, 3),
        **last.report.to_json(),
    }


async def ledger_status(request: web.Request) -> web.Response:
    return page(
        request,
        "ledger.html",
        ledger=await _ledger_context(request),
        verification=_verification(request),
        just_ran=False,
    )


async def verify_ledger_now(request: web.Request) -> web.Response:
    """The verification of ``GET /v1/audit/verify`` (from the last verified head), on a
    button press."""
    await request.app[VERIFICATIONS].run(
        request.app[LEDGER],
        request.app[CHECKPOINT_VERIFIER],
        requested_by=principal_of(request).subject,
    )
    return page(
        request,
        "ledger.html",
        ledger=await _ledger_context(request),
        verification=_verification(request),
        just_ran=True,
    )


# --- findings and the evidence package ------------------------------------------------------


async def findings_form(request: web.Request) -> web.Response:
    start, end = _today()
    return page(request, "findings.html", form={"from": start, "to": end}, result=None)


def _read_findings(package: Package) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(package.handle) as zf:
            found: dict[str, Any] = json.loads(zf.read("findings.json"))
            verification = json.loads(zf.read("verification.json"))
            manifest = json.loads(zf.read("manifest.json"))
    finally:
        package.handle.close()
    return {
        **found,
        "verification_ok": verification.get("ok"),
        "segment": manifest.get("segment") or {},
        "generated_at": manifest.get("generated_at"),
    }


async def _findings_refused(
    request: web.Request, status: int, code: str, message: str
) -> web.Response:
    return page(
        request,
        "findings.html",
        status=status,
        form=_form(request, "from", "to"),
        result=None,
        error=(code, message),
    )


@refusals_shown_by(_findings_refused)
async def findings(request: web.Request) -> web.Response:
    """The findings of the evidence package for the period: the same export as the
    download (so exactly what an auditor checking that package sees), read and shown."""
    q = query_of(request, EvidenceQuery)
    package = await build_package(request.app, q.from_, q.to)
    result = await asyncio.to_thread(_read_findings, package)
    return page(
        request,
        "findings.html",
        form=_form(request, "from", "to"),
        result=result,
        download=f"/console/audit/evidence.zip?{urlencode(_form(request, 'from', 'to'))}",
    )


async def evidence_form(request: web.Request) -> web.Response:
    start, end = _today()
    return page(request, "evidence.html", form={"from": start, "to": end})


async def _evidence_refused(
    request: web.Request, status: int, code: str, message: str
) -> web.Response:
    return page(
        request,
        "evidence.html",
        status=status,
        form=_form(request, "from", "to"),
        error=(code, message),
    )


@refusals_shown_by(_evidence_refused)
async def evidence_download(request: web.Request) -> web.StreamResponse:
    """``GET /v1/audit/evidence``'s package, streamed, with the console's headers
    (``no-store``: the package holds every ledger row of the period)."""
    q = query_of(request, EvidenceQuery)
    package = await build_package(request.app, q.from_, q.to)
    https = request.app[CONSOLE].cookies.secure
    return await stream_package(
        request, package, decorate=lambda response: secure_headers(response, https=https)
    )


# --- continuity gaps ------------------------------------------------------------------------

_RECENT_GAPS = timedelta(days=7)


async def gaps_recent(request: web.Request) -> web.Response:
    """The last seven days' gaps (the form then asks for any other period)."""
    start = request.app[CLOCK]() - _RECENT_GAPS
    report = await gap_report(request.app, start, None, limit=PAGE)
    return page(
        request,
        "gaps.html",
        form={"from": start.date().isoformat(), "to": ""},
        report=report,
    )


async def _gaps_refused(request: web.Request, status: int, code: str, message: str) -> web.Response:
    start = request.app[CLOCK]() - _RECENT_GAPS
    report = await gap_report(request.app, start, None, limit=PAGE)
    return page(
        request,
        "gaps.html",
        status=status,
        form=_form(request, "from", "to"),
        report=report,
        error=(code, message),
    )


@refusals_shown_by(_gaps_refused)
async def gaps(request: web.Request) -> web.Response:
    """``GET /v1/audit/gaps``: stretches without a replica heartbeat, with their notes."""
    q = query_of(request, GapQuery)
    report = await gap_report(request.app, q.from_, q.to, limit=q.limit)
    return page(request, "gaps.html", form=_form(request, "from", "to"), report=report)
