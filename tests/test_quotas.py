"""Quotas: limits declared in policy over the settings' defaults, and what they refuse.

Pure parts (token buckets, which limit holds, the policy syntax, the bulkhead) without
I/O; the rest against a broker of the test's own with real limits, real OpenBao and the
session ledger, each test with subjects of its own. The answers' shapes on both APIs and
the CLI's handling of ``Retry-After`` are in tests/test_quota_answers.py; fairness under
a flood in tests/reliability/test_fairness.py; replicas in tests/test_quotas_replicas.py.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from broker.errors import BackendBusy, PolicyError
from broker.metrics import Metrics
from broker.policy.loader import load_policy_documents
from broker.policy.model import CatalogEntry, Limits, Members, Role
from broker.quotas import effective, flush_refusals
from broker.quotas.buckets import TokenBuckets
from broker.quotas.bulkhead import Bulkhead
from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.web.keys import LEDGER, METRICS, QUOTAS
from tests.support.brokers import RunningBroker, running_broker
from tests.support.ledger import ledger_rows
from tests.support.policies import write_policies
from tests.support.tokens import fresh_subject, mint

# --- pure: buckets, which limit holds, policy syntax, bulkhead -----------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_spends_its_burst_then_paces() -> None:
    clock = _Clock()
    buckets = TokenBuckets(clock=clock)
    assert [buckets.take("k", 0.5, 3) for _ in range(3)] == [0, 0, 0]
    assert buckets.take("k", 0.5, 3) == 2  # one token every 2 s
    clock.now = 1.9
    assert buckets.take("k", 0.5, 3) == 1
    clock.now = 2.0
    assert buckets.take("k", 0.5, 3) == 0
    assert buckets.take("other", 0.5, 3) == 0  # buckets are per key
    clock.now = 1000.0
    assert buckets.available("k", 0.5, 3) == 3.0  # refills to the burst, never past it


def test_token_bucket_remembers_a_refusal_until_a_token_is_taken() -> None:
    clock = _Clock()
    buckets = TokenBuckets(clock=clock)
    assert not buckets.refused_last("k")  # never seen
    assert buckets.take("k", 1.0, 1) == 0
    assert not buckets.refused_last("k")
    assert buckets.take("k", 1.0, 1) == 1
    assert buckets.refused_last("k")  # asking again now would not be waiting as told
    clock.now = 1.0
    assert buckets.take("k", 1.0, 1) == 0  # waited: granted, and forgiven
    assert not buckets.refused_last("k")


def test_token_buckets_stay_bounded() -> None:
    buckets = TokenBuckets(max_buckets=100)
    for i in range(1000):
        buckets.take(i, 1.0, 5)
    assert len(buckets._buckets) <= 100


def _entry(engine: str = "database", **limits: Any) -> CatalogEntry:
    return CatalogEntry("db/x", engine, "database", "x", limits=Limits(**limits))  # type: ignore[arg-type]


def _role(**limits: Any) -> Role:
    return Role(
        name="r",
        description="",
        members=Members(frozenset({"g"}), frozenset(), frozenset()),
        secrets=("db/x",),
        max_ttl=600,
        default_ttl=600,
        privileged=False,
        elevation=None,
        capabilities=frozenset(),
        source="roles.yaml:1",
        limits=Limits(**limits),
    )


_DEFAULTS = Limits(rate=10.0, burst=40, live_grants=20, elevation_requests=20)


def test_the_tighter_declaration_holds_and_says_where_it_came_from() -> None:
    plain = effective(_DEFAULTS, _role(), _entry())
    assert (plain.rate, plain.burst, plain.rate_scope) == (10.0, 40, "default")
    assert (plain.live_grants, plain.live_scope) == (20, "default")
    # A role may raise a limit above the default (a busy service) ...
    raised = effective(_DEFAULTS, _role(rate=50.0, burst=100, live_grants=60), _entry())
    assert (raised.rate, raised.burst, raised.rate_scope) == (50.0, 100, "role:r")
    assert raised.live_grants == 60
    # ... and a catalog entry guarding a fragile backend caps it again.
    capped = effective(_DEFAULTS, _role(rate=50.0, live_grants=60), _entry(rate=2.0, live_grants=3))
    assert (capped.rate, capped.rate_scope, capped.live_grants) == (2.0, "secret:db/x", 3)
    assert capped.burst == 40  # the entry declared no burst: the default's
    # KV reads are not leases: only rate-limited.
    assert effective(_DEFAULTS, _role(live_grants=1), _entry("kv2")).live_grants is None
    # A denied request has no role or entry: the principal's default bucket.
    assert effective(_DEFAULTS, None, None).rate_scope == "default"


def _policy(catalog_limits: Any = None, role_limits: Any = None) -> dict[str, str]:
    entry: dict[str, Any] = {"engine": "kv2", "mount": "secret", "path": "a"}
    if catalog_limits is not None:
        entry["limits"] = catalog_limits
    role: dict[str, Any] = {
        "name": "r",
        "members": {"groups": ["g"]},
        "secrets": ["kv/a"],
        "max_ttl": "10m",
    }
    if role_limits is not None:
        role["limits"] = role_limits
    return {
        "catalog.yaml": yaml.safe_dump({"catalog": {"kv/a": entry}}),
        "roles.yaml": yaml.safe_dump({"roles": [role]}),
    }


def test_policy_limits_parse() -> None:
    policy = load_policy_documents(
        _policy({"rate": "30/m", "burst": 5}, {"rate": "2/s", "elevation_requests": 4})
    )
    assert policy.catalog["kv/a"].limits == Limits(rate=0.5, burst=5)
    assert policy.roles[0].limits == Limits(rate=2.0, elevation_requests=4)
    assert policy.roles[0].to_json()["limits"] == {"rate": 2.0, "elevation_requests": 4}


@pytest.mark.parametrize(
    ("catalog_limits", "role_limits", "message"),
    [
        ({"rate": "5"}, None, "must look like '5/s'"),
        ({"rate": "0/s"}, None, "more than 0"),
        ({"rate": 5}, None, "must look like"),
        ({"burst": 0}, None, "at least 1"),
        ({"live_grants": 2}, None, "a kv2 grant is not one"),
        ({"elevation_requests": 2}, None, "unknown key 'elevation_requests'"),
        ({}, None, "must not be empty"),
        (None, {"rates": "5/s"}, "unknown key 'rates'"),
        (None, {"live_grants": "many"}, "must be an integer"),
    ],
)
def test_policy_limits_refuse_mistakes(catalog_limits: Any, role_limits: Any, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_documents(_policy(catalog_limits, role_limits))
    assert any(message in e for e in caught.value.errors), caught.value.errors


async def test_bulkhead_queues_a_bounded_number_for_a_bounded_time() -> None:
    metrics = Metrics()
    bulkhead = Bulkhead("database", limit=1, queue=1, wait_seconds=0.2, metrics=metrics)
    await bulkhead.acquire()  # the one slot, held
    waiter = asyncio.ensure_future(bulkhead.acquire())
    await asyncio.sleep(0)
    assert bulkhead.waiting == 1
    with pytest.raises(BackendBusy) as full:  # queue full: shed at once
        await bulkhead.acquire()
    assert full.value.status == 503 and full.value.retry_after == 1
    with pytest.raises(BackendBusy):  # waited its 0.2 s: shed
        await waiter
    bulkhead.release()
    await bulkhead.acquire()  # the slot came back
    assert bulkhead.in_use == 1
    bulkhead.release()
    shed = metrics.registry.get_sample_value("broker_bulkhead_shed_total", {"engine": "database"})
    assert shed == 2


# --- a broker with real limits ---------------------------------------------------------------

_GROUP = "quota-testers"


def _quota_policies(dest: Path) -> Path:
    catalog = {
        # A database login capped at two live per principal by its catalog entry.
        "db/quota-ro": {
            "engine": "database",
            "mount": "database",
            "role": "orders-ro",
            "limits": {"live_grants": 2},
        },
        # A KV value paced at one a minute after a burst of two (its own bucket).
        "stripe/quota": {
            "engine": "kv2",
            "mount": "secret",
            "path": "stripe/test",
            "limits": {"rate": "1/m", "burst": 2},
        },
        "db/quota-admin": {"engine": "database", "mount": "database", "role": "orders-admin"},
    }
    roles = [
        {
            "name": "quota-testers",
            "members": {"groups": [_GROUP]},
            "secrets": ["db/quota-ro", "stripe/quota", "stripe/test"],
            "max_ttl": "10m",
        },
        {
            "name": "quota-dba",
            "members": {"groups": [_GROUP]},
            "secrets": ["db/quota-admin"],
            "max_ttl": "10m",
            "privileged": True,
            "elevation": {"approver_groups": ["sre-leads"], "max_duration": "1h"},
            "limits": {"elevation_requests": 2},
        },
    ]
    return write_policies(dest, catalog, roles)


@pytest.fixture(scope="module")
async def quota_broker(broker_settings: Settings) -> AsyncIterator[RunningBroker]:
    tmp = Path(tempfile.mkdtemp(prefix="quota-policies-"))
    try:
        async with running_broker(
            broker_settings,
            policies_dir=_quota_policies(tmp / "policies"),
            replica_id="quotas",
            quota_rate=10.0,
            quota_burst=40,
            quota_live_grants=20,
            quota_elevation_requests=20,
            # Flushed by the tests themselves, so a window holds exactly their refusals.
            quota_refusal_flush_seconds=3600.0,
        ) as running:
            yield running
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _post(
    http: aiohttp.ClientSession, url: str, token: str, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with http.post(
        url + path, json=body, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def test_live_grants_refuse_the_next_until_one_ends(
    quota_broker: RunningBroker,
    broker_settings: Settings,
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    subject = fresh_subject("quota-live")
    token = mint(broker_settings, subject, [_GROUP])
    ask = {"secret": "db/quota-ro", "ttl": 300}
    granted = [await _post(http, quota_broker.url, token, "/v1/credentials", ask) for _ in range(2)]
    assert [g[0] for g in granted] == [201, 201]
    status, body, headers = await _post(http, quota_broker.url, token, "/v1/credentials", ask)
    assert status == 429, body
    assert body["error"]["code"] == "quota_exceeded"
    assert "limit 2 per principal" in body["error"]["message"]
    assert "broker grants list --active" in body["error"]["message"]
    assert 250 <= int(headers["Retry-After"]) <= 300  # when the first of the two ends

    # Nothing was minted for the refusal: two intents, two issued rows, no more.
    rows = await ledger_rows(stack, "subject = $1 AND secret = $2", subject, "db/quota-ro")
    assert sorted(r["event"] for r in rows) == ["grant.intent"] * 2 + ["grant.issued"] * 2

    async with http.get(
        quota_broker.url + "/v1/me", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        me = await resp.json()
    assert {"secret": "db/quota-ro", "limit": 2, "live": 2} in me["limits"]["live_grants"]

    first = granted[0][1]["id"]
    async with http.delete(
        f"{quota_broker.url}/v1/grants/{first}", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200, await resp.text()
    status, body, _ = await _post(http, quota_broker.url, token, "/v1/credentials", ask)
    assert status == 201, body
    for grant in (granted[1][1], body):  # leave OpenBao as we found it
        async with http.delete(
            f"{quota_broker.url}/v1/grants/{grant['id']}",
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 200


async def test_a_flood_of_refusals_is_one_ledger_row(
    quota_broker: RunningBroker,
    broker_settings: Settings,
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    subject = fresh_subject("quota-flood")
    token = mint(broker_settings, subject, [_GROUP])
    ask = {"secret": "stripe/quota"}
    answers = await asyncio.gather(
        *(_post(http, quota_broker.url, token, "/v1/credentials", ask) for _ in range(30))
    )
    statuses = sorted(a[0] for a in answers)
    assert statuses == [201] * 2 + [429] * 28  # the entry's burst of two, then 1/m
    refused = [a for a in answers if a[0] == 429]
    assert {a[1]["error"]["code"] for a in refused} == {"rate_limited"}
    assert all(40 <= int(a[2]["Retry-After"]) <= 60 for a in refused)
    assert "set by secret 'stripe/quota'" in refused[0][1]["error"]["message"]
    # Its own bucket: the same principal still reads another secret on the default one.
    status, body, _ = await _post(
        http, quota_broker.url, token, "/v1/credentials", {"secret": "stripe/test"}
    )
    assert status == 201, body

    app = quota_broker.app
    await flush_refusals(app[LEDGER], app[QUOTAS].refusals, app[METRICS])
    rows = await ledger_rows(stack, "subject = $1", subject)
    events = sorted(r["event"] for r in rows)
    # Three issued reads, one aggregated refusal row: no per-request rows for 28 refusals.
    assert events == ["grant.issued"] * 3 + ["quota.refused"], events
    (tally,) = [r for r in rows if r["event"] == "quota.refused"]
    assert tally["body"]["total"] == 28
    assert tally["body"]["by_limit"] == {"rate_limited": 28}
    assert tally["body"]["by_secret"] == {"stripe/quota": 28}
    metrics = app[METRICS].registry
    assert (
        metrics.get_sample_value(
            "broker_quota_refusals_total", {"limit": "rate_limited", "principal_kind": "human"}
        )
        or 0
    ) >= 28
    assert (
        metrics.get_sample_value("broker_quota_principals_at_limit", {"limit": "rate_limited"}) == 1
    )


async def test_a_client_that_does_not_wait_as_told_is_made_to(
    quota_broker: RunningBroker, broker_settings: Settings, http: aiohttp.ClientSession
) -> None:
    """Refused, then asking again at once (a retry storm): the second refusal is answered
    only after half to all of ``quota_refusal_hold_seconds`` (1 s, jittered), so it cannot
    refuse itself at the broker's full speed."""
    token = mint(broker_settings, fresh_subject("quota-hold"), [_GROUP])
    ask = {"secret": "stripe/quota"}  # a burst of two, then 1/m
    for _ in range(2):
        status, body, _ = await _post(http, quota_broker.url, token, "/v1/credentials", ask)
        assert status == 201, body
    took = []
    for _ in range(2):
        started = time.monotonic()
        status, body, headers = await _post(http, quota_broker.url, token, "/v1/credentials", ask)
        took.append(time.monotonic() - started)
        assert (status, body["error"]["code"]) == (429, "rate_limited"), body
        assert 40 <= int(headers["Retry-After"]) <= 60
    assert took[0] < 0.45 and took[1] >= 0.48, took


async def test_elevation_requests_per_hour(
    quota_broker: RunningBroker, broker_settings: Settings, http: aiohttp.ClientSession
) -> None:
    subject = fresh_subject("quota-elev")
    token = mint(broker_settings, subject, [_GROUP])
    ask = {"secret": "db/quota-admin", "reason": "rotate the reporting views"}
    for _ in range(2):
        status, body, _ = await _post(http, quota_broker.url, token, "/v1/elevations", ask)
        assert status == 201, body
    status, body, headers = await _post(http, quota_broker.url, token, "/v1/elevations", ask)
    assert status == 429, body
    assert body["error"]["code"] == "quota_exceeded"
    assert (
        "2 elevation requests in the last hour (limit 2, set by role 'quota-dba')"
        in (body["error"]["message"])
    )
    assert 3500 <= int(headers["Retry-After"]) <= 3600
    async with http.get(
        quota_broker.url + "/v1/me", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        me = await resp.json()
    assert me["limits"]["elevation_requests"] == {"per_hour": 2, "used": 2}
