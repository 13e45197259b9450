"""JWT attacks against the real HTTP endpoint (tests/test_auth.py unit-tests the Verifier).

The broker under attack trusts two issuers: the local dev issuer (EdDSA) and an "IdP" whose
JWKS (an RSA and an EC key) is served by a real aiohttp server on 127.0.0.1. An attacker
runs their own JWKS server with their own keys. Every forged or unacceptable token is sent
to ``POST /v1/credentials`` (asking for a real secret) and ``GET /v1/me``; each must get
401 with the documented reason code (403 ``subject_offboarded`` for a leaver's valid token),
mint nothing, echo no token, and be counted in the aggregated ``auth.failed`` ledger rows.
Valid tokens from both issuers are the controls: they must get their credential.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from broker.auth import DEV_AUDIENCE, DEV_ISSUER, DevIssuer
from broker.auth.jwks import public_key_to_jwk
from broker.settings import IssuerSettings, Settings
from broker.stack.devstack import DevStack
from tests.support.brokers import IsolatedBroker, isolated_broker
from tests.support.http import error_of
from tests.support.ledger import count_events
from tests.support.logs import LogCapture
from tests.support.polling import poll
from tests.support.reliability_report import Row, record
from tests.support.tokens import claims_with

IDP = "https://idp.reliability.test"
AUD = DEV_AUDIENCE
_MINTED = "e.event IN ('grant.issued', 'grant.intent')"
# Every 401 this module provoked, by reason: the auth.failed rows must add up to it.
_SENT_401: Counter[str] = Counter()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _seg(obj: Any) -> str:
    return _b64(json.dumps(obj).encode())


def _claims(**overrides: Any) -> dict[str, Any]:
    """An engineer's claims from the IdP; ``name=None`` drops a claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": IDP,
        "sub": f"idp-eng-{uuid.uuid4().hex[:6]}",
        "aud": AUD,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "groups": ["engineering"],
    }
    return claims_with(claims, **overrides)


def _sign(key: Any, alg: str, claims: dict[str, Any], **header: Any) -> str:
    # PyJWS signs the payload as given (PyJWT.encode would refuse some odd claims).
    return jwt.api_jws.encode(json.dumps(claims).encode(), key, algorithm=alg, headers=header)


def _hs256(secret: bytes, claims: dict[str, Any], **header: Any) -> str:
    signing_input = _seg({"alg": "HS256", "typ": "JWT", **header}) + "." + _seg(claims)
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(mac)


def _pem(public_key: Any) -> bytes:
    data: bytes = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


class JwksServer:
    """A real JWK Set on 127.0.0.1 that counts how often it is fetched."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    def publish(self, public_key: Any, alg: str, kid: str) -> None:
        self.keys.append({**public_key_to_jwk(public_key), "kid": kid, "alg": alg, "use": "sig"})

    async def _serve(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": self.keys})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/jwks"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Keys:
    idp_rsa: rsa.RSAPrivateKey
    idp_ec: ec.EllipticCurvePrivateKey
    evil_rsa: rsa.RSAPrivateKey
    idp: JwksServer
    evil: JwksServer
    dev: DevIssuer


@pytest.fixture(scope="module")
async def keys(broker_settings: Settings) -> AsyncIterator[Keys]:
    assert broker_settings.dev_issuer_key_path is not None
    made = Keys(
        idp_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        idp_ec=ec.generate_private_key(ec.SECP256R1()),
        evil_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        idp=JwksServer(),
        evil=JwksServer(),
        dev=DevIssuer.load_or_create(broker_settings.dev_issuer_key_path),
    )
    made.idp.publish(made.idp_rsa.public_key(), "RS256", "idp-rsa-1")
    made.idp.publish(made.idp_ec.public_key(), "ES256", "idp-ec-1")
    made.evil.publish(made.evil_rsa.public_key(), "RS256", "idp-rsa-2")
    await made.idp.start()
    await made.evil.start()
    try:
        yield made
    finally:
        await made.idp.stop()
        await made.evil.stop()


@pytest.fixture(scope="module")
async def target(
    stack: DevStack, broker_settings: Settings, keys: Keys
) -> AsyncIterator[IsolatedBroker]:
    idp = IssuerSettings(
        issuer=IDP, audience=AUD, algorithms=("RS256", "ES256"), jwks_url=keys.idp.url
    )
    async with isolated_broker(
        stack,
        broker_settings,
        prefix="jwt",
        issuers=(idp,),
        auth_failure_flush_seconds=0.5,
        blocklist_refresh_seconds=0.5,
    ) as running:
        yield running


@dataclass(frozen=True)
class Attack:
    name: str
    token: Callable[[Keys], str]  # made at send time, so exp/nbf are fresh
    code: str
    status: int = 401
    raw_header: bool = False  # token() is the whole Authorization header value


def _evil_rsa_kid_of_idp(k: Keys) -> str:
    # The attacker signs with their own key, names it like the IdP's, and points jku at
    # their own JWKS: the broker must only ever use the IdP's configured JWKS.
    return _sign(k.evil_rsa, "RS256", _claims(), kid="idp-rsa-2", jku=k.evil.url)


def _tampered(k: Keys) -> str:
    header, payload, signature = _sign(k.idp_rsa, "RS256", _claims(), kid="idp-rsa-1").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["engineering", "sre-leads", "security-admins", "auditors"]
    return f"{header}.{_seg(claims)}.{signature}"


def _oversized(k: Keys, size: int) -> str:
    """A validly signed IdP token of about ``size`` bytes (padded with a junk claim)."""
    padding = size * 3 // 4
    for _ in range(4):
        token = _sign(k.idp_rsa, "RS256", _claims(padding="A" * padding), kid="idp-rsa-1")
        padding += (size - len(token)) * 3 // 4
    assert abs(len(token) - size) < 16, len(token)
    return token


ATTACKS = [
    Attack(
        "alg none",
        lambda k: _seg({"alg": "none", "typ": "JWT"}) + "." + _seg(_claims()) + ".",
        "algorithm_not_allowed",
    ),
    Attack(
        "alg none, dev issuer and kid",
        lambda k: (
            _seg({"alg": "none", "kid": k.dev.kid})
            + "."
            + _seg(_claims(iss=DEV_ISSUER, sub="alice"))
            + "."
        ),
        "algorithm_not_allowed",
    ),
    Attack(
        "HS256 keyed with the IdP RSA public key PEM",
        lambda k: _hs256(_pem(k.idp_rsa.public_key()), _claims(), kid="idp-rsa-1"),
        "algorithm_not_allowed",
    ),
    Attack(
        "HS256 keyed with the IdP EC public key PEM",
        lambda k: _hs256(_pem(k.idp_ec.public_key()), _claims(), kid="idp-ec-1"),
        "algorithm_not_allowed",
    ),
    Attack(
        "HS256 keyed with the dev issuer public key PEM",
        lambda k: _hs256(
            k.dev.public_key_pem().encode(), _claims(iss=DEV_ISSUER, sub="alice"), kid=k.dev.kid
        ),
        "algorithm_not_allowed",
    ),
    Attack(
        "unknown kid",
        lambda k: _sign(k.idp_rsa, "RS256", _claims(), kid="idp-rsa-404"),
        "unknown_key",
    ),
    Attack(
        "injected kid: path traversal",
        lambda k: _sign(k.idp_rsa, "RS256", _claims(), kid="../../../../etc/passwd"),
        "unknown_key",
    ),
    Attack(
        "injected kid: SQL",
        lambda k: _sign(k.idp_rsa, "RS256", _claims(), kid="x' OR '1'='1' --"),
        "unknown_key",
    ),
    Attack(
        "injected kid: URL",
        lambda k: _sign(k.idp_rsa, "RS256", _claims(), kid="http://127.0.0.1:1/jwks"),
        "unknown_key",
    ),
    Attack(
        "injected kid: NUL and newline",
        lambda k: _sign(k.idp_rsa, "RS256", _claims(), kid="idp-rsa-1\x00\nadmin"),
        "unknown_key",
    ),
    Attack(
        "expired",
        lambda k: _sign(
            k.idp_rsa,
            "RS256",
            _claims(
                iat=int(time.time()) - 7200,
                nbf=int(time.time()) - 7200,
                exp=int(time.time()) - 3600,
            ),
            kid="idp-rsa-1",
        ),
        "token_expired",
    ),
    Attack(
        "not yet valid",
        lambda k: _sign(
            k.idp_rsa,
            "RS256",
            _claims(nbf=int(time.time()) + 3600, exp=int(time.time()) + 7200),
            kid="idp-rsa-1",
        ),
        "token_not_yet_valid",
    ),
    Attack(
        "wrong iss (the attacker's own issuer)",
        lambda k: _sign(k.evil_rsa, "RS256", _claims(iss="https://evil.test"), kid="idp-rsa-2"),
        "untrusted_issuer",
    ),
    Attack(
        "iss of the dev issuer, signed by the IdP key",
        lambda k: _sign(k.idp_rsa, "RS256", _claims(iss=DEV_ISSUER, sub="alice"), kid="idp-rsa-1"),
        "algorithm_not_allowed",  # the dev issuer allows EdDSA only
    ),
    Attack(
        "wrong aud",
        lambda k: _sign(k.idp_rsa, "RS256", _claims(aud="some-other-service"), kid="idp-rsa-1"),
        "wrong_audience",
    ),
    Attack(
        "missing sub",
        lambda k: _sign(k.idp_rsa, "RS256", _claims(sub=None), kid="idp-rsa-1"),
        "missing_claim",
    ),
    Attack(
        "empty sub",
        lambda k: _sign(k.idp_rsa, "RS256", _claims(sub=""), kid="idp-rsa-1"),
        "missing_claim",
    ),
    Attack(
        "tampered payload (groups widened)",
        _tampered,
        "invalid_signature",
    ),
    Attack(
        "oversized token (just over max_token_bytes)",
        lambda k: _oversized(k, Settings().max_token_bytes + 400),
        "token_too_large",
    ),
    Attack(
        "untrusted JWKS: attacker key under an IdP-like kid, jku to attacker",
        _evil_rsa_kid_of_idp,
        "unknown_key",
    ),
    Attack(
        "not a bearer scheme",
        lambda k: "Basic " + _b64(b"alice:hunter2"),
        "missing_token",
        raw_header=True,
    ),
    Attack(
        "not a JWS",
        lambda k: "Bearer " + "x" * 40,
        "malformed_token",
        raw_header=True,
    ),
]


async def _send(
    http: aiohttp.ClientSession, url: str, header: str, request_id: str
) -> list[tuple[int, dict[str, str], str]]:
    """POST /v1/credentials and GET /v1/me with ``header``: (status, error, raw body) each."""
    headers = {"Authorization": header, "X-Request-Id": request_id}
    out = []
    async with http.post(
        f"{url}/v1/credentials",
        json={"secret": "stripe/test", "reason": "jwt attack"},
        headers=headers,
    ) as r:
        raw = await r.text()
        out.append((r.status, await error_of(r), raw))
    async with http.get(f"{url}/v1/me", headers=headers) as r:
        raw = await r.text()
        out.append((r.status, await error_of(r), raw))
    _SENT_401.update(error["code"] for status, error, _ in out if status == 401)
    return out


async def _grant(http: aiohttp.ClientSession, url: str, token: str) -> int:
    async with http.post(
        f"{url}/v1/credentials",
        json={"secret": "stripe/test", "reason": "jwt control"},
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        return r.status


async def test_valid_tokens_of_both_issuers_are_the_control(
    target: IsolatedBroker, keys: Keys, http: aiohttp.ClientSession
) -> None:
    """Without this, every attack below could 'pass' because the setup refuses everyone."""
    rsa_token = _sign(keys.idp_rsa, "RS256", _claims(), kid="idp-rsa-1")
    ec_token = _sign(keys.idp_ec, "ES256", _claims(), kid="idp-ec-1")
    assert await _grant(http, target.url, rsa_token) == 201
    assert await _grant(http, target.url, ec_token) == 201
    assert await _grant(http, target.url, keys.dev.mint("alice", ["engineering"])) == 201
    assert keys.idp.fetches >= 1


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
async def test_forged_token_is_refused_with_its_reason(
    attack: Attack, target: IsolatedBroker, keys: Keys, http: aiohttp.ClientSession
) -> None:
    token = attack.token(keys)
    header = token if attack.raw_header else f"Bearer {token}"
    minted_before = await count_events(target.db.superuser_dsn, _MINTED)
    request_id = f"jwt-{uuid.uuid4().hex}"
    answers = await _send(http, target.url, header, request_id)
    minted = await count_events(target.db.superuser_dsn, _MINTED) - minted_before
    secret_part = header.split(" ", 1)[-1]
    echoes = sum(1 for _, _, raw in answers if secret_part in raw)
    five_xx = sum(1 for status, _, _ in answers if status >= 500)
    record(
        Row(
            area="jwt",
            kind=attack.name,
            requests=len(answers),
            attacks=len(answers),
            leaked=minted,
            five_xx_on_bad_input=five_xx,
            notes=(
                f"answers {sorted({(s, e['code']) for s, e, _ in answers})};"
                f" expected {attack.status} {attack.code}; token echoed {echoes}x"
            ),
        )
    )
    for status, error, _ in answers:
        assert (status, error["code"]) == (attack.status, attack.code), (attack.name, error)
    assert minted == 0
    assert echoes == 0
    # Unauthenticated: never a row per request (a flood costs one auth.failed row per interval).
    assert await ledger_rows_of(target, request_id) == 0
    assert keys.evil.fetches == 0, "the broker fetched the attacker's JWKS"


async def ledger_rows_of(target: IsolatedBroker, request_id: str) -> int:
    return await count_events(target.db.superuser_dsn, "e.request_id = $1", request_id)


async def test_offboarded_subjects_valid_token_is_403_and_ledgered(
    target: IsolatedBroker, keys: Keys, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    subject = f"jwt-leaver-{uuid.uuid4().hex[:8]}"
    token = keys.dev.mint(subject, ["engineering"])
    assert await _grant(http, target.url, token) == 201  # the control: works before
    async with http.post(
        f"{target.url}/v1/offboarding",
        json={"subject": subject, "reason": "left the company"},
        headers={"Authorization": f"Bearer {tokens['erin']}"},
    ) as r:
        assert r.status == 201, await r.text()
    minted_before = await count_events(target.db.superuser_dsn, _MINTED)
    request_id = f"jwt-{uuid.uuid4().hex}"
    answers = await _send(http, target.url, f"Bearer {token}", request_id)
    minted = await count_events(target.db.superuser_dsn, _MINTED) - minted_before
    rejected = await count_events(
        target.db.superuser_dsn,
        "e.request_id = $1 AND e.event = 'request.rejected' AND e.subject = $2"
        " AND e.outcome = 'subject_offboarded'",
        request_id,
        subject,
    )
    record(
        Row(
            area="jwt",
            kind="valid token of an offboarded subject",
            requests=len(answers) + 1,
            attacks=len(answers),
            leaked=minted,
            five_xx_on_bad_input=sum(1 for s, _, _ in answers if s >= 500),
            notes=f"answers {sorted({(s, e['code']) for s, e, _ in answers})}; {rejected} ledgered",
        )
    )
    for status, error, _ in answers:
        assert (status, error["code"]) == (403, "subject_offboarded")
    assert minted == 0
    assert rejected == len(answers)  # a known subject's refusal is evidence, once each


async def test_header_beyond_the_http_parser_limit_mints_nothing(
    target: IsolatedBroker, keys: Keys, http: aiohttp.ClientSession, captured_logs: LogCapture
) -> None:
    """A 64 KB token never reaches the broker: aiohttp's parser refuses the header line.

    That answer is aiohttp's own plain-text 400 (not the JSON error shape), written before
    any middleware runs; it quotes the first ~100 bytes of the header (the JWT's header
    and the start of its payload, never the signature). Tokens up to the field limit
    (max_token_bytes + 1024) reach the verifier and get a JSON 401 ``token_too_large``.
    """
    token = _oversized(keys, 64 * 1024)
    signature = token.rsplit(".", 1)[1]
    minted_before = await count_events(target.db.superuser_dsn, _MINTED)
    async with http.post(
        f"{target.url}/v1/credentials",
        json={"secret": "stripe/test"},
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        status, raw = r.status, await r.text()
    minted = await count_events(target.db.superuser_dsn, _MINTED) - minted_before
    record(
        Row(
            area="jwt",
            kind="64 KB token (beyond the HTTP header limit)",
            requests=1,
            attacks=1,
            leaked=minted,
            five_xx_on_bad_input=int(status >= 500),
            notes=(
                f"{status} from aiohttp's header parser ({len(raw)} bytes of plain text,"
                " not the JSON error shape); signature echoed: "
                f"{'yes' if signature in raw else 'no'}; signature logged:"
                f" {'yes' if captured_logs.contains(signature) else 'no'}; its first 60 bytes"
                f" echoed/logged: {token[:60] in raw}/{captured_logs.contains(token[:60])}"
            ),
        )
    )
    assert status == 400
    assert minted == 0
    assert signature not in raw
    assert token not in raw
    assert not captured_logs.contains(signature)


async def test_every_refused_token_is_counted_in_the_ledger(
    target: IsolatedBroker, keys: Keys, http: aiohttp.ClientSession
) -> None:
    """Runs last in this module: the auth.failed rows add up to every 401 it provoked."""
    for attack in ATTACKS:
        token = attack.token(keys)
        header = token if attack.raw_header else f"Bearer {token}"
        for status, _, _ in await _send(http, target.url, header, f"jwt-{uuid.uuid4().hex}"):
            assert status == 401

    async def totals() -> Counter[str]:
        counted: Counter[str] = Counter()
        for row in await ledger_rows_on(target):
            counted.update(row["body"]["by_reason"])
        return counted

    expected = dict(_SENT_401)
    counted = await poll(totals, lambda c: dict(c) == expected, timeout=15)
    assert dict(counted) == expected


async def ledger_rows_on(target: IsolatedBroker) -> list[dict[str, Any]]:
    """The auth.failed rows of the isolated ledger."""
    conn = await asyncpg.connect(target.db.superuser_dsn, timeout=10)
    try:
        rows = await conn.fetch("SELECT body FROM ledger.events WHERE event = 'auth.failed'")
    finally:
        await conn.close()
    bodies = [json.loads(r["body"]) if isinstance(r["body"], str) else r["body"] for r in rows]
    return [{"body": body} for body in bodies]
