"""Step-up elevation end to end, against real OpenBao and Postgres (issue 3).

Privileged secrets are only minted after a second person approved: the happy paths for a
database login and a KV value (credential used for real, ledger read back in order), two-of-N
and two-factor quorums (also under concurrent approvals), the window clipping TTLs and
closing, break-glass with its review, cancel/admin-end revoking what was minted, two replicas
sharing state through the ledger, and webhook notifications.

The rules and their error codes are in ``tests/test_elevation_rules.py``; the helpers both
use are in ``tests/support/elevation.py``. Scenarios that differ only in who does what and
what they see are one parametrized test each (the happy paths, the ways a window closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.web.keys import ELEVATIONS
from tests.support.backends import LOGIN_REFUSED, admin_leases, db_login, lease_ttl, login_refused
from tests.support.brokers import RunningBroker, running_broker
from tests.support.elevation import (
    REASON,
    SRE_ONE,
    ElevationApi,
    can_insert_order,
    elevation_rows,
    events_of,
    nothing_minted,
)
from tests.support.http import expect_error, parse_ts
from tests.support.ledger import ledger_rows, ledger_text_count
from tests.support.polling import poll
from tests.support.tokens import mint

# --- 1, 2. happy paths: a privileged database login and a privileged KV value ---------------


@dataclass(frozen=True)
class HappyPath:
    """One privileged secret, requested by alice and approved by an SRE lead.

    ``credential_used`` checks the credential against the real backend and returns the
    values that must appear nowhere in the ledger.
    """

    secret: str
    ask: dict[str, str]  # request fields besides the secret and the reason
    approver: str
    duration: int  # the window asked for, or the role's max_duration, in seconds
    events: list[str]
    deciders: list[str]  # subjects of the rows, in order
    credential_used: Callable[[DevStack, dict[str, Any]], Awaitable[list[str]]]


async def _database_login_used(stack: DevStack, grant: dict[str, Any]) -> list[str]:
    cred = grant["credential"]
    assert set(cred) == {"username", "password"}
    assert grant["role"] == "orders-dba"
    assert grant["lease_id"].startswith("database/creds/orders-admin/")
    # Default TTL is the role's 30m; inside the 20m window it is clipped to the window.
    assert await lease_ttl(stack, grant["lease_id"]) <= 1200
    await can_insert_order(stack, cred)
    return [cred["password"]]


async def _kv_value_used(stack: DevStack, grant: dict[str, Any]) -> list[str]:
    expected = dict(stack.demo.secret_values["stripe/prod"])
    assert grant["credential"]["data"] == expected
    assert grant["lease_id"] is None
    return list(expected.values())


_HAPPY_PATHS = [
    pytest.param(
        HappyPath(
            secret="db/orders-admin",
            ask={"duration": "20m"},
            approver="bob",
            duration=1200,
            events=[
                "elevation.requested",
                "elevation.approved",
                "elevation.activated",
                "grant.intent",
                "grant.issued",
            ],
            deciders=["alice", "bob", "bob", "alice", "alice"],
            credential_used=_database_login_used,
        ),
        id="database-login",
    ),
    pytest.param(
        HappyPath(
            secret="stripe/prod",
            ask={"ticket": "INC-123"},  # no duration asked: the role's max_duration
            approver="dana",
            duration=3600,
            events=[
                "elevation.requested",
                "elevation.approved",
                "elevation.activated",
                "grant.issued",
            ],
            deciders=["alice", "dana", "dana", "alice"],
            credential_used=_kv_value_used,
        ),
        id="kv-value",
    ),
]


@pytest.mark.parametrize("path", _HAPPY_PATHS)
async def test_happy_path(
    path: HappyPath,
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = ElevationApi(http, broker.url)
    alice, approver = tokens["alice"], tokens[path.approver]

    created = await api.requested(alice, secret=path.secret, **path.ask)
    eid = created["id"]
    assert created["status"] == "pending"
    assert created["approvals_required"] == SRE_ONE
    assert created["approvals"] == []
    assert created["expires_at"] and created["window_ends_at"] is None
    assert created["duration"] == path.duration
    assert created["requester"] == "alice" and created["reason"] == REASON
    assert created["ticket"] == path.ask.get("ticket")
    assert created["can_decide"] is False  # never for one's own request

    # The SRE lead sees what they may decide; alice sees her own.
    pending = {e["id"]: e for e in await api.list(approver, "?status=pending")}
    assert eid in pending and pending[eid]["can_decide"] is True
    mine = {e["id"]: e for e in await api.list(alice, "?status=pending")}
    assert eid in mine and mine[eid]["can_decide"] is False

    approved = await api.approved(approver, eid)
    assert approved["status"] == "approved"
    assert [a["approver"] for a in approved["approvals"]] == [path.approver]
    assert approved["approvals"][0]["groups"] == ["sre-leads"]
    window_end = parse_ts(approved["window_ends_at"])
    approved_at = parse_ts(approved["approved_at"])
    window = timedelta(seconds=path.duration)
    assert window - timedelta(seconds=10) <= window_end - approved_at <= window
    assert eid not in {e["id"] for e in await api.list(approver, "?status=pending")}

    grant = await api.redeemed(alice, eid)
    try:
        assert grant["secret"] == path.secret
        assert parse_ts(grant["expires_at"]) <= window_end
        secret_values = await path.credential_used(stack, grant)

        status, el = await api.get(alice, eid)
        assert status == 200 and el["grants"] == [grant["id"]]

        rows = await elevation_rows(stack, eid)
        assert events_of(rows) == path.events, events_of(rows)
        assert [r["subject"] for r in rows] == path.deciders
        for r in rows:
            assert r["policy_version"] == grant["policy_version"], r
            assert r["secret"] == path.secret
            for value in secret_values:
                assert value not in r["_text"], f"a secret value in ledger row {r['seq']}"
        assert rows[0]["body"]["reason"] == REASON
        assert rows[0]["body"].get("ticket") == path.ask.get("ticket")
        issued = rows[-1]
        assert issued["grant_id"] == uuid.UUID(grant["id"])
        assert issued["lease_id"] == grant["lease_id"]
        assert issued["body"]["elevation_id"] == eid
        assert issued["body"].get("ticket") == path.ask.get("ticket")
        if "username" in grant["credential"]:
            assert issued["body"]["username"] == grant["credential"]["username"]
        for value in secret_values:
            assert await ledger_text_count(stack, value) == 0
    finally:
        await api.revoke_grant(alice, grant["id"])


# --- 4. two-of-N, and concurrent approvals ------------------------------------------------


async def test_two_of_n_needs_two_distinct_approvers(
    stack: DevStack,
    elevation_variants: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = ElevationApi(http, elevation_variants.url)
    created = await api.requested(tokens["alice"], secret="db/orders-admin-2of2")
    eid = created["id"]
    assert created["approvals_required"] == [{"approver_groups": ["sre-leads"], "approvals": 2}]

    after_bob = await api.approved(tokens["bob"], eid)
    assert after_bob["status"] == "pending" and after_bob["window_ends_at"] is None
    with_dana = {e["id"]: e for e in await api.list(tokens["dana"], "?status=pending")}
    assert with_dana[eid]["can_decide"] is True
    # bob again: one vote per approver, the request stays pending.
    expect_error(await api.approve(tokens["bob"], eid), 409, "already_voted")
    async with nothing_minted(stack):
        expect_error(await api.redeem(tokens["alice"], eid), 409, "elevation_not_active")

    after_dana = await api.approved(tokens["dana"], eid)
    assert after_dana["status"] == "approved"
    assert sorted(a["approver"] for a in after_dana["approvals"]) == ["bob", "dana"]

    rows = await elevation_rows(stack, eid)
    assert events_of(rows) == [
        "elevation.requested",
        "elevation.approved",
        "elevation.approved",
        "elevation.activated",
    ]
    assert rows[-1]["body"]["approvers"] == ["bob", "dana"]


async def test_concurrent_approvals_count_once(
    stack: DevStack,
    elevation_variants: RunningBroker,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = ElevationApi(http, elevation_variants.url)
    alice, bob, dana = tokens["alice"], tokens["bob"], tokens["dana"]

    # Two-of-N: bob and dana at the same moment, ten times over.
    ids = [(await api.requested(alice, secret="db/orders-admin-2of2"))["id"] for _ in range(10)]
    results = await asyncio.gather(*(api.approve(t, eid) for eid in ids for t in (bob, dana)))
    assert [s for s, _ in results] == [200] * 20, results
    for eid in ids:
        code, el = await api.get(alice, eid)
        assert code == 200 and el["status"] == "approved", el
        rows = await elevation_rows(stack, eid)
        kinds = events_of(rows)
        assert kinds.count("elevation.activated") == 1, kinds
        assert kinds.count("elevation.approved") == 2, kinds

    # bob's double vote fired concurrently: one vote recorded, still pending.
    eid = (await api.requested(alice, secret="db/orders-admin-2of2"))["id"]
    double = await asyncio.gather(api.approve(bob, eid), api.approve(bob, eid))
    assert sorted(s for s, _ in double) == [200, 409], double
    loser = next(r for r in double if r[0] == 409)
    expect_error(loser, 409, "already_voted")
    rows = await elevation_rows(stack, eid)
    assert [r["subject"] for r in rows if r["event"] == "elevation.approved"] == ["bob"]
    assert (await api.get(alice, eid))[1]["status"] == "pending"

    # One-of-N (the demo role): two approvers racing activate it exactly once.
    main = ElevationApi(http, broker.url)
    for _ in range(5):
        eid = (await main.requested(alice, secret="db/orders-admin"))["id"]
        raced = await asyncio.gather(main.approve(bob, eid), main.approve(dana, eid))
        assert 200 in [s for s, _ in raced], raced
        for r in raced:
            if r[0] != 200:
                expect_error(r, 409, "elevation_not_pending")
        kinds = events_of(await elevation_rows(stack, eid))
        assert kinds.count("elevation.activated") == 1, kinds
        assert kinds.count("elevation.approved") == sum(s == 200 for s, _ in raced)
        await main.cancel(alice, eid)


# --- 5. two factors ------------------------------------------------------------------------


async def test_two_factors_need_two_people(
    stack: DevStack,
    broker_settings: Settings,
    elevation_variants: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = ElevationApi(http, elevation_variants.url)
    alice, bob, erin = tokens["alice"], tokens["bob"], tokens["erin"]

    eid = (await api.requested(alice, secret="db/orders-admin-2f"))["id"]
    assert (await api.approved(bob, eid))["status"] == "pending"
    # A second SRE lead does not meet the security factor either.
    assert (await api.approved(tokens["dana"], eid))["status"] == "pending"
    done = await api.approved(erin, eid)
    assert done["status"] == "approved"
    grant = await api.redeemed(alice, eid)
    await api.revoke_grant(alice, grant["id"])

    # frank holds both groups: alone he meets one factor, never both.
    frank = mint(broker_settings, "frank", ["sre-leads", "security-admins"])
    eid = (await api.requested(alice, secret="db/orders-admin-2f"))["id"]
    after_frank = await api.approved(frank, eid)
    assert after_frank["status"] == "pending"
    assert after_frank["approvals"][0]["groups"] == ["security-admins", "sre-leads"]
    expect_error(await api.approve(frank, eid), 409, "already_voted")
    async with nothing_minted(stack):
        expect_error(await api.redeem(alice, eid), 409, "elevation_not_active")
    # erin (security) completes it: frank is counted as the SRE lead.
    assert (await api.approved(erin, eid))["status"] == "approved"
    kinds = events_of(await elevation_rows(stack, eid))
    assert kinds.count("elevation.activated") == 1


# --- 6. the window clips TTLs and then closes ---------------------------------------------


async def test_window_end_clips_every_ttl(
    stack: DevStack,
    elevation_variants: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = ElevationApi(http, elevation_variants.url)
    alice = tokens["alice"]
    eid = (await api.requested(alice, secret="db/orders-admin-short", duration="1h"))["id"]
    approved = await api.approved(tokens["bob"], eid)
    assert approved["duration"] == 3  # asked for 1h, clipped to max_duration
    window_end = parse_ts(approved["window_ends_at"])

    # Redeem back to back (three callers) until the window refuses: every second boundary
    # of the remaining time is crossed many times, and no credential may outlive the window.
    grants: list[dict[str, Any]] = []
    refusals: list[tuple[int, Any]] = []

    async def redeem_until_refused() -> None:
        while datetime.now(UTC) < window_end + timedelta(seconds=1):
            result = await api.redeem(alice, eid)
            if result[0] != 201:
                refusals.append(result)
                return
            grants.append(result[1])

    await asyncio.gather(*(redeem_until_refused() for _ in range(3)))
    assert grants, "nothing could be redeemed inside a 3s window"
    late = [
        (g["expires_at"], approved["window_ends_at"])
        for g in grants
        if parse_ts(g["expires_at"]) > window_end
    ]
    assert late == [], f"{len(late)}/{len(grants)} grants outlive the window: {late[:3]}"
    assert len(refusals) == 3
    for refused in refusals:
        expect_error(refused, 409, "elevation_not_active")


async def test_window_elapsed_refuses_and_sweeper_records_it(
    stack: DevStack,
    elevation_variants: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = ElevationApi(http, elevation_variants.url)
    alice = tokens["alice"]
    eid = (await api.requested(alice, secret="db/orders-admin-short"))["id"]
    approved = await api.approved(tokens["bob"], eid)
    window_end = parse_ts(approved["window_ends_at"])
    grant = await api.redeemed(alice, eid)
    assert parse_ts(grant["expires_at"]) - parse_ts(grant["issued_at"]) <= timedelta(seconds=3)

    await asyncio.sleep(max(0.0, (window_end - datetime.now(UTC)).total_seconds()) + 0.1)
    async with nothing_minted(stack):
        expect_error(await api.redeem(alice, eid), 409, "elevation_not_active")
    rows = await poll(
        lambda: elevation_rows(stack, eid),
        lambda rows: "elevation.expired" in events_of(rows),
        timeout=5,
    )
    expired = [r for r in rows if r["event"] == "elevation.expired"]
    assert len(expired) == 1
    assert expired[0]["body"]["why"] == "window_elapsed"
    assert expired[0]["outcome"] == "window_elapsed"
    assert expired[0]["policy_version"]
    code, el = await api.get(alice, eid)
    assert code == 200 and el["status"] == "ended" and el["closed"]["why"] == "window_elapsed"
    expect_error(await api.approve(tokens["dana"], eid), 409, "elevation_not_pending")
    # The login died with the window: OpenBao ended the lease at the clipped TTL.
    cred = grant["credential"]
    assert await poll(
        lambda: login_refused(stack, cred["username"], cred["password"]), bool, timeout=5
    )


# --- 7. break-glass ------------------------------------------------------------------------


async def test_break_glass_issued_flagged_and_listed_until_reviewed(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = ElevationApi(http, broker.url)
    alice, bob, erin = tokens["alice"], tokens["bob"], tokens["erin"]

    created = await api.requested(alice, secret="db/orders-admin", break_glass=True)
    eid = created["id"]
    assert created["status"] == "approved" and created["break_glass"] is True
    assert created["window_ends_at"] is not None and created["approvals"] == []
    grant = await api.redeemed(alice, eid)
    try:
        await can_insert_order(stack, grant["credential"])

        for token in (erin, alice):
            unreviewed = {e["id"]: e for e in await api.list(token, "?break_glass=unreviewed")}
            assert eid in unreviewed and unreviewed[eid]["break_glass"] is True

        expect_error(await api.review(alice, eid, "all fine"), 403, "self_review")
        expect_error(await api.review(bob, eid, "all fine"), 403, "not_a_reviewer")
        expect_error(await api.review(erin, eid), 400, "comment_required")
        # Nobody approves a break-glass use: it is not pending.
        expect_error(await api.approve(bob, eid), 409, "elevation_not_pending")
        assert eid in {e["id"] for e in await api.list(erin, "?break_glass=unreviewed")}

        status, reviewed = await api.review(erin, eid, "checked the incident timeline")
        assert status == 200, reviewed
        assert reviewed["review"]["by"] == "erin"
        for token in (erin, alice):
            assert eid not in {e["id"] for e in await api.list(token, "?break_glass=unreviewed")}
        expect_error(await api.review(erin, eid, "again"), 409, "already_reviewed")

        rows = await elevation_rows(stack, eid)
        assert events_of(rows) == [
            "elevation.requested",
            "elevation.activated",
            "grant.intent",
            "grant.issued",
            "elevation.reviewed",
        ], events_of(rows)
        assert rows[0]["outcome"] == "break_glass" and rows[0]["body"]["break_glass"] is True
        assert rows[1]["outcome"] == "break_glass" and rows[1]["subject"] == "alice"
        assert rows[-1]["subject"] == "erin"
        assert all(r["policy_version"] for r in rows)

        async with http.get(f"{broker.url}/metrics") as r:
            text = await r.text()
        values = [
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("broker_break_glass_total ")
        ]
        assert values and values[0] >= 1, values
    finally:
        await api.revoke_grant(alice, grant["id"])


# --- 8. cancel / admin end revoke what was minted -----------------------------------------


@dataclass(frozen=True)
class Closing:
    """Who requests, approves and then closes an elevation during its window."""

    requester: str
    approver: str
    closer: str
    status: str  # what the close answers
    event: str  # the ledger row it writes
    refused: tuple[str, int, str] | None = None  # someone else trying first: who, status, code


_CLOSINGS = [
    pytest.param(
        Closing(
            "alice", "bob", "alice", "cancelled", "elevation.cancelled",
            # Only the requester (or an admin) cancels.
            refused=("dana", 403, "not_requester"),
        ),
        id="requester-cancels",
    ),
    pytest.param(
        # bob is an engineer too, so eligible; dana approves him; erin is an admin.
        Closing("bob", "dana", "erin", "ended", "elevation.ended"),
        id="admin-ends-someone-elses",
    ),
]  # fmt: skip


@pytest.mark.parametrize("closing", _CLOSINGS)
async def test_closing_during_window_revokes_the_login(
    closing: Closing,
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = ElevationApi(http, broker.url)
    requester = tokens[closing.requester]
    eid = (await api.requested(requester, secret="db/orders-admin"))["id"]
    await api.approved(tokens[closing.approver], eid)
    grant = await api.redeemed(requester, eid)
    cred = grant["credential"]
    conn = await db_login(stack, cred["username"], cred["password"])  # the login works
    try:
        if closing.refused is not None:
            who, status, code = closing.refused
            expect_error(await api.cancel(tokens[who], eid), status, code)
        status, out = await api.cancel(tokens[closing.closer], eid)
        assert status == 200 and out["status"] == closing.status, out
        assert out["closed"]["by"] == closing.closer
        # The open session dies with the login.
        with pytest.raises(LOGIN_REFUSED):
            await conn.fetchval("SELECT count(*) FROM public.orders")
    finally:
        await conn.close()
    assert await login_refused(stack, cred["username"], cred["password"])
    assert grant["lease_id"] not in await admin_leases(stack)

    rows = await elevation_rows(stack, eid)
    closed = [r for r in rows if r["event"] == closing.event]
    assert len(closed) == 1 and closed[0]["subject"] == closing.closer
    revoked = await ledger_rows(
        stack, "e.grant_id = $1 AND e.event = 'grant.revoked'", uuid.UUID(grant["id"])
    )
    assert len(revoked) == 1 and revoked[0]["subject"] == closing.closer
    assert revoked[0]["body"]["grant_subject"] == closing.requester
    # The revocation names the elevation it ended under: the story reads in one query.
    assert revoked[0]["body"]["elevation_id"] == eid
    assert events_of(rows)[-2:] == [closing.event, "grant.revoked"], events_of(rows)
    async with nothing_minted(stack):
        expect_error(await api.redeem(requester, eid), 409, "elevation_not_active")


# --- 9. replicas ---------------------------------------------------------------------------


async def test_replicas_share_state_through_the_ledger(
    stack: DevStack,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    async with (
        running_broker(broker_settings, replica_id="elev-r1") as one,
        running_broker(broker_settings, replica_id="elev-r2") as two,
    ):
        a, b = ElevationApi(http, one.url), ElevationApi(http, two.url)
        eid = (await a.requested(tokens["alice"], secret="db/orders-admin"))["id"]
        assert eid in {e["id"] for e in await b.list(tokens["bob"], "?status=pending")}
        assert (await b.approved(tokens["bob"], eid))["status"] == "approved"
        # The other replica sees the decision: a second vote is refused there.
        expect_error(await a.approve(tokens["dana"], eid), 409, "elevation_not_pending")
        grant = await a.redeemed(tokens["alice"], eid)
        try:
            await can_insert_order(stack, grant["credential"])
        finally:
            await b.revoke_grant(tokens["alice"], grant["id"])
        rows = await elevation_rows(stack, eid)
        by_event = {r["event"]: r["replica"] for r in rows}
        assert by_event["elevation.requested"] == "elev-r1"
        assert by_event["elevation.approved"] == "elev-r2"
        assert by_event["elevation.activated"] == "elev-r2"
        assert by_event["grant.issued"] == "elev-r1"


# --- 10. webhooks --------------------------------------------------------------------------


@dataclass
class Hook:
    status: int = 200
    delay: float = 0.0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    url: str = ""


@contextlib.asynccontextmanager
async def hook_server(*hooks: Hook) -> AsyncIterator[None]:
    runners = []
    try:
        for hook in hooks:

            def handler_for(h: Hook) -> Callable[[web.Request], Awaitable[web.Response]]:
                async def handler(request: web.Request) -> web.Response:
                    h.content_types.append(request.content_type)
                    h.bodies.append(await request.json())
                    if h.delay:
                        await asyncio.sleep(h.delay)
                    return web.Response(status=h.status)

                return handler

            app = web.Application()
            app.router.add_post("/hook/T0SECRET", handler_for(hook))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook/T0SECRET"
        yield
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_webhook_tells_approvers_without_secrets_and_never_blocks(
    stack: DevStack,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    good = Hook()
    bad = Hook(status=500, delay=1.5)  # slow and failing: must cost the API nothing
    async with (
        hook_server(good, bad),
        running_broker(
            broker_settings, replica_id="elev-hooks", webhook_urls=(good.url, bad.url)
        ) as running,
    ):
        api = ElevationApi(http, running.url)
        t0 = time.monotonic()
        eid = (await api.requested(tokens["alice"], secret="stripe/prod", ticket="INC-77"))["id"]
        await api.approved(tokens["bob"], eid)
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0, f"request + approve took {elapsed:.2f}s with a slow webhook"
        grant = await api.redeemed(tokens["alice"], eid)

        def kinds(h: Hook) -> list[str]:
            return [b["kind"] for b in h.bodies if b.get("fields", {}).get("elevation_id") == eid]

        got = await poll(
            lambda: asyncio.sleep(0, kinds(good)),
            lambda k: {"elevation.requested", "elevation.approved"} <= set(k),
        )
        assert {"elevation.requested", "elevation.approved"} <= set(got), got
        mine = [b for b in good.bodies if b["fields"].get("elevation_id") == eid]
        for body in mine:
            assert set(body) == {"text", "kind", "fields"}
            assert isinstance(body["text"], str) and body["text"]
            assert body["fields"]["secret"] == "stripe/prod"
            assert body["fields"]["requester"] == "alice"
        assert set(good.content_types) == {"application/json"}
        secret_values = list(stack.demo.secret_values["stripe/prod"].values())
        for h in (good, bad):
            for body in h.bodies:
                text = str(body)
                for value in [*secret_values, *grant["credential"]["data"].values()]:
                    assert value not in text

        # The failing hook is retried in the background.
        retried = await poll(
            lambda: asyncio.sleep(0, kinds(bad).count("elevation.requested")),
            lambda n: n >= 2,
            timeout=8,
        )
        assert retried >= 2, bad.bodies


# --- the sweep leaves open elevations alone ---------------------------------------------


async def test_sweep_on_idle_broker_closes_nothing_open(
    elevation_variants: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    """An open window and a fresh request survive a sweep untouched."""
    api = ElevationApi(http, elevation_variants.url)
    pending = (await api.requested(tokens["alice"], secret="db/orders-admin-2of2"))["id"]
    active = (await api.requested(tokens["alice"], secret="db/orders-admin-2f"))["id"]
    await api.approved(tokens["bob"], active)
    await api.approved(tokens["erin"], active)
    await elevation_variants.app[ELEVATIONS].sweep()
    assert (await api.get(tokens["alice"], pending))[1]["status"] == "pending"
    assert (await api.get(tokens["alice"], active))[1]["status"] == "approved"
    await api.cancel(tokens["alice"], pending)
    await api.cancel(tokens["alice"], active)
