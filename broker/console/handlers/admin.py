"""The admin's pages: offboard a person and watch it run (SLA met or missed), annotate a
logging gap. Each calls the service its API route calls (``POST /v1/offboarding``,
``GET /v1/offboarding``, ``POST /v1/audit/gaps/annotate``) under the same access rule,
and ledgers what that route ledgers."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from aiohttp import web

from broker.errors import BrokerError
from broker.web.authn import principal_of
from broker.web.handlers import path_uuid
from broker.web.handlers.continuity import record_annotation
from broker.web.keys import LEDGER, OFFBOARDING
from broker.web.middleware import REQUEST_ID
from broker.web.models import GapAnnotationRequest, OffboardingListQuery, OffboardRequest
from broker.web.route import body_of, query_of

from ..forms import GapPrefill
from ..render import page, redirect, refusals_shown_by

__all__ = ["annotate_gap", "annotate_gap_form", "offboard", "offboarding", "offboardings"]

_log = logging.getLogger(__name__)
_CLIENT = {"api": "console"}
# Offboardings that outlive the request that started them (the page watches them run).
_RUNNING: set[asyncio.Future[Any]] = set()


async def _sent(request: web.Request, status: int, fields: tuple[str, ...]) -> dict[str, str]:
    """A refused form's values as sent, to show them again (none for a body too large)."""
    if status == 413:
        return {}
    form = await request.post()
    return {k: v for k in fields if isinstance(v := form.get(k), str)}


async def offboardings(request: web.Request) -> web.Response:
    """``GET /v1/offboarding``: who was offboarded, and whether the SLA was met."""
    q = query_of(request, OffboardingListQuery)
    items = await request.app[OFFBOARDING].list_offboardings(
        principal_of(request), since=q.from_, until=q.to, limit=q.limit
    )
    return page(request, "offboardings.html", offboardings=items)


async def _offboard_refused(
    request: web.Request, status: int, code: str, message: str
) -> web.Response:
    items = await request.app[OFFBOARDING].list_offboardings(
        principal_of(request), since=None, until=None, limit=100
    )
    return page(
        request,
        "offboardings.html",
        status=status,
        offboardings=items,
        sent=await _sent(request, status, ("subject", "reason", "terminated_at")),
        error=(code, message),
    )


@refusals_shown_by(_offboard_refused)
async def offboard(request: web.Request) -> web.Response:
    """``POST /v1/offboarding``, watched: once step 1 stands (the person is refused
    everywhere) the admin is sent to the offboarding's page, which shows each revocation
    as it is ledgered and the SLA when it completes. A refusal before that (already
    offboarded, a bad ``terminated_at``) is the API's, answered and ledgered as there."""
    body = body_of(request, OffboardRequest)
    loop = asyncio.get_running_loop()
    started: asyncio.Future[uuid.UUID] = loop.create_future()

    def on_started(offboarding_id: uuid.UUID) -> None:
        if not started.done():
            started.set_result(offboarding_id)

    # Not tied to this request: closing the tab must not stop an offboarding halfway.
    task: asyncio.Future[Any] = asyncio.ensure_future(
        request.app[OFFBOARDING].offboard(
            principal_of(request),
            subject=body.subject,
            reason=body.reason,
            terminated_at=body.terminated_at,
            request_id=request[REQUEST_ID],
            on_started=on_started,
            client=_CLIENT,
        )
    )
    _RUNNING.add(task)
    task.add_done_callback(_finished)
    waiting: set[asyncio.Future[Any]] = {started, task}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if not started.done():
        task.result()  # the service's refusal, raised here as the API raises it
        raise AssertionError("offboard returned without starting")  # pragma: no cover
    return redirect(request, f"/console/offboardings/{started.result()}")


def _finished(task: asyncio.Future[Any]) -> None:
    _RUNNING.discard(task)
    error = None if task.cancelled() else task.exception()
    if isinstance(error, BrokerError) and error.status < 500:
        return  # a refusal: the request that started it answered it
    if error is not None:
        # The page shows it still in progress; offboarding again resumes it.
        _log.warning("an offboarding started from the console stopped: %s", error)


async def offboarding(request: web.Request) -> web.Response:
    offboarding_id = path_uuid(
        request, "offboarding_id", code="offboarding_not_found", thing="offboarding"
    )
    report = await request.app[OFFBOARDING].watch(principal_of(request), offboarding_id)
    return page(request, "offboarding.html", ob=report)


async def annotate_gap_form(request: web.Request) -> web.Response:
    q = query_of(request, GapPrefill)
    return page(request, "annotate.html", form={"from": q.from_ or "", "to": q.to or ""}, note=None)


async def _annotate_refused(
    request: web.Request, status: int, code: str, message: str
) -> web.Response:
    return page(
        request,
        "annotate.html",
        status=status,
        form=await _sent(request, status, ("from", "to", "remediation")),
        note=None,
        error=(code, message),
    )


@refusals_shown_by(_annotate_refused)
async def annotate_gap(request: web.Request) -> web.Response:
    """``POST /v1/audit/gaps/annotate``: a ``gap.annotated`` row explaining a stretch."""
    body = body_of(request, GapAnnotationRequest)
    note = await record_annotation(
        request.app[LEDGER],
        principal_of(request),
        body,
        request_id=request[REQUEST_ID],
        client=_CLIENT,
    )
    return page(
        request,
        "annotate.html",
        status=201,
        form={"from": "", "to": ""},
        note=note.to_json(),
    )
