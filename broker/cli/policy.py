"""``broker policy check``: validate a policy directory offline, with line-numbered errors.

Exit codes: 0 valid, 1 invalid (one line per error, file and line first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _check(args: argparse.Namespace) -> int:
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


def register(sub: Any) -> None:
    """Add ``policy`` (check) to the top-level subparsers."""
    policy = sub.add_parser("policy", help="policy tools")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    check = psub.add_parser("check", help="validate policy files (line-numbered errors)")
    check.add_argument("dir", nargs="?", default="policies")
    check.set_defaults(func=_check)
