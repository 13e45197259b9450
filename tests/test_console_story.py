"""The README's demo story, clicked through in a real Chromium: alice gets ``stripe/test``
and asks for ``stripe/prod``; bob opens the notification's deep link and approves; alice
fetches the key in her window; carol asks why alice had access and sees bob's approval and
the rule text; erin offboards alice, and alice's open tab is refused on its next action.

The four are fresh people at a provider of the test's own (in the demo's groups), so
the session ledger's rows for them are this test's alone; the rows are the ones the API
flow writes, each with ``client: {"api": "console"}``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.settings import Settings
from broker.stack.devstack import DevStack
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
from tests.support.ledger import ledger_rows
from tests.support.oidc_provider import OIDCProvider, OIDCUser
from tests.support.polling import poll

pytestmark = [pytest.mark.stack, pytest.mark.browser]

CONSOLE = {"api": "console"}


def _person(name: str, *groups: str) -> OIDCUser:
    login = f"{name}-{uuid.uuid4().hex[:8]}"
    return OIDCUser(login, f"{login}@example.com", name.title(), f"{login}-password", groups)


ALICE = _person("alice", "engineering")
BOB = _person("bob", "engineering", "sre-leads")
CAROL = _person("carol", "auditors")
ERIN = _person("erin", "security-admins")


@pytest.fixture
async def provider() -> AsyncIterator[OIDCProvider]:
    tmp = Path(tempfile.mkdtemp(prefix="console-story-provider-"))
    try:
        async with OIDCProvider(tmp, users=(ALICE, BOB, CAROL, ERIN)) as running:
            yield running
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    async with webhook_receiver() as received:
        yield received


async def test_the_demo_story_in_the_browser(
    broker_settings: Settings,
    provider: OIDCProvider,
    hook: Hook,
    browser: Browser,
    second_browser: Browser,
    stack: DevStack,
    tmp_path: Path,
) -> None:
    corp = provider.broker_settings()
    async with broker_at_its_public_url(
        broker_settings,
        oidc_providers=(corp,),
        console_key_path=tmp_path / "console.key",
        webhook_urls=(hook.url,),
        blocklist_refresh_seconds=0.5,
    ) as broker:
        # alice gets a non-privileged credential, then asks for stripe/prod.
        alice = await sign_in(browser, broker, ALICE, "/console/")
        watched = Watched(alice)
        async with alice.expect_navigation():
            await alice.locator("tr", has_text="stripe/test").locator("text=Get credential").click()
        assert "Shown once" in await alice.inner_text("main")
        await alice.goto(f"{broker.url}/console/elevations/new")
        await ask(alice, "stripe/prod", "refund the double charges", "INC-4242", "30m")
        eid = elevation_id(alice)

        # bob follows the notification's link, reads the reason, approves.
        notified = await poll(
            lambda: asyncio.sleep(
                0, [b for b in hook.bodies if b["fields"]["elevation_id"] == eid]
            ),
            bool,
        )
        link = notified[0]["fields"]["console_url"]
        assert link == f"{broker.url}/console/elevations/{eid}"
        bob = await second_browser.new_page()
        await bob.goto(link)
        async with bob.expect_navigation():
            await bob.click("text=Sign in with Corp SSO")
        await second_browser.through_provider(bob, BOB)
        await bob.wait_for_url(link)
        assert "refund the double charges" in await bob.inner_text("main")
        await bob.fill("#comment", "INC-4242 checked")
        async with bob.expect_navigation():
            await bob.click("button:text-is('Approve')")
        assert "approved" in await bob.inner_text("main")
        await bob.context.clear_cookies()  # the next person signs in in this browser
        await bob.close()

        # alice fetches the key within the window, once.
        await alice.goto(f"{broker.url}/console/elevations")
        async with alice.expect_navigation():
            await (
                alice.locator("tr", has_text="stripe/prod")
                .locator("button:text-is('Get credential')")
                .click()
            )
        shown = await alice.inner_text("main")
        assert "Shown once" in shown
        for value in stack.demo.secret_values["stripe/prod"].values():
            assert value in shown

        # carol asks why alice had access to stripe/prod: bob's approval and the rule.
        carol = await sign_in(second_browser, broker, CAROL, "/console/audit/why")
        await carol.fill("#f-subject", ALICE.email)
        await carol.fill("#f-secret", "stripe/prod")
        async with carol.expect_navigation():
            await carol.click("button:text-is('Ask')")
        why = await carol.inner_text("main")
        assert "1 access window" in why, why
        assert BOB.email in why and "INC-4242 checked" in why and "refund the double charges" in why
        assert "stripe/prod" in await carol.locator("details.rule pre").inner_text()
        await carol.context.clear_cookies()
        await carol.close()

        # erin offboards alice; alice's open tab is refused on its next action.
        erin = await sign_in(second_browser, broker, ERIN, "/console/offboardings")
        await erin.fill("#f-subject", ALICE.email)
        await erin.fill("#f-reason", "left the company")
        async with erin.expect_navigation():
            await erin.click("button:text-is('Offboard')")
        await erin.locator(".tag.sla-met").wait_for(timeout=30_000)
        await erin.close()
        await alice.goto(f"{broker.url}/console/")
        text = await alice.inner_text("main")
        assert (
            "/console/login" in alice.url
            or "subject_offboarded" in text
            or ("session_revoked" in text)
        ), (alice.url, text)
        await alice.close()
        assert watched.problems == []

    # The ledger holds what the API flow writes, each row from the console.
    rows = await ledger_rows(
        stack,
        "subject = ANY($1::text[]) AND event NOT IN ('session.created', 'session.renewed')",
        [ALICE.email, BOB.email, ERIN.email],
    )
    story = [(r["event"], r["subject"], r["secret"]) for r in rows]
    assert story[:6] == [
        ("grant.issued", ALICE.email, "stripe/test"),
        ("elevation.requested", ALICE.email, "stripe/prod"),
        ("elevation.approved", BOB.email, "stripe/prod"),
        ("elevation.activated", BOB.email, "stripe/prod"),
        ("grant.issued", ALICE.email, "stripe/prod"),
        ("subject.offboarding_started", ERIN.email, None),
    ], story
    assert ("subject.offboarded", ERIN.email, None) in story
    for r in rows:
        assert r["body"].get("client", CONSOLE) == CONSOLE, r["event"]
    sessions = await ledger_rows(
        stack,
        "event = 'session.created' AND subject = ANY($1::text[])",
        [ALICE.email, BOB.email, CAROL.email, ERIN.email],
    )
    assert {s["subject"] for s in sessions} == {ALICE.email, BOB.email, CAROL.email, ERIN.email}
    assert all(s["body"]["client"]["api"] == "console" for s in sessions)
