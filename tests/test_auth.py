"""Bearer JWT verification against real keys and a real JWKS server on 127.0.0.1.

Every rejection is provoked with a real, crafted token and checked by its ``AuthError.code``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from broker.auth import DEV_AUDIENCE, DEV_ISSUER, DevIssuer, IssuerConfig, Principal, Verifier
from broker.auth.jwks import jwk_thumbprint, parse_jwks, public_key_to_jwk
from broker.errors import AuthError
from tests.support.tokens import claims_with

IDP = "https://idp.example.test"
AUD = "jit-broker"


# --- helpers -----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _seg(obj: Any) -> str:
    return _b64(json.dumps(obj).encode())


def _pem(public_key: Any) -> str:
    data: bytes = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data.decode()


def _kid(public_key: Any) -> str:
    return jwk_thumbprint(public_key_to_jwk(public_key))


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": IDP,
        "sub": "alice@example.test",
        "aud": AUD,
        "iat": now,
        "exp": now + 600,
        "groups": ["eng"],
    }
    return claims_with(claims, **overrides)


def _sign(private_key: Any, alg: str, kid: str | None, claims: dict[str, Any]) -> str:
    # Signs the claims as given (PyJWS, not PyJWT.encode, which refuses odd claim types).
    headers = {"kid": kid} if kid is not None else {}
    payload = json.dumps(claims).encode()
    return jwt.api_jws.encode(payload, private_key, algorithm=alg, headers=headers)


def _weak_rsa_public_key() -> rsa.RSAPublicKey:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - must be refused
    return weak.public_key()


def _bearer(token: str) -> str:
    return f"Bearer {token}"


async def _code(verifier: Verifier, header: str | None) -> str:
    with pytest.raises(AuthError) as info:
        await verifier.verify(header)
    assert info.value.status == 401
    return info.value.code


# --- keys and servers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevIssuer:
    return DevIssuer.load_or_create(tmp_path_factory.mktemp("dev") / "keys" / "dev-issuer.pem")


class JwksServer:
    """A real aiohttp server serving a mutable JWK Set and counting fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.delay = 0.0
        self.body: bytes | None = None  # overrides the JSON document when set
        self._runner: web.AppRunner | None = None
        self.url = ""

    def publish(self, public_key: Any, alg: str, kid: str) -> None:
        self.keys.append({**public_key_to_jwk(public_key), "kid": kid, "alg": alg, "use": "sig"})

    async def _handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/json")
        return web.json_response({"keys": self.keys})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/jwks"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def jwks_server(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> AsyncIterator[JwksServer]:
    server = JwksServer()
    server.publish(rsa_key.public_key(), "RS256", "rsa-1")
    server.publish(ec_key.public_key(), "ES256", "ec-1")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def make_verifier() -> AsyncIterator[Callable[..., Verifier]]:
    made: list[Verifier] = []

    def make(*issuers: IssuerConfig, **kwargs: Any) -> Verifier:
        verifier = Verifier(issuers, **kwargs)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.close()


def _idp(url: str, algorithms: tuple[str, ...] = ("RS256", "ES256")) -> IssuerConfig:
    return IssuerConfig(issuer=IDP, audience=AUD, algorithms=algorithms, jwks_url=url)


def _static(public_key: Any, alg: str, issuer: str = IDP) -> IssuerConfig:
    return IssuerConfig(
        issuer=issuer, audience=AUD, algorithms=(alg,), public_keys=(_pem(public_key),)
    )


# --- dev issuer --------------------------------------------------------------------------


async def test_dev_issuer_round_trip(
    dev: DevIssuer, make_verifier: Callable[..., Verifier]
) -> None:
    verifier = make_verifier(dev.issuer_config())
    token = dev.mint("alice@example.test", ["eng", "oncall"])
    principal = await verifier.verify(_bearer(token))
    assert principal.subject == "alice@example.test"
    assert principal.kind == "human"
    assert principal.issuer == DEV_ISSUER
    assert principal.groups == frozenset({"eng", "oncall"})
    assert principal.token_id
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"
    assert header["kid"] == dev.kid == dev.jwks()["keys"][0]["kid"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert {"iat", "nbf", "exp", "jti"} <= claims.keys()
    assert claims["aud"] == DEV_AUDIENCE
    # The scheme is case-insensitive (RFC 7235).
    assert (await verifier.verify(f"bearer {token}")).subject == "alice@example.test"


def test_dev_issuer_key_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dev.pem"
    first = DevIssuer.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert DevIssuer.load_or_create(path).kid == first.kid
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError):
        DevIssuer.load_or_create(path)


def test_dev_issuer_refuses_bad_mint_arguments(dev: DevIssuer) -> None:
    with pytest.raises(ValueError):
        dev.mint("")
    with pytest.raises(ValueError):
        dev.mint("alice", ttl_seconds=0)
    with pytest.raises(ValueError):
        dev.mint("alice", extra_claims={"sub": "root"})


async def test_service_account_subject_is_service(
    dev: DevIssuer, make_verifier: Callable[..., Verifier]
) -> None:
    verifier = make_verifier(dev.issuer_config())
    principal = await verifier.verify(_bearer(dev.mint("system:serviceaccount:payments:api")))
    assert principal.kind == "service"
    assert principal.service_account == "payments:api"
    assert principal.groups == frozenset()


# --- header, shape and size --------------------------------------------------------------


@pytest.mark.parametrize(
    "header", [None, "", "Basic YWxpY2U6cHc=", "Bearer", "Bearer   ", "Token x.y.z"]
)
async def test_missing_token(
    header: str | None, dev: DevIssuer, make_verifier: Callable[..., Verifier]
) -> None:
    assert await _code(make_verifier(dev.issuer_config()), header) == "missing_token"


async def test_token_too_large(dev: DevIssuer, make_verifier: Callable[..., Verifier]) -> None:
    verifier = make_verifier(dev.issuer_config())
    token = dev.mint("alice", extra_claims={"padding": "x" * 9000})
    assert len(token) > 8192
    assert await _code(verifier, _bearer(token)) == "token_too_large"
    small = make_verifier(dev.issuer_config(), max_token_bytes=100)
    assert await _code(small, _bearer(dev.mint("alice"))) == "token_too_large"


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b",
        "a.b.c.d",
        "!!!!.eyJ9.sig",
        _b64(b"not json") + "." + _seg({}) + ".c2ln",
        _seg(["alg", "EdDSA"]) + "." + _seg({}) + ".c2ln",
        _b64(b"[" * 3000 + b"]" * 3000) + "." + _seg({}) + ".c2ln",
        _seg({"alg": 5}) + "." + _seg({}) + ".c2ln",
        _seg({"alg": "EdDSA"}) + ".bm90IGpzb24." + "c2ln",
        _seg({"alg": "EdDSA", "crit": ["exp"], "exp": 1})
        + "."
        + _seg({"iss": DEV_ISSUER})
        + ".c2ln",
    ],
)
async def test_malformed_token(
    token: str, dev: DevIssuer, make_verifier: Callable[..., Verifier]
) -> None:
    assert await _code(make_verifier(dev.issuer_config()), _bearer(token)) == "malformed_token"


async def test_mangled_tokens_only_raise_auth_error(
    dev: DevIssuer, make_verifier: Callable[..., Verifier]
) -> None:
    verifier = make_verifier(dev.issuer_config())
    token = dev.mint("alice")
    alphabet = "ABCxyz019-_.=!"
    for position in range(0, len(token), 3):
        for char in alphabet:
            mangled = token[:position] + char + token[position + 1 :]
            if mangled == token:
                continue
            with pytest.raises(AuthError):
                await verifier.verify(_bearer(mangled))


# --- algorithm confusion -----------------------------------------------------------------


async def test_alg_none_is_refused(dev: DevIssuer, make_verifier: Callable[..., Verifier]) -> None:
    verifier = make_verifier(dev.issuer_config())
    claims = _claims(iss=DEV_ISSUER)
    for alg in ("none", "None", "NONE"):
        token = _seg({"alg": alg, "kid": dev.kid}) + "." + _seg(claims) + "."
        assert await _code(verifier, _bearer(token)) == "algorithm_not_allowed"


def _hs256_with(secret: bytes, kid: str, claims: dict[str, Any]) -> str:
    signing_input = _seg({"alg": "HS256", "typ": "JWT", "kid": kid}) + "." + _seg(claims)
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(mac)


async def test_hs256_signed_with_public_key_is_refused(
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    ed_key: ed25519.Ed25519PrivateKey,
    make_verifier: Callable[..., Verifier],
) -> None:
    for private_key, alg in ((rsa_key, "RS256"), (ec_key, "ES256"), (ed_key, "EdDSA")):
        public = private_key.public_key()
        verifier = make_verifier(_static(public, alg))
        # The classic confusion attack: the public PEM (and raw JWK bytes) as HMAC secret.
        for secret in (_pem(public).encode(), json.dumps(public_key_to_jwk(public)).encode()):
            token = _hs256_with(secret, _kid(public), _claims())
            assert await _code(verifier, _bearer(token)) == "algorithm_not_allowed"


async def test_algorithm_outside_issuer_allow_list(
    dev: DevIssuer, rsa_key: rsa.RSAPrivateKey, make_verifier: Callable[..., Verifier]
) -> None:
    # RS256 is allowed for the IdP, but not for the dev issuer the token names.
    verifier = make_verifier(dev.issuer_config(), _static(rsa_key.public_key(), "RS256"))
    token = _sign(rsa_key, "RS256", _kid(rsa_key.public_key()), _claims(iss=DEV_ISSUER))
    assert await _code(verifier, _bearer(token)) == "algorithm_not_allowed"


async def test_algorithm_must_match_key_type(
    rsa_key: rsa.RSAPrivateKey, make_verifier: Callable[..., Verifier]
) -> None:
    # PS256 is on the allow-list, but the JWK pins its key to RS256.
    server = JwksServer()
    server.publish(rsa_key.public_key(), "RS256", "rsa-1")
    await server.start()
    try:
        verifier = make_verifier(_idp(server.url, ("RS256", "PS256")))
        token = _sign(rsa_key, "PS256", "rsa-1", _claims())
        assert await _code(verifier, _bearer(token)) == "algorithm_not_allowed"
    finally:
        await server.stop()


# --- issuer and key selection ------------------------------------------------------------


async def test_untrusted_issuer(dev: DevIssuer, make_verifier: Callable[..., Verifier]) -> None:
    verifier = make_verifier(dev.issuer_config())
    other = DevIssuer(ed25519.Ed25519PrivateKey.generate(), issuer="https://evil.example.test")
    assert await _code(verifier, _bearer(other.mint("alice"))) == "untrusted_issuer"
    private = dev._private_key  # signed by the right key, but iss missing
    token = _sign(private, "EdDSA", dev.kid, _claims(iss=None, aud=DEV_AUDIENCE))
    assert await _code(verifier, _bearer(token)) == "untrusted_issuer"
    token = _sign(private, "EdDSA", dev.kid, _claims(iss=["x"], aud=DEV_AUDIENCE))
    assert await _code(verifier, _bearer(token)) == "untrusted_issuer"


async def test_unknown_kid_static(
    ed_key: ed25519.Ed25519PrivateKey, make_verifier: Callable[..., Verifier]
) -> None:
    verifier = make_verifier(_static(ed_key.public_key(), "EdDSA"))
    token = _sign(ed_key, "EdDSA", "some-other-kid", _claims())
    assert await _code(verifier, _bearer(token)) == "unknown_key"


async def test_token_without_kid_needs_a_single_key(
    ed_key: ed25519.Ed25519PrivateKey, make_verifier: Callable[..., Verifier]
) -> None:
    one = make_verifier(_static(ed_key.public_key(), "EdDSA"))
    token = _sign(ed_key, "EdDSA", None, _claims())
    assert (await one.verify(_bearer(token))).subject == "alice@example.test"
    second = ed25519.Ed25519PrivateKey.generate().public_key()
    two = make_verifier(
        IssuerConfig(
            issuer=IDP,
            audience=AUD,
            algorithms=("EdDSA",),
            public_keys=(_pem(ed_key.public_key()), _pem(second)),
        )
    )
    assert await _code(two, _bearer(token)) == "unknown_key"


async def test_untrusted_key_with_valid_looking_kid(
    dev: DevIssuer, make_verifier: Callable[..., Verifier]
) -> None:
    verifier = make_verifier(dev.issuer_config())
    attacker = ed25519.Ed25519PrivateKey.generate()
    token = _sign(attacker, "EdDSA", dev.kid, _claims(iss=DEV_ISSUER, aud=DEV_AUDIENCE))
    assert await _code(verifier, _bearer(token)) == "invalid_signature"


async def test_tampered_payload(dev: DevIssuer, make_verifier: Callable[..., Verifier]) -> None:
    verifier = make_verifier(dev.issuer_config())
    header, payload, signature = dev.mint("alice", ["eng"]).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["eng", "admins"]
    tampered = f"{header}.{_seg(claims)}.{signature}"
    assert await _code(verifier, _bearer(tampered)) == "invalid_signature"
    claims["sub"] = "mallory"
    tampered = f"{header}.{_seg(claims)}.{signature}"
    assert await _code(verifier, _bearer(tampered)) == "invalid_signature"


# --- time and audience -------------------------------------------------------------------


async def test_expiry_and_not_before(
    ed_key: ed25519.Ed25519PrivateKey, make_verifier: Callable[..., Verifier]
) -> None:
    verifier = make_verifier(_static(ed_key.public_key(), "EdDSA"))
    kid = _kid(ed_key.public_key())
    now = int(time.time())

    async def code_for(**claims: Any) -> str:
        return await _code(verifier, _bearer(_sign(ed_key, "EdDSA", kid, _claims(**claims))))

    assert await code_for(iat=now - 7200, exp=now - 3600) == "token_expired"
    assert await code_for(nbf=now + 3600) == "token_not_yet_valid"
    assert await code_for(iat=now + 3600, exp=now + 7200) == "token_not_yet_valid"
    # Within the 30 s leeway both are tolerated: clocks drift.
    token = _sign(ed_key, "EdDSA", kid, _claims(exp=now - 10, nbf=now + 10))
    assert (await verifier.verify(_bearer(token))).subject == "alice@example.test"


async def test_wrong_audience(dev: DevIssuer, make_verifier: Callable[..., Verifier]) -> None:
    verifier = make_verifier(dev.issuer_config())
    assert await _code(verifier, _bearer(dev.mint("alice", audience="other-service"))) == (
        "wrong_audience"
    )
    # A list audience containing ours is fine (RFC 7519 4.1.3).
    token = _sign(dev._private_key, "EdDSA", dev.kid, _claims(iss=DEV_ISSUER, aud=["x", AUD]))
    assert (await verifier.verify(_bearer(token))).issuer == DEV_ISSUER


@pytest.mark.parametrize(
    "overrides",
    [
        {"sub": None},
        {"sub": ""},
        {"sub": "s" * 257},
        {"sub": 42},
        {"exp": None},
        {"aud": None},
        {"groups": "admins"},
        {"groups": ["eng", 7]},
        {"groups": {"admins": True}},
    ],
)
async def test_missing_or_invalid_claim(
    overrides: dict[str, Any], dev: DevIssuer, make_verifier: Callable[..., Verifier]
) -> None:
    verifier = make_verifier(dev.issuer_config())
    claims = _claims(**{"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, **overrides})
    token = _sign(dev._private_key, "EdDSA", dev.kid, claims)
    assert await _code(verifier, _bearer(token)) == "missing_claim"


async def test_custom_groups_claim(
    ed_key: ed25519.Ed25519PrivateKey, make_verifier: Callable[..., Verifier]
) -> None:
    config = IssuerConfig(
        issuer=IDP,
        audience=AUD,
        algorithms=("EdDSA",),
        public_keys=(_pem(ed_key.public_key()),),
        groups_claim="roles",
    )
    verifier = make_verifier(config)
    token = _sign(ed_key, "EdDSA", None, _claims(roles=["db-admins"], sub="sa:x"))
    principal = await verifier.verify(_bearer(token))
    assert principal.groups == frozenset({"db-admins"})
    assert principal.kind == "human"


# --- JWKS --------------------------------------------------------------------------------


async def test_jwks_rsa_and_ec_keys(
    jwks_server: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    make_verifier: Callable[..., Verifier],
) -> None:
    verifier = make_verifier(_idp(jwks_server.url))
    rs = _sign(rsa_key, "RS256", "rsa-1", _claims(sub="system:serviceaccount:ci:deployer"))
    es = _sign(ec_key, "ES256", "ec-1", _claims(groups=["sre", "eng"]))
    principal = await verifier.verify(_bearer(rs))
    assert (principal.kind, principal.issuer) == ("service", IDP)
    assert (await verifier.verify(_bearer(es))).groups == frozenset({"sre", "eng"})
    for _ in range(50):
        await verifier.verify(_bearer(rs))
    assert jwks_server.fetches == 1  # keys are cached, not fetched per request
    # The RSA key's kid used with the EC key's signature: wrong key type for ES256.
    crossed = _sign(ec_key, "ES256", "rsa-1", _claims())
    assert await _code(verifier, _bearer(crossed)) == "algorithm_not_allowed"


async def test_jwks_rotation_and_kid_flood(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey, make_verifier: Callable[..., Verifier]
) -> None:
    verifier = make_verifier(_idp(jwks_server.url), jwks_min_refresh_seconds=1)
    await verifier.verify(_bearer(_sign(rsa_key, "RS256", "rsa-1", _claims())))
    assert jwks_server.fetches == 1

    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks_server.publish(rotated.public_key(), "RS256", "rsa-2")
    await asyncio.sleep(1.1)  # let the refresh window pass
    await verifier.verify(_bearer(_sign(rotated, "RS256", "rsa-2", _claims())))
    assert jwks_server.fetches == 2  # one refresh picked the new kid up

    await asyncio.sleep(1.1)
    jwks_server.delay = 0.05  # make the flood overlap the one fetch it may cause
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    flood = [_bearer(_sign(attacker, "RS256", secrets.token_hex(8), _claims())) for _ in range(200)]
    results = await asyncio.gather(*(verifier.verify(t) for t in flood), return_exceptions=True)
    assert all(isinstance(r, AuthError) and r.code == "unknown_key" for r in results)
    assert jwks_server.fetches <= 3
    # ...and a second wave within the window costs nothing at all.
    before = jwks_server.fetches
    for token in flood[:50]:
        assert await _code(verifier, token) == "unknown_key"
    assert jwks_server.fetches == before


async def test_concurrent_misses_share_one_fetch(
    jwks_server: JwksServer,
    ec_key: ec.EllipticCurvePrivateKey,
    make_verifier: Callable[..., Verifier],
) -> None:
    jwks_server.delay = 0.1
    verifier = make_verifier(_idp(jwks_server.url))
    token = _bearer(_sign(ec_key, "ES256", "ec-1", _claims()))
    principals = await asyncio.gather(*(verifier.verify(token) for _ in range(50)))
    assert {p.subject for p in principals} == {"alice@example.test"}
    assert jwks_server.fetches == 1


@pytest.mark.parametrize("kid", ["../../etc/passwd", "k" * 10_000, "http://evil.test/jwks", "a b"])
async def test_injected_kid_is_refused_without_fetch(
    kid: str,
    jwks_server: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    make_verifier: Callable[..., Verifier],
) -> None:
    verifier = make_verifier(_idp(jwks_server.url))
    token = _sign(rsa_key, "RS256", kid, _claims())
    assert await _code(verifier, _bearer(token)) in {"unknown_key", "token_too_large"}
    assert jwks_server.fetches == 0
    big = make_verifier(_idp(jwks_server.url), max_token_bytes=64_000)
    assert await _code(big, _bearer(token)) == "unknown_key"
    assert jwks_server.fetches == 0


async def test_jwks_down_keeps_cached_keys(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey, make_verifier: Callable[..., Verifier]
) -> None:
    verifier = make_verifier(
        _idp(jwks_server.url), jwks_cache_seconds=0, jwks_min_refresh_seconds=0
    )
    token = _bearer(_sign(rsa_key, "RS256", "rsa-1", _claims()))
    await verifier.verify(token)
    await jwks_server.stop()
    # The cache is always stale here, so each call tries a refresh that fails; keys stay.
    for _ in range(3):
        assert (await verifier.verify(token)).subject == "alice@example.test"
        await asyncio.sleep(0.01)
    unknown = _bearer(_sign(rsa_key, "RS256", "rsa-9", _claims()))
    assert await _code(verifier, unknown) == "jwks_unavailable"


async def test_jwks_unreachable_from_start(
    rsa_key: rsa.RSAPrivateKey, make_verifier: Callable[..., Verifier]
) -> None:
    server = JwksServer()
    await server.start()
    url = server.url
    await server.stop()
    verifier = make_verifier(_idp(url), jwks_timeout_seconds=1.0)
    token = _bearer(_sign(rsa_key, "RS256", "rsa-1", _claims()))
    assert await _code(verifier, token) == "jwks_unavailable"


@pytest.mark.parametrize(
    "body",
    [
        b"x" * 300_000,
        b"<html>login</html>",
        b'{"no_keys": []}',
        b'{"keys": []}',
        b'{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "rsa-1"}]}',
    ],
)
async def test_bad_jwks_documents(
    body: bytes,
    jwks_server: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    make_verifier: Callable[..., Verifier],
) -> None:
    jwks_server.body = body
    verifier = make_verifier(_idp(jwks_server.url))
    token = _bearer(_sign(rsa_key, "RS256", "rsa-1", _claims()))
    assert await _code(verifier, token) == "jwks_unavailable"


# --- configuration and JWK hygiene -------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algorithms": ("HS256",), "jwks_url": "https://idp/jwks"},
        {"algorithms": ("none",), "jwks_url": "https://idp/jwks"},
        {"algorithms": ("RS256", "hs512"), "jwks_url": "https://idp/jwks"},
        {"algorithms": (), "jwks_url": "https://idp/jwks"},
        {"algorithms": ("RS256",)},
        {"algorithms": ("RS256",), "jwks_url": "https://idp/jwks", "public_keys": ("x",)},
        {"algorithms": ("RS256",), "jwks_url": "http://idp.example.test/jwks"},
    ],
)
def test_issuer_config_refuses(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        IssuerConfig(issuer=IDP, audience=AUD, **kwargs)


def test_verifier_refuses_unusable_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError):
        Verifier([IssuerConfig(IDP, AUD, ("RS256",), public_keys=("not a pem",))])
    with pytest.raises(ValueError):  # an RSA key for an EdDSA-only issuer
        Verifier([_static(rsa_key.public_key(), "EdDSA")])
    small = _weak_rsa_public_key()
    with pytest.raises(ValueError):
        Verifier([_static(small, "RS256")])
    with pytest.raises(ValueError):
        Verifier([_static(rsa_key.public_key(), "RS256")] * 2)


def test_rfc7638_and_rfc8037_thumbprints() -> None:
    rfc7638_key = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFx"
            "uhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6"
            "Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n"
            "91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF4"
            "4-csFCur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(rfc7638_key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    rfc8037_key = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
    }
    assert jwk_thumbprint(rfc8037_key) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_parse_jwks_keeps_only_public_signature_keys(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    rsa_jwk = public_key_to_jwk(rsa_key.public_key())
    ec_jwk = public_key_to_jwk(ec_key.public_key())
    small = public_key_to_jwk(_weak_rsa_public_key())
    off_curve = {**ec_jwk, "y": ec_jwk["x"]}
    document = {
        "keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**rsa_jwk, "kid": "enc", "use": "enc"},
            {**rsa_jwk, "kid": "private", "d": "AQAB"},
            {**small, "kid": "small"},
            {**off_curve, "kid": "off-curve"},
            {**rsa_jwk, "kid": "mislabelled", "alg": "ES256"},
            {**rsa_jwk, "kid": "../path"},
            "not an object",
            {**rsa_jwk, "kid": "good-rsa"},
            {**ec_jwk, "kid": "good-ec"},
            {**ec_jwk, "kid": "good-rsa"},  # duplicate kid: the first one wins
        ]
    }
    keys = parse_jwks(document, source="test")
    assert set(keys) == {"good-rsa", "good-ec"}
    assert keys["good-rsa"].algorithms >= {"RS256", "PS256"}
    assert keys["good-ec"].algorithms == {"ES256"}


async def test_close_is_idempotent(dev: DevIssuer) -> None:
    verifier = Verifier([dev.issuer_config()])
    principal = await verifier.verify(_bearer(dev.mint("alice")))
    assert isinstance(principal, Principal)
    await verifier.close()
    await verifier.close()


async def test_verified_token_cache_still_enforces_expiry(dev: DevIssuer) -> None:
    """A cached verification is reused, but never past the token's own exp."""
    verifier = Verifier([dev.issuer_config()], leeway_seconds=0)
    try:
        token = dev.mint("alice", ["engineering"], ttl_seconds=1)
        first = await verifier.verify(f"Bearer {token}")
        assert await verifier.verify(f"Bearer {token}") is first  # served from the cache
        await asyncio.sleep(1.2)
        with pytest.raises(AuthError) as e:
            await verifier.verify(f"Bearer {token}")
        assert e.value.code == "token_expired"
    finally:
        await verifier.close()


async def test_verified_token_cache_is_bounded(dev: DevIssuer) -> None:
    verifier = Verifier([dev.issuer_config()], verified_cache_size=3)
    try:
        tokens = [dev.mint(f"user{i}") for i in range(5)]
        for t in tokens:
            await verifier.verify(f"Bearer {t}")
        assert len(verifier._verified) == 3
        assert tokens[0] not in verifier._verified and tokens[-1] in verifier._verified
    finally:
        await verifier.close()
