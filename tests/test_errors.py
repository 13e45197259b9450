"""Every documented error: its status, its ``{"error": {"code", "message"}}`` body, its ledger
row, and that nothing reached Vault for it. Never a 500.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import hvac
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from broker.auth.dev_issuer import DEV_AUDIENCE, DEV_ISSUER
from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.backends import db_login
from tests.support.brokers import RunningBroker, start_broker
from tests.support.http import auth, error_of, issue, new_request_id
from tests.support.ledger import ledger_rows
from tests.support.polling import poll
from tests.support.tokens import dev_issuer
from tests.support.vault_proxy import VaultProxy

# --- helpers --------------------------------------------------------------------------


def _expired_token(settings: Settings) -> str:
    """A correctly signed dev token that expired well beyond the verifier's leeway."""
    assert settings.dev_issuer_key_path is not None
    key = serialization.load_pem_private_key(
        settings.dev_issuer_key_path.read_bytes(), password=None
    )
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER,
        "sub": "alice",
        "aud": DEV_AUDIENCE,
        "iat": now - 3600,
        "nbf": now - 3600,
        "exp": now - 600,
        "groups": ["engineering"],
    }
    kid = dev_issuer(settings).kid
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})  # type: ignore[arg-type]


def _bad_auth_headers(settings: Settings) -> dict[str, dict[str, str]]:
    """Expected error code -> Authorization header (absent for missing_token)."""
    issuer = dev_issuer(settings)
    return {
        "missing_token": {},
        "malformed_token": {"Authorization": "Bearer garbage"},
        "token_expired": {"Authorization": f"Bearer {_expired_token(settings)}"},
        "wrong_audience": {
            "Authorization": "Bearer "
            + issuer.mint("alice", ["engineering"], audience="someone-else")
        },
    }


async def _metric_values(http: aiohttp.ClientSession, url: str, name: str) -> dict[str, float]:
    """Samples of counter ``name`` from /metrics, keyed by their ``reason`` label."""
    async with http.get(f"{url}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[sample.labels.get("reason", "")] = sample.value
    return out


async def _post_raw(
    http: aiohttp.ClientSession,
    url: str,
    data: bytes,
    headers: dict[str, str],
) -> tuple[int, dict[str, str]]:
    async with http.post(
        f"{url}/v1/credentials",
        data=data,
        headers={**headers, "Content-Type": "application/json"},
    ) as r:
        return r.status, await error_of(r)


async def _current_policy_version(
    http: aiohttp.ClientSession, broker: RunningBroker, token: str
) -> str:
    async with http.get(f"{broker.url}/v1/me", headers=auth(token)) as r:
        version: str = (await r.json())["policy_version"]
    return version


# --- unauthenticated ------------------------------------------------------------------


async def test_unauthenticated_requests_get_401_with_reason_and_are_counted(
    broker: RunningBroker, broker_settings: Settings, http: aiohttp.ClientSession
) -> None:
    before = await _metric_values(http, broker.url, "broker_auth_failures_total")
    cases = _bad_auth_headers(broker_settings)
    for code, headers in cases.items():
        for method, path in (
            ("POST", "/v1/credentials"),
            ("GET", "/v1/me"),
            ("GET", "/v1/grants"),
            ("DELETE", f"/v1/grants/{uuid.uuid4()}"),
            ("GET", "/v1/audit/verify"),
        ):
            async with http.request(
                method, f"{broker.url}{path}", json={"secret": "stripe/prod"}, headers=headers
            ) as r:
                assert r.status == 401, (code, path, await r.text())
                assert (await error_of(r))["code"] == code, (code, path)
    after = await _metric_values(http, broker.url, "broker_auth_failures_total")
    for code in cases:
        assert after.get(code, 0) - before.get(code, 0) == 5, code


async def test_auth_failures_are_aggregated_in_the_ledger(
    stack: DevStack, broker_settings: Settings, http: aiohttp.ClientSession
) -> None:
    replica = f"authfail-{uuid.uuid4().hex[:8]}"
    running = await start_broker(
        broker_settings.with_overrides(auth_failure_flush_seconds=0.5, replica_id=replica)
    )
    try:
        headers = list(_bad_auth_headers(broker_settings).items())
        sent: dict[str, int] = {}

        async def one(i: int) -> None:
            code, h = headers[i % len(headers)]
            sent[code] = sent.get(code, 0) + 1
            async with http.get(f"{running.url}/v1/me", headers=h) as r:
                assert r.status == 401
                assert (await error_of(r))["code"] == code

        await asyncio.gather(*(one(i) for i in range(200)))

        async def rows() -> list[dict[str, Any]]:
            return await ledger_rows(stack, "e.event = 'auth.failed' AND e.replica = $1", replica)

        found = await poll(
            rows, lambda rs: sum(r["body"]["total"] for r in rs) >= 200, timeout=10.0
        )
        assert sum(r["body"]["total"] for r in found) == 200
        # Aggregated: a handful of interval rows, not one per attempt.
        assert 1 <= len(found) <= 4, len(found)
        by_reason: dict[str, int] = {}
        for r in found:
            assert r["subject"] is None
            for reason, n in r["body"]["by_reason"].items():
                by_reason[reason] = by_reason.get(reason, 0) + n
        assert by_reason == sent
        # No token, no tokens' contents in the ledger.
        for r in found:
            assert "Bearer" not in r["_text"] and "eyJ" not in r["_text"]

        metrics = await _metric_values(http, running.url, "broker_auth_failures_total")
        assert {k: int(v) for k, v in metrics.items() if v} == sent
    finally:
        await running.runner.cleanup()


# --- denied ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "secret", "status", "code", "outcome"),
    [
        ("carol", "db/orders-ro", 403, "denied", "deny"),
        ("alice", "stripe/prod", 403, "elevation_required", "elevation_required"),
        ("alice", "db/orders-admin", 403, "elevation_required", "elevation_required"),
        ("svc-orders", "stripe/test", 403, "denied", "deny"),
        ("alice", "nope/x", 404, "unknown_secret", "unknown_secret"),
    ],
)
async def test_denied_requests_are_ledgered(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    who: str,
    secret: str,
    status: int,
    code: str,
    outcome: str,
) -> None:
    request_id = new_request_id()
    async with http.post(
        f"{broker.url}/v1/credentials",
        json={"secret": secret, "reason": "please", "ticket": "INC-7"},
        headers=auth(tokens[who], request_id),
    ) as r:
        assert r.status == status, await r.text()
        assert r.headers["X-Request-Id"] == request_id
        assert (await error_of(r))["code"] == code

    version = await _current_policy_version(http, broker, tokens[who])
    rows = await ledger_rows(stack, "e.request_id = $1", request_id)
    assert [r["event"] for r in rows] == ["grant.denied"]
    row = rows[0]
    assert row["outcome"] == outcome
    assert row["secret"] == secret
    assert row["policy_version"] == version
    assert row["grant_id"] is None
    assert row["body"]["reason"] == "please"
    assert row["body"]["ticket"] == "INC-7"
    async with http.get(f"{broker.url}/v1/me", headers=auth(tokens[who])) as r:
        assert row["subject"] == (await r.json())["subject"]


# --- malformed ------------------------------------------------------------------------

_LONG = "a" * 10_000

MALFORMED: list[tuple[str, bytes, str]] = [
    ("invalid json", b'{"secret": ', "malformed_json"),
    ("empty body", b"", "malformed_json"),
    ("not utf-8", b'{"secret": "\xff\xfe"}', "malformed_json"),
    ("json array", b'["db/orders-ro"]', "malformed_json"),
    ("json string", b'"db/orders-ro"', "malformed_json"),
    ("deeply nested json", b"[" * 5_000 + b"]" * 5_000, "malformed_json"),
    ("missing secret", b'{"reason": "x"}', "missing_field"),
    ("null secret", b'{"secret": null}', "missing_field"),
    ("unknown field", b'{"secret": "db/orders-ro", "role": "admin"}', "unknown_field"),
    ("dotdot", b'{"secret": "db/../stripe/prod"}', "invalid_secret_name"),
    ("leading dotdot", b'{"secret": "../stripe/prod"}', "invalid_secret_name"),
    ("glob", b'{"secret": "stripe/*"}', "invalid_secret_name"),
    ("percent-encoded", b'{"secret": "%2e%2e/stripe/prod"}', "invalid_secret_name"),
    ("nul", b'{"secret": "stripe/test\\u0000"}', "invalid_secret_name"),
    ("cyrillic look-alike", '{"secret": "db/\u043erders-ro"}'.encode(), "invalid_secret_name"),
    ("fullwidth solidus", '{"secret": "db\uff0forders-ro"}'.encode(), "invalid_secret_name"),
    ("uppercase", b'{"secret": "DB/orders-ro"}', "invalid_secret_name"),
    ("10k chars", f'{{"secret": "{_LONG}"}}'.encode(), "invalid_secret_name"),
    ("secret not a string", b'{"secret": ["db/orders-ro"]}', "invalid_secret_name"),
    ("ttl negative", b'{"secret": "db/orders-ro", "ttl": -5}', "invalid_ttl"),
    ("ttl zero", b'{"secret": "db/orders-ro", "ttl": 0}', "invalid_ttl"),
    ("ttl years", b'{"secret": "db/orders-ro", "ttl": "1y"}', "invalid_ttl"),
    ("ttl bool", b'{"secret": "db/orders-ro", "ttl": true}', "invalid_ttl"),
    ("ttl float", b'{"secret": "db/orders-ro", "ttl": 1.5}', "invalid_ttl"),
    ("ttl huge", b'{"secret": "db/orders-ro", "ttl": 99999999999999}', "invalid_ttl"),
    ("ttl object", b'{"secret": "db/orders-ro", "ttl": {"s": 1}}', "invalid_ttl"),
    ("reason escape", b'{"secret": "stripe/test", "reason": "a\\u001b[2Jb"}', "invalid_reason"),
    ("reason nul", b'{"secret": "stripe/test", "reason": "a\\u0000b"}', "invalid_reason"),
    ("reason del", b'{"secret": "stripe/test", "reason": "a\\u007fb"}', "invalid_reason"),
    (
        "reason too long",
        b'{"secret": "stripe/test", "reason": "' + b"r" * 501 + b'"}',
        "invalid_reason",
    ),
    ("reason lone surrogate", b'{"secret": "stripe/test", "reason": "\\ud800"}', "invalid_reason"),
    ("reason number", b'{"secret": "stripe/test", "reason": 5}', "invalid_reason"),
    ("ticket spaces", b'{"secret": "stripe/test", "ticket": "INC 1"}', "invalid_ticket"),
    ("ticket path", b'{"secret": "stripe/test", "ticket": "../../etc"}', "invalid_ticket"),
    ("ticket number", b'{"secret": "stripe/test", "ticket": 1234}', "invalid_ticket"),
    (
        "ticket too long",
        b'{"secret": "stripe/test", "ticket": "INC-' + b"1" * 80 + b'"}',
        "invalid_ticket",
    ),
]


@pytest.mark.parametrize(("name", "data", "code"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_requests_get_400_and_are_ledgered(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    name: str,
    data: bytes,
    code: str,
) -> None:
    request_id = new_request_id()
    status, err = await _post_raw(http, broker.url, data, auth(tokens["alice"], request_id))
    assert (status, err["code"]) == (400, code), (name, err)

    rows = await ledger_rows(stack, "e.request_id = $1", request_id)
    assert [r["event"] for r in rows] == ["request.rejected"], name
    row = rows[0]
    assert row["subject"] == "alice"
    assert row["subject_kind"] == "human"
    assert row["outcome"] == code
    assert row["body"]["route"] == "/v1/credentials"
    assert row["body"]["method"] == "POST"
    assert _LONG not in row["_text"]


async def test_body_over_64k_gets_413_and_is_ledgered(
    stack: DevStack, broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    request_id = new_request_id()
    data = b'{"secret": "stripe/prod", "reason": "' + b"x" * (65 * 1024) + b'"}'
    status, err = await _post_raw(http, broker.url, data, auth(tokens["alice"], request_id))
    assert (status, err["code"]) == (413, "body_too_large")

    rows = await ledger_rows(stack, "e.request_id = $1", request_id)
    assert [(r["event"], r["subject"]) for r in rows] == [("request.rejected", "alice")]


async def test_bad_query_parameters(
    stack: DevStack, broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    for query, code in (
        ("active=maybe", "invalid_active"),
        ("limit=0", "invalid_limit"),
        ("limit=-1", "invalid_limit"),
        ("limit=100000", "invalid_limit"),
        ("limit=abc", "invalid_limit"),
    ):
        async with http.get(f"{broker.url}/v1/grants?{query}", headers=auth(tokens["alice"])) as r:
            assert r.status == 400, query
            assert (await error_of(r))["code"] == code, query


async def test_revoke_reason_with_control_characters_is_refused(
    stack: DevStack, broker: RunningBroker, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    """The revoke ``reason`` is text for the ledger, checked like the issue ``reason``."""
    async with http.post(
        f"{broker.url}/v1/credentials",
        json={"secret": "db/orders-ro", "ttl": "60s"},
        headers=auth(tokens["alice"]),
    ) as r:
        assert r.status == 201, await r.text()
        grant = await r.json()
    url = f"{broker.url}/v1/grants/{grant['id']}"
    try:
        async with http.delete(f"{url}?reason=a%00b", headers=auth(tokens["alice"])) as r:
            assert r.status == 400, await r.text()
            assert (await error_of(r))["code"] == "invalid_reason"
        # Refused means refused: the login still works and the ledger still says active.
        cred = grant["credential"]
        conn = await db_login(stack, cred["username"], cred["password"])
        await conn.close()
        async with http.get(f"{broker.url}/v1/grants", headers=auth(tokens["alice"])) as r:
            listed = {g["id"]: g["status"] for g in (await r.json())["grants"]}
        assert listed[grant["id"]] == "active"
    finally:
        async with http.delete(url, headers=auth(tokens["alice"])) as r:
            final = r.status
    # The clean revoke must still work: the refused one changed nothing.
    assert final == 200
    rows = await ledger_rows(
        stack, "e.grant_id = $1 AND e.event = 'grant.revoked'", uuid.UUID(grant["id"])
    )
    assert len(rows) == 1


# --- nothing reaches Vault ------------------------------------------------------------


def _minting(seen: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Requests that read or mint a credential (as opposed to health/lease housekeeping)."""
    prefixes = ("/v1/secret/", "/v1/database/creds/", "/v1/pki/issue/", "/v1/pki/sign/")
    return [(m, p) for m, p in seen if p.startswith(prefixes)]


async def _lease_ids(stack: DevStack) -> set[str]:
    client = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token, timeout=10)

    def list_leases() -> set[str]:
        try:
            keys = client.sys.list_leases("database/creds/orders-ro")["data"]["keys"]
        except hvac.exceptions.InvalidPath:
            return set()
        return {str(k) for k in keys}

    return await asyncio.to_thread(list_leases)


async def test_refused_requests_never_reach_vault(
    stack: DevStack,
    broker_settings: Settings,
    broker_behind_vault_proxy: tuple[RunningBroker, VaultProxy],
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    """OpenBao 2.7 refuses to enable audit devices through its API (declarative config
    only), so the broker's Vault traffic is observed by a recording proxy instead, and
    OpenBao's own lease table shows that no database login was minted."""
    running, recorder = broker_behind_vault_proxy
    leases_before = await _lease_ids(stack)
    recorder.seen.clear()

    bad: list[tuple[dict[str, str], bytes, int]] = []
    for headers in _bad_auth_headers(broker_settings).values():
        for secret in ("stripe/prod", "db/orders-ro"):
            bad.append((headers, f'{{"secret": "{secret}"}}'.encode(), 401))
    bad += [
        (auth(tokens["carol"]), b'{"secret": "db/orders-ro"}', 403),
        (auth(tokens["svc-orders"]), b'{"secret": "stripe/prod"}', 403),
        (auth(tokens["alice"]), b'{"secret": "stripe/prod", "ticket": "INC-1"}', 403),
        (auth(tokens["alice"]), b'{"secret": "db/orders-admin"}', 403),
        (auth(tokens["alice"]), b'{"secret": "nope/x"}', 404),
        (auth(tokens["alice"]), b'{"secret": "db/orders-ro", "ttl": -5}', 400),
        (auth(tokens["alice"]), b'{"secret": "stripe/prod", "sudo": true}', 400),
        (auth(tokens["alice"]), b'{"secret": "db/orders-ro", "reason": "\\u0007"}', 400),
        (auth(tokens["alice"]), b'{"secret": "stripe/prod", "x": "' + b"x" * 70_000 + b'"}', 413),
    ]
    for headers, data, status in bad:
        got, _ = await _post_raw(http, running.url, data, headers)
        assert got == status, (data[:60], got)

    assert _minting(recorder.seen) == []
    assert await _lease_ids(stack) - leases_before == set()

    # Positive control: the same broker, proxy and lease check do see a real issuance.
    grant = await issue(http, running.url, tokens["alice"], "db/orders-ro", ttl="60s")
    await issue(http, running.url, tokens["alice"], "stripe/test")
    try:
        paths = [p for _, p in _minting(recorder.seen)]
        assert paths == ["/v1/database/creds/orders-ro", "/v1/secret/data/stripe/test"]
        new = await _lease_ids(stack) - leases_before
        assert {f"database/creds/orders-ro/{k}" for k in new} == {grant["lease_id"]}
    finally:
        async with http.delete(
            f"{running.url}/v1/grants/{grant['id']}", headers=auth(tokens["alice"])
        ) as r:
            assert r.status == 200


# --- routing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/nope", 404, "not_found"),
        ("GET", "/", 404, "not_found"),
        ("POST", "/v1/credentials/stripe/prod", 404, "not_found"),
        ("GET", "/v1/grants/x/y", 404, "not_found"),
        ("GET", "/v1/credentials", 405, "method_not_allowed"),
        ("PUT", "/v1/grants/00000000-0000-0000-0000-000000000000", 405, "method_not_allowed"),
        ("POST", "/v1/me", 405, "method_not_allowed"),
        ("DELETE", "/v1/grants", 405, "method_not_allowed"),
    ],
)
async def test_unknown_routes_and_methods_use_the_error_shape(
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    status: int,
    code: str,
) -> None:
    async with http.request(method, broker.url + path, headers=auth(tokens["alice"])) as r:
        assert r.status == status, await r.text()
        assert (await error_of(r))["code"] == code
        assert r.headers.get("X-Request-Id")
