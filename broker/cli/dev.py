"""``broker dev``: the demo on the embedded stack, or the dev broker against your services.

Embedded (the default, what ``make dev`` runs): OpenBao and PostgreSQL start from the
``stack`` extra's wheels under the state directory, the demo is provisioned, and the broker
serves it. External: with ``BROKER_DATABASE_URL`` and ``VAULT_ADDR`` both set, nothing
embedded starts (and the extra is not needed); the ledger is migrated there and the broker
serves the local policies with the dev issuer.

Either way, once listening it writes ``<state>/dev.json`` (URLs, demo tokens, 0600), which
the client commands read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from broker.cli.server import install_uvloop, serve_app

if TYPE_CHECKING:
    from broker.config import Settings

__all__ = ["register"]


def _serve_dev(settings: Settings, state: Path, port_info: dict[str, Any], stops: str) -> None:
    """Serve ``settings``; once listening, write ``dev.json`` (url, tokens, ...) and say so."""
    from broker.devenv import demo_tokens
    from broker.logs import configure_logging

    issuer_key = settings.dev_issuer_key_path
    assert issuer_key is not None
    if settings.vault_api_port is None:  # the demo always serves the front door too
        settings = settings.with_overrides(vault_api_port=0)
    log_format = settings.log_format or "text"
    configure_logging(log_format, settings.log_level, replica=settings.replica_id)

    def ready(ports: list[int]) -> None:
        info = {
            "url": f"http://127.0.0.1:{ports[0]}",
            # Point VAULT_ADDR / BAO_ADDR here: unmodified Vault clients, through policy.
            "vault_api_url": f"http://127.0.0.1:{ports[1]}",
            "tokens": demo_tokens(issuer_key),
            **port_info,
            "dev_issuer_key": str(issuer_key),
            "checkpoint_key": str(settings.checkpoint_key_path),
        }
        out = state / "dev.json"
        out.write_text(json.dumps(info, indent=2))
        out.chmod(0o600)
        shown = ("url", "vault_api_url", "vault_addr", "database_url")
        print(json.dumps({k: info[k] for k in shown}, indent=2))
        print(f"demo tokens for {', '.join(info['tokens'])} written to {out}")
        print(f"broker is running; Ctrl-C stops {stops}", flush=True)

    install_uvloop()
    asyncio.run(serve_app(settings, on_ready=ready))


def _dev(args: argparse.Namespace) -> int:
    """The demo on the embedded stack, or the dev broker against external Postgres + Vault.

    With BROKER_DATABASE_URL and VAULT_ADDR both set, nothing embedded starts: the ledger is
    migrated there (as BROKER_ADMIN_DATABASE_URL if given), and the broker serves the local
    policies with the dev issuer. The demo secrets are not provisioned into a real Vault.
    """
    from broker.config import Settings, from_env
    from broker.devenv import prepare_broker, prepare_keys
    from broker.ledger import apply_migrations
    from broker.stack.devstack import DevStack

    state = Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    policies = Path(args.policies).resolve()
    external_db = os.environ.get("BROKER_DATABASE_URL")
    external_vault = os.environ.get("VAULT_ADDR")
    if external_db or external_vault:
        if not (external_db and external_vault):
            print("set both BROKER_DATABASE_URL and VAULT_ADDR, or neither", file=sys.stderr)
            return 2
        base = prepare_keys(state, Settings(port=args.port, policies_dir=policies))
        settings = from_env(base=base)
        writer = urlsplit(settings.database_url)
        asyncio.run(
            apply_migrations(
                settings.admin_database_url or settings.database_url,
                writer_role=writer.username or "",
                writer_password=None,
            )
        )
        print(f"using external PostgreSQL and Vault at {settings.vault_addr}", flush=True)
        info = {"database_url": settings.database_url, "vault_addr": settings.vault_addr}
        _serve_dev(settings, state, info, "the broker")
        return 0

    print(f"starting OpenBao and PostgreSQL under {state} ...", flush=True)
    with DevStack(state) as stack:
        settings = asyncio.run(prepare_broker(stack, policies_dir=policies, port=args.port))
        # Environment still wins for anything set explicitly (e.g. BROKER_REPLICA_ID).
        settings = from_env(
            {k: v for k, v in os.environ.items() if k.startswith("BROKER_")}, base=settings
        )
        info = {
            "database_url": stack.superuser_dsn("broker"),
            "vault_addr": stack.bao.addr,
            "vault_token": stack.bao.root_token,
        }
        _serve_dev(settings, state, info, "the broker, OpenBao and PostgreSQL")
    return 0


def register(sub: Any) -> None:
    """Add ``dev`` to the top-level subparsers."""
    dev = sub.add_parser("dev", help="run OpenBao + PostgreSQL + the broker with the demo")
    dev.add_argument("--state-dir", default=".broker")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--policies", default="policies")
    dev.set_defaults(func=_dev)
