"""``broker offboard`` and ``broker offboardings list``: the offboarding API from the shell.

  broker offboard SUBJECT --reason TEXT [--terminated-at ISO]   offboard (or resume)
  broker offboard --reinstate SUBJECT --reason TEXT             re-onboard
  broker offboardings list [--from DATE] [--to DATE]            with SLA met/missed

Connection options and exit codes are those of the other client commands (``broker.cli``).
"""

from __future__ import annotations

import argparse
import urllib.parse
from typing import Any

from broker import cli_client as _cli
from broker.client import BrokerClient

__all__ = ["add_commands"]


def _offboard(client: BrokerClient, args: argparse.Namespace) -> int:
    if args.reinstate:
        if args.subject:
            raise _cli.ClientUsage("give SUBJECT or --reinstate SUBJECT, not both")
        if args.terminated_at:
            raise _cli.ClientUsage("--terminated-at applies to offboarding, not --reinstate")
        path = f"/v1/offboarding/{urllib.parse.quote(args.reinstate, safe='')}/reinstate"
        done = client._call("POST", path, body={"reason": args.reason})
        if args.json:
            _cli.print_json(done)
        else:
            print(
                f"reinstated {_cli.cell(done.get('subject'))}"
                f" at {_cli.when(done.get('reinstated_at'))}"
            )
        return 0
    if not args.subject:
        raise _cli.ClientUsage("SUBJECT is required (or --reinstate SUBJECT)")
    body: dict[str, Any] = {"subject": args.subject, "reason": args.reason}
    if args.terminated_at:
        body["terminated_at"] = args.terminated_at
    report = client._call("POST", "/v1/offboarding", body=body)
    if args.json:
        _cli.print_json(report)
        return 0
    sla = "met" if report.get("sla_met") else "MISSED"
    print(
        f"offboarded {_cli.cell(report.get('subject'))}"
        f" ({_cli.cell(report.get('offboarding_id'))}):"
        f" {len(report.get('grants_revoked') or [])} grants revoked,"
        f" {len(report.get('elevations_closed') or [])} elevations closed;"
        f" SLA {sla} ({report.get('seconds_from_termination')}s from termination,"
        f" deadline {_cli.when(report.get('sla_deadline'))})"
    )
    return 0


def _list(client: BrokerClient, args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("from", args.since), ("to", args.until)) if v}
    items = list(client._call("GET", "/v1/offboarding", query=query).get("offboardings") or [])
    if args.json:
        _cli.print_json({"offboardings": items})
        return 0
    if not items:
        print("no offboardings")
        return 0
    headers = ["SUBJECT", "STATUS", "STARTED", "COMPLETED", "SLA", "GRANTS", "ELEVATIONS"]
    rows = [
        [
            _cli.cell(o.get("subject"), 40),
            _cli.cell(o.get("status")),
            _cli.when(o.get("started_at")),
            _cli.when(o.get("completed_at")),
            _cli.cell(o.get("sla")),
            _cli.cell(o.get("grants_revoked")),
            _cli.cell(o.get("elevations_closed")),
        ]
        for o in items
    ]
    print(_cli.table(headers, rows))
    return 0


def add_commands(sub: Any) -> None:
    """Register ``offboard`` and ``offboardings`` on the top-level subparsers."""
    conn = _cli.connection_options()
    p = sub.add_parser(
        "offboard",
        parents=[conn],
        help="offboard a person (admin): refuse them, end every grant and elevation",
    )
    p.add_argument("subject", nargs="?", help="the subject (token 'sub') to offboard")
    p.add_argument("--reinstate", metavar="SUBJECT", help="re-onboard SUBJECT instead")
    p.add_argument("--reason", required=True)
    p.add_argument("--terminated-at", help="ISO 8601 time of termination (default: now)")
    p.set_defaults(func=_cli.client_command, client_func=_offboard)

    obs = sub.add_parser("offboardings", help="offboardings and their SLA (admin, audit)")
    osub = obs.add_subparsers(dest="offboardings_command", required=True)
    p = osub.add_parser("list", parents=[conn], help="offboardings started in a period")
    p.add_argument("--from", dest="since", help="date or ISO time (inclusive)")
    p.add_argument("--to", dest="until", help="date or ISO time (exclusive)")
    p.set_defaults(func=_cli.client_command, client_func=_list)
