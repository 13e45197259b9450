"""Canaries: secret values the broker handles must reach the client and nowhere else.

Planted and collected canaries: a unique KV value written straight into OpenBao under a
catalog entry of its own, the demo's Stripe test and live keys, the password of a real
database login and the private key of a real PKI certificate as issued, the OpenBao
token the broker holds, the ledger writer's password, and every JWT the test sends.

The test fetches them through the broker's API (including a privileged one through an
approved elevation), provokes denials and errors (bad input, a Vault path that does not
exist, a database role that does not exist, unauthenticated and forged tokens, a revoke),
exports the evidence package, and then searches for every canary in: every row of every
table in the ledger schema, every log record emitted meanwhile (message, arguments,
traceback) and whatever reached stdout/stderr, ``/metrics``, every error body received,
and every file inside the evidence zip.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import shutil
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import hvac
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.auth import DEV_AUDIENCE, DEV_ISSUER, DevIssuer
from broker.settings import Settings
from broker.stack.devstack import DevStack
from tests.support.brokers import IsolatedBroker, isolated_broker
from tests.support.logs import LogCapture
from tests.support.policies import write_policies
from tests.support.polling import poll
from tests.support.reliability_report import Row, record

CANARY_PATH = "reliability/canary"


@dataclass
class Canaries:
    """Named secret strings to search for, and every error body the client received."""

    values: dict[str, str] = field(default_factory=dict)
    error_bodies: list[bytes] = field(default_factory=list)
    success_bodies: list[bytes] = field(default_factory=list)
    # Not a secret: a marker the broker is meant to record (reason, request path), to show
    # that the search finds what is there.
    control: str = field(default_factory=lambda: f"control-{secrets.token_hex(12)}")
    requests: int = 0

    def add(self, name: str, value: str) -> None:
        assert value and len(value) >= 16, name  # short strings would match by chance
        self.values[name] = value


@pytest.fixture
async def target(stack: DevStack, broker_settings: Settings) -> AsyncIterator[IsolatedBroker]:
    """A broker on its own ledger, with three extra catalog entries for the canaries."""
    tmp = Path(tempfile.mkdtemp(prefix="canary-policies-"))
    catalog = {
        "canary/kv": {"engine": "kv2", "mount": "secret", "path": CANARY_PATH},
        "canary/kv-missing": {"engine": "kv2", "mount": "secret", "path": "reliability/none"},
        "canary/db-broken": {"engine": "database", "mount": "database", "role": "no-such-role"},
    }
    role = {
        "name": "canary-readers",
        "members": {"groups": ["engineering"]},
        "secrets": sorted(catalog),
        "max_ttl": "15m",
    }
    try:
        policies = write_policies(tmp / "policies", catalog, [role])
        async with isolated_broker(
            stack, broker_settings, prefix="canary", policies_dir=policies
        ) as running:
            yield running
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _call(
    http: aiohttp.ClientSession,
    canaries: Canaries,
    method: str,
    url: str,
    token: str | None,
    body: Any = None,
    *,
    expect: int,
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    async with http.request(method, url, **kwargs) as r:
        raw = await r.read()
        canaries.requests += 1
        (canaries.error_bodies if r.status >= 400 else canaries.success_bodies).append(raw)
        assert r.status == expect, (method, url, r.status, raw[:300])
        return await r.json() if r.content_type == "application/json" else raw


def _expired_dev_token(key_path: Path) -> str:
    """A token signed by the real dev issuer key that expired an hour ago."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    now = int(time.time())
    claims = {"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "alice", "groups": ["engineering"],
              "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}  # fmt: skip
    kid = DevIssuer.load_or_create(key_path).kid
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})  # type: ignore[arg-type]


async def _plant_kv(stack: DevStack, value: str) -> None:
    def write() -> None:
        client = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token, timeout=10)
        client.secrets.kv.v2.create_or_update_secret(
            path=CANARY_PATH, secret={"api_key": value}, mount_point="secret"
        )

    await asyncio.to_thread(write)


async def _exercise(
    target: IsolatedBroker,
    stack: DevStack,
    settings: Settings,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    canaries: Canaries,
) -> bytes:
    """Fetch, deny, fail, revoke, elevate, export; return the evidence zip."""
    url = target.url
    alice, bob, carol, svc = tokens["alice"], tokens["bob"], tokens["carol"], tokens["svc-orders"]
    for name in ("alice", "bob", "carol", "svc-orders", "erin"):
        canaries.add(f"jwt of {name}", tokens[name])
    assert settings.vault_token and settings.dev_issuer_key_path
    canaries.add("OpenBao token", settings.vault_token)
    writer_password = urlsplit(settings.database_url).password
    assert writer_password
    canaries.add("ledger writer password", writer_password)
    for path, data in stack.demo.secret_values.items():
        canaries.add(f"KV secret/{path}", data["api_key"])

    kv_value = f"canary-kv-{secrets.token_hex(16)}"
    canaries.add("planted KV canary", kv_value)
    await _plant_kv(stack, kv_value)

    # Fetch through the native API: KV, a database login, a certificate, a Stripe key.
    grant = await _call(http, canaries, "POST", f"{url}/v1/credentials", alice,
                        {"secret": "canary/kv", "reason": "canary fetch"}, expect=201)  # fmt: skip
    assert grant["credential"]["data"]["api_key"] == kv_value
    db = await _call(http, canaries, "POST", f"{url}/v1/credentials", alice,
                     {"secret": "db/orders-ro", "ttl": "5m"}, expect=201)  # fmt: skip
    canaries.add("database password as issued", db["credential"]["password"])
    cert = await _call(http, canaries, "POST", f"{url}/v1/credentials", svc,
                       {"secret": "pki/internal"}, expect=201)  # fmt: skip
    key_lines = [ln for ln in cert["credential"]["private_key"].splitlines() if "-----" not in ln]
    canaries.add("PKI private key (a line of it)", max(key_lines, key=len))
    await _call(http, canaries, "POST", f"{url}/v1/credentials", bob,
                {"secret": "stripe/test"}, expect=201)  # fmt: skip

    await _call(http, canaries, "POST", f"{url}/v1/credentials", alice,
                {"secret": "stripe/test", "reason": canaries.control}, expect=201)  # fmt: skip
    await _call(http, canaries, "DELETE", f"{url}/v1/grants/{canaries.control}", None, expect=401)

    # Privileged, through an approved elevation.
    elevation = await _call(http, canaries, "POST", f"{url}/v1/elevations", alice,
                            {"secret": "stripe/prod", "reason": "canary: live key rotation",
                             "ticket": "CHG-42"}, expect=201)  # fmt: skip
    await _call(http, canaries, "POST", f"{url}/v1/elevations/{elevation['id']}/approve", bob,
                {"comment": "ok"}, expect=200)  # fmt: skip
    await _call(http, canaries, "POST", f"{url}/v1/elevations/{elevation['id']}/credentials",
                alice, expect=201)  # fmt: skip

    # Denials and errors.
    await _call(http, canaries, "POST", f"{url}/v1/credentials", carol,
                {"secret": "canary/kv"}, expect=403)  # fmt: skip
    await _call(http, canaries, "POST", f"{url}/v1/credentials", svc,
                {"secret": "stripe/prod"}, expect=403)  # fmt: skip
    await _call(
        http,
        canaries,
        "POST",
        f"{url}/v1/credentials",
        alice,
        {"secret": "stripe/prod"},
        expect=403,
    )  # fmt: skip (elevation_required)
    await _call(http, canaries, "POST", f"{url}/v1/credentials", alice,
                {"secret": "canary/kv-missing"}, expect=502)  # fmt: skip
    await _call(http, canaries, "POST", f"{url}/v1/credentials", alice,
                {"secret": "canary/db-broken"}, expect=502)  # fmt: skip
    await _call(http, canaries, "POST", f"{url}/v1/credentials", alice,
                {"secret": "canary/kv", "ttl": "forever"}, expect=400)  # fmt: skip
    await _call(http, canaries, "POST", f"{url}/v1/credentials", alice,
                "not an object", expect=400)  # fmt: skip
    await _call(http, canaries, "POST", f"{url}/v1/credentials", None,
                {"secret": "canary/kv"}, expect=401)  # fmt: skip
    forged = DevIssuer(Ed25519PrivateKey.generate()).mint("alice", ["engineering"])
    canaries.add("forged JWT", forged)
    await _call(http, canaries, "POST", f"{url}/v1/credentials", forged,
                {"secret": "canary/kv"}, expect=401)  # fmt: skip
    expired = _expired_dev_token(settings.dev_issuer_key_path)
    canaries.add("expired JWT", expired)
    await _call(http, canaries, "GET", f"{url}/v1/me", expired, expect=401)
    await _call(http, canaries, "DELETE", f"{url}/v1/grants/{db['id']}", alice, expect=200)
    await _call(http, canaries, "DELETE", f"{url}/v1/grants/{db['id']}", alice, expect=409)
    await _call(http, canaries, "DELETE", f"{url}/v1/grants/{grant['id']}", bob, expect=404)

    # The evidence package of the whole run (signed once a checkpoint covers it).
    now = datetime.now(UTC)
    period = (
        f"from={(now - timedelta(hours=1)).isoformat(timespec='seconds').replace('+00:00', 'Z')}"
        f"&to={(now + timedelta(minutes=1)).isoformat(timespec='seconds').replace('+00:00', 'Z')}"
    )

    async def export() -> tuple[int, bytes]:
        async with http.get(f"{url}/v1/audit/evidence?{period}",
                            headers={"Authorization": f"Bearer {carol}"}) as r:  # fmt: skip
            canaries.requests += 1
            return r.status, await r.read()

    status, package = await poll(export, lambda result: result[0] == 200, timeout=20)
    assert status == 200, package[:300]
    return package


async def _ledger_texts(dsn: str) -> list[str]:
    """Every row of every table in the ledger schema, as Postgres renders it."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'ledger' AND table_type = 'BASE TABLE'"
        )
        texts: list[str] = []
        for t in tables:
            name = t["table_name"].replace('"', '""')
            rows = await conn.fetch(f'SELECT x::text AS t FROM ledger."{name}" x')  # noqa: S608
            texts.extend(r["t"] for r in rows)
    finally:
        await conn.close()
    return texts


def _zip_files(package: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(package)) as z:
        return {name: z.read(name) for name in z.namelist()}


async def test_no_canary_escapes_the_client_response(
    stack: DevStack,
    broker_settings: Settings,
    target: IsolatedBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    captured_logs: LogCapture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    canaries = Canaries()
    package = await _exercise(target, stack, broker_settings, tokens, http, canaries)
    async with http.get(f"{target.url}/metrics") as r:
        metrics = await r.read()
    ledger = await _ledger_texts(target.db.superuser_dsn)
    files = _zip_files(package)
    out, err = capfd.readouterr()

    places: dict[str, list[bytes]] = {
        "ledger rows": [t.encode() for t in ledger],
        "log records": [t.encode() for t in captured_logs.texts],
        "stdout/stderr": [out.encode(), err.encode()],
        "/metrics": [metrics],
        "error bodies": canaries.error_bodies,
        "evidence zip files": list(files.values()),
    }
    found = [
        f"{name} in {place}"
        for place, blobs in places.items()
        for name, value in canaries.values.items()
        if any(value.encode() in blob for blob in blobs)
    ]
    searched = {place: (len(blobs), sum(map(len, blobs))) for place, blobs in places.items()}
    record(
        Row(
            area="canary",
            kind="secret values, tokens and passwords searched everywhere",
            requests=canaries.requests + 1,
            bad_inputs=len(canaries.error_bodies),
            leaked=len(found),
            chain="n/a",
            notes=(
                f"{len(canaries.values)} canaries searched in "
                + ", ".join(f"{p}: {n} items/{b} bytes" for p, (n, b) in searched.items())
                + f"; found {len(found)}"
            ),
        )
    )
    # The search can find what it looks for: the fetched canaries did reach the client.
    fetched = (
        "planted KV canary",
        "database password as issued",
        "PKI private key (a line of it)",
        "KV secret/stripe/test",
        "KV secret/stripe/prod",
    )
    for name in fetched:
        assert any(canaries.values[name].encode() in b for b in canaries.success_bodies), name
    # ...and it finds text that is meant to be there: a reason in the ledger and the
    # evidence, a request path in the log of a failed authentication.
    marker = canaries.control.encode()
    for place in ("ledger rows", "evidence zip files", "log records"):
        assert any(marker in blob for blob in places[place]), place
    assert len(ledger) > 20 and len(files) >= 5, searched
    assert found == [], found
