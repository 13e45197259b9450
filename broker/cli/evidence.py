"""``broker evidence export|check``: the evidence package, straight from the ledger database.

Like ``broker verify``, these read ``BROKER_DATABASE_URL`` and the checkpoint key
(``BROKER_CHECKPOINT_KEY``; for ``check`` the public ``BROKER_CHECKPOINT_VERIFIER_KEYS``
is enough). Exit codes: 0 success (check: no material weakness, package intact), 1 the
check failed or no signed checkpoint covers the period yet, 2 usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._keys import checkpoint_keys

__all__ = ["parse_when", "register"]

_WHEN_FORMS = "a date (YYYY-MM-DD, midnight UTC), an ISO 8601 time (UTC if no offset), or 'now'"


def parse_when(text: str) -> datetime:
    """``2026-02-01``, an ISO 8601 time (naive means UTC), or ``now``."""
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (YYYY-MM-DD) or ISO 8601 time"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class _Progress:
    """A one-line progress bar on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, *, quiet: bool) -> None:
        self._quiet = quiet
        self._tty = sys.stderr.isatty()
        self._started = time.monotonic()
        self._last_decile = -1

    def __call__(self, done: int, total: int) -> None:
        if self._quiet:
            return
        share = done / total if total else 1.0
        rate = done / max(time.monotonic() - self._started, 1e-6)
        bar = "#" * int(30 * share)
        line = f"[{bar:<30}] {100 * share:5.1f}% {done:,}/{total:,} rows {rate:,.0f} rows/s"
        if self._tty:
            print(f"\r{line}", end="" if done < total else "\n", file=sys.stderr, flush=True)
        elif int(10 * share) != self._last_decile:
            self._last_decile = int(10 * share)
            print(line, file=sys.stderr, flush=True)


async def _export(
    settings: Any,
    dsn: str,
    out: Path,
    period_from: datetime,
    period_to: datetime,
    *,
    wait: float,
    quiet: bool,
    consistent_with: tuple[int, ...] = (),
) -> Any:
    from broker.evidence.package import ExportOptions, NotYetSigned, export_package
    from broker.ledger import CheckpointVerifier, connect_one

    signer, keys = checkpoint_keys(settings)
    options = ExportOptions(
        heartbeat_seconds=settings.heartbeat_seconds,
        offboarding_sla_seconds=settings.offboarding_sla_seconds,
        consistent_with=consistent_with,
    )
    conn = await connect_one(
        dsn, timeout=settings.db_timeout_seconds, sslrootcert=settings.database_sslrootcert
    )
    try:
        deadline = time.monotonic() + wait
        said_waiting = False
        while True:
            try:
                return await export_package(
                    conn,
                    out,
                    period_from=period_from,
                    period_to=period_to,
                    signer=signer,
                    origin=settings.ledger_origin,
                    verifier=CheckpointVerifier(keys),
                    options=options,
                    progress=_Progress(quiet=quiet),
                )
            except NotYetSigned:
                if time.monotonic() >= deadline:
                    raise
                if not quiet and not said_waiting:  # once: a log is no place for a spinner
                    print("waiting for a signed checkpoint ...", file=sys.stderr, flush=True)
                    said_waiting = True
                await asyncio.sleep(1.0)
    finally:
        await conn.close()


def _needs(settings: Any, dsn: str | None) -> str | None:
    if not dsn:
        return "need BROKER_DATABASE_URL (or --database-url)"
    if not settings.checkpoint_key_path.exists():
        return (
            f"need the checkpoint signing key (BROKER_CHECKPOINT_KEY, now"
            f" {settings.checkpoint_key_path}) to sign the manifest"
        )
    return None


def _kept(settings: Any, path: str) -> Any:
    """A checkpoint note kept from an earlier package, verified. Raises ValueError/OSError."""
    from broker.ledger import CheckpointVerifier

    _, keys = checkpoint_keys(settings)
    return CheckpointVerifier(keys).verify(Path(path).read_text(), origin=settings.ledger_origin)


def _cmd_export(args: argparse.Namespace) -> int:
    from broker.evidence.package import EvidenceError
    from broker.settings import from_env

    settings = from_env()
    dsn = args.database_url or settings.database_url
    problem = _needs(settings, dsn)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        sizes = tuple(_kept(settings, f).size for f in args.consistent_with)
    except (OSError, ValueError) as e:
        print(f"--consistent-with: {e}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(
            _export(
                settings,
                dsn,
                out,
                args.period_from,
                args.period_to,
                wait=args.wait,
                quiet=args.quiet,
                consistent_with=sizes,
            )
        )
    except EvidenceError as e:
        print(f"evidence export failed: {e.message}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "out": str(out),
                "bytes": result.bytes,
                "rows": result.rows,
                "period_rows": result.period_rows,
                "seq": [result.first_seq, result.end_seq],
                "verification_ok": result.verification_ok,
                "findings": dict(result.findings),
                "seconds": result.seconds,
            }
        )
    )
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from broker.evidence.check import check_package, format_report
    from broker.evidence.package import EvidenceError
    from broker.ledger import CheckpointVerifier
    from broker.settings import from_env

    settings = from_env()
    from_db = args.period_from is not None or args.period_to is not None
    if from_db == (args.package is not None) or (
        from_db and (args.period_from is None or args.period_to is None)
    ):
        print(
            "give a package FILE.zip, or both --from and --to (export, then check)",
            file=sys.stderr,
        )
        return 2
    _, keys = checkpoint_keys(settings)
    if not keys:
        print(
            "need a checkpoint key: BROKER_CHECKPOINT_KEY or BROKER_CHECKPOINT_VERIFIER_KEYS",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="evidence-check-") as tmp:
        if from_db:
            dsn = args.database_url or settings.database_url
            problem = _needs(settings, dsn)
            if problem:
                print(problem, file=sys.stderr)
                return 2
            path = Path(tmp) / "evidence.zip"
            try:
                asyncio.run(
                    _export(
                        settings,
                        dsn,
                        path,
                        args.period_from,
                        args.period_to,
                        wait=args.wait,
                        quiet=args.json,
                    )
                )
            except EvidenceError as e:
                print(f"evidence export failed: {e.message}", file=sys.stderr)
                return 1
        else:
            path = Path(args.package)
            if not path.is_file():
                print(f"{path} not found", file=sys.stderr)
                return 2
        try:
            kept = [Path(f).read_text() for f in args.kept_checkpoint]
        except OSError as e:
            print(f"--kept-checkpoint: {e}", file=sys.stderr)
            return 2
        report = check_package(path, CheckpointVerifier(keys), kept)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def register(sub: Any) -> None:
    """Add ``evidence`` (export, check) to the top-level subparsers."""
    ev = sub.add_parser("evidence", help="export the signed evidence package; dry-run audit")
    esub = ev.add_subparsers(dest="evidence_command", required=True)

    period = argparse.ArgumentParser(add_help=False)
    period.add_argument("--database-url")
    period.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="wait this long for a signed checkpoint covering the period's end (default 30)",
    )

    p = esub.add_parser(
        "export", parents=[period], help="write the package for rows recorded in [from, to)"
    )
    p.add_argument(
        "--from", dest="period_from", type=parse_when, required=True, metavar="DATE",
        help=f"start of the period, inclusive: {_WHEN_FORMS}",
    )  # fmt: skip
    p.add_argument(
        "--to", dest="period_to", type=parse_when, required=True, metavar="DATE",
        help=f"end of the period, exclusive: {_WHEN_FORMS}",
    )  # fmt: skip
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE.zip",
        help="the package to write, e.g. evidence.zip as in the docs (replaced if it exists)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--consistent-with",
        action="append",
        default=[],
        metavar="NOTE",
        help="a checkpoint note you kept (e.g. from the last package): include the proof"
        " that this package's checkpoint extends it",
    )
    p.set_defaults(func=_cmd_export)

    c = esub.add_parser(
        "check",
        parents=[period],
        help="audit a package offline (or export --from/--to first), findings by severity",
    )
    c.add_argument("package", nargs="?", metavar="FILE.zip")
    c.add_argument(
        "--from", dest="period_from", type=parse_when, metavar="DATE",
        help=f"instead of FILE.zip: export from here (inclusive) first; {_WHEN_FORMS}",
    )  # fmt: skip
    c.add_argument(
        "--to", dest="period_to", type=parse_when, metavar="DATE",
        help="with --from: the end of the period to export (exclusive)",
    )  # fmt: skip
    c.add_argument("--json", action="store_true", help="one JSON document")
    c.add_argument(
        "--kept-checkpoint",
        action="append",
        default=[],
        metavar="NOTE",
        help="a checkpoint note you kept: the package must prove itself consistent with it",
    )
    c.set_defaults(func=_cmd_check)
