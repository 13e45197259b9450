"""A real browser for the sign-in tests: Debian's chromium, driven by Playwright.

Playwright's own browser download is never used (no ``playwright install``): ``make test``
installs the distribution's ``chromium`` and ``Browser`` launches it by path, headless,
with a fresh profile. It knows the pages of ``tests/oidc/provider.mjs`` by their ids:
login ``#login #password #sign-in`` (``#login-error`` after a wrong password), consent
``#allow``/``#deny``, device ``#user-code #device-continue``, ``#device-confirm``,
``#device-success``, logout ``#logout-yes``, errors ``#error``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit

from playwright.async_api import BrowserContext, Page, Playwright, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from tests.support.oidc_provider import OIDCUser
from tests.support.paths import debian_binary

__all__ = ["CHROMIUM", "Browser", "ProviderRefused", "chromium_bin"]

CHROMIUM = Path("/usr/bin/chromium")
# No GPU, sandbox or network chatter in a container; QUIC off so every request is plain
# HTTP/1.1 on loopback.
_LAUNCH_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
_STEP_TIMEOUT_MS = 20_000  # one page: two shared cores, a cold chromium
_MAX_STEPS = 8  # login, consent and the device pages take at most five
# How long a listener's page may take to load once it has answered (it loads in
# milliseconds unless the listener died mid-page).
_SETTLE_MS = 3_000
# How far a click's navigation must get: the answer's headers, or the page's load.
Until = Literal["commit", "load"]
# Every page of the provider shows one of these; the first visible one says where we are.
_MARKERS = (
    "#error, #login-error, #login, #allow, #user-code, #device-confirm, #device-success, "
    "#logout-yes, #logged-out"
)


class ProviderRefused(AssertionError):
    """The provider showed an error page or refused the password; the message is its text."""


def chromium_bin() -> Path:
    """Debian's chromium; skips (fails under ``CI``) when ``make test`` could not install it."""
    return debian_binary(CHROMIUM, "chromium")


async def _settle(page: Page) -> None:
    """Give a loopback listener's page its load, if it comes.

    ``bao login -method=oidc`` hands its token over before its handler returns and flushes
    the success page, and may exit with the page half sent: then "load" never fires. Yet
    the page is not closed mid-load, because Chromium's close then sometimes hangs.
    """
    # A listener that is gone has still answered (the commit): all a sign-in needs.
    with contextlib.suppress(PlaywrightTimeoutError):
        await page.wait_for_load_state("load", timeout=_SETTLE_MS)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Browser:
    """One headless Chromium with a fresh profile in ``profile_dir``; closed on exit.

    Its cookies live as long as it does: a second sign-in at the same provider skips the
    password, as a real browser would (cookies are per host, not per port).
    """

    def __init__(self, profile_dir: Path) -> None:
        self.profile_dir = profile_dir
        self._playwright: Playwright | None = None
        self._context: BrowserContext | None = None

    async def __aenter__(self) -> Browser:
        executable = chromium_bin()
        self._playwright = await async_playwright().start()
        try:
            self._context = await self._playwright.chromium.launch_persistent_context(
                str(self.profile_dir),
                executable_path=str(executable),
                headless=True,
                args=list(_LAUNCH_ARGS),
            )
        except BaseException:
            await self._playwright.stop()
            raise
        self._context.set_default_timeout(_STEP_TIMEOUT_MS)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._context is not None:
                await self._context.close()
        finally:
            if self._playwright is not None:
                await self._playwright.stop()

    async def _new_page(self) -> Page:
        assert self._context is not None, "use Browser as an async context manager"
        return await self._context.new_page()

    async def sign_in(
        self, auth_url: str, user: OIDCUser, *, screenshot: Path | None = None
    ) -> str:
        """Open ``auth_url``, sign in as ``user``, allow, and return the URL the provider
        redirected to (the loopback callback, once it answered).

        ``screenshot`` saves the login page there. Raises ``ProviderRefused`` on an error
        page or a refused password.
        """
        page = await self._new_page()
        try:
            provider = _origin(auth_url)
            await page.goto(auth_url)
            for _ in range(_MAX_STEPS):
                if _origin(page.url) != provider:
                    await _settle(page)
                    return page.url
                # The step that leaves the provider lands on a loopback listener, which
                # may exit once it has answered: wait for its answer (the commit), not
                # its page's load. The provider's own pages are awaited by their markers.
                await self._step(page, user, screenshot, until="commit")
                screenshot = None
            raise AssertionError(f"sign-in did not leave the provider: at {page.url}")
        finally:
            await page.close()

    async def new_page(self) -> Page:
        """A page of this browser's context (the caller closes it)."""
        return await self._new_page()

    async def through_provider(self, page: Page, user: OIDCUser) -> None:
        """``page`` is at the provider (a site sent it there): sign in as ``user`` and
        allow, until the provider sends the page back to another origin."""
        provider = _origin(page.url)
        for _ in range(_MAX_STEPS):
            if _origin(page.url) != provider:
                return
            await self._step(page, user, None)
        raise AssertionError(f"sign-in did not leave the provider: at {page.url}")

    async def approve_device(
        self, verification_url: str, user: OIDCUser, user_code: str | None = None
    ) -> None:
        """Open the device verification page, enter ``user_code`` (when the URL does not
        carry it), confirm, sign in as ``user`` and allow; returns on the success page."""
        page = await self._new_page()
        try:
            await page.goto(verification_url)
            for _ in range(_MAX_STEPS):
                marker = await self._marker(page)
                if marker == "device-success":
                    return
                if marker == "user-code":
                    if user_code is None:
                        raise AssertionError("the device page asks for a code; pass user_code")
                    await page.fill("#user-code", user_code)
                    await self._click(page, "#device-continue")
                elif marker == "device-confirm":
                    await self._click(page, "#device-confirm")
                else:
                    await self._step(page, user, None, marker)
            raise AssertionError(f"device approval did not finish: at {page.url}")
        finally:
            await page.close()

    async def sign_out(self, end_session_url: str) -> str:
        """Open the provider's end-session URL, confirm, and return where it lands."""
        page = await self._new_page()
        try:
            await page.goto(end_session_url)
            if await self._marker(page) == "logout-yes":
                await self._click(page, "#logout-yes")
            return page.url
        finally:
            await page.close()

    async def _step(
        self,
        page: Page,
        user: OIDCUser,
        screenshot: Path | None,
        marker: str | None = None,
        *,
        until: Until = "load",
    ) -> None:
        """One provider page: log in or allow; anything else is a refusal. ``until`` is
        how far the page the click leads to must get before this returns."""
        marker = marker or await self._marker(page)
        if marker == "login":
            if screenshot is not None:
                await page.screenshot(path=str(screenshot), full_page=True)
            await page.fill("#login", user.email)
            await page.fill("#password", user.password)
            await self._click(page, "#sign-in", until)
        elif marker == "allow":
            await self._click(page, "#allow", until)
        else:
            text = await page.locator("body").inner_text()
            raise ProviderRefused(f"{page.url}: {' '.join(text.split())}")

    @staticmethod
    async def _marker(page: Page) -> str:
        """The id of the first marker element on the current page (waiting for one)."""
        found = page.locator(_MARKERS).first
        await found.wait_for(state="attached")
        return str(await found.get_attribute("id"))

    @staticmethod
    async def _click(page: Page, selector: str, until: Until = "load") -> None:
        """Click a submit button and wait for the page it leads to (redirects followed)
        to get as far as ``until``."""
        async with page.expect_navigation(wait_until=until):
            await page.click(selector)
