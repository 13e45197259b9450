"""``broker token``: mint a JWT from the local dev issuer that ``broker dev`` created.

For development only: the broker accepts these tokens only when it runs with that dev
issuer key (``BROKER_DEV_ISSUER_KEY``), as ``broker dev`` does.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _token(args: argparse.Namespace) -> int:
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


def register(sub: Any) -> None:
    """Add ``token`` to the top-level subparsers."""
    token = sub.add_parser("token", help="mint a dev JWT from the local dev issuer")
    token.add_argument("--sub", required=True)
    token.add_argument("--groups", default="")
    token.add_argument("--ttl", default="8h")
    token.add_argument("--key")
    token.set_defaults(func=_token)
