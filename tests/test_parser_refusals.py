"""Requests aiohttp's HTTP parser refuses never reach the broker: they must not leak either.

aiohttp answers them with its own plain 400; what we control is the log. An oversized
Authorization header used to be logged at ERROR with a traceback quoting the start of the
token; now it is one INFO line naming the refusal.
"""

from __future__ import annotations

import logging

import aiohttp
import pytest

from tests.support.brokers import RunningBroker
from tests.support.http import auth

pytestmark = pytest.mark.stack


async def test_oversized_header_is_refused_without_logging_the_token(
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    marker = "TOKENMARKER"
    token = tokens["alice"] + marker + "x" * 70_000
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        async with http.post(
            f"{broker.url}/v1/credentials", headers=auth(token), json={"secret": "stripe/test"}
        ) as r:
            assert r.status in (400, 431), r.status
    parser_lines = [rec for rec in caplog.records if rec.name == "aiohttp.server"]
    assert parser_lines, "the refusal should still be logged (as one line)"
    for rec in parser_lines:
        assert rec.levelno == logging.INFO and rec.exc_info is None
        text = rec.getMessage()
        assert tokens["alice"][:20] not in text and marker not in text, text


async def test_a_long_query_string_gets_the_json_error_contract(
    broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    """Past aiohttp's 8190-byte request-line default (found by the contract fuzzing): the
    route's query model answers, in JSON, up to the body limit."""
    junk = "&".join(f"limit=%5B{i}%5D" for i in range(1500))  # ~16 KB of repeated params
    assert 8190 < len(junk) < broker.settings.max_body_bytes
    async with http.get(f"{broker.url}/v1/audit/gaps?{junk}", headers=auth(tokens["carol"])) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_limit"
