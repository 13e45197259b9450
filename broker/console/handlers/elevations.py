"""Requesters' and approvers' elevation pages: ask, follow, redeem; decide, review.

Thin, like the API's handlers (``web.handlers.elevations``), and on the same service:
every rule, every refusal and every ledger row is ``ElevationService``'s, with
``client: {"api": "console"}``. A refused form comes back with the server's message and
the values sent (``render.refusals_shown_by``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from msgspec import Struct

from broker.auth import Principal
from broker.elevation.model import subject_key
from broker.policy.decide import requestable
from broker.web.authn import principal_of
from broker.web.handlers import path_uuid
from broker.web.keys import ELEVATIONS, POLICY
from broker.web.middleware import REQUEST_ID
from broker.web.models import Comment, ElevationRequest, SecretName, TtlRequest
from broker.web.route import body_of, query_of

from ..render import page, redirect, refusals_shown_by
from .home import shown_fields

__all__ = [
    "ElevationFormQuery",
    "approvals",
    "approve",
    "cancel",
    "deny",
    "elevation_page",
    "my_requests",
    "new_request",
    "post_request",
    "redeem",
    "review",
]

_CLIENT = {"api": "console"}
_LIMIT = 50
_HISTORY = 5
_FORM_FIELDS = ("secret", "reason", "ticket", "duration")


class ElevationFormQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    # The secret to preselect (the home page's "ask for approval" link).
    secret: SecretName | None = None


def _elevation_id(request: web.Request) -> uuid.UUID:
    return path_uuid(request, "elevation_id", code="elevation_not_found", thing="elevation")


async def _sent(request: web.Request, status: int, fields: tuple[str, ...]) -> dict[str, str]:
    """The form's values as sent, to show them again (none for a body too large to read)."""
    if status == 413:
        return {}
    form = await request.post()
    return {k: v for k in fields if isinstance(v := form.get(k), str)}


# --- requester ---------------------------------------------------------------------------


async def my_requests(request: web.Request) -> web.Response:
    items = await request.app[ELEVATIONS].list_elevations(
        principal_of(request), status=None, break_glass_unreviewed=False, limit=_LIMIT, mine=True
    )
    return page(request, "elevations.html", elevations=items)


def _options(request: web.Request, principal: Principal) -> list[dict[str, Any]]:
    """What the person may ask elevation for, with the terms of each (the role's rule)."""
    policy = request.app[POLICY].current
    out = []
    for item in requestable(policy, principal):
        role = policy.role(item["role"])
        if not item["privileged"] or role is None or role.elevation is None:
            continue
        rule = role.elevation
        out.append(
            {
                **item,
                "approver_groups": sorted({g for f in rule.factors for g in f.approver_groups}),
                "max_duration": rule.max_duration,
                "reason_min_length": rule.reason_min_length,
                "ticket_required": rule.ticket_required,
                "ticket_pattern": rule.ticket_pattern,
            }
        )
    return out


def _request_form(
    request: web.Request,
    values: Mapping[str, str],
    *,
    error: tuple[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    return page(
        request,
        "elevation_new.html",
        status=status,
        options=_options(request, principal_of(request)),
        values=values,
        error=error,
    )


async def new_request(request: web.Request) -> web.Response:
    secret = query_of(request, ElevationFormQuery).secret
    return _request_form(request, {"secret": secret} if secret else {})


async def _request_refused(
    request: web.Request, status: int, code: str, message: str
) -> web.Response:
    values = await _sent(request, status, _FORM_FIELDS)
    return _request_form(request, values, error=(code, message), status=status)


@refusals_shown_by(_request_refused)
async def post_request(request: web.Request) -> web.Response:
    body = body_of(request, ElevationRequest)
    created = await request.app[ELEVATIONS].request(
        principal_of(request),
        secret=body.secret,
        reason=body.reason,
        ticket=body.ticket,
        duration=body.duration,
        break_glass=body.break_glass,
        request_id=request[REQUEST_ID],
        client=_CLIENT,
    )
    return redirect(request, f"/console/elevations/{created['id']}")


# --- one elevation: follow it, decide it, redeem it ----------------------------------------


async def _elevation(
    request: web.Request,
    elevation_id: uuid.UUID,
    *,
    error: tuple[str, str] | None = None,
    comment: str = "",
    status: int = 200,
) -> web.Response:
    principal = principal_of(request)
    view = await request.app[ELEVATIONS].detail(principal, elevation_id, history=_HISTORY)
    return page(
        request,
        "elevation.html",
        status=status,
        el=view,
        mine=subject_key(view["requester"]) == subject_key(principal.subject),
        error=error,
        comment=comment,
    )


async def elevation_page(request: web.Request) -> web.Response:
    return await _elevation(request, _elevation_id(request))


async def _decision_refused(
    request: web.Request, status: int, code: str, message: str
) -> web.Response:
    sent = await _sent(request, status, ("comment",))
    return await _elevation(
        request,
        _elevation_id(request),
        error=(code, message),
        comment=sent.get("comment", ""),
        status=status,
    )


_Decide = Callable[
    [Principal, uuid.UUID, str | None, str, Mapping[str, str] | None],
    Awaitable[dict[str, Any]],
]


async def _decide(request: web.Request, verb: str) -> web.Response:
    service = request.app[ELEVATIONS]
    decide: dict[str, _Decide] = {
        "approve": service.approve,
        "deny": service.deny,
        "cancel": service.cancel,
        "review": service.review,
    }
    elevation_id = _elevation_id(request)
    await decide[verb](
        principal_of(request),
        elevation_id,
        body_of(request, Comment).comment,
        request[REQUEST_ID],
        _CLIENT,
    )
    return redirect(request, f"/console/elevations/{elevation_id}")


@refusals_shown_by(_decision_refused)
async def approve(request: web.Request) -> web.Response:
    return await _decide(request, "approve")


@refusals_shown_by(_decision_refused)
async def deny(request: web.Request) -> web.Response:
    return await _decide(request, "deny")


@refusals_shown_by(_decision_refused)
async def cancel(request: web.Request) -> web.Response:
    return await _decide(request, "cancel")


@refusals_shown_by(_decision_refused)
async def review(request: web.Request) -> web.Response:
    return await _decide(request, "review")


@refusals_shown_by(_decision_refused)
async def redeem(request: web.Request) -> web.Response:
    grant = await request.app[ELEVATIONS].redeem(
        principal_of(request),
        _elevation_id(request),
        body_of(request, TtlRequest).ttl,
        request[REQUEST_ID],
        client=_CLIENT,
    )
    # Shown once, as a standing credential is: no-store, never in a URL, never kept.
    return page(
        request,
        "credential.html",
        status=201,
        grant=grant,
        fields=shown_fields(grant["credential"]),
    )


# --- approver ------------------------------------------------------------------------------


async def approvals(request: web.Request) -> web.Response:
    principal = principal_of(request)
    service = request.app[ELEVATIONS]
    return page(
        request,
        "approvals.html",
        queue=await service.approval_queue(principal, limit=_LIMIT),
        reviews=await service.review_queue(principal, limit=_LIMIT),
    )
