"""Client commands: elevations, credentials and grants against a running broker.

They talk HTTP with a bearer token (``broker.client``). Exit codes: 0 ok, 1 the broker
refused (its error code is printed), 2 usage/configuration, 3 broker unreachable. The
connection options and output helpers here are shared by every client command module
(``cli_audit``, ``cli_offboarding``, ``cli_reviews``, ``cli_continuity``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "ClientUsage",
    "add_client_commands",
    "cell",
    "client_command",
    "connection_options",
    "print_json",
    "short",
    "table",
    "when",
]


class ClientUsage(Exception):
    """Missing or unusable connection settings (exit 2)."""


def _load_dev_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ClientUsage(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ClientUsage(f"{path} is not a JSON object")
    return data


def _connect(args: argparse.Namespace) -> Any:
    """A ``BrokerClient`` from --url/--token/--as, the environment, and ``.broker/dev.json``."""
    from broker.client import BrokerClient

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
    try:
        return BrokerClient(url, token, timeout=args.timeout)
    except ValueError as e:
        raise ClientUsage(str(e)) from None


def client_command(args: argparse.Namespace) -> int:
    from broker.client import BrokerError, BrokerUnreachable

    try:
        return int(args.client_func(_connect(args), args))
    except ClientUsage as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokerError as e:
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return 1
    except BrokerUnreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return 3


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def cell(value: Any, width: int | None = None) -> str:
    """Display text: no control characters (other people's reasons reach this terminal)."""
    text = "-" if value is None or value == "" else str(value)
    text = "".join(c if c.isprintable() else " " for c in text)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def when(value: Any) -> str:
    from datetime import UTC, datetime

    if not isinstance(value, str):
        return "-"
    try:
        return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except ValueError:
        return cell(value)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [headers, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def short(value: Any) -> str:
    return str(value)[:8]


def _votes(el: dict[str, Any]) -> str:
    if el.get("break_glass"):
        return "break-glass"  # taken without approval by design; reviewed afterwards
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
        f"secret:     {cell(el.get('secret'))} (role {cell(el.get('role'))})",
        f"requester:  {cell(el.get('requester'))}",
        f"reason:     {cell(el.get('reason'))}",
        f"ticket:     {cell(el.get('ticket'))}",
        f"duration:   {format_duration(int(el.get('duration') or 0))}",
        f"requested:  {when(el.get('requested_at'))}",
        f"expires:    {when(el.get('expires_at'))} (if undecided)",
        f"approvals:  {_votes(el)} (needs {_needs(el) or '-'})",
    ]
    for v in el.get("approvals") or []:
        comment = f": {cell(v.get('comment'))}" if v.get("comment") else ""
        lines.append(f"  - {cell(v.get('approver'))} at {when(v.get('at'))}{comment}")
    if el.get("approved_at"):
        lines.append(
            f"window:     {when(el.get('approved_at'))} to {when(el.get('window_ends_at'))}"
        )
    closed = el.get("closed")
    if closed:
        event = str(closed.get("event", "")).removeprefix("elevation.")
        note = closed.get("comment") or closed.get("why")
        lines.append(
            f"closed:     {event} by {cell(closed.get('by'))} at {when(closed.get('at'))}"
            + (f": {cell(note)}" if note else "")
        )
    review = el.get("review")
    if review:
        lines.append(
            f"review:     by {cell(review.get('by'))} at {when(review.get('at'))}: "
            f"{cell(review.get('comment'))}"
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
        raise ClientUsage(f"{given!r} matches several {kind}s: give more of the ID")
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
        print_json(el)
    elif el.get("status") == "approved":
        print(
            f"elevation {el['id']} {_status(el)}: window ends {when(el.get('window_ends_at'))}\n"
            f"fetch with: broker elevations credentials {short(el['id'])}"
        )
    else:
        print(
            f"elevation {el['id']} {_status(el)}: needs {_needs(el)};"
            f" request expires {when(el.get('expires_at'))}\n"
            f"an approver runs: broker elevations approve {short(el['id'])}"
        )
    return 0


def _el_list(client: Any, args: argparse.Namespace) -> int:
    items = client.list_elevations(
        status=args.status, unreviewed_break_glass=args.unreviewed_break_glass
    )
    if args.json:
        print_json({"elevations": items})
        return 0
    if not items:
        print("no elevations")
        return 0
    headers = ["ID", "STATUS", "SECRET", "REQUESTER", "REASON", "APPROVALS", "EXPIRES"]
    rows = [
        [
            short(el.get("id")),
            cell(_status(el)),
            cell(el.get("secret")),
            cell(el.get("requester")),
            cell(el.get("reason"), 40),
            _votes(el),
            when(_deadline(el)),
        ]
        for el in items
    ]
    print(table(headers, rows))
    return 0


def _el_show(client: Any, args: argparse.Namespace) -> int:
    el = client.get_elevation(_resolve(client, args.id, "elevation"))
    if args.json:
        print_json(el)
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
        print_json(el)
    else:
        extra = f", window ends {when(el.get('window_ends_at'))}" if el.get("approved_at") else ""
        print(
            f"{verb} elevation {short(el.get('id'))}: now {_status(el)},"
            f" approvals {_votes(el)}{extra}"
        )
    return 0


def _el_credentials(client: Any, args: argparse.Namespace) -> int:
    # The grant carries the credential: it goes to stdout only, never to a log.
    print_json(client.redeem_elevation(_resolve(client, args.id, "elevation"), ttl=args.ttl))
    return 0


def _credentials_get(client: Any, args: argparse.Namespace) -> int:
    print_json(
        client.issue_credentials(args.secret, ttl=args.ttl, reason=args.reason, ticket=args.ticket)
    )
    return 0


def _grants_list(client: Any, args: argparse.Namespace) -> int:
    grants = client.list_grants(active=args.active)
    if args.json:
        print_json({"grants": grants})
        return 0
    if not grants:
        print("no grants")
        return 0
    headers = ["ID", "STATUS", "SECRET", "ROLE", "ISSUED", "EXPIRES"]
    rows = [
        [
            short(g.get("id")),
            cell(g.get("status")),
            cell(g.get("secret")),
            cell(g.get("role")),
            when(g.get("issued_at")),
            when(g.get("expires_at")),
        ]
        for g in grants
    ]
    print(table(headers, rows))
    return 0


def _grants_revoke(client: Any, args: argparse.Namespace) -> int:
    g = client.revoke_grant(_resolve(client, args.id, "grant"), reason=args.reason)
    if args.json:
        print_json(g)
    else:
        print(
            f"revoked grant {short(g.get('id'))} ({cell(g.get('secret'))})"
            f" at {when(g.get('ended_at'))}"
        )
    return 0


def connection_options() -> argparse.ArgumentParser:
    """The options every client command takes (a parent parser): read by ``connect``."""
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", help="broker URL (default: $BROKER_URL, else .broker/dev.json)")
    who = conn.add_mutually_exclusive_group()
    who.add_argument("--token", help="bearer token (default: $BROKER_TOKEN; prefer the env)")
    who.add_argument("--as", dest="as_name", metavar="NAME", help="dev: tokens[NAME] of dev.json")
    conn.add_argument("--dev-json", metavar="PATH", help="default: .broker/dev.json")
    conn.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    conn.add_argument("--json", action="store_true", help="print the broker's JSON")
    return conn


def add_client_commands(sub: Any) -> None:
    conn = connection_options()

    def leaf(parent: Any, name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, parents=[conn], help=help_text)
        p.set_defaults(func=client_command, client_func=func)
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
