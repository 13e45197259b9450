"""Waiting for something that becomes true eventually (a sweep, a reload, a retry)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["poll", "until"]

T = TypeVar("T")


async def poll(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.2,
) -> T:
    """Call ``probe`` until ``done(result)`` or ``timeout``; return the last result.

    The caller asserts on what is returned, so a timeout fails with the last value seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if done(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval)


async def until(
    done: Callable[[], bool], what: str, *, timeout: float = 30.0, interval: float = 0.1
) -> None:
    """Wait for ``done()``; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(interval)
