"""Wiring the broker onto a ``DevStack``: ledger migrations, keys, settings, demo tokens.

Used by ``broker dev`` and by the test fixtures, so both run exactly the same set-up.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from broker.auth import DevIssuer
from broker.ledger import apply_migrations, load_or_create_signing_key
from broker.settings import Settings
from broker.stack.devstack import DevStack

__all__ = [
    "DEMO_IDENTITIES",
    "WRITER_ROLE",
    "demo_tokens",
    "prepare_broker",
    "prepare_keys",
]

WRITER_ROLE = "broker_writer"

# name -> (subject, groups). Group membership lives in the IdP; policy maps groups to roles.
DEMO_IDENTITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "alice": ("alice", ("engineering",)),
    "bob": ("bob", ("engineering", "sre-leads")),
    "dana": ("dana", ("engineering", "sre-leads")),
    "carol": ("carol", ("auditors",)),
    "erin": ("erin", ("security-admins",)),
    "svc-orders": ("system:serviceaccount:orders:orders-api", ()),
}


def prepare_keys(state_dir: Path, base: Settings) -> Settings:
    """Create (once) the checkpoint signing key and the dev issuer key under ``state_dir``;
    return ``base`` pointing at them."""
    checkpoint = state_dir / "checkpoint.key"
    issuer = state_dir / "dev-issuer.key"
    load_or_create_signing_key(checkpoint, create=True)
    DevIssuer.load_or_create(issuer)
    return base.with_overrides(
        checkpoint_key_path=checkpoint,
        dev_issuer_key_path=issuer,
        checkpoint_witness_path=state_dir / "checkpoint.witness",
    )


def _writer_password(state_dir: Path) -> str:
    path = state_dir / "ledger-writer.password"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


async def prepare_broker(
    stack: DevStack, *, policies_dir: Path, port: int = 0, replica_id: str = "dev-1"
) -> Settings:
    """Migrate the ledger, create the dev keys, and return Settings for this stack.

    The broker connects as the INSERT/SELECT-only writer role, never as the superuser. The
    embedded PostgreSQL is one server, so the ledger needs no synchronous standby here.
    """
    state = stack.state_dir
    password = _writer_password(state)
    await apply_migrations(
        stack.superuser_dsn("broker"), writer_role=WRITER_ROLE, writer_password=password
    )
    pg = stack.pg
    base = Settings(
        host="127.0.0.1",
        port=port,
        database_url=f"postgresql://{WRITER_ROLE}:{password}@{pg.host}:{pg.port}/broker",
        admin_database_url=stack.superuser_dsn("broker"),
        vault_addr=stack.bao.addr,
        vault_token=stack.bao.root_token,
        policies_dir=policies_dir,
        replica_id=replica_id,
        ledger_synchronous_standby="not-required",
    )
    return prepare_keys(state, base)


def demo_tokens(issuer_key: Path, *, ttl_seconds: int = 8 * 3600) -> dict[str, str]:
    """A dev JWT for each demo identity, signed by the local dev issuer."""
    issuer = DevIssuer.load_or_create(issuer_key)
    return {
        name: issuer.mint(subject, groups, ttl_seconds=ttl_seconds)
        for name, (subject, groups) in DEMO_IDENTITIES.items()
    }
