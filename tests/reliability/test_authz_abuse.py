"""Authorization abuse by authenticated callers, against a real broker, OpenBao and ledger.

Each abuse must be refused with its documented 4xx status and code, mint nothing (no
``grant.intent``/``grant.issued`` row, no new Vault lease for the privileged login), and
leave exactly one ledger row naming the caller (``request.rejected``, or the service's own
denial row): a refused request of a known subject is evidence.

The broker runs on a ledger of its own, with the repository's policies plus a 2-of-N role
(for the double vote), and a clock the tests can move (for expiry).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from broker.devenv import DEMO_IDENTITIES
from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.web.routes import ROUTES
from tests.support.backends import admin_leases, lease_ttl
from tests.support.brokers import IsolatedBroker, isolated_broker
from tests.support.ledger import count_events
from tests.support.policies import admin_db_variant, write_policies
from tests.support.reliability_report import Row, record

REASON = "reliability suite: authorization abuse"
_MINTED = "e.event IN ('grant.issued', 'grant.intent')"
_SUBJECT = {name: subject for name, (subject, _) in DEMO_IDENTITIES.items()}


@dataclass
class Clock:
    """The broker's clock: real time plus a shift the tests move forward."""

    shift: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.shift


@dataclass
class Target:
    broker: IsolatedBroker
    clock: Clock
    stack: DevStack


@pytest.fixture(scope="module")
async def target(stack: DevStack, broker_settings: Settings) -> AsyncIterator[Target]:
    tmp = Path(tempfile.mkdtemp(prefix="authz-policies-"))
    clock = Clock()
    try:
        catalog, role = admin_db_variant(
            "authz2", approver_groups=["sre-leads"], approvals=2, request_expiry="1m"
        )
        policies = write_policies(tmp / "policies", catalog, [role])
        async with isolated_broker(
            stack,
            broker_settings,
            prefix="authz",
            clock=clock,
            policies_dir=policies,
            elevation_sweep_seconds=3600.0,  # expiry is decided on the request path here
        ) as running:
            yield Target(running, clock, stack)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Outcome:
    status: int
    body: Any
    request_id: str
    caller: str

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("code"))
        return None


@dataclass
class Abuse:
    """Sends requests as the demo identities and tallies what came back."""

    http: aiohttp.ClientSession
    target: Target
    tokens: dict[str, str]
    sent: list[Outcome] = field(default_factory=list)

    async def call(
        self, who: str, method: str, path: str, body: Any = None, *, raw_path: bool = False
    ) -> Outcome:
        request_id = f"authz-{uuid.uuid4().hex}"
        headers = {"Authorization": f"Bearer {self.tokens[who]}", "X-Request-Id": request_id}
        url = self.target.broker.url + path
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["json"] = body
        if raw_path:
            kwargs["url"] = URL(url, encoded=True)
        else:
            kwargs["url"] = url
        async with self.http.request(method, **kwargs) as r:
            out = await r.json() if r.content_type == "application/json" else await r.read()
            outcome = Outcome(r.status, out, request_id, who)
        self.sent.append(outcome)
        return outcome

    async def ok(self, who: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
        outcome = await self.call(who, method, path, body)
        assert outcome.status in (200, 201), (method, path, outcome.body)
        assert isinstance(outcome.body, dict)
        return outcome.body

    async def elevation(self, who: str, secret: str, **extra: Any) -> str:
        body = {"secret": secret, "reason": REASON, **extra}
        return str((await self.ok(who, "POST", "/v1/elevations", body))["id"])

    def refusals(self) -> list[Outcome]:
        return [o for o in self.sent if 400 <= o.status < 500]


async def _ledgered_once(target: Target, outcome: Outcome) -> bool:
    """Exactly one row for this refused request, naming the caller."""
    rows = await count_events(
        target.broker.db.superuser_dsn,
        "e.request_id = $1 AND e.subject = $2"
        " AND e.event IN ('request.rejected', 'grant.denied', 'elevation.denied')",
        outcome.request_id,
        _SUBJECT[outcome.caller],
    )
    total = await count_events(
        target.broker.db.superuser_dsn, "e.request_id = $1", outcome.request_id
    )
    return rows == 1 and total == 1


@pytest.fixture
async def abuse(
    target: Target, tokens: dict[str, str], http: aiohttp.ClientSession
) -> AsyncIterator[Abuse]:
    target.clock.shift = timedelta(0)
    yield Abuse(http, target, tokens)
    target.clock.shift = timedelta(0)


async def _check_and_record(
    abuse: Abuse,
    kind: str,
    expected: list[tuple[Outcome, int, str]],
    *,
    minted: int,
    new_admin_leases: int = 0,
) -> None:
    """Each outcome has its status and code, is ledgered once; record the row."""
    wrong = [
        (o.caller, o.status, o.code, status, code)
        for o, status, code in expected
        if (o.status, o.code) != (status, code)
    ]
    unledgered = [o.request_id for o, _, _ in expected if not await _ledgered_once(abuse.target, o)]
    codes = Counter(f"{o.status} {o.code}" for o, _, _ in expected)
    record(
        Row(
            area="authz",
            kind=kind,
            requests=len(abuse.sent),
            attacks=len(expected),
            leaked=minted + new_admin_leases,
            five_xx_on_bad_input=sum(1 for o in abuse.sent if o.status >= 500),
            notes=(
                f"refused as {dict(sorted(codes.items()))}; {len(expected) - len(unledgered)}"
                f"/{len(expected)} ledgered once; {len(wrong)} wrong answers"
            ),
        )
    )
    assert wrong == []
    assert unledgered == []
    assert minted == 0
    assert new_admin_leases == 0
    assert all(o.status < 500 for o in abuse.sent)


class Minted:
    """Counts what a block minted: ledger issue rows and new privileged Vault leases."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self.rows = 0
        self.leases = 0

    async def __aenter__(self) -> Minted:
        self._rows = await count_events(self._target.broker.db.superuser_dsn, _MINTED)
        self._leases = await admin_leases(self._target.stack)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.rows = await count_events(self._target.broker.db.superuser_dsn, _MINTED) - self._rows
        self.leases = len(await admin_leases(self._target.stack) - self._leases)


async def test_approvals_by_the_wrong_people(abuse: Abuse, target: Target) -> None:
    expected: list[tuple[Outcome, int, str]] = []
    bob_own = await abuse.elevation("bob", "db/orders-admin")
    alice_eid = await abuse.elevation("alice", "db/orders-admin")
    two = await abuse.elevation("alice", "db/orders-admin-authz2")
    async with Minted(target) as minted:
        # Self-approval by someone who IS an approver of the role.
        expected.append(
            (
                await abuse.call("bob", "POST", f"/v1/elevations/{bob_own}/approve"),
                403,
                "self_approval",
            )
        )
        # Not in the approver group: an auditor, an admin, a service, a plain engineer.
        for who in ("carol", "erin", "svc-orders"):
            expected.append(
                (
                    await abuse.call(who, "POST", f"/v1/elevations/{alice_eid}/approve"),
                    404 if who == "svc-orders" else 403,
                    "elevation_not_found" if who == "svc-orders" else "not_an_approver",
                )
            )
        # A peer's request is not even visible to a non-approver.
        expected.append(
            (
                await abuse.call("alice", "POST", f"/v1/elevations/{bob_own}/approve"),
                404,
                "elevation_not_found",
            )
        )
        # Double vote on a 2-of-N: the second vote of the same person does not count.
        await abuse.ok("bob", "POST", f"/v1/elevations/{two}/approve", {"comment": "one"})
        expected.append(
            (await abuse.call("bob", "POST", f"/v1/elevations/{two}/approve"), 409, "already_voted")
        )
        status = (await abuse.ok("alice", "GET", f"/v1/elevations/{two}"))["status"]
        assert status == "pending"
        expected.append(
            (
                await abuse.call("alice", "POST", f"/v1/elevations/{two}/credentials"),
                409,
                "elevation_not_active",
            )
        )
    await _check_and_record(
        abuse, "self-approval, non-approvers, double vote", expected,
        minted=minted.rows, new_admin_leases=minted.leases,
    )  # fmt: skip


async def test_redeeming_what_is_not_yours_or_no_longer_open(abuse: Abuse, target: Target) -> None:
    expected: list[tuple[Outcome, int, str]] = []
    approved = await abuse.elevation("alice", "db/orders-admin")
    await abuse.ok("bob", "POST", f"/v1/elevations/{approved}/approve")
    denied = await abuse.elevation("alice", "db/orders-admin")
    await abuse.ok("dana", "POST", f"/v1/elevations/{denied}/deny", {"comment": "not today"})
    cancelled = await abuse.elevation("alice", "db/orders-admin")
    await abuse.ok("alice", "POST", f"/v1/elevations/{cancelled}/cancel")
    stale = await abuse.elevation("alice", "db/orders-admin-authz2")  # request_expiry 1m
    async with Minted(target) as minted:
        # Someone else's approved elevation: the approver, a peer, a service.
        for who, status, code in (
            ("bob", 403, "not_requester"),
            ("dana", 403, "not_requester"),
            ("svc-orders", 404, "elevation_not_found"),
        ):
            expected.append(
                (await abuse.call(who, "POST", f"/v1/elevations/{approved}/credentials"),
                 status, code)
            )  # fmt: skip
        for eid in (denied, cancelled):
            expected.append(
                (await abuse.call("alice", "POST", f"/v1/elevations/{eid}/credentials"),
                 409, "elevation_not_active")
            )  # fmt: skip
        # Pending past its request expiry: neither approvable nor redeemable.
        target.clock.shift = timedelta(minutes=2)
        expected.append(
            (
                await abuse.call("bob", "POST", f"/v1/elevations/{stale}/approve"),
                409,
                "elevation_not_pending",
            )
        )
        expected.append(
            (
                await abuse.call("alice", "POST", f"/v1/elevations/{stale}/credentials"),
                409,
                "elevation_not_active",
            )
        )
        # Approved, but its window (max_duration 1h) has elapsed.
        target.clock.shift = timedelta(hours=1, minutes=1)
        expected.append(
            (await abuse.call("alice", "POST", f"/v1/elevations/{approved}/credentials"),
             409, "elevation_not_active")
        )  # fmt: skip
        target.clock.shift = timedelta(0)
    await _check_and_record(
        abuse, "redeem someone else's / expired / denied / cancelled elevation", expected,
        minted=minted.rows, new_admin_leases=minted.leases,
    )  # fmt: skip


async def test_ttl_beyond_the_role_max_is_clipped_in_vault(abuse: Abuse, target: Target) -> None:
    """Asking for more than max_ttl is not refused but clipped, as Vault does: check Vault."""
    cases = [
        ("alice", "db/orders-ro", "30d", 3600),  # engineering: max_ttl 1h
        ("svc-orders", "db/orders-ro", "10h", 900),  # orders-service: max_ttl 15m
        ("alice", "db/orders-ro", 300 * 86400, 3600),
    ]
    measured = []
    for who, secret, ttl, max_ttl in cases:
        grant = await abuse.ok(who, "POST", "/v1/credentials", {"secret": secret, "ttl": ttl})
        issued = datetime.fromisoformat(grant["issued_at"])
        expires = datetime.fromisoformat(grant["expires_at"])
        vault_ttl = await lease_ttl(target.stack, grant["lease_id"])
        measured.append((who, ttl, (expires - issued).total_seconds(), vault_ttl, max_ttl))
    # And through an approved elevation (orders-dba: max_ttl 30m).
    eid = await abuse.elevation("alice", "db/orders-admin")
    await abuse.ok("bob", "POST", f"/v1/elevations/{eid}/approve")
    grant = await abuse.ok("alice", "POST", f"/v1/elevations/{eid}/credentials", {"ttl": "8h"})
    vault_ttl = await lease_ttl(target.stack, grant["lease_id"])
    issued = datetime.fromisoformat(grant["issued_at"])
    expires = datetime.fromisoformat(grant["expires_at"])
    measured.append(("alice (elevated)", "8h", (expires - issued).total_seconds(), vault_ttl, 1800))
    over = [m for m in measured if m[2] > m[4] + 1 or m[3] > m[4]]
    record(
        Row(
            area="authz",
            kind="TTL beyond the role's max_ttl",
            requests=len(abuse.sent),
            attacks=len(measured),
            five_xx_on_bad_input=sum(1 for o in abuse.sent if o.status >= 500),
            notes="clipped (asked -> granted s / Vault lease ttl s / max s): "
            + "; ".join(f"{w} {t} -> {g:.0f}/{v}/{m}" for w, t, g, v, m in measured),
        )
    )
    assert over == []
    # Clipped, not shortened to nothing: Vault holds it for (about) the role's max.
    assert all(v >= m - 120 for _, _, _, v, m in measured), measured


_SECRET_ATTACKS: list[tuple[str, int, str]] = [
    ("..", 400, "invalid_secret_name"),
    ("db/../stripe/prod", 400, "invalid_secret_name"),
    ("db/orders-ro/..", 400, "invalid_secret_name"),
    ("./stripe/prod", 400, "invalid_secret_name"),
    ("/stripe/prod", 400, "invalid_secret_name"),
    ("stripe/prod/", 400, "invalid_secret_name"),
    ("*", 400, "invalid_secret_name"),
    ("stripe/*", 400, "invalid_secret_name"),
    ("db/orders-*", 400, "invalid_secret_name"),
    ("%2e%2e", 400, "invalid_secret_name"),
    ("%2e%2e/stripe/prod", 400, "invalid_secret_name"),
    ("stripe%2fprod", 400, "invalid_secret_name"),
    ("db/\u043erders-ro", 400, "invalid_secret_name"),  # Cyrillic o
    ("stripe/pr\u043ed", 400, "invalid_secret_name"),  # Cyrillic o
    ("\u0455tripe/test", 400, "invalid_secret_name"),  # Cyrillic dze looks like s
    ("stripe/t\u0435st", 400, "invalid_secret_name"),  # Cyrillic ie
    ("db/orders-ro\x00", 400, "invalid_secret_name"),
    ("stripe/prod\x00.txt", 400, "invalid_secret_name"),
    ("db/orders-ro\n", 400, "invalid_secret_name"),
    ("Stripe/Prod", 400, "invalid_secret_name"),
    ("stripe/prod ", 400, "invalid_secret_name"),
    ("\uff53tripe/prod", 400, "invalid_secret_name"),  # fullwidth s
    ("a" * 129, 400, "invalid_secret_name"),
    ("db/" + "x" * 100_00, 400, "invalid_secret_name"),
    ("db/orders-ro..", 404, "unknown_secret"),  # well-formed, not in the catalog
    ("stripe/prod.", 404, "unknown_secret"),
    ("db/orders-ro/x", 404, "unknown_secret"),
    ("a" * 128, 404, "unknown_secret"),
]


async def test_crafted_secret_names_are_refused(abuse: Abuse, target: Target) -> None:
    expected: list[tuple[Outcome, int, str]] = []
    async with Minted(target) as minted:
        for name, status, code in _SECRET_ATTACKS:
            for who in ("alice", "svc-orders"):
                expected.append(
                    (await abuse.call(who, "POST", "/v1/credentials", {"secret": name}),
                     status, code)
                )  # fmt: skip
            expected.append(
                (await abuse.call("alice", "POST", "/v1/elevations",
                                  {"secret": name, "reason": REASON, "ticket": "INC-7"}),
                 status, code)
            )  # fmt: skip
        # The same tricks in URL paths: never a 5xx, never a match on something real.
        for raw in ("..%2F..%2Fcredentials", "%2e%2e", "%00", quote("\u043e", safe="")):
            expected.append(
                (await abuse.call("alice", "GET", f"/v1/elevations/{raw}", raw_path=True),
                 404, "elevation_not_found")
            )  # fmt: skip
            expected.append(
                (await abuse.call("alice", "DELETE", f"/v1/grants/{raw}", raw_path=True),
                 404, "grant_not_found")
            )  # fmt: skip
    await _check_and_record(
        abuse, "crafted secret names (.., *, %2e%2e, look-alikes, NUL, long)", expected,
        minted=minted.rows, new_admin_leases=minted.leases,
    )  # fmt: skip


def _audit_routes() -> list[tuple[str, str]]:
    """Every /v1/audit/* route (evidence included), straight from the route table."""
    return sorted((r.method, r.path) for r in ROUTES if r.path.startswith("/v1/audit/"))


async def test_audit_and_admin_endpoints_without_the_capability(
    abuse: Abuse, target: Target
) -> None:
    routes = _audit_routes()
    assert ("GET", "/v1/audit/evidence") in routes and len(routes) >= 6, routes
    now = datetime.now(UTC)
    window = f"from={(now - timedelta(days=30)).date()}&to={(now + timedelta(days=1)).date()}"
    expected: list[tuple[Outcome, int, str]] = []
    async with Minted(target) as minted:
        for who in ("alice", "svc-orders", "bob"):
            for method, path in routes:
                body = (
                    {
                        "from": "2020-01-01T00:00:00Z",
                        "to": "2020-01-02T00:00:00Z",
                        "remediation": "none",
                    }
                    if method == "POST"
                    else None
                )
                expected.append(
                    (await abuse.call(who, method, f"{path}?{window}" if method == "GET" else path,
                                      body), 403, "forbidden")
                )  # fmt: skip
        # An auditor reads, but does not write the ledger's explanations; nor offboard.
        expected.append(
            (await abuse.call("carol", "POST", "/v1/audit/gaps/annotate",
                              {"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00Z",
                               "remediation": "auditor trying to explain away a gap"}),
             403, "forbidden")
        )  # fmt: skip
        for who in ("alice", "carol", "svc-orders"):
            expected.append(
                (await abuse.call(who, "POST", "/v1/offboarding",
                                  {"subject": "bob", "reason": "hostile takeover"}),
                 403, "forbidden")
            )  # fmt: skip
            expected.append(
                (await abuse.call(who, "POST", "/v1/reviews",
                                  {"period": "2026-Q1", "reviewer_group": "engineering"}),
                 403, "forbidden")
            )  # fmt: skip
        expected.append(
            (await abuse.call("alice", "GET", "/v1/offboarding"), 403, "forbidden")
        )  # fmt: skip
    # The control: the auditor does get through every GET (the proofs take their own query).
    proof_query = {"/v1/audit/proofs/inclusion": "seq=1", "/v1/audit/proofs/consistency": "old=1"}
    for method, path in routes:
        if method == "GET":
            status = (
                await abuse.call("carol", method, f"{path}?{proof_query.get(path, window)}")
            ).status
            assert status == 200, (path, status)
    await _check_and_record(
        abuse, "audit/evidence/admin endpoints without the capability", expected,
        minted=minted.rows, new_admin_leases=minted.leases,
    )  # fmt: skip
