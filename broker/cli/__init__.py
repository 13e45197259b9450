"""The ``broker`` command: one module per command group, registered in ``_GROUPS`` below.

  dev.py          broker dev                       the demo on the embedded stack
  server.py       broker serve, migrate            run the broker, prepare its database
  ledger.py       broker verify, checkpoint-key    ledger integrity
  tokens.py       broker token                     dev JWTs
  policy.py       broker policy check
  elevations.py   broker elevations, credentials, grants   } clients of a running broker,
  ssh.py          broker ssh                               } over client.py (HTTP), with
  audit.py        broker audit                             }
  offboarding.py  broker offboard, offboardings            } _connection.py (options, exit
  reviews.py      broker reviews                           } codes) and _output.py
  evidence.py     broker evidence export, check    the evidence package, from the database
  login.py        broker login, logout, whoami     sign in with the identity provider;
                                                   the session cache is _sessions.py

Each module has ``register(subparsers)``; its commands import what they need when they run,
so ``broker --help`` loads neither the server nor the embedded stack.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from broker.cli import (
    audit,
    dev,
    elevations,
    evidence,
    ledger,
    ledger_admin,
    login,
    offboarding,
    policy,
    reviews,
    server,
    ssh,
    tokens,
)

__all__ = ["build_parser", "main"]

# `broker --help` shows this, and lists the commands in the order of _GROUPS.
_DESCRIPTION = """\
The ``broker`` command: dev, serve, migrate, verify, token, policy check; and, as a
client of a running broker, login, logout, whoami, elevations, credentials, grants, ssh.

Exit codes: 0 success, 1 a check failed (verify found tampering, policy invalid) or the
broker refused a client command, 2 usage or configuration error, 3 broker unreachable.
"""

_GROUPS = (
    dev,
    server,
    ledger,
    ledger_admin,
    tokens,
    policy,
    login,
    elevations,
    ssh,
    audit,
    offboarding,
    reviews,
    evidence,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``broker`` command line: every group of ``_GROUPS``, registered in order."""
    p = argparse.ArgumentParser(prog="broker", description=_DESCRIPTION)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for group in _GROUPS:
        group.register(sub)
    return p


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Access logs carry paths only; never headers (tokens) or bodies.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``broker`` command; return its exit code (see the description above)."""
    from asyncpg import PostgresError

    from broker.errors import BrokerError, PolicyError
    from broker.settings import SettingsError

    args = build_parser().parse_args(argv)
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
