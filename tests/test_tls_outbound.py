"""Outbound TLS, verified for real: OpenBao with its own TLS listener, PostgreSQL with
``ssl = on``, a JWKS endpoint over https. No mocks: real handshakes against real servers,
with the right CA (works) and a wrong one or a wrong name (refused, with a clear reason).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import hvac
import pytest
from aiohttp import web

from broker.app import create_app
from broker.auth import IssuerConfig, Verifier
from broker.auth.dev_issuer import DevIssuer
from broker.errors import AuthError, LedgerUnavailable, TLSConfigError, VaultUnavailable
from broker.ledger import connect_pool, load_or_create_signing_key
from broker.settings import Settings
from broker.stack.devstack import DevStack
from broker.stack.openbao import DevOpenBao
from broker.stack.postgres import EmbeddedPostgres
from broker.tls.devca import DevCA
from tests.support.brokers import running_broker
from tests.support.commands import run_broker, subprocess_env
from tests.support.http import issue
from tests.support.ledger_db import fresh_ledger_db
from tests.support.paths import BROKER_BIN
from tests.support.processes import serve_env
from tests.support.ssl_postgres import ssl_postgres_bin

# --- Vault / OpenBao over https --------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevOpenBao]:
    """``bao server -dev -dev-tls``: its own CA, a certificate for 127.0.0.1/localhost, and
    the demo's ``stripe/test`` KV secret (written over verified TLS with hvac)."""
    with DevOpenBao(tmp_path_factory.mktemp("tls-bao"), tls=True) as bao:
        assert bao.ca_cert is not None
        client = hvac.Client(url=bao.addr, token=bao.root_token, verify=str(bao.ca_cert))
        client.secrets.kv.v2.create_or_update_secret(
            path="stripe/test", secret={"api_key": "sk_test_tls"}, mount_point="secret"
        )
        yield bao


@pytest.fixture(scope="module")
def wrong_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return DevCA.load_or_create(tmp_path_factory.mktemp("wrong-ca"))


async def _ledger_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM ledger.events")
        return count
    finally:
        await conn.close()


async def test_broker_verifies_openbao_with_its_ca_and_issues(
    stack: DevStack,
    broker_settings: Settings,
    tls_bao: DevOpenBao,
    http: aiohttp.ClientSession,
    tokens: dict[str, str],
) -> None:
    assert tls_bao.addr.startswith("https://127.0.0.1:")
    async with (
        fresh_ledger_db(stack, broker_settings, "tlsvault") as db,
        running_broker(
            broker_settings,
            database_url=db.writer_dsn,
            checkpoint_witness_path=None,
            vault_addr=tls_bao.addr,
            vault_token=tls_bao.root_token,
            vault_cacert=tls_bao.ca_cert,
        ) as running,
    ):
        grant = await issue(http, running.url, tokens["alice"], "stripe/test", reason="tls check")
        assert grant["credential"]["data"] == {"api_key": "sk_test_tls"}, grant
        async with http.get(f"{running.url}/v1/health") as r:
            assert r.status == 200, await r.text()


async def test_wrong_vault_ca_refuses_to_start_and_records_nothing(
    stack: DevStack, broker_settings: Settings, tls_bao: DevOpenBao, wrong_ca: DevCA
) -> None:
    async with fresh_ledger_db(stack, broker_settings, "tlsvaultbad") as db:
        settings = broker_settings.with_overrides(
            port=0,
            database_url=db.writer_dsn,
            checkpoint_witness_path=None,
            vault_addr=tls_bao.addr,
            vault_token=tls_bao.root_token,
            vault_cacert=wrong_ca.cert_path,
        )
        runner = web.AppRunner(create_app(settings), access_log=None)
        try:
            with pytest.raises(VaultUnavailable) as caught:
                await runner.setup()
        finally:
            await runner.cleanup()
        assert caught.value.code == "vault_tls"
        assert caught.value.message == (
            f"Vault at {tls_bao.addr}: certificate verify failed:"
            " unable to get local issuer certificate"
        )
        assert await _ledger_rows(db.superuser_dsn) == 0


async def test_broker_serve_with_wrong_vault_ca_exits_2_with_one_line(
    broker_settings: Settings, tls_bao: DevOpenBao, wrong_ca: DevCA
) -> None:
    settings = broker_settings.with_overrides(
        vault_addr=tls_bao.addr, vault_token=tls_bao.root_token
    )
    env = serve_env(settings, "tls-wrong-ca", VAULT_CACERT=str(wrong_ca.cert_path))
    proc = await asyncio.create_subprocess_exec(
        str(BROKER_BIN),
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2, err.decode()
    assert b"listening" not in out
    expected = (
        f"cannot start: Vault at {tls_bao.addr}: certificate verify failed:"
        " unable to get local issuer certificate"
    )
    assert expected in err.decode().splitlines(), err.decode()
    assert "Traceback" not in err.decode()


async def test_vault_server_name_override_is_verified(
    stack: DevStack,
    broker_settings: Settings,
    tls_bao: DevOpenBao,
    http: aiohttp.ClientSession,
    tokens: dict[str, str],
) -> None:
    """``VAULT_TLS_SERVER_NAME`` replaces the URL's host in the check: a name the
    certificate carries works, one it does not is refused."""
    async with fresh_ledger_db(stack, broker_settings, "tlsvaultsni") as db:
        common = {
            "database_url": db.writer_dsn,
            "checkpoint_witness_path": None,
            "vault_addr": tls_bao.addr,
            "vault_token": tls_bao.root_token,
            "vault_cacert": tls_bao.ca_cert,
        }
        async with running_broker(
            broker_settings, vault_tls_server_name="localhost", **common
        ) as running:
            await issue(http, running.url, tokens["alice"], "stripe/test", reason="sni")
        with pytest.raises(VaultUnavailable, match="Hostname mismatch") as caught:
            async with running_broker(
                broker_settings, vault_tls_server_name="vault.example", **common
            ):
                pass
        assert caught.value.code == "vault_tls"


def test_vault_client_cert_and_key_go_together(tmp_path: Path, wrong_ca: DevCA) -> None:
    from broker.vault.login import vault_tls_for

    client = wrong_ca.issue("vault-client", ["broker"], client=True, directory=tmp_path)
    https = Settings(vault_addr="https://vault.example:8200")
    with pytest.raises(TLSConfigError, match="a client certificate needs its key"):
        vault_tls_for(https.with_overrides(vault_client_cert=client.cert_path))
    tls = vault_tls_for(
        https.with_overrides(vault_client_cert=client.cert_path, vault_client_key=client.key_path)
    )
    assert tls is not None and tls.context.verify_mode == ssl.CERT_REQUIRED
    assert vault_tls_for(Settings(vault_addr="http://127.0.0.1:8200")) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_plaintext_vault_only_on_loopback(host: str) -> None:
    from broker.vault.login import vault_tls_for

    assert vault_tls_for(Settings(vault_addr=f"http://{host}:8200")) is None
    with pytest.raises(TLSConfigError) as caught:
        vault_tls_for(Settings(vault_addr="http://vault.vault.svc:8200"))
    assert caught.value.message.startswith(
        "Vault at http://vault.vault.svc:8200: plaintext to a host other than loopback"
    )


# --- PostgreSQL with ssl = on -----------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return DevCA.load_or_create(tmp_path_factory.mktemp("pg-ca"))


@pytest.fixture(scope="module")
def tls_postgres(
    tmp_path_factory: pytest.TempPathFactory, pg_ca: DevCA
) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of its own (data dir, port) with ``ssl = on`` and a certificate that
    names only ``localhost``."""
    bin_dir = ssl_postgres_bin()
    issued = pg_ca.issue("pg-server", ["localhost"])
    base = tmp_path_factory.mktemp("tls-pg")
    tls = (issued.cert_path, issued.key_path)
    with EmbeddedPostgres(base / "data", tls=tls, bin_dir=bin_dir) as pg:
        yield pg


def _dsn(pg: EmbeddedPostgres, host: str, query: str = "") -> str:
    base = pg.dsn().replace(f"@{pg.host}:", f"@{host}:")
    return f"{base}?{query}" if query else base


async def _ssl_in_use(pool: asyncpg.Pool) -> bool:
    async with pool.acquire() as conn:
        in_use: bool = await conn.fetchval(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
    return in_use


async def test_postgres_verify_full_by_name(tls_postgres: EmbeddedPostgres, pg_ca: DevCA) -> None:
    query = f"sslmode=verify-full&sslrootcert={pg_ca.cert_path}"
    pool = await connect_pool(_dsn(tls_postgres, "localhost", query), min_size=1, max_size=1)
    try:
        assert await _ssl_in_use(pool)
    finally:
        await pool.close()
    # The same through the setting (BROKER_DATABASE_SSLROOTCERT): verify-full by default.
    pool = await connect_pool(
        _dsn(tls_postgres, "localhost"), min_size=1, max_size=1, sslrootcert=pg_ca.cert_path
    )
    try:
        assert await _ssl_in_use(pool)
    finally:
        await pool.close()


async def test_postgres_hostname_mismatch_is_refused(
    tls_postgres: EmbeddedPostgres, pg_ca: DevCA
) -> None:
    # The certificate names localhost; connecting to 127.0.0.1 must not be accepted.
    dsn = _dsn(tls_postgres, "127.0.0.1", f"sslmode=verify-full&sslrootcert={pg_ca.cert_path}")
    with pytest.raises(LedgerUnavailable) as caught:
        await connect_pool(dsn, min_size=1, max_size=1)
    assert caught.value.code == "ledger_tls"
    assert caught.value.message == (
        f"PostgreSQL at 127.0.0.1:{tls_postgres.port}: certificate verify failed:"
        " IP address mismatch, certificate is not valid for '127.0.0.1'."
    )


async def test_postgres_wrong_ca_is_refused(
    tls_postgres: EmbeddedPostgres, wrong_ca: DevCA
) -> None:
    dsn = _dsn(tls_postgres, "localhost", f"sslmode=verify-full&sslrootcert={wrong_ca.cert_path}")
    # The server sends its CA in the chain; OpenSSL reports that CA as untrusted.
    reason = "certificate verify failed: self-signed certificate in certificate chain"
    with pytest.raises(LedgerUnavailable, match=f"^PostgreSQL at localhost:\\d+: {reason}$"):
        await connect_pool(dsn, min_size=1, max_size=1)


async def test_cli_database_commands_follow_the_same_rule(
    tls_postgres: EmbeddedPostgres, pg_ca: DevCA, wrong_ca: DevCA, tmp_path: Path
) -> None:
    """``broker migrate`` and ``broker verify`` connect like the server does: verified
    with BROKER_DATABASE_SSLROOTCERT, refused in one line with a CA that does not match."""
    admin = _dsn(tls_postgres, "localhost")
    writer = f"postgresql://tls_cli_writer:pw@localhost:{tls_postgres.port}/postgres"
    key = tmp_path / "checkpoint.key"
    load_or_create_signing_key(key, create=True)
    env = subprocess_env(
        BROKER_ADMIN_DATABASE_URL=admin,
        BROKER_DATABASE_URL=writer,
        BROKER_CHECKPOINT_KEY=str(key),
        BROKER_DATABASE_SSLROOTCERT=str(pg_ca.cert_path),
    )
    migrated = await run_broker("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.json()["writer_role"] == "tls_cli_writer"
    verified = await run_broker("verify", env={**env, "BROKER_DATABASE_URL": admin})
    assert verified.returncode == 0, verified.stderr
    assert verified.json()["ok"] is True

    refused_env = {**env, "BROKER_DATABASE_SSLROOTCERT": str(wrong_ca.cert_path)}
    for command in ("migrate", "verify"):
        refused = await run_broker(command, env=refused_env)
        assert refused.returncode == 2, (command, refused.stderr)
        assert refused.stderr.strip().splitlines() == [
            f"cannot start: PostgreSQL at localhost:{tls_postgres.port}: certificate verify"
            " failed: self-signed certificate in certificate chain"
        ], command


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer", "require", "verify-ca", None])
def test_non_loopback_database_needs_verify_full(mode: str | None) -> None:
    from broker.ledger.tls import database_tls

    dsn = "postgresql://w:pw@db.example:5432/broker" + (f"?sslmode={mode}" if mode else "")
    with pytest.raises(TLSConfigError) as caught:
        database_tls(dsn)
    assert caught.value.message.startswith(
        f"PostgreSQL at db.example:5432: sslmode={mode or 'prefer'} does not verify the server"
    )
    verified = database_tls("postgresql://w:pw@db.example:5432/broker?sslmode=verify-full")
    assert verified.ssl is not None and verified.ssl.check_hostname
    assert verified.ssl.verify_mode == ssl.CERT_REQUIRED
    assert verified.ssl.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert "sslmode" not in verified.dsn


# --- JWKS over https ------------------------------------------------------------------------


@pytest.fixture
async def jwks_server(tmp_path: Path, pg_ca: DevCA) -> AsyncIterator[tuple[str, DevIssuer]]:
    """An https JWKS endpoint on 127.0.0.1 with a certificate from ``pg_ca``."""
    issuer = DevIssuer.load_or_create(tmp_path / "issuer.key")
    document = issuer.jwks()
    issued = pg_ca.issue("jwks", ["127.0.0.1"], directory=tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert_path, issued.key_path)

    async def keys(_: web.Request) -> web.Response:
        return web.json_response(document)

    app = web.Application()
    app.router.add_get("/jwks.json", keys)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}/jwks.json", issuer
    finally:
        await runner.cleanup()


def _jwks_issuer(issuer: DevIssuer, url: str) -> IssuerConfig:
    local = issuer.issuer_config()
    return IssuerConfig(
        issuer=local.issuer, audience=local.audience, algorithms=local.algorithms, jwks_url=url
    )


async def test_jwks_over_https_with_ca(jwks_server: tuple[str, DevIssuer], pg_ca: DevCA) -> None:
    url, issuer = jwks_server
    verifier = Verifier([_jwks_issuer(issuer, url)], jwks_ca_file=pg_ca.cert_path)
    try:
        principal = await verifier.verify(
            "Bearer " + issuer.mint("alice@example.com", ["engineering"])
        )
        assert principal.subject == "alice@example.com"
    finally:
        await verifier.close()


async def test_jwks_without_ca_fails_clearly(
    jwks_server: tuple[str, DevIssuer], caplog: pytest.LogCaptureFixture
) -> None:
    url, issuer = jwks_server
    verifier = Verifier([_jwks_issuer(issuer, url)])
    try:
        with pytest.raises(AuthError) as caught:
            await verifier.verify("Bearer " + issuer.mint("alice@example.com", ["engineering"]))
    finally:
        await verifier.close()
    assert caught.value.code == "jwks_unavailable"
    reason = "certificate verify failed: self-signed certificate in certificate chain"
    assert f"{url}: {reason}" in caplog.text, caplog.text


def test_unreadable_jwks_ca_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("not PEM\n")
    with pytest.raises(TLSConfigError, match="JWKS CA file"):
        Verifier(
            [IssuerConfig("https://idp.example", "aud", ("ES256",), "https://idp.example/k")],
            jwks_ca_file=bad,
        )
