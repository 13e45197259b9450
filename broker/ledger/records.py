"""The portable event record: one ledger row as JSON, the shape evidence packages and
archive segments carry (``chain.canonical_record`` turns it back into the hashed bytes)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .events import decoded_body

__all__ = ["event_record"]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="microseconds") if value is not None else None


def event_record(r: Mapping[str, Any]) -> dict[str, Any]:
    """One ledger row (record or dict of columns) as the package event record."""
    body = decoded_body(r["body"])
    grant_id = r["grant_id"]
    return {
        "seq": r["seq"],
        "recorded_at": _iso(r["recorded_at"]),
        "event": r["event"],
        "replica": r["replica"],
        "subject": r["subject"],
        "subject_kind": r["subject_kind"],
        "secret": r["secret"],
        "role": r["role"],
        "policy_version": r["policy_version"],
        "grant_id": str(grant_id) if grant_id is not None else None,
        "lease_id": r["lease_id"],
        "expires_at": _iso(r["expires_at"]),
        "outcome": r["outcome"],
        "request_id": r["request_id"],
        "body": body,
        "dedupe_key": r["dedupe_key"],
        "prev_hash": bytes(r["prev_hash"]).hex(),
        "hash": bytes(r["hash"]).hex(),
    }
