"""Offboarding end to end, against real OpenBao and Postgres (issue 4).

A departing person's working database logins stop working (new logins refused, open
sessions killed), their elevations can no longer be redeemed, and their still-valid JWT is
refused on every replica; the ledger shows start, each revoke and completion in order, and
the SLA is measured from ``terminated_at``. Each test offboards its own dedicated subject:
the shared demo identities (alice, bob, ...) are used by other tests and never offboarded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.backends import db_login
from tests.support.brokers import RunningBroker, running_broker, start_broker
from tests.support.commands import cli
from tests.support.http import JsonApi, auth, error_of, new_request_id, offboard
from tests.support.ledger import ledger_rows
from tests.support.polling import poll
from tests.support.tokens import fresh_subject, mint
from tests.support.vault_proxy import VaultProxy

# Errors when a login is refused or a session was terminated under us.
_GONE = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
_REASON = "reindex orders after the 2am incident"


def _subject() -> str:
    return fresh_subject("alice-offboard")


def _token(settings: Settings, subject: str, groups: list[str] | None = None) -> str:
    return mint(settings, subject, groups if groups is not None else ["engineering"])


class Api(JsonApi):
    async def offboard(self, token: str, **body: Any) -> tuple[int, Any]:
        return await self.call("POST", "/v1/offboarding", token, body)

    async def refused_code(self, method: str, path: str, token: str, body: Any = None) -> str:
        async with self.http.request(method, self.url + path, headers=auth(token), json=body) as r:
            if r.status == 403:
                return (await error_of(r))["code"]
            return f"http {r.status}"


async def _refusals(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/metrics") as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "broker_offboarded_refusals_total":
                return float(sample.value)
    return 0.0


async def _login_refused(stack: DevStack, cred: dict[str, str]) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        conn = await db_login(stack, cred["username"], cred["password"])
        await conn.close()


@pytest.fixture
async def replica2(broker_settings: Settings) -> AsyncIterator[RunningBroker]:
    async with running_broker(broker_settings, replica_id=fresh_subject("offboarding")) as r:
        yield r


async def test_offboarding_ends_access_and_refuses_the_subject_everywhere(
    stack: DevStack,
    broker: RunningBroker,
    replica2: RunningBroker,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api, other = Api(http, broker.url), Api(http, replica2.url)
    subject = _subject()
    token = _token(broker_settings, subject)
    # The same person, spelled differently by another token: refused too.
    shouted = _token(broker_settings, f"  {subject.upper()} ")

    # A standing login that works.
    ro = await api.ok("POST", "/v1/credentials", token, {"secret": "db/orders-ro"})
    ro_conn = await db_login(stack, ro["credential"]["username"], ro["credential"]["password"])
    # A pending elevation, and an approved one with a redeemed admin login.
    pending = await api.ok(
        "POST",
        "/v1/elevations",
        token,
        {"secret": "stripe/prod", "reason": _REASON, "ticket": "INC-4242"},
    )
    approved = await api.ok(
        "POST", "/v1/elevations", token, {"secret": "db/orders-admin", "reason": _REASON}
    )
    await api.ok("POST", f"/v1/elevations/{approved['id']}/approve", tokens["bob"], {})
    admin = await api.ok("POST", f"/v1/elevations/{approved['id']}/credentials", token, {})
    admin_conn = await db_login(
        stack, admin["credential"]["username"], admin["credential"]["password"]
    )
    assert await admin_conn.fetchval("SELECT count(*) FROM public.orders") >= 1
    assert (await other.call("GET", "/v1/me", token))[0] == 200
    refusals_before = await _refusals(http, broker.url)

    rid = new_request_id()
    status, report = await api.call(
        "POST",
        "/v1/offboarding",
        tokens["erin"],
        {"subject": subject, "reason": "left the company"},
        request_id=rid,
    )
    assert status == 201, report
    try:
        assert report["subject"] == subject
        assert sorted(report["grants_revoked"]) == sorted([ro["id"], admin["id"]])
        assert sorted(report["elevations_closed"]) == sorted([pending["id"], approved["id"]])
        assert report["sla_met"] is True
        assert 0 <= report["seconds_from_termination"] < 60
        assert (
            report["sla_deadline"]
            == (datetime.fromisoformat(report["terminated_at"]) + timedelta(hours=4)).isoformat()
        )

        # Both logins are dead: open sessions killed, new logins refused.
        for conn in (ro_conn, admin_conn):
            with pytest.raises(_GONE):
                await conn.fetchval("SELECT 1")
    finally:
        await ro_conn.close()
        await admin_conn.close()
    await _login_refused(stack, ro["credential"])
    await _login_refused(stack, admin["credential"])

    # The elevations are closed: nothing can be redeemed under them.
    _, el = await api.call("GET", f"/v1/elevations/{pending['id']}", tokens["erin"])
    assert el["status"] == "cancelled", el
    _, el = await api.call("GET", f"/v1/elevations/{approved['id']}", tokens["erin"])
    assert el["status"] == "ended", el

    # The still-valid JWT is refused everywhere on this replica...
    for method, path, body in (
        ("POST", "/v1/credentials", {"secret": "db/orders-ro"}),
        ("GET", "/v1/me", None),
        ("GET", "/v1/elevations", None),
        ("POST", f"/v1/elevations/{approved['id']}/credentials", {}),
    ):
        assert await api.refused_code(method, path, token, body) == "subject_offboarded", path
    assert await api.refused_code("GET", "/v1/me", shouted) == "subject_offboarded"
    assert await _refusals(http, broker.url) >= refusals_before + 5
    # ... and on the other replica within a few seconds.
    code = await poll(
        lambda: other.refused_code("GET", "/v1/me", token),
        lambda c: c == "subject_offboarded",
        timeout=6.0,
    )
    assert code == "subject_offboarded"

    # The ledger: started, the closes and revokes, completed — in that order.
    rows = await ledger_rows(stack, "e.request_id = $1", rid)
    kinds = [r["event"] for r in rows]
    assert kinds[0] == "subject.offboarding_started", kinds
    assert kinds[-1] == "subject.offboarded", kinds
    assert sorted(kinds[1:-1]) == [
        "elevation.cancelled",
        "elevation.ended",
        "grant.revoked",
        "grant.revoked",
    ], kinds
    started, done = rows[0], rows[-1]
    assert started["subject"] == "erin" and started["body"]["subject"] == subject
    assert started["body"]["reason"] == "left the company"
    assert started["body"]["sla_seconds"] == 4 * 3600
    oid = started["body"]["offboarding_id"]
    assert done["body"]["offboarding_id"] == oid == report["offboarding_id"]
    for r in rows[1:-1]:
        if r["event"] == "grant.revoked":
            assert r["body"]["reason"] == f"offboarding {oid}"
            assert r["body"]["grant_subject"] == subject
    assert done["body"]["sla_met"] is True

    # Offboarding again is refused.
    status, out = await api.offboard(tokens["erin"], subject=subject, reason="again")
    assert (status, out["error"]["code"]) == (409, "already_offboarded")

    # The auditor sees it, with the SLA met and the counts.
    _, listed = await api.call("GET", "/v1/offboarding", tokens["carol"])
    mine = [o for o in listed["offboardings"] if o["id"] == oid]
    assert len(mine) == 1, listed
    assert mine[0]["status"] == "offboarded"
    assert (mine[0]["sla"], mine[0]["sla_met"]) == ("met", True)
    assert (mine[0]["grants_revoked"], mine[0]["elevations_closed"]) == (2, 2)

    # Re-onboarding: an explicit, ledgered act; requests work again, on both replicas.
    status, out = await api.call(
        "POST", f"/v1/offboarding/{subject}/reinstate", tokens["erin"], {"reason": "rehired"}
    )
    assert status == 200, out
    assert out["offboarding_id"] == oid
    assert (await api.call("GET", "/v1/me", token))[0] == 200
    await api.ok("POST", "/v1/credentials", token, {"secret": "stripe/test"})
    status = await poll(
        lambda: other.call("GET", "/v1/me", token), lambda r: r[0] == 200, timeout=6.0
    )
    assert status[0] == 200
    rows = await ledger_rows(
        stack, "e.event = 'subject.reinstated' AND e.body->>'offboarding_id' = $1", oid
    )
    assert len(rows) == 1 and rows[0]["subject"] == "erin"
    assert rows[0]["body"]["reason"] == "rehired"
    status, out = await api.call(
        "POST", f"/v1/offboarding/{subject}/reinstate", tokens["erin"], {"reason": "rehired"}
    )
    assert (status, out["error"]["code"]) == (404, "not_offboarded")
    _, listed = await api.call("GET", "/v1/offboarding", tokens["erin"])
    assert [o["status"] for o in listed["offboardings"] if o["id"] == oid] == ["reinstated"]


async def test_sla_is_measured_from_termination(
    broker: RunningBroker,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = Api(http, broker.url)
    subject = _subject()
    terminated = datetime.now(UTC) - timedelta(hours=5)
    status, report = await api.offboard(
        tokens["erin"], subject=subject, reason="left", terminated_at=terminated.isoformat()
    )
    assert status == 201, report
    assert report["sla_met"] is False
    assert report["seconds_from_termination"] >= 5 * 3600
    assert datetime.fromisoformat(report["terminated_at"]) == terminated
    assert datetime.fromisoformat(report["completed_at"]) > datetime.fromisoformat(
        report["sla_deadline"]
    )
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    status, listed = await _list(api, tokens["carol"], since)
    assert status == 200, listed
    mine = [o for o in listed["offboardings"] if o["id"] == report["offboarding_id"]]
    assert len(mine) == 1
    assert (mine[0]["sla"], mine[0]["sla_met"]) == ("missed", False)
    # Nothing for a period before it started.
    status, listed = await _list(api, tokens["carol"], "2020-01-01", "2020-02-01")
    assert (status, listed["offboardings"]) == (200, [])

    # A termination in the future is refused.
    status, out = await api.offboard(
        tokens["erin"],
        subject=_subject(),
        reason="not yet",
        terminated_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    )
    assert (status, out["error"]["code"]) == (400, "invalid_terminated_at")


async def _list(api: Api, token: str, since: str, until: str | None = None) -> tuple[int, Any]:
    query = {"from": since, **({"to": until} if until else {})}
    async with api.http.get(f"{api.url}/v1/offboarding", params=query, headers=auth(token)) as r:
        return r.status, await r.json()


async def test_only_admins_offboard_and_requests_are_checked(
    broker: RunningBroker,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    api = Api(http, broker.url)
    victim = _subject()
    for name in ("alice", "bob", "carol"):
        status, out = await api.offboard(tokens[name], subject=victim, reason="x")
        assert (status, out["error"]["code"]) == (403, "forbidden"), name
        status, out = await api.call(
            "POST", f"/v1/offboarding/{victim}/reinstate", tokens[name], {"reason": "x"}
        )
        assert (status, out["error"]["code"]) == (403, "forbidden"), name
    status, out = await api.call("GET", "/v1/offboarding", tokens["alice"])
    assert (status, out["error"]["code"]) == (403, "forbidden")
    # The would-be victim was never refused.
    assert (await api.call("GET", "/v1/me", _token(broker_settings, victim)))[0] == 200

    status, out = await api.offboard(tokens["erin"], subject=victim)
    assert (status, out["error"]["code"]) == (400, "reason_required")
    status, out = await api.offboard(tokens["erin"], subject="  ", reason="left")
    assert (status, out["error"]["code"]) == (400, "invalid_subject")
    status, out = await api.offboard(
        tokens["erin"], subject=victim, reason="left", terminated_at="2026-01-01"
    )
    assert (status, out["error"]["code"]) == (400, "invalid_terminated_at")
    status, out = await api.call(
        "POST", f"/v1/offboarding/{victim}/reinstate", tokens["erin"], {"reason": "back"}
    )
    assert (status, out["error"]["code"]) == (404, "not_offboarded")
    status, out = await api.call("GET", "/v1/offboarding?from=yesterday", tokens["carol"])
    assert (status, out["error"]["code"]) == (400, "invalid_from")


# --- Vault down mid-offboarding: the subject stays refused, a retry completes it ---------


async def test_vault_down_leaves_the_subject_refused_and_a_retry_resumes(
    stack: DevStack,
    broker_behind_vault_proxy: tuple[RunningBroker, VaultProxy],
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    broker, flaky = broker_behind_vault_proxy
    api = Api(http, broker.url)
    subject = _subject()
    token = _token(broker_settings, subject)
    grant = await api.ok("POST", "/v1/credentials", token, {"secret": "db/orders-ro"})

    flaky.refuse_revoke = True
    status, out = await api.offboard(tokens["erin"], subject=subject, reason="left")
    assert (status, out["error"]["code"]) == (503, "vault_unavailable"), out
    # Started, not completed: already refused, the login still alive.
    assert await api.refused_code("GET", "/v1/me", token) == "subject_offboarded"
    rows = await ledger_rows(
        stack,
        "e.event LIKE 'subject.%' AND e.body->>'subject' = $1",
        subject,
    )
    assert [r["event"] for r in rows] == ["subject.offboarding_started"]
    oid = rows[0]["body"]["offboarding_id"]
    _, listed = await api.call("GET", "/v1/offboarding", tokens["carol"])
    assert [o["status"] for o in listed["offboardings"] if o["id"] == oid] == ["in_progress"]
    status, out = await api.call(
        "POST", f"/v1/offboarding/{subject}/reinstate", tokens["erin"], {"reason": "x"}
    )
    assert (status, out["error"]["code"]) == (409, "offboarding_in_progress")

    flaky.refuse_revoke = False
    status, report = await api.offboard(tokens["erin"], subject=subject, reason="retry")
    assert status == 201, report
    assert report["offboarding_id"] == oid  # resumed, not a second offboarding
    assert report["reason"] == "left"
    assert report["grants_revoked"] == [grant["id"]]
    await _login_refused(stack, grant["credential"])
    rows = await ledger_rows(stack, "e.event LIKE 'subject.%' AND e.body->>'subject' = $1", subject)
    assert [r["event"] for r in rows] == ["subject.offboarding_started", "subject.offboarded"]


# --- the CLI ---------------------------------------------------------------------------


async def test_cli_offboard_list_and_reinstate(
    broker: RunningBroker,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    subject = _subject()
    token = _token(broker_settings, subject)
    late = (datetime.now(UTC) - timedelta(hours=5)).isoformat()
    run = await cli(
        "offboard",
        subject,
        "--reason",
        "left",
        "--terminated-at",
        late,
        "--json",
        cwd=tmp_path,
        url=broker.url,
        token=tokens["erin"],
    )
    assert run.returncode == 0, run.stderr
    report = run.json()
    assert report["subject"] == subject and report["sla_met"] is False
    assert (await Api(http, broker.url).call("GET", "/v1/me", token))[0] == 403

    run = await cli("offboardings", "list", cwd=tmp_path, url=broker.url, token=tokens["carol"])
    assert run.returncode == 0, run.stderr
    line = next(ln for ln in run.stdout.splitlines() if subject in ln)
    assert "offboarded" in line and "missed" in line

    run = await cli(
        "offboard",
        subject,
        "--reason",
        "again",
        cwd=tmp_path,
        url=broker.url,
        token=tokens["erin"],
    )
    assert run.returncode == 1 and "already_offboarded" in run.stderr
    run = await cli(
        "offboard",
        "--reinstate",
        subject,
        "--reason",
        "rehired",
        cwd=tmp_path,
        url=broker.url,
        token=tokens["alice"],
    )
    assert run.returncode == 1 and "forbidden" in run.stderr
    run = await cli(
        "offboard",
        "--reinstate",
        subject,
        "--reason",
        "rehired",
        cwd=tmp_path,
        url=broker.url,
        token=tokens["erin"],
    )
    assert run.returncode == 0, run.stderr
    assert f"reinstated {subject}" in run.stdout
    assert (await Api(http, broker.url).call("GET", "/v1/me", token))[0] == 200
    run = await cli("offboard", "--reason", "x", cwd=tmp_path, url=broker.url, token="t")
    assert run.returncode == 2 and "SUBJECT is required" in run.stderr


async def test_a_stale_replica_cannot_issue_to_an_offboarded_subject(
    broker: RunningBroker,
    broker_settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    """The blocklist refresh leaves a window; the ledger guard on issuance closes it.

    Replica B never refreshes its blocklist after start (a stale replica): it lets the
    offboarded subject's valid JWT through authentication, mints in Vault, and then the
    ledger refuses the issued row — the credential is revoked, never handed out.
    """
    subject = _subject()
    token = _token(broker_settings, subject)
    stale = await start_broker(
        broker_settings.with_overrides(
            replica_id=f"stale-{subject}", blocklist_refresh_seconds=3600.0
        )
    )
    try:
        await offboard(http, broker.url, tokens["erin"], subject, "left the company")
        for secret in ("db/orders-ro", "stripe/test"):
            request_id = new_request_id()
            async with http.post(
                f"{stale.url}/v1/credentials",
                json={"secret": secret},
                headers=auth(token, request_id),
            ) as r:
                body = await r.json()
                assert r.status == 403, body
                assert body["error"]["code"] == "subject_offboarded"
                assert "credential" not in body
            rows = await ledger_rows(stack, "request_id = $1", request_id)
            assert "grant.issued" not in [row["event"] for row in rows]
    finally:
        await stale.runner.cleanup()
