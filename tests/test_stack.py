"""The embedded stack against itself: real OpenBao minting real Postgres logins."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import hvac
import hvac.exceptions
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from broker.stack import StackError
from broker.stack.demo import provision_demo
from broker.stack.devstack import DevStack
from broker.stack.openbao import DevOpenBao
from broker.stack.postgres import EmbeddedPostgres

pytestmark = pytest.mark.stack


@pytest.fixture
def scratch(stack_state_dir: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh directory for a test's own servers (see ``stack_state_dir`` for why not
    ``tmp_path``)."""
    path = stack_state_dir / request.node.name
    path.mkdir()
    return path


@pytest.fixture
def vault(stack: DevStack) -> Iterator[hvac.Client]:
    client = hvac.Client(url=stack.bao.addr, token=stack.bao.root_token, timeout=30)
    yield client
    client.adapter.close()


async def _connect(stack: DevStack, creds: dict[str, Any]) -> Any:
    return await asyncpg.connect(
        host=stack.pg.host,
        port=stack.pg.port,
        user=creds["username"],
        password=creds["password"],
        database=stack.demo.orders_database,
        timeout=10,
    )


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_ro_credential_selects_cannot_insert_and_dies_on_revoke(
    stack: DevStack, vault: hvac.Client
) -> None:
    minted = await asyncio.to_thread(vault.secrets.database.generate_credentials, "orders-ro")
    creds = minted["data"]
    assert creds["username"].startswith("v-")
    conn = await _connect(stack, creds)
    try:
        assert await conn.fetchval("SELECT count(*) FROM public.orders") >= 3
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("INSERT INTO public.orders (customer, amount_cents) VALUES ('x', 1)")

        await asyncio.to_thread(vault.sys.revoke_lease, minted["lease_id"])

        # The open session is terminated by the revocation statements... (When the server's
        # FATAL arrives while the connection is idle, asyncpg may report it as a protocol
        # state error on the next query: the session is just as dead.)
        dead_session = (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
        )
        with pytest.raises(dead_session):
            await conn.fetchval("SELECT 1")
    finally:
        await conn.close(timeout=5)
    # ...and the role no longer exists, so the password is useless.
    with pytest.raises(asyncpg.InvalidPasswordError):
        await _connect(stack, creds)
    roles = stack.pg.psql(
        f"SELECT count(*) FROM pg_roles WHERE rolname = '{creds['username']}'"  # noqa: S608
    )
    assert roles.strip() == "0"


async def test_admin_credential_writes_and_revoke_drops_objects_it_created(
    stack: DevStack, vault: hvac.Client
) -> None:
    minted = await asyncio.to_thread(vault.secrets.database.generate_credentials, "orders-admin")
    creds = minted["data"]
    conn = await _connect(stack, creds)
    try:
        order_id = await conn.fetchval(
            "INSERT INTO public.orders (customer, amount_cents) VALUES ('admin-test', 7) "
            "RETURNING id"
        )
        assert order_id is not None
        await conn.execute(f'CREATE TABLE public."scratch_{creds["username"]}" (x int)')
    finally:
        await conn.close(timeout=5)

    # Revocation must succeed although the role owns a table (REASSIGN/DROP OWNED).
    await asyncio.to_thread(vault.sys.revoke_lease, minted["lease_id"])
    with pytest.raises(asyncpg.InvalidPasswordError):
        await _connect(stack, creds)
    owner = stack.pg.psql(
        f"SELECT tableowner FROM pg_tables WHERE tablename = 'scratch_{creds['username']}'",  # noqa: S608
        database="orders",
    )
    assert owner.strip() == "vault_admin"


def test_kv_read_returns_provisioned_canary(stack: DevStack, vault: hvac.Client) -> None:
    for path, expected in stack.demo.secret_values.items():
        got = vault.secrets.kv.v2.read_secret_version(
            path=path, mount_point="secret", raise_on_deleted_version=True
        )
        assert got["data"]["data"] == dict(expected)
    assert stack.demo.secret_values["stripe/test"]["api_key"].startswith("sk_test_")
    assert stack.demo.secret_values["stripe/prod"]["api_key"].startswith("sk_live_")
    assert "sk_" not in repr(stack.demo)


def test_pki_issues_internal_certificate_chained_to_demo_ca(
    stack: DevStack, vault: hvac.Client
) -> None:
    issued = vault.secrets.pki.generate_certificate(
        "internal", "api.internal", extra_params={"ttl": "1h"}
    )["data"]
    cert = x509.load_pem_x509_certificate(issued["certificate"].encode())
    ca = x509.load_pem_x509_certificate(stack.demo.pki_ca_pem.encode())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "api.internal"
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        vault.secrets.pki.generate_certificate("internal", "api.example.com")


def test_provision_demo_is_idempotent(stack: DevStack, vault: hvac.Client) -> None:
    again = provision_demo(stack.bao.addr, stack.bao.root_token, stack.pg)
    assert again.pki_ca_pem == stack.demo.pki_ca_pem  # the CA is not regenerated
    rows = stack.pg.psql("SELECT count(*) FROM public.orders", database="orders")
    assert int(rows) >= 3
    # Canaries rotate; the stack's view and OpenBao agree again after re-provisioning.
    stack.reprovision()
    got = vault.secrets.kv.v2.read_secret_version(
        path="stripe/test", mount_point="secret", raise_on_deleted_version=True
    )
    assert got["data"]["data"] == dict(stack.demo.secret_values["stripe/test"])
    # vault_admin's password rotated: minting still works.
    assert vault.secrets.database.generate_credentials("orders-ro")["data"]["username"]


async def test_postgres_stop_start_same_port_keeps_data(
    stack: DevStack, vault: hvac.Client
) -> None:
    pg = stack.pg
    port, pid = pg.port, pg.pid
    assert pid is not None
    marker = f"restart-{time.time_ns()}"
    pg.psql("CREATE TABLE IF NOT EXISTS restart_probe (v text)")
    pg.psql(f"INSERT INTO restart_probe VALUES ('{marker}')")  # noqa: S608

    await asyncio.to_thread(pg.stop)
    assert not pg.is_running
    assert pg.pid is None
    assert _process_gone(pid)
    assert not _port_open(port)
    pg.stop()  # idempotent

    await asyncio.to_thread(pg.start)
    assert pg.is_running
    assert pg.port == port
    assert marker in pg.psql("SELECT v FROM restart_probe")

    # OpenBao's pooled connections died with the server; minting must recover on its own.
    minted = await asyncio.to_thread(vault.secrets.database.generate_credentials, "orders-ro")
    conn = await _connect(stack, minted["data"])
    try:
        assert await conn.fetchval("SELECT count(*) FROM public.orders") >= 3
    finally:
        await conn.close(timeout=5)


def test_postgres_recovers_from_stale_postmaster_pid(scratch: Path) -> None:
    data_dir = scratch / "pg"
    first = EmbeddedPostgres(data_dir)
    first.start()
    try:
        orphan_pid = first.pid
        assert orphan_pid is not None
        # A second owner of the same data dir (as after a killed Python process whose
        # server kept running) must stop the orphan and take over on the same port.
        second = EmbeddedPostgres(data_dir, port=first.port)
        second.start()
        try:
            assert second.pid != orphan_pid
            assert second.psql("SELECT 1").strip() == "1"
            # Now the server dies hard: postmaster.pid stays behind with a dead pid.
            killed = second.pid
            assert killed is not None
            os.kill(killed, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while second.is_running and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (data_dir / "postmaster.pid").exists()
            second.stop()
            second.start()
            assert second.psql("SELECT 2").strip() == "2"
        finally:
            second.stop()
    finally:
        first.stop()  # reaps the orphan we started
    assert not _port_open(first.port)


def test_openbao_stop_leaves_no_process_and_restart_is_empty(scratch: Path) -> None:
    bao = DevOpenBao(scratch / "bao")
    bao.start()
    try:
        pid = bao.pid
        assert pid is not None
        client = hvac.Client(url=bao.addr, token=bao.root_token, timeout=10)
        client.secrets.kv.v2.create_or_update_secret(path="probe", secret={"v": "1"})
        bao.restart()  # in-memory: the probe is gone, same addr and token
        assert _process_gone(pid)
        with pytest.raises(hvac.exceptions.InvalidPath):
            client.secrets.kv.v2.read_secret_version(path="probe", raise_on_deleted_version=True)
        pid = bao.pid
        assert pid is not None
    finally:
        bao.stop()
    bao.stop()  # idempotent
    assert not bao.is_running
    assert _process_gone(pid)
    assert not _port_open(bao.port)
    token_file = Path.home() / ".vault-token"  # -dev-no-store-token: never written there
    assert not token_file.exists() or bao.root_token not in token_file.read_text()


def test_postgres_start_failure_raises_stack_error_with_log(scratch: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        pg = EmbeddedPostgres(scratch / "pg", port=busy.getsockname()[1], start_timeout=30)
        with pytest.raises(StackError, match="exited with code"):
            pg.start()
    assert not pg.is_running


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("userdel", path="/usr/sbin:/sbin") is None,
    reason="only root runs postgres as a system user it creates",
)
def test_as_root_creating_the_postgres_user_is_said_once(
    scratch: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`broker dev` as root adds a user to the machine: it says so (a warning on stderr,
    through the CLI's logging), once, when it does."""
    user = f"jbt_{secrets.token_hex(4)}"  # a user nobody has, so this run creates it
    pg = EmbeddedPostgres(scratch / "pg", system_user=user)
    try:
        with caplog.at_level(logging.WARNING, logger="broker.stack.postgres"):
            pg.start()
            pg.stop()
            pg.start()  # the user exists now: nothing more to say
        assert pg.psql("SELECT current_setting('data_directory')").strip().endswith("/pg")
        assert (scratch / "pg").stat().st_uid == pwd.getpwnam(user).pw_uid
    finally:
        pg.stop()
        subprocess.run(
            [shutil.which("userdel", path="/usr/sbin:/sbin") or "userdel", user],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
    said = [r.getMessage() for r in caplog.records if r.name == "broker.stack.postgres"]
    assert said == [
        f"running as root: created the system user {user} (useradd --system, no home,"
        " no login shell) to run PostgreSQL, which refuses to run as root"
    ]
