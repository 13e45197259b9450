"""``broker reviews``: quarterly access reviews from the shell.

  broker reviews open --period 2026-Q1 --reviewer-group sre-leads   (admin)
  broker reviews list [--period 2026-Q1]
  broker reviews show ID                                            snapshot, decisions, items
  broker reviews decide ID ENTITLEMENT keep|revoke [--comment TEXT] (reviewer; revoke: comment)
  broker reviews complete ID                                        (reviewer)

ID may be a unique prefix of a visible review's id. Connection options and exit codes:
``broker.cli._connection``.
"""

from __future__ import annotations

import argparse
from typing import Any

from broker.cli._connection import ID_HELP, ClientCommand, add_client_command, resolve_id
from broker.cli._output import cell, print_json, short, table, when
from broker.cli.client import BrokerClient

__all__ = ["register"]

# The most reviews a short ID is looked up among (the newest first, as the broker lists).
_RESOLVE_LIMIT = 500


def _review_id(client: BrokerClient, given: str) -> str:
    return resolve_id(given, "review", lambda: client.list_reviews(limit=_RESOLVE_LIMIT))


def _progress(r: dict[str, Any]) -> str:
    p = r.get("progress") or {}
    return f"{p.get('decided', 0)}/{p.get('entitlements', 0)}"


def _describe(r: dict[str, Any]) -> str:
    c = cell
    lines = [
        f"review:     {c(r.get('id'))}",
        f"period:     {c(r.get('period'))}"
        f" ({when(r.get('period_start'))} .. {when(r.get('period_end'))})",
        f"status:     {c(r.get('status'))}, decided {_progress(r)}",
        f"reviewers:  {c(r.get('reviewer_group'))}",
        f"opened:     by {c(r.get('opened_by'))} at {when(r.get('opened_at'))}",
        f"policy:     {c(r.get('policy_version'))}",
    ]
    if r.get("completed_at"):
        lines.append(f"completed:  by {c(r.get('completed_by'))} at {when(r.get('completed_at'))}")
    if r.get("entitlements_truncated") or r.get("usage_truncated"):
        lines.append("NOTE:       the snapshot was truncated at its cap")
    rows = []
    for e in r.get("entitlements") or []:
        d = e.get("decision") or {}
        rows.append(
            [
                c(e.get("id"), 60),
                "yes" if e.get("privileged") else "",
                c(d.get("decision")),
                c(d.get("by")),
                c(d.get("comment"), 40),
            ]
        )
    if rows:
        lines += ["", table(["ENTITLEMENT", "PRIV", "DECISION", "BY", "COMMENT"], rows)]
    usage = [
        [
            c(u.get("subject"), 40),
            c(u.get("secret")),
            c(u.get("role")),
            c(u.get("grants")),
            when(u.get("last_used")),
        ]
        for u in r.get("usage") or []
    ]
    if usage:
        lines += ["", table(["SUBJECT", "SECRET", "ROLE", "GRANTS", "LAST USED"], usage)]
    items = [
        [
            c(i.get("entitlement_id"), 60),
            c(i.get("status")),
            c(i.get("resolved_by_version")),
        ]
        for i in r.get("action_items") or []
    ]
    if items:
        lines += ["", table(["ACTION ITEM (revoke)", "STATUS", "RESOLVED BY"], items)]
    return "\n".join(lines)


def _show_result(r: dict[str, Any], args: argparse.Namespace, headline: str) -> int:
    if args.json:
        print_json(r)
    else:
        print(headline)
    return 0


def _open(client: BrokerClient, args: argparse.Namespace) -> int:
    r = client.open_review(period=args.period, reviewer_group=args.reviewer_group)
    return _show_result(
        r,
        args,
        f"review {r.get('id')} of {cell(r.get('period'))} opened:"
        f" {len(r.get('entitlements') or [])} entitlements for"
        f" {cell(r.get('reviewer_group'))} to decide\n"
        f"a reviewer runs: broker reviews show {short(r.get('id'))}",
    )


def _list(client: BrokerClient, args: argparse.Namespace) -> int:
    items = client.list_reviews(period=args.period or None)
    if args.json:
        print_json({"reviews": items})
        return 0
    if not items:
        print("no reviews")
        return 0
    headers = ["ID", "PERIOD", "STATUS", "REVIEWERS", "DECIDED", "OPEN ITEMS", "OPENED"]
    rows = [
        [
            short(r.get("id")),
            cell(r.get("period")),
            cell(r.get("status")),
            cell(r.get("reviewer_group")),
            _progress(r),
            cell(r.get("open_action_items")),
            when(r.get("opened_at")),
        ]
        for r in items
    ]
    print(table(headers, rows))
    return 0


def _show(client: BrokerClient, args: argparse.Namespace) -> int:
    r = client.get_review(_review_id(client, args.id))
    return _show_result(r, args, _describe(r))


def _decide(client: BrokerClient, args: argparse.Namespace) -> int:
    r = client.decide_review(
        _review_id(client, args.id),
        entitlement_id=args.entitlement,
        decision=args.decision,
        comment=args.comment or None,
    )
    return _show_result(
        r,
        args,
        f"{args.decision} {cell(args.entitlement)}: decided {_progress(r)}",
    )


def _complete(client: BrokerClient, args: argparse.Namespace) -> int:
    r = client.complete_review(_review_id(client, args.id))
    return _show_result(
        r,
        args,
        f"review {short(r.get('id'))} of {cell(r.get('period'))} completed;"
        f" {cell(r.get('open_action_items'))} open action item(s)",
    )


def register(sub: Any) -> None:
    """Add ``reviews`` (open, list, show, decide, complete) to the top-level subparsers."""
    reviews = sub.add_parser("reviews", help="quarterly access reviews")
    rsub = reviews.add_subparsers(dest="reviews_command", required=True)

    def leaf(name: str, func: ClientCommand, help_text: str) -> argparse.ArgumentParser:
        return add_client_command(rsub, name, func, help_text)

    p = leaf("open", _open, "open a review of a quarter (admin)")
    p.add_argument("--period", required=True, help="e.g. 2026-Q1")
    p.add_argument("--reviewer-group", required=True, help="the group whose members decide")
    p = leaf("list", _list, "reviews you may see")
    p.add_argument("--period", help="e.g. 2026-Q1")
    p = leaf("show", _show, "one review: entitlements, usage, decisions, action items")
    p.add_argument("id", help=ID_HELP)
    p = leaf("decide", _decide, "keep or revoke one entitlement (reviewer)")
    p.add_argument("id", help=ID_HELP)
    p.add_argument("entitlement", help="entitlement id, e.g. engineering/group:engineering")
    p.add_argument("decision", choices=["keep", "revoke"])
    p.add_argument("--comment", help="required for revoke")
    p = leaf("complete", _complete, "complete a review once every entitlement is decided")
    p.add_argument("id", help=ID_HELP)
