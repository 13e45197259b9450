"""Deny by default, on both listeners: every registered route (native API) and every
operation kind (Vault front door) walked with no token, a token without the capability,
and the right one; and an app with an undeclared route refuses to start."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker.app import create_app
from broker.errors import PolicyError
from broker.settings import OIDCProviderSettings, Settings
from broker.vaultapi.paths import OPERATION_ACCESS, catalog_index, resolve
from broker.web.keys import LEDGER, POLICY, VAULT
from broker.web.route import DECLARATIONS, Route, UndeclaredRoute
from tests.support.brokers import RunningBroker, running_broker
from tests.support.http import auth
from tests.support.tokens import fresh_subject, mint

pytestmark = pytest.mark.stack

# Groups the demo policy gives each capability (policies/roles.yaml).
_CAPABILITY_GROUPS = {"audit": ["auditors"], "admin": ["security-admins"]}
_AUTH_CODES = {"missing_token", "invalid_session", "session_revoked", "session_expired"}
# An identity provider nobody runs: its two front-door operations are declared only for a
# configured provider, so the walk needs one (they answer 503: it is down).
_IDP = OIDCProviderSettings(name="idp", issuer="http://127.0.0.1:9", client_id="walker")


@pytest.fixture(scope="module")
async def broker(broker_settings: Settings) -> AsyncIterator[RunningBroker]:
    async with running_broker(broker_settings, oidc_providers=(_IDP,)) as running:
        yield running


def _mint(broker: RunningBroker, prefix: str, groups: list[str]) -> str:
    return mint(broker.settings, fresh_subject(prefix), groups)


def _concrete(path: str) -> str:
    """A declared path with its parameters filled (ids nobody holds, a made-up subject)."""
    for name in ("grant_id", "elevation_id", "review_id", "offboarding_id"):
        path = path.replace(f"{{{name}}}", str(uuid.uuid4()))
    return path.replace("{subject}", f"nobody-{uuid.uuid4().hex[:6]}")


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None
) -> tuple[int, str | None]:
    headers = auth(token) if token else {}
    data = b"{}" if method in ("POST", "PUT", "PATCH") else None
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with http.request(method, url, headers=headers, data=data) as r:
        body: Any = await r.json() if r.content_type == "application/json" else None
        code = body["error"]["code"] if isinstance(body, dict) and "error" in body else None
        return r.status, code


async def test_every_native_route_is_declared_and_enforced(
    broker: RunningBroker, http: aiohttp.ClientSession
) -> None:
    table = broker.app[DECLARATIONS]
    registered = set(broker.app.router.routes())
    assert registered == set(table), "every registered route has exactly one declaration"
    nobody = _mint(broker, "walk-norole", [])  # authenticated, no role, no capability
    walked = 0
    for route, decl in table.items():
        url = f"{broker.url}{_concrete(decl.path)}"
        where = f"{route.method} {decl.path} ({decl.access.kind})"
        if decl.front == "console":  # a cookie session, not a bearer token
            await _walk_console_route(http, route.method, url, decl, where)
            walked += 1
            continue
        status, code = await _call(http, route.method, url, None)
        if decl.access.kind == "public":
            assert status not in (401, 403), where
        else:
            assert status == 401, where
        status, code = await _call(http, route.method, url, nobody)
        forbidden = None if route.method == "HEAD" else "forbidden"  # HEAD: no body
        if decl.access.kind == "capability":
            assert (status, code) == (403, forbidden), where
        else:
            assert status != 401 and code != "forbidden", (where, status, code)
        if decl.access.kind == "capability":
            for capability in decl.access.capabilities:
                holder = _mint(broker, f"walk-{capability}", _CAPABILITY_GROUPS[capability])
                status, code = await _call(http, route.method, url, holder)
                assert status not in (401, 403), (where, capability, status, code)
        walked += 1
    assert walked >= 30


async def _walk_console_route(
    http: aiohttp.ClientSession, method: str, url: str, decl: Route, where: str
) -> None:
    """Without a session cookie a console page sends people to sign in (GET) or refuses
    (401); a bearer token counts for nothing there."""
    nobody = {"Authorization": "Bearer hvb.forged.token", "Origin": url.split("/console")[0]}
    async with http.request(method, url, headers=nobody, allow_redirects=False) as r:
        status, location = r.status, r.headers.get("Location", "")
    if decl.access.kind == "public":
        assert status not in (401, 403), (where, status)
    elif method in ("GET", "HEAD"):
        assert (status, location.startswith("/console/login")) == (303, True), (where, status)
    else:
        assert status == 401, (where, status)


def _front_door_samples(broker: RunningBroker) -> list[tuple[str, str]]:
    """One request per operation kind: (method, path after /v1/)."""
    policy = broker.app[POLICY].current
    by_engine: dict[str, str] = {}
    for e in policy.catalog.values():
        mount = e.mount.strip("/")
        verb = {"kv2": "data", "database": "creds", "pki": "issue", "ssh": "sign"}[e.engine]
        by_engine.setdefault(e.engine, f"{mount}/{verb}/{e.path}")
    kv = by_engine["kv2"]
    return [
        ("POST", "auth/jwt/login"),
        ("PUT", "auth/idp/oidc/auth_url"),
        ("GET", "auth/idp/oidc/callback"),
        ("GET", "sys/health"),
        ("GET", "auth/token/lookup-self"),
        ("POST", "auth/token/renew-self"),
        ("GET", "sys/mounts"),
        ("GET", f"sys/internal/ui/mounts/{kv}"),
        ("POST", "sys/leases/renew"),
        ("POST", "sys/leases/revoke"),
        ("GET", kv),
        ("GET", kv.replace("/data/", "/metadata/", 1)),
        ("GET", by_engine["database"]),
        ("POST", by_engine["pki"]),
        ("POST", by_engine["ssh"]),
        ("GET", "sys/policies/acl"),
        ("POST", "auth/token/revoke-self"),  # last: ends the session it is sent with
    ]


async def _vault_call(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None
) -> tuple[int, str]:
    headers = {"X-Vault-Token": token} if token else {}
    async with http.request(method, url, headers=headers, json={}) as r:
        text = await r.text()
    return r.status, text


async def test_every_front_door_operation_declares_and_enforces_its_access(
    broker: RunningBroker, front_door: str, http: aiohttp.ClientSession
) -> None:
    engineer = _mint(broker, "walk-vault", ["engineering"])
    async with http.post(f"{front_door}/v1/auth/jwt/login", json={"jwt": engineer}) as r:
        assert r.status == 200, await r.text()
        session = (await r.json())["auth"]["client_token"]
    policy = broker.app[POLICY].current
    index = catalog_index(policy.catalog)
    samples = _front_door_samples(broker)
    providers = frozenset({_IDP.name})
    kinds = {resolve(m, p, index, providers).kind for m, p in samples}
    assert kinds == set(OPERATION_ACCESS), "a sample for every declared operation kind"
    for method, path in samples:
        op = resolve(method, path, index, providers)
        access = OPERATION_ACCESS[op.kind]
        url = f"{front_door}/v1/{path}"
        where = f"{method} {path} ({op.kind}: {access.kind})"
        status, text = await _vault_call(http, method, url, None)
        if access.needs_token:
            assert (status, "(missing_token)" in text) == (403, True), (where, text)
        else:
            assert "(missing_token)" not in text and status != 403, (where, status, text)
        status, text = await _vault_call(http, method, url, "hvb.forged.token")
        if access.needs_token:
            assert (status, "(invalid_session)" in text) == (403, True), (where, text)
        status, text = await _vault_call(http, method, url, session)
        assert not any(f"({c})" in text for c in _AUTH_CODES), (where, status, text)


async def test_a_route_without_an_access_declaration_stops_start_up(
    broker: RunningBroker,
) -> None:
    async def sneaky(request: web.Request) -> web.Response:
        return web.json_response({"secret": "nobody declared who may read this"})

    app = create_app(broker.settings)
    app.router.add_get("/v1/sneaky", sneaky)
    runner = web.AppRunner(app)
    with pytest.raises(UndeclaredRoute, match=r"GET /v1/sneaky"):
        await runner.setup()  # before any I/O: nothing was opened, nothing to close
    await runner.cleanup()


async def test_a_failed_start_closes_what_it_had_opened(
    broker: RunningBroker, tmp_path: Path
) -> None:
    """One cleanup context per resource: the policy fails to load after the ledger pool
    and the Vault client were opened; cleaning up the runner closes both."""
    (tmp_path / "roles.yaml").write_text("roles: [not: a role\n")
    app = create_app(broker.settings.with_overrides(policies_dir=tmp_path))
    runner = web.AppRunner(app)
    with pytest.raises(PolicyError):
        await runner.setup()
    pool, vault = app[LEDGER].pool, app[VAULT]
    assert not pool.is_closing() and not vault.closed
    await runner.cleanup()
    assert pool.is_closing() and vault.closed
    assert POLICY not in app  # nothing after the failing step ran
