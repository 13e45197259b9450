"""Signing people in through a real OpenID Provider (oidc-provider on node), with the
user's part in a real Chromium: the broker as relying party, end to end through its API.

Every test signs in a person of its own (a fresh user at a fresh provider), so the
session ledger's rows for that subject are the test's alone. Refusals are checked three
ways: the answer's code, no ``session.created`` row, and the failure counted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from broker.auth import IssuerConfig, Verifier
from broker.errors import SignInRefused
from broker.oidc.provider import ProviderClient, TokenSet
from broker.oidc.sealing import seal
from broker.oidc.store import digest
from broker.settings import IssuerSettings, Settings
from broker.stack.devstack import DevStack
from broker.web.keys import METRICS
from tests.support.brokers import RunningBroker, running_broker
from tests.support.browser import Browser
from tests.support.ledger import ledger_rows, session_ledger_dsn
from tests.support.loopback_callback import LoopbackCallback
from tests.support.oidc_provider import SERVICE_AUDIENCE, OIDCProvider, OIDCUser

pytestmark = [pytest.mark.stack, pytest.mark.browser]


def _person(*groups: str) -> OIDCUser:
    name = f"si-{uuid.uuid4().hex[:10]}"
    return OIDCUser(name, f"{name}@example.com", name.title(), f"{name}-password", groups)


@pytest.fixture
async def person() -> OIDCUser:
    return _person("engineering")


@pytest.fixture
async def provider(person: OIDCUser) -> AsyncIterator[OIDCProvider]:
    tmp = Path(tempfile.mkdtemp(prefix="signin-provider-"))
    try:
        async with OIDCProvider(tmp, users=(person, _person("auditors"))) as running:
            yield running
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def broker(broker_settings: Settings, provider: OIDCProvider) -> AsyncIterator[RunningBroker]:
    async with running_broker(
        broker_settings,
        oidc_providers=(
            provider.broker_settings(),
            provider.broker_settings(name="retired", enabled=False),
        ),
    ) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def _post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any] | None = None, token: str = ""
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(url, json=body, headers=headers) as r:
        return r.status, await r.json()


async def _start(
    http: aiohttp.ClientSession, broker: RunningBroker, redirect_uri: str, provider: str = "corp"
) -> tuple[dict[str, Any], str]:
    client_nonce = secrets.token_urlsafe(24)
    status, started = await _post(
        http,
        f"{broker.url}/v1/auth/login",
        {"provider": provider, "redirect_uri": redirect_uri, "client_nonce": client_nonce},
    )
    assert status == 200, started
    return started, client_nonce


async def _browser_code(
    http: aiohttp.ClientSession, broker: RunningBroker, browser: Browser, person: OIDCUser
) -> tuple[dict[str, Any], str, str]:
    """Start a sign-in and complete the person's part in Chromium: (start, nonce, code)."""
    async with LoopbackCallback() as callback:
        started, client_nonce = await _start(http, broker, callback.redirect_uri)
        await browser.sign_in(started["auth_url"], person)
        redirect = await callback.wait()
    assert redirect["state"] == started["state"]
    return started, client_nonce, redirect["code"]


async def _sign_in(
    http: aiohttp.ClientSession, broker: RunningBroker, browser: Browser, person: OIDCUser
) -> dict[str, Any]:
    started, client_nonce, code = await _browser_code(http, broker, browser, person)
    status, signed_in = await _post(
        http,
        f"{broker.url}/v1/auth/callback",
        {"state": started["state"], "code": code, "client_nonce": client_nonce},
    )
    assert status == 200, signed_in
    return signed_in


async def _sessions_of(stack: DevStack, subject: str) -> list[dict[str, Any]]:
    return await ledger_rows(stack, "event = 'session.created' AND subject = $1", subject)


def _failures(broker: RunningBroker, reason: str) -> float:
    value = broker.app[METRICS].registry.get_sample_value(
        "broker_auth_failures_total", {"reason": reason}
    )
    return value or 0.0


async def _refused_callback(
    http: aiohttp.ClientSession, broker: RunningBroker, body: dict[str, str], code: str
) -> str:
    """POST the callback; assert it is refused with ``code`` and counted; the message."""
    before = _failures(broker, code)
    status, refused = await _post(http, f"{broker.url}/v1/auth/callback", body)
    assert (status, refused["error"]["code"]) == (400, code), refused
    assert _failures(broker, code) == before + 1
    return str(refused["error"]["message"])


# --- the browser flow ---------------------------------------------------------------------


async def test_browser_sign_in_gives_a_session_that_issues_under_the_providers_identity(
    broker: RunningBroker,
    browser: Browser,
    person: OIDCUser,
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    signed_in = await _sign_in(http, broker, browser, person)
    token = signed_in.pop("token")
    assert token.startswith("hvb.")
    assert signed_in["subject"] == person.email  # subject_claim = "email"
    assert signed_in["groups"] == ["engineering"]
    assert signed_in["provider"] == "corp"

    async with http.get(f"{broker.url}/v1/me", headers={"Authorization": f"Bearer {token}"}) as r:
        me = await r.json()
    assert r.status == 200, me
    assert (me["subject"], me["groups"], me["session"]["provider"]) == (
        person.email,
        ["engineering"],
        "corp",
    )
    status, grant = await _post(
        http, f"{broker.url}/v1/credentials", {"secret": "stripe/test"}, token
    )
    assert status == 201, grant

    (created,) = await _sessions_of(stack, person.email)
    assert created["body"]["provider"] == "corp"
    assert created["body"]["client"]["api"] == "cli"
    assert created["body"]["groups"] == ["engineering"]
    assert created["body"]["issuer"] == broker.settings.oidc_providers[0].issuer
    assert token not in created["_text"] and token.rsplit(".", 1)[1] not in created["_text"]
    (issued,) = await ledger_rows(stack, "event = 'grant.issued' AND subject = $1", person.email)
    assert issued["body"]["groups"] == ["engineering"]


async def test_a_replayed_state_is_refused_and_counted(
    broker: RunningBroker,
    browser: Browser,
    person: OIDCUser,
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    started, client_nonce, code = await _browser_code(http, broker, browser, person)
    body = {"state": started["state"], "code": code, "client_nonce": client_nonce}
    status, _ = await _post(http, f"{broker.url}/v1/auth/callback", body)
    assert status == 200
    await _refused_callback(http, broker, body, "invalid_state")
    assert len(await _sessions_of(stack, person.email)) == 1


async def test_a_wrong_client_nonce_finishes_nothing(
    broker: RunningBroker,
    browser: Browser,
    person: OIDCUser,
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    started, _, code = await _browser_code(http, broker, browser, person)
    body = {"state": started["state"], "code": code, "client_nonce": secrets.token_urlsafe(24)}
    await _refused_callback(http, broker, body, "client_nonce_mismatch")
    assert await _sessions_of(stack, person.email) == []


async def test_a_code_used_twice_is_refused_by_the_provider(
    broker: RunningBroker,
    browser: Browser,
    person: OIDCUser,
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    started, client_nonce, code = await _browser_code(http, broker, browser, person)
    status, _ = await _post(
        http,
        f"{broker.url}/v1/auth/callback",
        {"state": started["state"], "code": code, "client_nonce": client_nonce},
    )
    assert status == 200
    # A second sign-in of the same client that smuggles in the spent code.
    async with LoopbackCallback() as callback:
        again, again_nonce = await _start(http, broker, callback.redirect_uri)
    body = {"state": again["state"], "code": code, "client_nonce": again_nonce}
    assert "invalid_grant" in await _refused_callback(http, broker, body, "code_rejected")
    assert len(await _sessions_of(stack, person.email)) == 1


async def _tamper_pending(stack: DevStack, state: str, column: str, value: Any) -> None:
    conn = await asyncpg.connect(session_ledger_dsn(stack))
    try:
        changed = await conn.execute(
            f"UPDATE signin.pending SET {column} = $2 WHERE handle_sha256 = $1",  # noqa: S608
            digest(state),
            value,
        )
        assert changed == "UPDATE 1"
    finally:
        await conn.close()


async def test_a_pkce_verifier_that_does_not_match_is_refused(
    broker: RunningBroker,
    browser: Browser,
    person: OIDCUser,
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    started, client_nonce, code = await _browser_code(http, broker, browser, person)
    # What an attacker who can write the table could do: swap in a verifier of its own.
    other = seal((started["state"] + client_nonce).encode(), "pkce", secrets.token_urlsafe(48))
    await _tamper_pending(stack, started["state"], "sealed", other)
    status, refused = await _post(
        http,
        f"{broker.url}/v1/auth/callback",
        {"state": started["state"], "code": code, "client_nonce": client_nonce},
    )
    assert (status, refused["error"]["code"]) == (400, "code_rejected")
    assert "PKCE" in refused["error"]["message"] or "invalid_grant" in refused["error"]["message"]
    assert await _sessions_of(stack, person.email) == []


async def test_an_id_token_for_another_login_fails_the_nonce_check(
    broker: RunningBroker,
    browser: Browser,
    person: OIDCUser,
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    started, client_nonce, code = await _browser_code(http, broker, browser, person)
    await _tamper_pending(stack, started["state"], "nonce", secrets.token_urlsafe(32))
    body = {"state": started["state"], "code": code, "client_nonce": client_nonce}
    await _refused_callback(http, broker, body, "nonce_mismatch")
    assert await _sessions_of(stack, person.email) == []


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/callback",
        "http://evil.example:8250/oidc/callback",
        "http://127.0.0.1/no-port",
        "javascript:alert(1)",
    ],
)
async def test_only_a_loopback_listener_may_receive_the_code(
    broker: RunningBroker, http: aiohttp.ClientSession, redirect_uri: str
) -> None:
    status, refused = await _post(
        http,
        f"{broker.url}/v1/auth/login",
        {"provider": "corp", "redirect_uri": redirect_uri, "client_nonce": "n" * 32},
    )
    assert (status, refused["error"]["code"]) == (400, "invalid_redirect_uri")


async def test_a_disabled_or_unknown_provider_signs_nobody_in(
    broker: RunningBroker, http: aiohttp.ClientSession
) -> None:
    for name, code in (("retired", "provider_disabled"), ("nobody", "unknown_provider")):
        before = _failures(broker, code)
        status, refused = await _post(
            http,
            f"{broker.url}/v1/auth/login",
            {"provider": name, "redirect_uri": "http://127.0.0.1:9/cb", "client_nonce": "n" * 32},
        )
        assert (status, refused["error"]["code"]) == (400, code)
        assert _failures(broker, code) == before + 1
    async with http.get(f"{broker.url}/v1/auth/providers") as r:
        listed = await r.json()
    assert [p["name"] for p in listed["providers"]] == ["corp"]  # the disabled one is hidden
    assert listed["providers"][0]["flows"] == ["browser", "device"]


# --- the device flow, renewal, logout -----------------------------------------------------


async def test_device_sign_in_then_a_group_removed_at_the_provider_is_gone_at_renewal(
    broker: RunningBroker,
    browser: Browser,
    person: OIDCUser,
    provider: OIDCProvider,
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    status, device = await _post(http, f"{broker.url}/v1/auth/device", {"provider": "corp"})
    assert status == 200, device
    status, pending = await _post(
        http, f"{broker.url}/v1/auth/device/token", {"handle": device["handle"]}
    )
    assert (status, pending["error"]["code"]) == (400, "authorization_pending")
    await browser.approve_device(device["verification_uri_complete"], person)
    status, signed_in = await _post(
        http, f"{broker.url}/v1/auth/device/token", {"handle": device["handle"]}
    )
    assert status == 200, signed_in
    token = signed_in["token"]
    assert signed_in["groups"] == ["engineering"]
    # The handle is spent.
    status, spent = await _post(
        http, f"{broker.url}/v1/auth/device/token", {"handle": device["handle"]}
    )
    assert (status, spent["error"]["code"]) == (400, "expired_token")

    await provider.set_groups(person.id, [])  # an administrator removes the person
    status, renewed = await _post(http, f"{broker.url}/v1/auth/session/renew", token=token)
    assert status == 200, renewed
    assert renewed["groups"] == []
    status, denied = await _post(
        http, f"{broker.url}/v1/credentials", {"secret": "stripe/test"}, token
    )
    assert (status, denied["error"]["code"]) == (403, "denied")
    (row,) = await ledger_rows(stack, "event = 'session.renewed' AND subject = $1", person.email)
    assert row["body"]["groups"] == []


async def test_a_person_disabled_at_the_provider_loses_the_session_at_renewal(
    broker: RunningBroker,
    browser: Browser,
    person: OIDCUser,
    provider: OIDCProvider,
    http: aiohttp.ClientSession,
) -> None:
    token = (await _sign_in(http, broker, browser, person))["token"]
    await provider.set_enabled(person.id, False)
    status, refused = await _post(http, f"{broker.url}/v1/auth/session/renew", token=token)
    assert (status, refused["error"]["code"]) == (401, "session_revoked")
    async with http.get(f"{broker.url}/v1/me", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 401


async def test_logout_ends_the_session_and_points_at_the_providers_logout(
    broker: RunningBroker,
    browser: Browser,
    person: OIDCUser,
    provider: OIDCProvider,
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    token = (await _sign_in(http, broker, browser, person))["token"]
    status, out = await _post(http, f"{broker.url}/v1/auth/logout", token=token)
    assert status == 200, out
    assert out["revoked"] is True
    assert out["end_session_url"].startswith(f"{provider.issuer}/session/end?")
    async with http.get(f"{broker.url}/v1/me", headers={"Authorization": f"Bearer {token}"}) as r:
        assert (r.status, (await r.json())["error"]["code"]) == (401, "session_revoked")
    (revoked,) = await ledger_rows(
        stack, "event = 'session.revoked' AND subject = $1", person.email
    )
    assert revoked["body"]["reason"] == "logout"
    conn = await asyncpg.connect(session_ledger_dsn(stack))
    try:
        kept = await conn.fetchval(
            "SELECT count(*) FROM signin.refresh_tokens WHERE accessor = $1",
            revoked["body"]["accessor"],
        )
    finally:
        await conn.close()
    assert kept == 0


async def test_a_provider_that_is_down_refuses_sign_in_but_sessions_go_on(
    broker: RunningBroker,
    browser: Browser,
    person: OIDCUser,
    provider: OIDCProvider,
    http: aiohttp.ClientSession,
) -> None:
    token = (await _sign_in(http, broker, browser, person))["token"]
    async with LoopbackCallback() as callback:
        started, client_nonce = await _start(http, broker, callback.redirect_uri)
    await provider.stop()
    status, refused = await _post(
        http,
        f"{broker.url}/v1/auth/callback",
        {"state": started["state"], "code": "x" * 20, "client_nonce": client_nonce},
    )
    assert (status, refused["error"]["code"]) == (503, "provider_unavailable")
    status, refused = await _post(http, f"{broker.url}/v1/auth/device", {"provider": "corp"})
    assert (status, refused["error"]["code"]) == (503, "provider_unavailable")
    async with http.get(f"{broker.url}/v1/me", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200  # signed in before the outage: still signed in


# --- the ID token's own checks (the provider's real keys, forged claims) ------------------


@pytest.fixture
async def client(provider: OIDCProvider) -> AsyncIterator[ProviderClient]:
    settings = provider.broker_settings()
    async with aiohttp.ClientSession() as http:

        def verifier(config: IssuerConfig) -> Verifier:
            return Verifier([config], verified_cache_size=0)

        running = ProviderClient(settings, http=lambda: http, verifier_factory=verifier)
        try:
            yield running
        finally:
            await running.close()


def _claims(provider: OIDCProvider, person: OIDCUser, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": provider.issuer,
        "sub": person.id,
        "aud": provider.native_client.id,
        "iat": now,
        "exp": now + 300,
        "nonce": "the-nonce",
        "email": person.email,
        "groups": list(person.groups),
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"iss": "https://evil.example"}, "untrusted_issuer"),
        ({"aud": "another-client"}, "wrong_audience"),
        ({"exp": 1_000_000_000}, "token_expired"),
        ({"nbf": 9_999_999_999}, "token_not_yet_valid"),
        ({"nonce": None}, "nonce_mismatch"),
        ({"nonce": "another"}, "nonce_mismatch"),
        ({"azp": "another-client"}, "azp_mismatch"),
        ({"aud": ["jit-broker-cli", "another-client"]}, "azp_mismatch"),
        ({"email_verified": False}, "email_not_verified"),
    ],
)
async def test_id_token_checks(
    client: ProviderClient,
    provider: OIDCProvider,
    person: OIDCUser,
    changes: dict[str, Any],
    code: str,
) -> None:
    forged = provider.sign(_claims(provider, person, **changes))
    with pytest.raises(SignInRefused) as caught:
        await client.identify(
            provider.native_client.id, TokenSet(forged, None, None), nonce="the-nonce"
        )
    assert caught.value.code == code


async def test_alg_none_and_hs256_keyed_with_the_public_key_are_refused(
    client: ProviderClient, provider: OIDCProvider, person: OIDCUser
) -> None:

    public_pem = provider.signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = _claims(provider, person)
    unsigned = jwt.encode(claims, None, algorithm="none")

    # PyJWT refuses to HMAC with a PEM key; build the token by hand, as an attacker would.
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": provider.kids["RS256"]}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    hs256 = f"{head}.{body}.{b64(mac)}"
    for token in (unsigned, hs256):
        with pytest.raises(SignInRefused) as caught:
            await client.identify(
                provider.native_client.id, TokenSet(token, None, None), nonce="the-nonce"
            )
        assert caught.value.code in ("algorithm_not_allowed", "malformed_token")


async def test_a_token_without_a_groups_claim_maps_to_no_groups(
    client: ProviderClient, provider: OIDCProvider, person: OIDCUser
) -> None:
    forged = provider.sign(_claims(provider, person, groups=None))
    principal = await client.identify(
        provider.native_client.id, TokenSet(forged, None, None), nonce="the-nonce"
    )
    assert (principal.subject, principal.groups, principal.kind) == (
        person.email,
        frozenset(),
        "human",
    )


# --- services: the provider's client-credentials tokens, as any trusted issuer's JWT -------


async def test_a_service_presents_the_providers_client_credentials_token(
    broker_settings: Settings, provider: OIDCProvider, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{provider.issuer}/.well-known/openid-configuration") as r:
        document = await r.json()
    client = provider.service_client
    assert client.secret is not None
    async with http.post(
        document["token_endpoint"],
        data={"grant_type": "client_credentials"},
        headers={
            "Authorization": "Basic "
            + base64.b64encode(f"{client.id}:{client.secret}".encode()).decode()
        },
    ) as r:
        assert r.status == 200, await r.text()
        access_token = (await r.json())["access_token"]
    service_issuer = IssuerSettings(
        issuer=provider.issuer,
        audience=SERVICE_AUDIENCE,
        algorithms=("RS256",),
        jwks_url=document["jwks_uri"],
        service_subjects=True,
    )
    async with (
        running_broker(
            broker_settings, issuers=(*broker_settings.issuers, service_issuer)
        ) as running,
        http.get(f"{running.url}/v1/me", headers={"Authorization": f"Bearer {access_token}"}) as r,
    ):
        me = await r.json()
        assert r.status == 200, me
    assert (me["subject"], me["kind"], me["issuer"]) == (client.id, "service", provider.issuer)
    assert "session" not in me  # a JWT, not a signed-in session


async def test_an_id_token_refused_after_the_exchange_is_counted_and_signs_nobody_in(
    broker_settings: Settings,
    provider: OIDCProvider,
    browser: Browser,
    person: OIDCUser,
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    """The ID-token checks above run inside the same counted step as every refusal: here
    one of them (the algorithm allow-list: the provider signs RS256, the broker allows
    only ES256) fails after a real code exchange."""
    only_es256 = provider.broker_settings(algorithms=("ES256",))
    async with running_broker(broker_settings, oidc_providers=(only_es256,)) as running:
        started, client_nonce, code = await _browser_code(http, running, browser, person)
        body = {"state": started["state"], "code": code, "client_nonce": client_nonce}
        await _refused_callback(http, running, body, "algorithm_not_allowed")
    assert await _sessions_of(stack, person.email) == []


async def test_two_renewals_at_once_both_succeed_with_a_rotating_refresh_token(
    broker: RunningBroker, browser: Browser, person: OIDCUser, http: aiohttp.ClientSession
) -> None:
    """The native client's refresh tokens rotate: without the per-session lock the second
    renewal would spend a used token, and the provider's refusal would end the session."""
    token = (await _sign_in(http, broker, browser, person))["token"]
    answers = await asyncio.gather(
        *(_post(http, f"{broker.url}/v1/auth/session/renew", token=token) for _ in range(3))
    )
    assert [status for status, _ in answers] == [200, 200, 200], answers


async def test_groups_from_userinfo_when_the_provider_keeps_them_out_of_the_id_token(
    broker_settings: Settings,
    provider: OIDCProvider,
    browser: Browser,
    person: OIDCUser,
    http: aiohttp.ClientSession,
) -> None:
    from_userinfo = provider.broker_settings(userinfo_groups=True, groups_prefix="corp:")
    async with running_broker(broker_settings, oidc_providers=(from_userinfo,)) as running:
        signed_in = await _sign_in(http, running, browser, person)
    assert signed_in["groups"] == ["corp:engineering"]
