"""``broker ledger``: proofs, retention archives and segment checks, from the shell.

- ``prove inclusion SEQ [--size N]`` / ``prove consistency OLD [--new N]``: RFC 6962 proofs
  against a signed checkpoint, checked here with the verifier keys before printing.
- ``archive --before YYYY-MM --out DIR``: as the owner role (``BROKER_ADMIN_DATABASE_URL``)
  with the checkpoint key, move every month before YYYY-MM that the retention setting
  allows into a signed segment file, check it, ledger it, then drop its partition.
- ``check-segment FILE...``: verify segment files offline with the verifier keys alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from ._keys import checkpoint_keys

__all__ = ["register"]


def _month(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise argparse.ArgumentTypeError("a month is YYYY-MM") from None


def _prove(args: argparse.Namespace) -> int:
    from broker.errors import BrokerError
    from broker.ledger import CheckpointVerifier, connect_one
    from broker.ledger.merkle import ProofError, verify_consistency, verify_inclusion
    from broker.ledger.proofs import consistency_document, inclusion_document
    from broker.settings import from_env

    settings = from_env()
    _, keys = checkpoint_keys(settings)
    dsn = args.database_url or settings.database_url
    if not dsn or not keys:
        print("need BROKER_DATABASE_URL and a checkpoint (verifier) key", file=sys.stderr)
        return 2
    verifier = CheckpointVerifier(keys)

    def b64(items: list[str]) -> list[bytes]:
        return [base64.b64decode(h) for h in items]

    async def run() -> dict[str, Any]:
        conn = await connect_one(dsn, sslrootcert=settings.database_sslrootcert)
        try:
            if args.kind == "inclusion":
                doc = await inclusion_document(conn, args.first, args.size)
                cp = verifier.verify(doc["checkpoint"], origin=settings.ledger_origin)
                assert cp.root is not None
                verify_inclusion(
                    base64.b64decode(doc["leaf_hash"]),
                    doc["leaf_index"],
                    cp.size,
                    b64(doc["proof"]),
                    cp.root,
                )
            else:
                doc = await consistency_document(conn, args.first, args.size)
                cp = verifier.verify(doc["new_checkpoint"], origin=settings.ledger_origin)
                assert cp.root is not None
                verify_consistency(
                    doc["old_size"],
                    cp.size,
                    base64.b64decode(doc["old_root"]),
                    cp.root,
                    b64(doc["proof"]),
                )
            doc["verified"] = True
            return doc
        finally:
            await conn.close()

    try:
        print(json.dumps(asyncio.run(run()), indent=2))
    except BrokerError as e:
        print(f"{e.code}: {e.message}", file=sys.stderr)
        return 1
    except ProofError as e:
        print(f"the proof does not verify: {e}", file=sys.stderr)
        return 1
    return 0


def _archive(args: argparse.Namespace) -> int:
    from broker.ledger import CheckpointVerifier, LedgerWriter, connect_one, connect_pool
    from broker.ledger.archive import ArchiveError, archive_before
    from broker.settings import from_env

    settings = from_env()
    signer, keys = checkpoint_keys(settings)
    admin = settings.admin_database_url
    if not admin or signer is None:
        print(
            "need BROKER_ADMIN_DATABASE_URL (the owner role) and the checkpoint signing key"
            " (BROKER_CHECKPOINT_KEY)",
            file=sys.stderr,
        )
        return 2
    months = settings.ledger_retention_months
    if months is None:
        print(
            "ledger_retention_months is not set (keep forever): set it (12 or more) before"
            " archiving",
            file=sys.stderr,
        )
        return 2
    today = datetime.now(UTC).date()
    index = today.year * 12 + today.month - 1 - months
    newest = date(index // 12, index % 12 + 1, 1)
    if args.before > newest:
        print(
            f"retention is {months} months: only months before {newest:%Y-%m} may be archived",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    async def run() -> list[dict[str, Any]]:
        conn = await connect_one(admin, sslrootcert=settings.database_sslrootcert)
        pool = await connect_pool(
            admin, min_size=1, max_size=2, sslrootcert=settings.database_sslrootcert
        )
        writer = LedgerWriter(pool, replica=f"{settings.replica_id}/archive")
        writer.start()
        try:
            done = await archive_before(
                conn,
                writer.append,
                before=args.before,
                out_dir=args.out,
                signer=signer,
                verifier=CheckpointVerifier(keys),
                origin=settings.ledger_origin,
            )
        finally:
            await writer.stop()
            await pool.close()
            await conn.close()
        return [
            {
                "month": a.month,
                "partition": a.partition,
                "rows": a.rows,
                "first_seq": a.first_seq,
                "last_seq": a.last_seq,
                "segment": str(a.segment) if a.segment else None,
            }
            for a in done
        ]

    try:
        print(json.dumps({"archived": asyncio.run(run())}, indent=2))
    except ArchiveError as e:
        print(f"not archived: {e}", file=sys.stderr)
        return 1
    return 0


def _check_segment(args: argparse.Namespace) -> int:
    from broker.ledger import CheckpointVerifier
    from broker.ledger.archive import check_segment
    from broker.settings import from_env

    settings = from_env()
    _, keys = checkpoint_keys(settings)
    if not keys:
        print("need a verifier key (BROKER_CHECKPOINT_VERIFIER_KEYS)", file=sys.stderr)
        return 2
    verifier = CheckpointVerifier(keys)
    reports = [
        {"file": str(f), **check_segment(f, verifier, settings.ledger_origin).to_json()}
        for f in args.files
    ]
    print(json.dumps(reports, indent=2))
    return 0 if all(r["ok"] for r in reports) else 1


def register(sub: Any) -> None:
    """Add ``ledger`` (prove, archive, check-segment) to the top-level subparsers."""
    led = sub.add_parser("ledger", help="Merkle proofs, retention archives, segment checks")
    lsub = led.add_subparsers(dest="ledger_command", required=True)

    prove = lsub.add_parser("prove", help="an inclusion or consistency proof, checked")
    prove.add_argument("kind", choices=["inclusion", "consistency"])
    prove.add_argument(
        "first", type=int, metavar="SEQ|OLD", help="the row (inclusion) or old size (consistency)"
    )
    prove.add_argument(
        "--size", type=int, help="the checkpoint's size to prove against (default: the newest)"
    )
    prove.add_argument("--database-url")
    prove.set_defaults(func=_prove)

    arch = lsub.add_parser(
        "archive", help="move months older than the retention into signed segment files"
    )
    arch.add_argument("--before", type=_month, required=True, metavar="YYYY-MM")
    arch.add_argument("--out", type=Path, required=True, metavar="DIR")
    arch.set_defaults(func=_archive)

    chk = lsub.add_parser("check-segment", help="verify archive segment files offline")
    chk.add_argument("files", nargs="+", type=Path, metavar="FILE")
    chk.set_defaults(func=_check_segment)
