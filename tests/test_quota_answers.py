"""Quota refusals as clients see them: status, body, ``Retry-After``, and the CLI's retry.

Each broker here is the test's own, with low limits (the session broker lifts them), and
each subject is fresh (the session ledger is shared by the whole suite). The last section
runs ``BrokerClient`` against a one-route server that answers as scripted, to count the
requests it sends: whether it retries, and how often, is the behaviour under test.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from broker.cli.client import MAX_RETRY_WAIT, BrokerClient, BrokerHTTPError
from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.vaultapi import start_vault_api
from tests.support.brokers import RunningBroker, running_broker
from tests.support.commands import cli
from tests.support.http import auth, error_of, issue, new_request_id
from tests.support.ledger import ledger_rows
from tests.support.tokens import fresh_subject, mint

# "retry in N s (at HH:MM:SS UTC)", as the CLI prints it.
_RETRY_HINT = re.compile(r"retry in (\d+) s \(at \d\d:\d\d:\d\d UTC\)")


def _engineer(broker: RunningBroker, prefix: str) -> tuple[str, str]:
    """A fresh subject in the engineering group (stripe/test, db/orders-ro) and its JWT."""
    subject = fresh_subject(prefix)
    return subject, mint(broker.settings, subject, ["engineering"])


def _seconds(header: str | None) -> int:
    """A ``Retry-After`` the broker sent: whole seconds, at least 1."""
    assert header is not None and header.isdigit(), header
    assert int(header) >= 1, header
    return int(header)


@asynccontextmanager
async def _quota_broker(settings: Settings, **limits: float) -> AsyncIterator[RunningBroker]:
    async with running_broker(settings, replica_id=fresh_subject("quota"), **limits) as b:
        yield b


# --- the native API ------------------------------------------------------------------------


async def test_issuance_over_the_burst_is_429_rate_limited_and_mints_nothing(
    broker_settings: Settings, stack: DevStack, http: aiohttp.ClientSession
) -> None:
    async with _quota_broker(broker_settings, quota_rate=0.2, quota_burst=2) as broker:
        subject, token = _engineer(broker, "quota-native")
        for _ in range(2):
            await issue(http, broker.url, token, "stripe/test")

        # The third within the burst: a leased secret, so "nothing minted" covers the
        # intent row too (the default rate bucket spans the caller's secrets).
        rid = new_request_id()
        async with http.post(
            f"{broker.url}/v1/credentials",
            json={"secret": "db/orders-ro", "ttl": "1m"},
            headers=auth(token, rid),
        ) as r:
            assert r.status == 429, await r.text()
            wait = _seconds(r.headers.get("Retry-After"))
            err = await error_of(r)
    assert wait <= 5  # one token at 0.2/s
    assert err["code"] == "rate_limited"
    # The message names the limit that refused, and who set it.
    assert "12/m, burst 2 (the default)" in err["message"], err
    assert subject in err["message"], err

    assert await ledger_rows(stack, "request_id = $1", rid) == []
    rows = await ledger_rows(
        stack, "subject = $1 AND event IN ('grant.intent', 'grant.issued')", subject
    )
    assert [(row["event"], row["secret"]) for row in rows] == [
        ("grant.issued", "stripe/test"),
        ("grant.issued", "stripe/test"),
    ]


# --- the Vault-compatible front door ---------------------------------------------------------


async def _vault_login(http: aiohttp.ClientSession, front: str, jwt: str) -> str:
    async with http.post(f"{front}/v1/auth/jwt/login", json={"role": "any", "jwt": jwt}) as r:
        assert r.status == 200, await r.text()
        token: str = (await r.json())["auth"]["client_token"]
    return token


async def test_front_door_reads_over_the_rate_are_vaults_429(
    broker_settings: Settings, http: aiohttp.ClientSession
) -> None:
    async with _quota_broker(broker_settings, quota_rate=0.01, quota_burst=1) as broker:
        runner = await start_vault_api(broker.app, "127.0.0.1", 0)
        try:
            front = f"http://127.0.0.1:{runner.addresses[0][1]}"
            _, jwt = _engineer(broker, "quota-front")
            headers = {"X-Vault-Token": await _vault_login(http, front, jwt)}
            async with http.get(f"{front}/v1/secret/data/stripe/test", headers=headers) as r:
                assert r.status == 200, await r.text()  # the burst
            for path in ("secret/data/stripe/test", "database/creds/orders-ro"):
                async with http.get(f"{front}/v1/{path}", headers=headers) as r:
                    # Vault's own rate-limit quotas answer 429 too: clients know it.
                    assert r.status == 429, (path, await r.text())
                    wait = _seconds(r.headers.get("Retry-After"))
                    body = await r.json()
                assert list(body) == ["errors"] and len(body["errors"]) == 1, body
                message = body["errors"][0]
                assert message.endswith("(rate_limited)"), message
                assert "36/h, burst 1 (the default)" in message, message
                assert wait > MAX_RETRY_WAIT  # one token at 0.01/s: about 100 s
        finally:
            await runner.cleanup()


# --- the CLI ---------------------------------------------------------------------------------


async def test_cli_waits_out_a_short_retry_after_and_retries_once(
    broker_settings: Settings, stack: DevStack, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # One token per 5 s (MAX_RETRY_WAIT): the bucket is still empty when the command
    # (started right after the burst is spent) asks, and full again when it retries.
    async with _quota_broker(
        broker_settings, quota_rate=1 / MAX_RETRY_WAIT, quota_burst=1
    ) as broker:
        subject, token = _engineer(broker, "quota-cli")
        await issue(http, broker.url, token, "stripe/test")
        r = await cli(
            "credentials", "get", "stripe/test", cwd=tmp_path, url=broker.url, token=token
        )
    assert r.returncode == 0, r
    grant = r.json()
    assert grant["secret"] == "stripe/test" and grant["subject"] == subject
    note = re.search(r"note: rate_limited: the broker asks to retry in (\d+) s", r.stderr)
    assert note is not None, r.stderr
    assert 1 <= int(note.group(1)) <= MAX_RETRY_WAIT
    # The burst and the retry; the refused attempt minted nothing.
    issued = await ledger_rows(stack, "subject = $1 AND event = 'grant.issued'", subject)
    assert len(issued) == 2 and str(issued[-1]["grant_id"]) == grant["id"]


async def test_cli_says_when_to_retry_a_long_refusal(
    broker_settings: Settings, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with _quota_broker(broker_settings, quota_rate=0.01, quota_burst=1) as broker:
        _, token = _engineer(broker, "quota-cli-long")
        await issue(http, broker.url, token, "stripe/test")
        started = datetime.now(UTC)
        r = await cli(
            "credentials", "get", "stripe/test", cwd=tmp_path, url=broker.url, token=token
        )
    assert r.returncode == 1, r
    assert r.stdout == ""
    assert r.stderr.startswith("error: rate_limited: issuance rate limit reached"), r.stderr
    hint = _RETRY_HINT.search(r.stderr)
    assert hint is not None, r.stderr
    assert int(hint.group(1)) > MAX_RETRY_WAIT
    assert "note:" not in r.stderr  # no wait, no retry
    assert datetime.now(UTC) - started < timedelta(seconds=30)


# --- the client's retry rule, counted at a server that answers as scripted ------------------


@dataclass
class _Scripted:
    """Answers ``POST /v1/credentials`` with ``answers`` in turn (the last one repeated)."""

    answers: list[tuple[int, dict[str, str]]]
    seen: int = 0
    url: str = ""
    runner: web.AppRunner | None = field(default=None, repr=False)

    async def _answer(self, request: web.Request) -> web.Response:
        status, headers = self.answers[min(self.seen, len(self.answers) - 1)]
        self.seen += 1
        if status == 201:
            return web.json_response({"id": "g"}, status=201)
        body = {"error": {"code": f"code_{status}", "message": "refused as scripted"}}
        return web.json_response(body, status=status, headers=headers)


@asynccontextmanager
async def _scripted(*answers: tuple[int, dict[str, str]]) -> AsyncIterator[_Scripted]:
    server = _Scripted(list(answers))
    app = web.Application()
    app.router.add_post("/v1/credentials", server._answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()


async def _issue_through(server: _Scripted) -> tuple[dict[str, object], list[int]]:
    waits: list[int] = []

    def on_wait(e: BrokerHTTPError) -> None:
        assert e.retry_after is not None
        waits.append(e.retry_after)

    client = BrokerClient(server.url, "t", timeout=10, on_wait=on_wait)
    return await asyncio.to_thread(client.issue_credentials, "s"), waits


async def test_client_retries_a_short_refusal_once() -> None:
    async with _scripted((429, {"Retry-After": "1"}), (201, {})) as server:
        grant, waits = await _issue_through(server)
    assert grant == {"id": "g"} and waits == [1] and server.seen == 2

    async with _scripted((503, {"Retry-After": "1"})) as server:
        with pytest.raises(BrokerHTTPError) as refused:
            await _issue_through(server)
    assert server.seen == 2  # once more, not again and again
    e = refused.value
    assert (e.status, e.code, e.retry_after, e.waited) == (503, "code_503", 1, 1)
    assert str(e).startswith("code_503: refused as scripted — refused again after waiting 1 s;")
    assert _RETRY_HINT.search(str(e)), str(e)


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (503, {}),  # Vault or the ledger down: the POST may have minted and revoked
        (500, {"Retry-After": "1"}),  # only 429 and 503 mean "refused before acting"
        (429, {"Retry-After": str(MAX_RETRY_WAIT + 1)}),
    ],
)
async def test_client_does_not_retry_other_refusals(status: int, headers: dict[str, str]) -> None:
    async with _scripted((status, headers), (201, {})) as server:
        with pytest.raises(BrokerHTTPError) as refused:
            await _issue_through(server)
    assert server.seen == 1
    assert refused.value.status == status and refused.value.waited is None


async def test_client_reads_an_http_date_retry_after() -> None:
    # What a proxy in front of the broker may send instead of seconds.
    later = email.utils.format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    async with _scripted((429, {"Retry-After": later})) as server:
        with pytest.raises(BrokerHTTPError) as refused:
            await _issue_through(server)
    assert server.seen == 1
    assert refused.value.retry_after is not None
    assert 3590 <= refused.value.retry_after <= 3600
