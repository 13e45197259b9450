"""Inclusion and consistency proofs against signed checkpoints, as JSON documents.

Each proof names the checkpoint it is against (the signed note itself), so a client checks
it with the ledger's public key alone: the note's signature, then RFC 6962 verification
(``broker.ledger.merkle.verify_inclusion`` / ``verify_consistency``, or any tlog client).
Hashes are base64, as in the C2SP checkpoint. The API and ``broker ledger prove`` share this.
"""

from __future__ import annotations

import base64
from typing import Any

import asyncpg

from broker.errors import BadRequest, NotFound

from .chain import canonical_event
from .events import row_to_event
from .merkle import leaf_hash
from .records import event_record
from .tree import TreeError, consistency_proof, inclusion_proof, tree_root

__all__ = ["NoSuchCheckpoint", "consistency_document", "inclusion_document"]


class NoSuchCheckpoint(NotFound):
    code = "checkpoint_not_found"


class RowArchived(NotFound):
    code = "row_archived"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _checkpoint(conn: asyncpg.Connection, size: int | None) -> asyncpg.Record:
    """The signed checkpoint at ``size`` (with a Merkle root), or the newest one."""
    if size is None:
        row = await conn.fetchrow(
            "SELECT size, root_hash, note FROM ledger.checkpoints WHERE root_hash IS NOT NULL"
            " ORDER BY size DESC LIMIT 1"
        )
    else:
        row = await conn.fetchrow(
            "SELECT size, root_hash, note FROM ledger.checkpoints"
            " WHERE root_hash IS NOT NULL AND size = $1",
            size,
        )
    if row is None:
        raise NoSuchCheckpoint(
            "no signed checkpoint with a Merkle root"
            + ("" if size is None else f" at size {size}")
            + " (the broker signs one every checkpoint interval)"
        )
    return row


async def inclusion_document(
    conn: asyncpg.Connection, seq: int, size: int | None = None
) -> dict[str, Any]:
    """Proof that ledger row ``seq`` is leaf ``seq - 1`` of the checkpoint at ``size``."""
    cp = await _checkpoint(conn, size)
    if not 1 <= seq <= cp["size"]:
        raise BadRequest(f"row {seq} is not covered by the checkpoint at size {cp['size']}")
    row = await conn.fetchrow("SELECT * FROM ledger.events WHERE seq = $1", seq)
    if row is None:
        raise RowArchived(f"ledger row {seq} is archived: prove it from its segment file")
    try:
        proof = await inclusion_proof(conn, seq - 1, cp["size"])
    except TreeError as e:
        raise RowArchived(str(e)) from e
    return {
        "seq": seq,
        "leaf_index": seq - 1,
        "tree_size": cp["size"],
        "leaf_hash": _b64(leaf_hash(canonical_event(row_to_event(row)))),
        "proof": [_b64(h) for h in proof],
        "root": _b64(bytes(cp["root_hash"])),
        "checkpoint": cp["note"],
        "event": event_record(row),
    }


async def consistency_document(
    conn: asyncpg.Connection, old: int, new: int | None = None
) -> dict[str, Any]:
    """Proof that the tree of size ``old`` is a prefix of the checkpoint at ``new``."""
    cp = await _checkpoint(conn, new)
    if not 1 <= old <= cp["size"]:
        raise BadRequest(f"size {old} is not within 1..{cp['size']}")
    kept = await conn.fetchval(
        "SELECT note FROM ledger.checkpoints WHERE size = $1 AND root_hash IS NOT NULL", old
    )
    try:
        proof = await consistency_proof(conn, old, cp["size"])
        old_root = await tree_root(conn, old)
    except TreeError as e:
        raise RowArchived(str(e)) from e
    return {
        "old_size": old,
        "new_size": cp["size"],
        "old_root": _b64(old_root),
        "new_root": _b64(bytes(cp["root_hash"])),
        "proof": [_b64(h) for h in proof],
        "old_checkpoint": kept,
        "new_checkpoint": cp["note"],
    }
