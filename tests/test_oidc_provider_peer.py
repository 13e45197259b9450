"""The OpenID Provider peer works end to end: the ground the sign-in tests stand on.

Each test plays the relying party itself (aiohttp against the provider's endpoints, a real
Chromium for the user's part), so a failure here is the peer's, never the broker's.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt
import pytest

from tests.support.browser import Browser, ProviderRefused
from tests.support.loopback_callback import LoopbackCallback
from tests.support.oidc_provider import (
    SERVICE_AUDIENCE,
    OIDCClient,
    OIDCProvider,
    OIDCUser,
)

SCOPES = "openid email profile groups offline_access"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


async def discovery(http: aiohttp.ClientSession, provider: OIDCProvider) -> dict[str, Any]:
    async with http.get(f"{provider.issuer}/.well-known/openid-configuration") as resp:
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
        return doc


def basic_auth(client: OIDCClient) -> dict[str, str]:
    assert client.secret is not None
    raw = f"{client.id}:{client.secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


async def token_request(
    http: aiohttp.ClientSession,
    provider: OIDCProvider,
    form: Mapping[str, str],
    client: OIDCClient,
) -> tuple[int, dict[str, Any]]:
    """POST to the token endpoint as ``client`` (public: client_id in the form)."""
    doc = await discovery(http, provider)
    headers = basic_auth(client) if client.secret else {}
    data = dict(form) if client.secret else {**form, "client_id": client.id}
    async with http.post(doc["token_endpoint"], data=data, headers=headers) as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def verified_id_token(
    http: aiohttp.ClientSession, provider: OIDCProvider, token: str, client: OIDCClient
) -> dict[str, Any]:
    """The ID token's claims, checked against the provider's published keys."""
    doc = await discovery(http, provider)
    async with http.get(doc["jwks_uri"]) as resp:
        jwks = jwt.PyJWKSet.from_dict(await resp.json())
    key = jwks[jwt.get_unverified_header(token)["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=["RS256", "ES256"], audience=client.id, issuer=provider.issuer
    )
    return claims


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def sign_in_with_code(
    http: aiohttp.ClientSession,
    provider: OIDCProvider,
    browser: Browser,
    user: OIDCUser,
    client: OIDCClient,
    callback: LoopbackCallback,
    screenshot: Path | None = None,
    prompt: str | None = None,
) -> dict[str, Any]:
    """Authorization code + PKCE: the user's part in Chromium, the exchange with aiohttp."""
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    doc = await discovery(http, provider)
    query = {
        "client_id": client.id,
        "response_type": "code",
        "redirect_uri": callback.redirect_uri,
        "scope": SCOPES,
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **({"prompt": prompt} if prompt else {}),
    }
    landed = await browser.sign_in(
        f"{doc['authorization_endpoint']}?{urlencode(query)}",
        user,
        screenshot=screenshot,
    )
    assert landed.startswith(callback.redirect_uri + "?")
    redirect = await callback.wait()
    assert redirect["state"] == state
    assert redirect["iss"] == provider.issuer  # RFC 9207, advertised in discovery
    status, tokens = await token_request(
        http,
        provider,
        {
            "grant_type": "authorization_code",
            "code": redirect["code"],
            "redirect_uri": callback.redirect_uri,
            "code_verifier": verifier,
        },
        client,
    )
    assert status == 200, tokens
    claims = await verified_id_token(http, provider, tokens["id_token"], client)
    assert claims["nonce"] == nonce
    return tokens


async def test_discovery_names_the_issuer_exactly_and_every_endpoint_the_broker_uses(
    http: aiohttp.ClientSession, oidc_provider: OIDCProvider
) -> None:
    doc = await discovery(http, oidc_provider)
    assert doc["issuer"] == oidc_provider.issuer
    assert not oidc_provider.issuer.endswith("/")
    for endpoint in (
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
        "revocation_endpoint",
        "end_session_endpoint",
        "device_authorization_endpoint",
    ):
        assert doc[endpoint].startswith(oidc_provider.issuer + "/"), endpoint
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert {"groups", "offline_access"} <= set(doc["scopes_supported"])
    assert "groups" in doc["claims_supported"]
    assert {"RS256", "ES256"} <= set(doc["id_token_signing_alg_values_supported"])
    # The published keys are the fixture's, public halves only.
    async with http.get(doc["jwks_uri"]) as resp:
        keys = (await resp.json())["keys"]
    assert {k["kid"] for k in keys} == set(oidc_provider.kids.values())
    assert not any("d" in k for k in keys)


async def test_a_token_forged_with_the_fixture_key_verifies_against_the_published_keys(
    http: aiohttp.ClientSession, oidc_provider: OIDCProvider
) -> None:
    client = oidc_provider.native_client
    for alg in ("RS256", "ES256"):
        forged = oidc_provider.sign(
            {"iss": oidc_provider.issuer, "aud": client.id, "sub": "mallory", "exp": 2**31},
            alg,
        )
        claims = await verified_id_token(http, oidc_provider, forged, client)
        assert claims["sub"] == "mallory"


async def test_code_flow_with_pkce_on_a_random_loopback_port_puts_groups_in_the_id_token(
    http: aiohttp.ClientSession, oidc_provider: OIDCProvider, browser: Browser, tmp_path: Path
) -> None:
    client = oidc_provider.native_client
    screenshot = tmp_path / "login.png"
    async with LoopbackCallback() as callback:
        bob = oidc_provider.user("bob")
        tokens = await sign_in_with_code(
            http, oidc_provider, browser, bob, client, callback, screenshot
        )
    assert screenshot.stat().st_size > 1000  # the provider's login page, rendered
    claims = await verified_id_token(http, oidc_provider, tokens["id_token"], client)
    assert claims["sub"] == "bob"
    assert claims["email"] == "bob@example.com"
    assert claims["groups"] == ["engineering", "sre-leads"]
    assert tokens["refresh_token"]
    doc = await discovery(http, oidc_provider)
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with http.get(doc["userinfo_endpoint"], headers=bearer) as resp:
        assert (await resp.json())["groups"] == ["engineering", "sre-leads"]


async def test_native_client_takes_the_bao_cli_localhost_redirect_on_any_port(
    http: aiohttp.ClientSession, oidc_provider: OIDCProvider, browser: Browser
) -> None:
    client = oidc_provider.native_client
    async with LoopbackCallback("/oidc/callback", host="localhost") as callback:
        carol = oidc_provider.user("carol")
        tokens = await sign_in_with_code(http, oidc_provider, browser, carol, client, callback)
    claims = await verified_id_token(http, oidc_provider, tokens["id_token"], client)
    assert claims["groups"] == ["auditors"]


async def test_a_wrong_password_is_refused_on_the_login_page(
    http: aiohttp.ClientSession, oidc_provider: OIDCProvider, browser: Browser
) -> None:
    impostor = dataclasses.replace(oidc_provider.user("alice"), password="not-her-password")
    async with LoopbackCallback() as callback:
        with pytest.raises(ProviderRefused, match="Wrong email or password"):
            await sign_in_with_code(
                http, oidc_provider, browser, impostor, oidc_provider.native_client, callback
            )


@pytest.mark.parametrize("uri", ["verification_uri", "verification_uri_complete"])
async def test_device_flow_completes_in_chromium_while_the_client_polls(
    http: aiohttp.ClientSession, oidc_provider: OIDCProvider, browser: Browser, uri: str
) -> None:
    client = oidc_provider.native_client
    doc = await discovery(http, oidc_provider)
    form = {"client_id": client.id, "scope": SCOPES}
    async with http.post(doc["device_authorization_endpoint"], data=form) as resp:
        assert resp.status == 200
        grant = await resp.json()
    poll = {"grant_type": DEVICE_GRANT, "device_code": grant["device_code"]}
    status, pending = await token_request(http, oidc_provider, poll, client)
    assert (status, pending["error"]) == (400, "authorization_pending")

    async def poll_until_issued() -> dict[str, Any]:
        while True:
            await asyncio.sleep(0.5)  # under `interval` (5 s): this provider never says slow_down
            status, body = await token_request(http, oidc_provider, poll, client)
            if status == 200:
                return body
            assert body["error"] in ("authorization_pending", "slow_down"), body

    polling = asyncio.create_task(poll_until_issued())
    try:
        # The plain URI: the user types the code, as on another device; the complete one
        # carries it (the browser then goes straight to the confirmation).
        code = grant["user_code"] if uri == "verification_uri" else None
        await browser.approve_device(grant[uri], oidc_provider.user("erin"), code)
        tokens = await asyncio.wait_for(polling, 30)
    finally:
        polling.cancel()
    claims = await verified_id_token(http, oidc_provider, tokens["id_token"], client)
    assert (claims["sub"], claims["groups"]) == ("erin", ["security-admins"])
    assert tokens["refresh_token"]


async def test_refresh_returns_the_groups_changed_at_the_provider(
    http: aiohttp.ClientSession, oidc_provider: OIDCProvider, browser: Browser
) -> None:
    client = oidc_provider.native_client
    async with LoopbackCallback() as callback:
        alice = oidc_provider.user("alice")
        tokens = await sign_in_with_code(http, oidc_provider, browser, alice, client, callback)
    claims = await verified_id_token(http, oidc_provider, tokens["id_token"], client)
    assert claims["groups"] == ["engineering"]

    await oidc_provider.set_groups("alice", [])
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    status, refreshed = await token_request(http, oidc_provider, refresh, client)
    assert status == 200, refreshed
    claims = await verified_id_token(http, oidc_provider, refreshed["id_token"], client)
    assert claims["groups"] == []
    # A public client's refresh token rotates: the old one is spent.
    assert refreshed["refresh_token"] != tokens["refresh_token"]
    status, reused = await token_request(http, oidc_provider, refresh, client)
    assert (status, reused["error"]) == (400, "invalid_grant")


async def test_a_disabled_user_cannot_refresh(
    http: aiohttp.ClientSession, oidc_provider: OIDCProvider, browser: Browser
) -> None:
    client = oidc_provider.native_client
    async with LoopbackCallback() as callback:
        bob = oidc_provider.user("bob")
        tokens = await sign_in_with_code(http, oidc_provider, browser, bob, client, callback)
    await oidc_provider.set_enabled("bob", False)
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    status, refused = await token_request(http, oidc_provider, refresh, client)
    assert (status, refused["error"]) == (400, "invalid_grant")


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
async def test_rp_initiated_logout_ends_the_session_and_only_an_online_refresh_token(
    http: aiohttp.ClientSession, oidc_provider: OIDCProvider, browser: Browser, offline: bool
) -> None:
    client = oidc_provider.native_client
    # offline_access is granted only with prompt=consent (OpenID Connect Core 11).
    async with LoopbackCallback() as callback:
        alice = oidc_provider.user("alice")
        tokens = await sign_in_with_code(
            http,
            oidc_provider,
            browser,
            alice,
            client,
            callback,
            prompt="consent" if offline else None,
        )
    assert ("offline_access" in tokens["scope"].split()) is offline
    doc = await discovery(http, oidc_provider)
    async with LoopbackCallback("/logged-out") as logged_out:
        query = {
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": logged_out.redirect_uri,
            "state": "bye",
        }
        landed = await browser.sign_out(f"{doc['end_session_endpoint']}?{urlencode(query)}")
        assert landed.startswith(logged_out.redirect_uri + "?")
        assert (await logged_out.wait())["state"] == "bye"
    # Without offline_access the refresh token dies with the provider session.
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    status, body = await token_request(http, oidc_provider, refresh, client)
    if offline:
        assert status == 200, body
    else:
        assert (status, body["error"]) == (400, "invalid_grant")


async def test_web_client_refresh_token_is_revoked_at_the_revocation_endpoint(
    http: aiohttp.ClientSession, browser: Browser
) -> None:
    with tempfile.TemporaryDirectory(prefix="oidc-web-") as tmp:
        async with LoopbackCallback() as callback:
            provider = OIDCProvider(Path(tmp), web_redirect_uris=[callback.redirect_uri])
            async with provider:
                await _revoke_web_refresh_token(http, provider, browser, callback)


async def _revoke_web_refresh_token(
    http: aiohttp.ClientSession,
    provider: OIDCProvider,
    browser: Browser,
    callback: LoopbackCallback,
) -> None:
    client = provider.web_client
    erin = provider.user("erin")
    tokens = await sign_in_with_code(http, provider, browser, erin, client, callback)
    doc = await discovery(http, provider)
    revoke = {"token": tokens["refresh_token"], "token_type_hint": "refresh_token"}
    async with http.post(doc["revocation_endpoint"], data=revoke, headers=basic_auth(client)) as r:
        assert r.status == 200
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    status, refused = await token_request(http, provider, refresh, client)
    assert (status, refused["error"]) == (400, "invalid_grant")


async def test_client_credentials_token_is_a_jwt_for_the_service_audience(
    http: aiohttp.ClientSession, oidc_provider: OIDCProvider
) -> None:
    client = oidc_provider.service_client
    status, tokens = await token_request(
        http, oidc_provider, {"grant_type": "client_credentials"}, client
    )
    assert status == 200, tokens
    doc = await discovery(http, oidc_provider)
    async with http.get(doc["jwks_uri"]) as resp:
        jwks = jwt.PyJWKSet.from_dict(await resp.json())
    token = tokens["access_token"]
    claims = jwt.decode(
        token,
        jwks[jwt.get_unverified_header(token)["kid"]],
        algorithms=["RS256"],
        audience=SERVICE_AUDIENCE,
        issuer=oidc_provider.issuer,
    )
    assert (claims["sub"], claims["client_id"]) == (client.id, client.id)
