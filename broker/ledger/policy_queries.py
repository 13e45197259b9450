"""The recorded policy documents, by version (shared by the auditor's answers and the
evidence package)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import asyncpg

__all__ = ["policy_documents"]


async def policy_versions(db: asyncpg.Pool | asyncpg.Connection) -> list[str]:
    """Every policy version the ledger has recorded (a short list: one per policy change)."""
    return [str(r["version"]) for r in await db.fetch("SELECT version FROM ledger.policy_versions")]


async def policy_documents(
    db: asyncpg.Pool | asyncpg.Connection, versions: Iterable[str]
) -> dict[str, dict[str, str]]:
    """``{version: {file name: text}}`` for each version the ledger holds (others omitted)."""
    wanted = sorted(set(versions))
    if not wanted:
        return {}
    rows = await db.fetch(
        "SELECT version, documents FROM ledger.policy_versions WHERE version = ANY($1::text[])",
        wanted,
    )
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        docs = r["documents"]
        if isinstance(docs, str):  # a connection without the jsonb codec
            docs = json.loads(docs)
        out[str(r["version"])] = {str(k): str(v) for k, v in dict(docs).items()}
    return out
