"""``broker reviews``: quarterly access reviews from the shell.

  broker reviews open --period 2026-Q1 --reviewer-group sre-leads   (admin)
  broker reviews list [--period 2026-Q1]
  broker reviews show ID                                            snapshot, decisions, items
  broker reviews decide ID ENTITLEMENT keep|revoke [--comment TEXT] (reviewer; revoke: comment)
  broker reviews complete ID                                        (reviewer)

ID may be a unique prefix of a visible review's id. Connection options and exit codes are
those of the other client commands (``broker.cli``).
"""

from __future__ import annotations

import argparse
import urllib.parse
import uuid
from typing import Any

from broker import cli_client as _cli
from broker.client import BrokerClient, BrokerError

__all__ = ["add_commands"]

# broker/client.py is shared by the parts of issue #4; its generic ``_call`` is used here
# instead of adding one method per review endpoint to it.


def _path(review_id: str, suffix: str = "") -> str:
    return f"/v1/reviews/{urllib.parse.quote(review_id, safe='')}{suffix}"


def _resolve(client: BrokerClient, given: str) -> str:
    """A full id, or the one visible review whose id starts with ``given``."""
    try:
        return str(uuid.UUID(given))
    except ValueError:
        pass
    if len(given) < 4:
        return given  # the broker answers not found
    items = client._call("GET", "/v1/reviews", query={"limit": "500"}).get("reviews") or []
    matches = [str(r["id"]) for r in items if str(r.get("id", "")).startswith(given.lower())]
    if len(matches) > 1:
        raise _cli.ClientUsage(f"{given!r} matches several reviews: give more of the ID")
    if not matches:
        raise BrokerError(
            404, "review_not_found", f"no review visible to you starts with {given!r}"
        )
    return matches[0]


def _progress(r: dict[str, Any]) -> str:
    p = r.get("progress") or {}
    return f"{p.get('decided', 0)}/{p.get('entitlements', 0)}"


def _describe(r: dict[str, Any]) -> str:
    c = _cli.cell
    lines = [
        f"review:     {c(r.get('id'))}",
        f"period:     {c(r.get('period'))}"
        f" ({_cli.when(r.get('period_start'))} .. {_cli.when(r.get('period_end'))})",
        f"status:     {c(r.get('status'))}, decided {_progress(r)}",
        f"reviewers:  {c(r.get('reviewer_group'))}",
        f"opened:     by {c(r.get('opened_by'))} at {_cli.when(r.get('opened_at'))}",
        f"policy:     {c(r.get('policy_version'))}",
    ]
    if r.get("completed_at"):
        lines.append(
            f"completed:  by {c(r.get('completed_by'))} at {_cli.when(r.get('completed_at'))}"
        )
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
        lines += ["", _cli.table(["ENTITLEMENT", "PRIV", "DECISION", "BY", "COMMENT"], rows)]
    usage = [
        [
            c(u.get("subject"), 40),
            c(u.get("secret")),
            c(u.get("role")),
            c(u.get("grants")),
            _cli.when(u.get("last_used")),
        ]
        for u in r.get("usage") or []
    ]
    if usage:
        lines += ["", _cli.table(["SUBJECT", "SECRET", "ROLE", "GRANTS", "LAST USED"], usage)]
    items = [
        [
            c(i.get("entitlement_id"), 60),
            c(i.get("status")),
            c(i.get("resolved_by_version")),
        ]
        for i in r.get("action_items") or []
    ]
    if items:
        lines += ["", _cli.table(["ACTION ITEM (revoke)", "STATUS", "RESOLVED BY"], items)]
    return "\n".join(lines)


def _show_result(r: dict[str, Any], args: argparse.Namespace, headline: str) -> int:
    if args.json:
        _cli.print_json(r)
    else:
        print(headline)
    return 0


def _open(client: BrokerClient, args: argparse.Namespace) -> int:
    body = {"period": args.period, "reviewer_group": args.reviewer_group}
    r = client._call("POST", "/v1/reviews", body=body)
    return _show_result(
        r,
        args,
        f"review {r.get('id')} of {_cli.cell(r.get('period'))} opened:"
        f" {len(r.get('entitlements') or [])} entitlements for"
        f" {_cli.cell(r.get('reviewer_group'))} to decide\n"
        f"a reviewer runs: broker reviews show {_cli.short(r.get('id'))}",
    )


def _list(client: BrokerClient, args: argparse.Namespace) -> int:
    query = {"period": args.period} if args.period else None
    items = list(client._call("GET", "/v1/reviews", query=query).get("reviews") or [])
    if args.json:
        _cli.print_json({"reviews": items})
        return 0
    if not items:
        print("no reviews")
        return 0
    headers = ["ID", "PERIOD", "STATUS", "REVIEWERS", "DECIDED", "OPEN ITEMS", "OPENED"]
    rows = [
        [
            _cli.short(r.get("id")),
            _cli.cell(r.get("period")),
            _cli.cell(r.get("status")),
            _cli.cell(r.get("reviewer_group")),
            _progress(r),
            _cli.cell(r.get("open_action_items")),
            _cli.when(r.get("opened_at")),
        ]
        for r in items
    ]
    print(_cli.table(headers, rows))
    return 0


def _show(client: BrokerClient, args: argparse.Namespace) -> int:
    r = client._call("GET", _path(_resolve(client, args.id)))
    return _show_result(r, args, _describe(r))


def _decide(client: BrokerClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"entitlement_id": args.entitlement, "decision": args.decision}
    if args.comment:
        body["comment"] = args.comment
    r = client._call("POST", _path(_resolve(client, args.id), "/decisions"), body=body)
    return _show_result(
        r,
        args,
        f"{args.decision} {_cli.cell(args.entitlement)}: decided {_progress(r)}",
    )


def _complete(client: BrokerClient, args: argparse.Namespace) -> int:
    r = client._call("POST", _path(_resolve(client, args.id), "/complete"))
    return _show_result(
        r,
        args,
        f"review {_cli.short(r.get('id'))} of {_cli.cell(r.get('period'))} completed;"
        f" {_cli.cell(r.get('open_action_items'))} open action item(s)",
    )


def add_commands(sub: Any) -> None:
    """Register ``reviews`` (open, list, show, decide, complete) on the top-level parsers."""
    conn = _cli.connection_options()
    reviews = sub.add_parser("reviews", help="quarterly access reviews")
    rsub = reviews.add_subparsers(dest="reviews_command", required=True)

    def leaf(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = rsub.add_parser(name, parents=[conn], help=help_text)
        p.set_defaults(func=_cli.client_command, client_func=func)
        return p

    p = leaf("open", _open, "open a review of a quarter (admin)")
    p.add_argument("--period", required=True, help="e.g. 2026-Q1")
    p.add_argument("--reviewer-group", required=True, help="the group whose members decide")
    p = leaf("list", _list, "reviews you may see")
    p.add_argument("--period", help="e.g. 2026-Q1")
    p = leaf("show", _show, "one review: entitlements, usage, decisions, action items")
    p.add_argument("id", help="ID or a unique prefix of it")
    p = leaf("decide", _decide, "keep or revoke one entitlement (reviewer)")
    p.add_argument("id", help="ID or a unique prefix of it")
    p.add_argument("entitlement", help="entitlement id, e.g. engineering/group:engineering")
    p.add_argument("decision", choices=["keep", "revoke"])
    p.add_argument("--comment", help="required for revoke")
    p = leaf("complete", _complete, "complete a review once every entitlement is decided")
    p.add_argument("id", help="ID or a unique prefix of it")
