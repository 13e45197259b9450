"""Layout checks for console pages: usable at a phone's width and a laptop's."""

from __future__ import annotations

from collections.abc import Iterable

from playwright.async_api import Page

__all__ = ["assert_fits"]

_HEIGHT = 800


async def assert_fits(page: Page, widths: Iterable[int] = (390, 1280)) -> None:
    """At each viewport width, the page needs no horizontal scrolling (a table may scroll
    inside its own container). The viewport is put back afterwards."""
    before = page.viewport_size
    try:
        for width in widths:
            await page.set_viewport_size({"width": width, "height": _HEIGHT})
            overflow = await page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            if overflow > 0:
                wide = await page.evaluate(
                    """(limit) => [...document.querySelectorAll('body *')]
                        .filter((el) => el.getBoundingClientRect().right > limit + 1)
                        .slice(0, 5).map((el) => el.tagName.toLowerCase()
                          + (el.id ? '#' + el.id : '')
                          + (el.className ? '.' + String(el.className).split(' ')[0] : ''))""",
                    width,
                )
                raise AssertionError(
                    f"{page.url} scrolls sideways by {overflow}px at {width}px: {wide}"
                )
    finally:
        if before is not None:
            await page.set_viewport_size(before)
