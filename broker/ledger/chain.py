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
from typing import Any, overload

import msgspec

from .events import Event

__all__ = [
    "GENESIS",
    "canonical_event",
    "canonical_record",
    "canonical_row",
    "canonical_time",
    "chain_hash",
]

GENESIS = bytes(32)
_DOMAIN = b"jit-broker/ledger/v1\n"

# msgspec writes the same bytes as json.dumps(sort_keys=True, separators=(",", ":"),
# ensure_ascii=False) for strings, ints, bools, null, lists and dicts (tests check it),
# seven times faster; floats differ in exponent spelling (1e16 vs 1e+16), so a document
# holding a float — or anything else json.dumps would spell its own way — takes json.
_FAST = msgspec.json.Encoder(order="sorted")
_PLAIN = (str, int, bool, type(None))


def _plain(value: Any) -> bool:
    """True when msgspec spells ``value`` exactly as json.dumps does (no float anywhere)."""
    stack = [value]
    while stack:
        v = stack.pop()
        kind = type(v)
        if kind is str or v is None or kind is bool:
            continue
        if kind is int:
            if not -(2**63) <= v < 2**63:
                return False
        elif kind is dict:
            if not all(type(k) is str for k in v):
                return False
            stack.extend(v.values())
        elif kind is list:
            stack.extend(v)
        else:
            return False
    return True


def _canonical_json(doc: dict[str, Any], body: Mapping[str, Any], plain: bool | None) -> bytes:
    if plain or (plain is None and type(body) is dict and _plain(body)):
        try:
            return _FAST.encode(doc)
        except (OverflowError, TypeError, msgspec.EncodeError):
            pass
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@overload
def canonical_time(value: datetime | str) -> str: ...
@overload
def canonical_time(value: datetime | str | None) -> str | None: ...
def canonical_time(value: datetime | str | None) -> str | None:
    if value is None or type(value) is str:  # already spelled canonically (a fast reader)
        return value
    # Postgres keeps microseconds; a fixed UTC spelling makes the bytes reproducible:
    # YYYY-MM-DDTHH:MM:SS.ffffffZ (isoformat is the fast way to spell it).
    assert isinstance(value, datetime)
    if value.tzinfo is UTC:  # what the broker makes and asyncpg reads: no conversion needed
        return value.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def canonical_row(
    *,
    seq: int,
    recorded_at: datetime | str,
    event: str,
    replica: str,
    subject: str | None,
    subject_kind: str | None,
    secret: str | None,
    role: str | None,
    policy_version: str | None,
    grant_id: uuid.UUID | str | None,
    lease_id: str | None,
    expires_at: datetime | str | None,
    outcome: str,
    request_id: str | None,
    body: Mapping[str, Any],
    dedupe_key: str | None,
    body_plain: bool | None = None,
) -> bytes:
    """The exact bytes that are hashed for one row (sorted-key compact JSON, UTF-8).

    Times are datetimes, or strings already in the canonical spelling (``_ts``).
    ``body_plain``: the caller knows whether ``body`` holds a float (a JSON decoder does)."""
    doc = {
        "seq": seq,
        "recorded_at": canonical_time(recorded_at),
        "event": event,
        "replica": replica,
        "subject": subject,
        "subject_kind": subject_kind,
        "secret": secret,
        "role": role,
        "policy_version": policy_version,
        "grant_id": str(grant_id) if grant_id else None,
        "lease_id": lease_id,
        "expires_at": canonical_time(expires_at),
        "outcome": outcome,
        "request_id": request_id,
        "body": body,
        "dedupe_key": dedupe_key,
    }
    return _canonical_json(doc, body, body_plain)


def chain_hash(prev_hash: bytes, row: bytes) -> bytes:
    """Hash of a row given its predecessor's hash."""
    return hashlib.sha256(_DOMAIN + prev_hash + row).digest()


def canonical_event(ev: Event) -> bytes:
    """``canonical_row`` of a row read back from the ledger."""
    return canonical_row(
        seq=ev.seq,
        recorded_at=ev.recorded_at,
        event=ev.event,
        replica=ev.replica,
        subject=ev.subject,
        subject_kind=ev.subject_kind,
        secret=ev.secret,
        role=ev.role,
        policy_version=ev.policy_version,
        grant_id=ev.grant_id,
        lease_id=ev.lease_id,
        expires_at=ev.expires_at,
        outcome=ev.outcome,
        request_id=ev.request_id,
        body=ev.body,
        dedupe_key=ev.dedupe_key,
    )


def canonical_record(rec: Mapping[str, Any]) -> bytes:
    """``canonical_row`` of an evidence-package event record (ISO times, uuid as text).

    Raises KeyError/TypeError/ValueError for a malformed record.
    """
    grant_id = rec["grant_id"]
    expires_at = rec["expires_at"]
    return canonical_row(
        seq=int(rec["seq"]),
        recorded_at=datetime.fromisoformat(rec["recorded_at"]),
        event=rec["event"],
        replica=rec["replica"],
        subject=rec["subject"],
        subject_kind=rec["subject_kind"],
        secret=rec["secret"],
        role=rec["role"],
        policy_version=rec["policy_version"],
        grant_id=uuid.UUID(str(grant_id)) if grant_id else None,
        lease_id=rec["lease_id"],
        expires_at=datetime.fromisoformat(expires_at) if expires_at else None,
        outcome=rec["outcome"],
        request_id=rec["request_id"],
        body=rec["body"],
        dedupe_key=rec["dedupe_key"],
    )
