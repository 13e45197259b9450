"""``broker elevations``, ``broker credentials`` and ``broker grants``: step-up access and
credentials against a running broker.

  broker elevations request SECRET --reason TEXT [--ticket T] [--duration D] [--break-glass]
                                  [--principal NAME ...]
  broker elevations list|show|approve|deny|cancel|review|credentials ...
  broker credentials get SECRET [--ttl D] [--reason TEXT] [--ticket T]
  broker grants list [--active] | revoke ID [--reason TEXT]

IDs may be a unique prefix of a visible elevation's or grant's ID (the tables show eight
characters). Connection options and exit codes: ``broker.cli._connection``.
"""

from __future__ import annotations

import argparse
from typing import Any

from broker.cli._connection import ID_HELP, add_client_command, resolve_id
from broker.cli._output import cell, print_json, short, table, when
from broker.cli.client import BrokerClient

__all__ = ["pending_summary", "register"]


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


def pending_summary(el: dict[str, Any]) -> str:
    """Two lines on a new, pending request: what it needs, and the approver's command."""
    return (
        f"elevation {el['id']} {_status(el)}: needs {_needs(el)};"
        f" request expires {when(el.get('expires_at'))}\n"
        f"an approver runs: broker elevations approve {short(el['id'])}"
    )


def _elevation_id(client: BrokerClient, given: str) -> str:
    return resolve_id(given, "elevation", client.list_elevations)


def _grant_id(client: BrokerClient, given: str) -> str:
    return resolve_id(given, "grant", client.list_grants)


def _el_request(client: BrokerClient, args: argparse.Namespace) -> int:
    el = client.request_elevation(
        args.secret,
        reason=args.reason,
        ticket=args.ticket,
        duration=args.duration,
        break_glass=args.break_glass,
        principals=args.principal or None,
    )
    if args.json:
        print_json(el)
    elif el.get("status") == "approved":
        print(
            f"elevation {el['id']} {_status(el)}: window ends {when(el.get('window_ends_at'))}\n"
            f"fetch with: broker elevations credentials {short(el['id'])}"
        )
    else:
        print(pending_summary(el))
    return 0


def _el_list(client: BrokerClient, args: argparse.Namespace) -> int:
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


def _el_show(client: BrokerClient, args: argparse.Namespace) -> int:
    el = client.get_elevation(_elevation_id(client, args.id))
    if args.json:
        print_json(el)
    else:
        print(_describe_elevation(el))
    return 0


def _el_decide(client: BrokerClient, args: argparse.Namespace) -> int:
    action = {
        "approve": (client.approve_elevation, "approved"),
        "deny": (client.deny_elevation, "denied"),
        "cancel": (client.cancel_elevation, "cancelled"),
        "review": (client.review_elevation, "reviewed"),
    }
    call, verb = action[args.elevation_command]
    el = call(_elevation_id(client, args.id), args.comment)
    if args.json:
        print_json(el)
    else:
        extra = f", window ends {when(el.get('window_ends_at'))}" if el.get("approved_at") else ""
        print(
            f"{verb} elevation {short(el.get('id'))}: now {_status(el)},"
            f" approvals {_votes(el)}{extra}"
        )
    return 0


def _el_credentials(client: BrokerClient, args: argparse.Namespace) -> int:
    # The grant carries the credential: it goes to stdout only, never to a log.
    print_json(client.redeem_elevation(_elevation_id(client, args.id), ttl=args.ttl))
    return 0


def _credentials_get(client: BrokerClient, args: argparse.Namespace) -> int:
    print_json(
        client.issue_credentials(args.secret, ttl=args.ttl, reason=args.reason, ticket=args.ticket)
    )
    return 0


def _grants_list(client: BrokerClient, args: argparse.Namespace) -> int:
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


def _grants_revoke(client: BrokerClient, args: argparse.Namespace) -> int:
    g = client.revoke_grant(_grant_id(client, args.id), reason=args.reason)
    if args.json:
        print_json(g)
    else:
        print(
            f"revoked grant {short(g.get('id'))} ({cell(g.get('secret'))})"
            f" at {when(g.get('ended_at'))}"
        )
    return 0


def register(sub: Any) -> None:
    """Add ``elevations``, ``credentials`` and ``grants`` to the top-level subparsers."""
    leaf = add_client_command
    els = sub.add_parser("elevations", help="request, list and decide step-up elevations")
    esub = els.add_subparsers(dest="elevation_command", required=True)
    p = leaf(esub, "request", _el_request, "ask for elevated access to a privileged secret")
    p.add_argument("secret")
    p.add_argument("--reason", required=True)
    p.add_argument("--ticket")
    p.add_argument("--duration", help="e.g. 30m (default and maximum: the role's)")
    p.add_argument("--break-glass", action="store_true", help="emergency: no approver, reviewed")
    p.add_argument(
        "--principal",
        action="append",
        default=[],
        metavar="NAME",
        help="ssh secrets: a principal the elevation is for; repeat for more",
    )
    p = leaf(esub, "list", _el_list, "elevations you requested or may decide")
    p.add_argument(
        "--status", choices=["pending", "approved", "denied", "cancelled", "expired", "ended"]
    )
    p.add_argument("--unreviewed-break-glass", action="store_true")
    p = leaf(esub, "show", _el_show, "one elevation in full")
    p.add_argument("id", help=ID_HELP)
    for name, needs_comment, text in (
        ("approve", False, "approve a pending request"),
        ("deny", True, "deny a pending request"),
        ("cancel", False, "withdraw your request (or end it, as admin)"),
        ("review", True, "review a break-glass use"),
    ):
        p = leaf(esub, name, _el_decide, text)
        p.add_argument("id", help=ID_HELP)
        p.add_argument("--comment", required=needs_comment)
    p = leaf(esub, "credentials", _el_credentials, "fetch the credential of an approved request")
    p.add_argument("id", help=ID_HELP)
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
    p.add_argument("id", help=ID_HELP)
    p.add_argument("--reason")
