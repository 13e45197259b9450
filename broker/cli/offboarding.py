"""``broker offboard`` and ``broker offboardings list``: the offboarding API from the shell.

  broker offboard SUBJECT --reason TEXT [--terminated-at ISO]   offboard (or resume)
  broker offboard --reinstate SUBJECT --reason TEXT             re-onboard
  broker offboardings list [--from DATE] [--to DATE]            with SLA met/missed

Connection options and exit codes: ``broker.cli._connection``.
"""

from __future__ import annotations

import argparse
from typing import Any

from broker.cli._connection import ClientUsage, add_client_command
from broker.cli._output import cell, print_json, table, when
from broker.cli.client import BrokerClient

__all__ = ["register"]


def _offboard(client: BrokerClient, args: argparse.Namespace) -> int:
    if args.reinstate:
        if args.subject:
            raise ClientUsage("give SUBJECT or --reinstate SUBJECT, not both")
        if args.terminated_at:
            raise ClientUsage("--terminated-at applies to offboarding, not --reinstate")
        done = client.reinstate(args.reinstate, reason=args.reason)
        if args.json:
            print_json(done)
        else:
            print(f"reinstated {cell(done.get('subject'))} at {when(done.get('reinstated_at'))}")
        return 0
    if not args.subject:
        raise ClientUsage("SUBJECT is required (or --reinstate SUBJECT)")
    report = client.offboard(
        args.subject, reason=args.reason, terminated_at=args.terminated_at or None
    )
    if args.json:
        print_json(report)
        return 0
    sla = "met" if report.get("sla_met") else "MISSED"
    print(
        f"offboarded {cell(report.get('subject'))}"
        f" ({cell(report.get('offboarding_id'))}):"
        f" {len(report.get('grants_revoked') or [])} grants revoked,"
        f" {len(report.get('elevations_closed') or [])} elevations closed;"
        f" SLA {sla} ({report.get('seconds_from_termination')}s from termination,"
        f" deadline {when(report.get('sla_deadline'))})"
    )
    return 0


def _list(client: BrokerClient, args: argparse.Namespace) -> int:
    items = client.list_offboardings(period_from=args.since or None, period_to=args.until or None)
    if args.json:
        print_json({"offboardings": items})
        return 0
    if not items:
        print("no offboardings")
        return 0
    headers = ["SUBJECT", "STATUS", "STARTED", "COMPLETED", "SLA", "GRANTS", "ELEVATIONS"]
    rows = [
        [
            cell(o.get("subject"), 40),
            cell(o.get("status")),
            when(o.get("started_at")),
            when(o.get("completed_at")),
            cell(o.get("sla")),
            cell(o.get("grants_revoked")),
            cell(o.get("elevations_closed")),
        ]
        for o in items
    ]
    print(table(headers, rows))
    return 0


def register(sub: Any) -> None:
    """Add ``offboard`` and ``offboardings`` to the top-level subparsers."""
    p = add_client_command(
        sub,
        "offboard",
        _offboard,
        "offboard a person (admin): refuse them, end every grant and elevation",
    )
    p.add_argument("subject", nargs="?", help="the subject (token 'sub') to offboard")
    p.add_argument("--reinstate", metavar="SUBJECT", help="re-onboard SUBJECT instead")
    p.add_argument("--reason", required=True)
    p.add_argument("--terminated-at", help="ISO 8601 time of termination (default: now)")

    obs = sub.add_parser("offboardings", help="offboardings and their SLA (admin, audit)")
    osub = obs.add_subparsers(dest="offboardings_command", required=True)
    p = add_client_command(osub, "list", _list, "offboardings started in a period")
    p.add_argument("--from", dest="since", help="date or ISO time (inclusive)")
    p.add_argument("--to", dest="until", help="date or ISO time (exclusive)")
