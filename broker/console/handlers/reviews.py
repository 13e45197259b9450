"""Access reviews in the console: the reviews I may see, one review with its
entitlements to keep or revoke (with a comment), completion, and (admin) opening one.
Each calls ``ReviewService`` as its ``/v1/reviews`` route does, under the same rule."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from broker.web.authn import principal_of
from broker.web.handlers import path_uuid
from broker.web.keys import REVIEWS
from broker.web.middleware import REQUEST_ID
from broker.web.models import ReviewDecision, ReviewListQuery, ReviewOpen
from broker.web.route import body_of, query_of

from ..render import page, redirect, refusals_shown_by

__all__ = ["complete_review", "decide_review", "open_review", "review", "reviews"]

_CLIENT = {"api": "console"}


def this_quarter(now: datetime | None = None) -> str:
    moment = now or datetime.now(UTC)
    return f"{moment.year}-Q{(moment.month - 1) // 3 + 1}"


async def reviews(request: web.Request) -> web.Response:
    q = query_of(request, ReviewListQuery)
    items = await request.app[REVIEWS].list_reviews(
        principal_of(request), period=q.period, limit=q.limit
    )
    return page(request, "reviews.html", reviews=items, quarter=this_quarter())


async def _open_refused(request: web.Request, status: int, code: str, message: str) -> web.Response:
    items = await request.app[REVIEWS].list_reviews(principal_of(request), period=None, limit=100)
    form = await request.post() if status != 413 else {}
    sent = {k: v for k in ("period", "reviewer_group") if isinstance(v := form.get(k), str)}
    return page(
        request,
        "reviews.html",
        status=status,
        reviews=items,
        quarter=this_quarter(),
        sent=sent,
        error=(code, message),
    )


@refusals_shown_by(_open_refused)
async def open_review(request: web.Request) -> web.Response:
    body = body_of(request, ReviewOpen)
    opened = await request.app[REVIEWS].open(
        principal_of(request),
        period=body.period,
        reviewer_group=body.reviewer_group,
        request_id=request[REQUEST_ID],
        client=_CLIENT,
    )
    return redirect(request, f"/console/reviews/{opened['id']}")


async def review(request: web.Request) -> web.Response:
    found = await request.app[REVIEWS].get(
        principal_of(request),
        path_uuid(request, "review_id", code="review_not_found", thing="review"),
    )
    return page(request, "review.html", review=found)


async def _decision_refused(
    request: web.Request, status: int, code: str, message: str
) -> web.Response:
    found = await request.app[REVIEWS].get(
        principal_of(request),
        path_uuid(request, "review_id", code="review_not_found", thing="review"),
    )
    return page(request, "review.html", status=status, review=found, error=(code, message))


@refusals_shown_by(_decision_refused)
async def decide_review(request: web.Request) -> web.Response:
    review_id = path_uuid(request, "review_id", code="review_not_found", thing="review")
    body = body_of(request, ReviewDecision)
    await request.app[REVIEWS].decide(
        principal_of(request),
        review_id,
        entitlement_id=body.entitlement_id,
        decision=body.decision,
        comment=body.comment,
        request_id=request[REQUEST_ID],
        client=_CLIENT,
    )
    return redirect(request, f"/console/reviews/{review_id}")


@refusals_shown_by(_decision_refused)
async def complete_review(request: web.Request) -> web.Response:
    review_id = path_uuid(request, "review_id", code="review_not_found", thing="review")
    await request.app[REVIEWS].complete(
        principal_of(request), review_id, request[REQUEST_ID], client=_CLIENT
    )
    return redirect(request, f"/console/reviews/{review_id}")
