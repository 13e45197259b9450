"""Talking to a broker's API: auth headers, request ids, the error shape, timestamps.

``JsonApi`` is the base of the per-domain API helpers (elevations, offboarding): one
``call`` returning ``(status, json or text)`` that tests compare as a whole.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

__all__ = [
    "JsonApi",
    "auth",
    "error_of",
    "expect_error",
    "issue",
    "new_request_id",
    "offboard",
    "parse_ts",
    "post_credentials",
]


def auth(token: str, request_id: str | None = None) -> dict[str, str]:
    """Bearer header, plus an ``X-Request-Id`` when given (to find the request's ledger rows)."""
    headers = {"Authorization": f"Bearer {token}"}
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    return headers


def new_request_id() -> str:
    return f"t-{uuid.uuid4().hex}"


def parse_ts(value: str) -> datetime:
    """A timestamp as the API writes it (ISO 8601, with offset)."""
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


def expect_error(result: tuple[int, Any], status: int, code: str) -> None:
    """A ``JsonApi`` result with the documented error shape, this status and this code."""
    got_status, body = result
    assert isinstance(body, dict) and set(body) == {"error"}, result
    assert set(body["error"]) == {"code", "message"}, body
    assert (got_status, body["error"]["code"]) == (status, code), body
    assert body["error"]["message"], body


def post_credentials(
    http: aiohttp.ClientSession, url: str, token: str, secret: str, **fields: Any
) -> Any:
    """``POST {url}/v1/credentials`` for ``secret`` plus ``fields``; use with ``async with``."""
    return http.post(
        f"{url}/v1/credentials", json={"secret": secret, **fields}, headers=auth(token)
    )


async def issue(
    http: aiohttp.ClientSession, url: str, token: str, secret: str, **fields: Any
) -> dict[str, Any]:
    """A credential that must be issued: asserts the 201 and returns the grant."""
    async with post_credentials(http, url, token, secret, **fields) as r:
        assert r.status == 201, await r.text()
        grant: dict[str, Any] = await r.json()
    return grant


async def offboard(
    http: aiohttp.ClientSession, url: str, token: str, subject: str, reason: str
) -> dict[str, Any]:
    """Offboard ``subject`` as the holder of ``token`` (an admin); asserts the 201."""
    async with http.post(
        f"{url}/v1/offboarding",
        json={"subject": subject, "reason": reason},
        headers=auth(token),
    ) as r:
        assert r.status == 201, await r.text()
        report: dict[str, Any] = await r.json()
    return report


@dataclass
class JsonApi:
    """One broker's API as ``(status, body)`` results: JSON decoded, anything else as text."""

    http: aiohttp.ClientSession
    url: str

    async def call(
        self,
        method: str,
        path: str,
        token: str,
        body: Any = None,
        request_id: str | None = None,
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": auth(token, request_id)}
        if body is not None:
            kwargs["json"] = body
        async with self.http.request(method, self.url + path, **kwargs) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, await r.text()

    async def ok(self, method: str, path: str, token: str, body: Any = None) -> Any:
        """The body of a call that must succeed (200 or 201)."""
        status, out = await self.call(method, path, token, body)
        assert status in (200, 201), (status, out)
        return out
