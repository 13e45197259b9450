"""``broker serve`` and ``broker migrate``: run the broker, prepare its ledger database.

``serve_app`` is also how ``broker dev`` serves, so both run the same listeners.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from broker.settings import Settings

__all__ = ["install_uvloop", "register", "serve_app"]


def install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - optional speed-up
        pass


async def serve_app(
    settings: Settings, *, on_ready: Callable[[list[int]], None] | None = None
) -> None:
    """Serve the broker API, and the Vault-API front door when ``vault_api_port`` is set.

    ``on_ready(ports)`` gets the broker API's port, then the front door's if it runs.
    """
    from aiohttp import web

    from broker.app import create_app
    from broker.serve import serve
    from broker.vaultapi import create_vault_api

    def front_door(app: web.Application) -> list[tuple[web.Application, str, int]]:
        if settings.vault_api_port is None:
            return []
        return [(create_vault_api(app), settings.host, settings.vault_api_port)]

    # Graceful on SIGTERM/SIGINT: stop accepting, finish in-flight, then cleanup_ctx.
    await serve(
        create_app(settings),
        settings.host,
        settings.port,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        on_ready=on_ready,
        extra_sites=front_door,
    )


def _serve(args: argparse.Namespace) -> int:
    from broker.logs import configure_logging
    from broker.settings import load

    settings = load(Path(args.config) if args.config else None)
    level = "debug" if args.verbose else settings.log_level
    configure_logging(settings.log_format or "json", level, replica=settings.replica_id)
    if args.port is not None:
        settings = settings.with_overrides(port=args.port)

    def ready(ports: list[int]) -> None:
        # One machine-readable line so supervisors and tests can find the ports.
        line = {"listening": f"http://{settings.host}:{ports[0]}"}
        if len(ports) > 1:
            line["vault_api"] = f"http://{settings.host}:{ports[1]}"
        print(json.dumps(line), flush=True)

    install_uvloop()
    asyncio.run(serve_app(settings, on_ready=ready))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from broker.ledger import apply_migrations
    from broker.settings import from_env

    settings = from_env()
    admin = settings.admin_database_url
    if not admin or not settings.database_url:
        print("BROKER_ADMIN_DATABASE_URL and BROKER_DATABASE_URL are required", file=sys.stderr)
        return 2
    writer = urlsplit(settings.database_url)
    applied = asyncio.run(
        apply_migrations(admin, writer_role=writer.username or "", writer_password=writer.password)
    )
    print(json.dumps({"applied": applied, "writer_role": writer.username}))
    return 0


def register(sub: Any) -> None:
    """Add ``serve`` and ``migrate`` to the top-level subparsers."""
    serve = sub.add_parser("serve", help="run the broker (config file, then the environment)")
    serve.add_argument("--port", type=int)
    serve.add_argument("--config", metavar="FILE", help="TOML config file (else BROKER_CONFIG)")
    serve.set_defaults(func=_serve)

    migrate = sub.add_parser("migrate", help="apply ledger migrations as the owner role")
    migrate.set_defaults(func=_migrate)
