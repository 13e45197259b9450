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
import signal
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
    from aiohttp import web

    from broker.app import create_app

    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    if on_ready is not None:
        on_ready(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        # Graceful: stop accepting, let in-flight requests finish, then cleanup_ctx.
        await runner.cleanup()


def cmd_serve(args: argparse.Namespace) -> int:
    from broker.config import from_env

    settings = from_env()
    if args.port is not None:
        settings = settings.with_overrides(port=args.port)

    def ready(port: int) -> None:
        # One machine-readable line so supervisors and tests can find the port.
        print(json.dumps({"listening": f"http://{settings.host}:{port}"}), flush=True)

    _install_uvloop()
    asyncio.run(_run_app(settings, on_ready=ready))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from broker.config import from_env
    from broker.ledger import apply_migrations

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

    from broker.config import from_env
    from broker.ledger import (
        CheckpointSigner,
        CheckpointVerifier,
        load_or_create_signing_key,
        verify_ledger,
    )

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
    from broker.config import from_env
    from broker.ledger import CheckpointSigner, load_or_create_signing_key

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

    assert settings.dev_issuer_key_path is not None

    def ready(port: int) -> None:
        info = {
            "url": f"http://127.0.0.1:{port}",
            "tokens": demo_tokens(settings.dev_issuer_key_path),
            **port_info,
            "dev_issuer_key": str(settings.dev_issuer_key_path),
            "checkpoint_key": str(settings.checkpoint_key_path),
        }
        out = state / "dev.json"
        out.write_text(json.dumps(info, indent=2))
        out.chmod(0o600)
        print(json.dumps({k: info[k] for k in ("url", "vault_addr", "database_url")}, indent=2))
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


# --- client commands: elevations, credentials, grants against a running broker ----------
# They talk HTTP with a bearer token (broker/client.py). Exit codes: 0 ok, 1 the broker
# refused (its error code is printed), 2 usage/configuration, 3 broker unreachable.


class _ClientUsage(Exception):
    """Missing or unusable connection settings (exit 2)."""


def _load_dev_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise _ClientUsage(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise _ClientUsage(f"{path} is not a JSON object")
    return data


def _connect(args: argparse.Namespace) -> Any:
    """A ``BrokerClient`` from --url/--token/--as, the environment, and ``.broker/dev.json``."""
    from broker.client import BrokerClient

    dev_path = Path(args.dev_json or ".broker/dev.json")
    if args.dev_json and not dev_path.exists():
        raise _ClientUsage(f"{dev_path} not found")
    dev = _load_dev_json(dev_path) if dev_path.exists() else None
    if args.as_name is not None:
        if dev is None:
            raise _ClientUsage(f"--as needs {dev_path} (written by `broker dev`)")
        known = dev.get("tokens")
        if not isinstance(known, dict):
            known = {}
        token = known.get(args.as_name)
        if not isinstance(token, str):
            names = ", ".join(sorted(known)) or "none"
            raise _ClientUsage(f"no token for {args.as_name!r} in {dev_path} (known: {names})")
    else:
        token = args.token or os.environ.get("BROKER_TOKEN")
    url = args.url or os.environ.get("BROKER_URL") or (dev or {}).get("url")
    if not url or not isinstance(url, str):
        raise _ClientUsage(
            "no broker URL: pass --url, set BROKER_URL,"
            " or run `broker dev` (it writes .broker/dev.json)"
        )
    if not token:
        raise _ClientUsage("no token: pass --token, set BROKER_TOKEN, or use --as NAME (dev)")
    try:
        return BrokerClient(url, token, timeout=args.timeout)
    except ValueError as e:
        raise _ClientUsage(str(e)) from None


def _client_command(args: argparse.Namespace) -> int:
    from broker.client import BrokerError, BrokerUnreachable

    try:
        return int(args.client_func(_connect(args), args))
    except _ClientUsage as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokerError as e:
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return 1
    except BrokerUnreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return 3


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _cell(value: Any, width: int | None = None) -> str:
    """Display text: no control characters (other people's reasons reach this terminal)."""
    text = "-" if value is None or value == "" else str(value)
    text = "".join(c if c.isprintable() else " " for c in text)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _when(value: Any) -> str:
    from datetime import UTC, datetime

    if not isinstance(value, str):
        return "-"
    try:
        return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except ValueError:
        return _cell(value)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [headers, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _short(value: Any) -> str:
    return str(value)[:8]


def _votes(el: dict[str, Any]) -> str:
    required = sum(int(f.get("approvals", 0)) for f in el.get("approvals_required") or [])
    return f"{len(el.get('approvals') or [])}/{required}"


def _needs(el: dict[str, Any]) -> str:
    return " and ".join(
        f"{f.get('approvals')} from {'|'.join(f.get('approver_groups') or [])}"
        for f in el.get("approvals_required") or []
    )


def _status(el: dict[str, Any]) -> str:
    status = str(el.get("status"))
    if el.get("break_glass"):
        status += " (break-glass" + (", reviewed)" if el.get("review") else ", unreviewed)")
    return status


def _deadline(el: dict[str, Any]) -> Any:
    """The time that matters now: window end once approved, else the request expiry."""
    return el.get("window_ends_at") if el.get("approved_at") else el.get("expires_at")


def _describe_elevation(el: dict[str, Any]) -> str:
    from broker.durations import format_duration

    lines = [
        f"id:         {el.get('id')}",
        f"status:     {_status(el)}",
        f"secret:     {_cell(el.get('secret'))} (role {_cell(el.get('role'))})",
        f"requester:  {_cell(el.get('requester'))}",
        f"reason:     {_cell(el.get('reason'))}",
        f"ticket:     {_cell(el.get('ticket'))}",
        f"duration:   {format_duration(int(el.get('duration') or 0))}",
        f"requested:  {_when(el.get('requested_at'))}",
        f"expires:    {_when(el.get('expires_at'))} (if undecided)",
        f"approvals:  {_votes(el)} (needs {_needs(el) or '-'})",
    ]
    for v in el.get("approvals") or []:
        comment = f": {_cell(v.get('comment'))}" if v.get("comment") else ""
        lines.append(f"  - {_cell(v.get('approver'))} at {_when(v.get('at'))}{comment}")
    if el.get("approved_at"):
        lines.append(
            f"window:     {_when(el.get('approved_at'))} to {_when(el.get('window_ends_at'))}"
        )
    closed = el.get("closed")
    if closed:
        event = str(closed.get("event", "")).removeprefix("elevation.")
        note = closed.get("comment") or closed.get("why")
        lines.append(
            f"closed:     {event} by {_cell(closed.get('by'))} at {_when(closed.get('at'))}"
            + (f": {_cell(note)}" if note else "")
        )
    review = el.get("review")
    if review:
        lines.append(
            f"review:     by {_cell(review.get('by'))} at {_when(review.get('at'))}: "
            f"{_cell(review.get('comment'))}"
        )
    if el.get("grants"):
        lines.append(f"grants:     {', '.join(str(g) for g in el['grants'])}")
    if el.get("can_decide"):
        lines.append("you may approve or deny this request")
    return "\n".join(lines)


def _resolve(client: Any, given: str, kind: str) -> str:
    """Accept the short IDs the tables show: a unique prefix of a visible elevation/grant."""
    import uuid

    from broker.client import BrokerError

    try:
        return str(uuid.UUID(given))
    except ValueError:
        pass
    if len(given) < 4:
        return given  # the broker answers not found
    items = client.list_elevations() if kind == "elevation" else client.list_grants()
    matches = [str(i["id"]) for i in items if str(i.get("id", "")).startswith(given.lower())]
    if len(matches) > 1:
        raise _ClientUsage(f"{given!r} matches several {kind}s: give more of the ID")
    if not matches:
        raise BrokerError(
            404, f"{kind}_not_found", f"no {kind} visible to you starts with {given!r}"
        )
    return matches[0]


def _el_request(client: Any, args: argparse.Namespace) -> int:
    el = client.request_elevation(
        args.secret,
        reason=args.reason,
        ticket=args.ticket,
        duration=args.duration,
        break_glass=args.break_glass,
    )
    if args.json:
        _print_json(el)
    elif el.get("status") == "approved":
        print(
            f"elevation {el['id']} {_status(el)}: window ends {_when(el.get('window_ends_at'))}\n"
            f"fetch with: broker elevations credentials {_short(el['id'])}"
        )
    else:
        print(
            f"elevation {el['id']} {_status(el)}: needs {_needs(el)};"
            f" request expires {_when(el.get('expires_at'))}\n"
            f"an approver runs: broker elevations approve {_short(el['id'])}"
        )
    return 0


def _el_list(client: Any, args: argparse.Namespace) -> int:
    items = client.list_elevations(
        status=args.status, unreviewed_break_glass=args.unreviewed_break_glass
    )
    if args.json:
        _print_json({"elevations": items})
        return 0
    if not items:
        print("no elevations")
        return 0
    headers = ["ID", "STATUS", "SECRET", "REQUESTER", "REASON", "APPROVALS", "EXPIRES"]
    rows = [
        [
            _short(el.get("id")),
            _cell(_status(el)),
            _cell(el.get("secret")),
            _cell(el.get("requester")),
            _cell(el.get("reason"), 40),
            _votes(el),
            _when(_deadline(el)),
        ]
        for el in items
    ]
    print(_table(headers, rows))
    return 0


def _el_show(client: Any, args: argparse.Namespace) -> int:
    el = client.get_elevation(_resolve(client, args.id, "elevation"))
    if args.json:
        _print_json(el)
    else:
        print(_describe_elevation(el))
    return 0


def _el_decide(client: Any, args: argparse.Namespace) -> int:
    action = {
        "approve": (client.approve_elevation, "approved"),
        "deny": (client.deny_elevation, "denied"),
        "cancel": (client.cancel_elevation, "cancelled"),
        "review": (client.review_elevation, "reviewed"),
    }
    call, verb = action[args.elevation_command]
    el = call(_resolve(client, args.id, "elevation"), args.comment)
    if args.json:
        _print_json(el)
    else:
        extra = f", window ends {_when(el.get('window_ends_at'))}" if el.get("approved_at") else ""
        print(
            f"{verb} elevation {_short(el.get('id'))}: now {_status(el)},"
            f" approvals {_votes(el)}{extra}"
        )
    return 0


def _el_credentials(client: Any, args: argparse.Namespace) -> int:
    # The grant carries the credential: it goes to stdout only, never to a log.
    _print_json(client.redeem_elevation(_resolve(client, args.id, "elevation"), ttl=args.ttl))
    return 0


def _credentials_get(client: Any, args: argparse.Namespace) -> int:
    _print_json(
        client.issue_credentials(args.secret, ttl=args.ttl, reason=args.reason, ticket=args.ticket)
    )
    return 0


def _grants_list(client: Any, args: argparse.Namespace) -> int:
    grants = client.list_grants(active=args.active)
    if args.json:
        _print_json({"grants": grants})
        return 0
    if not grants:
        print("no grants")
        return 0
    headers = ["ID", "STATUS", "SECRET", "ROLE", "ISSUED", "EXPIRES"]
    rows = [
        [
            _short(g.get("id")),
            _cell(g.get("status")),
            _cell(g.get("secret")),
            _cell(g.get("role")),
            _when(g.get("issued_at")),
            _when(g.get("expires_at")),
        ]
        for g in grants
    ]
    print(_table(headers, rows))
    return 0


def _grants_revoke(client: Any, args: argparse.Namespace) -> int:
    g = client.revoke_grant(_resolve(client, args.id, "grant"), reason=args.reason)
    if args.json:
        _print_json(g)
    else:
        print(
            f"revoked grant {_short(g.get('id'))} ({_cell(g.get('secret'))})"
            f" at {_when(g.get('ended_at'))}"
        )
    return 0


def _add_client_commands(sub: Any) -> None:
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", help="broker URL (default: $BROKER_URL, else .broker/dev.json)")
    who = conn.add_mutually_exclusive_group()
    who.add_argument("--token", help="bearer token (default: $BROKER_TOKEN; prefer the env)")
    who.add_argument("--as", dest="as_name", metavar="NAME", help="dev: tokens[NAME] of dev.json")
    conn.add_argument("--dev-json", metavar="PATH", help="default: .broker/dev.json")
    conn.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    conn.add_argument("--json", action="store_true", help="print the broker's JSON")

    def leaf(parent: Any, name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, parents=[conn], help=help_text)
        p.set_defaults(func=_client_command, client_func=func)
        return p

    els = sub.add_parser("elevations", help="request, list and decide step-up elevations")
    esub = els.add_subparsers(dest="elevation_command", required=True)
    p = leaf(esub, "request", _el_request, "ask for elevated access to a privileged secret")
    p.add_argument("secret")
    p.add_argument("--reason", required=True)
    p.add_argument("--ticket")
    p.add_argument("--duration", help="e.g. 30m (default and maximum: the role's)")
    p.add_argument("--break-glass", action="store_true", help="emergency: no approver, reviewed")
    p = leaf(esub, "list", _el_list, "elevations you requested or may decide")
    p.add_argument(
        "--status", choices=["pending", "approved", "denied", "cancelled", "expired", "ended"]
    )
    p.add_argument("--unreviewed-break-glass", action="store_true")
    p = leaf(esub, "show", _el_show, "one elevation in full")
    p.add_argument("id", help="ID or a unique prefix of it")
    for name, needs_comment, text in (
        ("approve", False, "approve a pending request"),
        ("deny", True, "deny a pending request"),
        ("cancel", False, "withdraw your request (or end it, as admin)"),
        ("review", True, "review a break-glass use"),
    ):
        p = leaf(esub, name, _el_decide, text)
        p.add_argument("id", help="ID or a unique prefix of it")
        p.add_argument("--comment", required=needs_comment)
    p = leaf(esub, "credentials", _el_credentials, "fetch the credential of an approved request")
    p.add_argument("id", help="ID or a unique prefix of it")
    p.add_argument("--ttl", help="e.g. 15m (clipped to the window's end)")

    creds = sub.add_parser("credentials", help="fetch a credential (non-privileged secrets)")
    csub = creds.add_subparsers(dest="credentials_command", required=True)
    p = leaf(csub, "get", _credentials_get, "issue a credential and print the grant JSON")
    p.add_argument("secret")
    p.add_argument("--ttl")
    p.add_argument("--reason")
    p.add_argument("--ticket")

    grants = sub.add_parser("grants", help="your grants")
    gsub = grants.add_subparsers(dest="grants_command", required=True)
    p = leaf(gsub, "list", _grants_list, "grants you hold or held")
    p.add_argument("--active", action="store_true", help="only grants still active")
    p = leaf(gsub, "revoke", _grants_revoke, "revoke a grant now")
    p.add_argument("id", help="ID or a unique prefix of it")
    p.add_argument("--reason")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="broker", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run OpenBao + PostgreSQL + the broker with the demo")
    dev.add_argument("--state-dir", default=".broker")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--policies", default="policies")
    dev.set_defaults(func=cmd_dev)

    serve = sub.add_parser("serve", help="run the broker (configuration from the environment)")
    serve.add_argument("--port", type=int)
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

    _add_client_commands(sub)
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

    from broker.config import SettingsError
    from broker.errors import BrokerError, PolicyError

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
