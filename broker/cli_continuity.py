"""``broker audit gaps`` / ``broker audit annotate-gap``: continuity evidence from the shell.

  broker audit gaps --from 2026-01-01 [--to 2026-04-01]                       (audit)
  broker audit annotate-gap --from T1 --to T2 --note "DB failover, see INC-42" (admin)

Times are ISO 8601; without an offset they are UTC. Connection options and exit codes are
those of the other client commands (``broker.cli``).
"""

from __future__ import annotations

import argparse
from typing import Any

from broker import cli_client as _cli
from broker.client import BrokerClient

__all__ = ["add_commands"]

# broker/client.py is shared by the parts of issue #4; its generic ``_call`` is used here
# instead of adding one method per endpoint to it.


def _gaps(client: BrokerClient, args: argparse.Namespace) -> int:
    query = {"from": args.start}
    if args.end:
        query["to"] = args.end
    out = client._call("GET", "/v1/audit/gaps", query=query)
    if args.json:
        _cli.print_json(out)
        return 0
    gaps = out.get("gaps") or []
    if not gaps:
        print(f"no gaps between {out.get('from')} and {out.get('to')}")
        return 0
    rows = [
        [
            _cli.when(g.get("start")),
            _cli.when(g.get("end")),
            f"{float(g.get('duration_seconds') or 0):.0f}s",
            _cli.cell((g.get("annotation") or {}).get("remediation") or "UNANNOTATED", 50),
        ]
        for g in gaps
    ]
    print(_cli.table(["START", "END", "LENGTH", "ANNOTATION"], rows))
    return 0


def _annotate(client: BrokerClient, args: argparse.Namespace) -> int:
    body = {"from": args.start, "to": args.end, "remediation": args.note}
    out = client._call("POST", "/v1/audit/gaps/annotate", body=body)
    if args.json:
        _cli.print_json(out)
        return 0
    note = out.get("annotation") or {}
    print(f"annotated {note.get('from')} .. {note.get('to')} (ledger row {note.get('seq')})")
    return 0


def _audit_subparsers(sub: Any) -> Any:
    """The ``audit`` command's subparsers, created here or shared with another part that
    registered ``audit`` first (argparse refuses a second parser of the same name)."""
    audit = sub.choices.get("audit")
    if audit is None:
        audit = sub.add_parser("audit", help="auditor tools: continuity gaps and more")
        return audit.add_subparsers(dest="audit_command", required=True)
    for action in audit._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return audit.add_subparsers(dest="audit_command", required=True)


def add_commands(sub: Any) -> None:
    """Register ``audit gaps`` and ``audit annotate-gap`` on the top-level subparsers."""
    conn = _cli.connection_options()
    asub = _audit_subparsers(sub)
    p = asub.add_parser("gaps", parents=[conn], help="stretches with no heartbeat (audit)")
    p.add_argument("--from", dest="start", required=True, help="date or ISO time")
    p.add_argument("--to", dest="end", help="date or ISO time (default: now)")
    p.set_defaults(func=_cli.client_command, client_func=_gaps)
    p = asub.add_parser(
        "annotate-gap", parents=[conn], help="ledger a remediation note for a gap (admin)"
    )
    p.add_argument("--from", dest="start", required=True, help="ISO time the gap starts")
    p.add_argument("--to", dest="end", required=True, help="ISO time the gap ends")
    p.add_argument("--note", required=True, help="what happened and how it was remediated")
    p.set_defaults(func=_cli.client_command, client_func=_annotate)
