"""Small helpers shared by the API tests: auth headers, ledger reads, polling, DB logins."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import asyncpg

from broker.stack.devstack import DevStack

__all__ = [
    "auth",
    "db_login",
    "error_of",
    "ledger_rows",
    "ledger_text_count",
    "new_request_id",
    "parse_ts",
    "poll",
]

T = TypeVar("T")


def auth(token: str, request_id: str | None = None) -> dict[str, str]:
    """Bearer header, plus an ``X-Request-Id`` when given (to find the request's ledger rows)."""
    headers = {"Authorization": f"Bearer {token}"}
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    return headers


def new_request_id() -> str:
    return f"t-{uuid.uuid4().hex}"


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, str]:
    """The ``error`` object of a response, asserting the documented shape exactly."""
    assert resp.content_type == "application/json", (resp.status, await resp.text())
    body = await resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message"}, err
    assert isinstance(err["code"], str) and err["code"], err
    assert isinstance(err["message"], str) and err["message"], err
    return dict(err)


async def ledger_rows(stack: DevStack, where: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of ``ledger.events`` matching ``where`` (SQL with $n args), oldest first.

    Each row is a dict of columns (``body`` decoded) plus ``_text``: the whole row as
    Postgres renders it, for searching secrets anywhere in it.
    """
    conn = await asyncpg.connect(stack.superuser_dsn("broker"), timeout=5)
    try:
        records = await conn.fetch(
            f"SELECT e.*, e::text AS _text FROM ledger.events e WHERE {where} ORDER BY e.seq",  # noqa: S608
            *args,
        )
    finally:
        await conn.close()
    rows = []
    for r in records:
        row = dict(r)
        row["body"] = json.loads(row["body"]) if isinstance(row["body"], str) else row["body"]
        rows.append(row)
    return rows


async def ledger_text_count(stack: DevStack, needle: str) -> int:
    """How many ledger rows contain ``needle`` anywhere in their text."""
    conn = await asyncpg.connect(stack.superuser_dsn("broker"), timeout=5)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM ledger.events e WHERE strpos(e::text, $1) > 0", needle
        )
    finally:
        await conn.close()
    return count


async def poll(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.2,
) -> T:
    """Call ``probe`` until ``done(result)`` or ``timeout``; return the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if done(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval)


async def db_login(stack: DevStack, username: str, password: str) -> asyncpg.Connection:
    """Log into the demo ``orders`` database as a dynamic user (raises if refused)."""
    return await asyncpg.connect(
        host="127.0.0.1",
        port=stack.pg.port,
        database=stack.demo.orders_database,
        user=username,
        password=password,
        timeout=5,
        ssl=False,
    )
