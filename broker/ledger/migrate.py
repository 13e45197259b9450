"""Schema migrations, applied by the owner role (``broker migrate``).

Migrations are the numbered ``migrations/*.sql`` files, each applied once, in order, in its
own transaction, recorded in ``ledger.schema_migrations``. Afterwards the writer role is
(re)granted exactly USAGE + SELECT + INSERT — it owns nothing, so it can neither alter the
triggers nor the tables.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from broker.ledger.store import connect_one

__all__ = ["apply_migrations", "migration_names"]

_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_LEDGER_TABLES = (
    "ledger.events",
    "ledger.checkpoints",
    "ledger.policy_versions",
    "ledger.tree_nodes",
    "ledger.verified_heads",
)
_SIGNIN_TABLES = ("signin.pending", "signin.refresh_tokens")


def migration_names() -> list[str]:
    files = resources.files("broker.ledger").joinpath("migrations").iterdir()
    return sorted(f.name for f in files if f.name.endswith(".sql"))


async def apply_migrations(
    admin_dsn: str,
    *,
    writer_role: str,
    writer_password: str | None = None,
    sslrootcert: Path | None = None,
) -> list[str]:
    """Apply pending migrations and (re)grant the writer role; return the names applied.

    Creates the writer role if it does not exist (LOGIN, no other attributes). Raises
    ValueError for an unsafe role name; asyncpg errors propagate to the CLI.
    """
    if not _ROLE_NAME.match(writer_role):
        raise ValueError(f"invalid writer role name {writer_role!r}")
    conn = await connect_one(admin_dsn, sslrootcert=sslrootcert)
    try:
        await conn.execute(
            "CREATE SCHEMA IF NOT EXISTS ledger;"
            "CREATE TABLE IF NOT EXISTS ledger.schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        # Two `broker migrate` runs at once (e.g. Helm hooks) must not both apply.
        await conn.execute("SELECT pg_advisory_lock(hashtext('jit-broker-migrate'))")
        done = {r["name"] for r in await conn.fetch("SELECT name FROM ledger.schema_migrations")}
        applied = []
        for name in migration_names():
            if name in done:
                continue
            sql = resources.files("broker.ledger").joinpath("migrations", name).read_text()
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO ledger.schema_migrations (name) VALUES ($1)", name)
            applied.append(name)
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", writer_role)
        if not exists:
            await conn.execute(f'CREATE ROLE "{writer_role}" LOGIN')
        if writer_password is not None:
            # Role DDL takes no bind parameters; quote the literal server-side.
            literal = await conn.fetchval("SELECT quote_literal($1)", writer_password)
            await conn.execute(f'ALTER ROLE "{writer_role}" PASSWORD {literal}')
        await conn.execute(f'GRANT USAGE ON SCHEMA ledger TO "{writer_role}"')
        for table in _LEDGER_TABLES:
            await conn.execute(f'REVOKE ALL ON {table} FROM "{writer_role}"')
            await conn.execute(f'GRANT SELECT, INSERT ON {table} TO "{writer_role}"')
        await conn.execute(f'GRANT SELECT ON ledger.schema_migrations TO "{writer_role}"')
        # Partitions ahead of time: the one DDL the writer may cause, through a fixed function.
        await conn.execute(
            "GRANT EXECUTE ON FUNCTION ledger.create_partitions(timestamptz, timestamptz)"
            f' TO "{writer_role}"'
        )
        # Sign-in state is working data, not evidence: the writer may change and delete it.
        await conn.execute(f'GRANT USAGE ON SCHEMA signin TO "{writer_role}"')
        for table in _SIGNIN_TABLES:
            grant = f'GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO "{writer_role}"'
            await conn.execute(grant)
        await conn.execute("SELECT pg_advisory_unlock(hashtext('jit-broker-migrate'))")
        return applied
    finally:
        await conn.close()
