"""What the console's browser tests share: a webhook receiver, a broker whose
``public_url`` is its own address, signing a person in through the provider, the request
form, and a watcher for scripts that should never run."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from playwright.async_api import ConsoleMessage, Dialog, Page

from broker.app import create_app
from broker.settings import Settings
from tests.support.brokers import RunningBroker
from tests.support.browser import Browser
from tests.support.oidc_provider import OIDCUser

__all__ = [
    "Hook",
    "Watched",
    "ask",
    "broker_at_its_public_url",
    "elevation_id",
    "sign_in",
    "webhook_receiver",
]


@dataclass
class Hook:
    """A local webhook receiver: every notification's JSON body."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""


@asynccontextmanager
async def webhook_receiver() -> AsyncIterator[Hook]:
    """A local webhook receiver on a free port, collecting every notification."""
    received = Hook()

    async def handler(request: web.Request) -> web.Response:
        received.bodies.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook/T0SECRET", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    received.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook/T0SECRET"
    try:
        yield received
    finally:
        await runner.cleanup()


@asynccontextmanager
async def broker_at_its_public_url(
    settings: Settings, **overrides: Any
) -> AsyncIterator[RunningBroker]:
    """A broker whose ``public_url`` is the address it listens on (the socket is bound
    first, so the URL is known before the app is made)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = settings.with_overrides(port=0, public_url=url, **overrides)
    runner = web.AppRunner(create_app(settings), access_log=None)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        yield RunningBroker(url, runner.app, settings, runner)
    finally:
        await runner.cleanup()
        sock.close()


class Watched:
    """A page's dialogs, script errors and console errors: an XSS that ran, or a script
    the CSP had to block, shows up in one of them."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.problems.append(f"pageerror: {error}"))
        page.on("console", self._console)

    async def _dialog(self, dialog: Dialog) -> None:
        self.problems.append(f"dialog: {dialog.message}")
        await dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        # A refusal page answers 4xx: Chromium notes the document's status, no script ran.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.problems.append(f"console: {message.text}")


async def sign_in(browser: Browser, broker: RunningBroker, person: OIDCUser, path: str) -> Page:
    """A page of ``browser`` signed in as ``person`` through the provider, at ``path``."""
    page = await browser.new_page()
    await page.goto(f"{broker.url}{path}")
    assert "/console/login" in page.url  # not signed in: the sign-in page, then back here
    async with page.expect_navigation():
        await page.click("text=Sign in with Corp SSO")
    await browser.through_provider(page, person)
    await page.wait_for_url(f"{broker.url}{path}")
    return page


async def ask(page: Page, secret: str, reason: str, ticket: str = "", duration: str = "") -> None:
    """Fill the request form (at /console/elevations/new) and send it."""
    await page.select_option("#secret", secret)
    await page.fill("#reason", reason)
    await page.fill("#ticket", ticket)
    await page.fill("#duration", duration)
    async with page.expect_navigation():
        await page.click("button:text-is('Send the request')")


def elevation_id(page: Page) -> str:
    return page.url.rsplit("/", 1)[1]
