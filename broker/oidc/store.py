"""Sign-in state in PostgreSQL (``signin`` schema, migration 005): pending logins and the
refresh tokens of signed-in sessions. Working data, not evidence; secrets arrive sealed
(``broker.oidc.sealing``) and are stored as given. Handles are stored as SHA-256 only.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import asyncpg

__all__ = ["Pending", "SignInStore", "StoredRefresh", "digest"]


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Pending:
    """A login between its start and its finish (``code``) or a device authorization."""

    kind: str  # "code" | "device"
    provider: str
    client_id: str
    api: str
    redirect_uri: str | None
    nonce: str | None
    client_nonce_sha256: str | None
    sealed: bytes
    expires_at: datetime
    login_role: str | None = None  # the role a Vault client named: recorded only


@dataclass(frozen=True)
class StoredRefresh:
    provider: str
    client_id: str
    sealed: bytes


_PENDING_COLUMNS = (
    "kind, provider, client_id, api, redirect_uri, nonce, client_nonce_sha256, sealed, expires_at,"
    " login_role"
)


def _pending(row: asyncpg.Record | None) -> Pending | None:
    if row is None:
        return None
    return Pending(**{k: row[k] for k in _PENDING_COLUMNS.split(", ")})


class SignInStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def put_pending(self, handle: str, pending: Pending) -> None:
        # Expired logins go as new ones come: the table stays the size of the live ones.
        await self._pool.execute("DELETE FROM signin.pending WHERE expires_at < now()")
        await self._pool.execute(
            f"INSERT INTO signin.pending (handle_sha256, {_PENDING_COLUMNS})"  # noqa: S608
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            digest(handle),
            pending.kind,
            pending.provider,
            pending.client_id,
            pending.api,
            pending.redirect_uri,
            pending.nonce,
            pending.client_nonce_sha256,
            pending.sealed,
            pending.expires_at,
            pending.login_role,
        )

    async def take_pending(self, handle: str, kind: str) -> Pending | None:
        """Remove and return it: whoever takes it first is the only one (replay refused)."""
        row = await self._pool.fetchrow(
            f"DELETE FROM signin.pending WHERE handle_sha256 = $1 AND kind = $2"  # noqa: S608
            f" RETURNING {_PENDING_COLUMNS}",
            digest(handle),
            kind,
        )
        return _pending(row)

    async def peek_pending(self, handle: str, kind: str) -> Pending | None:
        row = await self._pool.fetchrow(
            f"SELECT {_PENDING_COLUMNS} FROM signin.pending"  # noqa: S608
            " WHERE handle_sha256 = $1 AND kind = $2",
            digest(handle),
            kind,
        )
        return _pending(row)

    async def put_refresh(
        self, accessor: str, *, provider: str, client_id: str, sealed: bytes, expires_at: datetime
    ) -> None:
        await self._pool.execute("DELETE FROM signin.refresh_tokens WHERE expires_at < now()")
        await self._pool.execute(
            "INSERT INTO signin.refresh_tokens (accessor, provider, client_id, sealed, expires_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (accessor) DO UPDATE"
            " SET sealed = EXCLUDED.sealed, updated_at = now()",
            accessor,
            provider,
            client_id,
            sealed,
            expires_at,
        )

    @asynccontextmanager
    async def refreshing(self, accessor: str) -> AsyncIterator[None]:
        """Hold the session's refresh lock (every replica): providers rotate refresh tokens,
        so two renewals of one session at once would spend the same token and the second
        would end the session. The second waits and then reads the rotated token."""
        async with self._pool.acquire() as conn:
            await conn.execute(
                "SELECT pg_advisory_lock(hashtext('signin-refresh:' || $1))", accessor
            )
            try:
                yield
            finally:
                await conn.execute(
                    "SELECT pg_advisory_unlock(hashtext('signin-refresh:' || $1))", accessor
                )

    async def get_refresh(self, accessor: str) -> StoredRefresh | None:
        row = await self._pool.fetchrow(
            "SELECT provider, client_id, sealed FROM signin.refresh_tokens WHERE accessor = $1",
            accessor,
        )
        return (
            None if row is None else StoredRefresh(row["provider"], row["client_id"], row["sealed"])
        )

    async def delete_refresh(self, accessor: str) -> None:
        await self._pool.execute("DELETE FROM signin.refresh_tokens WHERE accessor = $1", accessor)
