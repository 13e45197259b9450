"""What every client command shares: connection options, running it, short-ID lookup.

A client command is a function ``(client, args) -> exit code`` registered with
``add_client_command``; ``run_client_command`` connects, calls it, and maps the client's
errors to exit codes: 0 ok, 1 the broker refused (its error code is printed), 2 usage or
configuration (also: the signed-in session has ended), 3 broker unreachable. A refusal
with a short ``Retry-After`` (a quota, a busy engine) is waited out and retried once by
the client, with a note on stderr; a longer one is printed with when to retry.

Where the connection comes from, first match wins:

- the broker URL: ``--url``, then ``$BROKER_URL``, then ``url`` of ``.broker/dev.json``
  (``--dev-json``);
- the token: ``--as NAME`` (``tokens[NAME]`` of dev.json) or ``--token``, then
  ``$BROKER_TOKEN``, then the session ``broker login`` cached for that URL
  (``broker.cli._sessions``). Explicit flags and the environment always win, so
  automation that sets ``BROKER_TOKEN`` never picks up a person's session;
- the CA for an https broker: ``--cacert``, then ``$BROKER_CACERT``, then ``ca_cert`` of
  dev.json, else the system's.

A cached session is renewed first (``POST /v1/auth/session/renew``, the cache updated)
when less than a third of its lifetime is left. If the broker refuses the renewal, or
answers 401 to the command itself, the session has ended: the entry is dropped and the
command exits 2 with "session expired: run `broker login`". A renewal that fails for
another reason (the provider is down) leaves the session as it is while it is valid. A
session whose provider gave no refresh token is used until it expires, not renewed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker.cli._output import when
from broker.cli._sessions import SessionCache, needs_renewal, parse_time
from broker.cli.client import BrokerClient, BrokerHTTPError, BrokerUnreachable

__all__ = [
    "ID_HELP",
    "MIN_ID_PREFIX",
    "ClientCommand",
    "ClientUsage",
    "SessionEnded",
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


class SessionEnded(Exception):
    """The cached session expired or was refused: sign in again (exit 2)."""


@dataclass(frozen=True)
class CachedSession:
    """The token came from the session cache: where, and the entry it came from."""

    cache: SessionCache
    url: str
    entry: dict[str, Any]

    @property
    def token(self) -> str:
        return str(self.entry["token"])


def _connection_options(*, identity: bool = True) -> argparse.ArgumentParser:
    """The options every client command takes (a parent parser): read by ``_connect``.

    ``identity=False`` (``broker login``): no --token/--as, the command signs in itself."""
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", help="broker URL (default: $BROKER_URL, else .broker/dev.json)")
    if identity:
        who = conn.add_mutually_exclusive_group()
        who.add_argument(
            "--token",
            help="bearer token (default: $BROKER_TOKEN, else the `broker login` session;"
            " prefer the env)",
        )
        who.add_argument(
            "--as", dest="as_name", metavar="NAME", help="dev: tokens[NAME] of dev.json"
        )
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
    subparsers: Any,
    name: str,
    func: ClientCommand,
    help_text: str,
    *,
    anonymous: bool = False,
    renew: bool = True,
) -> argparse.ArgumentParser:
    """Add ``name`` with the connection options; running it calls ``func(client, args)``.

    ``anonymous``: the client has no token (the public sign-in calls); ``renew=False``: a
    cached session is used as it is (``broker logout``), and its 401 is the command's."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        name, parents=[_connection_options(identity=not anonymous)], help=help_text
    )
    p.set_defaults(
        func=run_client_command, client_func=func, anonymous=anonymous, renew_session=renew
    )
    return p


def _load_dev_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ClientUsage(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ClientUsage(f"{path} is not a JSON object")
    return data


def _connect(args: argparse.Namespace) -> tuple[BrokerClient, CachedSession | None]:
    """A ``BrokerClient`` from --url/--token/--as, the environment, the session cache and
    ``.broker/dev.json`` (the module docstring gives the order), and the cached session
    when the token came from there."""
    dev_path = Path(args.dev_json or ".broker/dev.json")
    if args.dev_json and not dev_path.exists():
        raise ClientUsage(f"{dev_path} not found")
    dev = _load_dev_json(dev_path) if dev_path.exists() else None
    as_name = getattr(args, "as_name", None)
    token: str | None = None
    if getattr(args, "anonymous", False):
        pass
    elif as_name is not None:
        if dev is None:
            raise ClientUsage(f"--as needs {dev_path} (written by `broker dev`)")
        known = dev.get("tokens")
        if not isinstance(known, dict):
            known = {}
        token = known.get(as_name)
        if not isinstance(token, str):
            names = ", ".join(sorted(known)) or "none"
            raise ClientUsage(f"no token for {as_name!r} in {dev_path} (known: {names})")
    else:
        token = getattr(args, "token", None) or os.environ.get("BROKER_TOKEN")
    url = args.url or os.environ.get("BROKER_URL") or (dev or {}).get("url")
    if not url or not isinstance(url, str):
        raise ClientUsage(
            "no broker URL: pass --url, set BROKER_URL,"
            " or run `broker dev` (it writes .broker/dev.json)"
        )
    cached = None
    if not token and not getattr(args, "anonymous", False):
        cache = SessionCache()
        entry = cache.get(url)
        if entry is not None:
            cached = CachedSession(cache, url, entry)
            token = cached.token
        else:
            raise ClientUsage(
                f"no token: run `broker login` (for {url.rstrip('/')}), pass --token,"
                " set BROKER_TOKEN, or use --as NAME (dev)"
            )
    cafile = args.cacert or os.environ.get("BROKER_CACERT") or (dev or {}).get("ca_cert")
    try:
        client = BrokerClient(
            url,
            token,
            timeout=args.timeout,
            cafile=Path(cafile) if cafile else None,
            on_wait=_say_waiting,
        )
        return client, cached
    except ValueError as e:
        raise ClientUsage(str(e)) from None


def _say_waiting(refused: BrokerHTTPError) -> None:
    # stderr: stdout may be JSON a script reads.
    print(
        f"note: {refused.code}: the broker asks to retry in {refused.retry_after} s;"
        " waiting, then trying once more",
        file=sys.stderr,
    )


def _fresh(client: BrokerClient, cached: CachedSession) -> BrokerClient:
    """The client with a session that is good for a while yet: renewed first when less
    than a third of its lifetime is left. Raises ``SessionEnded`` (the entry dropped)
    when the session is over or the broker refuses to renew it."""
    cache, url = cached.cache, cached.url
    with cache.locked():
        # Another command may have renewed (or ended) it since we read the cache.
        entry = cache.get(url)
        if entry is None:
            raise SessionEnded()
        token = str(entry["token"])
        client = client.with_token(token)
        now = datetime.now(UTC)
        expires = parse_time(entry.get("expires_at"))
        max_expires = parse_time(entry.get("max_expires_at"))
        valid = expires is not None and now < expires
        if max_expires is not None and now >= max_expires:
            cache.drop(url, token=token)
            raise SessionEnded()
        if entry.get("renewable") is False or not needs_renewal(entry, now):
            return client
        try:
            answer = client.renew_session()
        except BrokerHTTPError as e:
            if e.status == 401 and e.code == "reauthentication_required" and valid:
                # No refresh token at the provider: use it to its end, then sign in again.
                cache.mark(url, renewable=False)
                ends = when(entry.get("expires_at"))
                print(f"note: this session cannot be renewed; it ends {ends}", file=sys.stderr)
                return client
            if e.status == 401 or not valid:
                cache.drop(url, token=token)
                raise SessionEnded() from None
            print(
                f"warning: could not renew the session ({e.code}: {e.message});"
                f" it still ends {when(entry.get('expires_at'))}",
                file=sys.stderr,
            )
            return client
        cache.store_renewal(url, token, answer)
        return client


def run_client_command(args: argparse.Namespace) -> int:
    """Connect, run ``args.client_func``, and turn the client's errors into exit codes."""
    cached = None
    try:
        client, cached = _connect(args)
        if cached is not None and args.renew_session:
            client = _fresh(client, cached)
        return int(args.client_func(client, args))
    except ClientUsage as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SessionEnded:
        print("error: session expired: run `broker login`", file=sys.stderr)
        return 2
    except BrokerHTTPError as e:
        if cached is not None and args.renew_session and e.status == 401:
            # The cached session was revoked or expired at the broker (an offboarding,
            # a logout elsewhere): it will not work again.
            cached.cache.drop(cached.url, token=cached.token)
            print(
                f"error: session expired: run `broker login` ({e.code}: {e.message})",
                file=sys.stderr,
            )
            return 2
        # str(e): code, message and, when the broker said when, "retry in N s (at ...)".
        print(f"error: {e}", file=sys.stderr)
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
