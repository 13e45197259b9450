"""The live-grant quota across replicas: the N+1th live grant is refused on either one.

Two brokers on the session's one ledger and one OpenBao, each with ``quota_live_grants=2``
and nothing else in common: their own pools, token buckets and in-memory locks. What
holds the count for the deployment is the ledger (issued-and-unended grants plus intents
whose mint is in flight) read under one PostgreSQL advisory lock per (subject, secret),
so a race over both replicas admits exactly the quota. Counted in OpenBao too: the
leases under ``database/creds/orders-ro`` that appeared during a test are exactly the
ones the client was given.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.backends import vault_leases
from tests.support.brokers import RunningBroker, running_broker
from tests.support.http import auth, post_credentials
from tests.support.ledger import ledger_rows
from tests.support.tokens import fresh_subject, mint

_LIVE = 2
_SECRET = "db/orders-ro"  # the demo's engineering role grants it (max_ttl 1h)
_LEASES = "database/creds/orders-ro"
_RACE = 6  # concurrent requests, split over both replicas


@pytest.fixture(scope="module")
async def replicas(
    broker_settings: Settings,
) -> AsyncIterator[tuple[RunningBroker, RunningBroker]]:
    """Two replicas on the session ledger with the live-grant quota at two."""
    limits: dict[str, Any] = {"quota_rate": 10.0, "quota_burst": 40, "quota_live_grants": _LIVE}
    async with (
        running_broker(broker_settings, replica_id="quota-r1", **limits) as r1,
        running_broker(broker_settings, replica_id="quota-r2", **limits) as r2,
    ):
        yield r1, r2


async def _ask(
    http: aiohttp.ClientSession, replica: RunningBroker, token: str
) -> tuple[int, dict[str, Any], str | None]:
    async with post_credentials(
        http, replica.url, token, _SECRET, ttl="10m", reason="quota across replicas"
    ) as r:
        return r.status, await r.json(), r.headers.get("Retry-After")


async def _revoke(
    http: aiohttp.ClientSession, replica: RunningBroker, token: str, grant_id: str
) -> None:
    async with http.delete(f"{replica.url}/v1/grants/{grant_id}", headers=auth(token)) as r:
        assert r.status == 200, await r.text()


async def _leases(stack: DevStack) -> set[str]:
    """OpenBao's own list, read with its root token (not through either broker)."""
    return set(await vault_leases(stack.bao.addr, stack.bao.root_token, _LEASES))


def _refused(answer: tuple[int, dict[str, Any], str | None]) -> None:
    status, body, retry_after = answer
    assert (status, body["error"]["code"]) == (429, "quota_exceeded"), answer
    assert f"limit {_LIVE} per principal" in body["error"]["message"], body
    assert retry_after is not None and int(retry_after) >= 1, answer


async def test_the_next_live_grant_is_refused_on_either_replica(
    replicas: tuple[RunningBroker, RunningBroker],
    broker_settings: Settings,
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    r1, r2 = replicas
    subject = fresh_subject("quota-replicas")
    token = mint(broker_settings, subject, ["engineering"])
    before = await _leases(stack)

    first = await _ask(http, r1, token)
    second = await _ask(http, r2, token)
    assert (first[0], second[0]) == (201, 201), (first, second)
    # The third is refused on both, though each replica issued only one of the two.
    _refused(await _ask(http, r1, token))
    _refused(await _ask(http, r2, token))

    # Revoked on one replica, the slot is free on the other.
    await _revoke(http, r2, token, first[1]["id"])
    third = await _ask(http, r1, token)
    assert third[0] == 201, third
    _refused(await _ask(http, r2, token))
    _refused(await _ask(http, r1, token))

    # In OpenBao: the three leases given out appeared, the revoked one is gone, nothing else.
    live = {second[1]["lease_id"], third[1]["lease_id"]}
    assert (await _leases(stack)) - before == live
    rows = await ledger_rows(stack, "subject = $1 AND secret = $2", subject, _SECRET)
    issued = [r for r in rows if r["event"] == "grant.issued"]
    assert sorted(r["replica"] for r in issued) == ["quota-r1", "quota-r1", "quota-r2"]
    # Four refusals, not one row among them.
    events = sorted(r["event"] for r in rows)
    assert events == ["grant.intent"] * 3 + ["grant.issued"] * 3 + ["grant.revoked"], events

    for grant in (second[1], third[1]):
        await _revoke(http, r1, token, grant["id"])
    assert not (await _leases(stack)) & live


async def _race(
    http: aiohttp.ClientSession, replicas: tuple[RunningBroker, ...], token: str
) -> list[dict[str, Any]]:
    """``_RACE`` requests at once, alternating replicas; the grants of those admitted."""
    answers = await asyncio.gather(*(_ask(http, replicas[i % 2], token) for i in range(_RACE)))
    for answer in answers:
        if answer[0] != 201:
            _refused(answer)
    return [body for status, body, _ in answers if status == 201]


async def test_a_race_over_both_replicas_admits_exactly_the_quota(
    replicas: tuple[RunningBroker, RunningBroker],
    broker_settings: Settings,
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    subject = fresh_subject("quota-race")
    token = mint(broker_settings, subject, ["engineering"])
    before = await _leases(stack)

    # From none live: exactly two of six.
    issued = await _race(http, replicas, token)
    assert len(issued) == _LIVE, issued
    # One freed: exactly one more. Both replicas' first requests count at once, and both
    # would see one slot free if the count were not taken in turns.
    await _revoke(http, replicas[1], token, issued.pop()["id"])
    issued += await _race(http, replicas, token)
    assert len(issued) == _LIVE, issued

    # In OpenBao: exactly the two leases the client holds (the revoked one is gone).
    lease_ids = {g["lease_id"] for g in issued}
    assert (await _leases(stack)) - before == lease_ids
    rows = await ledger_rows(stack, "subject = $1 AND secret = $2", subject, _SECRET)
    events = sorted(r["event"] for r in rows)
    # Nine refusals and no row for any of them.
    assert events == ["grant.intent"] * 3 + ["grant.issued"] * 3 + ["grant.revoked"], events

    for grant in issued:
        await _revoke(http, replicas[0], token, grant["id"])
    assert not (await _leases(stack)) & lease_ids
