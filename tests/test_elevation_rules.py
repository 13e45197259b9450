"""Every elevation rule refused with its error code, and nothing minted (issue 3).

"Nothing minted" is checked where it matters: no new OpenBao lease for the privileged orders
login (LIST sys/leases/lookup) and no new ``grant.intent``/``grant.issued`` ledger row.
The refusals are tables: a vote that does not count, a request closed for good, a request
the broker will not take; each row is its own test on its own elevation.
Request expiry is checked twice: on the pure state fold with synthetic events, and on a real
broker whose elevation service reads a clock moved past the (1 minute) request expiry.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest

from broker.elevation.model import closed_key, fold
from broker.ledger import Event
from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.web.keys import ELEVATIONS
from tests.support.brokers import RunningBroker, running_broker
from tests.support.elevation import (
    REASON,
    ElevationApi,
    elevation_rows,
    events_of,
    nothing_minted,
)
from tests.support.http import expect_error, parse_ts
from tests.support.ledger import count_events, session_ledger_dsn
from tests.support.policies import elevation_variant_policies
from tests.support.tokens import mint


async def _votes(stack: DevStack, eid: str) -> list[str]:
    return [
        r["subject"] for r in await elevation_rows(stack, eid) if r["event"] == "elevation.approved"
    ]


# --- deciding: votes that do not count -------------------------------------------------------


@dataclass(frozen=True)
class Voter:
    """A demo identity's own token, or one minted for ``name`` in ``groups``."""

    name: str
    groups: tuple[str, ...] | None = None

    def token(self, settings: Settings, tokens: dict[str, str]) -> str:
        if self.groups is None:
            return tokens[self.name]
        return mint(settings, self.name, list(self.groups))


@dataclass(frozen=True)
class VoteRefused:
    """alice asks for ``secret``; ``voted`` approve first; ``voter`` then tries ``verbs``.

    ``listed``: ``"yes"`` if the voter must see the request pending (never decidable),
    ``"either"`` if it may be hidden from them or shown undecidable, None if not checked.
    """

    voter: Voter
    verbs: tuple[str, ...]
    status: int
    code: str
    secret: str = "db/orders-admin"
    voted: tuple[str, ...] = ()
    listed: Literal["yes", "either"] | None = None


# Second identities of the same subject hold the approver group: still alice's own request.
_SELF_SPELLED = ("engineering", "sre-leads")

_VOTES_REFUSED = [
    pytest.param(
        VoteRefused(Voter("alice"), ("approve",), 403, "self_approval"),
        id="self",
    ),
    pytest.param(
        VoteRefused(
            Voter("ALICE", _SELF_SPELLED), ("approve", "deny"), 403, "self_approval",
            listed="either",
        ),
        id="self-upper-case",
    ),
    pytest.param(
        VoteRefused(
            Voter(" alice", _SELF_SPELLED), ("approve", "deny"), 403, "self_approval",
            listed="either",
        ),
        id="self-leading-space",
    ),
    # carol (auditor) and erin (security admin) may see it, not decide it.
    pytest.param(
        VoteRefused(Voter("carol"), ("approve", "deny"), 403, "not_an_approver", listed="yes"),
        id="auditor",
    ),
    pytest.param(
        VoteRefused(Voter("erin"), ("approve", "deny"), 403, "not_an_approver", listed="yes"),
        id="security-admin",
    ),
    # bob after leaving sre-leads: not an approver any more (nor may he see it).
    pytest.param(
        VoteRefused(Voter("bob", ("engineering",)), ("approve",), 404, "elevation_not_found"),
        id="former-approver",
    ),
    # Two-of-N: one vote per approver, under any spelling of the approver.
    pytest.param(
        VoteRefused(
            Voter("bob"), ("approve",), 409, "already_voted",
            secret="db/orders-admin-2of2", voted=("bob",),
        ),
        id="second-vote",
    ),
    pytest.param(
        VoteRefused(
            Voter("BOB", ("sre-leads",)), ("approve",), 409, "already_voted",
            secret="db/orders-admin-2of2", voted=("bob",),
        ),
        id="second-vote-upper-case",
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", _VOTES_REFUSED)
async def test_vote_that_does_not_count(
    case: VoteRefused,
    stack: DevStack,
    broker_settings: Settings,
    broker: RunningBroker,
    elevation_variants: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    on = elevation_variants if case.secret.endswith("-2of2") else broker
    api = ElevationApi(http, on.url)
    alice = tokens["alice"]
    eid = (await api.requested(alice, secret=case.secret))["id"]
    for name in case.voted:
        await api.approved(tokens[name], eid)
    token = case.voter.token(broker_settings, tokens)
    async with nothing_minted(stack):
        for verb in case.verbs:
            result = await api.act(verb, token, eid, {"comment": "not mine to decide"})
            expect_error(result, case.status, case.code)
        if case.listed is not None:
            listed = {e["id"]: e for e in await api.list(token, "?status=pending")}
            assert eid in listed or case.listed == "either", listed.keys()
            assert eid not in listed or listed[eid]["can_decide"] is False
        expect_error(await api.redeem(alice, eid), 409, "elevation_not_active")
    assert await _votes(stack, eid) == list(case.voted)
    assert await api.status_of(alice, eid) == "pending"
    await api.cancel(alice, eid)


async def test_denial_needs_a_comment(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = ElevationApi(http, broker.url)
    alice, bob = tokens["alice"], tokens["bob"]
    eid = (await api.requested(alice, secret="db/orders-admin"))["id"]
    async with nothing_minted(stack):
        expect_error(await api.deny(bob, eid), 400, "comment_required")
        expect_error(await api.act("deny", bob, eid, {"comment": ""}), 400, "comment_required")
    assert await api.status_of(alice, eid) == "pending"
    assert events_of(await elevation_rows(stack, eid)) == ["elevation.requested"]
    await api.cancel(alice, eid)


# --- closed for good: denied or cancelled -----------------------------------------------------


@dataclass(frozen=True)
class Close:
    """``who`` closes alice's pending request with ``verb``; it is then ``status`` for good."""

    verb: str
    who: str
    status: str
    event: str


_CLOSES = [
    pytest.param(Close("deny", "bob", "denied", "elevation.denied"), id="denied"),
    pytest.param(Close("cancel", "alice", "cancelled", "elevation.cancelled"), id="cancelled"),
]


@pytest.mark.parametrize("close", _CLOSES)
async def test_closed_request_is_final(
    close: Close,
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = ElevationApi(http, broker.url)
    alice, bob, dana = tokens["alice"], tokens["bob"], tokens["dana"]
    eid = (await api.requested(alice, secret="db/orders-admin"))["id"]
    async with nothing_minted(stack):
        body = {"comment": "use the read-only login"} if close.verb == "deny" else None
        status, closed = await api.act(close.verb, tokens[close.who], eid, body)
        assert status == 200 and closed["status"] == close.status, closed
        assert closed["closed"]["by"] == close.who
        for approver in (bob, dana):
            expect_error(await api.approve(approver, eid), 409, "elevation_not_pending")
        expect_error(await api.deny(dana, eid, "again"), 409, "elevation_not_pending")
        expect_error(await api.redeem(alice, eid), 409, "elevation_not_active")
        expect_error(await api.cancel(alice, eid), 409, "elevation_not_pending")
    assert await _votes(stack, eid) == []
    assert await api.status_of(alice, eid) == close.status
    assert events_of(await elevation_rows(stack, eid)) == ["elevation.requested", close.event]


# --- redeeming -------------------------------------------------------------------------------


async def test_redeem_only_by_the_requester_and_only_once_approved(
    stack: DevStack,
    broker_settings: Settings,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = ElevationApi(http, broker.url)
    alice = tokens["alice"]
    eid = (await api.requested(alice, secret="db/orders-admin"))["id"]
    async with nothing_minted(stack):
        expect_error(await api.redeem(alice, eid), 409, "elevation_not_active")
        await api.approved(tokens["bob"], eid)
        for name in ("bob", "dana", "carol", "erin"):
            expect_error(await api.redeem(tokens[name], eid), 403, "not_requester")
        # An engineer who is neither requester nor approver cannot even see it.
        other = mint(broker_settings, "mallory", ["engineering"])
        expect_error(await api.redeem(other, eid), 404, "elevation_not_found")
    await api.cancel(alice, eid)


async def test_requester_cannot_widen_secret_or_duration(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = ElevationApi(http, broker.url)
    alice = tokens["alice"]
    # Longer than max_duration (1h): clipped, and the answer says so.
    long = await api.requested(alice, secret="db/orders-admin", duration="10h")
    assert long["duration"] == 3600
    await api.cancel(alice, long["id"])

    created = await api.requested(alice, secret="stripe/prod", ticket="CHG-9", duration="2m")
    eid = created["id"]
    assert created["duration"] == 120
    rows = await elevation_rows(stack, eid)
    assert rows[0]["body"]["duration"] == 120 and rows[0]["body"]["requested_duration"] == 120
    approved = await api.approved(tokens["bob"], eid)
    window_end = parse_ts(approved["window_ends_at"])

    async with nothing_minted(stack):
        # Redeem takes a TTL only: no other secret, no longer window.
        for extra in ({"secret": "db/orders-admin"}, {"duration": "1h"}, {"break_glass": True}):
            expect_error(await api.redeem(alice, eid, **extra), 400, "unknown_field")
    grant = await api.redeemed(alice, eid, ttl="10h")
    assert grant["secret"] == "stripe/prod"
    expires = parse_ts(grant["expires_at"])
    assert expires <= window_end, (grant["expires_at"], approved["window_ends_at"])
    assert expires - parse_ts(grant["issued_at"]) <= timedelta(seconds=120)
    await api.cancel(alice, eid)


# --- asking ----------------------------------------------------------------------------------

_REQUESTS_REFUSED = [
    ({"secret": "db/orders-admin"}, 400, "reason_required"),
    ({"secret": "db/orders-admin", "reason": "   "}, 400, "reason_required"),
    ({"secret": "db/orders-admin", "reason": "."}, 400, "reason_too_short"),
    ({"secret": "db/orders-admin", "reason": "fix it"}, 400, "reason_too_short"),
    ({"secret": "db/orders-admin", "reason": "............"}, 400, "reason_too_short"),
    ({"secret": "stripe/prod", "reason": REASON}, 400, "ticket_required"),
    ({"secret": "stripe/prod", "reason": REASON, "ticket": "JIRA-1"}, 400, "invalid_ticket"),
    (
        {"secret": "stripe/prod", "reason": REASON, "ticket": "INC-1", "break_glass": True},
        403,
        "break_glass_not_allowed",
    ),
    ({"secret": "stripe/test", "reason": REASON}, 409, "elevation_not_needed"),
    ({"secret": "db/orders-ro", "reason": REASON}, 409, "elevation_not_needed"),
    ({"secret": "nope/nothing", "reason": REASON}, 404, "unknown_secret"),
]


@pytest.mark.parametrize(
    ("who", "body", "status", "code"),
    [
        *(
            pytest.param("alice", *case, id=f"{n}-{case[2]}")
            for n, case in enumerate(_REQUESTS_REFUSED, start=1)
        ),
        # Not eligible at all: an auditor asking for the admin login.
        pytest.param(
            "carol", {"secret": "db/orders-admin", "reason": REASON}, 403, "denied", id="denied"
        ),
    ],
)
async def test_request_refused_with_its_code(
    who: str,
    body: dict[str, Any],
    status: int,
    code: str,
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = ElevationApi(http, broker.url)
    requested = "e.event = 'elevation.requested'"
    before = await count_events(session_ledger_dsn(stack), requested)
    async with nothing_minted(stack):
        result = await api.request(tokens[who], **body)
        assert (result[0], result[1]["error"]["code"]) == (status, code), (body, result)
        expect_error(result, status, code)
    assert await count_events(session_ledger_dsn(stack), requested) == before


# --- request expiry --------------------------------------------------------------------------

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _ev(seq: int, event: str, subject: str, at: datetime, **body: Any) -> Event:
    return Event(
        seq=seq,
        recorded_at=at,
        event=event,
        replica="test",
        subject=subject,
        subject_kind="human",
        secret="db/orders-admin",
        role="orders-dba",
        policy_version="sha256:test",
        grant_id=None,
        lease_id=None,
        expires_at=None,
        outcome="ok",
        request_id=None,
        body=body,
        dedupe_key=None,
        prev_hash=b"",
        hash=b"",
    )


def _requested(eid: uuid.UUID, *, expiry: timedelta) -> Event:
    return _ev(
        1,
        "elevation.requested",
        "alice",
        T0,
        elevation_id=str(eid),
        reason=REASON,
        ticket=None,
        duration=600,
        request_expires_at=(T0 + expiry).isoformat(),
        factors=[{"approver_groups": ["sre-leads"], "approvals": 1}],
        break_glass=False,
    )


def test_request_expiry_in_the_folded_state() -> None:
    eid = uuid.uuid4()
    req = _requested(eid, expiry=timedelta(minutes=1))
    el = fold([req])
    assert el is not None
    assert el.status(T0 + timedelta(seconds=59)) == "pending"
    assert el.status(T0 + timedelta(seconds=60)) == "expired"
    # The sweeper's closing event makes it final, whatever the clock says.
    expired = _ev(
        2,
        "elevation.expired",
        "alice",
        T0 + timedelta(seconds=61),
        elevation_id=str(eid),
        why="request_expired",
    )
    el = fold([expired, req])  # fold orders by seq
    assert el is not None and el.status(T0) == "expired"
    assert el.to_json(T0)["closed"]["why"] == "request_expired"

    # Approved in time: the request expiry no longer matters, the window does.
    vote = _ev(2, "elevation.approved", "bob", T0 + timedelta(seconds=10), elevation_id=str(eid))
    window_end = T0 + timedelta(seconds=610)
    activated = _ev(
        3,
        "elevation.activated",
        "bob",
        T0 + timedelta(seconds=10),
        elevation_id=str(eid),
        window_ends_at=window_end.isoformat(),
    )
    el = fold([req, vote, activated])
    assert el is not None
    assert el.status(T0 + timedelta(seconds=120)) == "approved"
    assert el.status(window_end) == "ended"
    assert [v.approver for v in el.approvals] == ["bob"]


async def test_request_expiry_on_a_real_broker(
    stack: DevStack,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """request_expiry is 1m (the minimum): the broker's injected clock is moved past it."""
    shift = [timedelta(0)]
    policies = elevation_variant_policies(tmp_path / "policies")
    async with running_broker(
        broker_settings,
        clock=lambda: datetime.now(UTC) + shift[0],
        policies_dir=policies,
        replica_id="elev-expiry",
        elevation_sweep_seconds=3600.0,  # this test runs the sweep itself
    ) as running:
        api = ElevationApi(http, running.url)
        alice, bob = tokens["alice"], tokens["bob"]
        created = await api.requested(alice, secret="db/orders-admin-quick")
        eid = created["id"]
        expires_at = parse_ts(created["expires_at"])
        assert timedelta(seconds=55) <= expires_at - parse_ts(created["requested_at"])
        assert expires_at - parse_ts(created["requested_at"]) <= timedelta(seconds=61)

        shift[0] = timedelta(seconds=62)
        assert await api.status_of(alice, eid) == "expired"
        async with nothing_minted(stack):
            expect_error(await api.approve(bob, eid), 409, "elevation_not_pending")
            expect_error(await api.deny(bob, eid, "too late"), 409, "elevation_not_pending")
            expect_error(await api.redeem(alice, eid), 409, "elevation_not_active")
        await running.app[ELEVATIONS].sweep()
        shift[0] = timedelta(0)

        rows = await elevation_rows(stack, eid)
        assert events_of(rows) == ["elevation.requested", "elevation.expired"], events_of(rows)
        assert rows[-1]["body"]["why"] == "request_expired"
        assert rows[-1]["dedupe_key"] == closed_key(uuid.UUID(eid))
        assert rows[-1]["policy_version"]
        # Back on the real clock the request is still expired: the ledger says so.
        assert await api.status_of(alice, eid) == "expired"
        async with nothing_minted(stack):
            expect_error(await api.approve(bob, eid), 409, "elevation_not_pending")
            expect_error(await api.redeem(alice, eid), 409, "elevation_not_active")
    assert await _votes(stack, eid) == []
