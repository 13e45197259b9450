"""Issuance, revocation and expiry through the HTTP API, against real OpenBao + Postgres.

Every credential handed out is used for real (Postgres login, certificate chain) and every
end of a grant is checked where it matters: in OpenBao and in Postgres, not only in the
broker's own answer.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.web.keys import GRANTS
from tests.support.backends import LOGIN_REFUSED, db_login, login_refused, vault_root
from tests.support.brokers import RunningBroker, running_broker, start_broker
from tests.support.http import auth, error_of, parse_ts
from tests.support.ledger import ledger_rows, ledger_text_count
from tests.support.paths import REPO
from tests.support.polling import poll
from tests.support.tokens import mint


async def _issue(
    http: aiohttp.ClientSession, broker: RunningBroker, token: str, **body: Any
) -> dict[str, Any]:
    async with http.post(f"{broker.url}/v1/credentials", json=body, headers=auth(token)) as r:
        assert r.status == 201, await r.text()
        assert r.headers.get("Cache-Control") == "no-store"
        grant: dict[str, Any] = await r.json()
    return grant


async def _grant_summary(
    http: aiohttp.ClientSession, broker: RunningBroker, token: str, grant_id: str
) -> dict[str, Any]:
    async with http.get(f"{broker.url}/v1/grants?limit=500", headers=auth(token)) as r:
        assert r.status == 200, await r.text()
        grants = (await r.json())["grants"]
    matching = [g for g in grants if g["id"] == grant_id]
    assert len(matching) == 1, f"grant {grant_id} listed {len(matching)} times"
    return dict(matching[0])


async def _events_for(stack: DevStack, grant_id: str) -> list[dict[str, Any]]:
    return await ledger_rows(stack, "e.grant_id = $1", uuid.UUID(grant_id))


# --- database credentials -------------------------------------------------------------


async def test_database_credential_works_then_revoke_ends_it(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    grant = await _issue(http, broker, tokens["alice"], secret="db/orders-ro", reason="debug")
    cred = grant["credential"]
    assert set(cred) == {"username", "password"}
    assert grant["lease_id"].startswith("database/creds/orders-ro/")

    conn = await db_login(stack, cred["username"], cred["password"])
    try:
        rows = await conn.fetch("SELECT id, customer FROM public.orders ORDER BY id")
        assert len(rows) >= 3
        # Read-only: the role may not write.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("INSERT INTO public.orders (customer, amount_cents) VALUES ('x', 1)")

        async with http.delete(
            f"{broker.url}/v1/grants/{grant['id']}?reason=done", headers=auth(tokens["alice"])
        ) as r:
            assert r.status == 200, await r.text()
            revoked = await r.json()
        assert revoked["status"] == "revoked"
        assert revoked["ended_by"] == "alice"

        # The session that was open during the revoke has been terminated.
        with pytest.raises(LOGIN_REFUSED):
            await conn.fetchval("SELECT count(*) FROM public.orders")
    finally:
        await conn.close()

    assert await login_refused(stack, cred["username"], cred["password"])

    summary = await _grant_summary(http, broker, tokens["alice"], grant["id"])
    assert summary["status"] == "revoked"
    assert summary["ended_by"] == "alice"

    events = await _events_for(stack, grant["id"])
    kinds = [e["event"] for e in events]
    assert kinds == ["grant.intent", "grant.issued", "grant.revoked"], kinds
    for e in events:
        assert e["subject"] == "alice"
        assert e["secret"] == "db/orders-ro"
        assert cred["password"] not in e["_text"], f"password in ledger row {e['seq']}"
    issued = events[1]
    assert issued["lease_id"] == grant["lease_id"]
    assert issued["body"]["username"] == cred["username"]
    assert issued["policy_version"] == grant["policy_version"]
    # Nowhere in the whole ledger either.
    assert await ledger_text_count(stack, cred["password"]) == 0


async def test_database_ttl_clipped_to_role_max_and_enforced_by_vault(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    vault = vault_root(stack)
    long = await _issue(http, broker, tokens["alice"], secret="db/orders-ro", ttl="10h")
    short = await _issue(http, broker, tokens["alice"], secret="db/orders-ro", ttl="90s")
    try:
        # 10h is clipped to the engineering role's max_ttl of 1h.
        issued, expires = parse_ts(long["issued_at"]), parse_ts(long["expires_at"])
        assert expires <= issued + timedelta(hours=1)
        assert expires >= issued + timedelta(hours=1) - timedelta(seconds=30)
        # ... and the response says so; a TTL within the maximum carries no warning.
        assert long["warnings"] == [
            "ttl 10h was clipped to 1h, the max_ttl of role 'engineering'"
        ], long
        assert "warnings" not in short

        issued, expires = parse_ts(short["issued_at"]), parse_ts(short["expires_at"])
        assert timedelta(seconds=80) <= expires - issued <= timedelta(seconds=90)

        # Vault's own lease never outlives the grant: it ends the login itself.
        for grant, limit in ((long, 3600), (short, 90)):
            lease = await asyncio.to_thread(vault.sys.read_lease, grant["lease_id"])
            ttl = lease["data"]["ttl"]
            assert 0 < ttl <= limit, (grant["secret"], ttl, limit)
    finally:
        for grant in (long, short):
            async with http.delete(
                f"{broker.url}/v1/grants/{grant['id']}", headers=auth(tokens["alice"])
            ) as r:
                assert r.status == 200, await r.text()


# --- KV v2 ----------------------------------------------------------------------------


async def test_kv2_returns_value_and_ledgers_no_value(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    grant = await _issue(http, broker, tokens["alice"], secret="stripe/test", ticket="INC-1")
    expected = dict(stack.demo.secret_values["stripe/test"])
    assert grant["credential"]["data"] == expected
    assert isinstance(grant["credential"]["version"], int)
    assert grant["lease_id"] is None

    events = await _events_for(stack, grant["id"])
    assert [e["event"] for e in events] == ["grant.issued"]
    # The row commits while OpenBao answers (it cannot know the version the read finds).
    assert "kv_version" not in events[0]["body"]
    assert events[0]["body"]["ticket"] == "INC-1"
    for value in expected.values():
        assert value not in events[0]["_text"]
        assert await ledger_text_count(stack, value) == 0


async def test_kv2_read_that_fails_after_its_row_ends_the_grant_at_once(
    stack: DevStack,
    broker_settings: Settings,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The grant.issued row of a KV read commits while OpenBao answers; when the read then
    fails (here: the value was deleted in OpenBao), nothing goes out and the grant is
    ended in the same request by a ``grant.revoked`` row saying it was not delivered."""
    kv_path = f"kv-gone/{uuid.uuid4().hex[:8]}"
    subject = f"kv-gone-reader-{uuid.uuid4().hex[:8]}"
    vault = vault_root(stack)
    await asyncio.to_thread(
        vault.secrets.kv.v2.create_or_update_secret,
        kv_path,
        secret={"api_key": "about-to-go"},
        mount_point="secret",
    )
    await asyncio.to_thread(
        vault.secrets.kv.v2.delete_latest_version_of_secret, kv_path, mount_point="secret"
    )
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    with (policies / "catalog.yaml").open("a") as catalog:
        catalog.write(f"\n  kv/gone:\n    engine: kv2\n    mount: secret\n    path: {kv_path}\n")
    with (policies / "roles.yaml").open("a") as roles:
        roles.write(
            f"\n  - name: kv-gone-readers\n    members:\n      subjects: [{subject}]\n"
            "    secrets:\n      - kv/gone\n    max_ttl: 1h\n"
        )
    token = mint(broker_settings, subject, [])
    async with (
        running_broker(broker_settings, policies_dir=policies) as broker,
        http.post(
            f"{broker.url}/v1/credentials", json={"secret": "kv/gone"}, headers=auth(token)
        ) as r,
    ):
        assert r.status == 502, await r.text()
        assert (await error_of(r))["code"] == "vault_error"
    rows = await ledger_rows(stack, "e.subject = $1", subject)
    assert [(e["event"], e["outcome"]) for e in rows] == [
        ("grant.issued", "issued"),
        ("grant.revoked", "not_delivered"),
    ]
    assert rows[0]["grant_id"] == rows[1]["grant_id"]
    assert rows[1]["body"]["reason"] == "not delivered: the KV read failed"
    assert rows[1]["dedupe_key"] == f"grant:{rows[0]['grant_id']}:end"


# --- PKI ------------------------------------------------------------------------------


async def test_pki_certificate_for_service_identity_and_revocation(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    grant = await _issue(http, broker, tokens["svc-orders"], secret="pki/internal")
    cred = grant["credential"]
    cert = x509.load_pem_x509_certificate(cred["certificate"].encode())
    ca = x509.load_pem_x509_certificate(stack.demo.pki_ca_pem.encode())

    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cns] == ["orders-api.orders.internal"]
    cert.verify_directly_issued_by(ca)  # raises unless signed by the demo root CA
    assert x509.load_pem_x509_certificate(cred["issuing_ca"].encode()) == ca
    # The certificate's lifetime matches the grant (orders-service max_ttl 15m).
    not_after = cert.not_valid_after_utc
    assert abs((not_after - parse_ts(grant["expires_at"])).total_seconds()) <= 2
    assert not_after - parse_ts(grant["issued_at"]) <= timedelta(minutes=15, seconds=5)

    serial = cred["serial_number"]
    assert int(serial.replace(":", ""), 16) == cert.serial_number

    events = await _events_for(stack, grant["id"])
    assert [e["event"] for e in events] == ["grant.intent", "grant.issued"]
    assert events[1]["body"]["serial_number"] == serial
    assert events[1]["subject_kind"] == "service"
    key_body = "".join(cred["private_key"].strip().splitlines()[1:-1])
    assert await ledger_text_count(stack, key_body[:64]) == 0

    vault = vault_root(stack)
    before = await asyncio.to_thread(vault.read, f"pki/cert/{serial}")
    assert before["data"]["revocation_time"] == 0

    async with http.delete(
        f"{broker.url}/v1/grants/{grant['id']}", headers=auth(tokens["svc-orders"])
    ) as r:
        assert r.status == 200, await r.text()
    after = await asyncio.to_thread(vault.read, f"pki/cert/{serial}")
    assert after["data"]["revocation_time"] > 0
    summary = await _grant_summary(http, broker, tokens["svc-orders"], grant["id"])
    assert summary["status"] == "revoked"


# --- expiry ---------------------------------------------------------------------------


async def test_expiry_recorded_once_and_login_ends(
    stack: DevStack,
    broker: RunningBroker,
    broker_settings: Any,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    fast = [
        await start_broker(
            broker_settings.with_overrides(
                expiry_sweep_interval_seconds=0.5, replica_id=f"expiry-test-{suffix}-{i}"
            )
        )
        for i in range(2)
    ]
    try:
        grant = await _issue(http, fast[0], tokens["alice"], secret="db/orders-ro", ttl="2s")
        cred = grant["credential"]
        conn = await db_login(stack, cred["username"], cred["password"])
        await conn.close()

        async def expired_rows() -> list[dict[str, Any]]:
            return await ledger_rows(
                stack, "e.grant_id = $1 AND e.event = 'grant.expired'", uuid.UUID(grant["id"])
            )

        # 30 s, not 10: in a full run every replica's sweep first works through the shared
        # ledger's older due grants (oldest first, a Vault revocation each); see the
        # session note of 2026-12-04 on this test.
        rows = await poll(expired_rows, bool, timeout=30.0, interval=0.2)
        assert rows, "no grant.expired row within 30 s of a 2 s grant"
        # Both fast brokers (and the session broker) keep sweeping; give them a few rounds.
        await asyncio.sleep(1.5)
        await asyncio.gather(*(b.app[GRANTS].expire_due() for b in (*fast, broker)))
        rows = await expired_rows()
        assert len(rows) == 1, [r["replica"] for r in rows]
        assert rows[0]["subject"] == "alice"
        assert rows[0]["lease_id"] == grant["lease_id"]

        assert await login_refused(stack, cred["username"], cred["password"])
        summary = await _grant_summary(http, broker, tokens["alice"], grant["id"])
        assert summary["status"] == "expired"
        assert summary["ended_at"] is not None

        # An expired grant cannot be revoked.
        async with http.delete(
            f"{broker.url}/v1/grants/{grant['id']}", headers=auth(tokens["alice"])
        ) as r:
            assert r.status == 409
            assert (await error_of(r))["code"] == "grant_not_active"
    finally:
        for b in fast:
            await b.runner.cleanup()


# --- who may revoke -------------------------------------------------------------------


async def test_revocation_rules(
    stack: DevStack,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
) -> None:
    grant = await _issue(http, broker, tokens["alice"], secret="stripe/test")
    url = f"{broker.url}/v1/grants/{grant['id']}"

    # Someone else's grant looks exactly like a missing one.
    async with http.delete(url, headers=auth(tokens["bob"])) as r:
        assert r.status == 404
        assert (await error_of(r))["code"] == "grant_not_found"
    async with http.delete(
        f"{broker.url}/v1/grants/{uuid.uuid4()}", headers=auth(tokens["bob"])
    ) as r:
        assert r.status == 404
        assert (await error_of(r))["code"] == "grant_not_found"
    async with http.delete(f"{broker.url}/v1/grants/not-a-uuid", headers=auth(tokens["bob"])) as r:
        assert r.status == 404
        assert (await error_of(r))["code"] == "grant_not_found"
    assert (await _grant_summary(http, broker, tokens["alice"], grant["id"]))["status"] == "active"

    # The admin capability may revoke anyone's grant.
    async with http.delete(url + "?reason=offboarding", headers=auth(tokens["erin"])) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert body["status"] == "revoked"
    assert body["ended_by"] == "erin"
    assert body["subject"] == "alice"

    async with http.delete(url, headers=auth(tokens["erin"])) as r:
        assert r.status == 409
        assert (await error_of(r))["code"] == "grant_not_active"
    async with http.delete(url, headers=auth(tokens["alice"])) as r:
        assert r.status == 409
        assert (await error_of(r))["code"] == "grant_not_active"

    summary = await _grant_summary(http, broker, tokens["alice"], grant["id"])
    assert summary["status"] == "revoked"
    assert summary["ended_by"] == "erin"
    revoked = [e for e in await _events_for(stack, grant["id"]) if e["event"] == "grant.revoked"]
    assert len(revoked) == 1
    assert revoked[0]["subject"] == "erin"
    assert revoked[0]["body"] == {"grant_subject": "alice", "reason": "offboarding"}


# --- who am I -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "subject", "kind", "roles", "caps", "requestable"),
    [
        (
            "alice",
            "alice",
            "human",
            {"engineering", "orders-dba", "payments-prod", "prod-shell", "prod-root"},
            set(),
            {"db/orders-ro", "db/orders-admin", "stripe/test", "stripe/prod", "ssh/prod-hosts"},
        ),
        ("carol", "carol", "human", {"auditors"}, {"audit"}, set()),
        ("erin", "erin", "human", {"security-admins"}, {"admin"}, set()),
        (
            "svc-orders",
            "system:serviceaccount:orders:orders-api",
            "service",
            {"orders-service"},
            set(),
            {"db/orders-ro", "pki/internal"},
        ),
    ],
)
async def test_me_for_demo_identities(
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    name: str,
    subject: str,
    kind: str,
    roles: set[str],
    caps: set[str],
    requestable: set[str],
) -> None:
    async with http.get(f"{broker.url}/v1/me", headers=auth(tokens[name])) as r:
        assert r.status == 200, await r.text()
        me = await r.json()
    assert me["subject"] == subject
    assert me["kind"] == kind
    assert set(me["roles"]) == roles
    assert set(me["capabilities"]) == caps
    assert {s["secret"] for s in me["requestable"]} == requestable
    privileged = {s["secret"] for s in me["requestable"] if s["privileged"]}
    assert privileged == requestable & {"db/orders-admin", "stripe/prod"}
    assert me["policy_version"]
