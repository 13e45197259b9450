"""The console's auditor and admin pages in a real Chromium against the real stack.

Auditors, admins and the people they ask about are fresh subjects at a provider of the
test's own (``auditors``, ``security-admins`` and ``engineering`` are the groups
``policies/roles.yaml`` gives ``audit``, ``admin`` and the Stripe roles), so the ledger rows
a test reads are its own. Every page visited is scanned with axe-core and checked for
horizontal scrolling at 390 and 1280 px.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Page

from broker.console.routes import CONSOLE_ROUTES
from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.web.keys import POLICY
from broker.web.routes import ROUTES
from tests.support.axe import assert_accessible
from tests.support.brokers import RunningBroker, running_broker
from tests.support.browser import Browser
from tests.support.elevation import ElevationApi
from tests.support.http import JsonApi, auth, issue
from tests.support.layout import assert_fits
from tests.support.ledger import ledger_rows
from tests.support.oidc_provider import OIDCProvider, OIDCUser
from tests.support.tokens import fresh_subject, mint

pytestmark = [pytest.mark.stack, pytest.mark.browser]

# `make console-screenshots` sets it: the screenshot test then writes into docs/console/.
SCREENSHOTS_ENV = "CONSOLE_SCREENSHOTS_DIR"
XSS = '<img src=x onerror="window.__xss=1">"><script>window.__xss=2</script>'


def _person(role: str, *groups: str) -> OIDCUser:
    name = f"{role}-{uuid.uuid4().hex[:8]}"
    return OIDCUser(name, f"{name}@example.com", name.title(), f"{name}-password", groups)


class People:
    """The test's people: an auditor (who also reviews for ``review_group``), an admin,
    and an engineer who requests access."""

    def __init__(self) -> None:
        self.review_group = f"reviewers-{uuid.uuid4().hex[:6]}"
        self.auditor = _person("carol", "auditors", self.review_group)
        self.admin = _person("erin", "security-admins")
        self.engineer = _person("alice", "engineering")
        self.approver = _person("bob", "sre-leads")
        self.nobody = _person("dave")  # no group: no role, no capability

    def all(self) -> tuple[OIDCUser, ...]:
        return (self.auditor, self.admin, self.engineer, self.approver, self.nobody)


@pytest.fixture
def people() -> People:
    return People()


@pytest.fixture
async def provider(people: People) -> AsyncIterator[OIDCProvider]:
    tmp = Path(tempfile.mkdtemp(prefix="console-audit-provider-"))
    try:
        async with OIDCProvider(tmp, users=people.all()) as running:
            yield running
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def broker(
    broker_settings: Settings, provider: OIDCProvider, tmp_path: Path
) -> AsyncIterator[RunningBroker]:
    corp = provider.broker_settings()
    async with running_broker(
        broker_settings,
        oidc_providers=(corp,),
        console_key_path=tmp_path / "console.key",
        blocklist_refresh_seconds=0.5,
    ) as running:
        yield running


async def _signed_in(
    browser: Browser, broker: RunningBroker, person: OIDCUser, path: str = "/console/"
) -> Page:
    page = await browser.new_page()
    await page.goto(f"{broker.url}{path}")
    assert "/console/login" in page.url
    async with page.expect_navigation():
        await page.click("text=Sign in with Corp SSO")
    await browser.through_provider(page, person)
    await page.wait_for_url(f"{broker.url}{path}")
    return page


async def _checked(page: Page) -> None:
    """Accessible, and no horizontal scrolling at a phone's width or a laptop's."""
    await assert_accessible(page)
    await assert_fits(page, (390, 1280))


async def _submit(page: Page, selector: str) -> None:
    async with page.expect_navigation():
        await page.click(selector)


def _today() -> tuple[str, str]:
    today = datetime.now(UTC).date()
    return today.isoformat(), (today + timedelta(days=1)).isoformat()


def _watch_for_script(page: Page) -> list[str]:
    """Dialogs and console errors on ``page`` (an injected script would show up here)."""
    seen: list[str] = []
    page.on("dialog", lambda d: seen.append(f"dialog: {d.message}"))
    page.on("console", lambda m: seen.append(f"console: {m.text}") if m.type == "error" else None)
    return seen


async def _privileged_access(
    http: aiohttp.ClientSession,
    broker: RunningBroker,
    subject: str,
    reason: str,
    comment: str = f"checked INC-4242 {XSS}",
) -> tuple[str, str]:
    """``subject`` asks for stripe/prod with ``reason``, a fresh SRE lead approves, the
    subject redeems; returns (the approver, the approval comment)."""
    requester = mint(broker.settings, subject, ["engineering"])
    approver = fresh_subject("bob")
    approver_token = mint(broker.settings, approver, ["sre-leads"])
    api = ElevationApi(http, broker.url)
    elevation = await api.requested(
        requester, secret="stripe/prod", reason=reason, ticket="INC-4242", duration="30m"
    )
    status, out = await api.approve(approver_token, elevation["id"], comment)
    assert status == 200, out
    await api.redeemed(requester, elevation["id"])
    return approver, comment


# --- the auditor ------------------------------------------------------------------------


async def test_why_shows_role_policy_version_rule_text_reason_and_approval(
    broker: RunningBroker, browser: Browser, people: People, http: aiohttp.ClientSession
) -> None:
    subject = fresh_subject("why")
    reason = f"refund the double charges {XSS}"
    approver, comment = await _privileged_access(http, broker, subject, reason)
    await issue(http, broker.url, mint(broker.settings, subject, ["engineering"]), "stripe/test")

    page = await _signed_in(browser, broker, people.auditor, "/console/audit/why")
    scripts = _watch_for_script(page)
    await _checked(page)
    assert "Ask about a subject" in await page.inner_text("main")  # the empty state
    await page.fill("#f-subject", subject)
    await page.fill("#f-secret", "stripe/prod")
    await _submit(page, "button:text-is('Ask')")
    assert "/console/audit/access?" in page.url
    text = await page.inner_text("main")
    assert "1 access window" in text, text
    assert "payments-prod" in text and "roles.yaml:" in text
    assert broker.app[POLICY].current.version in text
    rule = await page.inner_text("article.window pre")
    assert "- name: payments-prod" in rule and "ticket_required: true" in rule
    assert reason in text and "INC-4242" in text  # as text, not markup
    assert approver in text and comment in text
    assert await page.locator("article.window time").count() >= 4
    assert await page.evaluate("window.__xss === undefined")
    assert scripts == []
    await _checked(page)

    # Without the secret: everything the subject had in the period (two windows).
    await page.fill("#f-secret", "")
    await _submit(page, "button:text-is('Ask')")
    text = await page.inner_text("main")
    assert "2 access windows" in text and "stripe/test" in text
    assert "secret=" not in page.url  # a blank field is left out, not sent empty

    # A bad period is the API's refusal, shown as a page with the way back.
    await page.fill("#f-to", "2000-01-01")
    await _submit(page, "button:text-is('Ask')")
    assert "invalid_period" in await page.inner_text("main")
    await _checked(page)
    await page.close()


async def test_events_filter_and_page(
    broker: RunningBroker, browser: Browser, people: People, http: aiohttp.ClientSession
) -> None:
    subject = fresh_subject("events")
    token = mint(broker.settings, subject, ["engineering"])
    for _ in range(3):
        await issue(http, broker.url, token, "stripe/test")
    page = await _signed_in(browser, broker, people.auditor, "/console/audit/events")
    await _checked(page)
    await page.fill("#f-subject", subject)
    await page.fill("#f-type", "grant.issued")
    await _submit(page, "button:text-is('Filter')")
    rows = page.locator("table.data tbody tr")
    assert await rows.count() == 3
    assert (
        await page.locator("table.data tbody td[data-label=Event]").all_inner_texts()
        == ["grant.issued"] * 3
    )
    await _checked(page)

    # Paging: one event a page, the cursor carried in the next link with the filters.
    await page.goto(f"{broker.url}/console/audit/events?subject={subject}&limit=2")
    seen = await page.locator("td[data-label=Seq]").all_inner_texts()
    async with page.expect_navigation():
        await page.click("text=Next page")
    assert "cursor=" in page.url and f"subject={subject}" in page.url
    seen += await page.locator("td[data-label=Seq]").all_inner_texts()
    assert len(seen) == len(set(seen)) >= 3
    assert [int(s) for s in seen] == sorted(int(s) for s in seen)

    await page.goto(f"{broker.url}/console/audit/events?subject=nobody-{uuid.uuid4().hex}")
    assert "No event matches these filters" in await page.inner_text("main")
    await page.close()


async def test_ledger_status_shows_the_last_verification_and_verifies_on_request(
    broker: RunningBroker, browser: Browser, people: People
) -> None:
    page = await _signed_in(browser, broker, people.auditor, "/console/audit/ledger")
    text = await page.inner_text("main")
    assert "Rows" in text and "Last signed checkpoint" in text
    assert "No verification since this broker started" in text  # loading it verified nothing
    await _checked(page)
    await _submit(page, "button:text-is('Verify the whole ledger now')")
    text = await page.inner_text("main")
    assert "(just now)" in text and people.auditor.email in text
    assert "Passed" in text or "FAILED" in text  # other tests may tamper the shared ledger
    await page.goto(f"{broker.url}/console/audit/ledger")
    assert people.auditor.email in await page.inner_text("main")  # remembered
    await _checked(page)
    await page.close()


async def test_findings_and_the_evidence_package_download(
    broker: RunningBroker, browser: Browser, people: People, http: aiohttp.ClientSession
) -> None:
    await issue(
        http,
        broker.url,
        mint(broker.settings, fresh_subject("evidence"), ["engineering"]),
        "stripe/test",
    )
    start, end = _today()
    page = await _signed_in(browser, broker, people.auditor, "/console/audit/findings")
    await _checked(page)
    await _submit(page, "button:text-is('Show findings')")
    text = await page.inner_text("main")
    assert "Ledger verification:" in text and "finding" in text
    await _checked(page)

    await page.goto(f"{broker.url}/console/audit/evidence")
    await _checked(page)
    async with page.expect_download() as info:
        await page.click("button:text-is('Download the package')")
    download = await info.value
    name = download.suggested_filename
    assert name.startswith("evidence-") and name.endswith(".zip"), name
    saved = Path(await download.path())
    with zipfile.ZipFile(saved) as zf:
        assert {"manifest.json", "manifest.sig", "events.jsonl", "findings.json"} <= set(
            zf.namelist()
        )
    assert "Saved evidence-" in await page.inner_text("[data-progress]")

    # The download itself: a zip, never kept by the browser or a proxy.
    response = await page.request.get(
        f"{broker.url}/console/audit/evidence.zip?from={start}&to={end}"
    )
    assert response.status == 200
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["cache-control"] == "no-store"
    assert "attachment" in response.headers["content-disposition"]
    assert zipfile.is_zipfile(io.BytesIO(await response.body()))
    await page.close()


async def test_a_reviewer_keeps_and_revokes_with_comments_then_completes(
    broker: RunningBroker,
    browser: Browser,
    second_browser: Browser,
    people: People,
    stack: DevStack,
) -> None:
    admin = await _signed_in(second_browser, broker, people.admin, "/console/reviews")
    await _checked(admin)
    await admin.fill("#f-group", people.review_group)
    await _submit(admin, "button:text-is('Open the review')")
    assert "/console/reviews/" in admin.url
    review_id = admin.url.rsplit("/", 1)[1]
    assert "Only members of" in await admin.inner_text("main")  # erin reads, does not decide
    await admin.close()

    page = await _signed_in(browser, broker, people.auditor, f"/console/reviews/{review_id}")
    await _checked(page)
    forms = page.locator("form.decide")
    total = await forms.count()
    assert total >= 5
    # Revoke without a comment: the API's refusal, as a page.
    first = forms.first
    await first.locator("input[value=revoke]").check()
    await _submit(page, "form.decide >> nth=0 >> button")
    assert "comment_required" in await page.inner_text("#form-error")
    await _checked(page)
    await page.locator("form.decide").first.locator("input[value=revoke]").check()
    await page.locator("form.decide").first.locator("input[name=comment]").fill(f"gone {XSS}")
    await _submit(page, "form.decide >> nth=0 >> button")
    for _ in range(total - 1):
        await page.locator("form.decide").first.locator("input[value=keep]").check()
        await page.locator("form.decide").first.locator("input[name=comment]").fill("still needed")
        await _submit(page, "form.decide >> nth=0 >> button")
    assert await page.locator("form.decide").count() == 0
    await _submit(page, "button:text-is('Complete the review')")
    text = await page.inner_text("main")
    assert "completed" in text and f"gone {XSS}" in text
    await _checked(page)
    await page.close()

    decisions = await ledger_rows(
        stack, "event = 'review.decision' AND body->>'review_id' = $1", review_id
    )
    assert len(decisions) == total
    assert {r["subject"] for r in decisions} == {people.auditor.email}
    assert {r["body"]["client"]["api"] for r in decisions} == {"console"}
    assert [r["outcome"] for r in decisions].count("revoke") == 1
    (completed,) = await ledger_rows(
        stack, "event = 'review.completed' AND body->>'review_id' = $1", review_id
    )
    assert completed["subject"] == people.auditor.email
    assert completed["body"]["client"] == {"api": "console"}


# --- the admin ----------------------------------------------------------------------------


async def test_offboarding_shows_each_revocation_and_the_sla_and_ends_the_console_session(
    broker: RunningBroker,
    browser: Browser,
    second_browser: Browser,
    people: People,
    stack: DevStack,
) -> None:
    # alice, signed in with a credential and her console tab open.
    alice = await _signed_in(second_browser, broker, people.engineer)
    async with alice.expect_navigation():
        await alice.locator("tr", has_text="stripe/test").locator("text=Get credential").click()
    await alice.goto(f"{broker.url}/console/")
    assert "stripe/test" in await alice.inner_text("main")

    page = await _signed_in(browser, broker, people.admin, "/console/offboardings")
    await _checked(page)
    await page.fill("#f-subject", people.engineer.email)
    await page.fill("#f-reason", f"left the company {XSS}")
    await _submit(page, "button:text-is('Offboard')")
    assert "/console/offboardings/" in page.url
    # The page refreshes itself (console.js) until the offboarding completes.
    await page.locator(".tag.sla-met").wait_for(timeout=30_000)
    text = await page.inner_text("main")
    assert "Completed" in text and f"left the company {XSS}" in text
    steps = await page.locator("td[data-label=What]").all_inner_texts()
    assert "grant revoked" in steps and "session revoked" in steps
    assert await page.locator("[data-refresh]").count() == 0  # done: polling stopped
    await _checked(page)

    # Her open tab is refused on its next action.
    async with alice.expect_navigation():
        await alice.locator("tr", has_text="stripe/test").locator("text=Get credential").click()
    refused = await alice.inner_text("main")
    assert "session_revoked" in refused or "subject_offboarded" in refused, refused
    assert await alice.locator("text=Sign in again").count() == 1
    await alice.goto(f"{broker.url}/console/")
    assert "/console/login" in alice.url or "subject_offboarded" in await alice.inner_text("main")
    await alice.close()

    offboarding_id = page.url.rsplit("/", 1)[1]
    (done,) = await ledger_rows(
        stack, "event = 'subject.offboarded' AND body->>'offboarding_id' = $1", offboarding_id
    )
    assert done["subject"] == people.admin.email and done["outcome"] == "met"
    assert done["body"]["grants_revoked"] and done["body"]["sessions_revoked"]
    # Every row the offboarding wrote says it came from the console.
    rows = await ledger_rows(stack, "request_id = $1", done["request_id"])
    assert rows[0]["event"] == "subject.offboarding_started"
    assert {"grant.revoked", "session.revoked", "subject.offboarded"} <= {r["event"] for r in rows}
    assert all(r["body"]["client"] == {"api": "console"} for r in rows), rows
    issued = await ledger_rows(
        stack, "event = 'grant.issued' AND subject = $1", people.engineer.email
    )
    assert len(issued) == 1  # nothing after the offboarding

    # The list shows it, SLA met; an auditor sees the same list.
    await page.goto(f"{broker.url}/console/offboardings")
    row = page.locator("tr", has_text=people.engineer.email)
    assert "met" in await row.inner_text()
    await page.close()


async def test_an_offboarding_past_its_sla_is_reported_missed(
    broker: RunningBroker, browser: Browser, people: People
) -> None:
    late = (datetime.now(UTC) - timedelta(hours=5)).isoformat(timespec="seconds")
    page = await _signed_in(browser, broker, people.admin, "/console/offboardings")
    await page.fill("#f-subject", fresh_subject("gone"))
    await page.fill("#f-reason", "contract ended")
    await page.fill("#f-terminated", late)
    await _submit(page, "button:text-is('Offboard')")
    await page.locator("#offboarding-report:not([data-refresh])").wait_for(timeout=30_000)
    assert await page.locator(".tag.sla-missed").count() == 1
    assert "held no active grant" in await page.inner_text("main")
    # Offboarding the same person again is the API's refusal.
    await page.goto(f"{broker.url}/console/offboardings")
    subject = await page.locator("tbody tr").first.locator("code").first.inner_text()
    await page.fill("#f-subject", subject)
    await page.fill("#f-reason", "again")
    await _submit(page, "button:text-is('Offboard')")
    assert "already_offboarded" in await page.inner_text("#form-error")
    assert await page.input_value("#f-reason") == "again"  # the form again, values kept
    await _checked(page)
    await page.close()


async def test_an_admin_annotates_a_gap(
    broker: RunningBroker, browser: Browser, people: People, stack: DevStack
) -> None:
    page = await _signed_in(browser, broker, people.admin, "/console/admin/gaps/annotate")
    await _checked(page)
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
    note = f"database failover, replayed from WAL {uuid.uuid4().hex[:6]} {XSS}"
    await page.fill("#f-from", start.isoformat())
    await page.fill("#f-to", (start + timedelta(minutes=20)).isoformat())
    await page.fill("#f-remediation", note)
    await _submit(page, "button:text-is('Record the annotation')")
    assert "Recorded in the ledger" in await page.inner_text("main")
    assert note in await page.inner_text("main")
    await _checked(page)
    await page.close()
    (row,) = await ledger_rows(stack, "event = 'gap.annotated' AND body->>'remediation' = $1", note)
    assert row["subject"] == people.admin.email
    assert row["body"]["from"] == start.isoformat()
    assert row["body"]["client"] == {"api": "console"}


async def test_pages_follow_the_api_access_rules(
    broker: RunningBroker, browser: Browser, people: People, stack: DevStack
) -> None:
    """An engineer (no capability) is refused the auditor's and admin's pages, as by the
    API, and sees none of their links; the refusal of a form is ledgered."""
    page = await _signed_in(browser, broker, people.engineer)
    nav = await page.inner_text("nav")
    assert "Why" not in nav and "Offboarding" not in nav and "Reviews" not in nav
    for path in (
        "/console/audit/why",
        "/console/audit/events",
        "/console/audit/ledger",
        "/console/audit/evidence",
        "/console/offboardings",
        "/console/admin/gaps/annotate",
    ):
        response = await page.goto(f"{broker.url}{path}")
        assert response is not None and response.status == 403, path
        assert "forbidden" in await page.inner_text("main")
    await page.goto(f"{broker.url}/console/reviews")
    assert "No review you may see" in await page.inner_text("main")
    await _checked(page)
    cookies = {c["name"]: c["value"] for c in await page.context.cookies(broker.url)}
    await page.close()
    # A forged offboarding form with a valid session but no admin capability.
    async with (
        aiohttp.ClientSession(cookies=cookies) as http,
        http.post(
            f"{broker.url}/console/offboardings",
            data={"subject": "someone", "reason": "x"},
            headers={"Origin": broker.url},
        ) as r,
    ):
        assert r.status == 403
    rejected = await ledger_rows(
        stack, "event = 'request.rejected' AND subject = $1", people.engineer.email
    )
    assert {r["body"]["route"] for r in rejected} >= {"/console/audit/why"}


async def test_the_api_routes_sharing_code_with_the_pages_answer_as_before(
    broker: RunningBroker,
    browser: Browser,
    people: People,
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    """Verify, gaps, annotate, evidence and offboarding over the API (their handlers now
    share code with the pages); the console shows the API's verification as the last."""
    api = JsonApi(http, broker.url)
    auditor_subject = fresh_subject("api-auditor")
    auditor = mint(broker.settings, auditor_subject, ["auditors"])
    admin = mint(broker.settings, fresh_subject("api-admin"), ["security-admins"])
    start, end = _today()

    verified = await api.ok("GET", "/v1/audit/verify", auditor)
    assert set(verified) >= {"ok", "rows", "head_seq", "latest_checkpoint", "problems"}
    gaps = await api.ok("GET", f"/v1/audit/gaps?from={start}", auditor)
    assert set(gaps) == {"from", "to", "heartbeat_seconds", "threshold_seconds", "gaps"}
    note = await api.ok(
        "POST",
        "/v1/audit/gaps/annotate",
        admin,
        {"from": f"{start}T01:00:00Z", "to": f"{start}T01:05:00Z", "remediation": "api note"},
    )
    assert note["annotation"]["remediation"] == "api note" and note["annotation"]["seq"]
    (row,) = await ledger_rows(stack, "seq = $1", note["annotation"]["seq"])
    assert "client" not in row["body"]  # the API's rows are as they were
    async with http.get(
        f"{broker.url}/v1/audit/evidence?from={start}&to={end}", headers=auth(auditor)
    ) as r:
        assert r.status == 200 and r.content_type == "application/zip"
        assert zipfile.is_zipfile(io.BytesIO(await r.read()))
    report = await api.ok(
        "POST", "/v1/offboarding", admin, {"subject": fresh_subject("api-gone"), "reason": "x"}
    )
    assert report["sla_met"] is True and report["grants_revoked"] == []

    page = await _signed_in(browser, broker, people.auditor, "/console/audit/ledger")
    text = await page.inner_text("main")
    assert auditor_subject in text and ("Passed" in text or "FAILED" in text)
    await page.close()


def test_each_page_is_allowed_exactly_as_its_api_route() -> None:
    """The auditor's and admin's pages carry their API route's own ``Access`` object."""
    api = {route.access for route in ROUTES}
    ours = [r for r in CONSOLE_ROUTES if r.path.startswith(_OURS)]
    assert len(ours) >= 20
    for route in ours:
        assert route.access in api and route.access.kind != "authenticated", route.path
        assert any(route.access is r.access for r in ROUTES), route.path


_OURS = ("/console/audit/", "/console/admin/", "/console/offboardings", "/console/reviews")


async def test_keyboard_reaches_the_why_form(
    broker: RunningBroker, browser: Browser, people: People
) -> None:
    page = await _signed_in(browser, broker, people.auditor, "/console/audit/why")
    reached: list[str] = []
    for _ in range(40):
        await page.keyboard.press("Tab")
        reached.append(
            await page.evaluate(
                "document.activeElement.id || document.activeElement.textContent.trim()"
            )
        )
        if reached[-1] == "Ask":
            break
    assert {"f-subject", "f-secret", "f-from", "f-to", "Ask"} <= set(reached), reached
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/console/audit/access?**")
    await page.close()


async def test_the_sign_in_and_requester_pages_pass_the_accessibility_scan(
    broker: RunningBroker, browser: Browser, people: People
) -> None:
    """The foundation's pages too: sign-in, home, a credential shown once, an error."""
    page = await browser.new_page()
    await page.goto(f"{broker.url}/console/login")
    await _checked(page)
    await page.close()
    page = await _signed_in(browser, broker, people.engineer)
    await _checked(page)
    async with page.expect_navigation():
        await page.locator("tr", has_text="stripe/test").locator("text=Get credential").click()
    assert "Shown once" in await page.inner_text("main")
    await _checked(page)
    await page.goto(f"{broker.url}/console/no-such-page")
    await _checked(page)
    await page.close()


async def test_the_elevation_pages_pass_the_accessibility_scan(
    broker: RunningBroker,
    browser: Browser,
    second_browser: Browser,
    people: People,
    http: aiohttp.ClientSession,
) -> None:
    """The requester's and approver's elevation pages: the form, my requests, one
    request, the approvals queue (tests/test_console_requests.py drives them)."""
    token = mint(broker.settings, people.engineer.email, ["engineering"])
    elevation = await ElevationApi(http, broker.url).requested(
        token, secret="stripe/prod", reason="refund the double charges", ticket="INC-7"
    )
    page = await _signed_in(browser, broker, people.engineer, "/console/elevations")
    await _checked(page)
    for path in ("/console/elevations/new", f"/console/elevations/{elevation['id']}"):
        await page.goto(f"{broker.url}{path}")
        await _checked(page)
    await page.close()
    approver = await _signed_in(second_browser, broker, people.approver, "/console/approvals")
    assert "refund the double charges" in await approver.inner_text("main")
    await _checked(approver)
    await approver.goto(f"{broker.url}/console/elevations/{elevation['id']}")
    await _checked(approver)
    await approver.close()


# --- screenshots for the README -------------------------------------------------------


@pytest.mark.screenshots
async def test_screenshots_of_the_main_pages(
    broker: RunningBroker,
    browser: Browser,
    second_browser: Browser,
    people: People,
    http: aiohttp.ClientSession,
    screenshot_dir: Path,
) -> None:
    """PNGs of the main pages, with deterministic names (``SCREENSHOTS``)."""
    out = screenshot_dir
    subject = people.engineer.email
    await _privileged_access(
        http, broker, subject, "refund the double charges of 26 Nov", "INC-4242 checked"
    )
    start, end = _today()

    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    try:
        async with Browser(profile) as third:
            login = await third.new_page()
            await login.set_viewport_size({"width": 1280, "height": 800})
            await login.goto(f"{broker.url}/console/login")
            await login.screenshot(path=str(out / "login.png"), full_page=True)
            await login.close()
            engineer = await _signed_in(third, broker, people.engineer)
            await engineer.set_viewport_size({"width": 1280, "height": 800})
            await engineer.screenshot(path=str(out / "home.png"), full_page=True)
            await engineer.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)

    auditor = await _signed_in(browser, broker, people.auditor, "/console/audit/why")
    shots = {
        "why.png": f"/console/audit/access?subject={subject}&secret=stripe/prod"
        f"&from={start}&to={end}",
        "events.png": f"/console/audit/events?type=grant.issued,elevation.approved&from={start}",
        "ledger.png": "/console/audit/ledger",
        "evidence.png": "/console/audit/evidence",
    }
    for name, path in shots.items():
        await auditor.set_viewport_size({"width": 1280, "height": 800})
        await auditor.goto(f"{broker.url}{path}")
        if name == "ledger.png":
            await _submit(auditor, "button:text-is('Verify the whole ledger now')")
        await auditor.screenshot(path=str(out / name), full_page=True)
    await auditor.set_viewport_size({"width": 390, "height": 844})
    await auditor.goto(f"{broker.url}{shots['why.png']}")
    await auditor.screenshot(path=str(out / "why-phone.png"), full_page=True)
    await auditor.close()

    admin = await _signed_in(second_browser, broker, people.admin, "/console/offboardings")
    await admin.set_viewport_size({"width": 1280, "height": 800})
    await admin.fill("#f-subject", subject)
    await admin.fill("#f-reason", "left the company")
    await _submit(admin, "button:text-is('Offboard')")
    await admin.locator(".tag.sla-met").wait_for(timeout=30_000)
    await admin.screenshot(path=str(out / "offboarding.png"), full_page=True)
    await admin.close()

    assert _pngs(out) >= set(SCREENSHOTS), sorted(_pngs(out))


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    """``$CONSOLE_SCREENSHOTS_DIR`` (``make console-screenshots`` sets it to docs/console)
    or else the test's tmp_path, so ``make test`` leaves the tree as it was."""
    out = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _pngs(directory: Path) -> set[str]:
    return {p.name for p in directory.glob("*.png")}


SCREENSHOTS = (
    "login.png",
    "home.png",
    "why.png",
    "why-phone.png",
    "events.png",
    "ledger.png",
    "evidence.png",
    "offboarding.png",
)
