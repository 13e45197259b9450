"""Provision the demo world in a real Postgres and a real OpenBao (idempotent).

What exists afterwards:

Postgres
  - login role ``vault_admin`` (CREATEROLE; ``createrole_self_grant = 'set, inherit'`` so it
    holds the privileges of every role it creates, which is what lets it terminate their
    sessions, reassign/drop what they own and drop them); password rotated on every run.
  - database ``orders`` owned by ``vault_admin``, ``CONNECT`` revoked from PUBLIC, table
    ``public.orders`` owned by ``vault_admin`` with a few rows (inserted once).
  - database ``broker`` (the ledger's; empty: the ledger migrations own its contents).

OpenBao
  - KV v2 at ``secret/``: ``stripe/test`` and ``stripe/prod`` with fresh random API keys on
    every run (canaries: tests search logs and responses for them).
  - database engine at ``database/``: connection ``orders`` as ``vault_admin``; roles
    ``orders-ro`` (SELECT) and ``orders-admin`` (SELECT/INSERT/UPDATE/DELETE, sequences,
    CREATE on schema public), default TTL 1h, max TTL 24h. Revoking a lease blocks the
    login, terminates its sessions, then drops the role: a revoked credential stops working
    at once, including connections already open.
  - PKI at ``pki/`` (max lease 87600h): root CA "JIT Broker Demo Root CA" (EC P-256,
    generated once per OpenBao lifetime) and role ``internal`` for ``*.internal``, max 72h.
  - SSH at ``ssh/`` in CA mode: an Ed25519 signing key (generated once per OpenBao
    lifetime) and role ``prod-hosts`` that signs user certificates for any principal the
    broker asks for (the broker's policy decides which), with a caller-set key id, the
    OpenSSH extensions and the ``source-address`` option allowed, max 24h.

``provision_demo`` is synchronous (hvac + psql); async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import hvac
import hvac.exceptions
import requests

from broker.stack import StackError
from broker.stack.postgres import EmbeddedPostgres

__all__ = ["DemoInfo", "provision_demo"]

ORDERS_DATABASE = "orders"
BROKER_DATABASE = "broker"
VAULT_ADMIN_ROLE = "vault_admin"
KV_MOUNT = "secret"
DATABASE_MOUNT = "database"
PKI_MOUNT = "pki"
PKI_ROLE = "internal"
SSH_MOUNT = "ssh"
SSH_ROLE = "prod-hosts"
CA_COMMON_NAME = "JIT Broker Demo Root CA"

_ROLE_NAME = '"{{name}}"'
# Dynamic logins join a group role that holds the privileges, instead of being granted on
# each table: per-user grants append to every table's ACL, which lives in pg_class (no
# TOAST), so a few hundred live logins made CREATE fail with "row is too big" until they
# expired. Membership rows in pg_auth_members have no such limit.
READER_GROUP = "orders_reader"
WRITER_GROUP = "orders_writer"


def _create_login(group: str) -> str:
    return (
        f"CREATE ROLE {_ROLE_NAME} WITH LOGIN PASSWORD '{{{{password}}}}' "
        f"VALID UNTIL '{{{{expiration}}}}' IN ROLE {group};"
    )


_RO_CREATION = [_create_login(READER_GROUP)]
_ADMIN_CREATION = [_create_login(WRITER_GROUP)]
# Order matters: NOLOGIN first so the user cannot reconnect between the terminate and the
# drop; REASSIGN/DROP OWNED because DROP ROLE fails while the role owns objects or holds
# privileges (orders-admin may have created tables).
_REVOCATION = [
    f"ALTER ROLE {_ROLE_NAME} NOLOGIN;",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
    f"REASSIGN OWNED BY {_ROLE_NAME} TO {VAULT_ADMIN_ROLE};",
    f"DROP OWNED BY {_ROLE_NAME};",
    f"DROP ROLE IF EXISTS {_ROLE_NAME};",
]


@dataclass(frozen=True)
class DemoInfo:
    """What ``provision_demo`` created: where it lives and the canary secret values.

    ``secret_values`` maps a KV v2 path under ``secret/`` (``"stripe/test"``) to the data
    written there; it is read-only and left out of ``repr`` so it never lands in a log.
    """

    vault_addr: str
    pg_host: str
    pg_port: int
    orders_database: str
    secret_values: Mapping[str, Mapping[str, str]] = field(repr=False)  # kept out of logs
    pki_ca_pem: str
    ssh_ca_public_key: str = ""


def provision_demo(
    vault_addr: str, vault_token: str, pg: EmbeddedPostgres, *, timeout: float = 30.0
) -> DemoInfo:
    """Create (or bring up to date) the demo data, mounts and roles; return ``DemoInfo``.

    Idempotent: safe to run again against the same Postgres and OpenBao (e.g. after an
    OpenBao dev restart, which loses everything). Each run rotates ``vault_admin``'s password
    and writes new KV canary values. ``pg`` must be running. ``timeout`` bounds each HTTP
    call to OpenBao. Raises ``StackError`` on any failure.
    """
    admin_password = secrets.token_urlsafe(32)
    try:
        _provision_postgres(pg, admin_password)
        client = hvac.Client(url=vault_addr, token=vault_token, timeout=timeout)
        secret_values = _provision_kv(client)
        _provision_database_engine(client, pg, admin_password)
        ca_pem = _provision_pki(client)
        ssh_ca = _provision_ssh(client)
    except (hvac.exceptions.VaultError, requests.RequestException) as e:
        raise StackError(f"provisioning OpenBao at {vault_addr} failed: {e}") from e
    return DemoInfo(
        vault_addr=vault_addr,
        pg_host=pg.host,
        pg_port=pg.port,
        orders_database=ORDERS_DATABASE,
        secret_values=MappingProxyType(secret_values),
        pki_ca_pem=ca_pem,
        ssh_ca_public_key=ssh_ca,
    )


def _provision_postgres(pg: EmbeddedPostgres, admin_password: str) -> None:
    # CREATE DATABASE cannot run in a DO block or transaction; \gexec runs it only when the
    # SELECT returns a row, which is how psql does "IF NOT EXISTS" for databases.
    # S608: every interpolated value is a module constant or our own token_urlsafe output.
    pg.psql(
        f"""
\\set admin_password '{admin_password}'
SELECT 'CREATE ROLE {VAULT_ADMIN_ROLE}'
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{VAULT_ADMIN_ROLE}') \\gexec
ALTER ROLE {VAULT_ADMIN_ROLE} WITH LOGIN CREATEROLE PASSWORD :'admin_password';
ALTER ROLE {VAULT_ADMIN_ROLE} SET createrole_self_grant = 'set, inherit';
SELECT 'CREATE DATABASE {ORDERS_DATABASE} OWNER {VAULT_ADMIN_ROLE}'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{ORDERS_DATABASE}') \\gexec
SELECT 'CREATE DATABASE {BROKER_DATABASE}'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{BROKER_DATABASE}') \\gexec
REVOKE ALL ON DATABASE {ORDERS_DATABASE} FROM PUBLIC;
"""  # noqa: S608
    )
    # Objects are created as vault_admin so it owns them and can grant on them.
    pg.psql(
        f"""
SET ROLE {VAULT_ADMIN_ROLE};
CREATE TABLE IF NOT EXISTS public.orders (
    id serial PRIMARY KEY,
    customer text NOT NULL,
    amount_cents int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO public.orders (customer, amount_cents)
SELECT v.customer, v.amount_cents
FROM (VALUES ('acme', 12500), ('globex', 4999), ('initech', 100000)) AS v(customer, amount_cents)
WHERE NOT EXISTS (SELECT FROM public.orders);
SELECT 'CREATE ROLE {READER_GROUP} NOLOGIN'
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER_GROUP}') \\gexec
SELECT 'CREATE ROLE {WRITER_GROUP} NOLOGIN'
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER_GROUP}') \\gexec
GRANT CONNECT ON DATABASE {ORDERS_DATABASE} TO {READER_GROUP}, {WRITER_GROUP};
GRANT USAGE ON SCHEMA public TO {READER_GROUP};
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER_GROUP};
GRANT USAGE, CREATE ON SCHEMA public TO {WRITER_GROUP};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {WRITER_GROUP};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {WRITER_GROUP};
""",  # noqa: S608
        database=ORDERS_DATABASE,
    )


def _mounts(client: hvac.Client) -> dict[str, Any]:
    mounts: dict[str, Any] = client.sys.list_mounted_secrets_engines()["data"]
    return mounts


def _ensure_mount(
    client: hvac.Client,
    backend_type: str,
    path: str,
    *,
    options: dict[str, str] | None = None,
    max_lease_ttl: str | None = None,
) -> None:
    existing = _mounts(client).get(f"{path}/")
    if existing is None:
        config = {"max_lease_ttl": max_lease_ttl} if max_lease_ttl else None
        client.sys.enable_secrets_engine(backend_type, path=path, options=options, config=config)
        return
    if existing.get("type") != backend_type:
        raise StackError(
            f"mount {path}/ exists with type {existing.get('type')!r}, expected {backend_type!r}"
        )
    if max_lease_ttl:
        client.sys.tune_mount_configuration(path, max_lease_ttl=max_lease_ttl)


def _provision_kv(client: hvac.Client) -> dict[str, Mapping[str, str]]:
    _ensure_mount(client, "kv", KV_MOUNT, options={"version": "2"})
    values: dict[str, Mapping[str, str]] = {
        "stripe/test": {"api_key": f"sk_test_{secrets.token_hex(16)}"},
        "stripe/prod": {"api_key": f"sk_live_{secrets.token_hex(16)}"},
    }
    for path, data in values.items():
        client.secrets.kv.v2.create_or_update_secret(
            path=path, secret=dict(data), mount_point=KV_MOUNT
        )
        values[path] = MappingProxyType(dict(data))
    return values


def _provision_database_engine(
    client: hvac.Client, pg: EmbeddedPostgres, admin_password: str
) -> None:
    _ensure_mount(client, "database", DATABASE_MOUNT)
    client.secrets.database.configure(
        name=ORDERS_DATABASE,
        plugin_name="postgresql-database-plugin",
        verify_connection=True,
        allowed_roles=["orders-ro", "orders-admin"],
        connection_url=(
            f"postgresql://{{{{username}}}}:{{{{password}}}}@{pg.host}:{pg.port}/"
            f"{ORDERS_DATABASE}?sslmode=disable"
        ),
        username=VAULT_ADMIN_ROLE,
        password=admin_password,
        mount_point=DATABASE_MOUNT,
    )
    for role, creation in (("orders-ro", _RO_CREATION), ("orders-admin", _ADMIN_CREATION)):
        client.secrets.database.create_role(
            name=role,
            db_name=ORDERS_DATABASE,
            creation_statements=creation,
            revocation_statements=_REVOCATION,
            default_ttl="1h",
            max_ttl="24h",
            mount_point=DATABASE_MOUNT,
        )


def _provision_pki(client: hvac.Client) -> str:
    _ensure_mount(client, "pki", PKI_MOUNT, max_lease_ttl="87600h")
    ca_pem = _read_ca_pem(client)
    if not ca_pem:
        response = client.secrets.pki.generate_root(
            type="internal",
            common_name=CA_COMMON_NAME,
            extra_params={"ttl": "87600h", "key_type": "ec", "key_bits": 256},
            mount_point=PKI_MOUNT,
        )
        ca_pem = str(response["data"]["certificate"])
    client.secrets.pki.create_or_update_role(
        PKI_ROLE,
        extra_params={
            "allowed_domains": ["internal"],
            "allow_subdomains": True,
            "allow_bare_domains": False,
            "max_ttl": "72h",
            "key_type": "ec",
            "key_bits": 256,
        },
        mount_point=PKI_MOUNT,
    )
    return ca_pem


def _provision_ssh(client: hvac.Client) -> str:
    _ensure_mount(client, "ssh", SSH_MOUNT, max_lease_ttl="24h")
    public_key = _read_ssh_ca(client)
    if not public_key:
        response = client.write(
            f"{SSH_MOUNT}/config/ca", generate_signing_key=True, key_type="ed25519"
        )
        public_key = str(response["data"]["public_key"])
    client.write(
        f"{SSH_MOUNT}/roles/{SSH_ROLE}",
        key_type="ca",
        allow_user_certificates=True,
        allow_host_certificates=False,
        # The broker's policy decides the principals; OpenBao signs what it is asked.
        allowed_users="*",
        allow_user_key_ids=True,
        allowed_extensions=(
            "permit-pty,permit-agent-forwarding,permit-port-forwarding,"
            "permit-X11-forwarding,permit-user-rc"
        ),
        default_extensions={},
        allowed_critical_options="source-address",
        ttl="30m",
        max_ttl="24h",
    )
    return public_key.strip()


def _read_ssh_ca(client: hvac.Client) -> str:
    try:
        response = client.read(f"{SSH_MOUNT}/config/ca")
    except (hvac.exceptions.InvalidPath, hvac.exceptions.InvalidRequest):
        return ""
    if not response:
        return ""
    return str(response.get("data", {}).get("public_key") or "")


def _read_ca_pem(client: hvac.Client) -> str:
    """The mount's CA certificate PEM, or "" when no CA has been generated yet."""
    try:
        response = client.read(f"{PKI_MOUNT}/cert/ca")
    except (hvac.exceptions.InvalidPath, hvac.exceptions.InvalidRequest):
        return ""  # OpenBao answers 400 "no default issuer currently configured"
    if not response:
        return ""
    return str(response.get("data", {}).get("certificate") or "")
