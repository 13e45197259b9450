"""The web console in a real Chromium against the real stack: signing in (through a real
OpenID Provider, and the dev sign-in), a credential shown once, and the pages' defences
(security headers, CSRF, escaping).

People sign in at a provider of the test's own as fresh subjects, so the session ledger's
rows for them are the test's alone.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.brokers import RunningBroker, running_broker
from tests.support.browser import Browser
from tests.support.ledger import ledger_rows
from tests.support.oidc_provider import OIDCProvider, OIDCUser

pytestmark = [pytest.mark.stack, pytest.mark.browser]

_HEADERS = {
    "content-security-policy",
    "x-content-type-options",
    "referrer-policy",
    "cache-control",
    "x-frame-options",
}


def _person(*groups: str) -> OIDCUser:
    name = f"con-{uuid.uuid4().hex[:10]}"
    return OIDCUser(name, f"{name}@example.com", name.title(), f"{name}-password", groups)


@pytest.fixture
async def person() -> OIDCUser:
    return _person("engineering")


@pytest.fixture
async def provider(person: OIDCUser) -> AsyncIterator[OIDCProvider]:
    tmp = Path(tempfile.mkdtemp(prefix="console-provider-"))
    try:
        async with OIDCProvider(tmp, users=(person,)) as running:
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
        console_dev_sign_in=True,
        console_key_path=tmp_path / "console.key",
    ) as running:
        yield running


async def _signed_in_page(browser: Browser, broker: RunningBroker, person: OIDCUser) -> Any:
    page = await browser.new_page()
    await page.goto(f"{broker.url}/console/")
    assert "/console/login" in page.url  # not signed in: the sign-in page
    async with page.expect_navigation():
        await page.click("text=Sign in with Corp SSO")
    await browser.through_provider(page, person)
    await page.wait_for_url(f"{broker.url}/console/")
    return page


async def test_sign_in_through_the_provider_and_get_a_credential_shown_once(
    broker: RunningBroker, browser: Browser, person: OIDCUser, stack: DevStack
) -> None:
    page = await _signed_in_page(browser, broker, person)
    assert person.email in await page.inner_text("header")
    # An SSH certificate needs the person's own key: the page points at `broker ssh`.
    ssh_row = page.locator("tr", has_text="ssh/prod-hosts")
    assert "broker ssh HOST" in await ssh_row.inner_text()
    assert await ssh_row.locator("button").count() == 0
    row = page.locator("tr", has_text="stripe/test")
    async with page.expect_navigation():
        await row.locator("text=Get credential").click()
    assert "/console/credentials" in page.url
    text = await page.inner_text("main")
    assert "Shown once" in text and "stripe/test" in text
    # Never in a URL; the page is not kept.
    assert "?" not in page.url
    await page.close()

    (issued,) = await ledger_rows(stack, "event = 'grant.issued' AND subject = $1", person.email)
    assert issued["body"]["client"]["api"] == "console"
    (session,) = await ledger_rows(
        stack, "event = 'session.created' AND subject = $1", person.email
    )
    assert session["body"]["client"]["api"] == "console"
    assert session["body"]["provider"] == "corp"


async def test_every_page_carries_the_security_headers(
    broker: RunningBroker, browser: Browser, person: OIDCUser
) -> None:
    page = await _signed_in_page(browser, broker, person)
    seen: dict[str, dict[str, str]] = {}
    for path in ("/console/", "/console/login", "/console/static/console.css", "/console/nope"):
        response = await page.goto(f"{broker.url}{path}")
        assert response is not None
        seen[path] = await response.all_headers()
    await page.close()
    for path, headers in seen.items():
        assert set(headers) >= _HEADERS, (path, sorted(headers))
        assert "unsafe-inline" not in headers["content-security-policy"], path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
    assert seen["/console/"]["cache-control"] == "no-store"


async def test_a_form_without_its_csrf_token_or_from_another_site_is_refused_and_ledgered(
    broker: RunningBroker, browser: Browser, person: OIDCUser, stack: DevStack
) -> None:
    page = await _signed_in_page(browser, broker, person)
    cookies = {c["name"]: c["value"] for c in await page.context.cookies(broker.url)}
    await page.close()
    jar = "; ".join(f"{k}={v}" for k, v in cookies.items())
    async with aiohttp.ClientSession() as http:
        for headers, form in (
            ({"Cookie": jar}, {"secret": "stripe/test"}),  # no token
            ({"Cookie": jar}, {"secret": "stripe/test", "csrf": "forged"}),
            ({"Cookie": jar, "Origin": "http://evil.example"}, {"secret": "stripe/test"}),
            ({"Cookie": jar, "Sec-Fetch-Site": "cross-site"}, {"secret": "stripe/test"}),
        ):
            async with http.post(
                f"{broker.url}/console/credentials", data=form, headers=headers
            ) as r:
                assert r.status == 403, (headers, await r.text())
                assert "csrf_failed" in await r.text()
    assert await ledger_rows(stack, "event = 'grant.issued' AND subject = $1", person.email) == []
    rejected = await ledger_rows(stack, "event = 'request.rejected' AND subject = $1", person.email)
    assert [r["outcome"] for r in rejected] == ["csrf_failed"] * 4
    assert all(r["body"]["client"] == {"api": "console"} for r in rejected)


async def test_the_dev_sign_in_offers_the_demo_identities(
    broker: RunningBroker, browser: Browser
) -> None:
    page = await browser.new_page()
    await page.goto(f"{broker.url}/console/login")
    assert "Development sign-in" in await page.inner_text("main")
    async with page.expect_navigation():
        await page.click("button:text-is('carol')")
    await page.wait_for_url(f"{broker.url}/console/")
    assert "carol" in await page.inner_text("header")
    await page.close()


async def test_without_the_dev_sign_in_the_page_offers_only_the_provider(
    broker_settings: Settings, browser: Browser, tmp_path: Path
) -> None:
    async with running_broker(broker_settings, console_key_path=tmp_path / "k") as running:
        page = await browser.new_page()
        await page.goto(f"{running.url}/console/login")
        text = await page.inner_text("main")
        await page.close()
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{running.url}/console/login/dev",
                data={"identity": "erin"},
                headers={"Origin": running.url},
            ) as r,
        ):
            refused = r.status
    assert "Development sign-in" not in text
    assert refused == 404


async def test_a_person_at_work_stays_signed_in_past_the_session_ttl(
    broker_settings: Settings,
    provider: OIDCProvider,
    browser: Browser,
    person: OIDCUser,
    stack: DevStack,
    tmp_path: Path,
) -> None:
    """Idle timeout = the session TTL, absolute = its max: a page loaded with a third of
    the TTL left renews the session (at the provider), so activity keeps it alive."""
    corp = provider.broker_settings()
    async with running_broker(
        broker_settings,
        oidc_providers=(corp,),
        console_key_path=tmp_path / "console.key",
        vault_api_session_ttl_seconds=9,
        vault_api_session_max_ttl_seconds=120,
    ) as running:
        page = await _signed_in_page(browser, running, person)
        await asyncio.sleep(6.5)  # under a third of the TTL left
        await page.goto(f"{running.url}/console/")
        await asyncio.sleep(4)  # past the first expiry
        await page.goto(f"{running.url}/console/")
        assert page.url == f"{running.url}/console/"
        assert person.email in await page.inner_text("header")
        await page.close()
    renewed = await ledger_rows(stack, "event = 'session.renewed' AND subject = $1", person.email)
    assert renewed and renewed[0]["body"]["groups"] == ["engineering"]
