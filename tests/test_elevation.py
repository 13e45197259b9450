"""Step-up elevation end to end, against real OpenBao and Postgres (issue 3).

Privileged secrets are only minted after a second person approved: the happy paths for a
database login and a KV value (credential used for real, ledger read back in order), two-of-N
and two-factor quorums (also under concurrent approvals), the window clipping TTLs and
closing, break-glass with its review, cancel/admin-end revoking what was minted, two replicas
sharing state through the ledger, and webhook notifications.

The rules and their error codes are in ``tests/test_elevation_rules.py``; the helpers below
are shared with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import hvac
import hvac.exceptions
import pytest
import yaml
from aiohttp import web

from broker.auth import DevIssuer
from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.web.keys import ELEVATIONS
from tests.support.backends import db_login
from tests.support.brokers import RunningBroker, start_broker
from tests.support.http import auth, parse_ts
from tests.support.ledger import ledger_rows, ledger_text_count
from tests.support.paths import REPO
from tests.support.polling import poll

# asyncpg errors when a login is refused or a session is terminated under us.
LOGIN_REFUSED = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)

REASON = "reindex orders after the 2am incident"
SRE_ONE = [{"approver_groups": ["sre-leads"], "approvals": 1}]

# --- shared helpers ----------------------------------------------------------------------


@dataclass
class Api:
    """The elevation endpoints of one broker, returning ``(status, json)``."""

    http: aiohttp.ClientSession
    url: str

    async def call(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": auth(token)}
        if body is not None:
            kwargs["json"] = body
        async with self.http.request(method, self.url + path, **kwargs) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, await r.text()

    async def request(self, token: str, **body: Any) -> tuple[int, Any]:
        return await self.call("POST", "/v1/elevations", token, body)

    async def requested(self, token: str, **body: Any) -> dict[str, Any]:
        body.setdefault("reason", REASON)
        status, out = await self.request(token, **body)
        assert status == 201, out
        return dict(out)

    async def get(self, token: str, eid: str) -> tuple[int, Any]:
        return await self.call("GET", f"/v1/elevations/{eid}", token)

    async def list(self, token: str, query: str = "") -> list[dict[str, Any]]:
        status, out = await self.call("GET", f"/v1/elevations{query}", token)
        assert status == 200, out
        return list(out["elevations"])

    async def act(self, verb: str, token: str, eid: str, body: Any = None) -> tuple[int, Any]:
        return await self.call("POST", f"/v1/elevations/{eid}/{verb}", token, body)

    async def approve(self, token: str, eid: str, comment: str | None = None) -> tuple[int, Any]:
        return await self.act("approve", token, eid, {"comment": comment} if comment else None)

    async def approved(self, token: str, eid: str) -> dict[str, Any]:
        status, out = await self.approve(token, eid, "looks right")
        assert status == 200, out
        return dict(out)

    async def deny(self, token: str, eid: str, comment: str | None = None) -> tuple[int, Any]:
        return await self.act("deny", token, eid, {"comment": comment} if comment else None)

    async def cancel(self, token: str, eid: str) -> tuple[int, Any]:
        return await self.act("cancel", token, eid)

    async def review(self, token: str, eid: str, comment: str | None = None) -> tuple[int, Any]:
        return await self.act("review", token, eid, {"comment": comment} if comment else None)

    async def redeem(self, token: str, eid: str, **body: Any) -> tuple[int, Any]:
        return await self.act("credentials", token, eid, body or None)

    async def redeemed(self, token: str, eid: str, **body: Any) -> dict[str, Any]:
        status, out = await self.redeem(token, eid, **body)
        assert status == 201, out
        return dict(out)

    async def revoke_grant(self, token: str, grant_id: str) -> None:
        status, out = await self.call("DELETE", f"/v1/grants/{grant_id}", token)
        assert status in (200, 409), out


def expect_error(result: tuple[int, Any], status: int, code: str) -> None:
    """The documented error shape, with exactly this status and code."""
    got_status, body = result
    assert isinstance(body, dict) and set(body) == {"error"}, result
    assert set(body["error"]) == {"code", "message"}, body
    assert (got_status, body["error"]["code"]) == (status, code), body
    assert body["error"]["message"], body


def mint(settings: Settings, subject: str, groups: list[str]) -> str:
    """A dev token for any identity the demo does not have."""
    assert settings.dev_issuer_key_path is not None
    return DevIssuer.load_or_create(settings.dev_issuer_key_path).mint(subject, groups)


def vault_client(stack: DevStack) -> hvac.Client:
    return hvac.Client(url=stack.bao.addr, token=stack.bao.root_token, timeout=10)


async def admin_leases(stack: DevStack) -> set[str]:
    """Leases OpenBao holds for privileged orders logins (LIST sys/leases/lookup)."""

    def list_leases() -> set[str]:
        try:
            keys = vault_client(stack).sys.list_leases("database/creds/orders-admin")
        except hvac.exceptions.InvalidPath:
            return set()
        return set(keys["data"]["keys"])

    return await asyncio.to_thread(list_leases)


async def lease_ttl(stack: DevStack, lease_id: str) -> int:
    lease = await asyncio.to_thread(vault_client(stack).sys.read_lease, lease_id)
    return int(lease["data"]["ttl"])


async def count_rows(stack: DevStack, where: str, *args: Any) -> int:
    conn = await asyncpg.connect(stack.superuser_dsn("broker"), timeout=5)
    try:
        n: int = await conn.fetchval(
            f"SELECT count(*) FROM ledger.events e WHERE {where}",  # noqa: S608
            *args,
        )
    finally:
        await conn.close()
    return n


async def elevation_rows(stack: DevStack, eid: str) -> list[dict[str, Any]]:
    """Every ledger row of one elevation (incl. grants minted under it), in order."""
    return await ledger_rows(stack, "e.body->>'elevation_id' = $1", eid)


@contextlib.asynccontextmanager
async def nothing_minted(stack: DevStack) -> AsyncIterator[None]:
    """Asserts the block minted nothing: no new admin lease, no issued/intent row."""
    leases = await admin_leases(stack)
    issued = await count_rows(stack, "e.event IN ('grant.issued', 'grant.intent')")
    yield
    assert await count_rows(stack, "e.event IN ('grant.issued', 'grant.intent')") == issued
    assert await admin_leases(stack) - leases == set()


async def login_refused(stack: DevStack, username: str, password: str) -> bool:
    try:
        conn = await db_login(stack, username, password)
    except LOGIN_REFUSED:
        return True
    await conn.close()
    return False


async def can_insert_order(stack: DevStack, cred: dict[str, str]) -> None:
    """Logs in with the credential and INSERTs (rolled back): the admin role works."""
    conn = await db_login(stack, cred["username"], cred["password"])
    try:
        tr = conn.transaction()
        await tr.start()
        new_id = await conn.fetchval(
            "INSERT INTO public.orders (customer, amount_cents) VALUES ('elev-test', 1)"
            " RETURNING id"
        )
        assert new_id is not None
        await tr.rollback()
    finally:
        await conn.close()


def write_policies(dest: Path, catalog: dict[str, Any], roles: list[dict[str, Any]]) -> Path:
    """The repo's policies plus one extra file with variant catalog entries and roles."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("catalog.yaml", "roles.yaml"):
        shutil.copy(REPO / "policies" / name, dest / name)
    doc = {"catalog": catalog, "roles": roles}
    (dest / "zz-elevation-variants.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def admin_db_variant(name: str, **elevation: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A catalog alias of the orders-admin login plus a privileged role for it."""
    secret = f"db/orders-admin-{name}"
    max_ttl = elevation.pop("max_ttl", "30m")
    entry = {"engine": "database", "mount": "database", "role": "orders-admin"}
    role = {
        "name": f"orders-dba-{name}",
        "members": {"groups": ["engineering"]},
        "secrets": [secret],
        "max_ttl": max_ttl,
        "privileged": True,
        "elevation": {"max_duration": "1h", **elevation},
    }
    return {secret: entry}, role


@contextlib.asynccontextmanager
async def variant_broker(
    settings: Settings,
    policies_dir: Path,
    replica_id: str,
    *,
    clock: Callable[[], datetime] | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningBroker]:
    running = await start_broker(
        settings.with_overrides(
            **{
                "policies_dir": policies_dir,
                "replica_id": replica_id,
                "elevation_sweep_seconds": 0.5,
                **overrides,
            }
        ),
        clock=clock,
    )
    try:
        yield running
    finally:
        await running.runner.cleanup()


def variant_policies(dest: Path) -> Path:
    """Two-of-N, two factors, a short window, and a 1-minute request expiry."""
    catalog: dict[str, Any] = {}
    roles = []
    for name, elevation in (
        ("2of2", {"approver_groups": ["sre-leads"], "approvals": 2}),
        (
            "2f",
            {
                "factors": [
                    {"approver_groups": ["sre-leads"], "approvals": 1},
                    {"approver_groups": ["security-admins"], "approvals": 1},
                ]
            },
        ),
        (
            "short",
            {"approver_groups": ["sre-leads"], "max_duration": "3s", "max_ttl": "3s"},
        ),
        ("quick", {"approver_groups": ["sre-leads"], "request_expiry": "1m"}),
    ):
        entry, role = admin_db_variant(name, **elevation)
        catalog.update(entry)
        roles.append(role)
    return write_policies(dest, catalog, roles)


@pytest.fixture(scope="module")
async def variant(broker_settings: Settings) -> AsyncIterator[RunningBroker]:
    """A broker whose policy adds the variant roles (db/orders-admin-<variant>)."""
    tmp = Path(tempfile.mkdtemp(prefix="elev-policies-"))
    try:
        policies = variant_policies(tmp / "policies")
        async with variant_broker(broker_settings, policies, "elev-variants") as running:
            yield running
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def events_of(rows: list[dict[str, Any]]) -> list[str]:
    return [r["event"] for r in rows]


# --- 1. happy path: privileged database login ---------------------------------------------


async def test_happy_path_privileged_database_login(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = Api(http, broker.url)
    alice, bob = tokens["alice"], tokens["bob"]

    created = await api.requested(alice, secret="db/orders-admin", duration="20m")
    eid = created["id"]
    assert created["status"] == "pending"
    assert created["approvals_required"] == SRE_ONE
    assert created["approvals"] == []
    assert created["expires_at"] and created["window_ends_at"] is None
    assert created["duration"] == 1200
    assert created["requester"] == "alice" and created["reason"] == REASON
    assert created["can_decide"] is False  # never for one's own request

    # bob, an SRE lead, sees what he may decide; alice sees her own.
    pending = {e["id"]: e for e in await api.list(bob, "?status=pending")}
    assert eid in pending and pending[eid]["can_decide"] is True
    mine = {e["id"]: e for e in await api.list(alice, "?status=pending")}
    assert eid in mine and mine[eid]["can_decide"] is False

    approved = await api.approved(bob, eid)
    assert approved["status"] == "approved"
    assert [a["approver"] for a in approved["approvals"]] == ["bob"]
    assert approved["approvals"][0]["groups"] == ["sre-leads"]
    window_end = parse_ts(approved["window_ends_at"])
    approved_at = parse_ts(approved["approved_at"])
    assert timedelta(seconds=1190) <= window_end - approved_at <= timedelta(seconds=1200)
    assert eid not in {e["id"] for e in await api.list(bob, "?status=pending")}

    grant = await api.redeemed(alice, eid)
    try:
        cred = grant["credential"]
        assert set(cred) == {"username", "password"}
        assert grant["secret"] == "db/orders-admin" and grant["role"] == "orders-dba"
        assert grant["lease_id"].startswith("database/creds/orders-admin/")
        # Default TTL is the role's 30m, inside the 20m window it is clipped to the window.
        assert parse_ts(grant["expires_at"]) <= window_end
        assert await lease_ttl(stack, grant["lease_id"]) <= 1200
        await can_insert_order(stack, cred)

        status, el = await api.get(alice, eid)
        assert status == 200 and el["grants"] == [grant["id"]]

        rows = await elevation_rows(stack, eid)
        assert events_of(rows) == [
            "elevation.requested",
            "elevation.approved",
            "elevation.activated",
            "grant.intent",
            "grant.issued",
        ], events_of(rows)
        assert [r["subject"] for r in rows] == ["alice", "bob", "bob", "alice", "alice"]
        version = grant["policy_version"]
        for r in rows:
            assert r["policy_version"] == version, r
            assert r["secret"] == "db/orders-admin"
            assert cred["password"] not in r["_text"], f"password in ledger row {r['seq']}"
        assert rows[0]["body"]["reason"] == REASON
        issued = rows[-1]
        assert issued["grant_id"] == uuid.UUID(grant["id"])
        assert issued["lease_id"] == grant["lease_id"]
        assert issued["body"]["elevation_id"] == eid
        assert issued["body"]["username"] == cred["username"]
        assert await ledger_text_count(stack, cred["password"]) == 0
    finally:
        await api.revoke_grant(alice, grant["id"])


# --- 2. happy path: privileged KV value ---------------------------------------------------


async def test_happy_path_privileged_kv_value(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = Api(http, broker.url)
    alice, dana = tokens["alice"], tokens["dana"]

    created = await api.requested(alice, secret="stripe/prod", ticket="INC-123")
    eid = created["id"]
    assert created["status"] == "pending" and created["ticket"] == "INC-123"
    assert created["duration"] == 3600  # no duration asked: the role's max_duration
    approved = await api.approved(dana, eid)
    assert approved["status"] == "approved"

    grant = await api.redeemed(alice, eid)
    expected = dict(stack.demo.secret_values["stripe/prod"])
    assert grant["credential"]["data"] == expected
    assert grant["lease_id"] is None
    assert parse_ts(grant["expires_at"]) <= parse_ts(approved["window_ends_at"])

    rows = await elevation_rows(stack, eid)
    assert events_of(rows) == [
        "elevation.requested",
        "elevation.approved",
        "elevation.activated",
        "grant.issued",
    ], events_of(rows)
    assert [r["subject"] for r in rows] == ["alice", "dana", "dana", "alice"]
    assert rows[0]["body"]["ticket"] == "INC-123"
    for r in rows:
        assert r["policy_version"] == grant["policy_version"]
        for value in expected.values():
            assert value not in r["_text"]
    assert rows[-1]["body"]["elevation_id"] == eid
    assert rows[-1]["body"]["ticket"] == "INC-123"
    for value in expected.values():
        assert await ledger_text_count(stack, value) == 0


# --- 4. two-of-N, and concurrent approvals ------------------------------------------------


async def test_two_of_n_needs_two_distinct_approvers(
    stack: DevStack,
    variant: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = Api(http, variant.url)
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
    variant: RunningBroker,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = Api(http, variant.url)
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
    main = Api(http, broker.url)
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
    variant: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = Api(http, variant.url)
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
    variant: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = Api(http, variant.url)
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
    variant: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = Api(http, variant.url)
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
    api = Api(http, broker.url)
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


async def test_cancel_during_window_revokes_the_login(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = Api(http, broker.url)
    alice = tokens["alice"]
    eid = (await api.requested(alice, secret="db/orders-admin"))["id"]
    await api.approved(tokens["bob"], eid)
    grant = await api.redeemed(alice, eid)
    cred = grant["credential"]
    conn = await db_login(stack, cred["username"], cred["password"])
    try:
        # Only the requester (or an admin) cancels.
        expect_error(await api.cancel(tokens["dana"], eid), 403, "not_requester")
        status, out = await api.cancel(alice, eid)
        assert status == 200 and out["status"] == "cancelled", out
        with pytest.raises(LOGIN_REFUSED):
            await conn.fetchval("SELECT count(*) FROM public.orders")
    finally:
        await conn.close()
    assert await login_refused(stack, cred["username"], cred["password"])
    assert grant["lease_id"].split("/")[-1] not in await admin_leases(stack)

    revoked = await ledger_rows(
        stack, "e.grant_id = $1 AND e.event = 'grant.revoked'", uuid.UUID(grant["id"])
    )
    assert len(revoked) == 1 and revoked[0]["subject"] == "alice"
    # The revocation names the elevation it ended under: the story reads in one query.
    assert revoked[0]["body"]["elevation_id"] == eid
    kinds = events_of(await elevation_rows(stack, eid))
    assert kinds[-2:] == ["elevation.cancelled", "grant.revoked"], kinds
    async with nothing_minted(stack):
        expect_error(await api.redeem(alice, eid), 409, "elevation_not_active")


async def test_admin_ends_someone_elses_elevation_and_revokes(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = Api(http, broker.url)
    bob = tokens["bob"]  # an engineer too, so eligible; dana approves him
    eid = (await api.requested(bob, secret="db/orders-admin"))["id"]
    await api.approved(tokens["dana"], eid)
    grant = await api.redeemed(bob, eid)
    cred = grant["credential"]
    assert not await login_refused(stack, cred["username"], cred["password"])

    status, out = await api.cancel(tokens["erin"], eid)
    assert status == 200 and out["status"] == "ended", out
    assert out["closed"]["by"] == "erin"
    assert await login_refused(stack, cred["username"], cred["password"])

    rows = await elevation_rows(stack, eid)
    ended = [r for r in rows if r["event"] == "elevation.ended"]
    assert len(ended) == 1 and ended[0]["subject"] == "erin"
    revoked = await ledger_rows(
        stack, "e.grant_id = $1 AND e.event = 'grant.revoked'", uuid.UUID(grant["id"])
    )
    assert len(revoked) == 1 and revoked[0]["subject"] == "erin"
    assert revoked[0]["body"]["grant_subject"] == "bob"
    async with nothing_minted(stack):
        expect_error(await api.redeem(bob, eid), 409, "elevation_not_active")


# --- 9. replicas ---------------------------------------------------------------------------


async def test_replicas_share_state_through_the_ledger(
    stack: DevStack,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    one = await start_broker(broker_settings.with_overrides(replica_id="elev-r1"))
    try:
        two = await start_broker(broker_settings.with_overrides(replica_id="elev-r2"))
        try:
            a, b = Api(http, one.url), Api(http, two.url)
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
        finally:
            await two.runner.cleanup()
    finally:
        await one.runner.cleanup()


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
    async with hook_server(good, bad):
        settings = broker_settings.with_overrides(
            replica_id="elev-hooks", webhook_urls=(good.url, bad.url)
        )
        running = await start_broker(settings)
        try:
            api = Api(http, running.url)
            t0 = time.monotonic()
            eid = (await api.requested(tokens["alice"], secret="stripe/prod", ticket="INC-77"))[
                "id"
            ]
            await api.approved(tokens["bob"], eid)
            elapsed = time.monotonic() - t0
            assert elapsed < 1.0, f"request + approve took {elapsed:.2f}s with a slow webhook"
            grant = await api.redeemed(tokens["alice"], eid)

            def kinds(h: Hook) -> list[str]:
                return [
                    b["kind"] for b in h.bodies if b.get("fields", {}).get("elevation_id") == eid
                ]

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
        finally:
            await running.runner.cleanup()


# --- the sweep leaves open elevations alone ---------------------------------------------


async def test_sweep_on_idle_broker_closes_nothing_open(
    variant: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    """An open window and a fresh request survive a sweep untouched."""
    api = Api(http, variant.url)
    pending = (await api.requested(tokens["alice"], secret="db/orders-admin-2of2"))["id"]
    active = (await api.requested(tokens["alice"], secret="db/orders-admin-2f"))["id"]
    await api.approved(tokens["bob"], active)
    await api.approved(tokens["erin"], active)
    await variant.app[ELEVATIONS].sweep()
    assert (await api.get(tokens["alice"], pending))[1]["status"] == "pending"
    assert (await api.get(tokens["alice"], active))[1]["status"] == "approved"
    await api.cancel(tokens["alice"], pending)
    await api.cancel(tokens["alice"], active)
