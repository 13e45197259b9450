"""``broker audit access`` and ``broker audit events``: the auditor's questions from the shell.

  broker audit access [--subject S] [--secret X] --from DATE --to DATE   access windows
  broker audit events [--subject S] [--secret X] [--type T,...] [--from] [--to] [--cursor N]

``access`` follows every page (the period bounds it); ``events`` prints one page and, when
there are more, the ``--cursor`` to continue with (on stderr). Connection options and exit
codes are those of the other client commands (``broker.cli``). Other ``broker audit``
subcommands register through ``audit_subcommands(sub)``, which creates the group once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from broker import cli_client as _cli
from broker.client import BrokerClient

__all__ = ["add_commands", "audit_subcommands"]

_MAX_PAGES = 1000  # a runaway-loop guard: 1000 pages of 500 is far beyond any period


def _page(client: BrokerClient, path: str, query: dict[str, str | None]) -> dict[str, Any]:
    # BrokerClient has no audit methods yet; its _call is the one place HTTP happens.
    return client._call("GET", path, query={k: v for k, v in query.items() if v is not None})


def _elevation_line(el: dict[str, Any]) -> list[str]:
    kind = "break-glass" if el.get("break_glass") else "elevation"
    lines = [
        f"    {kind}:  requested {_cli.when(el.get('requested_at'))}"
        f" by {_cli.cell(el.get('requester'))}: {_cli.cell(el.get('reason'))}"
        f" [{_cli.cell(el.get('ticket'))}]"
    ]
    for a in el.get("approvals") or []:
        comment = f": {_cli.cell(a.get('comment'))}" if a.get("comment") else ""
        lines.append(
            f"    approved:   by {_cli.cell(a.get('approver'))}"
            f" at {_cli.when(a.get('at'))}{comment}"
        )
    lines.append(
        f"    window:     {_cli.when(el.get('activated_at'))}"
        f" to {_cli.when(el.get('window_ends_at'))}"
    )
    return lines


def _describe_window(w: dict[str, Any]) -> str:
    ended = w.get("ended")
    if ended:
        by = f" by {_cli.cell(ended.get('by'))}" if ended.get("by") else ""
        why = f" ({_cli.cell(ended.get('reason'))})" if ended.get("reason") else ""
        end = f"{ended.get('how')} {_cli.when(ended.get('at'))}{by}{why}"
    else:
        end = f"open, expires {_cli.when(w.get('expires_at'))}"
    rule = w.get("rule") or {}
    lines = [
        f"{_cli.cell(w.get('subject'))} had {_cli.cell(w.get('secret'))}"
        f" from {_cli.when(w.get('issued_at'))}: {end}",
        f"    grant:      {_cli.cell(w.get('grant_id'))}",
        f"    role:       {_cli.cell(w.get('role'))} ({_cli.cell(rule.get('source'))},"
        f" policy {_cli.cell(w.get('policy_version'), 23)})",
        f"    reason:     {_cli.cell(w.get('reason'))} [{_cli.cell(w.get('ticket'))}]",
    ]
    if w.get("elevation"):
        lines.extend(_elevation_line(w["elevation"]))
    if rule.get("text"):
        lines.append("    rule:")
        lines.extend(f"      | {_cli.cell(t)}" for t in str(rule["text"]).splitlines())
    return "\n".join(lines)


def _access(client: BrokerClient, args: argparse.Namespace) -> int:
    query: dict[str, str | None] = {
        "subject": args.subject,
        "secret": args.secret,
        "from": args.since,
        "to": args.until,
        "limit": str(args.limit),
    }
    windows: list[dict[str, Any]] = []
    first: dict[str, Any] = {}
    for _ in range(_MAX_PAGES):
        page = _page(client, "/v1/audit/access", query)
        first = first or page
        windows.extend(page.get("access") or [])
        query["cursor"] = page.get("next_cursor")
        if not query["cursor"]:
            break
    if args.json:
        _cli.print_json({"from": first.get("from"), "to": first.get("to"), "access": windows})
        return 0
    period = f"{_cli.when(first.get('from'))} to {_cli.when(first.get('to'))}"
    if not windows:
        print(f"no access windows from {period}")
        return 0
    print(f"{len(windows)} access window(s) from {period}:\n")
    print("\n\n".join(_describe_window(w) for w in windows))
    return 0


def _events(client: BrokerClient, args: argparse.Namespace) -> int:
    page = _page(
        client,
        "/v1/audit/events",
        {
            "subject": args.subject,
            "secret": args.secret,
            "type": args.type,
            "from": args.since,
            "to": args.until,
            "cursor": args.cursor,
            "limit": str(args.limit),
        },
    )
    events = list(page.get("events") or [])
    if args.json:
        _cli.print_json(page)
    elif not events:
        print("no events")
    else:
        headers = ["SEQ", "TIME", "EVENT", "OUTCOME", "SUBJECT", "SECRET", "GRANT"]
        rows = [
            [
                str(e.get("seq")),
                _cli.when(e.get("recorded_at")),
                _cli.cell(e.get("event")),
                _cli.cell(e.get("outcome"), 20),
                _cli.cell(e.get("subject"), 30),
                _cli.cell(e.get("secret"), 30),
                _cli.short(e.get("grant_id") or "-"),
            ]
            for e in events
        ]
        print(_cli.table(headers, rows))
    if page.get("next_cursor"):
        print(f"more: add --cursor {page['next_cursor']}", file=sys.stderr)
    return 0


def audit_subcommands(sub: Any) -> Any:
    """The subparsers of ``broker audit``, creating the group on first use.

    Every module adding an ``audit`` subcommand calls this, in any order, so the group is
    registered once (argparse refuses a second parser of the same name).
    """
    parser = sub.choices.get("audit")
    if parser is None:
        parser = sub.add_parser("audit", help="auditor questions: access, events, and more")
        return parser.add_subparsers(dest="audit_command", required=True)
    # Registered by another part first: reuse its subparsers.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="audit_command", required=True)


def add_commands(sub: Any) -> None:
    """Register ``broker audit access`` and ``broker audit events``."""
    conn = _cli.connection_options()
    asub = audit_subcommands(sub)
    p = asub.add_parser(
        "access", parents=[conn], help="who had access to what, when and why (audit)"
    )
    p.add_argument("--subject", help="one subject (default: everyone)")
    p.add_argument("--secret", help="one catalog secret (default: all)")
    p.add_argument("--from", dest="since", required=True, help="date or ISO time (inclusive)")
    p.add_argument("--to", dest="until", required=True, help="date or ISO time (exclusive)")
    p.add_argument("--limit", type=int, default=200, help="page size (default 200)")
    p.set_defaults(func=_cli.client_command, client_func=_access)

    p = asub.add_parser("events", parents=[conn], help="raw ledger events, oldest first (audit)")
    p.add_argument("--subject")
    p.add_argument("--secret")
    p.add_argument("--type", help="event names, comma-separated (e.g. grant.issued)")
    p.add_argument("--from", dest="since", help="date or ISO time (inclusive)")
    p.add_argument("--to", dest="until", help="date or ISO time (exclusive)")
    p.add_argument("--cursor", help="continue after this seq (printed when there is more)")
    p.add_argument("--limit", type=int, default=100, help="events per page (default 100)")
    p.set_defaults(func=_cli.client_command, client_func=_events)
