"""A real OpenID Provider for the sign-in tests: panva's ``oidc-provider`` from npm.

``tests/package.json`` pins it and ``make test`` installs it (``npm ci``);
``tests/oidc/provider.mjs`` runs it with the config written here, on a free loopback port.
What the provider offers (the rules a test can rely on):

- users alice, bob, carol, erin, with the demo identities' groups (``broker/devenv.py``);
  they sign in with their email and ``password`` on the provider's own pages;
- a public native client (PKCE, any loopback port, device grant), a confidential web
  client and a client-credentials service client whose access tokens are JWTs for
  ``SERVICE_AUDIENCE``;
- ``groups`` in the ID token when the ``groups`` scope is asked for; a refresh token only
  with ``offline_access`` (and no ``prompt`` other than ``consent``); the native client's
  refresh tokens rotate on every use (the old one is then refused);
- ``set_groups`` / ``set_enabled`` change a user at the provider, as an administrator does;
- ``sign`` forges a token with the provider's real private key (the published ``kid``).

The process is the test's: ``stop`` kills it and waits, and leaving the context manager
always stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from broker.settings import OIDCProviderSettings
from tests.support.paths import REPO

__all__ = [
    "DEMO_USERS",
    "PROVIDER_SCRIPT",
    "SERVICE_AUDIENCE",
    "OIDCClient",
    "OIDCProvider",
    "OIDCUser",
    "node_bin",
]

PROVIDER_SCRIPT = REPO / "tests" / "oidc" / "provider.mjs"
_MODULE = REPO / "tests" / "node_modules" / "oidc-provider" / "package.json"
SERVICE_AUDIENCE = "urn:jit-broker:api"
_START_TIMEOUT = 30.0  # two cores shared with other sessions: node can be slow to start
_STOP_TIMEOUT = 10.0
_CONTROL_TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass(frozen=True)
class OIDCUser:
    """A person at the provider; ``id`` is also the ``sub`` and ``preferred_username``."""

    id: str
    email: str
    name: str
    password: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class OIDCClient:
    """A registered client; ``secret`` is None for the public native client."""

    id: str
    secret: str | None
    redirect_uris: tuple[str, ...]


def _user(user_id: str, *groups: str) -> OIDCUser:
    return OIDCUser(
        user_id, f"{user_id}@example.com", user_id.title(), f"{user_id}-password", groups
    )


# The demo identities (broker/devenv.py), so policies/ makes sense of their groups.
DEMO_USERS: tuple[OIDCUser, ...] = (
    _user("alice", "engineering"),
    _user("bob", "engineering", "sre-leads"),
    _user("carol", "auditors"),
    _user("erin", "security-admins"),
)


def node_bin() -> str:
    """The ``node`` running the provider; skips (fails under ``CI``) without it or the module."""
    import pytest  # here, not at import: the module is also usable outside pytest

    node = shutil.which("node")
    if node and _MODULE.is_file():
        return node
    reason = (
        "no `node` on PATH: the OIDC provider tests need Node.js (and `make test`)"
        if not node
        else f"no {_MODULE.parent}: run `make test` (it runs `npm ci --prefix tests`)"
    )
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class OIDCProvider:
    """One provider process; ``issuer`` is set once ``start`` returned.

    ``web_redirect_uris`` are the confidential client's exact redirect URIs; ``ttl``
    overrides token lifetimes in seconds by oidc-provider's names (``AccessToken``,
    ``IdToken``, ``RefreshToken``, ``DeviceCode``, ``Session``, ``Grant``...);
    ``id_token_alg`` is how every client's ID tokens are signed (RS256 or ES256).
    """

    state_dir: Path
    web_redirect_uris: Sequence[str] = ("http://127.0.0.1/oidc/callback",)
    ttl: Mapping[str, int] = field(default_factory=dict)
    id_token_alg: str = "RS256"
    users: tuple[OIDCUser, ...] = DEMO_USERS
    issuer: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.native_client = OIDCClient(
            "jit-broker-cli",
            None,
            # Native clients match loopback redirects on any port (RFC 8252 7.3); `bao`
            # listens on http://localhost:<port>/oidc/callback; a console on a loopback
            # address without public_url uses its own /console/callback.
            (
                "http://127.0.0.1/callback",
                "http://localhost/oidc/callback",
                "http://127.0.0.1/console/callback",
            ),
        )
        self.web_client = OIDCClient("jit-broker", uuid.uuid4().hex, tuple(self.web_redirect_uris))
        self.service_client = OIDCClient("orders-api", uuid.uuid4().hex, ())
        # Private keys, so a test can sign what the provider would (or a forgery with its kid).
        self.signing_keys: dict[str, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey] = {
            "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ES256": ec.generate_private_key(ec.SECP256R1()),
        }
        self.kids = {alg: f"test-{alg.lower()}-{uuid.uuid4().hex[:8]}" for alg in self.signing_keys}
        self._proc: asyncio.subprocess.Process | None = None
        self.log = self.state_dir / "oidc-provider.log"

    @property
    def signing_key(self) -> rsa.RSAPrivateKey:
        """The RS256 private key the provider signs ID tokens with by default."""
        key = self.signing_keys["RS256"]
        assert isinstance(key, rsa.RSAPrivateKey)
        return key

    def user(self, user_id: str) -> OIDCUser:
        return next(u for u in self.users if u.id == user_id)

    def sign(self, claims: Mapping[str, Any], algorithm: str = "RS256") -> str:
        """``claims`` as a compact JWT signed with the provider's key for ``algorithm``."""
        return jwt.encode(
            dict(claims),
            self.signing_keys[algorithm],
            algorithm=algorithm,
            headers={"kid": self.kids[algorithm]},
        )

    def _jwks(self) -> dict[str, Any]:
        keys = []
        for alg, key in self.signing_keys.items():
            if isinstance(key, rsa.RSAPrivateKey):
                jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
            else:
                jwk = ECAlgorithm.to_jwk(key, as_dict=True)
            # PyJWT writes key_ops ["sign"]; the provider then cannot verify its own ID
            # tokens (id_token_hint at logout fails with "no applicable key").
            jwk.pop("key_ops", None)
            keys.append({**jwk, "kid": self.kids[alg], "alg": alg, "use": "sig"})
        return {"keys": keys}

    def _config(self) -> dict[str, Any]:
        signed = {"id_token_signed_response_alg": self.id_token_alg}
        return {
            "jwks": self._jwks(),
            "users": {
                u.id: {
                    "email": u.email,
                    "name": u.name,
                    "password": u.password,
                    "groups": list(u.groups),
                }
                for u in self.users
            },
            "clients": [
                {
                    "client_id": self.native_client.id,
                    "client_name": "jit-broker CLI",
                    "application_type": "native",
                    "token_endpoint_auth_method": "none",
                    "grant_types": [
                        "authorization_code",
                        "refresh_token",
                        "urn:ietf:params:oauth:grant-type:device_code",
                    ],
                    "response_types": ["code"],
                    "redirect_uris": list(self.native_client.redirect_uris),
                    "post_logout_redirect_uris": ["http://127.0.0.1/logged-out"],
                    **signed,
                },
                {
                    "client_id": self.web_client.id,
                    "client_secret": self.web_client.secret,
                    "client_name": "jit-broker console",
                    "token_endpoint_auth_method": "client_secret_basic",
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "redirect_uris": list(self.web_client.redirect_uris),
                    "post_logout_redirect_uris": list(self.web_client.redirect_uris),
                    **signed,
                },
                {
                    "client_id": self.service_client.id,
                    "client_secret": self.service_client.secret,
                    "client_name": "orders-api",
                    "token_endpoint_auth_method": "client_secret_basic",
                    "grant_types": ["client_credentials"],
                    "response_types": [],
                    "redirect_uris": [],
                },
            ],
            "ttl": dict(self.ttl),
            "service_client_id": self.service_client.id,
            "service_audience": SERVICE_AUDIENCE,
        }

    async def start(self) -> OIDCProvider:
        """Start the process and return once it printed its issuer.

        Killed (and AssertionError raised) if it exits or stays silent for ``_START_TIMEOUT``.
        """
        node = node_bin()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "oidc-provider.json"
        # Private keys and passwords: readable by the owner only.
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(json.dumps(self._config()))
        with self.log.open("ab") as stderr:
            self._proc = await asyncio.create_subprocess_exec(
                node,
                str(PROVIDER_SCRIPT),
                str(config),
                stdin=asyncio.subprocess.PIPE,  # closed when this process dies: node exits
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        try:
            assert self._proc.stdout is not None
            async with asyncio.timeout(_START_TIMEOUT):
                line = await self._proc.stdout.readline()
            if not line:
                raise AssertionError(f"oidc-provider exited before listening:\n{self.tail()}")
            self.issuer = str(json.loads(line)["issuer"])
        except BaseException:
            await self.stop()
            raise
        return self

    def tail(self, chars: int = 3000) -> str:
        """The end of its stderr, for assertion messages."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    async def stop(self) -> None:
        """SIGTERM, SIGKILL after ``_STOP_TIMEOUT``; returns once the process is gone."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self._proc = None

    async def __aenter__(self) -> OIDCProvider:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def broker_settings(self, **overrides: Any) -> OIDCProviderSettings:
        """This provider as a broker's ``[[oidc_providers]]`` entry "corp" (both clients,
        groups asked for, the email as subject); ``overrides`` change any key."""
        fields: dict[str, Any] = {
            "name": "corp",
            "display_name": "Corp SSO",
            "issuer": self.issuer,
            "client_id": self.web_client.id,
            "client_secret": self.web_client.secret,
            "native_client_id": self.native_client.id,
            "scopes": ("openid", "profile", "email", "groups", "offline_access"),
            "subject_claim": "email",
            **overrides,
        }
        return OIDCProviderSettings(**fields)

    async def set_groups(self, user_id: str, groups: Sequence[str]) -> None:
        """Replace ``user_id``'s groups at the provider (next login or refresh sees them)."""
        await self._control(user_id, "groups", list(groups))

    async def set_enabled(self, user_id: str, enabled: bool) -> None:
        """Disable (or re-enable) ``user_id``: a disabled user can neither sign in nor refresh."""
        await self._control(user_id, "enabled", enabled)

    async def _control(self, user_id: str, what: str, value: object) -> None:
        url = f"{self.issuer}/__test/users/{user_id}/{what}"
        async with (
            aiohttp.ClientSession(timeout=_CONTROL_TIMEOUT) as http,
            http.post(url, json=value) as resp,
        ):
            if resp.status != 200:
                raise AssertionError(f"{url}: {resp.status} {await resp.text()}")
