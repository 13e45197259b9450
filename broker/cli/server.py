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
    from broker.tls.serving import ServingTLS

__all__ = ["install_uvloop", "register", "serve_app", "serving_tls"]


def install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - optional speed-up
        pass


def serving_tls(settings: Settings) -> ServingTLS | None:
    """The loaded serving certificate, or None for plaintext; decided before anything binds.

    Raises ``TLSConfigError`` (a one-line reason) when the pair does not load, or when
    plaintext would be served on a non-loopback host without ``tls_disable``.
    """
    from broker.errors import TLSConfigError
    from broker.tls.serving import ServingTLS, plaintext_refusal

    tls = settings.tls_cert_file is not None and settings.tls_key_file is not None
    refusal = plaintext_refusal(settings.host, tls=tls, tls_disable=settings.tls_disable)
    if refusal:
        raise TLSConfigError(refusal)
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    serving = ServingTLS(
        settings.tls_cert_file, settings.tls_key_file, client_ca_file=settings.tls_client_ca_file
    )
    serving.load()
    return serving


async def serve_app(
    settings: Settings,
    *,
    on_ready: Callable[[list[int]], None] | None = None,
    tls: ServingTLS | None = None,
) -> None:
    """Serve the broker API, and the Vault-API front door when ``vault_api_port`` is set.

    ``on_ready(ports)`` gets the broker API's port, then the front door's if it runs.
    With ``tls`` (from ``serving_tls``) both listeners serve TLS from its one context.
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
        create_app(settings, tls=tls),
        settings.host,
        settings.port,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        on_ready=on_ready,
        extra_sites=front_door,
        ssl_context=tls.context if tls is not None else None,
    )


def _serve(args: argparse.Namespace) -> int:
    from broker.logs import configure_logging
    from broker.settings import load

    settings = load(Path(args.config) if args.config else None)
    level = "debug" if args.verbose else settings.log_level
    configure_logging(settings.log_format or "json", level, replica=settings.replica_id)
    if args.port is not None:
        settings = settings.with_overrides(port=args.port)
    from broker.errors import TLSConfigError

    try:
        tls = serving_tls(settings)
    except TLSConfigError as e:
        print(f"broker serve: {e}", file=sys.stderr)
        return 2
    scheme = "https" if tls is not None else "http"

    def ready(ports: list[int]) -> None:
        # One machine-readable line so supervisors and tests can find the ports.
        line = {"listening": f"{scheme}://{settings.host}:{ports[0]}"}
        if len(ports) > 1:
            line["vault_api"] = f"{scheme}://{settings.host}:{ports[1]}"
        print(json.dumps(line), flush=True)

    install_uvloop()
    asyncio.run(serve_app(settings, on_ready=ready, tls=tls))
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
        apply_migrations(
            admin,
            writer_role=writer.username or "",
            writer_password=writer.password,
            sslrootcert=settings.database_sslrootcert,
        )
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
