"""``broker audit``: the auditor's questions from the shell.

  broker audit access [--subject S] [--secret X] --from DATE --to DATE   access windows
  broker audit events [--subject S] [--secret X] [--type T,...] [--from] [--to] [--cursor N]
  broker audit gaps --from 2026-01-01 [--to 2026-04-01]                  heartbeat gaps
  broker audit annotate-gap --from T1 --to T2 --note "DB failover, see INC-42"  (admin)

``access`` follows every page (the period bounds it); ``events`` prints one page and, when
there are more, the ``--cursor`` to continue with (on stderr). Times are ISO 8601; without
an offset they are UTC. Every subcommand but ``annotate-gap`` needs the audit capability.
Connection options and exit codes: ``broker.cli._connection``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from broker.cli._connection import add_client_command
from broker.cli._output import cell, print_json, short, table, when
from broker.cli.client import BrokerClient

__all__ = ["register"]

_MAX_PAGES = 1000  # a runaway-loop guard: 1000 pages of 500 is far beyond any period


def _elevation_line(el: dict[str, Any]) -> list[str]:
    kind = "break-glass" if el.get("break_glass") else "elevation"
    lines = [
        f"    {kind}:  requested {when(el.get('requested_at'))}"
        f" by {cell(el.get('requester'))}: {cell(el.get('reason'))}"
        f" [{cell(el.get('ticket'))}]"
    ]
    for a in el.get("approvals") or []:
        comment = f": {cell(a.get('comment'))}" if a.get("comment") else ""
        lines.append(
            f"    approved:   by {cell(a.get('approver'))} at {when(a.get('at'))}{comment}"
        )
    lines.append(
        f"    window:     {when(el.get('activated_at'))} to {when(el.get('window_ends_at'))}"
    )
    return lines


def _describe_window(w: dict[str, Any]) -> str:
    ended = w.get("ended")
    if ended:
        by = f" by {cell(ended.get('by'))}" if ended.get("by") else ""
        why = f" ({cell(ended.get('reason'))})" if ended.get("reason") else ""
        end = f"{ended.get('how')} {when(ended.get('at'))}{by}{why}"
    else:
        end = f"open, expires {when(w.get('expires_at'))}"
    rule = w.get("rule") or {}
    lines = [
        f"{cell(w.get('subject'))} had {cell(w.get('secret'))}"
        f" from {when(w.get('issued_at'))}: {end}",
        f"    grant:      {cell(w.get('grant_id'))}",
        f"    role:       {cell(w.get('role'))} ({cell(rule.get('source'))},"
        f" policy {cell(w.get('policy_version'), 23)})",
        f"    reason:     {cell(w.get('reason'))} [{cell(w.get('ticket'))}]",
    ]
    if w.get("elevation"):
        lines.extend(_elevation_line(w["elevation"]))
    if rule.get("text"):
        lines.append("    rule:")
        lines.extend(f"      | {cell(t)}" for t in str(rule["text"]).splitlines())
    return "\n".join(lines)


def _access(client: BrokerClient, args: argparse.Namespace) -> int:
    windows: list[dict[str, Any]] = []
    first: dict[str, Any] = {}
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        page = client.audit_access(
            period_from=args.since,
            period_to=args.until,
            subject=args.subject,
            secret=args.secret,
            limit=args.limit,
            cursor=cursor,
        )
        first = first or page
        windows.extend(page.get("access") or [])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    if args.json:
        print_json({"from": first.get("from"), "to": first.get("to"), "access": windows})
        return 0
    period = f"{when(first.get('from'))} to {when(first.get('to'))}"
    if not windows:
        print(f"no access windows from {period}")
        return 0
    print(f"{len(windows)} access window(s) from {period}:\n")
    print("\n\n".join(_describe_window(w) for w in windows))
    return 0


def _events(client: BrokerClient, args: argparse.Namespace) -> int:
    page = client.audit_events(
        subject=args.subject,
        secret=args.secret,
        types=args.type,
        period_from=args.since,
        period_to=args.until,
        cursor=args.cursor,
        limit=args.limit,
    )
    events = list(page.get("events") or [])
    if args.json:
        print_json(page)
    elif not events:
        print("no events")
    else:
        headers = ["SEQ", "TIME", "EVENT", "OUTCOME", "SUBJECT", "SECRET", "GRANT"]
        rows = [
            [
                str(e.get("seq")),
                when(e.get("recorded_at")),
                cell(e.get("event")),
                cell(e.get("outcome"), 20),
                cell(e.get("subject"), 30),
                cell(e.get("secret"), 30),
                short(e.get("grant_id") or "-"),
            ]
            for e in events
        ]
        print(table(headers, rows))
    if page.get("next_cursor"):
        print(f"more: add --cursor {page['next_cursor']}", file=sys.stderr)
    return 0


def _gaps(client: BrokerClient, args: argparse.Namespace) -> int:
    out = client.audit_gaps(period_from=args.start, period_to=args.end or None)
    if args.json:
        print_json(out)
        return 0
    gaps = out.get("gaps") or []
    if not gaps:
        print(f"no gaps between {out.get('from')} and {out.get('to')}")
        return 0
    rows = [
        [
            when(g.get("start")),
            when(g.get("end")),
            f"{float(g.get('duration_seconds') or 0):.0f}s",
            cell((g.get("annotation") or {}).get("remediation") or "UNANNOTATED", 50),
        ]
        for g in gaps
    ]
    print(table(["START", "END", "LENGTH", "ANNOTATION"], rows))
    return 0


def _annotate(client: BrokerClient, args: argparse.Namespace) -> int:
    out = client.annotate_gap(period_from=args.start, period_to=args.end, remediation=args.note)
    if args.json:
        print_json(out)
        return 0
    note = out.get("annotation") or {}
    print(f"annotated {note.get('from')} .. {note.get('to')} (ledger row {note.get('seq')})")
    return 0


def register(sub: Any) -> None:
    """Add ``audit`` (access, events, gaps, annotate-gap) to the top-level subparsers."""
    audit = sub.add_parser("audit", help="auditor questions: access, events, and more")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    p = add_client_command(asub, "access", _access, "who had access to what, when and why (audit)")
    p.add_argument("--subject", help="one subject (default: everyone)")
    p.add_argument("--secret", help="one catalog secret (default: all)")
    p.add_argument("--from", dest="since", required=True, help="date or ISO time (inclusive)")
    p.add_argument("--to", dest="until", required=True, help="date or ISO time (exclusive)")
    p.add_argument("--limit", type=int, default=200, help="page size (default 200)")

    p = add_client_command(asub, "events", _events, "raw ledger events, oldest first (audit)")
    p.add_argument("--subject")
    p.add_argument("--secret")
    p.add_argument("--type", help="event names, comma-separated (e.g. grant.issued)")
    p.add_argument("--from", dest="since", help="date or ISO time (inclusive)")
    p.add_argument("--to", dest="until", help="date or ISO time (exclusive)")
    p.add_argument("--cursor", help="continue after this seq (printed when there is more)")
    p.add_argument("--limit", type=int, default=100, help="events per page (default 100)")

    p = add_client_command(asub, "gaps", _gaps, "stretches with no heartbeat (audit)")
    p.add_argument("--from", dest="start", required=True, help="date or ISO time")
    p.add_argument("--to", dest="end", help="date or ISO time (default: now)")
    p = add_client_command(
        asub, "annotate-gap", _annotate, "ledger a remediation note for a gap (admin)"
    )
    p.add_argument("--from", dest="start", required=True, help="ISO time the gap starts")
    p.add_argument("--to", dest="end", required=True, help="ISO time the gap ends")
    p.add_argument("--note", required=True, help="what happened and how it was remediated")
