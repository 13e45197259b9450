"""``broker login``, ``logout``, ``whoami`` and the session cache, end to end.

Real parts only: the ``broker`` CLI as a subprocess, an in-process broker on the session
stack (OpenBao, PostgreSQL ledger) with an ``[[oidc_providers]]`` entry, panva's
oidc-provider on node (``tests/support/oidc_provider.py``) and headless Chromium
(``tests/support/browser.py``) doing the person's part: the CLI prints the URL
(``--no-browser``), Chromium signs in there and follows the provider's redirect to the
CLI's loopback listener. Each test has a provider, a person (a fresh subject) and a
cache directory (``XDG_CONFIG_HOME``) of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from broker.settings import OIDCProviderSettings, Settings
from broker.stack.devstack import DevStack
from tests.support.brokers import RunningBroker, running_broker
from tests.support.browser import Browser
from tests.support.commands import CommandRun, run_broker, subprocess_env
from tests.support.ledger import ledger_rows, ledger_text_count
from tests.support.oidc_provider import OIDCProvider, OIDCUser
from tests.support.paths import BROKER_BIN

PROVIDER = "sso"
SCOPES = ("openid", "profile", "email", "groups", "offline_access")
_URL_LINE = re.compile(r"^  (http://\S+)$", re.MULTILINE)


@dataclass
class SignInWorld:
    """A provider with one person of this test's own, a broker that trusts it, and the
    environment the CLI runs in (its own cache directory)."""

    provider: OIDCProvider
    broker: RunningBroker
    user: OIDCUser
    config_home: Path
    outputs: list[str] = field(default_factory=list)  # everything the CLI printed

    @property
    def cache_file(self) -> Path:
        return self.config_home / "jit-broker" / "sessions.json"

    def cached(self) -> dict[str, Any] | None:
        if not self.cache_file.exists():
            return None
        entry: dict[str, Any] | None = json.loads(self.cache_file.read_text()).get(self.broker.url)
        return entry

    def env(self) -> dict[str, str]:
        return subprocess_env(BROKER_URL=self.broker.url, XDG_CONFIG_HOME=str(self.config_home))

    async def cli(self, *args: str) -> CommandRun:
        run = await run_broker(*args, env=self.env(), cwd=self.config_home)
        self.outputs += [run.stdout, run.stderr]
        return run

    async def login(self, browser: Browser, *extra: str) -> CommandRun:
        """``broker login --no-browser``, the printed URL completed in Chromium."""
        async with interactive(self, "login", "--no-browser", *extra) as login:
            auth_url = (await login.wait_for(_URL_LINE)).group(1)
            landed = await browser.sign_in(auth_url, self.user)
            return await login.finish(landed=landed)


class Interactive:
    """A running CLI command whose stderr is read while it runs."""

    def __init__(self, world: SignInWorld, proc: asyncio.subprocess.Process) -> None:
        self.world = world
        self.proc = proc
        self.stderr = ""

    async def wait_for(self, pattern: re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while (found := pattern.search(self.stderr)) is None:
                line = await self.proc.stderr.readline()
                if not line:
                    raise AssertionError(f"the command ended before printing it: {self.stderr}")
                self.stderr += line.decode()
        return found

    async def finish(self, timeout: float = 60.0, landed: str = "") -> CommandRun:
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        assert self.proc.returncode is not None
        run = CommandRun(self.proc.returncode, out.decode(), self.stderr + err.decode())
        self.world.outputs += [run.stdout, run.stderr, landed]
        return run


@asynccontextmanager
async def interactive(world: SignInWorld, *args: str) -> AsyncIterator[Interactive]:
    proc = await asyncio.create_subprocess_exec(
        str(BROKER_BIN),
        *args,
        env=world.env(),
        cwd=world.config_home,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield Interactive(world, proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def sign_in_world(
    broker_settings: Settings, config_home: Path, **overrides: Any
) -> AsyncIterator[SignInWorld]:
    """A fresh provider whose only person is a new subject in ``engineering``, and a
    broker (on the session ledger) that signs people in with it."""
    person = f"cli-{uuid.uuid4().hex[:10]}"
    user = OIDCUser(person, f"{person}@example.com", "Cli Person", "a-password", ("engineering",))
    state = Path(tempfile.mkdtemp(prefix="oidc-cli-"))  # see stack_state_dir on tmp_path
    try:
        async with OIDCProvider(state, users=(user,)) as provider:
            sso = OIDCProviderSettings(
                name=PROVIDER,
                display_name="Test SSO",
                issuer=provider.issuer,
                client_id=provider.web_client.id,
                client_secret=provider.web_client.secret,
                native_client_id=provider.native_client.id,
                scopes=SCOPES,
            )
            async with running_broker(
                broker_settings,
                oidc_providers=(sso,),
                replica_id=f"cli-login-{person}",
                **overrides,
            ) as running:
                yield SignInWorld(provider, running, user, config_home)
    finally:
        shutil.rmtree(state, ignore_errors=True)


async def me_status(broker: RunningBroker, token: str) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{broker.url}/v1/me", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return resp.status


def assert_token_nowhere(world: SignInWorld, token: str) -> None:
    for text in world.outputs:
        assert token not in text
        assert token.split(".")[-1] not in text  # not even its secret part


async def test_browser_login_then_credentials_whoami_with_the_cached_session(
    broker_settings: Settings,
    stack: DevStack,
    browser: Browser,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with sign_in_world(broker_settings, tmp_path) as world:
        user = world.user
        started = time.monotonic()
        login = await world.login(browser)
        login_seconds = time.monotonic() - started
        assert login.returncode == 0, login
        # The browser came back to the CLI's own listener, not somewhere else.
        redirect = urlsplit(world.outputs[-1])
        assert (redirect.scheme, redirect.hostname, redirect.path) == (
            "http",
            "127.0.0.1",
            "/callback",
        )
        assert f"as {user.id} (provider {PROVIDER})" in login.stdout
        assert "groups:  engineering" in login.stdout
        assert "http://127.0.0.1:" in login.stderr  # the URL a person can copy

        # The cache: 0700 directory, 0600 file, the session for this broker's URL.
        entry = world.cached()
        assert entry is not None
        token = entry["token"]
        assert token.startswith("hvb.")
        assert (entry["subject"], entry["provider"]) == (user.id, PROVIDER)
        assert datetime.fromisoformat(entry["expires_at"]) < datetime.fromisoformat(
            entry["max_expires_at"]
        )
        assert stat.S_IMODE(world.cache_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(world.cache_file.parent.stat().st_mode) == 0o700
        assert sorted(p.name for p in world.cache_file.parent.iterdir()) == [
            "sessions.json",
            "sessions.lock",
        ]  # no temporary file left behind

        # A client command with neither --token nor BROKER_TOKEN uses the session.
        creds = await world.cli("credentials", "get", "stripe/test", "--reason", "cli login")
        assert creds.returncode == 0, creds
        grant = creds.json()
        assert grant["secret"] == "stripe/test"
        (row,) = await ledger_rows(
            stack, "e.event = 'grant.issued' AND e.grant_id = $1::uuid", grant["id"]
        )
        assert row["subject"] == user.id
        assert row["body"]["groups"] == ["engineering"]
        (created,) = await ledger_rows(
            stack, "e.event = 'session.created' AND e.subject = $1", user.id
        )
        assert created["body"]["provider"] == PROVIDER
        assert created["body"]["client"]["api"] == "cli"

        who = await world.cli("whoami")
        assert who.returncode == 0, who
        assert f"subject:  {user.id}\n" in who.stdout
        assert "groups:   engineering\n" in who.stdout
        assert "engineering" in who.stdout.split("roles:")[1].splitlines()[0]
        assert f"session:  {PROVIDER}, expires" in who.stdout
        who_json = (await world.cli("whoami", "--json")).json()
        assert (who_json["subject"], who_json["issuer"]) == (user.id, world.provider.issuer)
        assert who_json["session"]["provider"] == PROVIDER
        assert who_json["session"]["expires_at"] == entry["expires_at"]

        # Explicit flags win over the cache: a bad --token is refused, the cache kept.
        explicit = await world.cli("whoami", "--token", "not-a-token")
        assert explicit.returncode == 1 and "error: malformed_token" in explicit.stderr, explicit
        assert world.cached() is not None

        assert_token_nowhere(world, token)
        assert token not in caplog.text
        assert await ledger_text_count(stack, token) == 0
        print(f"browser login took {login_seconds:.1f}s")


async def test_device_login_completed_in_chromium(
    broker_settings: Settings, browser: Browser, tmp_path: Path
) -> None:
    async with sign_in_world(broker_settings, tmp_path) as world:
        started = time.monotonic()
        async with interactive(world, "login", "--device") as login:
            code = (await login.wait_for(re.compile(r"enter the code: (\S+)"))).group(1)
            uri = (await login.wait_for(re.compile(r"open (http://\S+)\n"))).group(1)
            assert "or open: http://" in (await login.wait_for(re.compile(r"or open: .*\n"))).group(
                0
            )
            # The person types the printed code on the plain verification page.
            await browser.approve_device(uri, world.user, code)
            run = await login.finish()
        assert run.returncode == 0, run
        assert f"as {world.user.id} (provider {PROVIDER})" in run.stdout
        who = (await world.cli("whoami", "--json")).json()
        assert (who["subject"], who["groups"]) == (world.user.id, ["engineering"])
        assert who["session"]["provider"] == PROVIDER
        entry = world.cached()
        assert entry is not None
        assert_token_nowhere(world, entry["token"])
        print(f"device login took {time.monotonic() - started:.1f}s")


async def test_logout_ends_the_session_and_forgets_it(
    broker_settings: Settings, stack: DevStack, browser: Browser, tmp_path: Path
) -> None:
    async with sign_in_world(broker_settings, tmp_path) as world:
        assert (await world.login(browser)).returncode == 0
        entry = world.cached()
        assert entry is not None
        token = entry["token"]
        assert await me_status(world.broker, token) == 200

        out = await world.cli("logout")
        assert out.returncode == 0, out
        assert f"signed out of {world.broker.url} ({world.user.id})" in out.stdout
        assert f"  {world.provider.issuer}/" in out.stdout  # the provider's end-session URL
        assert await me_status(world.broker, token) == 401
        assert world.cached() is None
        rows = await ledger_rows(
            stack, "e.event = 'session.revoked' AND e.subject = $1", world.user.id
        )
        assert [r["body"].get("reason") for r in rows] == ["logout"]
        # Signed out: commands say how to sign in; a second logout has nothing to do.
        who = await world.cli("whoami")
        assert who.returncode == 2 and "run `broker login`" in who.stderr, who
        again = await world.cli("logout")
        assert again.returncode == 0 and "not signed in" in again.stdout, again

        # The session already ended at the broker: logout still forgets it.
        assert (await world.login(browser)).returncode == 0
        second = world.cached()
        assert second is not None and second["token"] != token
        await revoke_directly(world.broker, second["token"])
        gone = await world.cli("logout")
        assert gone.returncode == 0, gone
        assert "had already ended" in gone.stdout
        assert world.cached() is None

        # A command on a session revoked elsewhere: told to sign in again, entry dropped.
        assert (await world.login(browser)).returncode == 0
        third = world.cached()
        assert third is not None
        await revoke_directly(world.broker, third["token"])
        grants = await world.cli("grants", "list")
        assert grants.returncode == 2, grants
        assert "session expired: run `broker login`" in grants.stderr
        assert world.cached() is None
        for t in (token, second["token"], third["token"]):
            assert_token_nowhere(world, t)


async def revoke_directly(broker: RunningBroker, token: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{broker.url}/v1/auth/logout", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


TTL = 12  # seconds: short, so a command after 2/3 of it renews first


async def test_silent_renewal_after_two_thirds_of_the_session(
    broker_settings: Settings, stack: DevStack, browser: Browser, tmp_path: Path
) -> None:
    async with sign_in_world(broker_settings, tmp_path, vault_api_session_ttl_seconds=TTL) as world:
        subject = world.user.id
        assert (await world.login(browser)).returncode == 0
        first = world.cached()
        assert first is not None

        async def renewals() -> int:
            rows = await ledger_rows(
                stack, "e.event = 'session.renewed' AND e.subject = $1", subject
            )
            return len(rows)

        # Early on, a command uses the session as it is.
        early = await world.cli("grants", "list")
        assert early.returncode == 0, early
        assert await renewals() == 0

        await sleep_past_two_thirds(first)
        creds = await world.cli("credentials", "get", "stripe/test")
        assert creds.returncode == 0, creds
        assert creds.stderr == ""  # silent
        assert await renewals() == 1
        renewed = world.cached()
        assert renewed is not None
        assert renewed["token"] == first["token"]
        assert renewed["expires_at"] > first["expires_at"]
        assert renewed["max_expires_at"] == first["max_expires_at"]

        # The provider disables the person: the next renewal is refused and the session ends.
        await world.provider.set_enabled(subject, False)
        await sleep_past_two_thirds(renewed)
        refused = await world.cli("grants", "list")
        assert refused.returncode == 2, refused
        assert refused.stderr == "error: session expired: run `broker login`\n"
        assert world.cached() is None
        assert await me_status(world.broker, first["token"]) == 401
        rows = await ledger_rows(stack, "e.event = 'session.revoked' AND e.subject = $1", subject)
        assert [r["body"].get("reason") for r in rows] == ["provider_refused"]
        assert_token_nowhere(world, first["token"])


async def test_a_renewal_the_provider_cannot_answer_keeps_the_session(
    broker_settings: Settings, browser: Browser, tmp_path: Path
) -> None:
    async with sign_in_world(broker_settings, tmp_path, vault_api_session_ttl_seconds=TTL) as world:
        assert (await world.login(browser)).returncode == 0
        entry = world.cached()
        assert entry is not None
        await world.provider.stop()  # the provider is down; the broker is not
        await sleep_past_two_thirds(entry)
        run = await world.cli("grants", "list")
        assert run.returncode == 0, run
        assert run.stderr.startswith(
            "warning: could not renew the session (provider_unavailable: "
        ), run
        assert world.cached() == entry  # still the same session, to its expiry


async def sleep_past_two_thirds(entry: dict[str, Any]) -> None:
    """Until less than a third of the lifetime the cache entry records is left."""
    renewed_at = datetime.fromisoformat(entry["renewed_at"])
    expires_at = datetime.fromisoformat(entry["expires_at"])
    at = renewed_at + (expires_at - renewed_at) * 2 / 3
    wait = (at - datetime.now(renewed_at.tzinfo)).total_seconds() + 0.5
    await asyncio.sleep(max(0.0, wait))


async def test_a_redirect_with_another_state_is_refused_and_an_error_ends_the_login(
    broker_settings: Settings, tmp_path: Path
) -> None:
    async with sign_in_world(broker_settings, tmp_path) as world:
        async with interactive(world, "login", "--no-browser") as login:
            auth_url = (await login.wait_for(_URL_LINE)).group(1)
            query = parse_qs(urlsplit(auth_url).query)
            redirect_uri, state = query["redirect_uri"][0], query["state"][0]
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/callback", redirect_uri)
            async with aiohttp.ClientSession() as http:
                forged = {"state": "not-the-state", "code": "x"}
                async with http.get(redirect_uri, params=forged) as resp:
                    assert resp.status == 400
                    assert "Sign-in refused" in await resp.text()
                assert login.proc.returncode is None  # still waiting for the real one
                denied = {"state": state, "error": "access_denied", "error_description": "no"}
                async with http.get(redirect_uri, params=denied) as resp:
                    assert resp.status == 400
                    assert "access_denied" in await resp.text()
            run = await login.finish()
        assert run.returncode == 1, run
        assert "refused a redirect that is not this sign-in's" in run.stderr
        assert "the identity provider refused the sign-in: access_denied: no" in run.stderr
        assert world.cached() is None
