"""Every refused request of a known subject is evidence: one row, never two.

Policy denials are recorded by the service (``grant.denied``); every other 4xx of an
authenticated caller — self-approval, someone else's grant, a closed elevation — is
recorded once by the middleware as ``request.rejected``.
"""

from __future__ import annotations

import uuid

import aiohttp

from broker.stack.devstack import DevStack
from tests.support.brokers import RunningBroker
from tests.support.http import auth, new_request_id
from tests.support.ledger import ledger_rows


async def _post(
    http: aiohttp.ClientSession, url: str, token: str, body: dict[str, object]
) -> tuple[int, dict[str, object], str]:
    request_id = new_request_id()
    async with http.post(url, json=body, headers=auth(token, request_id)) as r:
        return r.status, await r.json(), request_id


async def test_self_approval_attempt_is_recorded(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession, stack: DevStack
) -> None:
    status, elevation, _ = await _post(
        http,
        f"{broker.url}/v1/elevations",
        tokens["alice"],
        {"secret": "stripe/prod", "reason": "investigating a refund dispute", "ticket": "INC-9"},
    )
    assert status == 201, elevation
    status, body, request_id = await _post(
        http, f"{broker.url}/v1/elevations/{elevation['id']}/approve", tokens["alice"], {}
    )
    assert status == 403 and body["error"]["code"] == "self_approval"  # type: ignore[index]
    rows = await ledger_rows(stack, "request_id = $1", request_id)
    assert [(r["event"], r["outcome"], r["subject"]) for r in rows] == [
        ("request.rejected", "self_approval", "alice")
    ]


async def test_denial_is_recorded_once(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession, stack: DevStack
) -> None:
    status, _, request_id = await _post(
        http, f"{broker.url}/v1/credentials", tokens["carol"], {"secret": "db/orders-ro"}
    )
    assert status == 403
    rows = await ledger_rows(stack, "request_id = $1", request_id)
    assert [r["event"] for r in rows] == ["grant.denied"]


async def test_probing_someone_elses_grant_is_recorded(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession, stack: DevStack
) -> None:
    request_id = new_request_id()
    async with http.delete(
        f"{broker.url}/v1/grants/{uuid.uuid4()}", headers=auth(tokens["bob"], request_id)
    ) as r:
        assert r.status == 404
    rows = await ledger_rows(stack, "request_id = $1", request_id)
    assert [(r["event"], r["outcome"]) for r in rows] == [("request.rejected", "grant_not_found")]


async def test_unauthenticated_requests_are_not_recorded_one_by_one(
    broker: RunningBroker, http: aiohttp.ClientSession, stack: DevStack
) -> None:
    request_id = new_request_id()
    async with http.post(
        f"{broker.url}/v1/credentials",
        json={"secret": "stripe/test"},
        headers={"X-Request-Id": request_id},
    ) as r:
        assert r.status == 401
    assert await ledger_rows(stack, "request_id = $1", request_id) == []
