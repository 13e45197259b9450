"""``broker verify`` and ``broker checkpoint-key``: the ledger's integrity, from the shell.

``verify`` reads the ledger database directly (``BROKER_DATABASE_URL`` or
``--database-url``) and checks every row, the chain, the Merkle tree and the signed
checkpoints with the verifier keys, in ``--workers`` processes; it exits 1 when it finds
tampering. ``--incremental`` starts at the last verified head, ``--from-checkpoint`` at a
checkpoint the auditor kept (after proving the newest one consistent with it). Where the
signing key is at hand, a clean run records its head for the next incremental one.
``checkpoint-key`` creates the signing key (never overwriting one) or prints its public
verifier key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from ._keys import checkpoint_keys

__all__ = ["register"]


def _verify(args: argparse.Namespace) -> int:
    import asyncpg

    from broker.ledger import CheckpointVerifier, connect_one, record_verified_head, verify_ledger
    from broker.ledger.verify import Mode
    from broker.settings import from_env

    settings = from_env()
    dsn = args.database_url or settings.database_url
    signer, keys = checkpoint_keys(settings)
    if not dsn or not keys:
        print(
            "need BROKER_DATABASE_URL (or --database-url) and a checkpoint key"
            " (BROKER_CHECKPOINT_KEY or BROKER_CHECKPOINT_VERIFIER_KEYS)",
            file=sys.stderr,
        )
        return 2

    trusted = [Path(f).read_text() for f in args.trusted_checkpoint]
    kept = Path(args.from_checkpoint).read_text() if args.from_checkpoint else None
    mode: Mode = "from_checkpoint" if kept else "incremental" if args.incremental else "full"

    async def run() -> dict[str, Any]:
        conn = await connect_one(dsn, sslrootcert=settings.database_sslrootcert)
        try:
            report = await verify_ledger(
                conn,
                verifier=CheckpointVerifier(keys),
                origin=settings.ledger_origin,
                max_unsigned_seconds=args.max_unsigned_age,
                trusted_checkpoints=trusted,
                mode=mode,
                from_checkpoint=kept,
                workers=args.workers,
                dsn=dsn,
                sslrootcert=settings.database_sslrootcert,
            )
            if signer is not None:
                try:
                    await record_verified_head(conn, report, signer, settings.ledger_origin)
                except asyncpg.InsufficientPrivilegeError:
                    report.notes.append("verified head not recorded (read-only database role)")
            return report.to_json()
        finally:
            await conn.close()

    result = asyncio.run(run())
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


def _checkpoint_key(args: argparse.Namespace) -> int:
    """Create the checkpoint signing key (never overwrites) or print its verifier key."""
    from broker.ledger import CheckpointSigner, load_or_create_signing_key
    from broker.settings import from_env

    settings = from_env()
    path = Path(args.path) if args.path else settings.checkpoint_key_path
    if args.action == "create" and path.exists():
        print(f"{path} already exists; not overwriting a signing key", file=sys.stderr)
        return 2
    if args.action == "show" and not path.exists():
        print(f"{path} not found", file=sys.stderr)
        return 2
    key = load_or_create_signing_key(path, create=args.action == "create")
    # The verifier key is public: auditors pass it to `broker verify` via
    # BROKER_CHECKPOINT_VERIFIER_KEYS without ever holding the private key.
    print(CheckpointSigner(settings.checkpoint_key_name, key).verifier_key())
    return 0


def register(sub: Any) -> None:
    """Add ``verify`` and ``checkpoint-key`` to the top-level subparsers."""
    verify = sub.add_parser("verify", help="verify the ledger chain and signed checkpoints")
    verify.add_argument("--database-url")
    verify.add_argument(
        "--trusted-checkpoint",
        action="append",
        default=[],
        metavar="FILE",
        help="a signed checkpoint note kept outside the database; the chain must reproduce it",
    )
    verify.add_argument(
        "--max-unsigned-age",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="rows older than this must be covered by a signed checkpoint (default 600)",
    )
    verify.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="processes that check rows in parallel (default: one per core)",
    )
    start = verify.add_mutually_exclusive_group()
    start.add_argument(
        "--incremental",
        action="store_true",
        help="check only the rows after the last verified head (full if there is none)",
    )
    start.add_argument(
        "--from-checkpoint",
        metavar="FILE",
        help="a signed checkpoint you kept: prove the newest one consistent with it, then"
        " check only the rows after it",
    )
    verify.set_defaults(func=_verify)

    ck = sub.add_parser(
        "checkpoint-key", help="create the checkpoint signing key or print its verifier key"
    )
    ck.add_argument("action", choices=["create", "show"])
    ck.add_argument("path", nargs="?", help="default: BROKER_CHECKPOINT_KEY")
    ck.set_defaults(func=_checkpoint_key)
