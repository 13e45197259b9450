"""``broker serve`` and ``broker migrate``: run the broker, prepare its ledger database.

``serve_app`` is also how ``broker dev`` serves, so both run the same listeners. With
``--workers N`` (or ``workers``) above 1, ``broker serve`` is a supervisor that binds the
sockets and runs N ``broker serve --worker SPEC`` processes on them (broker/workers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from broker.ledger.relay import LedgerLink
    from broker.serve import Listen
    from broker.settings import Settings
    from broker.tls.serving import ServingTLS
    from broker.workers import WorkerSpec

# How long the supervisor waits past shutdown_grace_seconds for its workers (their cleanup
# after the grace: broker.stopped, a last checkpoint, the ledger writer's drain), and how
# long a worker whose supervisor vanished may take, before they are killed.
_WORKER_STOP_MARGIN_SECONDS = 10.0

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
    sockets: Sequence[Listen] = (),
    ledger_link: LedgerLink | None = None,
    worker_metrics: tuple[Path, int] | None = None,
) -> None:
    """Serve the broker API, and the Vault-API front door when ``vault_api_port`` is set.

    ``on_ready(ports)`` gets the broker API's port, then the front door's if it runs.
    With ``tls`` (from ``serving_tls``) both listeners serve TLS from its one context.
    ``sockets``, when given, are where they listen (already bound: the API's, then the
    front door's); otherwise ``host`` with ``port`` and ``vault_api_port``. ``ledger_link``
    and ``worker_metrics``: a worker's part in its host's one ledger writer and in its
    workers' shared ``/metrics`` (``create_app``).
    """
    from aiohttp import web

    from broker.app import create_app
    from broker.serve import serve
    from broker.vaultapi import create_vault_api

    api: Listen = sockets[0] if sockets else (settings.host, settings.port)

    def front_door(app: web.Application) -> list[tuple[web.Application, Listen]]:
        if settings.vault_api_port is None:
            return []
        where = sockets[1] if sockets else (settings.host, settings.vault_api_port)
        return [(create_vault_api(app), where)]

    # Graceful on SIGTERM/SIGINT: stop accepting, finish in-flight, then cleanup_ctx.
    await serve(
        create_app(settings, tls=tls, ledger_link=ledger_link, worker_metrics=worker_metrics),
        api,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        on_ready=on_ready,
        extra_sites=front_door,
        ssl_context=tls.context if tls is not None else None,
    )


def _serve(args: argparse.Namespace) -> int:
    from broker.logs import configure_logging
    from broker.settings import load
    from broker.workers import WorkerSpec

    settings = load(Path(args.config) if args.config else None)
    worker = WorkerSpec.decode(args.worker) if args.worker else None
    if worker is not None:
        settings = settings.with_overrides(replica_id=worker.worker_replica_id)
        if worker.console_key is not None:
            settings = settings.with_overrides(console_key_path=worker.console_key)
    level = "debug" if args.verbose else settings.log_level
    configure_logging(settings.log_format or "json", level, replica=settings.replica_id)
    if args.port is not None:
        settings = settings.with_overrides(port=args.port)
    if args.workers is not None:
        settings = settings.with_overrides(workers=args.workers)
    from broker.errors import TLSConfigError

    try:
        tls = serving_tls(settings)
    except TLSConfigError as e:
        print(f"broker serve: {e}", file=sys.stderr)
        return 2
    scheme = "https" if tls is not None else "http"

    def listening(ports: Sequence[int]) -> dict[str, Any]:
        # One machine-readable line so supervisors and tests can find the ports.
        line: dict[str, Any] = {"listening": f"{scheme}://{settings.host}:{ports[0]}"}
        if len(ports) > 1:
            line["vault_api"] = f"{scheme}://{settings.host}:{ports[1]}"
        return line

    if worker is None and settings.workers > 1:
        return _supervise(args, settings, listening)

    def ready(ports: list[int]) -> None:
        print(json.dumps(listening(ports)), flush=True)

    install_uvloop()
    sockets: list[socket.socket] = []
    if worker is not None:
        from broker.workers import watch_supervisor

        watch_supervisor(settings.shutdown_grace_seconds + _WORKER_STOP_MARGIN_SECONDS)
        sockets = worker.sockets()
    link = worker.ledger_link() if worker is not None else None
    shared = worker.worker_metrics() if worker is not None else None
    asyncio.run(
        serve_app(
            settings,
            on_ready=ready,
            tls=tls,
            sockets=sockets,
            ledger_link=link,
            worker_metrics=shared,
        )
    )
    return 0


def _supervise(
    args: argparse.Namespace,
    settings: Settings,
    listening: Callable[[Sequence[int]], dict[str, Any]],
) -> int:
    """Bind the listeners, run ``settings.workers`` workers on them; the exit code."""
    from broker.console.cookies import load_console_key
    from broker.workers import WorkerSpec, bind, ledger_pairs, supervise

    sockets = [bind(settings.host, settings.port)]
    if settings.vault_api_port is not None:
        sockets.append(bind(settings.host, settings.vault_api_port))
    ports = [int(s.getsockname()[1]) for s in sockets]
    # A console key the workers share when none is configured, on disk only until every
    # worker has read it (a SIGKILL before that leaves it in a 0700 temporary directory).
    shared = Path(tempfile.mkdtemp(prefix="broker-workers-"))
    # Where the workers publish their metrics for each other, for as long as they run.
    metrics = Path(tempfile.mkdtemp(prefix="broker-metrics-"))
    try:
        console_key = None
        if settings.console_key_path is None:
            console_key = shared / "console.key"
            load_console_key(console_key)  # created 0600, read by each worker at start-up
        # One ledger writer per host: workers 1..N-1 hand their rows to worker 0's.
        pairs = ledger_pairs(settings.workers)
        specs = [
            WorkerSpec(
                i,
                settings.replica_id,
                tuple(s.fileno() for s in sockets),
                console_key,
                ledger_fds=tuple(s.fileno() for s in pairs[i]),
                metrics_dir=metrics,
            )
            for i in range(settings.workers)
        ]

        def ready(pids: list[int]) -> None:
            shutil.rmtree(shared, ignore_errors=True)  # every worker holds the key in memory
            print(json.dumps({**listening(ports), "workers": pids}), flush=True)

        return asyncio.run(
            supervise(
                [_worker_command(args, spec) for spec in specs],
                sockets,
                stop_timeout=settings.shutdown_grace_seconds + _WORKER_STOP_MARGIN_SECONDS,
                on_ready=ready,
                private=pairs,
            )
        )
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(metrics, ignore_errors=True)


def _worker_command(args: argparse.Namespace, spec: WorkerSpec) -> list[str]:
    """This ``broker serve``, as worker ``spec`` (same config file; same environment)."""
    verbose = ["-v"] if args.verbose else []
    config = ["--config", args.config] if args.config else []
    worker = ["--worker", spec.encode()]
    return [sys.executable, "-m", "broker.cli", *verbose, "serve", *config, *worker]


def _worker_count(text: str) -> int:
    """``--workers``: an integer within the ``workers`` setting's bounds."""
    from broker.settings import SETTINGS
    from broker.settings.spec import check_value

    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    problem = check_value(next(d for d in SETTINGS if d.name == "workers"), count)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return count


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
    serve.add_argument(
        "--workers",
        type=_worker_count,
        metavar="N",
        help="processes sharing the listeners, one per core (else BROKER_WORKERS, default 1)",
    )
    # Internal: how a supervisor starts each worker (broker/workers.py).
    serve.add_argument("--worker", help=argparse.SUPPRESS)
    serve.add_argument("--config", metavar="FILE", help="TOML config file (else BROKER_CONFIG)")
    serve.set_defaults(func=_serve)

    migrate = sub.add_parser("migrate", help="apply ledger migrations as the owner role")
    migrate.set_defaults(func=_migrate)
