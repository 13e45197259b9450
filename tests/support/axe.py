"""An accessibility scan of a console page with axe-core (``tests/package.json`` pins it).

``assert_accessible(page)`` injects axe into the page as it is now and fails on any
``serious`` or ``critical`` violation, naming the rule, its help text and the first few
offending elements. Every console test can call it on every page it visits.

The console's Content-Security-Policy allows no inline script, so a ``<script>`` tag with
axe's text (what ``page.add_script_tag(path=...)`` adds) would be refused by the page, and
the refusal would show up as a console error in the tests that listen for injected
script. The file is evaluated through the DevTools protocol instead (``page.evaluate``),
which no page policy governs; the page's own policy stays in force for everything else.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from playwright.async_api import Page

from tests.support.paths import REPO

__all__ = ["AXE_SCRIPT", "assert_accessible", "axe_violations"]

AXE_SCRIPT = REPO / "tests" / "node_modules" / "axe-core" / "axe.min.js"
_BLOCKING = ("serious", "critical")


@cache
def _source() -> str:
    if not AXE_SCRIPT.is_file():
        raise AssertionError(f"no {AXE_SCRIPT}: run `make test` (npm ci --prefix tests)")
    return AXE_SCRIPT.read_text(encoding="utf-8")


async def _inject(page: Page) -> None:
    if await page.evaluate("typeof window.axe === 'object'"):
        return
    await page.evaluate(_source())


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """Every violation axe finds on ``page`` (WCAG 2.x A/AA and best practices)."""
    await _inject(page)
    result: dict[str, Any] = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return list(result["violations"])


async def assert_accessible(page: Page) -> None:
    """No ``serious`` or ``critical`` axe violation on ``page``."""
    blocking = [v for v in await axe_violations(page) if v.get("impact") in _BLOCKING]
    if blocking:
        lines = [f"{page.url}: {len(blocking)} serious/critical accessibility violation(s)"]
        for v in blocking:
            nodes = [", ".join(n.get("target", [])) for n in v.get("nodes", [])[:3]]
            lines.append(f"- {v['id']} ({v['impact']}): {v['help']} at {nodes}")
        raise AssertionError("\n".join(lines))
