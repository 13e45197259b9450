"""Chain hashing: pure functions, no I/O.

Invariant: for every row, ``hash = SHA-256(DOMAIN || prev_hash || canonical(row))`` and
``prev_hash`` is the previous row's hash (``GENESIS`` for seq 1). ``canonical`` covers every
column except the two hashes, so changing any recorded fact changes the hash.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["GENESIS", "canonical_row", "chain_hash"]

GENESIS = bytes(32)
_DOMAIN = b"jit-broker/ledger/v1\n"


def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    # Postgres keeps microseconds; a fixed UTC spelling makes the bytes reproducible:
    # YYYY-MM-DDTHH:MM:SS.ffffffZ (isoformat is the fast way to spell it).
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def canonical_row(
    *,
    seq: int,
    recorded_at: datetime,
    event: str,
    replica: str,
    subject: str | None,
    subject_kind: str | None,
    secret: str | None,
    role: str | None,
    policy_version: str | None,
    grant_id: uuid.UUID | None,
    lease_id: str | None,
    expires_at: datetime | None,
    outcome: str,
    request_id: str | None,
    body: Mapping[str, Any],
    dedupe_key: str | None,
) -> bytes:
    """The exact bytes that are hashed for one row (sorted-key compact JSON, UTF-8)."""
    doc = {
        "seq": seq,
        "recorded_at": _ts(recorded_at),
        "event": event,
        "replica": replica,
        "subject": subject,
        "subject_kind": subject_kind,
        "secret": secret,
        "role": role,
        "policy_version": policy_version,
        "grant_id": str(grant_id) if grant_id else None,
        "lease_id": lease_id,
        "expires_at": _ts(expires_at),
        "outcome": outcome,
        "request_id": request_id,
        "body": body,
        "dedupe_key": dedupe_key,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev_hash: bytes, row: bytes) -> bytes:
    """Hash of a row given its predecessor's hash."""
    return hashlib.sha256(_DOMAIN + prev_hash + row).digest()
