"""The ``broker`` command: dev, serve, migrate, verify, token, policy check; and, as a
client of a running broker, elevations, credentials, grants.

Exit codes: 0 success, 1 a check failed (verify found tampering, policy invalid) or the
broker refused a client command, 2 usage or configuration error, 3 broker unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["main"]

_log = logging.getLogger("broker")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Access logs carry paths only; never headers (tokens) or bodies.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - optional speed-up
        pass


async def _run_app(settings: Any, *, on_ready: Any = None) -> None:
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


def cmd_serve(args: argparse.Namespace) -> int:
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

    _install_uvloop()
    asyncio.run(_run_app(settings, on_ready=ready))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
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


def cmd_verify(args: argparse.Namespace) -> int:
    import asyncpg

    from broker.ledger import (
        CheckpointSigner,
        CheckpointVerifier,
        load_or_create_signing_key,
        verify_ledger,
    )
    from broker.settings import from_env

    settings = from_env()
    dsn = args.database_url or settings.database_url
    keys = list(settings.checkpoint_verifier_keys)
    if settings.checkpoint_key_path.exists():
        key = load_or_create_signing_key(settings.checkpoint_key_path, create=False)
        keys.append(CheckpointSigner(settings.checkpoint_key_name, key).verifier_key())
    if not dsn or not keys:
        print(
            "need BROKER_DATABASE_URL (or --database-url) and a checkpoint key"
            " (BROKER_CHECKPOINT_KEY or BROKER_CHECKPOINT_VERIFIER_KEYS)",
            file=sys.stderr,
        )
        return 2

    trusted = [Path(f).read_text() for f in args.trusted_checkpoint]

    async def run() -> dict[str, Any]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.set_type_codec(
                "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )
            report = await verify_ledger(
                conn,
                verifier=CheckpointVerifier(keys),
                origin=settings.ledger_origin,
                max_unsigned_seconds=args.max_unsigned_age,
                trusted_checkpoints=trusted,
            )
            return report.to_json()
        finally:
            await conn.close()

    result = asyncio.run(run())
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


def cmd_token(args: argparse.Namespace) -> int:
    from broker.auth import DevIssuer
    from broker.durations import parse_duration

    key = Path(args.key or os.environ.get("BROKER_DEV_ISSUER_KEY") or ".broker/dev-issuer.key")
    if not key.exists():
        print(f"dev issuer key {key} not found: run `broker dev` first", file=sys.stderr)
        return 2
    groups = [g for g in (args.groups or "").split(",") if g]
    token = DevIssuer.load_or_create(key).mint(
        args.sub, groups, ttl_seconds=parse_duration(args.ttl)
    )
    print(token)
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    from broker.errors import PolicyError
    from broker.policy import load_policy_dir

    try:
        policy = load_policy_dir(Path(args.dir))
    except PolicyError as e:
        for line in e.errors:
            print(f"{args.dir.rstrip('/')}/{line}" if not line.startswith(args.dir) else line)
        print(e.message, file=sys.stderr)
        return 1
    print(f"ok: {len(policy.catalog)} secrets, {len(policy.roles)} roles, version {policy.version}")
    return 0


def cmd_checkpoint_key(args: argparse.Namespace) -> int:
    """Create the checkpoint signing key (never overwrites) or print its verifier key."""
    from broker.ledger import CheckpointSigner, load_or_create_signing_key
    from broker.settings import from_env

    settings = from_env()
    path = Path(args.path) if args.path else settings.checkpoint_key_path
    if args.action == "create" and path.exists():
        print(f"{path} already exists; not overwriting a signing key", file=sys.stderr)
        return 2
    if args.action == "show" and not path.exists():
        print(f"{path} not found", file=sys.stderr)
        return 2
    key = load_or_create_signing_key(path, create=args.action == "create")
    # The verifier key is public: auditors pass it to `broker verify` via
    # BROKER_CHECKPOINT_VERIFIER_KEYS without ever holding the private key.
    print(CheckpointSigner(settings.checkpoint_key_name, key).verifier_key())
    return 0


def _serve_dev(settings: Any, state: Path, port_info: dict[str, Any], stops: str) -> None:
    """Serve ``settings``; once listening, write ``dev.json`` (url, tokens, ...) and say so."""
    from broker.devenv import demo_tokens
    from broker.logs import configure_logging

    assert settings.dev_issuer_key_path is not None
    if settings.vault_api_port is None:  # the demo always serves the front door too
        settings = settings.with_overrides(vault_api_port=0)
    log_format = settings.log_format or "text"
    configure_logging(log_format, settings.log_level, replica=settings.replica_id)

    def ready(ports: list[int]) -> None:
        info = {
            "url": f"http://127.0.0.1:{ports[0]}",
            # Point VAULT_ADDR / BAO_ADDR here: unmodified Vault clients, through policy.
            "vault_api_url": f"http://127.0.0.1:{ports[1]}",
            "tokens": demo_tokens(settings.dev_issuer_key_path),
            **port_info,
            "dev_issuer_key": str(settings.dev_issuer_key_path),
            "checkpoint_key": str(settings.checkpoint_key_path),
        }
        out = state / "dev.json"
        out.write_text(json.dumps(info, indent=2))
        out.chmod(0o600)
        shown = ("url", "vault_api_url", "vault_addr", "database_url")
        print(json.dumps({k: info[k] for k in shown}, indent=2))
        print(f"demo tokens for {', '.join(info['tokens'])} written to {out}")
        print(f"broker is running; Ctrl-C stops {stops}", flush=True)

    _install_uvloop()
    asyncio.run(_run_app(settings, on_ready=ready))


def cmd_dev(args: argparse.Namespace) -> int:
    """The demo on the embedded stack, or the dev broker against external Postgres + Vault.

    With BROKER_DATABASE_URL and VAULT_ADDR both set, nothing embedded starts: the ledger is
    migrated there (as BROKER_ADMIN_DATABASE_URL if given), and the broker serves the local
    policies with the dev issuer. The demo secrets are not provisioned into a real Vault.
    """
    from broker.devenv import prepare_broker, prepare_keys
    from broker.ledger import apply_migrations
    from broker.settings import Settings, from_env
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="broker", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run OpenBao + PostgreSQL + the broker with the demo")
    dev.add_argument("--state-dir", default=".broker")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--policies", default="policies")
    dev.set_defaults(func=cmd_dev)

    serve = sub.add_parser("serve", help="run the broker (config file, then the environment)")
    serve.add_argument("--port", type=int)
    serve.add_argument("--config", metavar="FILE", help="TOML config file (else BROKER_CONFIG)")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply ledger migrations as the owner role")
    migrate.set_defaults(func=cmd_migrate)

    verify = sub.add_parser("verify", help="verify the ledger chain and signed checkpoints")
    verify.add_argument("--database-url")
    verify.add_argument(
        "--trusted-checkpoint",
        action="append",
        default=[],
        metavar="FILE",
        help="a signed checkpoint note kept outside the database; the chain must reproduce it",
    )
    verify.add_argument(
        "--max-unsigned-age",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="rows older than this must be covered by a signed checkpoint (default 600)",
    )
    verify.set_defaults(func=cmd_verify)

    ck = sub.add_parser(
        "checkpoint-key", help="create the checkpoint signing key or print its verifier key"
    )
    ck.add_argument("action", choices=["create", "show"])
    ck.add_argument("path", nargs="?", help="default: BROKER_CHECKPOINT_KEY")
    ck.set_defaults(func=cmd_checkpoint_key)

    token = sub.add_parser("token", help="mint a dev JWT from the local dev issuer")
    token.add_argument("--sub", required=True)
    token.add_argument("--groups", default="")
    token.add_argument("--ttl", default="8h")
    token.add_argument("--key")
    token.set_defaults(func=cmd_token)

    policy = sub.add_parser("policy", help="policy tools")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    check = psub.add_parser("check", help="validate policy files (line-numbered errors)")
    check.add_argument("dir", nargs="?", default="policies")
    check.set_defaults(func=cmd_policy_check)

    from broker.cli_client import add_client_commands

    add_client_commands(sub)
    from broker.cli_audit import add_commands as add_audit_commands

    add_audit_commands(sub)
    from broker.cli_offboarding import add_commands as add_offboarding_commands

    add_offboarding_commands(sub)
    from broker.cli_reviews import add_commands as add_review_commands

    add_review_commands(sub)
    from broker.cli_continuity import add_commands as add_continuity_commands

    add_continuity_commands(sub)
    from broker.cli_evidence import add_commands as add_evidence_commands

    add_evidence_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from asyncpg import PostgresError

    from broker.errors import BrokerError, PolicyError
    from broker.settings import SettingsError

    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except SettingsError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError, BrokerError, PostgresError) as e:
        # Start-up refusals (no issuer, no key, invalid policy, Vault login refused):
        # a clear line, not a traceback.
        message = e.message if isinstance(e, BrokerError) else str(e)
        if isinstance(e, PolicyError):
            message += "\n" + "\n".join(e.errors)
        print(f"cannot start: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
