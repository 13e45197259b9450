"""What every client command shares: connection options, running it, short-ID lookup.

A client command is a function ``(client, args) -> exit code`` registered with
``add_client_command``; ``run_client_command`` connects from --url/--token/--as, the
environment (``BROKER_URL``, ``BROKER_TOKEN``) and ``.broker/dev.json``, calls it, and maps
the client's errors to exit codes: 0 ok, 1 the broker refused (its error code is printed),
2 usage or configuration, 3 broker unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from broker.cli.client import BrokerClient, BrokerHTTPError, BrokerUnreachable

__all__ = [
    "ID_HELP",
    "MIN_ID_PREFIX",
    "ClientCommand",
    "ClientUsage",
    "add_client_command",
    "resolve_id",
    "run_client_command",
]

ClientCommand = Callable[[BrokerClient, argparse.Namespace], int]

# A shorter prefix is more likely a typo than an ID: say so rather than "not found".
MIN_ID_PREFIX = 4
ID_HELP = f"ID or a unique prefix of it (at least {MIN_ID_PREFIX} characters)"


class ClientUsage(Exception):
    """Missing or unusable connection settings or arguments (exit 2)."""


def _connection_options() -> argparse.ArgumentParser:
    """The options every client command takes (a parent parser): read by ``_connect``."""
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", help="broker URL (default: $BROKER_URL, else .broker/dev.json)")
    who = conn.add_mutually_exclusive_group()
    who.add_argument("--token", help="bearer token (default: $BROKER_TOKEN; prefer the env)")
    who.add_argument("--as", dest="as_name", metavar="NAME", help="dev: tokens[NAME] of dev.json")
    conn.add_argument("--dev-json", metavar="PATH", help="default: .broker/dev.json")
    conn.add_argument(
        "--cacert",
        metavar="FILE",
        help="CA that verifies an https broker (default: $BROKER_CACERT, else dev.json's"
        " ca_cert, else the system's)",
    )
    conn.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    conn.add_argument("--json", action="store_true", help="print the broker's JSON")
    return conn


def add_client_command(
    subparsers: Any, name: str, func: ClientCommand, help_text: str
) -> argparse.ArgumentParser:
    """Add ``name`` with the connection options; running it calls ``func(client, args)``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        name, parents=[_connection_options()], help=help_text
    )
    p.set_defaults(func=run_client_command, client_func=func)
    return p


def _load_dev_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ClientUsage(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ClientUsage(f"{path} is not a JSON object")
    return data


def _connect(args: argparse.Namespace) -> BrokerClient:
    """A ``BrokerClient`` from --url/--token/--as, the environment, and ``.broker/dev.json``."""
    dev_path = Path(args.dev_json or ".broker/dev.json")
    if args.dev_json and not dev_path.exists():
        raise ClientUsage(f"{dev_path} not found")
    dev = _load_dev_json(dev_path) if dev_path.exists() else None
    if args.as_name is not None:
        if dev is None:
            raise ClientUsage(f"--as needs {dev_path} (written by `broker dev`)")
        known = dev.get("tokens")
        if not isinstance(known, dict):
            known = {}
        token = known.get(args.as_name)
        if not isinstance(token, str):
            names = ", ".join(sorted(known)) or "none"
            raise ClientUsage(f"no token for {args.as_name!r} in {dev_path} (known: {names})")
    else:
        token = args.token or os.environ.get("BROKER_TOKEN")
    url = args.url or os.environ.get("BROKER_URL") or (dev or {}).get("url")
    if not url or not isinstance(url, str):
        raise ClientUsage(
            "no broker URL: pass --url, set BROKER_URL,"
            " or run `broker dev` (it writes .broker/dev.json)"
        )
    if not token:
        raise ClientUsage("no token: pass --token, set BROKER_TOKEN, or use --as NAME (dev)")
    cafile = args.cacert or os.environ.get("BROKER_CACERT") or (dev or {}).get("ca_cert")
    try:
        return BrokerClient(
            url, token, timeout=args.timeout, cafile=Path(cafile) if cafile else None
        )
    except ValueError as e:
        raise ClientUsage(str(e)) from None


def run_client_command(args: argparse.Namespace) -> int:
    """Connect, run ``args.client_func``, and turn the client's errors into exit codes."""
    try:
        return int(args.client_func(_connect(args), args))
    except ClientUsage as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokerHTTPError as e:
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return 1
    except BrokerUnreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return 3


def resolve_id(given: str, kind: str, visible: Callable[[], Iterable[dict[str, Any]]]) -> str:
    """A full ID, or the ID of the one item of ``visible()`` that starts with ``given``.

    Accepts the short IDs the tables show. ``visible`` is only called for a prefix. Raises
    ``ClientUsage`` for a prefix shorter than ``MIN_ID_PREFIX`` or one matching several
    items, and ``BrokerHTTPError`` 404 ``{kind}_not_found`` when none matches, as the
    broker answers for an ID it does not show the caller.
    """
    try:
        return str(uuid.UUID(given))
    except ValueError:
        pass
    if len(given) < MIN_ID_PREFIX:
        raise ClientUsage(
            f"ID prefix {given!r} is too short: use at least {MIN_ID_PREFIX} characters"
            f" of the {kind} ID"
        )
    matches = [str(i["id"]) for i in visible() if str(i.get("id", "")).startswith(given.lower())]
    if len(matches) > 1:
        raise ClientUsage(f"{given!r} matches several {kind}s: give more of the ID")
    if not matches:
        raise BrokerHTTPError(
            404, f"{kind}_not_found", f"no {kind} visible to you starts with {given!r}"
        )
    return matches[0]
