"""Quarterly access reviews (issue 4), against real OpenBao and Postgres.

End to end: erin (admin) opens a review of the current quarter after alice and the orders
workload used secrets; the snapshot lists every entitlement of the policy in force and who
used what; bob (sre-leads) decides each one; completion is refused until all are decided.
A revoke is an open action item until a *later* policy version drops the entitlement
(hot reload on a private broker), which the ledger then records. The period arithmetic and
``missing_reviews`` (used by the findings engine) are tested as pure functions.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.cli import main as cli_main
from broker.ledger import review_queries
from broker.policy.loader import load_policy_dir
from broker.reviews import missing_reviews, period_bounds, period_of
from broker.reviews.model import entitlements, grants_entitlement, names_principal
from broker.settings import Settings
from broker.web.keys import LEDGER, POLICY
from tests.support.brokers import RunningBroker, start_broker
from tests.support.http import auth, issue
from tests.support.ledger import ledger_rows
from tests.support.paths import REPO
from tests.support.polling import poll, until

# --- pure: periods and missing reviews --------------------------------------------------


def test_period_bounds_cover_each_quarter_half_open() -> None:
    assert period_bounds("2026-Q1") == (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 4, 1, tzinfo=UTC),
    )
    assert period_bounds("2026-Q4") == (
        datetime(2026, 10, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_of(datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)) == "2026-Q1"
    assert period_of(datetime(2026, 4, 1, tzinfo=UTC)) == "2026-Q2"
    # Taken in UTC: 00:30 on Apr 1 at +01:00 is still March in UTC.
    assert period_of(datetime(2026, 4, 1, 0, 30, tzinfo=UTC) + timedelta(hours=-1)) == "2026-Q1"
    for bad in ("2026-Q5", "2026-Q0", "26-Q1", "2026Q1", "2026-q1", " 2026-Q1", "0000-Q1"):
        with pytest.raises(ValueError):
            period_bounds(bad)
    with pytest.raises(ValueError):
        period_of(datetime(2026, 1, 1))  # naive


def test_missing_reviews_lists_due_quarters_without_a_completed_review() -> None:
    assert missing_reviews(set(), "2026-Q1", "2026-Q4") == [
        "2026-Q1",
        "2026-Q2",
        "2026-Q3",
        "2026-Q4",
    ]
    assert missing_reviews({"2026-Q1", "2026-Q3"}, "2026-Q1", "2026-Q4") == [
        "2026-Q2",
        "2026-Q4",
    ]
    assert missing_reviews({"2025-Q4", "2026-Q1"}, "2025-Q4", "2026-Q1") == []
    # Across a year boundary.
    assert missing_reviews({"2025-Q4"}, "2025-Q3", "2026-Q2") == ["2025-Q3", "2026-Q1", "2026-Q2"]
    # Datetimes: a quarter is due once it has ended inside the window; the running one is not.
    mid_feb = datetime(2026, 2, 15, tzinfo=UTC)
    mid_aug = datetime(2026, 8, 15, tzinfo=UTC)
    assert missing_reviews(set(), mid_feb, mid_aug) == ["2026-Q1", "2026-Q2"]
    assert missing_reviews({"2026-Q1"}, mid_feb, mid_aug) == ["2026-Q2"]
    assert missing_reviews(set(), datetime(2026, 1, 1, tzinfo=UTC), mid_feb) == []
    # A window ending exactly at a quarter's end makes it due; mixing kinds works.
    assert missing_reviews(set(), "2026-Q2", datetime(2026, 7, 1, tzinfo=UTC)) == ["2026-Q2"]
    # Empty or inverted windows.
    assert missing_reviews(set(), "2026-Q3", "2026-Q2") == []
    assert missing_reviews(set(), mid_aug, mid_feb) == []
    with pytest.raises(ValueError):
        missing_reviews(set(), datetime(2026, 1, 1), mid_aug)
    with pytest.raises(ValueError):
        missing_reviews(set(), "2026-Q9", "2026-Q4")


def test_entitlements_of_the_demo_policy() -> None:
    policy = load_policy_dir(REPO / "policies", max_file_bytes=1_000_000)
    ids = [e.id for e in entitlements(policy)]
    assert ids == [
        "engineering/group:engineering",
        "orders-service/service_account:orders:orders-api",
        "orders-dba/group:engineering",
        "payments-prod/group:engineering",
        "auditors/group:auditors",
        "security-admins/group:security-admins",
        "prod-shell/group:engineering",
        "prod-root/group:engineering",
    ]
    assert grants_entitlement(policy, "orders-service", "service_account", "orders:orders-api")
    assert not grants_entitlement(policy, "orders-service", "group", "orders:orders-api")
    assert not grants_entitlement(policy, "no-such-role", "group", "engineering")
    # Only an entitlement naming the reviewer directly is a self-review, never a group.
    assert names_principal("subject", "Bob ", "bob", None)
    assert not names_principal("subject", "bobby", "bob", None)
    # For workloads the principal's service account ("ns:name") is what counts.
    assert not names_principal("service_account", "orders:orders-api", "x", None)
    assert names_principal("service_account", "orders:orders-api", "x", "orders:orders-api")
    assert not names_principal("group", "engineering", "engineering", None)


# --- the API ------------------------------------------------------------------------------


class Reviews:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def call(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": auth(token)}
        if body is not None:
            kwargs["json"] = body
        async with self.http.request(method, self.url + path, **kwargs) as r:
            assert r.content_type == "application/json", await r.text()
            return r.status, await r.json()

    async def open(self, token: str, period: str, group: str = "sre-leads") -> tuple[int, Any]:
        return await self.call(
            "POST", "/v1/reviews", token, {"period": period, "reviewer_group": group}
        )

    async def get(self, token: str, rid: str) -> tuple[int, Any]:
        return await self.call("GET", f"/v1/reviews/{rid}", token)

    async def decide(
        self, token: str, rid: str, ent: str, decision: str, comment: str | None = None
    ) -> tuple[int, Any]:
        body = {"entitlement_id": ent, "decision": decision}
        if comment is not None:
            body["comment"] = comment
        return await self.call("POST", f"/v1/reviews/{rid}/decisions", token, body)

    async def complete(self, token: str, rid: str) -> tuple[int, Any]:
        return await self.call("POST", f"/v1/reviews/{rid}/complete", token)


def expect(result: tuple[int, Any], status: int, code: str) -> None:
    got, body = result
    assert (got, body.get("error", {}).get("code")) == (status, code), body
    assert set(body) == {"error"} and body["error"]["message"], body


async def test_review_snapshot_decisions_and_completion(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession, stack: Any
) -> None:
    api = Reviews(http, broker.url)
    await issue(http, broker.url, tokens["alice"], "stripe/test")
    await issue(http, broker.url, tokens["alice"], "stripe/test")
    await issue(http, broker.url, tokens["svc-orders"], "db/orders-ro")
    period = period_of(datetime.now(UTC))

    # Only an admin opens; input is checked.
    expect(await api.open(tokens["bob"], period), 403, "forbidden")
    expect(await api.open(tokens["carol"], period), 403, "forbidden")
    expect(await api.open(tokens["erin"], "2026-Q7"), 400, "invalid_period")
    future = period_of(datetime.now(UTC) + timedelta(days=200))
    expect(await api.open(tokens["erin"], future), 400, "period_not_started")
    expect(await api.open(tokens["erin"], period, "  "), 400, "missing_field")
    expect(await api.open(tokens["erin"], period, "g" * 300), 400, "invalid_reviewer_group")

    status, review = await api.open(tokens["erin"], period)
    assert status == 201, review
    rid = review["id"]
    assert review["status"] == "open"
    assert review["opened_by"] == "erin"
    assert review["reviewer_group"] == "sre-leads"
    assert review["policy_version"] == broker.app[POLICY].current.version
    start, end = period_bounds(period)
    assert (review["period_start"], review["period_end"]) == (start.isoformat(), end.isoformat())
    by_id = {e["id"]: e for e in review["entitlements"]}
    assert set(by_id) == {
        "engineering/group:engineering",
        "orders-service/service_account:orders:orders-api",
        "orders-dba/group:engineering",
        "payments-prod/group:engineering",
        "auditors/group:auditors",
        "security-admins/group:security-admins",
        "prod-shell/group:engineering",
        "prod-root/group:engineering",
    }
    assert by_id["payments-prod/group:engineering"]["privileged"] is True
    assert by_id["orders-service/service_account:orders:orders-api"]["source"] == (
        "service_account:orders:orders-api"
    )
    assert by_id["security-admins/group:security-admins"]["capabilities"] == ["admin"]
    assert all(e["decision"] is None for e in review["entitlements"])
    assert review["entitlements_truncated"] is False and review["usage_truncated"] is False

    # Usage: distinct subject x secret x role, with counts and last use, from grant.issued.
    usage = {(u["subject"], u["secret"], u["role"]): u for u in review["usage"]}
    alice = usage[("alice", "stripe/test", "engineering")]
    assert alice["grants"] >= 2 and alice["subject_kind"] == "human"
    last = datetime.fromisoformat(alice["last_used"])
    assert start <= last < end
    svc = usage[("system:serviceaccount:orders:orders-api", "db/orders-ro", "orders-service")]
    assert svc["grants"] >= 1
    assert len(usage) == len(review["usage"])  # one row per triple
    counted = await ledger_rows(
        stack,
        "event = 'grant.issued' AND subject = 'alice' AND secret = 'stripe/test'"
        " AND role = 'engineering' AND recorded_at >= $1 AND recorded_at < $2"
        " AND seq < (SELECT seq FROM ledger.events WHERE event = 'review.opened'"
        "   AND body->>'review_id' = $3)",
        start,
        end,
        rid,
    )
    assert alice["grants"] == len(counted)

    opened = await ledger_rows(stack, "event = 'review.opened' AND body->>'review_id' = $1", rid)
    assert len(opened) == 1 and opened[0]["subject"] == "erin"
    assert opened[0]["policy_version"] == review["policy_version"]
    assert opened[0]["body"]["entitlements"] == [
        {k: v for k, v in e.items() if k != "decision"} for e in review["entitlements"]
    ]

    # Who sees it: admin, audit, the reviewer group; nobody else (404, as if absent).
    for who in ("erin", "carol", "bob", "dana"):
        status, seen = await api.get(tokens[who], rid)
        assert status == 200 and seen["id"] == rid, (who, seen)
    expect(await api.get(tokens["alice"], rid), 404, "review_not_found")
    expect(await api.get(tokens["erin"], "not-a-uuid"), 404, "review_not_found")
    assert (await api.get(tokens["bob"], rid))[1]["can_decide"] is True
    assert (await api.get(tokens["carol"], rid))[1]["can_decide"] is False

    # Decision rules.
    ent = "engineering/group:engineering"
    expect(await api.decide(tokens["carol"], rid, ent, "keep"), 403, "not_a_reviewer")
    expect(await api.decide(tokens["erin"], rid, ent, "keep"), 403, "not_a_reviewer")
    expect(await api.decide(tokens["alice"], rid, ent, "keep"), 404, "review_not_found")
    expect(await api.decide(tokens["bob"], rid, ent, "maybe"), 400, "invalid_decision")
    expect(await api.decide(tokens["bob"], rid, "nope/group:x", "keep"), 400, "unknown_entitlement")
    expect(await api.decide(tokens["bob"], rid, ent, "revoke"), 400, "comment_required")
    expect(await api.complete(tokens["bob"], rid), 409, "review_incomplete")

    revoke = "payments-prod/group:engineering"
    for e in review["entitlements"]:
        if e["id"] == revoke:
            continue
        status, after = await api.decide(tokens["bob"], rid, e["id"], "keep")
        assert status == 200, after
    expect(await api.decide(tokens["dana"], rid, ent, "revoke", "x"), 409, "already_decided")
    expect(await api.complete(tokens["dana"], rid), 409, "review_incomplete")
    status, after = await api.decide(
        tokens["dana"], rid, revoke, "revoke", "live key should be break-glass only"
    )
    assert status == 200, after
    assert after["progress"] == {
        "entitlements": 8,
        "decided": 8,
        "keep": 7,
        "revoke": 1,
    }
    # The revoke is an open action item (the policy in force still grants it).
    [item] = after["action_items"]
    assert item["entitlement_id"] == revoke and item["status"] == "open"
    assert item["decided_by"] == "dana" and item["resolved_by_version"] is None
    assert after["open_action_items"] == 1

    expect(await api.complete(tokens["carol"], rid), 403, "not_a_reviewer")
    status, done = await api.complete(tokens["bob"], rid)
    assert status == 200, done
    assert done["status"] == "completed" and done["completed_by"] == "bob"
    expect(await api.complete(tokens["dana"], rid), 409, "review_completed")
    expect(await api.decide(tokens["bob"], rid, revoke, "keep"), 409, "review_completed")

    decisions = await ledger_rows(
        stack, "event = 'review.decision' AND body->>'review_id' = $1", rid
    )
    assert len(decisions) == 8
    assert {(d["outcome"], d["subject"]) for d in decisions if d["role"] == "payments-prod"} == {
        ("revoke", "dana")
    }
    assert all("sre-leads" in d["body"]["groups"] for d in decisions)
    completed = await ledger_rows(
        stack, "event = 'review.completed' AND body->>'review_id' = $1", rid
    )
    assert len(completed) == 1 and completed[0]["body"]["period"] == period
    assert period in await review_queries.completed_review_periods(broker.app[LEDGER].pool)

    # Listing: by period, summaries only; auditors see it, alice sees nothing.
    status, listed = await api.call("GET", f"/v1/reviews?period={period}", tokens["carol"])
    assert status == 200
    mine = [r for r in listed["reviews"] if r["id"] == rid]
    assert len(mine) == 1 and "entitlements" not in mine[0]
    assert mine[0]["status"] == "completed" and mine[0]["open_action_items"] == 1
    status, listed = await api.call("GET", "/v1/reviews", tokens["alice"])
    assert status == 200 and listed["reviews"] == []
    expect(
        await api.call("GET", "/v1/reviews?period=2026-Q9", tokens["carol"]), 400, "invalid_period"
    )


async def test_revoke_is_resolved_by_a_later_policy_version(
    broker: RunningBroker,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    stack: Any,
    tmp_path: Path,
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    roles = policies / "roles.yaml"
    base = roles.read_text()
    contractors = (
        "\n  - name: review-contractors\n    members: {subjects: [bob, frank]}\n"
        "    secrets: [stripe/test]\n    max_ttl: 5m\n"
    )
    roles.write_text(base + contractors)
    running = await start_broker(
        broker_settings.with_overrides(
            policies_dir=policies, policy_reload_interval_seconds=0.2, replica_id="reviews-test"
        )
    )
    try:
        api = Reviews(http, running.url)
        first = running.app[POLICY].current.version
        status, review = await api.open(tokens["erin"], period_of(datetime.now(UTC)))
        assert status == 201, review
        rid = review["id"]
        assert review["policy_version"] == first
        ids = {e["id"] for e in review["entitlements"]}
        assert {"review-contractors/subject:bob", "review-contractors/subject:frank"} <= ids

        # bob may not review an entitlement granted to him by name.
        expect(
            await api.decide(tokens["bob"], rid, "review-contractors/subject:bob", "keep"),
            403,
            "self_review",
        )
        status, after = await api.decide(
            tokens["bob"], rid, "review-contractors/subject:frank", "revoke", "frank left"
        )
        assert status == 200, after
        [item] = after["action_items"]
        assert item["status"] == "open"

        # A replica on an *earlier* version (the session broker: no such role at all) must
        # not resolve it, even when reading the review.
        await asyncio.sleep(0.6)
        status, seen = await Reviews(http, broker.url).get(tokens["carol"], rid)
        assert status == 200
        assert [i["status"] for i in seen["action_items"]] == ["open"]

        # A later version that still grants it does not resolve it either.
        roles.write_text(base + contractors + "\n# reviewed\n")
        await until(lambda: _version_changed(running, first), "the policy reload", timeout=10)
        second = running.app[POLICY].current.version
        await asyncio.sleep(0.6)
        status, seen = await api.get(tokens["carol"], rid)
        assert [i["status"] for i in seen["action_items"]] == ["open"]

        # The version that drops frank resolves the item, naming itself.
        roles.write_text(base + contractors.replace("[bob, frank]", "[bob]"))
        await until(lambda: _version_changed(running, second), "the policy reload", timeout=10)
        third = running.app[POLICY].current.version

        async def resolved() -> list[dict[str, Any]]:
            return await ledger_rows(
                stack, "event = 'review.action_resolved' AND body->>'review_id' = $1", rid
            )

        rows = await poll(resolved, bool)
        assert len(rows) == 1
        assert rows[0]["policy_version"] == third
        assert rows[0]["body"]["entitlement_id"] == "review-contractors/subject:frank"
        assert rows[0]["body"]["snapshot_policy_version"] == first
        status, seen = await api.get(tokens["carol"], rid)
        [item] = seen["action_items"]
        assert item["status"] == "resolved" and item["resolved_by_version"] == third
        assert seen["open_action_items"] == 0
        # Read again through the other replica: still exactly one resolution.
        await Reviews(http, broker.url).get(tokens["carol"], rid)
        assert len(await resolved()) == 1
    finally:
        await running.runner.cleanup()


def _version_changed(running: RunningBroker, old: str) -> bool:
    return running.app[POLICY].current.version != old


async def test_cli_open_show_decide_complete(
    broker: RunningBroker, tokens: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    def run(who: str, *argv: str) -> int:
        return cli_main(["reviews", *argv, "--url", broker.url, "--token", tokens[who]])

    period = period_of(datetime.now(UTC))
    assert (
        await asyncio.to_thread(
            run, "erin", "open", "--period", period, "--reviewer-group", "sre-leads", "--json"
        )
        == 0
    )
    opened = json.loads(capsys.readouterr().out)
    rid = opened["id"]
    assert await asyncio.to_thread(run, "bob", "show", rid[:8]) == 0
    out = capsys.readouterr().out
    assert "engineering/group:engineering" in out and "sre-leads" in out
    assert await asyncio.to_thread(run, "bob", "complete", rid) == 1
    assert "review_incomplete" in capsys.readouterr().err
    assert (
        await asyncio.to_thread(
            run, "bob", "decide", rid, "payments-prod/group:engineering", "revoke"
        )
        == 1
    )
    assert "comment_required" in capsys.readouterr().err
    for e in opened["entitlements"]:
        assert await asyncio.to_thread(run, "dana", "decide", rid, e["id"], "keep") == 0
    assert await asyncio.to_thread(run, "dana", "complete", rid) == 0
    assert "completed" in capsys.readouterr().out
    assert await asyncio.to_thread(run, "carol", "list", "--period", period) == 0
    assert rid[:8] in capsys.readouterr().out
