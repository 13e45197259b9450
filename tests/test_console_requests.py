"""The console's requester and approver pages in a real Chromium against the real stack:
ask for elevation, decide it from the notification's deep link, redeem it once; refusals
shown with the server's message; values from people rendered as text; self-approval
refused on the page.

People sign in at a provider of the test's own as fresh subjects (the session ledger's
rows for them are the test's alone). The broker's ``public_url`` is its real address, so
the webhook's deep link is the page the approver opens.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page

from broker.auth import Principal
from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.web.keys import ELEVATIONS
from tests.support.brokers import RunningBroker
from tests.support.browser import Browser
from tests.support.console import (
    Hook,
    Watched,
    ask,
    broker_at_its_public_url,
    elevation_id,
    sign_in,
    webhook_receiver,
)
from tests.support.http import auth
from tests.support.layout import assert_fits
from tests.support.ledger import ledger_rows
from tests.support.oidc_provider import OIDCProvider, OIDCUser
from tests.support.polling import poll
from tests.support.tokens import fresh_subject, mint

pytestmark = [pytest.mark.stack, pytest.mark.browser]

XSS_IMG = "<img src=x onerror=alert(1)>"
XSS_SCRIPT = '"><script>alert(1)</script>'
REASON = "refund the double charges of 26 Nov"
CONSOLE = {"api": "console"}


def _person(*groups: str) -> OIDCUser:
    name = f"conreq-{uuid.uuid4().hex[:10]}"
    return OIDCUser(name, f"{name}@example.com", name.title(), f"{name}-password", groups)


@dataclass(frozen=True)
class People:
    requester: OIDCUser  # engineering: eligible for stripe/prod and db/orders-admin
    approver: OIDCUser  # sre-leads (approves both) and engineering (eligible too)
    reviewer: OIDCUser  # security-admins: reviews break-glass uses of db/orders-admin


@pytest.fixture
async def people() -> People:
    return People(
        _person("engineering"), _person("sre-leads", "engineering"), _person("security-admins")
    )


@pytest.fixture
async def provider(people: People) -> AsyncIterator[OIDCProvider]:
    tmp = Path(tempfile.mkdtemp(prefix="console-requests-provider-"))
    try:
        users = (people.requester, people.approver, people.reviewer)
        async with OIDCProvider(tmp, users=users) as running:
            yield running
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    async with webhook_receiver() as received:
        yield received


@pytest.fixture
async def broker(
    broker_settings: Settings, provider: OIDCProvider, hook: Hook, tmp_path: Path
) -> AsyncIterator[RunningBroker]:
    corp = provider.broker_settings()
    async with broker_at_its_public_url(
        broker_settings,
        oidc_providers=(corp,),
        console_key_path=tmp_path / "console.key",
        webhook_urls=(hook.url,),
    ) as running:
        yield running


async def test_ask_approve_from_the_deep_link_and_redeem_once(
    broker: RunningBroker,
    browser: Browser,
    second_browser: Browser,
    people: People,
    hook: Hook,
    stack: DevStack,
) -> None:
    requester, approver = people.requester.email, people.approver.email
    # The requester asks from the home page's link, the secret preselected.
    asking = await sign_in(browser, broker, people.requester, "/console/")
    await asking.set_viewport_size({"width": 1280, "height": 900})
    async with asking.expect_navigation():
        await asking.locator("tr", has_text="stripe/prod").locator("text=Ask for approval").click()
    assert await asking.input_value("#secret") == "stripe/prod"
    await assert_fits(asking, (1280,))
    await ask(asking, "stripe/prod", REASON, "INC-4242", "30m")
    eid = elevation_id(asking)
    text = await asking.inner_text("main")
    assert "pending" in text and REASON in text and "INC-4242" in text and "30 min" in text
    assert "0 of 1 from sre-leads: 1 still missing" in text
    assert await asking.locator("button:text-is('Approve')").count() == 0

    # The notification links to the decision page.
    link = f"{broker.url}/console/elevations/{eid}"
    requested = await poll(
        lambda: asyncio.sleep(0, [b for b in hook.bodies if b["fields"]["elevation_id"] == eid]),
        lambda found: bool(found),
    )
    assert requested[0]["kind"] == "elevation.requested"
    assert requested[0]["fields"]["console_url"] == link
    assert requested[0]["text"].endswith(link)

    # The approver, on a phone, follows it: sign-in first, then straight to the request.
    deciding = await second_browser.new_page()
    await deciding.set_viewport_size({"width": 390, "height": 844})
    watched = Watched(deciding)
    await deciding.goto(link)
    async with deciding.expect_navigation():
        await deciding.click("text=Sign in with Corp SSO")
    await second_browser.through_provider(deciding, people.approver)
    await deciding.wait_for_url(link)
    page_text = await deciding.inner_text("main")
    assert REASON in page_text and "INC-4242" in page_text and requester in page_text
    assert "No earlier requests for this secret." in page_text
    await assert_fits(deciding, (390,))
    # Keyboard: the comment box and the Approve button are reachable with Tab.
    focused = []
    for _ in range(30):
        await deciding.keyboard.press("Tab")
        focused.append(await deciding.evaluate("document.activeElement.textContent || ''"))
        if focused[-1] == "Approve":
            break
    assert focused[-1] == "Approve", focused

    # The queue shows it too, with what is missing; the navigation offers it.
    async with deciding.expect_navigation():
        await deciding.click("nav >> text=Approvals")
    queue = await deciding.inner_text("main")
    assert f"{requester} asks for stripe/prod" in queue and REASON in queue
    assert "1 still missing" in queue
    await assert_fits(deciding, (390,))
    async with deciding.expect_navigation():
        # This requester's card: others' requests may wait in the queue (shared ledger).
        mine = deciding.locator(".card", has_text=f"{requester} asks for")
        await mine.locator("a.button:has-text('Decide')").click()
    await deciding.fill("#comment", "INC-4242 checked")
    async with deciding.expect_navigation():
        await deciding.click("button:text-is('Approve')")
    decided = await deciding.inner_text("main")
    assert "approved" in decided and "1 of 1 from sre-leads: met" in decided
    assert "INC-4242 checked" in decided

    # Decided: it leaves the queue (others' requests may wait there: the ledger is shared).
    async def queue_text() -> str:
        await deciding.goto(f"{broker.url}/console/approvals")
        return await deciding.inner_text("main")

    left = await poll(queue_text, lambda text: f"{requester} asks for" not in text)
    assert f"{requester} asks for" not in left
    await deciding.close()
    assert watched.problems == []

    # The requester redeems it from "my requests": the credential once, never in a URL.
    await asking.goto(f"{broker.url}/console/elevations")
    row = asking.locator("tr", has_text="stripe/prod")
    assert "approved" in await row.inner_text()
    async with asking.expect_navigation() as navigation:
        await row.locator("button:text-is('Get credential')").click()
    answered = await navigation.value
    assert answered is not None and answered.status == 201
    assert (await answered.all_headers())["cache-control"] == "no-store"
    assert asking.url == f"{broker.url}/console/elevations/{eid}/credentials"
    shown = await asking.inner_text("main")
    assert "Shown once" in shown
    for value in stack.demo.secret_values["stripe/prod"].values():
        assert value in shown
    await asking.close()

    rows = await ledger_rows(
        stack,
        "body->>'elevation_id' = $1",
        eid,
    )
    assert [(r["event"], r["subject"]) for r in rows] == [
        ("elevation.requested", requester),
        ("elevation.approved", approver),
        ("elevation.activated", approver),
        ("grant.issued", requester),
    ]
    for r in rows:
        assert r["body"]["client"] == CONSOLE, r["event"]
    assert rows[0]["body"]["reason"] == REASON and rows[0]["body"]["ticket"] == "INC-4242"
    assert rows[0]["body"]["duration"] == 1800
    assert rows[1]["body"]["comment"] == "INC-4242 checked"


async def test_a_refused_request_shows_the_servers_message_and_keeps_the_values(
    broker: RunningBroker, browser: Browser, people: People, stack: DevStack
) -> None:
    page = await sign_in(browser, broker, people.requester, "/console/elevations/new")
    token = mint(broker.settings, people.requester.email, ["engineering"])
    too_long = "a reason far too long " * 30  # > max_reason_chars (500)
    cases = [
        ({"secret": "stripe/prod", "reason": REASON}, "ticket_required"),
        ({"secret": "stripe/prod", "reason": too_long, "ticket": "INC-1"}, "invalid_reason"),
        ({"secret": "stripe/prod", "reason": "short", "ticket": "INC-1"}, "reason_too_short"),
        ({"secret": "stripe/prod", "reason": REASON, "ticket": "JIRA-1"}, "invalid_ticket"),
        ({"secret": "db/orders-admin", "reason": REASON, "duration": "soon"}, "invalid_duration"),
    ]
    async with aiohttp.ClientSession() as http:
        for sent, code in cases:
            # The API's answer to the same body: the page must say exactly that.
            async with http.post(
                f"{broker.url}/v1/elevations", json=sent, headers=auth(token)
            ) as r:
                api = (await r.json())["error"]
                api_status = r.status
            assert api["code"] == code, (sent, api)
            await page.goto(f"{broker.url}/console/elevations/new")
            await page.select_option("#secret", sent["secret"])
            await page.fill("#reason", sent["reason"])
            await page.fill("#ticket", sent.get("ticket", ""))
            await page.fill("#duration", sent.get("duration", ""))
            async with page.expect_navigation() as navigation:
                await page.click("button:text-is('Send the request')")
            answered = await navigation.value
            assert answered is not None and answered.status == api_status, (code, api_status)
            alert = await page.inner_text("#form-error")
            assert code in alert and api["message"] in alert, (alert, api)
            assert await page.input_value("#secret") == sent["secret"]
            assert await page.input_value("#reason") == sent["reason"]
            assert await page.input_value("#ticket") == sent.get("ticket", "")
            assert await page.input_value("#duration") == sent.get("duration", "")
    await page.close()
    # Ledgered as the API's refusals are: one request.rejected each (the API's and ours).
    rejected = await ledger_rows(
        stack, "event = 'request.rejected' AND subject = $1", people.requester.email
    )
    outcomes = sorted(r["outcome"] for r in rejected)
    assert outcomes == sorted([code for _, code in cases] * 2), outcomes
    assert (
        await ledger_rows(
            stack, "event = 'elevation.requested' AND subject = $1", people.requester.email
        )
        == []
    )


async def test_reasons_comments_and_tickets_render_as_text_everywhere(
    broker: RunningBroker,
    browser: Browser,
    second_browser: Browser,
    people: People,
    stack: DevStack,
) -> None:
    hostile = f"{XSS_IMG} {XSS_SCRIPT} please"
    asking = await sign_in(browser, broker, people.requester, "/console/elevations/new")
    watched = [Watched(asking)]
    # A ticket the API refuses comes back in the form, as text.
    await ask(asking, "stripe/prod", hostile, XSS_SCRIPT)
    assert "invalid_ticket" in await asking.inner_text("#form-error")
    assert await asking.input_value("#reason") == hostile
    assert await asking.input_value("#ticket") == XSS_SCRIPT
    await _assert_inert(asking)
    # Two requests with the hostile reason: one to deny, one to approve.
    await asking.goto(f"{broker.url}/console/elevations/new")
    await ask(asking, "db/orders-admin", hostile)
    first = elevation_id(asking)
    await asking.goto(f"{broker.url}/console/elevations/new")
    await ask(asking, "db/orders-admin", hostile, "INC-77")
    second = elevation_id(asking)
    assert hostile in await asking.inner_text("#reason")
    await _assert_inert(asking)

    deciding = await sign_in(second_browser, broker, people.approver, "/console/approvals")
    watched.append(Watched(deciding))
    assert hostile in await deciding.inner_text("main")
    await _assert_inert(deciding)
    await deciding.goto(f"{broker.url}/console/elevations/{first}")
    await deciding.fill("#comment", f"no {XSS_IMG}")
    async with deciding.expect_navigation():
        await deciding.click("button:text-is('Deny')")
    assert f"no {XSS_IMG}" in await deciding.inner_text("main")
    await _assert_inert(deciding)
    await deciding.goto(f"{broker.url}/console/elevations/{second}")
    # The history shows the first request's reason, as text.
    assert "denied" in await deciding.inner_text("main .history")
    await deciding.fill("#comment", f"ok {XSS_SCRIPT}")
    async with deciding.expect_navigation():
        await deciding.click("button:text-is('Approve')")
    assert f"ok {XSS_SCRIPT}" in await deciding.inner_text("main")
    await _assert_inert(deciding)

    for path in (f"/console/elevations/{first}", f"/console/elevations/{second}"):
        await asking.goto(f"{broker.url}{path}")
        assert hostile in await asking.inner_text("main")
        await _assert_inert(asking)
    await asking.goto(f"{broker.url}/console/elevations")
    assert hostile in await asking.inner_text("main")
    await _assert_inert(asking)
    for page in (asking, deciding):
        await page.close()
    assert [w.problems for w in watched] == [[], []]


async def _assert_inert(page: Page) -> None:
    """Nothing of the hostile values became markup: no image, no script but the console's."""
    assert await page.locator("main img").count() == 0, page.url
    scripts = await page.eval_on_selector_all("script", "s => s.map(e => e.src)")
    assert scripts == [scripts[0]] and scripts[0].endswith("/console/static/console.js"), scripts


async def test_the_page_shows_the_services_refusal_of_a_self_approval(
    broker: RunningBroker, browser: Browser, people: People, stack: DevStack
) -> None:
    # The approver is eligible too: they ask, and may not decide their own request.
    page = await sign_in(browser, broker, people.approver, "/console/elevations/new")
    await ask(page, "stripe/prod", REASON, "INC-9")
    eid = elevation_id(page)
    text = await page.inner_text("main")
    assert "Waiting for an approver: you cannot decide your own request" in text
    assert await page.locator("button:text-is('Approve')").count() == 0
    # Hiding the button is not the control: send the approval anyway, with the page's token.
    async with page.expect_navigation() as navigation:
        await page.evaluate(
            """(action) => {
                const form = document.createElement("form");
                form.method = "post";
                form.action = action;
                const token = document.querySelector("input[name=csrf]").cloneNode();
                form.appendChild(token);
                document.body.appendChild(form);
                form.submit();
            }""",
            f"/console/elevations/{eid}/approve",
        )
    answered = await navigation.value
    assert answered is not None and answered.status == 403
    alert = await page.inner_text("#form-error")
    assert "self_approval" in alert and "you cannot decide your own request" in alert
    assert "pending" in await page.inner_text("main")
    await page.close()
    approvals = await ledger_rows(
        stack, "event = 'elevation.approved' AND body->>'elevation_id' = $1", eid
    )
    assert approvals == []


async def test_queues_history_and_who_approves_come_from_the_service(
    broker: RunningBroker,
) -> None:
    """``ElevationService``'s methods behind the pages: the approval queue (with factors
    and history), the break-glass review queue, "my requests", and ``may_approve``."""
    service = broker.app[ELEVATIONS]

    def person(*groups: str) -> Principal:
        return Principal(fresh_subject("svc"), "human", "test", frozenset(groups))

    alice, bob = person("engineering"), person("sre-leads")
    erin, carol = person("security-admins"), person("auditors")
    ask: dict[str, Any] = {"reason": REASON, "ticket": None, "duration": None}
    first = await service.request(
        alice, secret="db/orders-admin", break_glass=False, request_id="t1", **ask
    )
    await service.deny(bob, uuid.UUID(first["id"]), "not now", "t2", CONSOLE)
    second = await service.request(
        alice, secret="db/orders-admin", break_glass=False, request_id="t3", **ask
    )
    glass = await service.request(
        alice, secret="db/orders-admin", break_glass=True, request_id="t4", **ask
    )

    queue = {q["id"]: q for q in await service.approval_queue(bob, limit=500)}
    assert second["id"] in queue and first["id"] not in queue and glass["id"] not in queue
    item = queue[second["id"]]
    assert item["factors"] == [{"approver_groups": ["sre-leads"], "approvals": 1, "met": 0}]
    assert [h["id"] for h in item["history"]] == [glass["id"], first["id"]]
    assert item["history"][1]["status"] == "denied"
    assert await service.approval_queue(alice, limit=500) == []  # in no approver group

    reviews = {r["id"] for r in await service.review_queue(erin, limit=500)}
    assert glass["id"] in reviews
    assert glass["id"] not in {r["id"] for r in await service.review_queue(alice, limit=500)}
    detail = await service.detail(erin, uuid.UUID(glass["id"]))
    assert detail["can_review"] is True
    assert (await service.detail(alice, uuid.UUID(glass["id"])))["can_review"] is False

    mine = await service.list_elevations(
        alice, status=None, break_glass_unreviewed=False, limit=10, mine=True
    )
    assert [m["id"] for m in mine] == [glass["id"], second["id"], first["id"]]
    assert (
        await service.list_elevations(
            bob, status=None, break_glass_unreviewed=False, limit=10, mine=True
        )
        == []
    )

    assert [service.may_approve(p) for p in (alice, bob, erin, carol)] == [
        False,
        True,
        True,
        False,
    ]
    await service.cancel(alice, uuid.UUID(second["id"]), None, "t5")
    await service.cancel(alice, uuid.UUID(glass["id"]), None, "t6")


async def test_a_break_glass_use_is_reviewed_from_the_queue(
    broker: RunningBroker, browser: Browser, people: People, stack: DevStack
) -> None:
    # The requester breaks the glass from the form (a checkbox); a second person reviews.
    asking = await sign_in(browser, broker, people.requester, "/console/elevations/new")
    await asking.select_option("#secret", "db/orders-admin")
    await asking.fill("#reason", f"{REASON} {XSS_IMG}")
    await asking.check("input[name=break_glass]")
    async with asking.expect_navigation():
        await asking.click("button:text-is('Send the request')")
    eid = asking.url.split("?")[0].rstrip("/").rsplit("/", 1)[1]
    await asking.context.clear_cookies()  # the reviewer signs in next, in this browser
    await asking.close()
    (used,) = await ledger_rows(
        stack, "event = 'elevation.requested' AND body->>'elevation_id' = $1", eid
    )
    assert used["outcome"] == "break_glass" and used["body"]["client"] == CONSOLE
    page = await sign_in(browser, broker, people.reviewer, "/console/approvals")
    watched = Watched(page)
    card = page.locator(".card", has_text=people.requester.email)
    assert f"{REASON} {XSS_IMG}" in await card.inner_text()
    async with page.expect_navigation():
        await card.locator("a.button:has-text('Review')").click()
    assert "break-glass, unreviewed" in await page.inner_text("main")
    assert await page.locator("button:text-is('Approve')").count() == 0  # nothing to decide
    await page.fill("#review-comment", "lock cleared, no data changed")
    async with page.expect_navigation():
        await page.click("button:text-is('Record the review')")
    reviewed = await page.inner_text("main")
    assert f"Reviewed by {people.reviewer.email}" in reviewed
    assert "lock cleared, no data changed" in reviewed
    await page.goto(f"{broker.url}/console/approvals")
    assert people.requester.email not in await page.inner_text("main")
    await _assert_inert(page)
    await page.close()
    assert watched.problems == []
    (row,) = await ledger_rows(
        stack, "event = 'elevation.reviewed' AND body->>'elevation_id' = $1", eid
    )
    assert row["subject"] == people.reviewer.email and row["body"]["client"] == CONSOLE
    token = mint(broker.settings, people.requester.email, ["engineering"])
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{broker.url}/v1/elevations/{eid}/cancel", json={}, headers=auth(token)) as r,
    ):
        assert r.status == 200
